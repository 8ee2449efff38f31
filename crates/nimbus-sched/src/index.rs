//! `FreeIndex`: per-driver-set indexes of free capacity that answer each policy's query.

use std::collections::BTreeMap;

use crate::fittree::FitTree;
use crate::profile::{profile, Amounts};
use crate::segtree::SegTree;
use crate::{filter, NodeInfo, PlacementPolicy, Request};

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
            let profiles: Vec<Option<Amounts>> = members
                .iter()
                .enumerate()
                .map(|(pos, &i)| {
                    slot[i] = (c, pos);
                    let n = &nodes[i];
                    filter::ready(n).then(|| profile(n.free()))
                })
                .collect();
            classes.push(Class {
                drivers,
                seg: SegTree::build(profiles.iter().copied()),
                tree: FitTree::build(
                    members.len(),
                    profiles
                        .iter()
                        .enumerate()
                        .filter_map(|(pos, p)| Some((pos, members[pos], (*p)?))),
                ),
                members,
            });
        }
        FreeIndex { classes, slot }
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
