//! Fault tolerance end to end: one server and agents in their own network namespaces.
//! Nodes crash (agent and workloads killed), freeze (SIGSTOP + cgroup freezer) or lose
//! their link; instances move by their HA policy, a node that comes back stops what
//! moved away (fencing), and the server finishes a failover it was killed in.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::netns::NetCluster;
use common::*;
use serde_json::Value;

/// One multi-node cluster at a time: timing on a small machine stays predictable.
static SERIAL: Mutex<()> = Mutex::new(());

const SERVER: &[&str] = &[
    "--node-down-after",
    "2",
    "--node-suspect-after",
    "1",
    "--node-probation",
    "3",
];
const NODE: &[&str] = &[
    "--cpus",
    "1",
    "--memory",
    "512Mi",
    "--heartbeat-every",
    "0.3",
];

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn create(c: &NetCluster, name: &str, extra: &[&str], script: &str) {
    let mut args = vec![
        "instance", "create", name, "--memory", "32Mi", "--cpu", "0.1",
    ];
    args.extend(extra);
    args.extend(["--", "sh", "-c", script]);
    c.cli_ok(&args);
}

fn running_on(c: &NetCluster, name: &str, node: &str) -> Value {
    let n = name.to_string();
    let want = node.to_string();
    c.wait_for(
        &format!("{name} running on {node}"),
        Duration::from_secs(30),
        || {
            let (code, v) = c.http("GET", &format!("/v1/instances/{n}"), None);
            (code == 200 && v["state"] == "running" && v["node"] == want.as_str()).then_some(v)
        },
    )
}

/// Waits until `name` runs on a node other than `not`; returns the instance.
fn running_elsewhere(c: &NetCluster, name: &str, not: &str) -> Value {
    let n = name.to_string();
    let not = not.to_string();
    c.wait_for(
        &format!("{name} running on a node other than {not}"),
        Duration::from_secs(30),
        || {
            let (code, v) = c.http("GET", &format!("/v1/instances/{n}"), None);
            (code == 200 && v["state"] == "running" && v["node"].as_str().is_some_and(|x| x != not))
                .then_some(v)
        },
    )
}

fn events(c: &NetCluster) -> Vec<Value> {
    let (_, v) = c.http("GET", "/v1/events?limit=1000", None);
    v["items"].as_array().cloned().unwrap_or_default()
}

fn has_event(c: &NetCluster, kind: &str, object: &str) -> Option<Value> {
    events(c)
        .into_iter()
        .find(|e| e["kind"] == kind && e["object"] == object)
}

fn logs_of(c: &NetCluster, name: &str) -> String {
    String::from_utf8_lossy(&c.cli(&["instance", "logs", name]).stdout).to_string()
}

fn pid_of(v: &Value) -> u64 {
    v["pid"].as_u64().expect("a running instance has a pid")
}

#[test]
fn a_crashed_node_s_instances_move_by_their_ha_policy() {
    let _g = serial();
    let mut c = NetCluster::new(SERVER);
    c.add_node("fo-a1", NODE);
    // Everything starts on fo-a1 (the only node), then two more nodes join.
    create(&c, "web", &[], "echo started; exec sleep 100000");
    create(
        &c,
        "db",
        &["--ha", "cold"],
        "if [ -f state ]; then echo \"restored $(cat state)\"; else echo fresh; fi; \
         exec sleep 100000",
    );
    create(&c, "pet", &["--ha", "none"], "exec sleep 100000");
    for name in ["web", "db", "pet"] {
        running_on(&c, name, "fo-a1");
    }
    // The data db has at its backup, and a change after it that a crash loses.
    let data = c.nodes[0].data.join("instances/db/data/state");
    std::fs::write(&data, "before-backup").unwrap();
    let b = c.cli_json(&["backup", "create", "db", "--name", "b1"]);
    assert_eq!(b["state"], "done", "{b}");
    std::fs::write(&data, "after-backup").unwrap();
    c.add_node("fo-a2", NODE);
    c.add_node("fo-a3", NODE);

    c.crash("fo-a1");
    let down = c.wait_node("fo-a1", "down", Duration::from_secs(15));
    assert!(
        down["state"] == "down",
        "the crashed node is declared down: {down}"
    );
    let web = running_elsewhere(&c, "web", "fo-a1");
    let db = running_elsewhere(&c, "db", "fo-a1");
    assert!(
        logs_of(&c, "web").contains("started"),
        "web started again on {}",
        web["node"]
    );
    let db_log = c.wait_for("db's log", Duration::from_secs(10), || {
        let l = logs_of(&c, "db");
        l.contains("restored").then_some(l)
    });
    assert!(
        db_log.contains("restored before-backup"),
        "cold recovery restores the latest backup ({}): {db_log}",
        db["node"]
    );
    let pet = c.wait_state("pet", "lost");
    assert_eq!(pet["node"], "fo-a1", "ha none stays on its node: {pet}");

    // Every step is an event; RTO is in the metrics.
    for (kind, object) in [
        ("node_suspect", "fo-a1"),
        ("node_down", "fo-a1"),
        ("instance_rescheduled", "web"),
        ("instance_rescheduled", "db"),
        ("instance_lost", "pet"),
    ] {
        assert!(
            has_event(&c, kind, object).is_some(),
            "event {kind} for {object}: {:#?}",
            events(&c)
        );
    }
    let done = c.wait_for("failover_completed for db", Duration::from_secs(10), || {
        has_event(&c, "failover_completed", "db")
    });
    let msg = done["message"].as_str().unwrap();
    assert!(msg.contains("RTO") && msg.contains("RPO"), "{msg}");
    let metrics = ureq::get(&format!("{}/metrics", c.url))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("nimbus_instance_recovery_seconds_count{ha=\"restart\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("nimbus_instance_data_loss_seconds_count{ha=\"cold\"} 1"));

    // A lost instance can be deleted at once: its node cannot confirm.
    assert!(c.cli(&["instance", "delete", "pet"]).status.success());
    c.wait_for("pet gone", Duration::from_secs(10), || {
        (c.http("GET", "/v1/instances/pet", None).0 == 404).then_some(())
    });
}

#[test]
fn a_frozen_node_stops_its_moved_instances_when_it_thaws() {
    let _g = serial();
    let mut c = NetCluster::new(SERVER);
    c.add_node("fo-f1", NODE);
    create(&c, "web", &[], "exec sleep 100000");
    let old = running_on(&c, "web", "fo-f1");
    let old_pid = pid_of(&old);
    c.add_node("fo-f2", NODE);

    c.freeze("fo-f1");
    c.wait_node("fo-f1", "down", Duration::from_secs(15));
    let moved = running_on(&c, "web", "fo-f2");
    assert!(pid_alive(old_pid), "frozen, the old copy still exists");

    c.thaw("fo-f1");
    // Fencing: the thawed agent stops the copy that moved away.
    c.wait_for("the old copy to stop", Duration::from_secs(20), || {
        (!pid_alive(old_pid)).then_some(())
    });
    assert!(pid_alive(pid_of(&moved)), "the moved copy keeps running");
    assert_eq!(c.instance("web")["node"], "fo-f2");
    // Back, but on probation before it is trusted again.
    c.wait_node("fo-f1", "suspect", Duration::from_secs(10));
    c.wait_node("fo-f1", "ready", Duration::from_secs(20));
}

#[test]
fn a_partitioned_node_stops_its_moved_instances_when_it_heals() {
    let _g = serial();
    let mut c = NetCluster::new(SERVER);
    c.add_node("fo-p1", NODE);
    create(&c, "web", &[], "exec sleep 100000");
    let old_pid = pid_of(&running_on(&c, "web", "fo-p1"));
    c.add_node("fo-p2", NODE);

    c.set_link("fo-p1", false);
    c.wait_node("fo-p1", "down", Duration::from_secs(15));
    let moved = running_on(&c, "web", "fo-p2");
    c.set_link("fo-p1", true);
    c.wait_for("the old copy to stop", Duration::from_secs(30), || {
        (!pid_alive(old_pid)).then_some(())
    });
    assert!(pid_alive(pid_of(&moved)));
    c.wait_node("fo-p1", "ready", Duration::from_secs(30));
    assert_eq!(c.instance("web")["node"], "fo-p2", "no move back");
}

#[test]
fn recovery_waits_for_capacity_and_survives_a_server_restart() {
    let _g = serial();
    let mut c = NetCluster::new(SERVER);
    c.add_node("fo-s1", NODE);
    create(&c, "web", &[], "exec sleep 100000");
    running_on(&c, "web", "fo-s1");

    // No other node: the instance waits with the scheduler's reason.
    c.crash("fo-s1");
    c.wait_node("fo-s1", "down", Duration::from_secs(15));
    let pending = c.wait_state("web", "pending");
    let reason = pending["reason"].as_str().unwrap_or("").to_string();
    assert!(
        reason.contains("node"),
        "a reason a person can act on: {reason}"
    );

    // The server dies in the middle of the failover and comes back.
    c.kill9_server();
    c.start_server();
    c.add_node("fo-s2", NODE);
    let web = running_on(&c, "web", "fo-s2");
    c.wait_for("failover_completed", Duration::from_secs(10), || {
        has_event(&c, "failover_completed", "web")
    });
    // Exactly one copy runs.
    let procs = node_cgroup_dirs("fo-s2");
    assert!(!procs.is_empty());
    assert!(pid_alive(pid_of(&web)));
    assert!(
        node_cgroup_dirs("fo-s1").is_empty(),
        "nothing left on the crashed node"
    );
}

#[test]
fn drain_moves_instances_with_their_data_and_empties_the_node() {
    let _g = serial();
    let mut c = NetCluster::new(SERVER);
    c.add_node("fo-d1", NODE);
    create(
        &c,
        "app",
        &[],
        "if [ -f state ]; then echo \"found $(cat state)\"; else echo made > state; fi; \
         exec sleep 100000",
    );
    let old_pid = pid_of(&running_on(&c, "app", "fo-d1"));
    c.add_node("fo-d2", NODE);

    // Bad input first: unknown node, undrain of a node that is not draining.
    let out = c.cli(&["node", "drain", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = c.cli(&["node", "undrain", "fo-d1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not draining"));

    let out = c.cli(&["node", "drain", "fo-d1", "--timeout", "60"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    let app = running_on(&c, "app", "fo-d2");
    let log = c.wait_for("the moved copy's output", Duration::from_secs(10), || {
        let l = logs_of(&c, "app");
        l.contains("found").then_some(l)
    });
    assert!(
        log.contains("found made"),
        "the data directory moved: {log}"
    );
    c.wait_for("the old copy to stop", Duration::from_secs(15), || {
        (!pid_alive(old_pid)).then_some(())
    });
    assert!(pid_alive(pid_of(&app)));
    let node = c.wait_node("fo-d1", "draining", Duration::from_secs(5));
    assert_eq!(node["instances"], 0, "{node}");
    c.wait_for("node_drained", Duration::from_secs(10), || {
        has_event(&c, "node_drained", "fo-d1")
    });
    assert!(has_event(&c, "instance_moved", "app").is_some());

    // A draining node takes nothing new; undrain makes it schedulable again.
    create(
        &c,
        "pinned",
        &["--node-selector", "nimbus/node=fo-d1"],
        "exec sleep 100000",
    );
    // Pending, with the scheduler's reason (it replaces "waiting for the scheduler").
    let p = c.wait_for("the scheduler's reason", Duration::from_secs(10), || {
        let v = c.instance("pinned");
        (v["state"] == "pending" && v["reason"] != "waiting for the scheduler").then_some(v)
    });
    assert!(p["reason"].as_str().unwrap_or("").contains("fo-d1"), "{p}");
    assert!(c.cli(&["node", "undrain", "fo-d1"]).status.success());
    running_on(&c, "pinned", "fo-d1");
}

/// The node named in the newest `standby_assigned` event of `instance`.
fn standby_node(c: &NetCluster, instance: &str) -> String {
    c.wait_for(
        &format!("a standby for {instance}"),
        Duration::from_secs(30),
        || {
            let (_, v) = c.http("GET", &format!("/v1/instances/{instance}"), None);
            v["standby"]["node"].as_str().map(String::from)
        },
    )
}

#[test]
fn a_hot_process_takes_over_on_its_standby_node() {
    let _g = serial();
    let mut c = NetCluster::new(SERVER);
    c.add_node("fo-t1", NODE);
    create(&c, "api", &["--ha", "hot"], "echo up; exec sleep 100000");
    running_on(&c, "api", "fo-t1");
    c.add_node("fo-t2", NODE);
    c.add_node("fo-t3", NODE);
    let standby = standby_node(&c, "api");
    assert_ne!(standby, "fo-t1", "the standby is on another node");
    // Its capacity is held there.
    let (_, n) = c.http("GET", &format!("/v1/nodes/{standby}"), None);
    assert_eq!(n["allocated"]["memory_mib"], 32, "{n}");

    c.crash("fo-t1");
    running_on(&c, "api", &standby);
    let ev = c.wait_for("hot takeover event", Duration::from_secs(10), || {
        has_event(&c, "instance_rescheduled", "api")
    });
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .contains(&format!("ha hot: taking over on standby {standby}")),
        "{ev}"
    );
    // A new standby on the remaining node.
    let next = c.wait_for("a new standby", Duration::from_secs(20), || {
        let (_, v) = c.http("GET", "/v1/instances/api", None);
        v["standby"]["node"]
            .as_str()
            .filter(|n| *n != standby && *n != "fo-t1")
            .map(String::from)
    });
    assert!(next.starts_with("fo-t"));
}

#[test]
fn a_hot_vm_fails_over_with_every_completed_write() {
    let _g = serial();
    let mut c = NetCluster::new(SERVER);
    let vm_node: &[&str] = &["--cpus", "1", "--memory", "1Gi", "--heartbeat-every", "0.3"];
    c.add_node("fo-v1", vm_node);
    c.cli_ok(&["image", "build", "tiny"]);
    let dir = tempfile::tempdir().unwrap();
    let ud = dir.path().join("counter.sh");
    // A counter on the raw disk: each value is written with fsync, then announced.
    std::fs::write(
        &ud,
        "#!/bin/sh\n\
         n=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | tr -d '\\000' | sed -n 's/^count-\\([0-9][0-9]*\\).*/\\1/p')\n\
         [ -n \"$n\" ] || n=0\n\
         echo \"found $n\"\n\
         i=$n\n\
         while true; do\n\
           i=$((i+1))\n\
           printf 'count-%d\\n' $i | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null && echo \"wrote $i\"\n\
           sleep 0.1\n\
         done\n",
    )
    .unwrap();
    c.cli_ok(&tiny_vm("hot", "16Mi", &ud, &["--ha", "hot"]));
    running_on(&c, "hot", "fo-v1");
    c.add_node("fo-v2", vm_node);
    c.add_node("fo-v3", vm_node);
    let standby = standby_node(&c, "hot");
    c.wait_for("the replica in sync", Duration::from_secs(60), || {
        has_event(&c, "standby_in_sync", "hot")
    });
    // Let the guest count for a while with the mirror on, then crash its node.
    let console = c.nodes[0].data.join("instances/hot/output.log");
    let last_wrote = |text: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("wrote "))
            .filter_map(|n| n.trim().parse().ok())
            .max()
            .unwrap_or(0)
    };
    c.wait_for("the guest to count", Duration::from_secs(60), || {
        (last_wrote(&std::fs::read_to_string(&console).unwrap_or_default()) >= 10).then_some(())
    });
    c.crash("fo-v1");
    // Every value the guest saw completed before the crash is on the replica.
    let acked = last_wrote(&std::fs::read_to_string(&console).unwrap_or_default());
    running_on(&c, "hot", &standby);
    let found: u64 = c.wait_for("the guest on the standby", Duration::from_secs(120), || {
        let out = c.cli(&["instance", "console", "hot"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("found ").map(String::from))
            .and_then(|n| n.trim().parse().ok())
    });
    assert!(
        found >= acked,
        "no completed write is lost: the guest wrote {acked} before the crash, the replica \
         has {found}\n{:#?}",
        events(&c)
            .iter()
            .filter(|e| e["object"] == "hot")
            .map(|e| format!("{} {}", e["kind"], e["message"]))
            .collect::<Vec<_>>()
    );
    let done = c.wait_for("failover_completed", Duration::from_secs(20), || {
        has_event(&c, "failover_completed", "hot")
    });
    assert!(done["message"].as_str().unwrap().contains("RTO"), "{done}");
    let moved = has_event(&c, "instance_rescheduled", "hot").unwrap();
    assert!(
        moved["message"]
            .as_str()
            .unwrap()
            .contains("from its in-sync replica"),
        "{moved}"
    );
    // A new standby on the third node is synchronised from the new primary.
    let third = c.wait_for("a new standby", Duration::from_secs(30), || {
        let (_, v) = c.http("GET", "/v1/instances/hot", None);
        v["standby"]["node"]
            .as_str()
            .filter(|n| *n != standby && *n != "fo-v1")
            .map(String::from)
    });
    c.wait_for("the new replica in sync", Duration::from_secs(60), || {
        let (_, v) = c.http("GET", "/v1/instances/hot", None);
        (v["standby"]["node"] == third.as_str() && v["standby"]["in_sync"] == true).then_some(())
    });
}

#[test]
fn draining_a_hot_vm_s_node_migrates_it_live_and_resynchronises_a_standby() {
    let _g = serial();
    let mut c = NetCluster::new(SERVER);
    let vm_node: &[&str] = &["--cpus", "1", "--memory", "1Gi"];
    c.add_node("fo-m1", vm_node);
    c.cli_ok(&["image", "build", "tiny"]);
    let dir = tempfile::tempdir().unwrap();
    let ud = dir.path().join("counter.sh");
    std::fs::write(
        &ud,
        "#!/bin/sh\n\
         echo booted\n\
         i=0\n\
         while true; do\n\
           i=$((i+1))\n\
           printf 'count-%d\\n' $i | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null && echo \"wrote $i\"\n\
           sleep 0.1\n\
         done\n",
    )
    .unwrap();
    c.cli_ok(&tiny_vm("hot", "16Mi", &ud, &["--ha", "hot"]));
    running_on(&c, "hot", "fo-m1");
    c.add_node("fo-m2", vm_node);
    let standby = standby_node(&c, "hot");
    c.wait_for("the replica in sync", Duration::from_secs(60), || {
        has_event(&c, "standby_in_sync", "hot")
    });
    // The standby's node has no room left for the VM itself: it moves to the third.
    c.add_node("fo-m3", vm_node);
    let wrote = |text: &str| -> Vec<u64> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("wrote "))
            .filter_map(|n| n.trim().parse().ok())
            .collect()
    };
    let console = |c: &NetCluster| {
        String::from_utf8_lossy(&c.cli(&["instance", "console", "hot"]).stdout).to_string()
    };
    c.wait_for("the guest to count", Duration::from_secs(60), || {
        (wrote(&console(&c)).len() >= 5).then_some(())
    });
    let before = wrote(&console(&c)).into_iter().max().unwrap();
    c.cli_ok(&["node", "drain", "fo-m1", "--timeout", "240"]);
    let v = running_on(&c, "hot", "fo-m3");
    assert_ne!(standby, "fo-m3");
    // The same guest counts on, on its disk there: no reboot.
    let after = c.wait_for(
        "the guest counting on fo-m3",
        Duration::from_secs(30),
        || {
            let text = console(&c);
            (wrote(&text).len() >= 5).then_some(text)
        },
    );
    assert!(!after.contains("booted"), "no boot on fo-m3: {after}");
    assert!(
        wrote(&after).iter().all(|n| *n > before),
        "counted on from {before}: {after}"
    );
    let moved = has_event(&c, "instance_moved", "hot").unwrap();
    assert!(
        moved["message"]
            .as_str()
            .unwrap()
            .contains("live-migrated from fo-m1 to fo-m3"),
        "{moved}"
    );
    // A standby for the new placement, in sync again.
    c.wait_for(
        "a standby in sync after the move",
        Duration::from_secs(90),
        || {
            let (_, v) = c.http("GET", "/v1/instances/hot", None);
            (v["standby"]["in_sync"] == true && v["standby"]["generation"] == v["generation"])
                .then_some(())
        },
    );
    assert!(v["node"] == "fo-m3");
}

#[test]
fn a_live_migration_whose_target_is_cut_off_falls_back_to_the_offline_move() {
    let _g = serial();
    let mut c = NetCluster::new(SERVER);
    let vm_node: &[&str] = &["--cpus", "1", "--memory", "1Gi"];
    c.add_node("fo-l1", vm_node);
    c.cli_ok(&["image", "build", "tiny"]);
    let dir = tempfile::tempdir().unwrap();
    let ud = dir.path().join("marker.sh");
    // A marker made on the first boot and kept on the disk; every boot prints it.
    std::fs::write(
        &ud,
        "#!/bin/sh\n\
         m=$(dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | tr -d '\\000')\n\
         case \"$m\" in persisted-*) ;; *) m=\"persisted-$RANDOM-$RANDOM\"\n\
           echo \"$m\" | dd of=/dev/vda bs=512 seek=1 conv=fsync 2>/dev/null ;; esac\n\
         echo \"disk $m\"\n",
    )
    .unwrap();
    c.cli_ok(&tiny_vm("mig", "16Mi", &ud, &[]));
    running_on(&c, "mig", "fo-l1");
    let marker = |c: &NetCluster| {
        let out = c.cli(&["instance", "console", "mig"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("disk persisted-").map(String::from))
    };
    let made = c.wait_for("the guest's disk marker", Duration::from_secs(60), || {
        marker(&c)
    });
    c.add_node("fo-l2", vm_node);
    c.add_node("fo-l3", vm_node);

    c.cli_ok(&["node", "drain", "fo-l1", "--no-wait"]);
    let started = c.wait_for(
        "the live migration to start",
        Duration::from_secs(10),
        || has_event(&c, "live_migration_started", "mig"),
    );
    let msg = started["message"].as_str().unwrap();
    let target = msg.rsplit("live-migrating to ").next().unwrap().to_string();
    // Cut the target off before it can receive the VM.
    c.set_link(&target, false);
    let failed = c.wait_for("the migration to fail", Duration::from_secs(30), || {
        has_event(&c, "live_migration_failed", "mig")
    });
    let why = failed["message"].as_str().unwrap();
    assert!(
        why.contains(&target) && why.contains("moving it offline"),
        "{failed}"
    );
    // Moved offline instead, to the node left, with its disk.
    let other = ["fo-l2", "fo-l3"]
        .into_iter()
        .find(|n| *n != target)
        .unwrap();
    running_on(&c, "mig", other);
    let found = c.wait_for(
        "the guest booted on the node left",
        Duration::from_secs(120),
        || marker(&c),
    );
    assert_eq!(found, made, "the disk came along");
    let moved = has_event(&c, "instance_rescheduled", "mig").unwrap();
    assert!(
        moved["message"]
            .as_str()
            .unwrap()
            .contains("from backup drain-"),
        "{moved}"
    );
    // Back on the network, the target stops what it started for the VM: one QEMU.
    c.set_link(&target, true);
    c.wait_for("one QEMU for the VM", Duration::from_secs(30), || {
        (qemu_processes("mig") == 1).then_some(())
    });
}

#[test]
fn a_standby_lost_first_is_replaced_and_two_nodes_lost_at_once_fall_back() {
    let _g = serial();
    let mut c = NetCluster::new(SERVER);
    c.add_node("fo-w1", NODE);
    create(&c, "api", &["--ha", "hot"], "exec sleep 100000");
    running_on(&c, "api", "fo-w1");
    c.add_node("fo-w2", NODE);
    c.add_node("fo-w3", NODE);
    c.add_node("fo-w4", NODE);
    let first = standby_node(&c, "api");

    // The standby's node dies first: the instance stays, and gets a new standby.
    c.crash(&first);
    c.wait_node(&first, "down", Duration::from_secs(15));
    let second = c.wait_for("a replacement standby", Duration::from_secs(20), || {
        let (_, v) = c.http("GET", "/v1/instances/api", None);
        v["standby"]["node"]
            .as_str()
            .filter(|n| *n != first)
            .map(String::from)
    });
    assert_eq!(
        c.instance("api")["node"],
        "fo-w1",
        "the primary did not move"
    );
    assert!(has_event(&c, "standby_released", "api").is_some());

    // Primary and standby lost at once: no takeover is possible (or, if the standby's
    // node is declared down a moment later, one that fails over again); it ends on
    // the node left, and the event says why.
    c.crash("fo-w1");
    c.crash(&second);
    let left: Vec<String> = ["fo-w2", "fo-w3", "fo-w4"]
        .into_iter()
        .filter(|n| *n != first && *n != second)
        .map(String::from)
        .collect();
    assert_eq!(left.len(), 1);
    running_on(&c, "api", &left[0]);
    let ev = events(&c)
        .into_iter()
        .find(|e| {
            e["kind"] == "instance_rescheduled"
                && e["object"] == "api"
                && e["message"].as_str().unwrap_or("").contains("no takeover")
        })
        .expect("a fallback event");
    assert!(
        ev["message"].as_str().unwrap().contains("starting fresh"),
        "{ev}"
    );
}
