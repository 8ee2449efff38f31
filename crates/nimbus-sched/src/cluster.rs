//! `ClusterState`: nodes plus the free-capacity index; places and releases allocations.

use crate::explain::{explain, Unplaced};
use crate::index::FreeIndex;
use crate::{NodeInfo, PlacementPolicy, Request, Resources};

/// The nodes of one scheduling pass and an index of their free capacity.
///
/// A placement costs O(log nodes) in the common case (see "Index" in the crate docs);
/// only a failed placement scans every node, to explain itself.
///
/// Nodes keep the order they were given in; that order is first-fit's order and the
/// tie-breaker of every policy (callers pass nodes sorted by name).
#[derive(Debug, Clone)]
pub struct ClusterState {
    nodes: Vec<NodeInfo>,
    index: FreeIndex,
}

impl ClusterState {
    /// Indexes `nodes` (O(n log n)).
    pub fn new(nodes: Vec<NodeInfo>) -> ClusterState {
        let index = FreeIndex::new(&nodes);
        ClusterState { nodes, index }
    }

    /// The node `policy` would pick for `req`, without committing anything.
    pub fn select(&self, req: &Request, policy: PlacementPolicy) -> Option<usize> {
        self.index.select(&self.nodes, req, policy)
    }

    /// Picks a node for `req` under `policy` and allocates the request's resources on it,
    /// returning the node's index; or explains why no node can take it.
    pub fn place(&mut self, req: &Request, policy: PlacementPolicy) -> Result<usize, Unplaced> {
        match self.select(req, policy) {
            Some(i) => {
                self.allocate(i, req.resources);
                Ok(i)
            }
            None => Err(self.explain(req)),
        }
    }

    /// Why `req` fits nowhere right now (O(nodes)).
    pub fn explain(&self, req: &Request) -> Unplaced {
        explain(&self.nodes, req)
    }

    /// Adds `res` to node `node`'s allocations, unchecked (e.g. to replay existing
    /// instances). Saturates rather than overflows.
    pub fn allocate(&mut self, node: usize, res: Resources) {
        let n = &mut self.nodes[node];
        n.allocated = n.allocated.saturating_add(res);
        self.index.update(node, &self.nodes[node]);
    }

    /// Returns `res` from node `node`'s allocations (clamped at zero).
    pub fn release(&mut self, node: usize, res: Resources) {
        let n = &mut self.nodes[node];
        n.allocated = n.allocated.saturating_sub(res);
        self.index.update(node, &self.nodes[node]);
    }

    /// Marks node `node` ready or not (down / draining); a non-ready node gets no placements.
    pub fn set_schedulable(&mut self, node: usize, schedulable: bool) {
        self.nodes[node].schedulable = schedulable;
        self.index.update(node, &self.nodes[node]);
    }

    /// What node `node` has free.
    pub fn node_free(&self, node: usize) -> Resources {
        self.nodes[node].free()
    }

    /// Node `node`.
    pub fn node(&self, node: usize) -> &NodeInfo {
        &self.nodes[node]
    }

    /// The index of the node named `name` (O(nodes)).
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// All nodes, in the order given, with current allocations.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// `(index, node)` pairs in node order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &NodeInfo)> {
        self.nodes.iter().enumerate()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The nodes back, with current allocations.
    pub fn into_nodes(self) -> Vec<NodeInfo> {
        self.nodes
    }
}
