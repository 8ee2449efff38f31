//! Scenario files (TOML): host groups, a workload (trace or generator), the policies to
//! compare, failures, horizon and seed. Parsing validates everything and reports the
//! file, line and column of the first problem. The format is documented in
//! `docs/simulator.md`; `examples/sim/*.toml` are complete examples.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use nimbus_sched::{NodeInfo, PlacementPolicy, QueuePolicy, Resources, SchedulerConfig};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use toml::Spanned;

use crate::error::{line_col, SimError};
use crate::generate::{Arrival, DeclaredRuntime, DurationDist, Generator, SizeClass};
use crate::model::{
    Execution, FailureModel, HostSpec, OnFailure, PolicySpec, PowerModel, Settings,
};
use crate::trace::{TraceFormat, TraceOptions};
use crate::units::{Cpu, Disk, Memory};

/// The most hosts a scenario may have in total.
pub const MAX_HOSTS: u64 = 1_000_000;
/// The most jobs a generator may produce.
pub const MAX_JOBS: u64 = 100_000_000;

/// A parsed, validated scenario file.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The file it was read from (relative trace paths resolve against its directory).
    pub path: PathBuf,
    pub name: String,
    pub seed: u64,
    /// Hosts, expanded from the groups, in group order (first-fit order).
    pub hosts: Vec<HostSpec>,
    pub policies: Vec<PolicySpec>,
    pub settings: Settings,
    pub workload: Workload,
    /// Power model of nodes taken from a live cluster (`[live]`).
    pub live_power: PowerModel,
}

/// Where the jobs come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    Generator(Generator),
    Trace {
        path: PathBuf,
        options: TraceOptions,
    },
    /// No `[workload]`: only a trace given on the command line or the live cluster's
    /// instances.
    None,
}

macro_rules! bounded_f64 {
    ($(#[$doc:meta])* $name:ident, $lo:expr, $lo_open:expr, $hi:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq)]
        struct $name(f64);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = f64::deserialize(d)?;
                let lo: f64 = $lo;
                let hi: f64 = $hi;
                let low_ok = if $lo_open { v > lo } else { v >= lo };
                if !v.is_finite() || !low_ok || v > hi {
                    let range = if $lo_open { format!("above {lo}") } else { format!("at least {lo}") };
                    return Err(de::Error::custom(format!(
                        "{v} is not a valid {}: give a number {range} and at most {hi}",
                        $what
                    )));
                }
                Ok($name(v))
            }
        }
    };
}

bounded_f64!(
    /// Seconds: 0 up to ~317 years.
    Secs, 0.0, false, 1e10, "time in seconds");
bounded_f64!(
    /// A positive amount (a rate, a mean, a weight that must be positive).
    Positive, 0.0, true, 1e12, "positive number");
bounded_f64!(
    /// A weight: 0 or more.
    Weight, 0.0, false, 1e12, "weight");
bounded_f64!(
    /// A fraction 0..=1.
    Fraction, 0.0, false, 1.0, "fraction (0 to 1)");
bounded_f64!(
    /// Watts.
    Watts, 0.0, false, 1e6, "power in watts");
bounded_f64!(
    /// Hours, positive.
    Hours, 0.0, true, 1e7, "time in hours");
bounded_f64!(
    /// A cpu overcommit ratio.
    Overcommit, 1.0, false, 1e6, "cpu overcommit ratio");
bounded_f64!(
    /// A lognormal sigma.
    Sigma, 0.0, false, 20.0, "sigma");

macro_rules! bounded_u64 {
    ($name:ident, $lo:expr, $hi:expr, $what:expr) => {
        #[derive(Debug, Clone, Copy, PartialEq)]
        struct $name(u64);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = i64::deserialize(d)?;
                let (lo, hi): (i64, i64) = ($lo, $hi);
                if v < lo || v > hi {
                    return Err(de::Error::custom(format!(
                        "{v} is not a valid {}: give {lo} to {hi}",
                        $what
                    )));
                }
                Ok($name(v as u64))
            }
        }
    };
}

bounded_u64!(HostCount, 1, MAX_HOSTS as i64, "host count");
bounded_u64!(JobCount, 1, MAX_JOBS as i64, "job count");

/// A seed: any integer (negative ones are reinterpreted as u64).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seed(u64);

impl<'de> Deserialize<'de> for Seed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Seed(i64::deserialize(d)? as u64))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<String>,
    seed: Option<Seed>,
    horizon_s: Option<Spanned<Secs>>,
    warmup_s: Option<Secs>,
    sample_interval_s: Option<Spanned<Secs>>,
    slowdown_floor_s: Option<Secs>,
    max_wait_s: Option<Secs>,
    on_failure: Option<OnFailure>,
    #[serde(default)]
    hosts: Vec<Spanned<RawHosts>>,
    workload: Option<Spanned<RawWorkload>>,
    scheduler: Option<RawScheduler>,
    execution: Option<RawExecution>,
    #[serde(default)]
    policies: Vec<Spanned<RawPolicy>>,
    live: Option<RawLive>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHosts {
    name: Option<String>,
    count: HostCount,
    cpu: Spanned<Cpu>,
    memory: Spanned<Memory>,
    disk: Option<Disk>,
    idle_w: Option<Watts>,
    max_w: Option<Watts>,
    mtbf_h: Option<Hours>,
    mttr_h: Option<Hours>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    // Trace.
    trace: Option<String>,
    format: Option<TraceFormat>,
    time_scale: Option<Positive>,
    max_jobs: Option<JobCount>,
    trace_cpu: Option<Cpu>,
    trace_memory: Option<Memory>,
    // Generator.
    jobs: Option<JobCount>,
    arrival: Option<Spanned<RawArrival>>,
    duration: Option<Spanned<RawDuration>>,
    sizes: Option<Vec<Spanned<RawSize>>>,
    priorities: Option<Vec<Spanned<RawPriority>>>,
    // Both.
    declared_runtime: Option<DeclaredMode>,
    declared_runtime_sigma: Option<Sigma>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DeclaredMode {
    Exact,
    Noisy,
    None,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ArrivalProcess {
    Poisson,
    Bursty,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArrival {
    process: ArrivalProcess,
    rate_per_s: Positive,
    burst_rate_per_s: Option<Positive>,
    mean_burst_s: Option<Positive>,
    mean_calm_s: Option<Positive>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DistKind {
    Exponential,
    Lognormal,
    Pareto,
    Fixed,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDuration {
    dist: DistKind,
    mean_s: Option<Positive>,
    median_s: Option<Positive>,
    sigma: Option<Sigma>,
    scale_s: Option<Positive>,
    shape: Option<Positive>,
    value_s: Option<Secs>,
    max_s: Option<Positive>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSize {
    cpu: Cpu,
    memory: Memory,
    disk: Option<Disk>,
    weight: Option<Weight>,
    cpu_utilization: Option<Fraction>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPriority {
    priority: i32,
    weight: Weight,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheduler {
    backfill: Option<bool>,
    aging_per_priority_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ExecModel {
    SpaceShared,
    TimeShared,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExecution {
    model: Option<ExecModel>,
    quantum_ms: Option<Secs>,
    cpu_overcommit: Option<Overcommit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Option<String>,
    placement: PlacementPolicy,
    queue: QueuePolicy,
    execution: Option<ExecModel>,
    quantum_ms: Option<Secs>,
    cpu_overcommit: Option<Overcommit>,
    backfill: Option<bool>,
    aging_per_priority_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLive {
    idle_w: Option<Watts>,
    max_w: Option<Watts>,
}

/// The default cpu overcommit of the time-shared model.
pub const DEFAULT_OVERCOMMIT: f64 = 4.0;

struct Src<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Src<'_> {
    fn err(&self, span: Range<usize>, message: impl fmt::Display) -> SimError {
        let (line, column) = line_col(self.text, span.start);
        SimError::Parse {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.to_string(),
        }
    }
}

impl Scenario {
    /// Reads and validates the scenario at `path`.
    pub fn load(path: &Path) -> Result<Scenario, SimError> {
        let text = std::fs::read_to_string(path).map_err(|e| SimError::io("read", path, e))?;
        Scenario::parse(path, &text)
    }

    /// Validates scenario `text`; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Scenario, SimError> {
        let src = Src { path, text };
        let raw: RawScenario = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            src.err(span, e.message().trim_end())
        })?;
        let name = raw.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map_or_else(|| "scenario".into(), |s| s.to_string_lossy().into_owned())
        });
        let seed = raw.seed.map_or(1, |s| s.0);
        let hosts = hosts(&src, &raw.hosts)?;
        let policies = policies(&src, &raw)?;
        let settings = settings(&src, &raw)?;
        let workload = match &raw.workload {
            Some(w) => workload(&src, w, seed, &hosts)?,
            None => Workload::None,
        };
        let live = raw.live.unwrap_or_default();
        let live_power = PowerModel {
            idle_w: live.idle_w.map_or(PowerModel::default().idle_w, |w| w.0),
            max_w: live.max_w.map_or(PowerModel::default().max_w, |w| w.0),
        };
        if live_power.max_w < live_power.idle_w {
            return Err(src.err(0..0, "[live]: max_w is below idle_w"));
        }
        Ok(Scenario {
            path: path.to_path_buf(),
            name,
            seed,
            hosts,
            policies,
            settings,
            workload,
            live_power,
        })
    }
}

fn hosts(src: &Src<'_>, groups: &[Spanned<RawHosts>]) -> Result<Vec<HostSpec>, SimError> {
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    let mut total = 0u64;
    for (gi, g) in groups.iter().enumerate() {
        let span = g.span();
        let g = g.get_ref();
        let name = g.name.clone().unwrap_or_else(|| format!("hosts{gi}"));
        if name.is_empty() || name.contains(['/', ',', '"', '<', '>', '&']) {
            return Err(src.err(
                span,
                format!("host group name {name:?} is empty or has one of / , \" < > &"),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(src.err(span, format!("host group {name:?} appears twice")));
        }
        if g.cpu.get_ref().0 == 0 {
            return Err(src.err(g.cpu.span(), "a host needs at least some cpu"));
        }
        if g.memory.get_ref().0 == 0 {
            return Err(src.err(g.memory.span(), "a host needs at least 1 MiB memory"));
        }
        total += g.count.0;
        if total > MAX_HOSTS {
            return Err(src.err(span, format!("more than {MAX_HOSTS} hosts in total")));
        }
        let power = PowerModel {
            idle_w: g.idle_w.map_or(PowerModel::default().idle_w, |w| w.0),
            max_w: g.max_w.map_or(PowerModel::default().max_w, |w| w.0),
        };
        if power.max_w < power.idle_w {
            return Err(src.err(
                span,
                format!(
                    "host group {name:?}: max_w {} is below idle_w {}",
                    power.max_w, power.idle_w
                ),
            ));
        }
        let failures = match (g.mtbf_h, g.mttr_h) {
            (Some(b), r) => Some(FailureModel {
                mtbf_s: b.0 * 3600.0,
                mttr_s: r.map_or(3600.0, |r| r.0 * 3600.0),
            }),
            (None, Some(_)) => {
                return Err(src.err(span, format!("host group {name:?}: mttr_h without mtbf_h")))
            }
            (None, None) => None,
        };
        let mut labels = g.labels.clone();
        labels.insert("group".into(), name.clone());
        let capacity = Resources::new(
            g.cpu.get_ref().0,
            g.memory.get_ref().0,
            g.disk.map_or(0, |d| d.0),
        );
        let width = g.count.0.saturating_sub(1).to_string().len().max(3);
        for i in 0..g.count.0 {
            let mut node = NodeInfo::new(format!("{name}-{i:0width$}"), capacity, &["sim"]);
            node.labels = labels.clone();
            out.push(HostSpec {
                node,
                group: name.clone(),
                power,
                failures,
            });
        }
    }
    Ok(out)
}

fn policies(src: &Src<'_>, raw: &RawScenario) -> Result<Vec<PolicySpec>, SimError> {
    if raw.policies.is_empty() {
        return Err(src.err(
            0..0,
            "no policies to compare: add [[policies]] tables with placement and queue",
        ));
    }
    let sched = raw.scheduler.as_ref();
    let exec = raw.execution.as_ref();
    let backfill = sched.and_then(|s| s.backfill).unwrap_or(true);
    let aging = sched
        .and_then(|s| s.aging_per_priority_ms)
        .unwrap_or(SchedulerConfig::DEFAULT_AGING_PER_PRIORITY_MS);
    let model = exec.and_then(|e| e.model).unwrap_or(ExecModel::SpaceShared);
    let quantum_ms = exec.and_then(|e| e.quantum_ms).map_or(0.0, |q| q.0);
    let overcommit = exec
        .and_then(|e| e.cpu_overcommit)
        .map_or(DEFAULT_OVERCOMMIT, |o| o.0);
    let mut out: Vec<PolicySpec> = Vec::new();
    for p in &raw.policies {
        let span = p.span();
        let p = p.get_ref();
        let model = p.execution.unwrap_or(model);
        let execution = match model {
            ExecModel::SpaceShared => {
                if p.quantum_ms.is_some() || p.cpu_overcommit.is_some() {
                    return Err(src.err(
                        span,
                        "quantum_ms and cpu_overcommit apply to execution = \"time-shared\" only",
                    ));
                }
                Execution::SpaceShared
            }
            ExecModel::TimeShared => Execution::TimeShared {
                quantum_s: p.quantum_ms.map_or(quantum_ms, |q| q.0) / 1000.0,
                cpu_overcommit: p.cpu_overcommit.map_or(overcommit, |o| o.0),
            },
        };
        let scheduler = SchedulerConfig {
            placement: p.placement,
            queue: p.queue,
            aging_per_priority_ms: p.aging_per_priority_ms.unwrap_or(aging),
            backfill: p.backfill.unwrap_or(backfill),
        };
        let name = match &p.name {
            Some(n) => n.clone(),
            None => {
                let mut n = format!("{}/{}", p.placement, p.queue);
                if execution != Execution::SpaceShared {
                    n = format!("{n}/{}", execution.label());
                }
                n
            }
        };
        if name.is_empty() || name.contains([',', '"', '\n']) {
            return Err(src.err(
                span,
                format!("policy name {name:?} is empty or has a comma or quote"),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(src.err(
                span,
                format!("policy {name:?} appears twice (give it a distinct name)"),
            ));
        }
        out.push(PolicySpec {
            name,
            scheduler,
            execution,
        });
    }
    Ok(out)
}

fn settings(src: &Src<'_>, raw: &RawScenario) -> Result<Settings, SimError> {
    let horizon_s = raw.horizon_s.as_ref().map(|h| (h.span(), h.get_ref().0));
    if let Some((span, h)) = &horizon_s {
        if *h <= 0.0 {
            return Err(src.err(span.clone(), "horizon_s must be positive"));
        }
    }
    if let Some(i) = &raw.sample_interval_s {
        if i.get_ref().0 <= 0.0 {
            return Err(src.err(i.span(), "sample_interval_s must be positive"));
        }
    }
    Ok(Settings {
        horizon_s: horizon_s.map(|h| h.1),
        warmup_s: raw.warmup_s.map_or(0.0, |w| w.0),
        sample_interval_s: raw.sample_interval_s.as_ref().map(|s| s.get_ref().0),
        slowdown_floor_s: raw.slowdown_floor_s.map_or(1.0, |s| s.0),
        max_wait_s: raw.max_wait_s.map(|m| m.0),
        on_failure: raw.on_failure.unwrap_or_default(),
    })
}

fn declared(w: &RawWorkload) -> DeclaredRuntime {
    match w.declared_runtime.unwrap_or(DeclaredMode::Exact) {
        DeclaredMode::Exact => DeclaredRuntime::Exact,
        DeclaredMode::None => DeclaredRuntime::None,
        DeclaredMode::Noisy => DeclaredRuntime::Noisy {
            sigma: w.declared_runtime_sigma.map_or(0.5, |s| s.0),
        },
    }
}

fn workload(
    src: &Src<'_>,
    w: &Spanned<RawWorkload>,
    seed: u64,
    hosts: &[HostSpec],
) -> Result<Workload, SimError> {
    let span = w.span();
    let w = w.get_ref();
    let generator_keys = [
        ("jobs", w.jobs.is_some()),
        ("arrival", w.arrival.is_some()),
        ("duration", w.duration.is_some()),
        ("sizes", w.sizes.is_some()),
        ("priorities", w.priorities.is_some()),
    ];
    let given: Vec<&str> = generator_keys.iter().filter(|k| k.1).map(|k| k.0).collect();
    if let Some(trace) = &w.trace {
        if !given.is_empty() {
            return Err(src.err(
                span,
                format!(
                    "[workload] has a trace and generator keys ({}): give one or the other",
                    given.join(", ")
                ),
            ));
        }
        let dir = src.path.parent().unwrap_or(Path::new(""));
        let largest = hosts
            .iter()
            .map(|h| h.node.capacity)
            .fold(Resources::ZERO, |a, c| {
                Resources::new(
                    a.cpu_millis.max(c.cpu_millis),
                    a.memory_mib.max(c.memory_mib),
                    0,
                )
            });
        let defaults = TraceOptions::default();
        let options = TraceOptions {
            format: w.format,
            time_scale: w.time_scale.map_or(1.0, |t| t.0),
            max_jobs: w.max_jobs.map(|m| m.0),
            cpu_scale_millis: w.trace_cpu.map(|c| c.0).filter(|c| *c > 0).unwrap_or(
                if largest.cpu_millis > 0 {
                    largest.cpu_millis
                } else {
                    defaults.cpu_scale_millis
                },
            ),
            memory_scale_mib: w.trace_memory.map(|m| m.0).filter(|m| *m > 0).unwrap_or(
                if largest.memory_mib > 0 {
                    largest.memory_mib
                } else {
                    defaults.memory_scale_mib
                },
            ),
            declared: declared(w),
            seed,
        };
        return Ok(Workload::Trace {
            path: dir.join(trace),
            options,
        });
    }
    for (key, set) in [
        ("format", w.format.is_some()),
        ("time_scale", w.time_scale.is_some()),
        ("max_jobs", w.max_jobs.is_some()),
        ("trace_cpu", w.trace_cpu.is_some()),
        ("trace_memory", w.trace_memory.is_some()),
    ] {
        if set {
            return Err(src.err(
                span,
                format!("[workload] {key} applies to a trace only (no trace is given)"),
            ));
        }
    }
    let (Some(jobs), Some(arrival), Some(duration)) = (w.jobs, &w.arrival, &w.duration) else {
        return Err(src.err(span, "[workload] needs either trace = \"file.csv\" or a generator: jobs, arrival and duration"));
    };
    let a = arrival.get_ref();
    let arrival = match a.process {
        ArrivalProcess::Poisson => {
            if a.burst_rate_per_s.is_some() || a.mean_burst_s.is_some() || a.mean_calm_s.is_some() {
                return Err(src.err(arrival.span(), "burst_rate_per_s, mean_burst_s and mean_calm_s apply to process = \"bursty\" only"));
            }
            Arrival::Poisson {
                rate_per_s: a.rate_per_s.0,
            }
        }
        ArrivalProcess::Bursty => match (a.burst_rate_per_s, a.mean_burst_s, a.mean_calm_s) {
            (Some(b), Some(mb), Some(mc)) => Arrival::Bursty {
                rate_per_s: a.rate_per_s.0,
                burst_rate_per_s: b.0,
                mean_burst_s: mb.0,
                mean_calm_s: mc.0,
            },
            _ => {
                return Err(src.err(
                    arrival.span(),
                    "process = \"bursty\" needs burst_rate_per_s, mean_burst_s and mean_calm_s",
                ))
            }
        },
    };
    let d = duration.get_ref();
    let dspan = duration.span();
    let need = |v: Option<Positive>, key: &str| {
        v.map(|v| v.0).ok_or_else(|| {
            src.err(
                dspan.clone(),
                format!("dist = \"{}\" needs {key}", dist_name(d.dist)),
            )
        })
    };
    let allowed: &[&str] = match d.dist {
        DistKind::Exponential => &["mean_s"],
        DistKind::Lognormal => &["median_s", "mean_s", "sigma"],
        DistKind::Pareto => &["scale_s", "shape"],
        DistKind::Fixed => &["value_s"],
    };
    for (key, set) in [
        ("mean_s", d.mean_s.is_some()),
        ("median_s", d.median_s.is_some()),
        ("sigma", d.sigma.is_some()),
        ("scale_s", d.scale_s.is_some()),
        ("shape", d.shape.is_some()),
        ("value_s", d.value_s.is_some()),
    ] {
        if set && !allowed.contains(&key) {
            return Err(src.err(
                dspan.clone(),
                format!(
                    "{key} does not apply to dist = \"{}\" (it takes {})",
                    dist_name(d.dist),
                    allowed.join(", ")
                ),
            ));
        }
    }
    let dist = match d.dist {
        DistKind::Exponential => DurationDist::Exponential {
            mean_s: need(d.mean_s, "mean_s")?,
        },
        DistKind::Lognormal => {
            let sigma = d
                .sigma
                .map(|s| s.0)
                .ok_or_else(|| src.err(dspan.clone(), "dist = \"lognormal\" needs sigma"))?;
            let mu = match (d.median_s, d.mean_s) {
                (Some(m), None) => m.0.ln(),
                (None, Some(m)) => m.0.ln() - sigma * sigma / 2.0,
                _ => {
                    return Err(src.err(
                        dspan.clone(),
                        "dist = \"lognormal\" needs median_s or mean_s (one of them)",
                    ))
                }
            };
            DurationDist::LogNormal { mu, sigma }
        }
        DistKind::Pareto => DurationDist::Pareto {
            scale_s: need(d.scale_s, "scale_s")?,
            shape: need(d.shape, "shape")?,
        },
        DistKind::Fixed => DurationDist::Fixed {
            value_s: d
                .value_s
                .map(|v| v.0)
                .ok_or_else(|| src.err(dspan.clone(), "dist = \"fixed\" needs value_s"))?,
        },
    };
    let sizes = match &w.sizes {
        None => vec![SizeClass {
            resources: Resources::new(1000, 1024, 0),
            weight: 1.0,
            cpu_utilization: 1.0,
        }],
        Some(list) => {
            if list.is_empty() {
                return Err(src.err(span, "sizes is empty: give at least one { cpu, memory }"));
            }
            let mut out = Vec::new();
            for s in list {
                let r = s.get_ref();
                out.push(SizeClass {
                    resources: Resources::new(r.cpu.0, r.memory.0, r.disk.map_or(0, |d| d.0)),
                    weight: r.weight.map_or(1.0, |w| w.0),
                    cpu_utilization: r.cpu_utilization.map_or(1.0, |u| u.0),
                });
            }
            if out.iter().all(|s| s.weight == 0.0) {
                return Err(src.err(list[0].span(), "every size has weight 0"));
            }
            out
        }
    };
    let priorities = match &w.priorities {
        None => vec![(0, 1.0)],
        Some(list) if list.is_empty() => vec![(0, 1.0)],
        Some(list) => {
            let out: Vec<(i32, f64)> = list
                .iter()
                .map(|p| (p.get_ref().priority, p.get_ref().weight.0))
                .collect();
            if out.iter().all(|p| p.1 == 0.0) {
                return Err(src.err(list[0].span(), "every priority has weight 0"));
            }
            out
        }
    };
    Ok(Workload::Generator(Generator {
        jobs: jobs.0,
        arrival,
        duration: dist,
        max_duration_s: d.max_s.map(|m| m.0),
        sizes,
        priorities,
        declared: declared(w),
    }))
}

fn dist_name(d: DistKind) -> &'static str {
    match d {
        DistKind::Exponential => "exponential",
        DistKind::Lognormal => "lognormal",
        DistKind::Pareto => "pareto",
        DistKind::Fixed => "fixed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
seed = 7
horizon_s = 3600

[[hosts]]
name = "small"
count = 3
cpu = 8
memory = "32Gi"
idle_w = 50
max_w = 200
mtbf_h = 100

[workload]
jobs = 100
arrival = { process = "poisson", rate_per_s = 0.5 }
duration = { dist = "lognormal", median_s = 60, sigma = 1 }
sizes = [{ cpu = 1, memory = "2Gi", weight = 3 }, { cpu = "500m", memory = 512 }]
priorities = [{ priority = 0, weight = 1 }, { priority = 5, weight = 1 }]

[[policies]]
placement = "best-fit"
queue = "sjf"

[[policies]]
placement = "first-fit"
queue = "fcfs"
execution = "time-shared"
quantum_ms = 100
"#;

    fn parse(text: &str) -> Result<Scenario, SimError> {
        Scenario::parse(Path::new("s.toml"), text)
    }

    #[test]
    fn a_full_scenario() {
        let s = parse(GOOD).unwrap();
        assert_eq!(s.name, "t");
        assert_eq!(s.seed, 7);
        assert_eq!(s.hosts.len(), 3);
        assert_eq!(s.hosts[2].node.name, "small-002");
        assert_eq!(s.hosts[0].node.capacity, Resources::new(8000, 32768, 0));
        assert_eq!(s.hosts[0].failures.unwrap().mttr_s, 3600.0);
        assert_eq!(s.settings.horizon_s, Some(3600.0));
        let names: Vec<&str> = s.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["best-fit/sjf", "first-fit/fcfs/rr-100ms"]);
        assert_eq!(
            s.policies[1].execution,
            Execution::TimeShared {
                quantum_s: 0.1,
                cpu_overcommit: DEFAULT_OVERCOMMIT
            }
        );
        let Workload::Generator(g) = &s.workload else {
            panic!("not a generator");
        };
        assert_eq!(g.sizes[1].resources, Resources::new(500, 512, 0));
        assert_eq!(g.priorities, vec![(0, 1.0), (5, 1.0)]);
    }

    #[test]
    fn errors_point_at_the_value() {
        let cases = [
            ("cpu = 8\n", "cpu = 100000\n", "s.toml:9:7: cpu 100000 is absurd: at most 4096 cores are accepted"),
            ("memory = \"32Gi\"\n", "memory = \"900Ti\"\n", "s.toml:10:10: memory 900Ti is absurd: at most 64 TiB is accepted"),
            ("count = 3\n", "count = 0\n", "s.toml:8:9: 0 is not a valid host count: give 1 to 1000000"),
            ("queue = \"sjf\"", "queue = \"lifo\"", "s.toml:24:9: unknown variant `lifo`, expected one of `fcfs`, `sjf`, `priority`"),
            ("mtbf_h = 100\n", "mtbf_hours = 100\n", "s.toml:13:1: unknown field `mtbf_hours`, expected one of `name`, `count`, `cpu`, `memory`, `disk`, `idle_w`, `max_w`, `mtbf_h`, `mttr_h`, `labels`"),
            ("rate_per_s = 0.5", "rate_per_s = -2", "s.toml:17:47: -2 is not a valid positive number: give a number above 0 and at most 1000000000000"),
            ("max_w = 200", "max_w = 20", "s.toml:6:1: host group \"small\": max_w 20 is below idle_w 50"),
            ("median_s = 60, sigma = 1", "sigma = 1", "s.toml:18:12: dist = \"lognormal\" needs median_s or mean_s (one of them)"),
            ("seed = 7", "seed = \"x\"", "s.toml:3:8: invalid type: string \"x\", expected i64"),
        ];
        for (from, to, want) in cases {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "{from}");
            let err = parse(&text).unwrap_err();
            assert_eq!(err.to_string(), want, "{to}");
        }
    }

    #[test]
    fn workload_must_be_one_thing() {
        let text = GOOD.replacen("jobs = 100", "trace = \"x.csv\"\njobs = 100", 1);
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains(
                "has a trace and generator keys (jobs, arrival, duration, sizes, priorities)"
            ),
            "{err}"
        );
        let text = GOOD.replacen("jobs = 100\n", "", 1);
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("needs either trace"), "{err}");
    }

    #[test]
    fn policies_are_required_and_unique() {
        let cut = GOOD.find("[[policies]]").unwrap();
        let err = parse(&GOOD[..cut]).unwrap_err().to_string();
        assert!(err.starts_with("s.toml:1:1: no policies"), "{err}");
        let dup = format!("{GOOD}\n[[policies]]\nplacement = \"best-fit\"\nqueue = \"sjf\"\n");
        let err = parse(&dup).unwrap_err().to_string();
        assert!(err.contains("\"best-fit/sjf\" appears twice"), "{err}");
    }

    #[test]
    fn trace_workload_resolves_relative_to_the_scenario() {
        let text = GOOD
            .split("[workload]")
            .next()
            .unwrap()
            .to_string()
            + "[workload]\ntrace = \"vms.csv\"\nformat = \"azure\"\n\n[[policies]]\nplacement = \"best-fit\"\nqueue = \"fcfs\"\n";
        let s = Scenario::parse(Path::new("dir/s.toml"), &text).unwrap();
        let Workload::Trace { path, options } = &s.workload else {
            panic!("not a trace");
        };
        assert_eq!(path, Path::new("dir/vms.csv"));
        assert_eq!(options.format, Some(TraceFormat::Azure));
        assert_eq!(options.cpu_scale_millis, 8000);
    }
}
