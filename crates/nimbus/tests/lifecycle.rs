//! End-to-end: process instances under real cgroups, driven through the real binary.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn create_runs_under_cgroup_with_spec_limits_then_stop_start_delete_clean_up() {
    let c = TestCluster::up("t-life", &[]);
    c.cli_ok(&[
        "instance",
        "create",
        "web",
        "--memory",
        "64Mi",
        "--cpu",
        "0.5",
        "--",
        "sh",
        "-c",
        "echo hello from web; echo to stderr >&2; exec sleep 300",
    ]);

    let inst = c.wait_state("web", "running");
    assert_eq!(inst["node"], "t-life");
    let pid = inst["pid"].as_u64().expect("running instance has a pid");
    assert!(pid_alive(pid));

    // The process sits in its own cgroup whose memory limit is the spec's.
    let cg = memory_cgroup_of(pid);
    assert!(
        cg.to_string_lossy().contains("nimbus/t-life/web"),
        "unexpected cgroup {}",
        cg.display()
    );
    assert_eq!(memory_limit(&cg), 64 * 1024 * 1024);

    // Output of both streams reaches `nimbus instance logs`.
    c.wait_for("logs", Duration::from_secs(15), || {
        let out = c.cli(&["instance", "logs", "web"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (text.contains("hello from web") && text.contains("to stderr")).then_some(())
    });

    // The list shows it as a table with the columns users rely on.
    let list = c.cli(&["instance", "list"]);
    let table = String::from_utf8_lossy(&list.stdout);
    for col in ["NAME", "KIND", "STATE", "NODE", "CPU", "MEMORY", "AGE"] {
        assert!(table.contains(col), "missing column {col}: {table}");
    }
    assert!(
        table.contains("web") && table.contains("running"),
        "{table}"
    );

    // Stop: the process and its cgroup go away.
    assert!(c.cli(&["instance", "stop", "web"]).status.success());
    c.wait_state("web", "stopped");
    c.wait_for("process to exit", Duration::from_secs(10), || {
        (!pid_alive(pid)).then_some(())
    });
    assert!(!cg.exists(), "cgroup {} survived stop", cg.display());

    // Start again: a new process, same limits.
    assert!(c.cli(&["instance", "start", "web"]).status.success());
    let inst = c.wait_state("web", "running");
    let pid2 = inst["pid"].as_u64().unwrap();
    assert_ne!(pid, pid2);
    let cg2 = memory_cgroup_of(pid2);
    assert_eq!(memory_limit(&cg2), 64 * 1024 * 1024);

    // Delete: process, cgroup and the instance disappear.
    assert!(c.cli(&["instance", "delete", "web"]).status.success());
    c.wait_for("instance to be deleted", Duration::from_secs(15), || {
        (c.http("GET", "/v1/instances/web", None).0 == 404).then_some(())
    });
    c.wait_for("process to exit", Duration::from_secs(10), || {
        (!pid_alive(pid2)).then_some(())
    });
    assert!(!cg2.exists(), "cgroup {} survived delete", cg2.display());
}

#[test]
fn memory_hog_is_reported_as_oom_killed() {
    let c = TestCluster::up("t-oom", &[]);
    c.cli_ok(&[
        "instance",
        "create",
        "hog",
        "--memory",
        "32Mi",
        "--",
        "python3",
        "-c",
        "import time; b = bytearray(256 * 1024 * 1024); time.sleep(60)",
    ]);
    let inst = c.wait_state("hog", "failed");
    let reason = inst["reason"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        reason.contains("oom"),
        "reason should name the OOM kill: {inst}"
    );
    assert_eq!(inst["will_restart"], false);
}

#[test]
fn on_failure_restarts_with_backoff_and_counts_restarts() {
    let c = TestCluster::up("t-restart", &[]);
    c.cli_ok(&[
        "instance",
        "create",
        "flaky",
        "--restart",
        "on-failure",
        "--",
        "sh",
        "-c",
        "echo attempt; exit 3",
    ]);
    // Seen between attempts (failed, waiting for its backoff), not in the moment
    // an attempt runs.
    let inst = c.wait_for("two restarts", Duration::from_secs(30), || {
        let v = c.instance("flaky");
        (v["restarts"].as_u64().unwrap_or(0) >= 2 && v["state"] == "failed").then_some(v)
    });
    assert_eq!(inst["exit_code"], 3, "{inst}");
    let reason = inst["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("exited with code 3"), "{inst}");

    // A `never` instance that exits 0 ends stopped, not restarted.
    c.cli(&["instance", "create", "once", "--", "true"]);
    let once = c.wait_state("once", "stopped");
    assert_eq!(once["exit_code"], 0);
    assert_eq!(once["restarts"], 0);
}

#[test]
fn full_node_keeps_instances_pending_with_a_reason_until_capacity_frees() {
    let c = TestCluster::up("t-cap", &["--cpus", "1", "--memory", "300Mi"]);
    for name in ["a", "b"] {
        let out = c.cli(&[
            "instance", "create", name, "--memory", "128Mi", "--cpu", "0.25", "--", "sleep", "300",
        ]);
        assert!(out.status.success());
        c.wait_state(name, "running");
    }
    c.cli(&[
        "instance", "create", "c", "--memory", "128Mi", "--cpu", "0.25", "--", "sleep", "300",
    ]);
    let pending = c.wait_for("a pending reason", Duration::from_secs(10), || {
        let v = c.instance("c");
        (v["state"] == "pending" && v["reason"].as_str().unwrap_or("").contains("memory"))
            .then_some(v)
    });
    assert!(pending["node"].is_null());

    let nodes = c.cli_json(&["node", "list"]);
    assert_eq!(nodes[0]["allocated"]["memory_mib"], 256);
    assert_eq!(nodes[0]["capacity"]["memory_mib"], 300);

    c.cli(&["instance", "delete", "a"]);
    let c_inst = c.wait_state("c", "running");
    assert_eq!(c_inst["node"], "t-cap");
}

#[test]
fn apply_is_idempotent() {
    let c = TestCluster::up("t-apply", &[]);
    let spec = format!("{}/../../examples/web.toml", env!("CARGO_MANIFEST_DIR"));
    let first = c.cli(&["apply", "-f", &spec]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("created"));
    let inst = c.wait_state("web", "running");
    let second = c.cli(&["apply", "-f", &spec]);
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("unchanged"));
    let again = c.instance("web");
    assert_eq!(
        again["generation"], inst["generation"],
        "apply must not replace a running instance"
    );
    assert_eq!(again["pid"], inst["pid"]);
}

#[test]
fn metrics_expose_instances_nodes_and_latencies() {
    let c = TestCluster::up("t-metrics", &[]);
    c.cli(&["instance", "create", "m1", "--", "sleep", "300"]);
    c.wait_state("m1", "running");
    let body = ureq::get(&format!("{}/metrics", c.url))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        body.contains("nimbus_instances{state=\"running\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("nimbus_node_memory_capacity_bytes{node=\"t-metrics\"}"),
        "{body}"
    );
    assert!(
        body.contains("nimbus_node_cpu_allocated_millicores{node=\"t-metrics\"} 250"),
        "{body}"
    );
    assert!(
        body.contains("nimbus_scheduler_decision_seconds_bucket"),
        "{body}"
    );
    assert!(
        body.contains("nimbus_api_request_duration_seconds_bucket"),
        "{body}"
    );
}

#[test]
fn a_failing_health_check_restarts_the_instance() {
    let c = TestCluster::up("t-health", &[]);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let body = serde_json::json!({
        "name": "hc",
        "spec": {
            "command": ["python3", "-m", "http.server", port.to_string(), "--bind", "127.0.0.1"],
            "cpu_millis": 200,
            "memory_mib": 64,
            "restart": "on-failure",
            "health_check": {
                "kind": "http", "port": port, "path": "/",
                "interval_secs": 1, "failures": 2, "grace_secs": 1
            }
        }
    });
    let (code, v) = c.http("POST", "/v1/instances", Some(&body.to_string()));
    assert_eq!(code, 201, "{v}");
    let first = c.wait_state("hc", "running");
    // Healthy: it keeps running.
    std::thread::sleep(Duration::from_secs(4));
    let still = c.instance("hc");
    assert_eq!(still["restarts"], 0, "{still}");
    assert_eq!(still["pid"], first["pid"]);

    // Frozen, it still holds its port but answers nothing: unhealthy, then restarted.
    let pid = first["pid"].as_u64().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let again = c.wait_for(
        "a restart after failed probes",
        Duration::from_secs(40),
        || {
            let v = c.instance("hc");
            (v["restarts"].as_u64().unwrap_or(0) >= 1 && v["state"] == "running").then_some(v)
        },
    );
    assert_ne!(again["pid"], first["pid"]);
    let (_, ev) = c.http("GET", "/v1/events?limit=1000", None);
    assert!(
        ev["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["object"] == "hc"
                && e["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("health check failed")),
        "{ev}"
    );

    // Bad input: a malformed probe, a VM probing a port it does not forward.
    let out = c.cli(&[
        "instance",
        "create",
        "x",
        "--health-check",
        "udp:53",
        "--",
        "true",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcp:PORT or http:PORT/PATH"));
    let out = c.cli(&[
        "instance",
        "create",
        "v",
        "--vm",
        "--image",
        "tiny",
        "--memory",
        "64Mi",
        "--health-check",
        "tcp:22",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not forward"));
}
