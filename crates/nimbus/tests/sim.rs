//! End-to-end: the simulator and the live control plane place the same sequence of
//! creates on the same nodes (both run `nimbus_sched::schedule`, one pass per create).

mod common;

use std::time::Duration;

use common::*;
use nimbus_api::{Instance, InstanceState, Node};
use nimbus_sched::{PlacementPolicy, SchedulerConfig};

/// (cpu millis, memory MiB) of each create, in order: a mix that fills nodes unevenly.
const SIZES: [(u64, u64); 24] = [
    (1000, 2048),
    (500, 1024),
    (2000, 4096),
    (250, 512),
    (1500, 3072),
    (1000, 1024),
    (3000, 2048),
    (500, 4096),
    (750, 768),
    (2000, 2048),
    (250, 256),
    (1000, 6144),
    (4000, 4096),
    (500, 512),
    (1250, 1024),
    (2500, 3072),
    (100, 128),
    (1000, 2048),
    (6000, 8192),
    (500, 1536),
    (1500, 512),
    (750, 2048),
    (2000, 1024),
    (300, 300),
];

fn live_placements(policy: &str) -> (Vec<Option<String>>, Vec<Node>, Vec<Instance>) {
    let mut c = TestCluster::up(
        "sa",
        &[
            "--sim",
            "--cpus",
            "4",
            "--memory",
            "8Gi",
            "--placement",
            policy,
        ],
    );
    c.add_agent("sb", &["--sim", "--cpus", "8", "--memory", "16Gi"]);
    c.add_agent("sc", &["--sim", "--cpus", "2", "--memory", "4Gi"]);
    let mut placed = Vec::new();
    let mut created = Vec::new();
    for (i, (cpu, mem)) in SIZES.iter().enumerate() {
        let name = format!("j{i:02}");
        let body = format!(
            r#"{{"name":"{name}","spec":{{"command":["sleep","1000"],"cpu_millis":{cpu},"memory_mib":{mem}}}}}"#
        );
        let (code, v) = c.http("POST", "/v1/instances", Some(&body));
        assert!(code == 201 || code == 422, "{v}");
        if code == 422 {
            placed.push(None);
            continue;
        }
        // One scheduling pass per create: wait for its decision.
        let inst = c.wait_for(
            &format!("{name} to be decided"),
            Duration::from_secs(20),
            || {
                let (_, v) = c.http("GET", &format!("/v1/instances/{name}"), None);
                let decided = v["state"] != "pending"
                    || v["reason"]
                        .as_str()
                        .is_some_and(|r| r != "waiting for the scheduler");
                decided.then_some(v)
            },
        );
        let inst: Instance = serde_json::from_value(inst).unwrap();
        if inst.state == InstanceState::Pending {
            // The simulator's replay does not retry what did not fit: neither do we.
            c.http("DELETE", &format!("/v1/instances/{name}"), None);
            placed.push(None);
        } else {
            placed.push(inst.node.clone());
            created.push(inst);
        }
    }
    let nodes: Vec<Node> =
        serde_json::from_value(c.http("GET", "/v1/nodes", None).1["items"].clone()).unwrap();
    (placed, nodes, created)
}

fn simulated_placements(policy: PlacementPolicy, nodes: &[Node]) -> Vec<Option<String>> {
    // The same conversion the server's scheduler loop uses, on empty nodes.
    let empty: Vec<Node> = nodes
        .iter()
        .cloned()
        .map(|mut n| {
            n.allocated = Default::default();
            n
        })
        .collect();
    let (node_infos, _) = nimbus_server::reconcile::snapshot(&empty, &[]);
    let pending: Vec<Instance> = SIZES
        .iter()
        .enumerate()
        .map(|(i, (cpu, mem))| {
            serde_json::from_value(serde_json::json!({
                "name": format!("j{i:02}"), "kind": "process",
                "spec": {"command": ["sleep", "1000"], "cpu_millis": cpu, "memory_mib": mem},
                "state": "pending", "desired": "running", "generation": 0,
                "queue_seq": i, "created_at_ms": 0, "queued_at_ms": 0, "updated_at_ms": 0,
            }))
            .unwrap()
        })
        .collect();
    let (_, requests) = nimbus_server::reconcile::snapshot(&[], &pending);
    let cfg = SchedulerConfig {
        placement: policy,
        ..SchedulerConfig::default()
    };
    nimbus_sim::live::replay_placements(node_infos, requests, &cfg)
}

#[test]
fn live_and_simulated_placements_agree() {
    for (name, policy) in [
        ("best-fit", PlacementPolicy::BestFit),
        ("worst-fit", PlacementPolicy::WorstFit),
    ] {
        let (live, nodes, _) = live_placements(name);
        let sim = simulated_placements(policy, &nodes);
        assert!(live.iter().filter(|p| p.is_some()).count() > 10, "{live:?}");
        assert!(
            live.iter().any(|p| p.is_none()),
            "the mix must overflow the nodes: {live:?}"
        );
        assert_eq!(live, sim, "{name}: live and simulated placements differ");
    }
}
