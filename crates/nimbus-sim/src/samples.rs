//! The small sample traces shipped in `examples/sim/` (no download needed), generated
//! here from a fixed seed; a test checks the shipped files are exactly this output.
//!
//! - `sample-azure.csv`: the Azure public VM trace's `vmtable` columns, with a header.
//! - `sample-google-task-events.csv`: Google cluster-data 2011 `task_events` columns,
//!   with a header.

use std::fmt::Write as _;

use rand::distributions::{Distribution, WeightedIndex};
use rand::Rng as _;
use rand_distr::{Exp, LogNormal};

use crate::rng::{stream, Rng};
use crate::trace::{AZURE_COLUMNS, GOOGLE_COLUMNS};

/// Seed of the shipped samples.
pub const SAMPLE_SEED: u64 = 2024;

fn id(rng: &mut Rng, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn weighted<T: Copy>(rng: &mut Rng, items: &[(T, f64)]) -> T {
    match WeightedIndex::new(items.iter().map(|i| i.1)) {
        Ok(w) => items[w.sample(rng)].0,
        Err(_) => items[0].0,
    }
}

/// An Azure-like VM table: `vms` VMs created over one day at 5-minute granularity
/// (as in the public trace), lognormal lifetimes (median 1 h), the trace's core and
/// memory buckets and VM categories.
pub fn azure_sample(vms: usize, seed: u64) -> String {
    let mut rng = stream(seed, "sample-azure", 0);
    let day = 86_400.0;
    let end = 2.0 * day;
    let rate = vms as f64 / day;
    let gap = Exp::new(rate).unwrap_or_else(|_| Exp::new(1.0).expect("1 is a valid rate"));
    let life = LogNormal::new(3600f64.ln(), 1.6)
        .unwrap_or_else(|_| LogNormal::new(0.0, 1.0).expect("valid"));
    let subs: Vec<String> = (0..12).map(|_| id(&mut rng, 16)).collect();
    let mut out = AZURE_COLUMNS.join(",");
    out.push('\n');
    let mut t = 0.0;
    for _ in 0..vms {
        t += gap.sample(&mut rng);
        let created = (t / 300.0).floor() * 300.0;
        let lifetime = life.sample(&mut rng).clamp(300.0, end);
        let deleted = ((created + lifetime) / 300.0).ceil() * 300.0;
        let deleted = deleted.min(end).max(created + 300.0);
        let cores = weighted(
            &mut rng,
            &[
                ("2", 50.0),
                ("4", 25.0),
                ("8", 15.0),
                ("24", 8.0),
                (">24", 2.0),
            ],
        );
        let mem = match cores {
            "2" => weighted(&mut rng, &[("2", 20.0), ("4", 60.0), ("8", 20.0)]),
            "4" => weighted(&mut rng, &[("8", 70.0), ("32", 30.0)]),
            "8" => weighted(&mut rng, &[("32", 80.0), ("64", 20.0)]),
            "24" => weighted(&mut rng, &[("64", 60.0), (">64", 40.0)]),
            _ => ">64",
        };
        let category = weighted(
            &mut rng,
            &[
                ("Interactive", 30.0),
                ("Delay-insensitive", 40.0),
                ("Unknown", 30.0),
            ],
        );
        let avg: f64 = rng.gen_range(2.0..60.0);
        let p95: f64 = (avg * rng.gen_range(1.1..1.8)).min(100.0);
        let max: f64 = (p95 * rng.gen_range(1.0..1.4)).min(100.0);
        let sub = &subs[rng.gen_range(0..subs.len())];
        let _ = writeln!(
            out,
            "{},{},{},{},{},{:.2},{:.2},{:.2},{},{},{}",
            id(&mut rng, 24),
            sub,
            id(&mut rng, 16),
            created,
            deleted,
            max,
            avg,
            p95,
            category,
            cores,
            mem
        );
    }
    out
}

/// Google-like task events: `jobs` jobs of 1 to 8 tasks submitted over two hours
/// (timestamps in µs from 600 s, as in the trace), each task SUBMIT, SCHEDULE and then
/// FINISH, FAIL, KILL or EVICT; some tasks are killed before they are scheduled.
pub fn google_sample(jobs: usize, seed: u64) -> String {
    let mut rng = stream(seed, "sample-google", 0);
    let gap = Exp::new(jobs as f64 / 7200.0)
        .unwrap_or_else(|_| Exp::new(1.0).expect("1 is a valid rate"));
    let run = LogNormal::new(300f64.ln(), 1.2)
        .unwrap_or_else(|_| LogNormal::new(0.0, 1.0).expect("valid"));
    let users: Vec<String> = (0..6).map(|_| id(&mut rng, 12)).collect();
    let mut events: Vec<(u64, u64, String)> = Vec::new();
    let mut t = 600.0;
    let mut order = 0u64;
    for j in 0..jobs {
        t += gap.sample(&mut rng);
        let job_id = 6_000_000_000u64 + 1000 * j as u64 + rng.gen_range(0..1000);
        let tasks = rng.gen_range(1..=8);
        let user = &users[rng.gen_range(0..users.len())];
        let class = rng.gen_range(0..4);
        let priority = weighted(
            &mut rng,
            &[
                (0, 30.0),
                (1, 10.0),
                (2, 10.0),
                (4, 20.0),
                (9, 25.0),
                (11, 5.0),
            ],
        );
        let cpu = weighted(
            &mut rng,
            &[
                (0.0125, 30.0),
                (0.025, 30.0),
                (0.0625, 25.0),
                (0.125, 10.0),
                (0.25, 5.0),
            ],
        );
        let mem = cpu * rng.gen_range(0.5..2.5);
        let machine = |rng: &mut Rng| 300_000_000 + rng.gen_range(0..50_000u64);
        for task in 0..tasks {
            let submit = t + rng.gen_range(0.0..2.0);
            let mut row = |time: f64, machine: Option<u64>, event: u8, with_request: bool| {
                let us = (time * 1e6).round() as u64;
                let req = if with_request {
                    format!("{cpu},{mem:.5},0.0001")
                } else {
                    ",,".to_string()
                };
                let m = machine.map_or(String::new(), |m| m.to_string());
                order += 1;
                events.push((
                    us,
                    order,
                    format!("{us},,{job_id},{task},{m},{event},{user},{class},{priority},{req},0"),
                ));
            };
            row(submit, None, 0, true);
            if rng.gen_bool(0.05) {
                row(submit + rng.gen_range(1.0..60.0), None, 5, false);
                continue;
            }
            let start = submit + rng.gen_range(0.5..20.0);
            let m = machine(&mut rng);
            row(start, Some(m), 1, true);
            let end = start + run.sample(&mut rng).clamp(1.0, 6.0 * 3600.0);
            let how = weighted(&mut rng, &[(4u8, 80.0), (3, 6.0), (5, 10.0), (2, 4.0)]);
            row(end, Some(m), how, false);
        }
    }
    events.sort();
    let mut out = GOOGLE_COLUMNS.join(",");
    out.push('\n');
    for (_, _, line) in events {
        out.push_str(&line);
        out.push('\n');
    }
    out
}
