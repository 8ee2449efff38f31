//! `nimbus sim`: a discrete-event datacenter simulator that replays workloads (a trace or
//! a generator) on simulated hosts, with every placement and queueing decision made by
//! `nimbus-sched`, the scheduler that places real instances.
//!
//! Policies (placement x queue x cpu execution model) are compared side by side on the
//! same workload and the same host failures; results go to CSV, JSON and a self-contained
//! HTML report. The same scenario and seed always give byte-identical outputs. The user
//! guide is `docs/simulator.md`.
//!
//! # Layout
//! - [`cli`]: the `sim run` / `sim report` entry points ([`run_cli`], [`report_cli`]) with
//!   clap-free [`SimArgs`] and [`ReportArgs`]; [`cli::load`] and [`cli::run`] below them.
//! - [`scenario`]: the TOML scenario file, validated with file/line/column errors.
//! - [`units`]: memory and cpu quantities in scenarios (`64Gi`, `500m`) and their limits.
//! - [`model`]: the validated inputs: [`Sim`], hosts, jobs, [`PolicySpec`], execution models.
//! - [`generate`]: synthetic workloads (Poisson / bursty arrivals, lognormal / Pareto /
//!   exponential durations, size and priority mixes, declared runtimes).
//! - [`trace`]: Azure public VM trace and Google cluster-data task-event readers.
//! - [`samples`]: the generator of the small sample traces shipped in `examples/sim/`.
//! - [`live`]: starting from the live cluster ([`ClusterSnapshot`]) and
//!   [`replay_placements`], the live scheduler's placements for the live/sim agreement test.
//! - [`engine`]: the discrete-event engine ([`engine::simulate`]): event queue, clock,
//!   space-shared / processor-sharing / round-robin execution, failures, metrics.
//! - `queue` (private): the pending queue, grouped so passes stay cheap and equal to
//!   `nimbus_sched::schedule`.
//! - [`rng`]: one seeded random stream per entity (arrivals, durations, each host...).
//! - [`metrics`]: per-policy results ([`PolicyResult`]) and statistics.
//! - [`output`], [`report`], [`svg`]: CSV / JSON files and the HTML report with inline SVG.
//! - [`error`]: [`SimError`], the error type of every fallible call.

pub mod cli;
pub mod engine;
pub mod error;
pub mod generate;
pub mod live;
pub mod metrics;
pub mod model;
pub mod output;
mod queue;
pub mod report;
pub mod rng;
pub mod samples;
pub mod scenario;
pub mod svg;
pub mod trace;
pub mod units;

pub use cli::{report_cli, run_cli, ReportArgs, SimArgs};
pub use error::SimError;
pub use live::{replay_placements, ClusterSnapshot, LiveInstance};
pub use metrics::{PolicyResult, SimResults};
pub use model::{PolicySpec, Sim};
pub use trace::TraceFormat;
