//! End-to-end: kill -9 of the server or the agent loses nothing and duplicates nothing.

mod common;

use std::time::Duration;

use common::*;

/// Counts live processes whose command line contains `marker`.
fn count_processes(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(marker) && !cmd.contains("__shim")
        })
        .filter(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            !stat.contains(") Z ")
        })
        .count()
}

#[test]
fn server_kill9_then_restart_keeps_every_instance_and_state() {
    let mut c = TestCluster::split("t-srvcrash", &[], &[]);
    c.cli(&["instance", "create", "keep", "--", "sleep", "301"]);
    c.cli(&["instance", "create", "halt", "--", "sleep", "302"]);
    let keep = c.wait_state("keep", "running");
    c.wait_state("halt", "running");
    c.cli(&["instance", "stop", "halt"]);
    c.wait_state("halt", "stopped");

    c.kill9_server();
    // Acknowledged while the server is down? Nothing can be: the CLI must fail clearly.
    let out = c.cli(&["instance", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));

    c.start_server();
    let keep2 = c.wait_state("keep", "running");
    assert_eq!(
        keep2["pid"], keep["pid"],
        "the process must not be restarted"
    );
    assert_eq!(keep2["generation"], keep["generation"]);
    assert_eq!(c.instance("halt")["state"], "stopped");
    assert_eq!(count_processes("sleep 301"), 1);

    // The reconcilers work after the restart: a new instance gets placed.
    c.cli(&["instance", "create", "after", "--", "sleep", "303"]);
    c.wait_state("after", "running");
}

#[test]
fn agent_kill9_then_restart_readopts_without_duplicates() {
    let mut c = TestCluster::split("t-agcrash", &[], &[]);
    c.cli(&["instance", "create", "survivor", "--", "sleep", "311"]);
    c.cli(&["instance", "create", "victim", "--", "sleep", "312"]);
    let survivor = c.wait_state("survivor", "running");
    let victim = c.wait_state("victim", "running");
    let spid = survivor["pid"].as_u64().unwrap();

    c.kill9_agent();
    // The processes outlive the agent; one of them dies while the agent is away.
    assert!(pid_alive(spid));
    let vpid = victim["pid"].as_u64().unwrap() as i32;
    unsafe { libc::kill(vpid, libc::SIGKILL) };

    c.start_agent();
    // The dead one is reported (killed by signal 9), the live one re-adopted.
    let v = c.wait_state("victim", "failed");
    assert!(v["reason"].as_str().unwrap_or("").contains("signal"), "{v}");
    std::thread::sleep(Duration::from_secs(2));
    let s2 = c.wait_state("survivor", "running");
    assert_eq!(
        s2["pid"].as_u64(),
        Some(spid),
        "the running process must be re-adopted"
    );
    assert_eq!(
        count_processes("sleep 311"),
        1,
        "no duplicate after re-adoption"
    );

    // The re-adopted process is still controllable.
    c.cli(&["instance", "stop", "survivor"]);
    c.wait_state("survivor", "stopped");
    c.wait_for("process to exit", Duration::from_secs(10), || {
        (!pid_alive(spid)).then_some(())
    });
    assert_eq!(count_processes("sleep 311"), 0);
}
