//! Helpers shared by the integration tests: small clusters, generated workloads, the
//! Erlang C formula, replications.

#![allow(dead_code)]

use nimbus_sched::{NodeInfo, PlacementPolicy, QueuePolicy, Resources, SchedulerConfig};
use nimbus_sim::engine::{simulate, RunOptions};
use nimbus_sim::generate::{
    generate, Arrival, DeclaredRuntime, DurationDist, Generator, SizeClass,
};
use nimbus_sim::metrics::PolicyResult;
use nimbus_sim::model::{Execution, HostSpec, Job, PolicySpec, PowerModel, Settings, Sim};

pub const GIB: u64 = 1024;

/// `n` identical hosts with `cores` cores and `mem_gib` GiB.
pub fn hosts(n: usize, cores: u64, mem_gib: u64) -> Vec<HostSpec> {
    (0..n)
        .map(|i| HostSpec {
            node: NodeInfo::new(
                format!("h{i:04}"),
                Resources::new(cores * 1000, mem_gib * GIB, 0),
                &["sim"],
            ),
            group: "g".into(),
            power: PowerModel::default(),
            failures: None,
        })
        .collect()
}

/// A size class of `cores` cores and `mem_gib` GiB.
pub fn size(cores: f64, mem_gib: u64, weight: f64) -> SizeClass {
    SizeClass {
        resources: Resources::new((cores * 1000.0) as u64, mem_gib * GIB, 0),
        weight,
        cpu_utilization: 1.0,
    }
}

/// `n` jobs: Poisson arrivals at `rate`, durations from `duration`.
pub fn jobs(
    n: u64,
    rate: f64,
    duration: DurationDist,
    sizes: Vec<SizeClass>,
    priorities: Vec<(i32, f64)>,
    seed: u64,
) -> Vec<Job> {
    generate(
        &Generator {
            jobs: n,
            arrival: Arrival::Poisson { rate_per_s: rate },
            duration,
            max_duration_s: None,
            sizes,
            priorities,
            declared: DeclaredRuntime::Exact,
        },
        seed,
    )
}

pub fn sim(hosts: Vec<HostSpec>, jobs: Vec<Job>, settings: Settings) -> Sim {
    Sim {
        name: "test".into(),
        seed: 1,
        hosts,
        jobs,
        policies: Vec::new(),
        settings,
        workload_source: "test".into(),
    }
}

pub fn policy(
    placement: PlacementPolicy,
    queue: QueuePolicy,
    backfill: bool,
    execution: Execution,
) -> PolicySpec {
    PolicySpec {
        name: format!("{placement}/{queue}/{}", execution.label()),
        scheduler: SchedulerConfig {
            placement,
            queue,
            backfill,
            ..SchedulerConfig::default()
        },
        execution,
    }
}

pub fn run(sim: &Sim, p: &PolicySpec) -> PolicyResult {
    simulate(sim, p, &RunOptions::default())
}

/// Erlang C: the probability an arrival waits in M/M/c with offered load `a` = λ/μ.
pub fn erlang_c(c: u32, a: f64) -> f64 {
    let mut sum = 0.0;
    let mut term = 1.0;
    for k in 0..c {
        if k > 0 {
            term *= a / f64::from(k);
        }
        sum += term;
    }
    let top = term * a / f64::from(c) * (f64::from(c) / (f64::from(c) - a));
    top / (sum + top)
}

/// The mean of `f(r)` over replications `0..reps`, run on two threads.
pub fn replicate(reps: u64, f: impl Fn(u64) -> f64 + Sync) -> f64 {
    let results = std::sync::Mutex::new(vec![0.0; reps as usize]);
    let next = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let r = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if r >= reps {
                    break;
                }
                let v = f(r);
                results.lock().unwrap()[r as usize] = v;
            });
        }
    });
    let v = results.into_inner().unwrap();
    v.iter().sum::<f64>() / v.len() as f64
}
