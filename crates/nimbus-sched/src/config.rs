//! Policy names (`first-fit`, `fcfs`, ...) and the `SchedulerConfig` that selects them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a node is chosen among those a request fits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementPolicy {
    /// The first node in node order that fits.
    #[default]
    FirstFit,
    /// The fitting node with the least free memory (then cpu): packs nodes full.
    BestFit,
    /// The fitting node with the most free memory (then cpu): spreads load.
    WorstFit,
}

/// The order in which pending requests are considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueuePolicy {
    /// First come, first served: by `queue_seq`.
    #[default]
    Fcfs,
    /// Shortest job first: by `expected_runtime_secs`, unknown last.
    Sjf,
    /// Highest effective priority first, with aging.
    Priority,
}

/// A policy name that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsePolicyError {
    /// What kind of policy was being parsed (`placement` or `queue`).
    pub kind: &'static str,
    /// The rejected input.
    pub input: String,
    /// The accepted names.
    pub expected: &'static [&'static str],
}

impl fmt::Display for ParsePolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} policy {:?}: use one of {}",
            self.kind,
            self.input,
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for ParsePolicyError {}

impl PlacementPolicy {
    /// Every policy, in a fixed order.
    pub const ALL: [PlacementPolicy; 3] = [
        PlacementPolicy::FirstFit,
        PlacementPolicy::BestFit,
        PlacementPolicy::WorstFit,
    ];
    const NAMES: &'static [&'static str] = &["first-fit", "best-fit", "worst-fit"];

    /// The policy's name: `first-fit`, `best-fit` or `worst-fit`.
    pub fn as_str(self) -> &'static str {
        match self {
            PlacementPolicy::FirstFit => "first-fit",
            PlacementPolicy::BestFit => "best-fit",
            PlacementPolicy::WorstFit => "worst-fit",
        }
    }
}

impl fmt::Display for PlacementPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PlacementPolicy {
    type Err = ParsePolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PlacementPolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ParsePolicyError {
                kind: "placement",
                input: s.to_string(),
                expected: PlacementPolicy::NAMES,
            })
    }
}

impl QueuePolicy {
    /// Every policy, in a fixed order.
    pub const ALL: [QueuePolicy; 3] = [QueuePolicy::Fcfs, QueuePolicy::Sjf, QueuePolicy::Priority];
    const NAMES: &'static [&'static str] = &["fcfs", "sjf", "priority"];

    /// The policy's name: `fcfs`, `sjf` or `priority`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueuePolicy::Fcfs => "fcfs",
            QueuePolicy::Sjf => "sjf",
            QueuePolicy::Priority => "priority",
        }
    }
}

impl fmt::Display for QueuePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueuePolicy {
    type Err = ParsePolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        QueuePolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ParsePolicyError {
                kind: "queue",
                input: s.to_string(),
                expected: QueuePolicy::NAMES,
            })
    }
}

/// Which policies one scheduling pass uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    pub placement: PlacementPolicy,
    pub queue: QueuePolicy,
    /// Under the `priority` policy, a request gains +1 effective priority per this many ms
    /// waited, so nothing starves. 0 disables aging. Default 60 000 (one per minute).
    pub aging_per_priority_ms: u64,
    /// When the head of the queue does not fit, later requests may still be placed (true,
    /// the default); false is strict head-of-line blocking.
    pub backfill: bool,
}

impl SchedulerConfig {
    /// The default aging rate: +1 priority per minute waited.
    pub const DEFAULT_AGING_PER_PRIORITY_MS: u64 = 60_000;
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            placement: PlacementPolicy::default(),
            queue: QueuePolicy::default(),
            aging_per_priority_ms: Self::DEFAULT_AGING_PER_PRIORITY_MS,
            backfill: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in PlacementPolicy::ALL {
            assert_eq!(p.to_string().parse::<PlacementPolicy>(), Ok(p));
        }
        for q in QueuePolicy::ALL {
            assert_eq!(q.to_string().parse::<QueuePolicy>(), Ok(q));
        }
        assert_eq!(
            "best-fit".parse::<PlacementPolicy>(),
            Ok(PlacementPolicy::BestFit)
        );
        assert_eq!("sjf".parse::<QueuePolicy>(), Ok(QueuePolicy::Sjf));
    }

    #[test]
    fn unknown_names_list_the_choices() {
        let err = "bestfit".parse::<PlacementPolicy>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown placement policy \"bestfit\": use one of first-fit, best-fit, worst-fit"
        );
        let err = "lifo".parse::<QueuePolicy>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown queue policy \"lifo\": use one of fcfs, sjf, priority"
        );
    }

    #[test]
    fn defaults() {
        let cfg = SchedulerConfig::default();
        assert_eq!(cfg.placement, PlacementPolicy::FirstFit);
        assert_eq!(cfg.queue, QueuePolicy::Fcfs);
        assert_eq!(cfg.aging_per_priority_ms, 60_000);
        assert!(cfg.backfill);
    }
}
