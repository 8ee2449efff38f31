//! First-fit index: a max segment tree over node positions, descending to the leftmost fit.

use crate::profile::{Amounts, WIDTH};

/// A segment tree storing, per subtree, the componentwise maximum of its live leaves'
/// profiles ([`Amounts`]). A leaf is live when its node is in the index (ready). Finding the leftmost
/// live leaf whose amounts are all >= a request's descends into a subtree only if its
/// maxima could hold it; since maxima may come from different leaves a descent can fail
/// and backtrack, which the joint scores in the amounts keep rare.
#[derive(Debug, Clone)]
pub(crate) struct SegTree {
    /// Number of leaves (a power of two, at least 1).
    size: usize,
    max: Vec<Amounts>,
    live: Vec<bool>,
}

impl SegTree {
    /// A tree with `n` dead leaves.
    pub(crate) fn new(n: usize) -> SegTree {
        let size = n.max(1).next_power_of_two();
        SegTree {
            size,
            max: vec![[0; WIDTH]; 2 * size],
            live: vec![false; 2 * size],
        }
    }

    /// A tree over `leaves` (`None` = dead), built bottom-up in O(n).
    pub(crate) fn build(leaves: impl ExactSizeIterator<Item = Option<Amounts>>) -> SegTree {
        let mut t = SegTree::new(leaves.len());
        for (pos, value) in leaves.enumerate() {
            t.live[t.size + pos] = value.is_some();
            t.max[t.size + pos] = value.unwrap_or([0; WIDTH]);
        }
        for i in (1..t.size).rev() {
            t.pull(i);
        }
        t
    }

    /// Sets leaf `pos` to `value`, or makes it dead with `None`.
    pub(crate) fn set(&mut self, pos: usize, value: Option<Amounts>) {
        let mut i = pos + self.size;
        self.live[i] = value.is_some();
        self.max[i] = value.unwrap_or([0; WIDTH]);
        while i > 1 {
            i /= 2;
            let (live, max) = self.combined(i);
            if live == self.live[i] && max == self.max[i] {
                // Unchanged here, so unchanged above.
                break;
            }
            self.live[i] = live;
            self.max[i] = max;
        }
    }

    /// Recomputes internal node `i` from its children.
    fn pull(&mut self, i: usize) {
        let (live, max) = self.combined(i);
        self.live[i] = live;
        self.max[i] = max;
    }

    /// Internal node `i`'s liveness and maxima from its children.
    fn combined(&self, i: usize) -> (bool, Amounts) {
        let (l, r) = (2 * i, 2 * i + 1);
        let max = match (self.live[l], self.live[r]) {
            (true, true) => std::array::from_fn(|k| self.max[l][k].max(self.max[r][k])),
            (true, false) => self.max[l],
            (false, true) => self.max[r],
            (false, false) => [0; WIDTH],
        };
        (self.live[l] || self.live[r], max)
    }

    /// The leftmost live leaf whose amounts are all >= `need` and for which `accept` holds.
    pub(crate) fn leftmost(
        &self,
        need: &Amounts,
        accept: &mut impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        self.descend(1, need, accept)
    }

    fn descend(
        &self,
        i: usize,
        need: &Amounts,
        accept: &mut impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        if !self.live[i] || self.max[i].iter().zip(need).any(|(m, n)| m < n) {
            return None;
        }
        if i >= self.size {
            let pos = i - self.size;
            return accept(pos).then_some(pos);
        }
        self.descend(2 * i, need, accept)
            .or_else(|| self.descend(2 * i + 1, need, accept))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(x: [u64; 3]) -> Amounts {
        std::array::from_fn(|k| x.get(k).copied().unwrap_or(0))
    }

    #[test]
    fn finds_leftmost_fitting_live_leaf() {
        let mut t = SegTree::new(5);
        t.set(0, Some(a([10, 1, 0])));
        t.set(1, Some(a([1, 10, 0])));
        t.set(2, None);
        t.set(3, Some(a([10, 10, 0])));
        t.set(4, Some(a([10, 10, 5])));
        let all = &mut |_| true;
        // Root maxima say [10,10,5] fits, but only leaf 4 does: backtracking finds it.
        assert_eq!(t.leftmost(&a([5, 5, 5]), all), Some(4));
        assert_eq!(t.leftmost(&a([5, 5, 0]), all), Some(3));
        assert_eq!(t.leftmost(&a([0, 0, 0]), all), Some(0));
        assert_eq!(t.leftmost(&a([11, 0, 0]), all), None);
        assert_eq!(t.leftmost(&a([5, 5, 0]), &mut |p| p != 3), Some(4));
        t.set(0, None);
        t.set(1, None);
        assert_eq!(t.leftmost(&a([0, 0, 0]), all), Some(3));
    }

    #[test]
    fn build_equals_setting_each_leaf() {
        let leaves = [
            Some(a([3, 1, 0])),
            None,
            Some(a([1, 3, 0])),
            Some(a([2, 2, 2])),
        ];
        let built = SegTree::build(leaves.into_iter());
        let mut set = SegTree::new(leaves.len());
        for (pos, v) in leaves.into_iter().enumerate() {
            set.set(pos, v);
        }
        assert_eq!(built.max, set.max);
        assert_eq!(built.live, set.live);
    }

    #[test]
    fn empty_tree_finds_nothing() {
        let t = SegTree::new(0);
        assert_eq!(t.leftmost(&a([0, 0, 0]), &mut |_| true), None);
    }

    #[test]
    fn updates_keep_maxima_equal_to_a_rebuild() {
        // Early-stopping updates (an unchanged node leaves its ancestors alone) must
        // leave every internal node exactly as a full rebuild would.
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let n = 37;
        let mut leaves = vec![None; n];
        let mut t = SegTree::new(n);
        for _ in 0..2000 {
            let pos = (next() % n as u64) as usize;
            let v = (next() % 4 != 0).then(|| a([next() % 8, next() % 8, next() % 3]));
            leaves[pos] = v;
            t.set(pos, v);
        }
        let rebuilt = SegTree::build(leaves.into_iter());
        assert_eq!(t.live, rebuilt.live);
        assert_eq!(t.max, rebuilt.max);
    }
}
