//! `FreeIndex`: per-driver-set indexes of free capacity that answer each policy's query.

use std::collections::BTreeMap;

use crate::fittree::FitTree;
use crate::segtree::{Amounts, SegTree, WIDTH};
use crate::{filter, NodeInfo, PlacementPolicy, Request, Resources};

/// Weights `[memory, cpu, disk]` of the joint scores of [`profile`]: each scores
/// `min(x * w)` over the dimensions with a non-zero weight, `x` being free memory MiB, cpu
/// millicores and disk MiB. A request is "balanced" for a score when all its weighted
/// dimensions are equal; the weights form geometric grids of memory per core and disk per
/// core (1 GiB per core = 1.024 MiB per millicore), so every request has a score near its
/// own shape.
const JOINT: [[u64; 3]; WIDTH - 3] = {
    /// memory and cpu: `g` GiB per core.
    const fn mem_cpu(g_num: u64, g_den: u64) -> [u64; 3] {
        [1000 * g_den, 1024 * g_num, 0]
    }
    /// memory and disk: `r` GiB disk per GiB memory.
    const fn mem_disk(r: u64) -> [u64; 3] {
        [r, 0, 1]
    }
    /// cpu and disk: `g` GiB disk per core.
    const fn cpu_disk(g: u64) -> [u64; 3] {
        [0, 1024 * g, 1000]
    }
    /// All three: `m` GiB memory and `d` GiB disk per core.
    const fn all(m: u64, d: u64) -> [u64; 3] {
        [1000 * d, 1024 * m * d, 1000 * m]
    }
    [
        mem_cpu(1, 2),
        mem_cpu(1, 1),
        mem_cpu(2, 1),
        mem_cpu(4, 1),
        mem_cpu(8, 1),
        mem_cpu(16, 1),
        [1, 0, 4], // 1/4 GiB disk per GiB memory
        mem_disk(1),
        mem_disk(4),
        mem_disk(16),
        mem_disk(64),
        cpu_disk(2),
        cpu_disk(8),
        cpu_disk(32),
        cpu_disk(128),
        // Pairs cannot see three-way fragmentation (one node out of memory, one out of
        // cpu, one out of disk): these can.
        all(1, 2),
        all(1, 16),
        all(1, 128),
        all(4, 2),
        all(4, 16),
        all(4, 128),
        all(16, 2),
        all(16, 16),
        all(16, 128),
    ]
};

/// `[memory, cpu, disk]` of `r`.
fn amounts(r: Resources) -> [u64; 3] {
    [r.memory_mib, r.cpu_millis, r.disk_mib]
}

/// The segment-tree leaf values of `r`: memory, cpu, disk, then the [`JOINT`] scores.
///
/// Every value is monotone in `r`, so a node that holds a request has every value >= the
/// request's: a subtree whose maximum is below the request's in any value holds no fitting
/// node and is skipped (sound pruning). Per-dimension maxima alone cannot tell a subtree
/// with one node rich in memory and another rich in cpu from one with a node rich in both;
/// a joint score near the request's own ratio can, since its maximum comes from a single
/// node. This keeps first-fit from scanning the filled, fragmented prefix of the cluster.
fn profile(r: Resources) -> Amounts {
    let x = amounts(r);
    let mut p = [0; WIDTH];
    p[..3].copy_from_slice(&x);
    for (k, w) in JOINT.into_iter().enumerate() {
        p[3 + k] = (0..3)
            .filter(|&d| w[d] > 0)
            .map(|d| x[d].saturating_mul(w[d]))
            .min()
            .unwrap_or(0);
    }
    p
}

/// Nodes offering the same set of drivers, indexed two ways.
#[derive(Debug, Clone)]
struct Class {
    /// Sorted, deduplicated drivers every member runs.
    drivers: Vec<String>,
    /// Member node indices, ascending (so leftmost position = lowest node index).
    members: Vec<usize>,
    /// First-fit: max free per subtree over positions.
    seg: SegTree,
    /// Best-/worst-fit: members ordered by free (memory, cpu, index).
    tree: FitTree,
}

impl Class {
    fn runs(&self, driver: &str) -> bool {
        driver.is_empty()
            || self
                .drivers
                .binary_search_by(|d| d.as_str().cmp(driver))
                .is_ok()
    }
}

/// The index of ready nodes' free capacity.
///
/// Nodes are grouped into classes by driver set (few in practice, like Nomad's computed node
/// classes), so the driver filter is applied once per class rather than per node. Node
/// selectors are checked on each candidate the search reaches.
#[derive(Debug, Clone)]
pub(crate) struct FreeIndex {
    classes: Vec<Class>,
    /// Node index -> (class, position in class).
    slot: Vec<(usize, usize)>,
}

impl FreeIndex {
    pub(crate) fn new(nodes: &[NodeInfo]) -> FreeIndex {
        let mut by_drivers: BTreeMap<Vec<String>, Vec<usize>> = BTreeMap::new();
        for (i, n) in nodes.iter().enumerate() {
            let mut drivers = n.drivers.clone();
            drivers.sort();
            drivers.dedup();
            by_drivers.entry(drivers).or_default().push(i);
        }
        let mut slot = vec![(0, 0); nodes.len()];
        let mut classes = Vec::with_capacity(by_drivers.len());
        for (c, (drivers, members)) in by_drivers.into_iter().enumerate() {
            for (pos, &i) in members.iter().enumerate() {
                slot[i] = (c, pos);
            }
            classes.push(Class {
                drivers,
                seg: SegTree::new(members.len()),
                tree: FitTree::new(members.len()),
                members,
            });
        }
        let mut index = FreeIndex { classes, slot };
        for (i, n) in nodes.iter().enumerate() {
            index.update(i, n);
        }
        index
    }

    /// Refreshes node `i` after its allocation or readiness changed.
    pub(crate) fn update(&mut self, i: usize, node: &NodeInfo) {
        let (c, pos) = self.slot[i];
        let class = &mut self.classes[c];
        if filter::ready(node) {
            let profile = profile(node.free());
            class.seg.set(pos, Some(profile));
            class.tree.upsert(pos, i, profile);
        } else {
            class.seg.set(pos, None);
            class.tree.remove(pos);
        }
    }

    /// The node `policy` picks for `req`, exactly as [`crate::reference::select_linear`]
    /// would, without scanning every node.
    pub(crate) fn select(
        &self,
        nodes: &[NodeInfo],
        req: &Request,
        policy: PlacementPolicy,
    ) -> Option<usize> {
        let need = &profile(req.resources);
        let mut accept =
            |i: usize| req.node_selector.is_empty() || filter::selector_ok(&nodes[i], req);
        let classes = self.classes.iter().filter(|c| c.runs(&req.driver));
        match policy {
            PlacementPolicy::FirstFit => classes
                .filter_map(|c| {
                    c.seg
                        .leftmost(need, &mut |pos| accept(c.members[pos]))
                        .map(|pos| c.members[pos])
                })
                .min(),
            PlacementPolicy::BestFit => classes
                .filter_map(|c| c.tree.first_from(&(need[0], 0, 0), need, &mut accept))
                .min()
                .map(|k| k.2),
            PlacementPolicy::WorstFit => classes
                .filter_map(|c| {
                    let (mem, cpu, _) = c.tree.last(need, &mut accept)?;
                    // Among entries with the same free memory and cpu, the lowest index.
                    c.tree.first_from(&(mem, cpu, 0), need, &mut accept)
                })
                .min_by(|a, b| (b.0, b.1, a.2).cmp(&(a.0, a.1, b.2)))
                .map(|k| k.2),
        }
    }
}
