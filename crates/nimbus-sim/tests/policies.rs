//! Policies mean what they say, each on a fixed seed: SJF beats FCFS on mean waiting,
//! priority favours high-priority jobs, best-fit strands less capacity than worst-fit on
//! a bin-packing-heavy mix; round-robin and processor sharing behave as in the books.

mod common;

use common::*;
use nimbus_sched::{PlacementPolicy, QueuePolicy};
use nimbus_sim::generate::DurationDist;
use nimbus_sim::model::{Execution, FailureModel, OnFailure, Settings};

use PlacementPolicy::{BestFit, FirstFit, WorstFit};
use QueuePolicy::{Fcfs, Priority, Sjf};

const SS: Execution = Execution::SpaceShared;

#[test]
fn sjf_beats_fcfs_on_mean_waiting() {
    // 4 hosts x 8 cores, one-core jobs, lognormal durations (mean 100 s), load 0.93.
    let dur = DurationDist::LogNormal {
        mu: 100f64.ln() - 0.5,
        sigma: 1.0,
    };
    let rate = 0.93 * 32.0 / dur.mean();
    let s = sim(
        hosts(4, 8, 64),
        jobs(
            20_000,
            rate,
            dur,
            vec![size(1.0, 1, 1.0)],
            vec![(0, 1.0)],
            11,
        ),
        Settings {
            warmup_s: 2000.0,
            ..Settings::default()
        },
    );
    let fcfs = run(&s, &policy(FirstFit, Fcfs, true, SS));
    let sjf = run(&s, &policy(FirstFit, Sjf, true, SS));
    eprintln!(
        "mean wait: fcfs {:.1} s, sjf {:.1} s",
        fcfs.waiting.mean, sjf.waiting.mean
    );
    assert!(
        fcfs.waiting.mean > 5.0,
        "the queue must be busy: {}",
        fcfs.waiting.mean
    );
    assert!(
        sjf.waiting.mean < 0.5 * fcfs.waiting.mean,
        "sjf {} vs fcfs {}",
        sjf.waiting.mean,
        fcfs.waiting.mean
    );
    // Same work, same total execution.
    assert_eq!(sjf.completed, fcfs.completed);
    assert!((sjf.execution_time.mean - fcfs.execution_time.mean).abs() < 1e-6);
    // Turnaround = waiting + execution, per job and so on average.
    for r in [&fcfs, &sjf] {
        let sum = r.waiting.mean + r.execution_time.mean;
        assert!((r.turnaround.mean - sum).abs() < 1e-6 * sum);
    }
}

#[test]
fn priority_gives_high_priority_jobs_lower_waiting() {
    // Load 0.93: mean job 1.5 cores for 100 s on 32 cores.
    let rate = 0.93 * 32.0 / (1.5 * 100.0);
    let s = sim(
        hosts(4, 8, 64),
        jobs(
            20_000,
            rate,
            DurationDist::Exponential { mean_s: 100.0 },
            vec![size(1.0, 1, 1.0), size(2.0, 2, 1.0)],
            vec![(0, 1.0), (10, 1.0)],
            12,
        ),
        Settings {
            warmup_s: 2000.0,
            ..Settings::default()
        },
    );
    let mut prio = policy(FirstFit, Priority, true, SS);
    prio.scheduler.aging_per_priority_ms = 0;
    let by_prio = |r: &nimbus_sim::metrics::PolicyResult, p: i32| {
        r.by_priority
            .iter()
            .find(|b| b.priority == p)
            .map(|b| b.waiting.mean)
            .unwrap()
    };
    let pr = run(&s, &prio);
    let (low, high) = (by_prio(&pr, 0), by_prio(&pr, 10));
    eprintln!("priority policy: priority 0 waits {low:.1} s, priority 10 waits {high:.1} s");
    assert!(high < 0.25 * low, "high {high} vs low {low}");
    // Under fcfs the two classes wait alike (within noise).
    let f = run(&s, &policy(FirstFit, Fcfs, true, SS));
    let (flow, fhigh) = (by_prio(&f, 0), by_prio(&f, 10));
    assert!(
        (flow - fhigh).abs() < 0.2 * flow.max(fhigh),
        "fcfs {flow} vs {fhigh}"
    );
    // Aging lifts the low class: with +1 per 10 s waited, priority 0 catches up sooner.
    let mut aged = prio.clone();
    aged.scheduler.aging_per_priority_ms = 10_000;
    let a = run(&s, &aged);
    assert!(
        by_prio(&a, 0) < low,
        "aging {} vs none {low}",
        by_prio(&a, 0)
    );
}

#[test]
fn best_fit_strands_less_capacity_than_worst_fit() {
    // 50 hosts of 16 cores / 64 GiB; a mix of cpu-heavy, memory-heavy and large shapes
    // at about 0.75 cpu load.
    let sizes = vec![
        size(8.0, 32, 1.0),
        size(2.0, 40, 1.0),
        size(12.0, 8, 1.0),
        size(4.0, 16, 2.0),
        size(1.0, 4, 2.0),
    ];
    let s = sim(
        hosts(50, 16, 64),
        jobs(
            40_000,
            0.13,
            DurationDist::Exponential { mean_s: 1000.0 },
            sizes,
            vec![(0, 1.0)],
            1,
        ),
        Settings {
            warmup_s: 20_000.0,
            horizon_s: Some(200_000.0),
            ..Settings::default()
        },
    );
    let best = run(&s, &policy(BestFit, Fcfs, true, SS));
    let worst = run(&s, &policy(WorstFit, Fcfs, true, SS));
    eprintln!(
        "stranded cpu / memory: best-fit {:.4} / {:.4}, worst-fit {:.4} / {:.4}",
        best.stranded_cpu_mean,
        best.stranded_memory_mean,
        worst.stranded_cpu_mean,
        worst.stranded_memory_mean
    );
    assert!(best.stranded_cpu_mean < 0.5 * worst.stranded_cpu_mean);
    assert!(best.stranded_memory_mean < 0.5 * worst.stranded_memory_mean);
    assert!(best.waiting.mean < worst.waiting.mean);
}

#[test]
fn round_robin_with_an_endless_quantum_is_fcfs() {
    // One core: jobs placed at once (large overcommit) and run to completion in arrival
    // order, exactly like fcfs space sharing where they wait in the scheduler's queue.
    let s = sim(
        hosts(1, 1, 1 << 10),
        jobs(
            5_000,
            0.008,
            DurationDist::Exponential { mean_s: 100.0 },
            vec![size(1.0, 1, 1.0)],
            vec![(0, 1.0)],
            5,
        ),
        Settings::default(),
    );
    let rr = run(
        &s,
        &policy(
            FirstFit,
            Fcfs,
            true,
            Execution::TimeShared {
                quantum_s: 1e9,
                cpu_overcommit: 1e6,
            },
        ),
    );
    let ss = run(&s, &policy(FirstFit, Fcfs, true, SS));
    assert_eq!(rr.waiting.max, 0.0);
    assert!((rr.turnaround.mean - ss.turnaround.mean).abs() < 1e-9 * ss.turnaround.mean);
    assert_eq!(rr.turnaround.p99, ss.turnaround.p99);
}

#[test]
fn round_robin_with_a_small_quantum_approaches_processor_sharing() {
    // M/G/1 with lognormal service: RR with a quantum of 1% of the mean service comes
    // within 5% of processor sharing, and both beat fcfs on mean turnaround (high
    // service-time variance favours sharing).
    let dur = DurationDist::LogNormal {
        mu: 50f64.ln(),
        sigma: 1.0,
    };
    let s = sim(
        hosts(1, 1, 1 << 10),
        jobs(
            4_000,
            0.7 / dur.mean(),
            dur.clone(),
            vec![size(1.0, 1, 1.0)],
            vec![(0, 1.0)],
            6,
        ),
        Settings::default(),
    );
    let ts = |q: f64| Execution::TimeShared {
        quantum_s: q,
        cpu_overcommit: 1e6,
    };
    let ps = run(&s, &policy(FirstFit, Fcfs, true, ts(0.0)));
    let rr = run(&s, &policy(FirstFit, Fcfs, true, ts(0.8)));
    let fcfs = run(&s, &policy(FirstFit, Fcfs, true, SS));
    eprintln!(
        "mean turnaround: ps {:.1}, rr {:.1}, fcfs {:.1}",
        ps.turnaround.mean, rr.turnaround.mean, fcfs.turnaround.mean
    );
    assert!((rr.turnaround.mean / ps.turnaround.mean - 1.0).abs() < 0.05);
    assert!(ps.turnaround.mean < fcfs.turnaround.mean);
    // Execution stretches under sharing; no placement wait.
    assert!(ps.execution_time.mean > 1.5 * dur.mean());
    assert_eq!(ps.waiting.max, 0.0);
}

#[test]
fn failures_lose_or_requeue_running_jobs() {
    let mut hs = hosts(10, 4, 16);
    for h in &mut hs {
        h.failures = Some(FailureModel {
            mtbf_s: 20_000.0,
            mttr_s: 2_000.0,
        });
    }
    let job_list = jobs(
        3_000,
        0.1,
        DurationDist::Exponential { mean_s: 200.0 },
        vec![size(1.0, 2, 1.0)],
        vec![(0, 1.0)],
        8,
    );
    let requeue = sim(hs.clone(), job_list.clone(), Settings::default());
    let lose = sim(
        hs,
        job_list,
        Settings {
            on_failure: OnFailure::Lose,
            ..Settings::default()
        },
    );
    let p = policy(BestFit, Fcfs, true, SS);
    let rq = run(&requeue, &p);
    let lo = run(&lose, &p);
    eprintln!(
        "requeue: {} failures, {} interrupted, {} recovered; lose: {} lost",
        rq.host_failures, rq.interrupted, rq.recovered, lo.lost
    );
    assert!(rq.host_failures > 0 && rq.interrupted > 0);
    assert_eq!(
        rq.recovered, rq.interrupted,
        "every interrupted job finishes after requeueing"
    );
    assert_eq!(rq.completed, 3_000);
    assert_eq!(rq.lost, 0);
    assert!(lo.lost > 0);
    assert_eq!(lo.completed + lo.lost, 3_000);
    // The failure schedule is per host, so it is the same under every policy.
    let other = run(&requeue, &policy(WorstFit, Fcfs, true, SS));
    assert_eq!(other.host_failures, rq.host_failures);
}

#[test]
fn too_large_and_impatient_jobs_are_rejected() {
    let s = sim(
        hosts(2, 4, 8),
        jobs(
            2_000,
            0.05,
            DurationDist::Exponential { mean_s: 100.0 },
            vec![size(2.0, 4, 3.0), size(8.0, 4, 1.0)],
            vec![(0, 1.0)],
            9,
        ),
        Settings {
            max_wait_s: Some(30.0),
            ..Settings::default()
        },
    );
    let r = run(&s, &policy(FirstFit, Fcfs, true, SS));
    assert!(r.rejected_too_large > 400, "{}", r.rejected_too_large);
    assert!(r.rejected_timeout > 0);
    assert_eq!(
        r.completed + r.rejected_too_large + r.rejected_timeout,
        2_000
    );
    assert!(r.waiting.max <= 30.0);
}

#[test]
fn energy_follows_the_linear_power_model() {
    // One host, idle 100 W, max 250 W; one job keeping 2 of 4 cores busy for 1000 s of a
    // 2000 s horizon: 100 W * 2000 s + 75 W * 1000 s.
    let mut h = hosts(1, 4, 8);
    h[0].power = nimbus_sim::model::PowerModel {
        idle_w: 100.0,
        max_w: 250.0,
    };
    let mut js = jobs(
        1,
        1.0,
        DurationDist::Fixed { value_s: 1000.0 },
        vec![size(2.0, 1, 1.0)],
        vec![(0, 1.0)],
        1,
    );
    js[0].arrival_s = 0.0;
    let s = sim(
        h,
        js,
        Settings {
            horizon_s: Some(2000.0),
            ..Settings::default()
        },
    );
    let r = run(&s, &policy(FirstFit, Fcfs, true, SS));
    let want_kwh = (100.0 * 2000.0 + 75.0 * 1000.0) / 3.6e6;
    assert!(
        (r.energy_kwh - want_kwh).abs() < 1e-9,
        "{} vs {want_kwh}",
        r.energy_kwh
    );
    assert!((r.cpu_busy_mean - 0.25).abs() < 1e-9);
    assert_eq!(r.end_s, 2000.0);
}
