//! Feasibility stage: the predicates deciding whether a node can take a request at all.
//!
//! Checked in this order (the same order [`explain`](mod@crate::explain) reports in): ready, driver,
//! node selector, free resources.

use crate::{NodeInfo, Request};

/// The node takes new work (not down, not draining).
pub fn ready(node: &NodeInfo) -> bool {
    node.schedulable
}

/// The node runs the request's driver (an empty driver matches every node).
pub fn driver_ok(node: &NodeInfo, req: &Request) -> bool {
    req.driver.is_empty() || node.has_driver(&req.driver)
}

/// The node carries every label of the request's node selector, with the same value.
pub fn selector_ok(node: &NodeInfo, req: &Request) -> bool {
    req.node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
}

/// Driver and selector match: the constraints that do not change as instances come and go.
pub fn static_ok(node: &NodeInfo, req: &Request) -> bool {
    driver_ok(node, req) && selector_ok(node, req)
}

/// The request fits on the node right now: ready, driver, selector and free resources.
pub fn feasible(node: &NodeInfo, req: &Request) -> bool {
    ready(node) && static_ok(node, req) && node.free().fits(req.resources)
}

/// The request would fit on the node if it were up and empty.
pub fn could_ever_fit(node: &NodeInfo, req: &Request) -> bool {
    static_ok(node, req) && node.capacity.fits(req.resources)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Resources;

    fn node() -> NodeInfo {
        let mut n = NodeInfo::new("n1", Resources::new(4000, 8192, 100), &["process"]);
        n.labels.insert("zone".into(), "a".into());
        n.allocated = Resources::new(1000, 4096, 0);
        n
    }

    fn req(driver: &str, sel: &[(&str, &str)], r: Resources) -> Request {
        let mut q = Request::new("i", r, driver);
        q.node_selector = sel
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        q
    }

    #[test]
    fn predicates_table() {
        let small = Resources::new(1000, 1024, 0);
        let big = Resources::new(1000, 6000, 0);
        // (request, feasible, could_ever_fit)
        let cases = [
            (req("process", &[], small), true, true),
            (req("", &[], small), true, true),
            (req("qemu", &[], small), false, false),
            (req("process", &[("zone", "a")], small), true, true),
            (req("process", &[("zone", "b")], small), false, false),
            (req("process", &[("gpu", "true")], small), false, false),
            (req("process", &[], big), false, true),
            (req("process", &[], Resources::new(0, 0, 101)), false, false),
        ];
        for (i, (r, feas, ever)) in cases.iter().enumerate() {
            assert_eq!(feasible(&node(), r), *feas, "case {i}: feasible");
            assert_eq!(
                could_ever_fit(&node(), r),
                *ever,
                "case {i}: could_ever_fit"
            );
        }
    }

    #[test]
    fn unschedulable_node_is_not_feasible_but_could_fit() {
        let mut n = node();
        n.schedulable = false;
        let r = req("process", &[], Resources::new(1, 1, 1));
        assert!(!feasible(&n, &r));
        assert!(could_ever_fit(&n, &r));
    }
}
