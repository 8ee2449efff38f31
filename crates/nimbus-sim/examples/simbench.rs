//! Simulator throughput: simulated events per second, wall time and peak memory for
//! (1,000 hosts, 20,000 VMs), (10,000 hosts, 200,000 VMs) and (10,000 hosts, 1,000,000
//! VMs) under best-fit placement and time-shared (processor-sharing) execution, one core.
//!
//! Run: `cargo run --release -p nimbus-sim --example simbench` (add `-- --quick` for the
//! first configuration only). Each configuration runs in its own process so the peak
//! memory (VmHWM) is its own.

use std::process::Command;
use std::time::Instant;

use nimbus_sched::{NodeInfo, PlacementPolicy, QueuePolicy, Resources, SchedulerConfig};
use nimbus_sim::engine::{simulate, RunOptions};
use nimbus_sim::generate::{
    generate, Arrival, DeclaredRuntime, DurationDist, Generator, SizeClass,
};
use nimbus_sim::model::{Execution, HostSpec, PolicySpec, PowerModel, Settings, Sim};

const GIB: u64 = 1024;
const CONFIGS: [(usize, u64); 3] = [(1_000, 20_000), (10_000, 200_000), (10_000, 1_000_000)];

fn hosts(n: usize) -> Vec<HostSpec> {
    // 60% 32 cores / 128 GiB, 30% 64 / 256, 10% 16 / 64.
    (0..n)
        .map(|i| {
            let (cores, mem) = match i % 10 {
                0..=5 => (32, 128),
                6..=8 => (64, 256),
                _ => (16, 64),
            };
            HostSpec {
                node: NodeInfo::new(
                    format!("host-{i:05}"),
                    Resources::new(cores * 1000, mem * GIB, 2048 * GIB),
                    &["sim"],
                ),
                group: "bench".into(),
                power: PowerModel {
                    idle_w: 100.0,
                    max_w: 300.0,
                },
                failures: None,
            }
        })
        .collect()
}

fn workload(n_hosts: usize, vms: u64) -> Generator {
    let sizes: Vec<SizeClass> = [
        (2, 4, 45.0),
        (2, 8, 10.0),
        (4, 8, 15.0),
        (4, 32, 8.0),
        (8, 32, 12.0),
        (8, 64, 4.0),
        (24, 64, 4.0),
        (24, 192, 2.0),
    ]
    .into_iter()
    .map(|(c, m, w)| SizeClass {
        resources: Resources::new(c * 1000, m * GIB, 64 * GIB),
        weight: w,
        cpu_utilization: 1.0,
    })
    .collect();
    let total_w: f64 = sizes.iter().map(|s| s.weight).sum();
    let mean_mem: f64 = sizes
        .iter()
        .map(|s| s.weight * s.resources.memory_mib as f64)
        .sum::<f64>()
        / total_w;
    let duration = DurationDist::LogNormal {
        mu: 1800f64.ln(),
        sigma: 1.2,
    };
    let host_mem: f64 = hosts(n_hosts.min(10))
        .iter()
        .map(|h| h.node.capacity.memory_mib as f64)
        .sum::<f64>()
        / n_hosts.min(10) as f64
        * n_hosts as f64;
    // Offered memory load 85%.
    let rate = 0.85 * host_mem / (mean_mem * duration.mean());
    Generator {
        jobs: vms,
        arrival: Arrival::Poisson { rate_per_s: rate },
        duration,
        max_duration_s: None,
        sizes,
        priorities: vec![(0, 1.0)],
        declared: DeclaredRuntime::Exact,
    }
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU time (user + system) of this process so far, seconds (from /proc/self/stat).
fn cpu_s() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(f64::NAN)
}

fn one(n_hosts: usize, vms: u64) {
    let t0 = Instant::now();
    let jobs = generate(&workload(n_hosts, vms), 1);
    let gen_s = t0.elapsed().as_secs_f64();
    let sim = Sim {
        name: "bench".into(),
        seed: 1,
        hosts: hosts(n_hosts),
        jobs,
        policies: Vec::new(),
        settings: Settings::default(),
        workload_source: "generator".into(),
    };
    let policy = PolicySpec {
        name: "best-fit/fcfs/ps".into(),
        scheduler: SchedulerConfig {
            placement: PlacementPolicy::BestFit,
            queue: QueuePolicy::Fcfs,
            ..SchedulerConfig::default()
        },
        execution: Execution::TimeShared {
            quantum_s: 0.0,
            cpu_overcommit: 2.0,
        },
    };
    let (t1, c1) = (Instant::now(), cpu_s());
    let r = simulate(&sim, &policy, &RunOptions::default());
    let sim_s = t1.elapsed().as_secs_f64();
    let sim_cpu = cpu_s() - c1;
    println!(
        "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} M | {:.0} | {:.0}% | {:.0}% |",
        n_hosts,
        vms,
        r.events,
        gen_s,
        sim_s,
        sim_cpu,
        gen_s + sim_s,
        r.events as f64 / sim_s / 1e6,
        peak_rss_mib(),
        r.samples.iter().map(|s| s.memory).fold(0.0, f64::max) * 100.0,
        r.samples.iter().map(|s| s.cpu_reserved).fold(0.0, f64::max) * 100.0,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let (Some("--one"), Some(h), Some(v)) = (
        args.get(1).map(String::as_str),
        args.get(2).and_then(|s| s.parse().ok()),
        args.get(3).and_then(|s| s.parse().ok()),
    ) {
        one(h, v);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    println!("| hosts | VMs | events | generate (s) | simulate, wall (s) | simulate, cpu (s) | total wall (s) | events/s (wall) | peak RSS (MiB) | peak memory reserved | peak cpu reserved |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let exe = std::env::current_exe().expect("own path");
    for (h, v) in CONFIGS
        .into_iter()
        .take(if quick { 1 } else { CONFIGS.len() })
    {
        let status = Command::new(&exe)
            .args(["--one", &h.to_string(), &v.to_string()])
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("configuration ({h} hosts, {v} VMs) failed");
        }
    }
}
