//! `schedule`: one full pass (order the queue, place each request, record why others wait).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{order_queue, ClusterState, NodeInfo, Request, SchedulerConfig, Unplaced};

/// One request bound to one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub request_id: String,
    /// The node's name.
    pub node: String,
}

/// The outcome of one pass. Both lists are in the order requests were considered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub placements: Vec<Placement>,
    pub unplaced: Vec<(String, Unplaced)>,
}

/// Orders `pending` by `cfg.queue` at `now_ms`, then places each request in turn on
/// `nodes` (first-fit order = the order given) by `cfg.placement`, each placement seeing
/// the allocations of those before it.
///
/// With `cfg.backfill` false, the first request that does not fit blocks every request
/// after it (`waiting behind <id>`). A request that can never fit (`Unplaced::never`) does
/// not block: waiting behind it would wait forever.
///
/// Explaining a failure scans every node, so within one pass identical requests (same
/// resources, driver and node selector) that fail share the explanation computed for the
/// first of them: the pass only ever allocates, so what failed once keeps failing.
pub fn schedule(
    nodes: Vec<NodeInfo>,
    mut pending: Vec<Request>,
    cfg: &SchedulerConfig,
    now_ms: u64,
) -> Plan {
    order_queue(&mut pending, cfg, now_ms);
    let mut state = ClusterState::new(nodes);
    let mut plan = Plan::default();
    let mut blocked_behind: Option<String> = None;
    let mut explained: BTreeMap<Shape, Unplaced> = BTreeMap::new();
    for req in pending {
        if let Some(head) = &blocked_behind {
            let reason = format!("waiting behind {head} (queue policy {})", cfg.queue);
            plan.unplaced.push((
                req.id,
                Unplaced {
                    reason,
                    never: false,
                },
            ));
            continue;
        }
        match state.select(&req, cfg.placement) {
            Some(i) => {
                state.allocate(i, req.resources);
                plan.placements.push(Placement {
                    request_id: req.id,
                    node: state.node(i).name.clone(),
                });
            }
            None => {
                let why = explained
                    .entry(Shape::of(&req))
                    .or_insert_with(|| state.explain(&req))
                    .clone();
                if !cfg.backfill && !why.never {
                    blocked_behind = Some(req.id.clone());
                }
                plan.unplaced.push((req.id, why));
            }
        }
    }
    plan
}

/// What makes two requests place identically: resources, driver and node selector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Shape {
    resources: (u64, u64, u64),
    driver: String,
    node_selector: BTreeMap<String, String>,
}

impl Shape {
    fn of(req: &Request) -> Shape {
        let r = req.resources;
        Shape {
            resources: (r.memory_mib, r.cpu_millis, r.disk_mib),
            driver: req.driver.clone(),
            node_selector: req.node_selector.clone(),
        }
    }
}
