//! Property tests: the index agrees with the naive reference, capacity is never exceeded,
//! and `schedule` is deterministic.

use std::collections::BTreeMap;

use proptest::prelude::*;

use nimbus_sched::reference::select_linear;
use nimbus_sched::{
    filter, schedule, ClusterState, NodeInfo, PlacementPolicy, QueuePolicy, Rejections, Request,
    Resources, SchedulerConfig,
};

/// Small value domains so that ties (equal free memory / cpu) are common.
fn capacity() -> impl Strategy<Value = Resources> {
    (0u64..=8, 0u64..=8, 0u64..=4).prop_map(|(c, m, d)| Resources::new(c * 500, m * 512, d * 1024))
}

fn drivers() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        3 => Just(vec!["process".to_string()]),
        2 => Just(vec!["qemu".to_string(), "process".to_string()]),
        1 => Just(vec!["qemu".to_string()]),
        1 => Just(vec![]),
    ]
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    (
        prop::option::of(prop_oneof![Just("a"), Just("b")]),
        any::<bool>(),
    )
        .prop_map(|(zone, gpu)| {
            let mut l = BTreeMap::new();
            if let Some(z) = zone {
                l.insert("zone".to_string(), z.to_string());
            }
            if gpu {
                l.insert("gpu".to_string(), "true".to_string());
            }
            l
        })
}

fn node() -> impl Strategy<Value = NodeInfo> {
    (
        capacity(),
        0u64..=4,
        drivers(),
        labels(),
        prop::bool::weighted(0.85),
    )
        .prop_map(
            |(capacity, used_quarters, drivers, labels, schedulable)| NodeInfo {
                name: String::new(),
                capacity,
                allocated: Resources::new(
                    capacity.cpu_millis * used_quarters / 4,
                    capacity.memory_mib * used_quarters / 4,
                    capacity.disk_mib * (4 - used_quarters) / 4,
                ),
                labels,
                drivers,
                schedulable,
            },
        )
}

fn nodes(max: usize) -> impl Strategy<Value = Vec<NodeInfo>> {
    prop::collection::vec(node(), 0..max).prop_map(|mut v| {
        for (i, n) in v.iter_mut().enumerate() {
            n.name = format!("node-{i:03}");
        }
        v
    })
}

fn request() -> impl Strategy<Value = Request> {
    (
        (0u64..=6, 0u64..=6, 0u64..=3),
        prop_oneof![4 => Just(""), 8 => Just("process"), 3 => Just("qemu"), 1 => Just("docker")],
        prop_oneof![
            6 => Just(vec![]),
            2 => Just(vec![("zone", "a")]),
            1 => Just(vec![("gpu", "true")]),
            1 => Just(vec![("gpu", "true"), ("zone", "b")]),
        ],
        -3i32..=3,
        prop::option::of(0u64..=5),
        0u64..=600_000,
    )
        .prop_map(
            |((c, m, d), driver, sel, priority, runtime, queued_at_ms)| Request {
                id: String::new(),
                resources: Resources::new(c * 250, m * 256, d * 512),
                driver: driver.to_string(),
                node_selector: sel
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                priority,
                expected_runtime_secs: runtime,
                queue_seq: 0,
                queued_at_ms,
            },
        )
}

fn requests(max: usize) -> impl Strategy<Value = Vec<Request>> {
    prop::collection::vec(request(), 0..max).prop_map(|mut v| {
        for (i, r) in v.iter_mut().enumerate() {
            r.id = format!("req-{i:03}");
            r.queue_seq = i as u64;
        }
        v
    })
}

fn policy() -> impl Strategy<Value = PlacementPolicy> {
    prop::sample::select(PlacementPolicy::ALL.to_vec())
}

#[derive(Debug, Clone)]
enum Op {
    Place(Request, PlacementPolicy),
    /// Release the placement at this (wrapped) position among live placements.
    Release(usize),
    /// Flip readiness of this (wrapped) node.
    Toggle(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            6 => (request(), policy()).prop_map(|(r, p)| Op::Place(r, p)),
            2 => any::<usize>().prop_map(Op::Release),
            1 => any::<usize>().prop_map(Op::Toggle),
        ],
        0..80,
    )
}

fn all_within_capacity(state: &ClusterState) -> Result<(), TestCaseError> {
    for (i, n) in state.iter() {
        prop_assert!(
            n.capacity.fits(n.allocated),
            "node {i} over capacity: {:?} > {:?}",
            n.allocated,
            n.capacity
        );
    }
    Ok(())
}

/// Runs `ops`, checking at every placement that the index picks exactly the reference's
/// node, and after every op that no node is over capacity.
fn run_ops(nodes: Vec<NodeInfo>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut state = ClusterState::new(nodes);
    let mut live: Vec<(usize, Resources)> = Vec::new();
    all_within_capacity(&state)?;
    for op in ops {
        match op {
            Op::Place(req, policy) => {
                let want = select_linear(state.nodes(), &req, policy);
                prop_assert_eq!(state.select(&req, policy), want, "{} {:?}", policy, req);
                match state.place(&req, policy) {
                    Ok(i) => {
                        prop_assert_eq!(Some(i), want);
                        live.push((i, req.resources));
                    }
                    Err(why) => {
                        prop_assert_eq!(want, None);
                        prop_assert_eq!(Rejections::count(state.nodes(), &req).fit, 0);
                        prop_assert!(!why.reason.is_empty());
                    }
                }
            }
            Op::Release(k) if !live.is_empty() => {
                let (i, res) = live.swap_remove(k % live.len());
                state.release(i, res);
            }
            Op::Toggle(k) if !state.is_empty() => {
                let i = k % state.len();
                let ready = state.node(i).schedulable;
                state.set_schedulable(i, !ready);
            }
            Op::Release(_) | Op::Toggle(_) => {}
        }
        all_within_capacity(&state)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The key test of the index: for every policy, after any history of placements,
    /// releases and readiness changes, it picks exactly the node the linear scan picks.
    #[test]
    fn index_matches_linear_reference(nodes in nodes(40), ops in ops()) {
        run_ops(nodes, ops)?;
    }

    /// Same, with many nodes of a few shapes, so whole subtrees tie or lack one dimension.
    #[test]
    fn index_matches_linear_reference_at_scale(nodes in nodes(300), ops in ops()) {
        run_ops(nodes, ops)?;
    }

    /// `never` is true exactly when the request would fit on no node even if every node
    /// were up and empty.
    #[test]
    fn never_means_no_node_could_ever_hold_it(nodes in nodes(20), req in request()) {
        let state = ClusterState::new(nodes.clone());
        let why = state.explain(&req);
        let empty: Vec<NodeInfo> = nodes
            .into_iter()
            .map(|n| NodeInfo { allocated: Resources::ZERO, schedulable: true, ..n })
            .collect();
        let could = empty.iter().any(|n| filter::feasible(n, &req));
        prop_assert_eq!(why.never, !could, "{}", why.reason);
    }

    /// Same input, same plan; and the plan does not depend on the order pending requests
    /// are handed over in. Every placement is feasible and capacity holds.
    #[test]
    fn schedule_is_deterministic(
        nodes in nodes(30),
        pending in requests(60),
        placement in policy(),
        queue in prop::sample::select(QueuePolicy::ALL.to_vec()),
        backfill in any::<bool>(),
        aging in prop_oneof![Just(0u64), Just(1_000u64), Just(60_000u64)],
        now_ms in 0u64..=1_200_000,
        shuffled in Just(()).prop_perturb(|_, mut rng| rng.next_u64()),
    ) {
        let cfg = SchedulerConfig { placement, queue, aging_per_priority_ms: aging, backfill };
        let a = schedule(nodes.clone(), pending.clone(), &cfg, now_ms);
        let b = schedule(nodes.clone(), pending.clone(), &cfg, now_ms);
        prop_assert_eq!(&a, &b);

        let mut permuted = pending.clone();
        let mut x = shuffled | 1;
        for i in (1..permuted.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            permuted.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let c = schedule(nodes.clone(), permuted, &cfg, now_ms);
        prop_assert_eq!(&a, &c);

        prop_assert_eq!(a.placements.len() + a.unplaced.len(), pending.len());
        let mut state = ClusterState::new(nodes);
        for p in &a.placements {
            let req = pending.iter().find(|r| r.id == p.request_id).unwrap();
            let i = state.node_index(&p.node).unwrap();
            prop_assert!(filter::feasible(state.node(i), req));
            state.allocate(i, req.resources);
        }
        all_within_capacity(&state)?;
    }
}
