//! API create-instance throughput and latency (32 concurrent clients) against a real
//! `nimbus up --sim`, and the time until every instance is running.
//! Run: `cargo bench -p nimbus --bench api_create` (env `BENCH_CREATES=N`, default 4000).
//!
//! The benchmark starts the real binary as
//! `nimbus up --listen 127.0.0.1:0 --data-dir <tempdir> --name bench --sim --cpus 4096
//! --memory 60Ti` (4096 cores and 64 Ti are the largest capacities `nimbus` accepts; at
//! 0.1 cpu per instance one node holds 40,960 instances). The simulated driver starts no
//! processes, so this measures the control plane: HTTP, the SQLite store with an fsync
//! per commit, the scheduler loop and the agent protocol. It learns the address from the
//! `listening addr=...` log line, waits for node `bench` to be ready, and then:
//!
//! 1. 32 tokio tasks POST `/v1/instances` until `BENCH_CREATES` creates are done; every
//!    answer must be 201 (anything else is counted as an error; more than 1% aborts).
//!    Reported: wall time, creates/s, per-request latency p50/p90/p99/max.
//! 2. Polls `GET /v1/instances?state=pending` and `?state=running` (`limit=1000`, paging
//!    with `after=next`) every 250 ms until none is pending ("time to all placed": the
//!    scheduler) and all are running ("time to all running": scheduler and agent).
//!
//! It also prints the fsync latency of the disk under the data directory (every API write
//! waits for one) and the server's own request counts and mean durations per route,
//! from `/metrics`. Without `--bench` (e.g. `cargo test --benches`) it runs a 100-create
//! smoke pass. Other knob: `BENCH_RUNNING_TIMEOUT_SECS` (default 600).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");
const CLIENTS: usize = 32;
const DEFAULT_CREATES: usize = 4000;
const SMOKE_CREATES: usize = 100;
const NODE: &str = "bench";
/// Node capacity given to `nimbus up` (the largest it accepts) and asked per instance.
const NODE_CPUS: u64 = 4096;
const CPU_MILLIS: u64 = 100;
const PAGE: usize = 1000;
const POLL_EVERY: Duration = Duration::from_millis(250);
/// Lines of the server's log kept for diagnostics.
const LOG_TAIL: usize = 40;

/// The `nimbus up` child; killed (SIGKILL) and reaped when dropped, also on panic.
struct ServerGuard {
    child: Child,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the stderr reader thread has seen of the server's log.
#[derive(Default)]
struct LogState {
    tail: Vec<String>,
    warnings: usize,
    errors: usize,
}

fn env_usize(name: &str) -> Result<Option<usize>> {
    match std::env::var(name) {
        Ok(v) => {
            Ok(Some(v.trim().parse().with_context(|| {
                format!("{name}={v:?} is not a number")
            })?))
        }
        Err(_) => Ok(None),
    }
}

/// The filesystem type holding `path` (longest mount-point prefix in /proc/self/mounts).
fn fs_type(path: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return "unknown".into();
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, mnt, ty) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mnt)
                .then(|| (mnt.len(), format!("{ty} ({dev} on {mnt})")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, s)| s)
        .unwrap_or_else(|| "unknown".into())
}

/// Median time of a 4 KiB write + fsync in `dir`: the floor under every API write.
fn fsync_probe(dir: &Path) -> Result<Duration> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [0u8; 4096];
    let mut times = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_all()?;
        times.push(t.elapsed());
    }
    drop(f);
    std::fs::remove_file(&path)?;
    times.sort();
    Ok(times[times.len() / 2])
}

/// Starts `nimbus up` and returns it with its base URL once it logs its address.
fn start_server(data_dir: &Path, log: Arc<Mutex<LogState>>) -> Result<(ServerGuard, String)> {
    let mut child = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(["--name", NODE, "--sim", "--cpus", &NODE_CPUS.to_string()])
        .args(["--memory", "60Ti"])
        .env("NIMBUS_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {BIN}"))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let guard = ServerGuard { child };

    // Keep draining stderr for the whole run, or the server blocks on a full pipe.
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("listening") {
                if let Some(addr) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.to_string());
                    }
                }
            }
            let mut st = log.lock().unwrap_or_else(|p| p.into_inner());
            st.warnings += usize::from(line.contains(" WARN "));
            st.errors += usize::from(line.contains(" ERROR "));
            st.tail.push(line);
            if st.tail.len() > LOG_TAIL {
                st.tail.remove(0);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .context("nimbus up did not log `listening addr=...` within 30s")?;
    Ok((guard, format!("http://{addr}")))
}

async fn wait_node_ready(
    http: &reqwest::Client,
    url: &str,
    server: &mut ServerGuard,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        if let Some(status) = server.child.try_wait()? {
            bail!("nimbus up exited ({status}) before node {NODE} was ready");
        }
        match http.get(format!("{url}/v1/nodes/{NODE}")).send().await {
            Ok(resp) => {
                let status = resp.status();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                if status == 200 && body["state"] == "ready" {
                    return Ok(());
                }
                last = format!("{status} {body}");
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("node {NODE} not ready within 30s; last answer: {last}")
}

/// Outcome of one client task.
#[derive(Default)]
struct ClientResult {
    latencies: Vec<Duration>,
    errors: usize,
    /// A few error descriptions, for the report.
    samples: Vec<String>,
}

/// One client: creates instances until the shared counter reaches `total` (or the run
/// has failed beyond repair).
async fn client(
    http: reqwest::Client,
    url: String,
    id: usize,
    next: Arc<AtomicUsize>,
    errors: Arc<AtomicUsize>,
    total: usize,
) -> ClientResult {
    let mut out = ClientResult::default();
    let endpoint = format!("{url}/v1/instances");
    let mut i = 0;
    while next.fetch_add(1, Ordering::Relaxed) < total {
        // More than 1% errors can no longer be undone: stop early.
        if errors.load(Ordering::Relaxed) * 100 > total {
            break;
        }
        let body = serde_json::json!({
            "name": format!("b-{id}-{i}"),
            "spec": {"command": ["sleep", "1"], "cpu_millis": CPU_MILLIS, "memory_mib": 64},
        });
        i += 1;
        let started = Instant::now();
        let res = match http.post(&endpoint).json(&body).send().await {
            Ok(resp) => {
                let status = resp.status();
                match (status.as_u16(), resp.text().await) {
                    (201, Ok(_)) => Ok(()),
                    (_, Ok(t)) => Err(format!(
                        "{status}: {}",
                        t.chars().take(200).collect::<String>()
                    )),
                    (_, Err(e)) => Err(format!("{status}: reading body: {e}")),
                }
            }
            Err(e) => Err(format!("transport: {e}")),
        };
        out.latencies.push(started.elapsed());
        if let Err(e) = res {
            out.errors += 1;
            errors.fetch_add(1, Ordering::Relaxed);
            if out.samples.len() < 3 {
                out.samples.push(e);
            }
        }
    }
    out
}

/// Number of instances in `state` (all of them with `None`), reading every page.
async fn count_instances(http: &reqwest::Client, url: &str, state: Option<&str>) -> Result<usize> {
    let mut n = 0;
    let mut after: Option<String> = None;
    loop {
        let mut req = http
            .get(format!("{url}/v1/instances"))
            .query(&[("limit", PAGE)]);
        if let Some(s) = state {
            req = req.query(&[("state", s)]);
        }
        if let Some(a) = &after {
            req = req.query(&[("after", a)]);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        if status != 200 {
            bail!("list instances: {status} {body}");
        }
        n += body["items"].as_array().map_or(0, Vec::len);
        match body["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return Ok(n),
        }
    }
}

/// Instances per state, for diagnostics.
async fn state_counts(http: &reqwest::Client, url: &str) -> Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut req = http
            .get(format!("{url}/v1/instances"))
            .query(&[("limit", PAGE)]);
        if let Some(a) = &after {
            req = req.query(&[("after", a)]);
        }
        let body: Value = req.send().await?.json().await?;
        for item in body["items"].as_array().into_iter().flatten() {
            let state = item["state"].as_str().unwrap_or("?").to_string();
            *counts.entry(state).or_insert(0) += 1;
        }
        match body["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return Ok(counts),
        }
    }
}

/// Server-side request count and total seconds per `METHOD route status`, from the
/// `nimbus_api_request_duration_seconds` histogram.
async fn server_requests(
    http: &reqwest::Client,
    url: &str,
) -> Result<BTreeMap<String, (u64, f64)>> {
    const METRIC: &str = "nimbus_api_request_duration_seconds";
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let mut out: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(METRIC) else {
            continue;
        };
        let (is_count, rest) = if let Some(r) = rest.strip_prefix("_count{") {
            (true, r)
        } else if let Some(r) = rest.strip_prefix("_sum{") {
            (false, r)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let key = format!("{} {} {}", label("method"), label("route"), label("status"));
        let e = out.entry(key).or_default();
        if is_count {
            e.0 = value.trim().parse().unwrap_or(0);
        } else {
            e.1 = value.trim().parse().unwrap_or(0.0);
        }
    }
    Ok(out)
}

/// Nearest-rank percentile of sorted values, in milliseconds.
fn pct_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let total = env_usize("BENCH_CREATES")?.unwrap_or(if bench_mode {
        DEFAULT_CREATES
    } else {
        SMOKE_CREATES
    });
    let fits = (NODE_CPUS * 1000 / CPU_MILLIS) as usize;
    if total == 0 || total > fits {
        bail!("BENCH_CREATES must be between 1 and {fits} (what one node can hold)");
    }
    let running_timeout =
        Duration::from_secs(env_usize("BENCH_RUNNING_TIMEOUT_SECS")?.unwrap_or(600) as u64);
    let command = match std::env::var("BENCH_CREATES") {
        Ok(v) => format!("BENCH_CREATES={v} cargo bench -p nimbus --bench api_create"),
        Err(_) => "cargo bench -p nimbus --bench api_create".to_string(),
    };

    let dir = tempfile::Builder::new()
        .prefix("nimbus-bench-")
        .tempdir()
        .context("tempdir")?;
    let fsync = fsync_probe(dir.path()).context("fsync probe")?;
    let data_dir = dir.path().join("data");
    let log = Arc::new(Mutex::new(LogState::default()));
    // Declared after `dir`, so it is dropped (server killed) before the directory goes.
    let (mut server, url) = start_server(&data_dir, log.clone())?;
    println!(
        "server: {BIN} up --listen 127.0.0.1:0 --data-dir {} --name {NODE} --sim --cpus \
         {NODE_CPUS} --memory 60Ti  ->  {url}",
        data_dir.display(),
    );
    println!(
        "data dir on {}; 4 KiB write+fsync there: {:.3} ms (median of 200)",
        fs_type(dir.path()),
        fsync.as_secs_f64() * 1e3
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let result = rt.block_on(run(&mut server, &url, total, running_timeout, &command));
    let st = log.lock().unwrap_or_else(|p| p.into_inner());
    if result.is_err() {
        eprintln!(
            "--- last lines of the server log ---\n{}",
            st.tail.join("\n")
        );
    } else {
        println!(
            "server log: {} WARN and {} ERROR lines",
            st.warnings, st.errors
        );
    }
    drop(st);
    drop(server);
    result
}

async fn run(
    server: &mut ServerGuard,
    url: &str,
    total: usize,
    running_timeout: Duration,
    command: &str,
) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .context("http client")?;
    wait_node_ready(&http, url, server).await?;

    // Phase 1: creates.
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(client(
                http.clone(),
                url.to_string(),
                id,
                next.clone(),
                errors.clone(),
                total,
            ))
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    let mut n_errors = 0;
    let mut samples = Vec::new();
    for t in tasks {
        let r = t.await.context("client task panicked")?;
        latencies.extend(r.latencies);
        n_errors += r.errors;
        samples.extend(r.samples);
    }
    let create_wall = t0.elapsed();
    latencies.sort();
    let done = latencies.len();
    let rate = done as f64 / create_wall.as_secs_f64();
    println!(
        "creates: {done} in {:.2}s ({rate:.0}/s), {n_errors} errors",
        create_wall.as_secs_f64()
    );
    for s in samples.iter().take(5) {
        println!("  error: {s}");
    }
    if n_errors * 100 > total {
        bail!("{n_errors} of {done} creates failed (more than 1%): aborting");
    }
    let created = done - n_errors;

    // Phase 2: time until none is pending (placed) and all are running.
    let mut polls = 0;
    let mut placed_at: Option<(Duration, usize)> = None;
    let mut last_progress = Instant::now();
    let running_at = loop {
        polls += 1;
        if placed_at.is_none() && count_instances(&http, url, Some("pending")).await? == 0 {
            placed_at = Some((t0.elapsed(), polls));
        }
        let running = count_instances(&http, url, Some("running")).await?;
        if running >= created {
            break t0.elapsed();
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            eprintln!(
                "  {:.1}s: {running} of {created} running{}",
                t0.elapsed().as_secs_f64(),
                if placed_at.is_some() {
                    ", all placed"
                } else {
                    ""
                }
            );
        }
        if t0.elapsed() > create_wall + running_timeout {
            let counts = state_counts(&http, url).await.unwrap_or_default();
            bail!(
                "only {running} of {created} instances running {:.0}s after the last create; \
                 states: {counts:?}",
                running_timeout.as_secs_f64()
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    };
    let (placed_at, placed_polls) = placed_at.unwrap_or((running_at, polls));
    // Already true at the first poll: only bounded by the end of the creates.
    let bound = |first: bool| if first { "<= " } else { "" };
    let requests = server_requests(&http, url).await.unwrap_or_default();

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("| metric | value |");
    println!("|---|---|");
    println!("| creates | {done} ({CLIENTS} concurrent clients) |");
    println!("| errors (non-201) | {n_errors} |");
    println!("| wall time | {:.2} s |", create_wall.as_secs_f64());
    println!("| creates/s | {rate:.0} |");
    println!("| latency p50 | {:.1} ms |", pct_ms(&latencies, 0.50));
    println!("| latency p90 | {:.1} ms |", pct_ms(&latencies, 0.90));
    println!("| latency p99 | {:.1} ms |", pct_ms(&latencies, 0.99));
    println!(
        "| latency max | {:.1} ms |",
        latencies.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    );
    println!(
        "| time to all placed (from first create) | {}{:.2} s |",
        bound(placed_polls == 1),
        placed_at.as_secs_f64()
    );
    println!(
        "| time to all running (from first create) | {}{:.2} s |",
        bound(polls == 1),
        running_at.as_secs_f64()
    );
    println!(
        "| time to all running (after last create) | {}{:.2} s |",
        bound(polls == 1),
        running_at.saturating_sub(create_wall).as_secs_f64()
    );
    if !requests.is_empty() {
        println!();
        println!("| server side: request | count | mean |");
        println!("|---|---|---|");
        for (route, (count, sum)) in &requests {
            let mean = if *count > 0 { sum / *count as f64 } else { 0.0 };
            println!("| {route} | {count} | {:.1} ms |", mean * 1e3);
        }
    }
    println!();
    println!("machine: {cores} cores; command: `{command}`");
    Ok(())
}
