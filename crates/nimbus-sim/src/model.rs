//! The simulator's validated inputs: hosts, jobs, policies and run settings.
//!
//! A [`Sim`] is what a scenario file (plus an optional trace or live-cluster snapshot)
//! turns into; [`crate::engine::simulate`] runs one [`PolicySpec`] over it.

use nimbus_sched::{NodeInfo, Resources, SchedulerConfig};
use serde::{Deserialize, Serialize};

/// Linear power model: `idle_w + (max_w - idle_w) * cpu utilization`; a failed host draws 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PowerModel {
    pub idle_w: f64,
    pub max_w: f64,
}

impl PowerModel {
    /// Watts drawn at cpu utilization `u` (0..=1).
    pub fn watts(&self, u: f64) -> f64 {
        self.idle_w + (self.max_w - self.idle_w) * u.clamp(0.0, 1.0)
    }
}

impl Default for PowerModel {
    fn default() -> Self {
        PowerModel {
            idle_w: 100.0,
            max_w: 250.0,
        }
    }
}

/// Exponential failures: time to failure has mean `mtbf_s`, time to repair mean `mttr_s`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FailureModel {
    pub mtbf_s: f64,
    pub mttr_s: f64,
}

/// One simulated host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSpec {
    /// The node as the scheduler sees it (name, physical capacity, labels, drivers).
    /// `allocated` is background load that never goes away (e.g. untracked live usage).
    pub node: NodeInfo,
    /// The host group it came from (scenario `[[hosts]]` name, or `live`).
    pub group: String,
    pub power: PowerModel,
    pub failures: Option<FailureModel>,
}

/// One job (a VM or task): when it arrives, how much work it is and what it asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Arrival time, seconds from the start of the simulation.
    pub arrival_s: f64,
    /// Execution time at full speed (seconds); `f64::INFINITY` for a job that never ends.
    pub duration_s: f64,
    /// What the job reserves on its host (cpu millicores, memory and disk MiB).
    pub resources: Resources,
    /// Millicores the job keeps busy when it runs (time-shared model); usually equal to
    /// `resources.cpu_millis`, less for a VM that idles (a trace's average cpu).
    pub cpu_demand_millis: u64,
    pub priority: i32,
    /// The runtime the submitter declared (used by `sjf`), whole seconds.
    pub declared_runtime_secs: Option<u64>,
    /// Already running on this host at time 0 (a live-cluster snapshot); never queued.
    pub initial_host: Option<u32>,
}

/// How cpu is shared among the jobs of one host.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "kebab-case")]
pub enum Execution {
    /// A job owns the cores it reserved and runs at full speed; jobs that do not fit wait
    /// in the scheduler's queue (fcfs, sjf, priority decide who goes first).
    SpaceShared,
    /// Cores are shared. The scheduler sees `cpu_overcommit` times the physical cores, so
    /// a host may hold more cpu demand than it has cores. With `quantum_s` 0 the host is an
    /// ideal processor-sharing server (every job runs at `min(1, cores / demand)`); with a
    /// positive quantum jobs take turns round-robin, each running up to one quantum before
    /// going to the back of the host's run queue, whenever cores are oversubscribed.
    TimeShared { quantum_s: f64, cpu_overcommit: f64 },
}

impl Execution {
    /// Short name used in policy names and outputs: `space-shared`, `ps`, `rr-100ms`.
    pub fn label(&self) -> String {
        match *self {
            Execution::SpaceShared => "space-shared".into(),
            Execution::TimeShared { quantum_s, .. } if quantum_s <= 0.0 => "ps".into(),
            Execution::TimeShared { quantum_s, .. }
                if quantum_s >= 1.0 && quantum_s.fract() == 0.0 =>
            {
                format!("rr-{}s", fmt_num(quantum_s))
            }
            Execution::TimeShared { quantum_s, .. } => {
                format!("rr-{}ms", fmt_num(quantum_s * 1000.0))
            }
        }
    }

    /// The scheduler's cpu capacity for a host with `cpu_millis` physical millicores.
    pub fn sched_cpu(&self, cpu_millis: u64) -> u64 {
        match *self {
            Execution::SpaceShared => cpu_millis,
            Execution::TimeShared { cpu_overcommit, .. } => {
                let v = (cpu_millis as f64 * cpu_overcommit).round();
                if v >= u64::MAX as f64 {
                    u64::MAX
                } else {
                    v as u64
                }
            }
        }
    }
}

/// Formats a number without a trailing `.0`.
pub(crate) fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// One policy to compare: placement x queue (the scheduler config) x execution model.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySpec {
    /// Unique within the scenario, e.g. `best-fit/sjf` or `first-fit/fcfs/rr-100ms`.
    pub name: String,
    pub scheduler: SchedulerConfig,
    pub execution: Execution,
}

/// What happens to the jobs on a host that fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// They go back to the queue and start over (counted as recovered once they finish).
    #[default]
    Requeue,
    /// They are lost.
    Lose,
}

/// Everything one simulation needs, validated.
#[derive(Debug, Clone)]
pub struct Sim {
    pub name: String,
    pub seed: u64,
    pub hosts: Vec<HostSpec>,
    /// Sorted by arrival (stable: ties keep input order; initial jobs first).
    pub jobs: Vec<Job>,
    pub policies: Vec<PolicySpec>,
    pub settings: Settings,
    /// Where the workload came from, for the report (`generator`, a trace path, ...).
    pub workload_source: String,
}

/// Run settings shared by every policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Stop at this simulated time (seconds); `None`: when every job is done.
    pub horizon_s: Option<f64>,
    /// Jobs arriving before this time are simulated but not measured.
    pub warmup_s: f64,
    /// Time between utilization samples; `None`: about 400 samples over the run.
    pub sample_interval_s: Option<f64>,
    /// Slowdown is `turnaround / max(duration, slowdown_floor_s)` (bounded slowdown).
    pub slowdown_floor_s: f64,
    /// A job still queued after this long is rejected (abandons the queue).
    pub max_wait_s: Option<f64>,
    pub on_failure: OnFailure,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            horizon_s: None,
            warmup_s: 0.0,
            sample_interval_s: None,
            slowdown_floor_s: 1.0,
            max_wait_s: None,
            on_failure: OnFailure::Requeue,
        }
    }
}

impl Sim {
    /// Sorts jobs by arrival, initial (already running) jobs first; stable.
    pub fn sort_jobs(&mut self) {
        self.jobs.sort_by(|a, b| {
            (a.initial_host.is_none(), a.arrival_s)
                .partial_cmp(&(b.initial_host.is_none(), b.arrival_s))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    }
}
