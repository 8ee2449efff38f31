//! Selection stage: each placement policy as a total preference order over feasible nodes.
//!
//! Disk is a constraint only, never part of a score. Ties always go to the lower node index,
//! so every policy picks exactly one node deterministically.

use std::cmp::{Ordering, Reverse};

use crate::{PlacementPolicy, Resources};

/// A feasible node: its index in node order and its free resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub index: usize,
    pub free: Resources,
}

/// `Less` when `a` is preferred over `b` under `policy`.
///
/// - first-fit: lower index.
/// - best-fit: less free memory, then less free cpu, then lower index.
/// - worst-fit: more free memory, then more free cpu, then lower index.
pub fn compare(policy: PlacementPolicy, a: &Candidate, b: &Candidate) -> Ordering {
    match policy {
        PlacementPolicy::FirstFit => a.index.cmp(&b.index),
        PlacementPolicy::BestFit => (a.free.memory_mib, a.free.cpu_millis, a.index).cmp(&(
            b.free.memory_mib,
            b.free.cpu_millis,
            b.index,
        )),
        PlacementPolicy::WorstFit => (
            Reverse(a.free.memory_mib),
            Reverse(a.free.cpu_millis),
            a.index,
        )
            .cmp(&(
                Reverse(b.free.memory_mib),
                Reverse(b.free.cpu_millis),
                b.index,
            )),
    }
}

/// The preferred candidate under `policy`, if any.
pub fn select(
    policy: PlacementPolicy,
    candidates: impl IntoIterator<Item = Candidate>,
) -> Option<Candidate> {
    candidates.into_iter().min_by(|a, b| compare(policy, a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(index: usize, cpu: u64, mem: u64) -> Candidate {
        Candidate {
            index,
            free: Resources::new(cpu, mem, 0),
        }
    }

    #[test]
    fn each_policy_picks_its_defining_node() {
        let cands = [
            c(0, 8000, 4096),
            c(1, 1000, 1024),
            c(2, 2000, 16384),
            c(3, 500, 1024),
        ];
        let cases = [
            (PlacementPolicy::FirstFit, 0),
            // least memory 1024 on nodes 1 and 3; less cpu wins: node 3
            (PlacementPolicy::BestFit, 3),
            (PlacementPolicy::WorstFit, 2),
        ];
        for (policy, want) in cases {
            assert_eq!(
                select(policy, cands).map(|c| c.index),
                Some(want),
                "{policy}"
            );
        }
    }

    #[test]
    fn full_ties_go_to_the_lower_index() {
        let cands = [c(5, 1000, 1024), c(2, 1000, 1024), c(9, 1000, 1024)];
        for policy in PlacementPolicy::ALL {
            assert_eq!(select(policy, cands).map(|c| c.index), Some(2), "{policy}");
        }
        assert_eq!(select(PlacementPolicy::BestFit, []), None);
    }
}
