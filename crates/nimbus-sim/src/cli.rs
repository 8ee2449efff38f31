//! Entry points for the `nimbus sim` command: clap-free argument structs and the
//! functions the binary's thin clap wrapper calls.
//!
//! ```text
//! nimbus sim run SCENARIO [--trace FILE] [--format azure|google] [--from-cluster]
//!                         [--out DIR] [--seed N] [--threads N] [--quiet]
//! nimbus sim report DIR [--open]
//! ```

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::engine::{simulate, RunOptions};
use crate::error::SimError;
use crate::generate::{generate, DeclaredRuntime};
use crate::live::ClusterSnapshot;
use crate::metrics::{PolicyResult, SimResults};
use crate::model::Sim;
use crate::output::{self, REPORT_FILE};
use crate::report;
use crate::scenario::{Scenario, Workload, MAX_JOBS};
use crate::svg::num;
use crate::trace::{load_trace, TraceFormat, TraceOptions};

/// Arguments of `nimbus sim run`.
#[derive(Debug, Clone)]
pub struct SimArgs {
    /// The scenario file (TOML).
    pub scenario: PathBuf,
    /// Replay this trace instead of the scenario's workload (`--trace`).
    pub trace: Option<PathBuf>,
    /// The trace's format (`--format`); detected from its header when absent.
    pub format: Option<TraceFormat>,
    /// Start from the live cluster (`--from-cluster`): its nodes replace the scenario's
    /// hosts, its running and pending instances are there at time 0. The binary fetches
    /// it from the server.
    pub from_cluster: Option<ClusterSnapshot>,
    /// Output directory (`--out`, default `out`).
    pub out: PathBuf,
    /// Overrides the scenario's seed (`--seed`).
    pub seed: Option<u64>,
    /// Policies simulated in parallel (`--threads`); default: available cores. Results do
    /// not depend on it.
    pub threads: Option<usize>,
    /// Show a progress bar on stderr when stderr is a terminal.
    pub progress: bool,
    /// Print nothing on success (`--quiet`).
    pub quiet: bool,
}

impl SimArgs {
    /// Defaults for everything but the scenario: output to `out/`, progress bar on.
    pub fn new(scenario: impl Into<PathBuf>) -> SimArgs {
        SimArgs {
            scenario: scenario.into(),
            trace: None,
            format: None,
            from_cluster: None,
            out: PathBuf::from("out"),
            seed: None,
            threads: None,
            progress: true,
            quiet: false,
        }
    }
}

/// Arguments of `nimbus sim report`.
#[derive(Debug, Clone)]
pub struct ReportArgs {
    /// A `sim run` output directory.
    pub dir: PathBuf,
    /// Open the report in a browser if one can be started; the path is printed anyway.
    pub open: bool,
}

/// Reads the scenario and its workload (trace, generator, live cluster) into a [`Sim`].
/// Nothing is written.
pub fn load(args: &SimArgs) -> Result<Sim, SimError> {
    let scenario = Scenario::load(&args.scenario)?;
    let seed = args.seed.unwrap_or(scenario.seed);
    let (hosts, mut jobs) = match &args.from_cluster {
        Some(snap) => snap.hosts_and_jobs(scenario.live_power)?,
        None => (scenario.hosts.clone(), Vec::new()),
    };
    if hosts.is_empty() {
        return Err(SimError::Usage(format!(
            "{}: no hosts: add [[hosts]] groups (or start from the live cluster)",
            args.scenario.display()
        )));
    }
    let largest = hosts.iter().fold((0, 0), |(c, m), h| {
        (
            c.max(h.node.capacity.cpu_millis),
            m.max(h.node.capacity.memory_mib),
        )
    });
    let trace = match (&args.trace, &scenario.workload) {
        (Some(path), Workload::Trace { options, .. }) => Some((path.clone(), options.clone())),
        (Some(path), _) => Some((
            path.clone(),
            TraceOptions {
                cpu_scale_millis: largest.0,
                memory_scale_mib: largest.1,
                declared: DeclaredRuntime::Exact,
                seed,
                ..TraceOptions::default()
            },
        )),
        (None, Workload::Trace { path, options }) => Some((path.clone(), options.clone())),
        (None, _) => None,
    };
    let source = match (trace, &scenario.workload) {
        (Some((path, mut options)), _) => {
            if let Some(f) = args.format {
                options.format = Some(f);
            }
            options.seed = seed;
            let t = load_trace(&path, &options)?;
            let source = format!(
                "{} trace {} ({} jobs, {} skipped)",
                t.format,
                path.display(),
                t.jobs.len(),
                t.skipped
            );
            jobs.extend(t.jobs);
            source
        }
        (None, Workload::Generator(g)) => {
            if args.format.is_some() {
                return Err(SimError::Usage(
                    "--format applies to a trace: give --trace too".into(),
                ));
            }
            jobs.extend(generate(g, seed));
            format!("generator ({} jobs)", g.jobs)
        }
        (None, _) => {
            if args.from_cluster.is_none() {
                return Err(SimError::Usage(format!(
                    "{}: no workload: add [workload] (a trace or a generator) or give --trace",
                    args.scenario.display()
                )));
            }
            "live cluster".to_string()
        }
    };
    let source = if args.from_cluster.is_some() {
        format!("live cluster + {source}")
    } else {
        source
    };
    if jobs.len() as u64 > MAX_JOBS {
        return Err(SimError::Usage(format!(
            "{} jobs is more than the {MAX_JOBS} the simulator takes: use max_jobs",
            jobs.len()
        )));
    }
    let mut sim = Sim {
        name: scenario.name.clone(),
        seed,
        hosts,
        jobs,
        policies: scenario.policies.clone(),
        settings: scenario.settings.clone(),
        workload_source: source,
    };
    sim.sort_jobs();
    Ok(sim)
}

/// Simulates every policy of `sim` (on up to `threads` threads) and collects the results
/// in policy order. `progress` shows a bar on stderr if it is a terminal.
pub fn run(sim: &Sim, threads: usize, progress: bool) -> SimResults {
    let n = sim.policies.len();
    let bar = (progress && std::io::stderr().is_terminal() && !sim.jobs.is_empty()).then(|| {
        let pb = indicatif::ProgressBar::new((sim.jobs.len() * n) as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} simulating {bar:40} {percent:>3}% jobs done, ETA {eta}",
        ) {
            pb.set_style(style);
        }
        pb
    });
    let tick = |k: u64| {
        if let Some(b) = &bar {
            b.inc(k);
        }
    };
    let opts = RunOptions {
        progress: Some(&tick),
        verify_with_schedule: false,
        record_placements: false,
    };
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<PolicyResult>>> = Mutex::new(vec![None; n]);
    let workers = threads.clamp(1, n.max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = simulate(sim, &sim.policies[i], &opts);
                if let Ok(mut v) = results.lock() {
                    v[i] = Some(r);
                }
            });
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let policies = results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect();
    SimResults {
        scenario: sim.name.clone(),
        seed: sim.seed,
        workload: sim.workload_source.clone(),
        hosts: sim.hosts.len() as u64,
        jobs: sim.jobs.len() as u64,
        horizon_s: sim.settings.horizon_s,
        warmup_s: sim.settings.warmup_s,
        policies,
    }
}

/// `nimbus sim run`: load, simulate every policy, write `summary.csv`, `timeseries.csv`,
/// `results.json` and `report.html` into `args.out`, print a comparison table.
/// Bad input fails before anything is written.
pub fn run_cli(args: SimArgs) -> Result<(), SimError> {
    let sim = load(&args)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let started = Instant::now();
    let results = run(&sim, threads, args.progress && !args.quiet);
    let wall = started.elapsed().as_secs_f64();
    let written = output::write_all(&args.out, &results)?;
    if !args.quiet {
        print!("{}", table(&results));
        let events: u64 = results.policies.iter().map(|p| p.events).sum();
        println!(
            "{} policies x {} jobs on {} hosts: {} events in {:.2} s ({} events/s)",
            results.policies.len(),
            results.jobs,
            results.hosts,
            events,
            wall,
            num(events as f64 / wall.max(1e-9))
        );
        for p in written {
            println!("wrote {}", p.display());
        }
    }
    Ok(())
}

/// `nimbus sim report`: (re)writes `report.html` from `results.json` in `args.dir` and
/// prints its path; with `open`, also tries to open it (`xdg-open` / `open`, if present).
pub fn report_cli(args: ReportArgs) -> Result<(), SimError> {
    let results = output::read_results(&args.dir)?;
    let path = args.dir.join(REPORT_FILE);
    output::write_file(&path, &report::html(&results))?;
    println!("{}", path.display());
    if args.open {
        for opener in ["xdg-open", "open"] {
            let found = std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(opener).is_file()));
            if found {
                let _ = std::process::Command::new(opener)
                    .arg(&path)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn();
                break;
            }
        }
    }
    Ok(())
}

/// The side-by-side comparison printed by `sim run`.
pub fn table(r: &SimResults) -> String {
    let header = [
        "policy",
        "done",
        "rejected",
        "wait mean",
        "wait p95",
        "turnaround",
        "slowdown p95",
        "cpu busy",
        "stranded cpu",
        "energy kWh",
        "lost/recovered",
    ];
    let rows: Vec<Vec<String>> = r
        .policies
        .iter()
        .map(|p| {
            vec![
                p.policy.clone(),
                p.completed.to_string(),
                (p.rejected_too_large + p.rejected_timeout).to_string(),
                format!("{} s", num(p.waiting.mean)),
                format!("{} s", num(p.waiting.p95)),
                format!("{} s", num(p.turnaround.mean)),
                num(p.slowdown.p95),
                format!("{:.1}%", p.cpu_busy_mean * 100.0),
                format!("{:.2}%", p.stranded_cpu_mean * 100.0),
                num(p.energy_kwh),
                format!("{}/{}", p.lost, p.recovered),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (c, cell) in cells.iter().enumerate() {
            if c == 0 {
                s.push_str(&format!("{cell:<w$}", w = widths[c]));
            } else {
                s.push_str(&format!("  {cell:>w$}", w = widths[c]));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}
