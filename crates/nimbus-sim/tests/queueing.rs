//! Queueing theory: the simulator (placements and queue by nimbus-sched) reproduces
//! M/M/c waiting times (Erlang C) and the M/M/1 processor-sharing response time.
//!
//! Each run discards the first 5% of its arrivals (warm-up). At load 0.95 the waiting time
//! has a long memory, so that case averages 16 independent replications of 1,000,000
//! jobs (standard error about 1%); the others 1 or 2. These tests need an optimized build
//! (`--release`, or `[profile.dev.package.nimbus-sim]` and `[...nimbus-sched]`
//! `opt-level = 3` in the workspace): see `build.rs`.

mod common;

use common::*;
use nimbus_sched::{PlacementPolicy, QueuePolicy};
use nimbus_sim::generate::DurationDist;
use nimbus_sim::model::{Execution, Settings};

/// Mean service time (s).
const MEAN_S: f64 = 100.0;
const JOBS: u64 = 1_000_000;

/// Mean waiting time of M/M/c FCFS at load `rho` (replication `rep`): c hosts with one
/// core, one-core jobs, first-fit, fcfs without backfill.
fn mmc_wait(c: u32, rho: f64, rep: u64) -> f64 {
    let lambda = rho * f64::from(c) / MEAN_S;
    let s = sim(
        hosts(c as usize, 1, 1),
        jobs(
            JOBS,
            lambda,
            DurationDist::Exponential { mean_s: MEAN_S },
            vec![size(1.0, 1, 1.0)],
            vec![(0, 1.0)],
            1000 + rep,
        ),
        Settings {
            warmup_s: 0.05 * JOBS as f64 / lambda,
            ..Settings::default()
        },
    );
    let p = policy(
        PlacementPolicy::FirstFit,
        QueuePolicy::Fcfs,
        false,
        Execution::SpaceShared,
    );
    run(&s, &p).waiting.mean
}

fn check_mmc(c: u32, rho: f64, reps: u64) {
    let lambda = rho * f64::from(c) / MEAN_S;
    let mu = 1.0 / MEAN_S;
    let want = erlang_c(c, lambda / mu) / (f64::from(c) * mu - lambda);
    let got = replicate(reps, |r| mmc_wait(c, rho, r));
    let err = got / want - 1.0;
    eprintln!(
        "M/M/{c} at load {rho}: mean wait {got:.4} s, Erlang C {want:.4} s ({:+.2}%)",
        err * 100.0
    );
    assert!(
        err.abs() < 0.03,
        "M/M/{c} at load {rho}: {got} vs {want} ({:+.2}%)",
        err * 100.0
    );
}

#[test]
#[cfg_attr(
    not(nimbus_sim_optimized),
    ignore = "needs an optimized build (see build.rs)"
)]
fn mmc_matches_erlang_c_at_load_0_5() {
    check_mmc(2, 0.5, 1);
}

#[test]
#[cfg_attr(
    not(nimbus_sim_optimized),
    ignore = "needs an optimized build (see build.rs)"
)]
fn mmc_matches_erlang_c_at_load_0_8() {
    check_mmc(4, 0.8, 2);
}

#[test]
#[cfg_attr(
    not(nimbus_sim_optimized),
    ignore = "needs an optimized build (see build.rs)"
)]
fn mmc_matches_erlang_c_at_load_0_95() {
    check_mmc(10, 0.95, 16);
}

#[test]
#[cfg_attr(
    not(nimbus_sim_optimized),
    ignore = "needs an optimized build (see build.rs)"
)]
fn mm1_processor_sharing_mean_response() {
    let rho = 0.8;
    let lambda = rho / MEAN_S;
    let want = 1.0 / (1.0 / MEAN_S - lambda);
    let got = replicate(2, |rep| {
        let s = sim(
            // One core; memory and the overcommit large enough that nothing ever waits
            // for placement: every job shares the core from its arrival.
            hosts(1, 1, 1 << 16),
            jobs(
                JOBS,
                lambda,
                DurationDist::Exponential { mean_s: MEAN_S },
                vec![size(1.0, 1, 1.0)],
                vec![(0, 1.0)],
                2000 + rep,
            ),
            Settings {
                warmup_s: 0.05 * JOBS as f64 / lambda,
                ..Settings::default()
            },
        );
        let p = policy(
            PlacementPolicy::FirstFit,
            QueuePolicy::Fcfs,
            true,
            Execution::TimeShared {
                quantum_s: 0.0,
                cpu_overcommit: 1e6,
            },
        );
        let r = run(&s, &p);
        assert_eq!(r.waiting.max, 0.0, "nobody waits for placement");
        r.turnaround.mean
    });
    let err = got / want - 1.0;
    eprintln!(
        "M/M/1-PS at load {rho}: mean response {got:.3} s, 1/(mu - lambda) {want:.3} s ({:+.2}%)",
        err * 100.0
    );
    assert!(err.abs() < 0.03, "M/M/1-PS: {got} vs {want}");
}
