//! Placement throughput: the index vs. the naive linear scan, 10,000 nodes, 100,000 requests.
//!
//! Run: `cargo bench -p nimbus-sched --bench placement` (options after `--`:
//! `--nodes N`, `--requests N`, `--skip-naive`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nimbus_sched::reference::select_linear;
use nimbus_sched::{ClusterState, NodeInfo, PlacementPolicy, Request, Resources};

const SEED: u64 = 0x5EED_2024_CAFE_F00D;
const GIB: u64 = 1024;
const DECILES: usize = 10;

/// xorshift64*: tiny, deterministic, good enough for workload generation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// 16-64 cores with 64-256 GiB: 70% of nodes have 4 GiB per core, 15% 2 and 15% 8 (memory
/// clamped to 64-256 GiB); 0.5-2 TiB disk; 80% of nodes run `process` and `qemu`, 20% only
/// `process`; three zones.
fn make_nodes(n: usize, rng: &mut Rng) -> Vec<NodeInfo> {
    (0..n)
        .map(|i| {
            let cores = rng.pick(&[16, 24, 32, 48, 64]);
            let gib_per_core = match rng.below(100) {
                0..=69 => 4,
                70..=84 => 2,
                _ => 8,
            };
            let mem_gib = (cores * gib_per_core).clamp(64, 256);
            let disk_gib = 512 + rng.below(4) * 512;
            let drivers: &[&str] = if rng.below(10) < 8 {
                &["process", "qemu"]
            } else {
                &["process"]
            };
            let mut node = NodeInfo::new(
                format!("node-{i:05}"),
                Resources::new(cores * 1000, mem_gib * GIB, disk_gib * GIB),
                drivers,
            );
            node.labels = BTreeMap::from([(
                "zone".to_string(),
                ["a", "b", "c"][rng.below(3) as usize].to_string(),
            )]);
            node
        })
        .collect()
}

/// Mixed shapes (cpu millis, memory MiB, weight), mostly 4 GiB per core with some cpu- and
/// memory-heavy ones; averages about 3 cores / 12 GiB, so 100,000 of them bring 10,000
/// nodes to about 80% of cpu and memory.
const SHAPES: &[(u64, u64, u64)] = &[
    (250, GIB, 12),
    (1000, 4 * GIB, 22),
    (2000, 8 * GIB, 20),
    (4000, 16 * GIB, 18),
    (4000, 8 * GIB, 8),  // cpu-heavy
    (2000, 16 * GIB, 8), // memory-heavy
    (8000, 32 * GIB, 10),
    (16000, 64 * GIB, 2),
];

fn make_requests(n: usize, rng: &mut Rng) -> Vec<Request> {
    let total: u64 = SHAPES.iter().map(|s| s.2).sum();
    (0..n)
        .map(|i| {
            let mut roll = rng.below(total);
            let &(cpu, mem_mib, _) = SHAPES
                .iter()
                .find(|s| {
                    let hit = roll < s.2;
                    roll = roll.saturating_sub(s.2);
                    hit
                })
                .expect("weights cover the roll");
            let disk_mib = (10 + rng.below(41)) * GIB;
            let driver = if rng.below(100) < 15 {
                "qemu"
            } else {
                "process"
            };
            let mut r = Request::new(
                format!("inst-{i:06}"),
                Resources::new(cpu, mem_mib, disk_mib),
                driver,
            );
            r.queue_seq = i as u64;
            r
        })
        .collect()
}

struct Run {
    picks: Vec<Option<usize>>,
    decile_time: Vec<Duration>,
    /// (cpu, memory) fill after each decile, percent.
    decile_fill: Vec<(f64, f64)>,
    total: Duration,
}

fn fill(nodes: &[NodeInfo]) -> (f64, f64) {
    let (mut cap, mut used) = ((0u128, 0u128), (0u128, 0u128));
    for n in nodes {
        cap.0 += n.capacity.cpu_millis as u128;
        cap.1 += n.capacity.memory_mib as u128;
        used.0 += n.allocated.cpu_millis as u128;
        used.1 += n.allocated.memory_mib as u128;
    }
    (
        100.0 * used.0 as f64 / cap.0 as f64,
        100.0 * used.1 as f64 / cap.1 as f64,
    )
}

fn chunks(reqs: &[Request]) -> impl Iterator<Item = &[Request]> {
    reqs.chunks(reqs.len().div_ceil(DECILES).max(1))
}

/// The real thing: `ClusterState::place` (failures include building the explanation).
fn run_index(nodes: &[NodeInfo], reqs: &[Request], policy: PlacementPolicy) -> (Run, Duration) {
    // Index build: best of 5 (it is short, so noise from other processes dominates).
    let mut build = Duration::MAX;
    let mut state = None;
    for _ in 0..5 {
        let nodes = nodes.to_vec();
        let t = Instant::now();
        let s = ClusterState::new(nodes);
        build = build.min(t.elapsed());
        state = Some(s);
    }
    let mut state = state.expect("built");
    let mut run = Run {
        picks: Vec::with_capacity(reqs.len()),
        decile_time: Vec::new(),
        decile_fill: Vec::new(),
        total: Duration::ZERO,
    };
    for chunk in chunks(reqs) {
        let t = Instant::now();
        for r in chunk {
            run.picks.push(state.place(r, policy).ok());
        }
        let dt = t.elapsed();
        run.total += dt;
        run.decile_time.push(dt);
        run.decile_fill.push(fill(state.nodes()));
    }
    (run, build)
}

/// Baseline: scan every node per request with the reference implementation.
fn run_naive(nodes: &[NodeInfo], reqs: &[Request], policy: PlacementPolicy) -> Run {
    let mut nodes = nodes.to_vec();
    let mut run = Run {
        picks: Vec::with_capacity(reqs.len()),
        decile_time: Vec::new(),
        decile_fill: Vec::new(),
        total: Duration::ZERO,
    };
    for chunk in chunks(reqs) {
        let t = Instant::now();
        for r in chunk {
            let pick = select_linear(&nodes, r, policy);
            if let Some(i) = pick {
                nodes[i].allocated = nodes[i].allocated.saturating_add(r.resources);
            }
            run.picks.push(pick);
        }
        let dt = t.elapsed();
        run.total += dt;
        run.decile_time.push(dt);
        run.decile_fill.push(fill(&nodes));
    }
    run
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn us_per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let mut n_nodes = 10_000;
    let mut n_reqs = 100_000;
    let mut naive = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--nodes" => n_nodes = args.next().and_then(|v| v.parse().ok()).expect("--nodes N"),
            "--requests" => {
                n_reqs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--requests N")
            }
            "--skip-naive" => naive = false,
            _ => {} // `cargo bench` passes `--bench`
        }
    }

    let mut rng = Rng(SEED);
    let nodes = make_nodes(n_nodes, &mut rng);
    let reqs = make_requests(n_reqs, &mut rng);
    let chunk_lens: Vec<usize> = chunks(&reqs).map(<[Request]>::len).collect();

    println!("## nimbus-sched placement benchmark\n");
    println!(
        "{n_nodes} nodes (16-64 cores, 64-256 GiB, 0.5-2 TiB disk; two driver sets), \
         {n_reqs} requests ({} shapes from 0.25 cpu / 1 GiB to 16 cpu / 64 GiB, 10-50 GiB disk), \
         seed {SEED:#x}, one thread, {} build.",
        SHAPES.len(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "`placements/s` is over all requests, placed or not, and excludes the index build \
         (own column); index failures include writing the explanation, naive ones do not.\n"
    );

    let mut summary = Vec::new();
    let mut decile_cols: Vec<(String, Vec<f64>)> = Vec::new();
    let mut fills: Vec<(PlacementPolicy, Vec<(f64, f64)>)> = Vec::new();
    for policy in PlacementPolicy::ALL {
        let (idx, build) = run_index(&nodes, &reqs, policy);
        let placed = idx.picks.iter().filter(|p| p.is_some()).count();
        let idx_rate = per_sec(n_reqs, idx.total);
        let us: Vec<f64> = idx
            .decile_time
            .iter()
            .zip(&chunk_lens)
            .map(|(d, &n)| us_per(*d, n))
            .collect();
        decile_cols.push((format!("{policy} index"), us));
        fills.push((policy, idx.decile_fill.clone()));
        let mut row = vec![
            policy.to_string(),
            "index".to_string(),
            placed.to_string(),
            (n_reqs - placed).to_string(),
            format!("{:.1}", build.as_secs_f64() * 1e3),
            format!("{:.1}", idx.total.as_secs_f64() * 1e3),
            format!("{idx_rate:.0}"),
            String::new(),
        ];
        if naive {
            let lin = run_naive(&nodes, &reqs, policy);
            assert_eq!(
                idx.picks, lin.picks,
                "{policy}: index and linear scan disagree"
            );
            let lin_rate = per_sec(n_reqs, lin.total);
            row[7] = format!("{:.0}x", idx_rate / lin_rate);
            summary.push(row);
            summary.push(vec![
                policy.to_string(),
                "naive scan".to_string(),
                placed.to_string(),
                (n_reqs - placed).to_string(),
                "-".to_string(),
                format!("{:.1}", lin.total.as_secs_f64() * 1e3),
                format!("{lin_rate:.0}"),
                "1x".to_string(),
            ]);
            let us: Vec<f64> = lin
                .decile_time
                .iter()
                .zip(&chunk_lens)
                .map(|(d, &n)| us_per(*d, n))
                .collect();
            decile_cols.push((format!("{policy} naive"), us));
        } else {
            summary.push(row);
        }
    }

    println!("| policy | impl | placed | unplaced | index build ms | total ms | placements/s | speedup |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for row in &summary {
        println!("| {} |", row.join(" | "));
    }
    if naive {
        println!("\nEvery placement of the index matched the naive scan's choice.");
    }

    println!("\n### Mean µs per placement, by decile of the run (cpu / memory fill at the decile's end)\n");
    let mut header = "| decile |".to_string();
    let mut rule = "|---|".to_string();
    for (policy, _) in &fills {
        header += &format!(" {policy} fill |");
        rule += "---:|";
    }
    for (name, _) in &decile_cols {
        header += &format!(" {name} |");
        rule += "---:|";
    }
    println!("{header}\n{rule}");
    for d in 0..chunk_lens.len() {
        let mut line = format!("| {} |", d + 1);
        for (_, f) in &fills {
            line += &format!(" {:.0}% / {:.0}% |", f[d].0, f[d].1);
        }
        for (_, us) in &decile_cols {
            line += &format!(" {:.2} |", us[d]);
        }
        println!("{line}");
    }
}
