//! The simulator's incremental scheduling passes decide exactly what
//! `nimbus_sched::schedule` decides, and the simulator's placements equal those of the
//! live path (`replay_placements`: one `schedule` call per create).

mod common;

use common::*;
use nimbus_sched::{NodeInfo, PlacementPolicy, QueuePolicy, Request, Resources, SchedulerConfig};
use nimbus_sim::engine::{simulate, RunOptions};
use nimbus_sim::generate::{generate, Arrival, DeclaredRuntime, DurationDist, Generator};
use nimbus_sim::live::{replay_placements, sim_placements};
use nimbus_sim::model::{Execution, FailureModel, HostSpec, PowerModel, Settings};
use rand::{Rng, SeedableRng};

/// 12 hosts of four shapes, a few of them failing now and then.
fn mixed_hosts() -> Vec<HostSpec> {
    let shapes = [(8, 32), (16, 64), (4, 64), (32, 64)];
    (0..12)
        .map(|i| {
            let (cores, mem) = shapes[i % shapes.len()];
            HostSpec {
                node: NodeInfo::new(
                    format!("n{i:02}"),
                    Resources::new(cores * 1000, mem * GIB, 0),
                    &["sim"],
                ),
                group: "g".into(),
                power: PowerModel::default(),
                failures: (i % 3 == 0).then_some(FailureModel {
                    mtbf_s: 1000.0,
                    mttr_s: 300.0,
                }),
            }
        })
        .collect()
}

fn mixed_jobs(seed: u64) -> Vec<nimbus_sim::model::Job> {
    generate(
        &Generator {
            jobs: 400,
            arrival: Arrival::Bursty {
                rate_per_s: 0.2,
                burst_rate_per_s: 3.0,
                mean_burst_s: 30.0,
                mean_calm_s: 300.0,
            },
            duration: DurationDist::LogNormal {
                mu: 60f64.ln(),
                sigma: 1.2,
            },
            max_duration_s: None,
            sizes: vec![
                size(1.0, 2, 4.0),
                size(4.0, 8, 2.0),
                size(2.0, 24, 2.0),
                size(12.0, 16, 1.0),
                size(16.0, 60, 0.5),
                size(70.0, 8, 0.3),
            ],
            priorities: vec![(0, 2.0), (3, 1.0), (7, 1.0)],
            declared: DeclaredRuntime::Noisy { sigma: 0.7 },
        },
        seed,
    )
}

#[test]
fn incremental_passes_agree_with_schedule() {
    let executions = [
        Execution::SpaceShared,
        Execution::TimeShared {
            quantum_s: 0.0,
            cpu_overcommit: 2.0,
        },
        Execution::TimeShared {
            quantum_s: 5.0,
            cpu_overcommit: 1.5,
        },
    ];
    let mut checked = 0;
    for (k, exec) in executions.into_iter().enumerate() {
        for placement in PlacementPolicy::ALL {
            for queue in QueuePolicy::ALL {
                for backfill in [true, false] {
                    let s = sim(
                        mixed_hosts(),
                        mixed_jobs(k as u64),
                        Settings {
                            max_wait_s: Some(900.0),
                            ..Settings::default()
                        },
                    );
                    let mut p = policy(placement, queue, backfill, exec);
                    // Fast aging so priorities reorder within the run.
                    p.scheduler.aging_per_priority_ms = 20_000;
                    let opts = RunOptions {
                        verify_with_schedule: true,
                        ..RunOptions::default()
                    };
                    let r = simulate(&s, &p, &opts);
                    assert!(
                        r.schedule_mismatches.is_empty(),
                        "{}:\n{}",
                        p.name,
                        r.schedule_mismatches[..r.schedule_mismatches.len().min(3)].join("\n")
                    );
                    assert!(r.waiting.max > 0.0, "{}: nothing ever queued", p.name);
                    assert!(r.host_failures > 0, "{}", p.name);
                    assert!(r.rejected_too_large > 0, "{}", p.name);
                    checked += r.passes;
                }
            }
        }
    }
    eprintln!("{checked} passes checked against nimbus_sched::schedule");
}

#[test]
fn sim_placements_equal_the_live_path() {
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(77);
    for round in 0..6 {
        let nodes: Vec<NodeInfo> = (0..20)
            .map(|i| {
                let mut n = NodeInfo::new(
                    format!("node-{i:02}"),
                    Resources::new(
                        rng.gen_range(2..=32) * 1000,
                        rng.gen_range(4..=128) * GIB,
                        0,
                    ),
                    &["process"],
                );
                n.allocated =
                    Resources::new(rng.gen_range(0..=2) * 1000, rng.gen_range(0..=4) * GIB, 0);
                n
            })
            .collect();
        let requests: Vec<Request> = (0..400)
            .map(|i| {
                let mut r = Request::new(
                    format!("i{i}"),
                    Resources::new(rng.gen_range(1..=8) * 500, rng.gen_range(1..=16) * 512, 0),
                    "process",
                );
                r.priority = rng.gen_range(0..3);
                r.queue_seq = i;
                r.queued_at_ms = i * 1000;
                r
            })
            .collect();
        for placement in PlacementPolicy::ALL {
            let cfg = SchedulerConfig {
                placement,
                ..SchedulerConfig::default()
            };
            let live = replay_placements(nodes.clone(), requests.clone(), &cfg);
            let simulated = sim_placements(nodes.clone(), requests.clone(), &cfg);
            assert_eq!(live, simulated, "round {round}, {placement}");
            assert!(
                live.iter().any(Option::is_none),
                "round {round}: the cluster should fill up"
            );
        }
    }
}
