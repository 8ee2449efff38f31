//! End-to-end: real QEMU guests (TCG is fine) built from Debian packages, driven
//! through the real binary. VM tests run one at a time: each boots guests on a
//! machine with few cores.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::*;
use serde_json::Value;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts a cluster and registers the tiny image (built once, then cached).
fn cluster_with_tiny(node: &str, extra: &[&str]) -> TestCluster {
    let c = TestCluster::up(node, extra);
    let out = c.cli(&["image", "build", "tiny"]);
    assert!(
        out.status.success(),
        "image build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c
}

fn wait_guest_ready(c: &TestCluster, name: &str) -> Value {
    c.wait_for(
        &format!("guest {name} to be ready"),
        Duration::from_secs(120),
        || {
            let (code, v) = c.http("GET", &format!("/v1/instances/{name}"), None);
            (code == 200 && v["guest_ready"] == true && v["state"] == "running").then_some(v)
        },
    )
}

/// Host port of the first endpoint, e.g. "20001->80/tcp".
fn host_port(inst: &Value) -> u16 {
    let ep = inst["endpoints"][0].as_str().expect("an endpoint");
    ep.split("->").next().unwrap().parse().unwrap()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    ureq::get(&format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(3))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn vm_boots_serves_pauses_resumes_and_stops_gracefully() {
    let _one = serial();
    let c = cluster_with_tiny("t-vm", &[]);
    let dir = tempfile::tempdir().unwrap();
    let user_data = dir.path().join("hello.sh");
    std::fs::write(
        &user_data,
        "#!/bin/sh\necho hello-from-user-data > /www/hello.txt\n",
    )
    .unwrap();
    let port = free_port();
    c.cli_ok(&[
        "instance",
        "create",
        "vm1",
        "--vm",
        "--image",
        "tiny",
        "--vcpus",
        "1",
        "--memory",
        "256Mi",
        "--port",
        &format!("{port}:80"),
        "--user-data",
        user_data.to_str().unwrap(),
        "--disk-size",
        "64Mi",
    ]);

    let inst = wait_guest_ready(&c, "vm1");
    assert!(
        matches!(inst["accelerator"].as_str(), Some("kvm" | "tcg")),
        "{inst}"
    );
    assert_eq!(inst["endpoints"][0], format!("{port}->80/tcp"));
    assert!(inst["boot_ms"].as_u64().unwrap() > 0);
    // QEMU is findable by the instance name (`ps`), and charged to the node.
    let pid = inst["pid"].as_u64().unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        cmdline.contains("qemu-system-x86_64\0-name\0vm1\0"),
        "{cmdline:?}"
    );
    let node = c.cli_json(&["node", "show", "t-vm"]);
    assert_eq!(
        node[0]["allocated"]["memory_mib"],
        256 + 128,
        "guest memory + QEMU overhead"
    );

    // The guest's web server answers through the forwarded port, with user-data's page.
    let page = c.wait_for("the guest web server", Duration::from_secs(30), || {
        http_get(port, "/")
    });
    assert!(page.contains("hello from vm1"), "{page}");
    assert_eq!(
        http_get(port, "/hello.txt").unwrap().trim(),
        "hello-from-user-data"
    );
    let console = String::from_utf8(c.cli(&["instance", "console", "vm1"]).stdout).unwrap();
    assert!(console.contains("nimbus-guest-ready vm1"), "{console}");

    // Pause: QMP stops the vCPUs, the guest stops answering; resume brings it back.
    assert!(c.cli(&["instance", "pause", "vm1"]).status.success());
    c.wait_state("vm1", "paused");
    assert!(
        http_get(port, "/").is_none(),
        "a paused guest must not answer"
    );
    assert!(c.cli(&["instance", "resume", "vm1"]).status.success());
    c.wait_state("vm1", "running");
    assert!(http_get(port, "/").is_some());

    // A second VM on the same node gets its own host port.
    c.cli(&[
        "instance", "create", "vm2", "--vm", "--image", "tiny", "--memory", "128Mi", "--port", "80",
    ]);
    let vm2 = wait_guest_ready(&c, "vm2");
    let port2 = host_port(&vm2);
    assert_ne!(port2, port);
    let page2 = c.wait_for("vm2's web server", Duration::from_secs(30), || {
        http_get(port2, "/")
    });
    assert!(page2.contains("hello from vm2"));

    // Stop is graceful: the guest sees the power button and powers off.
    assert!(c.cli(&["instance", "stop", "vm1"]).status.success());
    let stopped = c.wait_state("vm1", "stopped");
    assert!(
        stopped["reason"]
            .as_str()
            .unwrap()
            .contains("stopped by request"),
        "{stopped}"
    );
    let console = String::from_utf8(c.cli(&["instance", "console", "vm1"]).stdout).unwrap();
    assert!(console.contains("power button, powering off"), "{console}");
    assert!(!pid_alive(pid));

    // A stopped VM keeps its disk on its node and starts there again.
    let vm1_disk = c.data_dir().join("agent/instances/vm1/overlay.qcow2");
    assert!(vm1_disk.exists(), "stop must not delete the VM's disk");
    std::thread::sleep(Duration::from_secs(2));
    assert!(vm1_disk.exists(), "the node must keep a stopped VM's disk");
    assert!(c.cli(&["instance", "start", "vm1"]).status.success());
    let again = wait_guest_ready(&c, "vm1");
    assert_eq!(again["node"], "t-vm");
    assert!(vm1_disk.exists());
    c.cli(&["instance", "delete", "vm1"]);
    c.wait_for("vm1's disk to go", Duration::from_secs(30), || {
        (!vm1_disk.exists()).then_some(())
    });

    // Delete removes the overlay, the seed and the sockets.
    let vm2_dir = c.data_dir().join("agent/instances/vm2");
    assert!(vm2_dir.join("seed.iso").exists());
    assert!(vm2_dir.join("qmp.sock").exists());
    c.cli(&["instance", "delete", "vm2"]);
    c.wait_for("vm2 to be deleted", Duration::from_secs(30), || {
        (c.http("GET", "/v1/instances/vm2", None).0 == 404).then_some(())
    });
    c.wait_for("vm2's files to go", Duration::from_secs(10), || {
        (!vm2_dir.join("seed.iso").exists() && !vm2_dir.join("qmp.sock").exists()).then_some(())
    });
}

#[test]
fn vm_killed_from_outside_fails_and_restarts_under_on_failure() {
    let _one = serial();
    let c = cluster_with_tiny("t-vmkill", &[]);
    c.cli(&[
        "instance", "create", "doomed", "--vm", "--image", "tiny", "--memory", "128Mi",
    ]);
    c.cli(&[
        "instance",
        "create",
        "phoenix",
        "--vm",
        "--image",
        "tiny",
        "--memory",
        "128Mi",
        "--restart",
        "on-failure",
    ]);
    let doomed = c.wait_state("doomed", "running");
    let phoenix = c.wait_state("phoenix", "running");
    for v in [&doomed, &phoenix] {
        unsafe { libc::kill(v["pid"].as_u64().unwrap() as i32, libc::SIGKILL) };
    }
    let d = c.wait_state("doomed", "failed");
    assert!(d["reason"].as_str().unwrap().contains("signal 9"), "{d}");
    let p = c.wait_for("phoenix to restart", Duration::from_secs(60), || {
        let v = c.instance("phoenix");
        (v["restarts"].as_u64() >= Some(1) && v["state"] == "running").then_some(v)
    });
    assert_ne!(p["pid"], phoenix["pid"]);
}

#[test]
fn agent_restart_readopts_a_running_vm() {
    let _one = serial();
    let mut c = TestCluster::split("t-vmagent", &[], &[]);
    assert!(c.cli(&["image", "build", "tiny"]).status.success());
    c.cli(&[
        "instance", "create", "keeper", "--vm", "--image", "tiny", "--memory", "128Mi", "--port",
        "80",
    ]);
    let before = wait_guest_ready(&c, "keeper");
    let port = host_port(&before);
    c.kill9_agent();
    c.start_agent();
    std::thread::sleep(Duration::from_secs(3));
    let after = c.wait_state("keeper", "running");
    assert_eq!(
        after["pid"], before["pid"],
        "QEMU must be re-adopted, not restarted"
    );
    assert_eq!(after["endpoints"], before["endpoints"]);
    assert!(http_get(port, "/").unwrap().contains("hello from keeper"));
    // Still controllable through QMP after re-adoption.
    assert!(c.cli(&["instance", "pause", "keeper"]).status.success());
    c.wait_state("keeper", "paused");
}

#[test]
fn vm_bad_inputs_are_refused_clearly() {
    let _one = serial();
    let c = cluster_with_tiny("t-vmbad", &["--memory", "40Ti"]);
    let post = |body: &str| c.http("POST", "/v1/instances", Some(body));
    let vm = |extra: &str| {
        format!(
            r#"{{"name":"bad","spec":{{"kind":"vm","cpu_millis":1000,"memory_mib":128{extra}}}}}"#
        )
    };
    let check = |(code, body): (u16, Value), want: u16, needle: &str| {
        assert_eq!(code, want, "{body}");
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
    };
    check(
        post(&vm(r#","image":"nope""#)),
        400,
        "image \"nope\" not found",
    );
    check(post(&vm("")), 400, "needs an image");
    check(post(&vm(r#","image":"tiny","vcpus":0"#)), 400, "vcpus");
    check(
        post(&vm(&format!(
            r#","image":"tiny","user_data":"{}""#,
            "x".repeat(70_000)
        ))),
        400,
        "user-data",
    );
    check(
        post(
            r#"{"name":"bad","spec":{"kind":"vm","image":"tiny","cpu_millis":1000,"memory_mib":50000000}}"#,
        ),
        422,
        "largest node",
    );
    let port = free_port();
    let ok = format!(
        r#"{{"name":"first","spec":{{"kind":"vm","image":"tiny","cpu_millis":1000,"memory_mib":128,"ports":[{{"host":{port},"guest":80}}]}}}}"#
    );
    assert_eq!(post(&ok).0, 201);
    check(
        post(&ok.replace("first", "second")),
        409,
        "already forwarded",
    );

    // Image files that are not images.
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.qcow2");
    std::fs::write(&text, "just some text, not a disk\n".repeat(100)).unwrap();
    let out = c.cli(&["image", "import", "notes", text.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a disk image"));
    let good = dir.path().join("good.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&good)
        .arg("64M")
        .status()
        .unwrap();
    assert!(st.success());
    let mut bytes = std::fs::read(&good).unwrap();
    bytes.truncate(1024);
    let truncated = dir.path().join("truncated.qcow2");
    std::fs::write(&truncated, bytes).unwrap();
    let out = c.cli(&["image", "import", "trunc", truncated.to_str().unwrap()]);
    assert!(!out.status.success(), "a truncated qcow2 must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("qcow2") || err.contains("disk image"), "{err}");
    let images = c.cli_json(&["image", "list"]);
    let names: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tiny"], "refused imports leave nothing behind");
    assert!(!c.data_dir().join("server/images/notes").exists());

    // QEMU failing to start is reported with its own words.
    c.cli_ok(&[
        "instance", "create", "huge", "--vm", "--image", "tiny", "--memory", "20Ti",
    ]);
    let huge = c.wait_state("huge", "failed");
    assert!(
        huge["reason"]
            .as_str()
            .unwrap()
            .contains("qemu-system-x86_64"),
        "{huge}"
    );
}
