//! Per-policy results: job statistics (waiting, execution, turnaround, slowdown),
//! utilization samples over time, stranded capacity, energy, failures; and the
//! [`SimResults`] of a whole run that the CSV, JSON and HTML outputs are made from.

use serde::{Deserialize, Serialize};

/// Summary of one measure over the measured jobs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Stats {
    /// Statistics of `values`, which it sorts. Percentiles are nearest-rank.
    pub fn of(values: &mut [f64]) -> Stats {
        if values.is_empty() {
            return Stats::default();
        }
        values.sort_by(f64::total_cmp);
        let sum: f64 = values.iter().sum();
        Stats {
            count: values.len() as u64,
            mean: sum / values.len() as f64,
            p50: percentile(values, 0.50),
            p95: percentile(values, 0.95),
            p99: percentile(values, 0.99),
            max: values[values.len() - 1],
        }
    }
}

/// Nearest-rank percentile of sorted `values` (`q` in 0..=1); 0 when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// 101 quantiles (0%, 1%, ..., 100%) of sorted `values`, for CDF charts.
pub fn quantiles(sorted: &[f64]) -> Vec<f64> {
    if sorted.is_empty() {
        return Vec::new();
    }
    (0..=100)
        .map(|p| percentile(sorted, p as f64 / 100.0))
        .collect()
}

/// Waiting and turnaround of the jobs of one priority.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriorityStats {
    pub priority: i32,
    pub waiting: Stats,
    pub turnaround: Stats,
}

/// The state of the cluster at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub t_s: f64,
    /// Busy cores / installed cores.
    pub cpu_busy: f64,
    /// Reserved cpu / the scheduler's cpu capacity (includes any overcommit).
    pub cpu_reserved: f64,
    /// Reserved memory / installed memory.
    pub memory: f64,
    pub queued: u64,
    pub running: u64,
    pub hosts_up: u64,
    /// Free cpu on nodes where no job shape of the workload fits, / scheduler cpu capacity.
    pub stranded_cpu: f64,
    /// Free memory on such nodes / installed memory.
    pub stranded_memory: f64,
    pub power_w: f64,
}

/// Everything measured for one policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyResult {
    pub policy: String,
    pub placement: String,
    pub queue: String,
    pub execution: String,
    pub backfill: bool,
    /// Jobs in the workload.
    pub jobs: u64,
    /// Jobs that finished.
    pub completed: u64,
    /// Finished jobs that arrived after the warm-up: the population of the statistics.
    pub measured: u64,
    /// Jobs no host could ever hold (larger than every host).
    pub rejected_too_large: u64,
    /// Jobs that waited longer than `max_wait_s` and left.
    pub rejected_timeout: u64,
    /// Still queued when the simulation stopped (horizon).
    pub unfinished_queued: u64,
    /// Still running when the simulation stopped.
    pub unfinished_running: u64,
    /// Arrival to (last) start.
    pub waiting: Stats,
    /// (Last) start to finish; longer than the job's duration under time sharing.
    pub execution_time: Stats,
    /// Arrival to finish: waiting + execution.
    pub turnaround: Stats,
    /// Turnaround / max(duration, slowdown floor).
    pub slowdown: Stats,
    pub by_priority: Vec<PriorityStats>,
    pub cpu_busy_mean: f64,
    pub cpu_reserved_mean: f64,
    pub memory_mean: f64,
    pub stranded_cpu_mean: f64,
    pub stranded_memory_mean: f64,
    pub energy_kwh: f64,
    pub mean_power_w: f64,
    pub host_failures: u64,
    /// Running jobs stopped by a host failure.
    pub interrupted: u64,
    /// Interrupted jobs that were queued again and later finished.
    pub recovered: u64,
    /// Interrupted jobs that were lost (`on_failure = "lose"`).
    pub lost: u64,
    /// Events processed (arrivals, completions, slices, failures, repairs, timeouts).
    pub events: u64,
    /// Scheduling passes (each the equivalent of one `nimbus_sched::schedule` call).
    pub passes: u64,
    /// Simulated time at the end.
    pub end_s: f64,
    /// 0%..100% quantiles of waiting time.
    pub waiting_quantiles: Vec<f64>,
    /// 0%..100% quantiles of turnaround time.
    pub turnaround_quantiles: Vec<f64>,
    pub samples: Vec<Sample>,
    /// Disagreements with a full `nimbus_sched::schedule` pass (verification mode only).
    #[serde(skip)]
    pub schedule_mismatches: Vec<String>,
    /// Every placement `(job index, node)` in order (`RunOptions::record_placements`).
    #[serde(skip)]
    pub placements: Vec<(u32, String)>,
}

/// The results of one `sim run`: every policy over the same workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimResults {
    pub scenario: String,
    pub seed: u64,
    pub workload: String,
    pub hosts: u64,
    pub jobs: u64,
    pub horizon_s: Option<f64>,
    pub warmup_s: f64,
    pub policies: Vec<PolicyResult>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_percentiles() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = Stats::of(&mut v);
        assert_eq!(s.count, 100);
        assert_eq!(s.mean, 50.5);
        assert_eq!((s.p50, s.p95, s.p99, s.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(Stats::of(&mut []), Stats::default());
        let q = quantiles(&v);
        assert_eq!((q.len(), q[0], q[100]), (101, 1.0, 100.0));
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }
}
