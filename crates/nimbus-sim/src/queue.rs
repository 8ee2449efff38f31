//! The pending queue of one simulation, grouped so a scheduling pass costs
//! O((placed + groups) log) instead of O(queue).
//!
//! Requests are grouped by *class*: same resources (and, under the `priority` policy, the
//! same base priority). Within a class, nimbus-sched's queue order
//! ([`nimbus_sched::queue::compare`]) never changes over time: fcfs and priority order by
//! arrival (`queue_seq`, and aging preserves that order between equal base priorities),
//! sjf by declared runtime then arrival. So a pass only needs each class's head, merged by
//! `compare` at the pass's time; and once a head fails to place, every later member of its
//! class fails too (same resources, the pass only allocates), exactly as in
//! [`nimbus_sched::schedule`], which walks every request. A test checks the two agree.

use std::collections::BTreeMap;

use nimbus_sched::{QueuePolicy, Resources};

/// `(memory, cpu, disk, base priority or 0)`.
pub(crate) type ClassKey = (u64, u64, u64, i32);
/// Order within a class: `(runtime unknown, runtime, seq)` under sjf, `(false, 0, seq)` otherwise.
pub(crate) type OrderKey = (bool, u64, u64);

/// Pending jobs by class, each class in nimbus-sched's order.
#[derive(Debug, Default)]
pub(crate) struct PendingQueue {
    policy: QueuePolicy,
    classes: BTreeMap<ClassKey, BTreeMap<OrderKey, u32>>,
    len: usize,
}

impl PendingQueue {
    pub(crate) fn new(policy: QueuePolicy) -> PendingQueue {
        PendingQueue {
            policy,
            classes: BTreeMap::new(),
            len: 0,
        }
    }

    /// The class and in-class order of a request.
    pub(crate) fn keys(
        &self,
        res: Resources,
        priority: i32,
        declared: Option<u64>,
        seq: u64,
    ) -> (ClassKey, OrderKey) {
        let prio = if self.policy == QueuePolicy::Priority {
            priority
        } else {
            0
        };
        let order = match self.policy {
            QueuePolicy::Sjf => (declared.is_none(), declared.unwrap_or(0), seq),
            _ => (false, 0, seq),
        };
        ((res.memory_mib, res.cpu_millis, res.disk_mib, prio), order)
    }

    pub(crate) fn insert(&mut self, class: ClassKey, order: OrderKey, job: u32) {
        if self
            .classes
            .entry(class)
            .or_default()
            .insert(order, job)
            .is_none()
        {
            self.len += 1;
        }
    }

    /// Removes an entry; false when it was not there.
    pub(crate) fn remove(&mut self, class: &ClassKey, order: &OrderKey) -> bool {
        let Some(c) = self.classes.get_mut(class) else {
            return false;
        };
        let found = c.remove(order).is_some();
        if found {
            self.len -= 1;
            if c.is_empty() {
                self.classes.remove(class);
            }
        }
        found
    }

    /// The first entry of `class`.
    pub(crate) fn head(&self, class: &ClassKey) -> Option<(OrderKey, u32)> {
        self.classes
            .get(class)
            .and_then(|c| c.first_key_value())
            .map(|(o, j)| (*o, *j))
    }

    /// Each class's first entry.
    pub(crate) fn heads(&self) -> impl Iterator<Item = (ClassKey, OrderKey, u32)> + '_ {
        self.classes
            .iter()
            .filter_map(|(k, c)| c.first_key_value().map(|(o, j)| (*k, *o, *j)))
    }

    /// The distinct resource shapes waiting, minimal ones only (a shape that is at least
    /// another in every dimension fits only where that one fits).
    pub(crate) fn shapes(&self) -> Vec<Resources> {
        let mut all: Vec<(u64, u64, u64)> = self.classes.keys().map(|k| (k.0, k.1, k.2)).collect();
        all.dedup();
        let mut out: Vec<Resources> = Vec::new();
        for (m, c, d) in all {
            if !out
                .iter()
                .any(|o| o.memory_mib <= m && o.cpu_millis <= c && o.disk_mib <= d)
            {
                out.push(Resources::new(c, m, d));
            }
        }
        out
    }

    /// Every queued job (class order, then in-class order).
    pub(crate) fn jobs(&self) -> impl Iterator<Item = u32> + '_ {
        self.classes.values().flat_map(|c| c.values().copied())
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_heads() {
        let mut q = PendingQueue::new(QueuePolicy::Sjf);
        let small = Resources::new(1000, 1024, 0);
        let big = Resources::new(4000, 8192, 0);
        for (job, res, rt, seq) in [
            (0, small, Some(50), 0),
            (1, small, Some(10), 1),
            (2, big, None, 2),
            (3, small, None, 3),
        ] {
            let (c, o) = q.keys(res, 0, rt, seq);
            q.insert(c, o, job);
        }
        assert_eq!(q.len(), 4);
        let heads: Vec<u32> = q.heads().map(|h| h.2).collect();
        assert_eq!(heads, [1, 2]);
        let (c, o) = q.keys(small, 0, Some(10), 1);
        assert!(q.remove(&c, &o));
        assert!(!q.remove(&c, &o));
        assert_eq!(q.head(&c).map(|h| h.1), Some(0));
        assert_eq!(q.jobs().collect::<Vec<_>>(), [0, 3, 2]);
    }
}
