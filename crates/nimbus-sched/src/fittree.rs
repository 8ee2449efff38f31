//! Best-/worst-fit index: a treap ordered by free (memory, cpu, node) with subtree maxima.

use std::cmp::Ordering;

use crate::profile::{Amounts, WIDTH};

const NIL: u32 = u32::MAX;

/// Sort key of an entry: free memory, free cpu, node index.
pub(crate) type Key = (u64, u64, usize);

#[derive(Debug, Clone)]
struct Entry {
    key: Key,
    /// The node's profile (see [`crate::profile`]); `[0..3]` are free memory, cpu, disk.
    own: Amounts,
    /// Componentwise maximum of `own` over this entry's subtree.
    max: Amounts,
    prio: u64,
    left: u32,
    right: u32,
    linked: bool,
}

/// A treap (randomised balanced search tree, with priorities derived deterministically
/// from the slot number) holding one entry per ready node, ordered by [`Key`]. Each entry
/// also carries the componentwise maximum of its subtree's [`Amounts`], so searches skip
/// whole subtrees of nodes that have memory left but not enough cpu or disk: best-fit
/// does not degrade into a scan when memory is not what runs out.
///
/// Slots are caller-chosen dense indices (a node's position in its class).
#[derive(Debug, Clone)]
pub(crate) struct FitTree {
    entries: Vec<Entry>,
    root: u32,
}

/// SplitMix64: a fixed, well-mixed priority per slot.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl FitTree {
    /// An empty tree with room for slots `0..n`.
    pub(crate) fn new(n: usize) -> FitTree {
        let entries = (0..n)
            .map(|slot| Entry {
                key: (0, 0, 0),
                own: [0; WIDTH],
                max: [0; WIDTH],
                prio: mix(slot as u64),
                left: NIL,
                right: NIL,
                linked: false,
            })
            .collect();
        FitTree { entries, root: NIL }
    }

    /// A tree with room for slots `0..n` holding `items` (`(slot, node, amounts)`, each
    /// slot at most once), built in O(n log n) for the sort and O(n) for the tree.
    pub(crate) fn build(
        n: usize,
        items: impl IntoIterator<Item = (usize, usize, Amounts)>,
    ) -> FitTree {
        let mut t = FitTree::new(n);
        let mut order = Vec::with_capacity(n);
        for (slot, node, own) in items {
            let e = &mut t.entries[slot];
            e.key = (own[0], own[1], node);
            e.own = own;
            e.max = own;
            e.linked = true;
            order.push(slot as u32);
        }
        order.sort_unstable_by_key(|&s| t.e(s).key);
        // Cartesian tree: in key order, keeping the right spine on a stack (max-heap on prio).
        let mut spine: Vec<u32> = Vec::new();
        for s in order {
            let mut last = NIL;
            while let Some(&top) = spine.last() {
                if t.e(top).prio >= t.e(s).prio {
                    break;
                }
                last = top;
                spine.pop();
            }
            t.entries[s as usize].left = last;
            if let Some(&top) = spine.last() {
                t.entries[top as usize].right = s;
            }
            spine.push(s);
        }
        t.root = spine.first().copied().unwrap_or(NIL);
        t.pull_all(t.root);
        t
    }

    /// Recomputes subtree maxima below and at `t`, children first.
    fn pull_all(&mut self, t: u32) {
        if t != NIL {
            self.pull_all(self.e(t).left);
            self.pull_all(self.e(t).right);
            self.pull(t);
        }
    }

    /// Puts `slot` in the tree for node `node` with amounts `own` (free memory, cpu, disk,
    /// then joint scores), replacing any previous entry of the slot.
    pub(crate) fn upsert(&mut self, slot: usize, node: usize, own: Amounts) {
        self.remove(slot);
        let key = (own[0], own[1], node);
        {
            let e = &mut self.entries[slot];
            e.key = key;
            e.own = own;
            e.max = own;
            e.left = NIL;
            e.right = NIL;
            e.linked = true;
        }
        self.root = self.insert(self.root, slot as u32).0;
    }

    /// Inserts the unlinked entry `s` into subtree `t`; returns the subtree's new root and
    /// whether its maxima changed. Standard treap insertion: descend by key until `s`
    /// outranks the subtree root, then split that subtree around `s`. A treap's shape is
    /// determined by its keys and priorities, so this builds the same tree as splitting at
    /// the root and merging; and an ancestor's maxima are only recomputed while they can
    /// still change, so an update costs far fewer recomputations.
    fn insert(&mut self, t: u32, s: u32) -> (u32, bool) {
        if t == NIL {
            return (s, true);
        }
        if self.e(s).prio > self.e(t).prio {
            let key = self.e(s).key;
            let (l, r) = self.split(t, &key);
            let e = &mut self.entries[s as usize];
            e.left = l;
            e.right = r;
            self.pull(s);
            return (s, true);
        }
        let grew = if self.e(s).key < self.e(t).key {
            let (l, grew) = self.insert(self.e(t).left, s);
            self.entries[t as usize].left = l;
            grew
        } else {
            let (r, grew) = self.insert(self.e(t).right, s);
            self.entries[t as usize].right = r;
            grew
        };
        (t, grew && self.pull_changed(t))
    }

    /// Takes `slot` out of the tree (no-op if absent).
    pub(crate) fn remove(&mut self, slot: usize) {
        if !self.entries[slot].linked {
            return;
        }
        let key = self.entries[slot].key;
        self.root = self.remove_rec(self.root, &key).0;
        self.entries[slot].linked = false;
    }

    fn e(&self, t: u32) -> &Entry {
        &self.entries[t as usize]
    }

    /// [`Self::pull`], returning whether `t`'s maxima changed (when they did not, no
    /// ancestor's can have).
    fn pull_changed(&mut self, t: u32) -> bool {
        let max = self.combined(t);
        if max == self.e(t).max {
            return false;
        }
        self.entries[t as usize].max = max;
        true
    }

    fn pull(&mut self, t: u32) {
        self.entries[t as usize].max = self.combined(t);
    }

    /// The maxima of `t`'s subtree from its own amounts and its children's maxima.
    fn combined(&self, t: u32) -> Amounts {
        let (l, r) = (self.e(t).left, self.e(t).right);
        let mut max = self.e(t).own;
        for c in [l, r] {
            if c != NIL {
                for (m, x) in max.iter_mut().zip(&self.e(c).max) {
                    *m = (*m).max(*x);
                }
            }
        }
        max
    }

    /// Splits `t` into keys `< key` and keys `>= key`.
    fn split(&mut self, t: u32, key: &Key) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        if self.e(t).key < *key {
            let (a, b) = self.split(self.e(t).right, key);
            self.entries[t as usize].right = a;
            self.pull(t);
            (t, b)
        } else {
            let (a, b) = self.split(self.e(t).left, key);
            self.entries[t as usize].left = b;
            self.pull(t);
            (a, t)
        }
    }

    /// Joins two treaps where every key of `a` is below every key of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.e(a).prio > self.e(b).prio {
            let m = self.merge(self.e(a).right, b);
            self.entries[a as usize].right = m;
            self.pull(a);
            a
        } else {
            let m = self.merge(a, self.e(b).left);
            self.entries[b as usize].left = m;
            self.pull(b);
            b
        }
    }

    /// Removes `key` from subtree `t`; returns the new root and whether its maxima may
    /// have changed.
    fn remove_rec(&mut self, t: u32, key: &Key) -> (u32, bool) {
        debug_assert!(t != NIL, "fit tree entry missing");
        if t == NIL {
            return (NIL, false);
        }
        match key.cmp(&self.e(t).key) {
            Ordering::Equal => (self.merge(self.e(t).left, self.e(t).right), true),
            Ordering::Less => {
                let (l, changed) = self.remove_rec(self.e(t).left, key);
                self.entries[t as usize].left = l;
                (t, changed && self.pull_changed(t))
            }
            Ordering::Greater => {
                let (r, changed) = self.remove_rec(self.e(t).right, key);
                self.entries[t as usize].right = r;
                (t, changed && self.pull_changed(t))
            }
        }
    }

    /// No entry of subtree `t` can hold `need`.
    fn prunable(&self, t: u32, need: &Amounts) -> bool {
        t == NIL || self.e(t).max.iter().zip(need).any(|(m, n)| m < n)
    }

    fn holds(&self, t: u32, need: &Amounts) -> bool {
        self.e(t).own[..3]
            .iter()
            .zip(&need[..3])
            .all(|(x, n)| x >= n)
    }

    /// The smallest key `>= from` whose entry holds `need` and passes `accept` (called with
    /// the node index). Returns that key.
    pub(crate) fn first_from(
        &self,
        from: &Key,
        need: &Amounts,
        accept: &mut impl FnMut(usize) -> bool,
    ) -> Option<Key> {
        self.first_rec(self.root, from, need, accept)
    }

    fn first_rec(
        &self,
        t: u32,
        from: &Key,
        need: &Amounts,
        accept: &mut impl FnMut(usize) -> bool,
    ) -> Option<Key> {
        if self.prunable(t, need) {
            return None;
        }
        let e = self.e(t);
        if e.key < *from {
            return self.first_rec(e.right, from, need, accept);
        }
        if let Some(k) = self.first_rec(e.left, from, need, accept) {
            return Some(k);
        }
        if self.holds(t, need) && accept(e.key.2) {
            return Some(e.key);
        }
        self.first_rec(e.right, from, need, accept)
    }

    /// The largest key whose entry holds `need` and passes `accept`.
    pub(crate) fn last(
        &self,
        need: &Amounts,
        accept: &mut impl FnMut(usize) -> bool,
    ) -> Option<Key> {
        self.last_rec(self.root, need, accept)
    }

    fn last_rec(
        &self,
        t: u32,
        need: &Amounts,
        accept: &mut impl FnMut(usize) -> bool,
    ) -> Option<Key> {
        if self.prunable(t, need) {
            return None;
        }
        let e = self.e(t);
        if let Some(k) = self.last_rec(e.right, need, accept) {
            return Some(k);
        }
        if e.key.0 < need[0] {
            // Everything left of here has even less memory.
            return None;
        }
        if self.holds(t, need) && accept(e.key.2) {
            return Some(e.key);
        }
        self.last_rec(e.left, need, accept)
    }

    /// All keys in order (tests).
    #[cfg(test)]
    fn keys(&self) -> Vec<Key> {
        fn walk(t: &FitTree, i: u32, out: &mut Vec<Key>) {
            if i != NIL {
                walk(t, t.e(i).left, out);
                out.push(t.e(i).key);
                walk(t, t.e(i).right, out);
            }
        }
        let mut out = Vec::new();
        walk(self, self.root, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Amounts with only memory, cpu and disk set.
    fn a([mem, cpu, disk]: [u64; 3]) -> Amounts {
        let mut x = [0; WIDTH];
        x[..3].copy_from_slice(&[mem, cpu, disk]);
        x
    }

    #[test]
    fn keeps_order_through_updates() {
        let mut t = FitTree::new(4);
        t.upsert(0, 10, a([5, 1, 0]));
        t.upsert(1, 11, a([3, 9, 0]));
        t.upsert(2, 12, a([5, 0, 0]));
        t.upsert(3, 13, a([1, 1, 0]));
        assert_eq!(
            t.keys(),
            vec![(1, 1, 13), (3, 9, 11), (5, 0, 12), (5, 1, 10)]
        );
        t.upsert(3, 13, a([7, 7, 0]));
        t.remove(1);
        t.remove(1);
        assert_eq!(t.keys(), vec![(5, 0, 12), (5, 1, 10), (7, 7, 13)]);
    }

    #[test]
    fn build_equals_inserting_each() {
        let items = [
            (0, 7, a([5, 1, 0])),
            (2, 8, a([3, 9, 1])),
            (3, 9, a([5, 0, 4])),
            (4, 3, a([5, 0, 4])),
        ];
        let built = FitTree::build(5, items);
        let mut ins = FitTree::new(5);
        for (slot, node, own) in items {
            ins.upsert(slot, node, own);
        }
        assert_eq!(built.keys(), ins.keys());
        assert_eq!(built.root, ins.root);
        for slot in 0..5 {
            assert_eq!(
                built.entries[slot].max, ins.entries[slot].max,
                "slot {slot}"
            );
            assert_eq!(
                built.entries[slot].left, ins.entries[slot].left,
                "slot {slot}"
            );
            assert_eq!(
                built.entries[slot].right, ins.entries[slot].right,
                "slot {slot}"
            );
        }
    }

    #[test]
    fn searches_skip_entries_without_cpu() {
        let mut t = FitTree::new(6);
        for slot in 0..5 {
            t.upsert(slot, slot, a([10 + slot as u64, 0, 0])); // memory left, no cpu
        }
        t.upsert(5, 5, a([100, 4, 1]));
        let all = &mut |_| true;
        assert_eq!(
            t.first_from(&(1, 0, 0), &a([1, 1, 0]), all),
            Some((100, 4, 5))
        );
        assert_eq!(
            t.first_from(&(1, 0, 0), &a([1, 0, 0]), all),
            Some((10, 0, 0))
        );
        assert_eq!(t.first_from(&(1, 0, 0), &a([1, 0, 2]), all), None);
        assert_eq!(t.last(&a([1, 0, 0]), all), Some((100, 4, 5)));
        assert_eq!(t.last(&a([1, 0, 0]), &mut |n| n != 5), Some((14, 0, 4)));
        assert_eq!(t.last(&a([15, 0, 0]), &mut |n| n != 5), None);
    }

    #[test]
    fn updates_keep_maxima_equal_to_a_rebuild() {
        // Insertions and removals recompute an ancestor's maxima only while they can
        // change; the result must equal recomputing every subtree from scratch.
        let mut x = 0x5EED_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let n = 41;
        let mut t = FitTree::new(n);
        for _ in 0..3000 {
            let slot = (next() % n as u64) as usize;
            if next() % 5 == 0 {
                t.remove(slot);
            } else {
                let own = std::array::from_fn(|_| next() % 16);
                t.upsert(slot, slot, own);
            }
        }
        let mut rebuilt = t.clone();
        rebuilt.pull_all(rebuilt.root);
        for slot in 0..n {
            if t.entries[slot].linked {
                assert_eq!(
                    t.entries[slot].max, rebuilt.entries[slot].max,
                    "slot {slot}"
                );
            }
        }
        let keys = t.keys();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }
}
