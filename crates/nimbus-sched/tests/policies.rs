//! Table-driven tests of each placement policy, filters, and full `schedule` passes.

use std::collections::BTreeMap;

use nimbus_sched::reference::select_linear;
use nimbus_sched::{
    schedule, ClusterState, NodeInfo, Placement, PlacementPolicy, QueuePolicy, Request, Resources,
    SchedulerConfig,
};

use PlacementPolicy::{BestFit, FirstFit, WorstFit};

const GIB: u64 = 1024;

/// A node with `cpu` cores and `mem` GiB, of which `used_mem` GiB are allocated.
fn node(name: &str, cpu: u64, mem: u64, used_mem: u64) -> NodeInfo {
    let mut n = NodeInfo::new(
        name,
        Resources::new(cpu * 1000, mem * GIB, 100 * GIB),
        &["process"],
    );
    n.allocated = Resources::new(0, used_mem * GIB, 0);
    n
}

fn req(id: &str, cpu_millis: u64, mem_gib: u64) -> Request {
    Request::new(id, Resources::new(cpu_millis, mem_gib * GIB, 0), "process")
}

fn names(state: &ClusterState, picks: &[usize]) -> Vec<String> {
    picks.iter().map(|&i| state.node(i).name.clone()).collect()
}

#[test]
fn each_policy_picks_its_node() {
    // Free memory: a 6, b 2, c 12, d 2, e 0 (GiB).
    let nodes = || {
        vec![
            node("a", 8, 8, 2),
            node("b", 8, 8, 6),
            node("c", 16, 16, 4),
            node("d", 8, 4, 2),
            node("e", 8, 8, 8),
        ]
    };
    // (policy, request GiB, expected node)
    let cases = [
        (FirstFit, 1, Some("a")),
        (FirstFit, 7, Some("c")),
        (BestFit, 1, Some("b")), // b and d both have 2 free and 8 cpu; b comes first
        (BestFit, 3, Some("a")),
        (BestFit, 7, Some("c")),
        (WorstFit, 1, Some("c")),
        (WorstFit, 13, None),
    ];
    for (policy, gib, want) in cases {
        let state = ClusterState::new(nodes());
        let r = req("x", 100, gib);
        let got = state.select(&r, policy).map(|i| state.node(i).name.clone());
        assert_eq!(got.as_deref(), want, "{policy} {gib} GiB");
        assert_eq!(
            state.select(&r, policy),
            select_linear(state.nodes(), &r, policy),
            "{policy} {gib} GiB: index vs reference"
        );
    }
}

#[test]
fn best_fit_breaks_memory_ties_by_least_cpu() {
    let mut nodes = vec![node("a", 16, 8, 0), node("b", 4, 8, 0), node("c", 8, 8, 0)];
    nodes[0].allocated.cpu_millis = 1000;
    let state = ClusterState::new(nodes);
    assert_eq!(state.select(&req("x", 1000, 1), BestFit), Some(1));
    assert_eq!(state.select(&req("x", 1000, 1), WorstFit), Some(0));
}

#[test]
fn first_fit_fills_in_node_order() {
    let mut state = ClusterState::new(vec![
        node("a", 8, 4, 0),
        node("b", 8, 4, 0),
        node("c", 8, 4, 0),
    ]);
    let picks: Vec<usize> = (0..6)
        .map(|i| {
            state
                .place(&req(&format!("i{i}"), 100, 2), FirstFit)
                .unwrap()
        })
        .collect();
    assert_eq!(names(&state, &picks), ["a", "a", "b", "b", "c", "c"]);
}

#[test]
fn best_fit_fills_a_node_before_opening_another() {
    // b is the smallest node that fits; best-fit keeps packing it until it is full, then
    // moves to the next tightest (a), and only then to the big empty node c.
    let mut state = ClusterState::new(vec![
        node("a", 8, 6, 0),
        node("b", 8, 4, 0),
        node("c", 64, 64, 0),
    ]);
    let picks: Vec<usize> = (0..6)
        .map(|i| {
            state
                .place(&req(&format!("i{i}"), 100, 2), BestFit)
                .unwrap()
        })
        .collect();
    assert_eq!(names(&state, &picks), ["b", "b", "a", "a", "a", "c"]);
}

#[test]
fn worst_fit_spreads() {
    let mut state = ClusterState::new(vec![
        node("a", 8, 8, 0),
        node("b", 8, 8, 0),
        node("c", 8, 16, 0),
    ]);
    let picks: Vec<usize> = (0..6)
        .map(|i| {
            state
                .place(&req(&format!("i{i}"), 100, 4), WorstFit)
                .unwrap()
        })
        .collect();
    // c has 16 -> 12 -> 8 free; then a/b/c tie at 8 (lowest index first), ...
    assert_eq!(names(&state, &picks), ["c", "c", "a", "b", "c", "a"]);
}

#[test]
fn release_makes_room_again() {
    let mut state = ClusterState::new(vec![node("a", 8, 4, 0), node("b", 8, 4, 0)]);
    let r = req("x", 100, 4);
    assert_eq!(state.place(&r, FirstFit), Ok(0));
    assert_eq!(state.place(&r, FirstFit), Ok(1));
    let err = state.place(&r, FirstFit).unwrap_err();
    assert!(!err.never);
    state.release(0, r.resources);
    assert_eq!(state.node_free(0), Resources::new(8000, 4 * GIB, 100 * GIB));
    assert_eq!(state.place(&r, BestFit), Ok(0));
}

#[test]
fn selectors_and_drivers() {
    let mut nodes = vec![
        node("a", 8, 8, 0),
        node("b", 8, 8, 0),
        node("c", 8, 8, 0),
        node("d", 8, 8, 0),
    ];
    nodes[1].labels = BTreeMap::from([("gpu".into(), "true".into())]);
    nodes[2].drivers = vec!["qemu".into(), "process".into()];
    nodes[3].drivers = vec!["qemu".into()];
    nodes[3].labels = BTreeMap::from([("gpu".into(), "true".into()), ("zone".into(), "b".into())]);
    let state = ClusterState::new(nodes);
    let with = |driver: &str, sel: &[(&str, &str)]| {
        let mut r = req("x", 100, 1);
        r.driver = driver.into();
        r.node_selector = sel
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        r
    };
    // (request, first-fit pick, worst-fit pick)
    let cases = [
        (with("process", &[]), Some("a"), Some("a")),
        (with("qemu", &[]), Some("c"), Some("c")),
        (with("", &[]), Some("a"), Some("a")),
        (with("process", &[("gpu", "true")]), Some("b"), Some("b")),
        (with("qemu", &[("gpu", "true")]), Some("d"), Some("d")),
        (
            with("", &[("gpu", "true"), ("zone", "b")]),
            Some("d"),
            Some("d"),
        ),
        (with("docker", &[]), None, None),
        (with("process", &[("gpu", "false")]), None, None),
    ];
    for (r, first, worst) in cases {
        for (policy, want) in [(FirstFit, first), (WorstFit, worst), (BestFit, first)] {
            let got = state
                .select(&r, policy)
                .map(|i| state.node(i).name.as_str());
            assert_eq!(
                got, want,
                "{policy} driver {:?} selector {:?}",
                r.driver, r.node_selector
            );
        }
    }
}

#[test]
fn unschedulable_nodes_are_skipped() {
    let mut nodes = vec![node("a", 8, 8, 0), node("b", 8, 4, 0), node("c", 8, 16, 0)];
    nodes[0].schedulable = false;
    let mut state = ClusterState::new(nodes);
    let r = req("x", 100, 1);
    assert_eq!(state.select(&r, FirstFit), Some(1));
    assert_eq!(state.select(&r, BestFit), Some(1));
    assert_eq!(state.select(&r, WorstFit), Some(2));
    state.set_schedulable(2, false);
    assert_eq!(state.select(&r, WorstFit), Some(1));
    state.set_schedulable(0, true);
    assert_eq!(state.select(&r, WorstFit), Some(0));
    state.set_schedulable(0, false);
    state.set_schedulable(1, false);
    let err = state.place(&r, FirstFit).unwrap_err();
    assert_eq!(
        err.reason,
        "no ready node: all 3 nodes are down or draining"
    );
    assert!(!err.never);
}

#[test]
fn over_committed_node_has_nothing_free() {
    let mut n = node("a", 8, 4, 0);
    n.allocated = Resources::new(9000, 5 * GIB, 0);
    let state = ClusterState::new(vec![n]);
    assert_eq!(state.node_free(0), Resources::new(0, 0, 100 * GIB));
    assert_eq!(state.select(&req("x", 0, 0), FirstFit), Some(0));
    assert_eq!(state.select(&req("x", 1, 0), FirstFit), None);
}

fn cfg(placement: PlacementPolicy, queue: QueuePolicy, backfill: bool) -> SchedulerConfig {
    SchedulerConfig {
        placement,
        queue,
        backfill,
        ..SchedulerConfig::default()
    }
}

fn seq(mut r: Request, queue_seq: u64) -> Request {
    r.queue_seq = queue_seq;
    r
}

fn placed(plan: &nimbus_sched::Plan) -> Vec<(&str, &str)> {
    plan.placements
        .iter()
        .map(|Placement { request_id, node }| (request_id.as_str(), node.as_str()))
        .collect()
}

#[test]
fn schedule_backfills_past_a_blocked_head() {
    let nodes = vec![node("a", 8, 4, 0), node("b", 8, 4, 0)];
    let pending = vec![
        seq(req("small-1", 100, 2), 1),
        seq(req("big", 100, 4), 2),
        seq(req("huge", 100, 6), 3),
        seq(req("small-2", 100, 2), 4),
    ];
    let plan = schedule(
        nodes.clone(),
        pending.clone(),
        &cfg(FirstFit, QueuePolicy::Fcfs, true),
        0,
    );
    assert_eq!(
        placed(&plan),
        [("small-1", "a"), ("big", "b"), ("small-2", "a")]
    );
    assert_eq!(plan.unplaced.len(), 1);
    assert_eq!(plan.unplaced[0].0, "huge");
    assert!(plan.unplaced[0].1.never, "{:?}", plan.unplaced[0].1);
}

#[test]
fn schedule_without_backfill_blocks_behind_the_head() {
    let nodes = vec![node("a", 8, 4, 2), node("b", 8, 4, 2)];
    let pending = vec![
        seq(req("small-1", 100, 1), 1),
        seq(req("mid", 100, 3), 2), // could fit once capacity frees: blocks
        seq(req("small-2", 100, 1), 3),
        seq(req("small-3", 100, 1), 4),
    ];
    let strict = schedule(
        nodes.clone(),
        pending.clone(),
        &cfg(FirstFit, QueuePolicy::Fcfs, false),
        0,
    );
    assert_eq!(placed(&strict), [("small-1", "a")]);
    let unplaced: Vec<(&str, &str, bool)> = strict
        .unplaced
        .iter()
        .map(|(id, u)| (id.as_str(), u.reason.as_str(), u.never))
        .collect();
    assert_eq!(
        unplaced,
        [
            (
                "mid",
                "no node has 3 GiB memory and 0.1 cpu free (2 nodes: 2 lack memory)",
                false
            ),
            ("small-2", "waiting behind mid (queue policy fcfs)", false),
            ("small-3", "waiting behind mid (queue policy fcfs)", false),
        ]
    );
    let backfill = schedule(nodes, pending, &cfg(FirstFit, QueuePolicy::Fcfs, true), 0);
    assert_eq!(
        placed(&backfill),
        [("small-1", "a"), ("small-2", "a"), ("small-3", "b")]
    );
}

#[test]
fn a_request_that_can_never_fit_does_not_block() {
    let nodes = vec![node("a", 8, 4, 0)];
    let mut gpu = seq(req("gpu", 100, 1), 1);
    gpu.node_selector.insert("gpu".into(), "true".into());
    let pending = vec![gpu, seq(req("web", 100, 1), 2)];
    let plan = schedule(nodes, pending, &cfg(FirstFit, QueuePolicy::Fcfs, false), 0);
    assert_eq!(placed(&plan), [("web", "a")]);
    assert_eq!(plan.unplaced[0].0, "gpu");
    assert_eq!(
        plan.unplaced[0].1.reason,
        "no ready node with driver \"process\" matches node_selector gpu=true (1 node checked)"
    );
    assert!(plan.unplaced[0].1.never);
}

#[test]
fn queue_policy_decides_who_gets_scarce_capacity() {
    // Room for exactly one 4 GiB request.
    let nodes = vec![node("a", 8, 4, 0)];
    let mut long = seq(req("long", 100, 4), 1);
    long.expected_runtime_secs = Some(3600);
    long.priority = 1;
    let mut short = seq(req("short", 100, 4), 2);
    short.expected_runtime_secs = Some(60);
    let mut urgent = seq(req("urgent", 100, 4), 3);
    urgent.priority = 10;
    let winner = |queue, urgent_queued_at_ms: u64| {
        let mut urgent = urgent.clone();
        urgent.queued_at_ms = urgent_queued_at_ms;
        let pending = vec![urgent, short.clone(), long.clone()];
        // Evaluate the moment "urgent" arrives; "long" was queued at 0.
        let plan = schedule(
            nodes.clone(),
            pending,
            &cfg(BestFit, queue, true),
            urgent_queued_at_ms,
        );
        plan.placements[0].request_id.clone()
    };
    assert_eq!(winner(QueuePolicy::Fcfs, 60_000), "long");
    assert_eq!(winner(QueuePolicy::Sjf, 60_000), "short");
    assert_eq!(winner(QueuePolicy::Priority, 60_000), "urgent");
    // "long" (priority 1) waited 8 minutes: 9 < 10.
    assert_eq!(winner(QueuePolicy::Priority, 8 * 60_000), "urgent");
    // 9 minutes: 10 = 10, the earlier arrival wins the tie.
    assert_eq!(winner(QueuePolicy::Priority, 9 * 60_000), "long");
    // An hour: aging has lifted it well above a newly arrived priority-10 request.
    assert_eq!(winner(QueuePolicy::Priority, 60 * 60_000), "long");
}

#[test]
fn identical_failing_requests_share_one_explanation() {
    let nodes = vec![node("a", 8, 4, 0), node("b", 8, 4, 0)];
    let pending = vec![
        seq(req("fill-1", 100, 3), 1),
        seq(req("big-1", 100, 2), 2),
        seq(req("fill-2", 100, 3), 3),
        seq(req("big-2", 100, 2), 4),
        seq(req("big-3", 100, 2), 5),
        seq(req("big-4", 100, 2), 6),
        seq(req("huge", 100, 5), 7),
    ];
    let plan = schedule(nodes, pending, &cfg(FirstFit, QueuePolicy::Fcfs, true), 0);
    assert_eq!(
        placed(&plan),
        [("fill-1", "a"), ("big-1", "b"), ("big-2", "b")]
    );
    let reasons: Vec<(&str, &str, bool)> = plan
        .unplaced
        .iter()
        .map(|(id, u)| (id.as_str(), u.reason.as_str(), u.never))
        .collect();
    let full = "no node has 2 GiB memory and 0.1 cpu free (2 nodes: 2 lack memory)";
    assert_eq!(
        reasons,
        [
            (
                "fill-2",
                "no node has 3 GiB memory and 0.1 cpu free (2 nodes: 2 lack memory)",
                false
            ),
            ("big-3", full, false),
            ("big-4", full, false),
            (
                "huge",
                "every matching node is too small for 5 GiB memory and 0.1 cpu even when empty \
                 (2 nodes: 2 have too little memory)",
                true
            ),
        ]
    );
}

#[test]
fn waiting_reason_names_the_queue_policy() {
    let nodes = vec![node("a", 8, 4, 3)];
    let mut head = seq(req("head", 100, 2), 1);
    head.priority = 5;
    let pending = vec![head, seq(req("next", 100, 1), 2)];
    let plan = schedule(
        nodes,
        pending,
        &cfg(WorstFit, QueuePolicy::Priority, false),
        0,
    );
    assert!(plan.placements.is_empty());
    assert_eq!(plan.unplaced[1].0, "next");
    assert_eq!(
        plan.unplaced[1].1.reason,
        "waiting behind head (queue policy priority)"
    );
}
