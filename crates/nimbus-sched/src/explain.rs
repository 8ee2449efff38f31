//! Failure slow path: why a request is pending, as a sentence a person can act on.
//!
//! Runs only when placement failed, so it may scan every node (O(nodes)). It walks the same
//! stages as [`crate::filter`] and reports the first stage that left no candidate.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::resources::join_and;
use crate::{filter, Dimension, NodeInfo, Request};

/// Why a request was not placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    /// A sentence saying what is missing, e.g. `no node has 64 MiB memory and 0.5 cpu free
    /// (3 nodes: 2 lack memory, 1 lacks cpu)`.
    pub reason: String,
    /// True when no known node could hold the request even up and empty (too large, or no
    /// node with the driver / labels); false when it may fit once capacity frees up or a
    /// node comes back.
    pub never: bool,
}

impl fmt::Display for Unplaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Unplaced {}

/// Per-stage counts of why nodes were rejected for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rejections {
    pub total: usize,
    pub not_ready: usize,
    pub no_driver: usize,
    pub no_selector: usize,
    /// Nodes passing the filters but too small even when empty, by first short dimension
    /// (memory, cpu, disk).
    pub too_small: [usize; 3],
    /// Nodes large enough but without enough free now, by first short dimension.
    pub short: [usize; 3],
    /// Nodes the request fits on now.
    pub fit: usize,
    /// Any node (ready or not) that could hold the request if up and empty.
    pub could_ever_fit: bool,
}

impl Rejections {
    /// Walks every node through the stages of [`crate::filter`].
    pub fn count(nodes: &[NodeInfo], req: &Request) -> Rejections {
        let mut r = Rejections {
            total: nodes.len(),
            ..Rejections::default()
        };
        for node in nodes {
            // Each predicate once per node: this loop is the whole cost of a failure.
            let driver = filter::driver_ok(node, req);
            let selector = driver && filter::selector_ok(node, req);
            let too_small = node.capacity.first_short(req.resources);
            r.could_ever_fit |= selector && too_small.is_none();
            if !filter::ready(node) {
                r.not_ready += 1;
            } else if !driver {
                r.no_driver += 1;
            } else if !selector {
                r.no_selector += 1;
            } else if let Some(d) = too_small {
                r.too_small[d as usize] += 1;
            } else if let Some(d) = node.free().first_short(req.resources) {
                r.short[d as usize] += 1;
            } else {
                r.fit += 1;
            }
        }
        r
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `2 lack memory, 1 lacks cpu` from per-dimension counts.
fn by_dimension(counts: &[usize; 3], one: &str, many: &str) -> String {
    Dimension::ALL
        .into_iter()
        .filter(|&d| counts[d as usize] > 0)
        .map(|d| format!("{} {d}", plural(counts[d as usize], one, many)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn selector_text(req: &Request) -> String {
    req.node_selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Explains why `req` fits on none of `nodes` (whose `allocated` must be current).
///
/// If the request does fit somewhere the reason says so and `never` is false; callers only
/// ask after a failed placement.
pub fn explain(nodes: &[NodeInfo], req: &Request) -> Unplaced {
    let r = Rejections::count(nodes, req);
    let never = !r.could_ever_fit;
    // Said when a static stage rejects every ready node but a down/draining one would do.
    let down_hint = if never {
        ""
    } else {
        "; a node that is down or draining could take it"
    };
    let ready = r.total - r.not_ready;
    let with_driver = ready - r.no_driver;
    let matching = with_driver - r.no_selector;
    let too_small: usize = r.too_small.iter().sum();
    let reason = if r.total == 0 {
        "no nodes are registered".to_string()
    } else if ready == 0 {
        format!(
            "no ready node: {} down or draining",
            if r.total == 1 {
                "the only node is".to_string()
            } else {
                format!("all {} nodes are", r.total)
            }
        )
    } else if with_driver == 0 {
        let offered: BTreeSet<&str> = nodes
            .iter()
            .filter(|n| filter::ready(n))
            .flat_map(|n| n.drivers.iter().map(String::as_str))
            .collect();
        let offered = if offered.is_empty() {
            "none".to_string()
        } else {
            offered.into_iter().collect::<Vec<_>>().join(", ")
        };
        format!(
            "no ready node has driver {:?} (ready nodes offer: {offered}){down_hint}",
            req.driver
        )
    } else if matching == 0 {
        let with = if req.driver.is_empty() {
            String::new()
        } else {
            format!(" with driver {:?}", req.driver)
        };
        format!(
            "no ready node{with} matches node_selector {} ({} checked){down_hint}",
            selector_text(req),
            plural(with_driver, "node", "nodes"),
        )
    } else if too_small == matching {
        format!(
            "{} too small for {} even when empty ({}: {}){down_hint}",
            if matching == 1 {
                "the only matching node is"
            } else {
                "every matching node is"
            },
            req.resources,
            plural(matching, "node", "nodes"),
            by_dimension(&r.too_small, "has too little", "have too little"),
        )
    } else if r.fit == 0 {
        let mut lacking = r.short;
        for (l, s) in lacking.iter_mut().zip(r.too_small) {
            *l += s;
        }
        let mut excluded = Vec::new();
        if r.not_ready > 0 {
            excluded.push(format!("{} not ready", r.not_ready));
        }
        if r.no_driver > 0 {
            excluded.push(format!("{} without driver {:?}", r.no_driver, req.driver));
        }
        if r.no_selector > 0 {
            excluded.push(format!(
                "{} not matching node_selector {}",
                r.no_selector,
                selector_text(req)
            ));
        }
        let excluded = if excluded.is_empty() {
            String::new()
        } else {
            let n = r.not_ready + r.no_driver + r.no_selector;
            format!(
                "; {} excluded: {}",
                plural(n, "other node", "other nodes"),
                join_and(&excluded)
            )
        };
        format!(
            "no node has {} free ({}: {}{excluded})",
            req.resources,
            plural(matching, "node", "nodes"),
            by_dimension(&lacking, "lacks", "lack"),
        )
    } else {
        format!("request fits on {} now", plural(r.fit, "node", "nodes"))
    };
    Unplaced { reason, never }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Resources;

    fn node(name: &str, cpu: u64, mem: u64, alloc_cpu: u64, alloc_mem: u64) -> NodeInfo {
        let mut n = NodeInfo::new(name, Resources::new(cpu, mem, 1000), &["qemu"]);
        n.allocated = Resources::new(alloc_cpu, alloc_mem, 0);
        n
    }

    fn req(cpu: u64, mem: u64) -> Request {
        Request::new("web-1", Resources::new(cpu, mem, 0), "qemu")
    }

    #[test]
    fn reasons_table() {
        let three = vec![
            node("a", 4000, 1024, 0, 1000),
            node("b", 4000, 1024, 0, 1000),
            node("c", 4000, 1024, 3800, 0),
        ];
        let mut down = three.clone();
        for n in &mut down {
            n.schedulable = false;
        }
        let mut one_down_big = three.clone();
        one_down_big.push(node("d", 64000, 65536, 0, 0));
        one_down_big[3].schedulable = false;
        let mut labelled = three.clone();
        labelled[0].labels.insert("gpu".into(), "false".into());
        let mut gpu = req(500, 64);
        gpu.node_selector.insert("gpu".into(), "true".into());
        let mut process = req(500, 64);
        process.driver = "process".into();

        // (nodes, request, reason, never)
        let cases: Vec<(&[NodeInfo], Request, &str, bool)> = vec![
            (
                &three,
                req(500, 64),
                "no node has 64 MiB memory and 0.5 cpu free (3 nodes: 2 lack memory, 1 lacks cpu)",
                false,
            ),
            (&[], req(500, 64), "no nodes are registered", true),
            (
                &down,
                req(500, 64),
                "no ready node: all 3 nodes are down or draining",
                false,
            ),
            (
                &three,
                process,
                "no ready node has driver \"process\" (ready nodes offer: qemu)",
                true,
            ),
            (
                &labelled,
                gpu,
                "no ready node with driver \"qemu\" matches node_selector gpu=true (3 nodes checked)",
                true,
            ),
            (
                &three,
                req(500, 2048),
                "every matching node is too small for 2 GiB memory and 0.5 cpu even when empty \
                 (3 nodes: 3 have too little memory)",
                true,
            ),
            (
                &one_down_big,
                req(500, 2048),
                "every matching node is too small for 2 GiB memory and 0.5 cpu even when empty \
                 (3 nodes: 3 have too little memory); a node that is down or draining could take it",
                false,
            ),
            (
                &one_down_big,
                req(500, 64),
                "no node has 64 MiB memory and 0.5 cpu free (3 nodes: 2 lack memory, 1 lacks cpu; \
                 1 other node excluded: 1 not ready)",
                false,
            ),
        ];
        for (i, (nodes, r, reason, never)) in cases.into_iter().enumerate() {
            let got = explain(nodes, &r);
            assert_eq!(got.reason, reason, "case {i}");
            assert_eq!(got.never, never, "case {i}: never");
        }
    }

    #[test]
    fn mixed_too_small_and_full_is_not_never() {
        // One node too small, one big enough but full: it may fit later.
        let nodes = vec![node("a", 1000, 1024, 0, 0), node("b", 8000, 8192, 8000, 0)];
        let got = explain(&nodes, &req(2000, 512));
        assert!(!got.never);
        assert_eq!(
            got.reason,
            "no node has 512 MiB memory and 2 cpu free (2 nodes: 2 lack cpu)"
        );
    }

    #[test]
    fn counts_by_stage() {
        let mut nodes = vec![
            node("a", 4000, 4096, 0, 0),
            node("b", 4000, 4096, 0, 0),
            node("c", 4000, 4096, 4000, 0),
        ];
        nodes[1].schedulable = false;
        let r = Rejections::count(&nodes, &req(1000, 1024));
        assert_eq!(r.total, 3);
        assert_eq!(r.not_ready, 1);
        assert_eq!(r.short, [0, 1, 0]);
        assert_eq!(r.fit, 1);
        assert!(r.could_ever_fit);
    }
}
