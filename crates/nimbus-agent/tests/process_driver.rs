//! Process driver against real processes and real cgroups (needs root; skipped otherwise).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nimbus_agent::driver::process::ProcessDriver;
use nimbus_agent::driver::{Driver, ExitStatus, TaskConfig, TaskHandle, TaskState, LOG_FILE};
use nimbus_api::InstanceSpec;

fn driver() -> ProcessDriver {
    ProcessDriver::new(
        PathBuf::from("/"),
        vec![env!("CARGO_BIN_EXE_nimbus-shim").into(), "__shim".into()],
    )
}

/// Cgroup tests need root; without it they are skipped (loudly).
fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let ok = unsafe { libc::geteuid() } == 0;
    if !ok {
        eprintln!("skipped: cgroup tests need root");
    }
    ok
}

fn unique(name: &str) -> String {
    format!("test-{name}-{}", std::process::id())
}

fn config(
    name: &str,
    dir: &Path,
    command: &[&str],
    cpu_millis: u64,
    memory_mib: u64,
) -> TaskConfig {
    config_env(name, dir, command, cpu_millis, memory_mib, &[])
}

fn config_env(
    name: &str,
    dir: &Path,
    command: &[&str],
    cpu_millis: u64,
    memory_mib: u64,
    env: &[(&str, &str)],
) -> TaskConfig {
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let spec: InstanceSpec = serde_json::from_value(serde_json::json!({
        "command": command,
        "cpu_millis": cpu_millis,
        "memory_mib": memory_mib,
        "env": env,
    }))
    .unwrap();
    TaskConfig {
        name: name.to_string(),
        generation: 1,
        spec,
        dir: dir.to_path_buf(),
        vm: None,
        incoming: None,
    }
}

/// Destroys the task at the end of a test, even a failing one.
struct Cleanup<'a>(&'a ProcessDriver, TaskHandle);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.destroy(&self.1);
    }
}

fn wait_exit(d: &ProcessDriver, h: &TaskHandle, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        match d.status(h).unwrap() {
            TaskState::Exited(st) => return st,
            TaskState::Running if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            TaskState::Running => panic!("task {} still running after {timeout:?}", h.name),
        }
    }
}

fn cgroup_dirs(h: &TaskHandle) -> Vec<PathBuf> {
    [
        "cgroup",
        "cgroup.memory",
        "cgroup.cpu",
        "cgroup.cpuacct",
        "cgroup.pids",
    ]
    .iter()
    .filter_map(|k| h.data.get(*k).map(PathBuf::from))
    .collect()
}

fn read(p: impl AsRef<Path>) -> String {
    let p = p.as_ref();
    fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn procs(dir: &Path) -> Vec<u32> {
    read(dir.join("cgroup.procs"))
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s[s.rfind(')').unwrap() + 2..].chars().next().unwrap();
            state != 'Z'
        }
        Err(_) => false,
    }
}

#[test]
fn fingerprint_probes_cgroups() {
    if !root() {
        return;
    }
    let fp = driver().fingerprint();
    assert!(fp.available, "{:?}", fp.facts);
    let v = &fp.facts["cgroup_version"];
    let expected = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2"
    } else {
        "v1"
    };
    assert_eq!(v, expected);
    assert!(!fp.facts["kernel"].is_empty());

    let broken = ProcessDriver::new(PathBuf::from("/"), vec!["/nonexistent/shim".into()]);
    assert!(!broken.fingerprint().available);
}

#[test]
fn limits_cgroup_membership_stop_and_destroy() {
    if !root() {
        return;
    }
    let d = driver();
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("limits");
    let h = d
        .start(&config(&name, tmp.path(), &["sleep", "30"], 500, 64))
        .unwrap();
    let _cleanup = Cleanup(&d, h.clone());
    let child = h.child_pid.expect("child pid recorded");
    assert_ne!(child, h.pid, "the command is not the shim");
    assert_eq!(read(tmp.path().join("child.pid")).trim(), child.to_string());
    assert_eq!(d.status(&h).unwrap(), TaskState::Running);

    let dirs = cgroup_dirs(&h);
    assert!(!dirs.is_empty());
    for dir in &dirs {
        assert!(dir.ends_with(format!("nimbus/{name}")), "{}", dir.display());
        let pids = procs(dir);
        assert!(
            pids.contains(&child),
            "{child} not in {}: {pids:?}",
            dir.display()
        );
        assert!(
            !pids.contains(&h.pid),
            "the shim must stay outside the task cgroup"
        );
    }
    let limit = (64u64 * 1024 * 1024).to_string();
    match h.data["cgroup_version"].as_str() {
        "v1" => {
            let mem = PathBuf::from(&h.data["cgroup.memory"]);
            assert_eq!(read(mem.join("memory.limit_in_bytes")).trim(), limit);
            if mem.join("memory.memsw.limit_in_bytes").exists() {
                assert_eq!(read(mem.join("memory.memsw.limit_in_bytes")).trim(), limit);
            }
            assert_eq!(read(mem.join("memory.swappiness")).trim(), "0");
            let cpu = PathBuf::from(&h.data["cgroup.cpu"]);
            assert_eq!(read(cpu.join("cpu.cfs_quota_us")).trim(), "50000");
            assert_eq!(read(cpu.join("cpu.cfs_period_us")).trim(), "100000");
        }
        "v2" => {
            let cg = PathBuf::from(&h.data["cgroup"]);
            assert_eq!(read(cg.join("memory.max")).trim(), limit);
            assert_eq!(read(cg.join("cpu.max")).trim(), "50000 100000");
        }
        v => panic!("unexpected cgroup version {v}"),
    }
    let stats = d.stats(&h).unwrap();
    assert!(stats.memory_bytes > 0, "{stats:?}");

    // An exit record of another start of the task is not this start's.
    let stale = r#"{"code":0,"signal":null,"oom_killed":false,"reason":"exited with code 0","run_id":"someone-else"}"#;
    fs::write(tmp.path().join("exit.json"), stale).unwrap();
    assert_eq!(d.status(&h).unwrap(), TaskState::Running);

    d.stop(&h, Duration::from_secs(5)).unwrap();
    let record: serde_json::Value =
        serde_json::from_str(&read(tmp.path().join("exit.json"))).unwrap();
    assert_eq!(record["run_id"].as_str(), Some(h.data["run_id"].as_str()));
    let st = wait_exit(&d, &h, Duration::from_secs(1));
    assert_eq!(st.signal, Some(libc::SIGTERM), "{st:?}");
    assert_eq!(st.reason, "killed by signal 15 (SIGTERM)");
    assert!(!st.oom_killed);
    assert!(!alive(child));
    d.stop(&h, Duration::from_secs(1)).unwrap(); // idempotent
    assert_eq!(d.status(&h).unwrap(), TaskState::Exited(st));

    d.destroy(&h).unwrap();
    for dir in &dirs {
        assert!(!dir.exists(), "{} still exists", dir.display());
    }
    assert!(!tmp.path().join("exit.json").exists());
    assert!(!tmp.path().join("child.pid").exists());
    assert!(!tmp.path().join("shim.json").exists());
    assert!(tmp.path().join(LOG_FILE).exists(), "the log is kept");
    d.destroy(&h).unwrap(); // idempotent
    assert!(!d.recover(&h).unwrap());
}

#[test]
fn oom_kill_is_reported() {
    if !root() {
        return;
    }
    let d = driver();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        &unique("oom"),
        tmp.path(),
        &[
            "python3",
            "-c",
            "b = bytearray(200 * 1024 * 1024); print('survived')",
        ],
        1000,
        32,
    );
    let h = d.start(&cfg).unwrap();
    let _cleanup = Cleanup(&d, h.clone());
    let st = wait_exit(&d, &h, Duration::from_secs(20));
    assert!(
        st.oom_killed,
        "{st:?}\nlog: {}",
        read(tmp.path().join(LOG_FILE))
    );
    assert_eq!(st.reason, "OOM killed: memory limit of 32 MiB reached");
    assert!(
        st.signal == Some(libc::SIGKILL) || st.code == Some(137),
        "{st:?}"
    );
    assert!(!st.success());
    assert!(!read(tmp.path().join(LOG_FILE)).contains("survived"));
}

#[test]
fn exit_code_env_workdir_and_log() {
    if !root() {
        return;
    }
    let d = driver();
    let tmp = tempfile::tempdir().unwrap();
    let script = "echo to-stdout; echo to-stderr >&2; echo \"foo=$FOO\"; pwd; exit 3";
    let cfg = config_env(
        &unique("exit"),
        tmp.path(),
        &["sh", "-c", script],
        200,
        64,
        &[("FOO", "bar baz")],
    );
    let h = d.start(&cfg).unwrap();
    let _cleanup = Cleanup(&d, h.clone());
    let st = wait_exit(&d, &h, Duration::from_secs(10));
    assert_eq!(st.code, Some(3));
    assert_eq!(st.signal, None);
    assert_eq!(st.reason, "exited with code 3");
    assert!(!st.success());
    let log = read(tmp.path().join(LOG_FILE));
    assert!(log.contains("to-stdout\n"), "{log}");
    assert!(log.contains("to-stderr\n"), "{log}");
    assert!(log.contains("foo=bar baz\n"), "{log}");
    let cwd = fs::canonicalize(tmp.path()).unwrap().join("data");
    assert!(log.contains(&format!("{}\n", cwd.display())), "{log}");

    // Restarting the same instance reuses the directory: the old exit status is gone
    // and the log is appended to.
    let cfg = config(
        &cfg.name,
        tmp.path(),
        &["sh", "-c", "echo second; exit 0"],
        200,
        64,
    );
    let h2 = d.start(&cfg).unwrap();
    let st = wait_exit(&d, &h2, Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
    assert_eq!(st.reason, "exited with code 0");
    let log = read(tmp.path().join(LOG_FILE));
    assert!(
        log.contains("to-stdout\n") && log.contains("second\n"),
        "{log}"
    );
    d.destroy(&h2).unwrap();
}

#[test]
fn command_not_found() {
    if !root() {
        return;
    }
    let d = driver();
    let tmp = tempfile::tempdir().unwrap();
    let h = d
        .start(&config(
            &unique("notfound"),
            tmp.path(),
            &["no-such-command-xyz", "arg"],
            100,
            16,
        ))
        .unwrap();
    let _cleanup = Cleanup(&d, h.clone());
    let st = wait_exit(&d, &h, Duration::from_secs(5));
    assert_eq!(st.code, Some(127));
    assert_eq!(st.reason, "command not found: no-such-command-xyz");
    assert_eq!(h.child_pid, None);
}

#[test]
fn shim_forwards_sigterm() {
    if !root() {
        return;
    }
    let d = driver();
    let tmp = tempfile::tempdir().unwrap();
    let h = d
        .start(&config(
            &unique("fwd"),
            tmp.path(),
            &["sleep", "30"],
            100,
            16,
        ))
        .unwrap();
    let _cleanup = Cleanup(&d, h.clone());
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(h.pid as i32, libc::SIGTERM) }, 0);
    let st = wait_exit(&d, &h, Duration::from_secs(5));
    assert_eq!(st.signal, Some(libc::SIGTERM), "{st:?}");
}

#[test]
fn recover_after_driver_restart_and_lost_shim() {
    if !root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let name = unique("recover");
    let h = {
        let d = driver();
        d.start(&config(&name, tmp.path(), &["sleep", "30"], 100, 16))
            .unwrap()
    };
    // A new driver, as after an agent restart.
    let d = driver();
    let _cleanup = Cleanup(&d, h.clone());
    // Round-trip through JSON like the agent's persisted state.
    let h: TaskHandle = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
    assert!(d.recover(&h).unwrap());
    assert_eq!(d.status(&h).unwrap(), TaskState::Running);
    assert!(alive(h.pid), "the shim survived");
    assert!(alive(h.child_pid.unwrap()));

    let mut wrong = h.clone();
    wrong.start_ticks += 1;
    assert!(
        !d.recover(&wrong).unwrap(),
        "a recycled pid is not our shim"
    );

    // The shim is SIGKILLed: the command outlives it and still counts as running,
    // but the task is no longer recoverable; stop still reaches it through the cgroup.
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(h.pid as i32, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(h.pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!alive(h.pid));
    assert_eq!(d.status(&h).unwrap(), TaskState::Running);
    assert!(!d.recover(&h).unwrap());
    d.stop(&h, Duration::from_secs(2)).unwrap();
    let st = wait_exit(&d, &h, Duration::from_secs(1));
    assert_eq!(st.reason, "supervisor lost; process gone");
    assert!(!alive(h.child_pid.unwrap()));
}

#[test]
fn starting_again_replaces_the_earlier_start() {
    if !root() {
        return;
    }
    let d = driver();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(&unique("again"), tmp.path(), &["sleep", "30"], 100, 16);
    let h1 = d.start(&cfg).unwrap();
    let _cleanup1 = Cleanup(&d, h1.clone());
    let h2 = d.start(&cfg).unwrap();
    let _cleanup2 = Cleanup(&d, h2.clone());
    assert!(!alive(h1.pid), "the earlier shim is retired");
    assert!(
        !alive(h1.child_pid.unwrap()),
        "the earlier command is killed"
    );
    assert_eq!(
        d.status(&h1).unwrap(),
        TaskState::Exited(ExitStatus {
            code: None,
            signal: None,
            oom_killed: false,
            reason: "replaced by a newer start of this task".into(),
        })
    );
    assert!(!d.recover(&h1).unwrap());
    // Acting on the stale handle leaves the newer start alone.
    d.stop(&h1, Duration::ZERO).unwrap();
    d.destroy(&h1).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(d.status(&h2).unwrap(), TaskState::Running);
    let child = h2.child_pid.unwrap();
    assert!(alive(child));
    for dir in cgroup_dirs(&h2) {
        assert!(procs(&dir).contains(&child), "{}", dir.display());
    }
    d.stop(&h2, Duration::from_secs(2)).unwrap();
    let st = wait_exit(&d, &h2, Duration::from_secs(1));
    assert_eq!(st.signal, Some(libc::SIGTERM), "{st:?}");
}

#[test]
fn pause_freezes_every_process_and_resume_thaws_them() {
    if !root() {
        return;
    }
    let d = driver();
    let tmp = tempfile::tempdir().unwrap();
    // A child in the background and the shell itself both write.
    let script = "(while true; do echo c >> child; sleep 0.01; done) & \
                  while true; do echo p >> parent; sleep 0.01; done";
    let cfg = config(
        &unique("freeze"),
        tmp.path(),
        &["sh", "-c", script],
        200,
        32,
    );
    let h = d.start(&cfg).unwrap();
    let _cleanup = Cleanup(&d, h.clone());
    let data = tmp.path().join("data");
    let sizes = || {
        (
            fs::metadata(data.join("parent"))
                .map(|m| m.len())
                .unwrap_or(0),
            fs::metadata(data.join("child"))
                .map(|m| m.len())
                .unwrap_or(0),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while sizes().0 == 0 || sizes().1 == 0 {
        assert!(Instant::now() < deadline, "the writers never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.pause(&h).unwrap();
    let frozen = sizes();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sizes(), frozen, "nothing is written while paused");
    assert!(matches!(d.status(&h), Ok(TaskState::Running)));

    d.resume(&h).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = sizes();
        if now.0 > frozen.0 && now.1 > frozen.1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both writers run again after resume"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A paused task can still be stopped.
    d.pause(&h).unwrap();
    d.stop(&h, Duration::from_secs(2)).unwrap();
    assert!(matches!(d.status(&h), Ok(TaskState::Exited(_))));
}
