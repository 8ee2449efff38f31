//! Test harness: starts the real `nimbus` binary (as `up`, or as a separate server and
//! agent) in a temporary data directory, drives it through its CLI and HTTP API, and
//! can kill -9 and restart either part. `netns` puts agents in network namespaces.
#![allow(dead_code)]

pub mod netns;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

/// A started nimbus process, killed with SIGKILL when dropped.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(args: &[String], log: PathBuf) -> Proc {
        Self::spawn_in(None, args, log)
    }

    /// Spawns nimbus, inside network namespace `netns` when given.
    fn spawn_in(netns: Option<&str>, args: &[String], log: PathBuf) -> Proc {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open log");
        let mut cmd = Command::new(BIN);
        if let Some(ns) = netns {
            // Join only the network namespace (`ip netns exec` would also remount /sys,
            // hiding the cgroup file systems the agent needs).
            use std::os::unix::io::AsRawFd;
            use std::os::unix::process::CommandExt;
            let f = fs::File::open(format!("/var/run/netns/{ns}")).expect("open netns");
            // SAFETY: setns is async-signal-safe; the fd stays open until spawn returns.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(args)
            .env("NIMBUS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn nimbus");
        Proc { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, like a crash or `kill -9`.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Split,
}

/// One control plane with one node, on loopback.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub node: String,
    mode: Mode,
    server_args: Vec<String>,
    agent_args: Vec<String>,
    pub server: Option<Proc>,
    pub agent: Option<Proc>,
    /// More agents joined with [`TestCluster::add_agent`], and their node names.
    pub extra_agents: Vec<Proc>,
    extra_nodes: Vec<String>,
    listen: String,
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

impl TestCluster {
    /// `nimbus up` with a node named `node` and extra flags (e.g. capacity overrides).
    pub fn up(node: &str, extra: &[&str]) -> TestCluster {
        let mut c = Self::new(node, Mode::Up, s(extra), vec![]);
        c.start_server();
        c.wait_node_ready();
        c
    }

    /// `nimbus server` alone, listening on `listen` (agents join with their own harness).
    pub fn server_only(listen: &str, server_extra: &[&str]) -> TestCluster {
        let mut c = Self::new("", Mode::Split, s(server_extra), vec![]);
        c.listen = listen.to_string();
        c.start_server();
        c
    }

    /// `nimbus server` and `nimbus agent` as two processes.
    pub fn split(node: &str, server_extra: &[&str], agent_extra: &[&str]) -> TestCluster {
        let mut c = Self::new(node, Mode::Split, s(server_extra), s(agent_extra));
        c.start_server();
        c.start_agent();
        c.wait_node_ready();
        c
    }

    fn new(node: &str, mode: Mode, server_args: Vec<String>, agent_args: Vec<String>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nimbus-test-")
            .tempdir()
            .expect("tempdir");
        TestCluster {
            dir,
            url: String::new(),
            node: node.to_string(),
            mode,
            server_args,
            agent_args,
            server: None,
            agent: None,
            extra_agents: Vec::new(),
            extra_nodes: Vec::new(),
            listen: "127.0.0.1:0".into(),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts (or restarts) the server, or `nimbus up` in Up mode.
    pub fn start_server(&mut self) {
        let data = self.data_dir();
        let mut args = match self.mode {
            Mode::Up => s(&["up", "--name", &self.node]),
            Mode::Split => s(&["server"]),
        };
        args.extend(s(&[
            "--listen",
            &self.listen,
            "--data-dir",
            data.to_str().unwrap(),
        ]));
        if !self.server_args.iter().any(|a| a == "--node-down-after") {
            args.extend(s(&["--node-down-after", "5"]));
        }
        args.extend(self.server_args.clone());
        let log = self.dir.path().join("server.log");
        let before = fs::read_to_string(&log).map(|t| t.len()).unwrap_or(0);
        let p = Proc::spawn(&args, log);
        // Learn the address from the log line `... listening addr=127.0.0.1:PORT ...`.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = p.log_text();
            if let Some(addr) = text[before.min(text.len())..]
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
            {
                self.listen = addr.to_string();
                self.url = format!("http://{addr}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "server did not start; log:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.server = Some(p);
    }

    /// Starts (or restarts) the separate agent (Split mode).
    pub fn start_agent(&mut self) {
        assert!(
            self.mode == Mode::Split,
            "agent runs inside `up` in Up mode"
        );
        let data = self.data_dir().join("agent");
        let mut args = s(&[
            "agent",
            "--server",
            &self.url,
            "--name",
            &self.node,
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        args.extend(self.agent_args.clone());
        self.agent = Some(Proc::spawn(&args, self.dir.path().join("agent.log")));
    }

    /// Starts one more agent (its own node `name`, own data directory) and waits
    /// until its node is ready.
    pub fn add_agent(&mut self, name: &str, extra: &[&str]) {
        let data = self.dir.path().join(format!("agent-{name}"));
        let mut args = s(&[
            "agent",
            "--server",
            &self.url,
            "--name",
            name,
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        args.extend(s(extra));
        self.extra_nodes.push(name.to_string());
        self.extra_agents.push(Proc::spawn(
            &args,
            self.dir.path().join(format!("agent-{name}.log")),
        ));
        let n = name.to_string();
        self.wait_for(
            &format!("node {name} to register"),
            Duration::from_secs(30),
            || {
                let (code, v) = self.http("GET", &format!("/v1/nodes/{n}"), None);
                (code == 200 && v["state"] == "ready").then_some(())
            },
        );
    }

    pub fn kill9_server(&mut self) {
        if let Some(p) = self.server.take() {
            p.kill9();
        }
    }

    pub fn kill9_agent(&mut self) {
        if let Some(p) = self.agent.take() {
            p.kill9();
        }
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut files: Vec<PathBuf> = fs::read_dir(self.dir.path())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|f| f.extension().is_some_and(|e| e == "log"));
        files.sort();
        for f in files {
            if let Ok(t) = fs::read_to_string(&f) {
                let name = f.file_name().unwrap_or_default().to_string_lossy();
                out.push_str(&format!("--- {name} ---\n{t}\n"));
            }
        }
        out
    }

    /// Runs the CLI against this cluster.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("NIMBUS_SERVER", &self.url)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run nimbus cli")
    }

    /// Runs the CLI, asserting success (failing with its stderr and the cluster's logs).
    pub fn cli_ok(&self, args: &[&str]) -> Output {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "nimbus {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        out
    }

    /// Runs the CLI with `-o json`, asserting success, and parses stdout.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.cli(&a);
        assert!(
            out.status.success(),
            "nimbus {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "nimbus {args:?} printed non-JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    pub fn instance(&self, name: &str) -> Value {
        self.cli_json(&["instance", "show", name])
    }

    /// Raw HTTP: returns (status, parsed JSON body or Null).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let req =
            ureq::request(method, &format!("{}{path}", self.url)).timeout(Duration::from_secs(30));
        let res = match body {
            Some(b) => req.set("content-type", "application/json").send_string(b),
            None => req.call(),
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Polls until `f` returns Some, or panics with `what` and the logs.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the instance is in `state`; returns it.
    pub fn wait_state(&self, name: &str, state: &str) -> Value {
        self.wait_for(
            &format!("instance {name} to be {state}"),
            Duration::from_secs(30),
            || {
                let (code, v) = self.http("GET", &format!("/v1/instances/{name}"), None);
                (code == 200 && v["state"] == state).then_some(v)
            },
        )
    }

    fn wait_node_ready(&self) {
        let node = self.node.clone();
        self.wait_for("the node to register", Duration::from_secs(30), || {
            let (code, v) = self.http("GET", &format!("/v1/nodes/{node}"), None);
            (code == 200 && v["state"] == "ready").then_some(())
        });
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for p in self.extra_agents.drain(..) {
            p.kill9();
        }
        self.kill9_agent();
        self.kill9_server();
        // Shims and their commands outlive agents by design: end the ones this test made.
        kill_processes_mentioning(self.dir.path());
        if !self.node.is_empty() {
            remove_node_cgroups(&self.node);
        }
        for n in &self.extra_nodes {
            remove_node_cgroups(n);
        }
    }
}

/// SIGKILLs every process whose command line mentions `path`, and their cgroups' tasks.
pub fn kill_processes_mentioning(path: &Path) {
    let needle = path.to_string_lossy().to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(&needle) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Every cgroup directory of this node's instances (v1: per controller; v2: one).
pub fn node_cgroup_dirs(node: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for root in cgroup_roots() {
        let d = root.join("nimbus").join(node);
        if d.is_dir() {
            out.push(d);
        }
    }
    out
}

pub fn cgroup_roots() -> Vec<PathBuf> {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        return vec![PathBuf::from("/sys/fs/cgroup")];
    }
    ["memory", "cpu", "cpu,cpuacct", "cpuacct", "pids", "freezer"]
        .iter()
        .map(|c| Path::new("/sys/fs/cgroup").join(c))
        .filter(|p| p.is_dir() && !p.is_symlink())
        .collect()
}

pub fn remove_node_cgroups(node: &str) {
    for d in node_cgroup_dirs(node) {
        if let Ok(entries) = fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    if let Ok(procs) = fs::read_to_string(e.path().join("cgroup.procs")) {
                        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                    for _ in 0..50 {
                        if fs::remove_dir(e.path()).is_ok() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
        let _ = fs::remove_dir(&d);
    }
}

/// The memory cgroup directory a pid lives in (v1 `memory` controller or v2 unified).
pub fn memory_cgroup_of(pid: u64) -> PathBuf {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/PID/cgroup");
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if v2 && ctrls.is_empty() {
            return PathBuf::from(format!("/sys/fs/cgroup{path}"));
        }
        if !v2 && ctrls.split(',').any(|c| c == "memory") {
            return PathBuf::from(format!("/sys/fs/cgroup/memory{path}"));
        }
    }
    panic!("pid {pid} has no memory cgroup: {text}");
}

/// Reads the memory limit in bytes of a cgroup directory (v1 or v2).
pub fn memory_limit(cg: &Path) -> u64 {
    let f = if cg.join("memory.max").exists() {
        cg.join("memory.max")
    } else {
        cg.join("memory.limit_in_bytes")
    };
    fs::read_to_string(&f)
        .unwrap_or_else(|e| panic!("read {}: {e}", f.display()))
        .trim()
        .parse()
        .unwrap()
}

pub fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Arguments of `nimbus instance create NAME --vm` on the tiny image with 128 MiB of
/// memory, a disk of `disk`, the user-data script `user_data`, and `extra` flags.
pub fn tiny_vm<'a>(
    name: &'a str,
    disk: &'a str,
    user_data: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "instance",
        "create",
        name,
        "--vm",
        "--image",
        "tiny",
        "--memory",
        "128Mi",
        "--disk-size",
        disk,
        "--user-data",
    ];
    args.push(user_data.to_str().expect("user-data path is UTF-8"));
    args.extend_from_slice(extra);
    args
}

/// How many QEMU processes run a VM named `name` on this host (any node).
pub fn qemu_processes(name: &str) -> usize {
    let out = Command::new("pgrep")
        .args(["-f", &format!("qemu-system-x86_64 -name {name} ")])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().count()
}
