//! Naive O(nodes) reference placement: the specification the index is tested against.

use crate::score::{self, Candidate};
use crate::{filter, NodeInfo, PlacementPolicy, Request};

/// The node `policy` picks for `req`: every feasible node ([`filter::feasible`]) scored by
/// [`score::compare`]. [`crate::ClusterState::select`] must return exactly the same node;
/// the property tests and the benchmark's baseline use this.
pub fn select_linear(nodes: &[NodeInfo], req: &Request, policy: PlacementPolicy) -> Option<usize> {
    score::select(
        policy,
        nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| filter::feasible(n, req))
            .map(|(index, n)| Candidate {
                index,
                free: n.free(),
            }),
    )
    .map(|c| c.index)
}
