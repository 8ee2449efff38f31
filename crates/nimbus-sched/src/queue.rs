//! Queue stage: the order pending requests are considered in (fcfs, sjf, priority with aging).

use std::cmp::{Ordering, Reverse};

use crate::{QueuePolicy, Request, SchedulerConfig};

/// `priority` plus one per `aging_per_priority_ms` waited since `queued_at_ms`
/// (no aging when that is 0). Never overflows.
pub fn effective_priority(req: &Request, aging_per_priority_ms: u64, now_ms: u64) -> i64 {
    let waited = now_ms.saturating_sub(req.queued_at_ms);
    let bonus = waited.checked_div(aging_per_priority_ms).unwrap_or(0);
    i64::from(req.priority).saturating_add(i64::try_from(bonus).unwrap_or(i64::MAX))
}

/// `Less` when `a` goes before `b` under `cfg.queue`. Every policy ends with `queue_seq`
/// then `id` as tie-breakers, so the order is total and independent of input order.
///
/// - fcfs: lower `queue_seq` first.
/// - sjf: shorter `expected_runtime_secs` first, unknown runtimes last.
/// - priority: higher [`effective_priority`] first.
pub fn compare(cfg: &SchedulerConfig, now_ms: u64, a: &Request, b: &Request) -> Ordering {
    let first = match cfg.queue {
        QueuePolicy::Fcfs => Ordering::Equal,
        QueuePolicy::Sjf => {
            let key = |r: &Request| (r.expected_runtime_secs.is_none(), r.expected_runtime_secs);
            key(a).cmp(&key(b))
        }
        QueuePolicy::Priority => {
            let key =
                |r: &Request| Reverse(effective_priority(r, cfg.aging_per_priority_ms, now_ms));
            key(a).cmp(&key(b))
        }
    };
    first
        .then(a.queue_seq.cmp(&b.queue_seq))
        .then_with(|| a.id.cmp(&b.id))
}

/// Sorts `pending` into the order `cfg.queue` considers them at `now_ms`.
pub fn order_queue(pending: &mut [Request], cfg: &SchedulerConfig, now_ms: u64) {
    match cfg.queue {
        QueuePolicy::Priority => {
            // Compute each effective priority once rather than per comparison.
            pending.sort_by_cached_key(|r| {
                (
                    Reverse(effective_priority(r, cfg.aging_per_priority_ms, now_ms)),
                    r.queue_seq,
                    r.id.clone(),
                )
            });
        }
        _ => pending.sort_by(|a, b| compare(cfg, now_ms, a, b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Resources;

    fn r(id: &str, seq: u64, prio: i32, runtime: Option<u64>, queued_at_ms: u64) -> Request {
        Request {
            priority: prio,
            expected_runtime_secs: runtime,
            queue_seq: seq,
            queued_at_ms,
            ..Request::new(id, Resources::ZERO, "")
        }
    }

    fn ids(queue: QueuePolicy, aging: u64, now_ms: u64, mut reqs: Vec<Request>) -> Vec<String> {
        let cfg = SchedulerConfig {
            queue,
            aging_per_priority_ms: aging,
            ..SchedulerConfig::default()
        };
        order_queue(&mut reqs, &cfg, now_ms);
        reqs.into_iter().map(|r| r.id).collect()
    }

    #[test]
    fn ordering_table() {
        let reqs = || {
            vec![
                r("c", 3, 0, Some(10), 0),
                r("a", 1, 5, None, 0),
                r("d", 4, 5, Some(1), 0),
                r("b", 2, 9, Some(10), 0),
            ]
        };
        let cases = [
            (QueuePolicy::Fcfs, vec!["a", "b", "c", "d"]),
            // runtime 1, then 10 (ties by seq: b before c), then unknown
            (QueuePolicy::Sjf, vec!["d", "b", "c", "a"]),
            // priority 9, then 5 (ties by seq: a before d), then 0
            (QueuePolicy::Priority, vec!["b", "a", "d", "c"]),
        ];
        for (policy, want) in cases {
            assert_eq!(ids(policy, 60_000, 0, reqs()), want, "{policy}");
        }
    }

    #[test]
    fn aging_lifts_an_old_low_priority_request() {
        // "old" waited 10 minutes at priority 0; "new" just arrived at priority 5.
        let reqs = || vec![r("new", 2, 5, None, 600_000), r("old", 1, 0, None, 0)];
        let now = 600_000;
        // +1 per minute: old reaches 10 > 5.
        assert_eq!(
            ids(QueuePolicy::Priority, 60_000, now, reqs()),
            ["old", "new"]
        );
        // +1 per 5 minutes: old reaches 2 < 5.
        assert_eq!(
            ids(QueuePolicy::Priority, 300_000, now, reqs()),
            ["new", "old"]
        );
        // Aging disabled.
        assert_eq!(ids(QueuePolicy::Priority, 0, now, reqs()), ["new", "old"]);
        // Exactly equal effective priority (5 = 0 + 5 minutes): arrival order decides.
        assert_eq!(
            ids(QueuePolicy::Priority, 120_000, now, reqs()),
            ["old", "new"]
        );
    }

    #[test]
    fn effective_priority_saturates() {
        let old = r("x", 0, i32::MAX, None, 0);
        assert_eq!(effective_priority(&old, 1, u64::MAX), i64::MAX);
        let future = r("x", 0, -3, None, 1_000);
        assert_eq!(effective_priority(&future, 1, 0), -3);
    }

    #[test]
    fn ties_fall_back_to_seq_then_id() {
        let reqs = vec![
            r("z", 1, 0, None, 0),
            r("y", 1, 0, None, 0),
            r("x", 0, 0, None, 0),
        ];
        for policy in QueuePolicy::ALL {
            assert_eq!(
                ids(policy, 60_000, 0, reqs.clone()),
                ["x", "y", "z"],
                "{policy}"
            );
        }
    }
}
