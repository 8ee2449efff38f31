//! The long-running roles: `nimbus up` (server + local agent), `nimbus server`,
//! `nimbus agent`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nimbus_agent::{AgentConfig, DriverMode};
use nimbus_sched::{PlacementPolicy, QueuePolicy, SchedulerConfig};
use nimbus_server::ServerConfig;

use crate::cli::{NodeOptions, ServerOptions};

pub fn server_config(o: &ServerOptions, data_dir: &Path) -> Result<ServerConfig> {
    let placement: PlacementPolicy = o
        .placement
        .parse()
        .map_err(|e| anyhow!("--placement: {e}"))?;
    let queue: QueuePolicy = o.queue.parse().map_err(|e| anyhow!("--queue: {e}"))?;
    let secs = |v: f64, flag: &str| -> Result<Duration> {
        if v.is_finite() && v > 0.0 && v < 1e9 {
            Ok(Duration::from_secs_f64(v))
        } else {
            bail!("{flag} must be a positive number of seconds, got {v}")
        }
    };
    let down_after = secs(o.node_down_after, "--node-down-after")?;
    let suspect_after = match o.node_suspect_after {
        Some(v) => secs(v, "--node-suspect-after")?,
        None => down_after / 2,
    };
    if suspect_after >= down_after {
        bail!(
            "--node-suspect-after ({}s) must be shorter than --node-down-after ({}s)",
            suspect_after.as_secs_f64(),
            down_after.as_secs_f64()
        );
    }
    Ok(ServerConfig {
        listen: o.listen,
        data_dir: data_dir.to_path_buf(),
        scheduler: SchedulerConfig {
            placement,
            queue,
            backfill: !o.no_backfill,
            ..SchedulerConfig::default()
        },
        liveness: nimbus_server::recovery::LivenessConfig {
            suspect_after,
            down_after,
            // 0 turns the probation off (benchmarks that crash nodes over and over).
            probation: if o.node_probation == 0.0 {
                Duration::ZERO
            } else {
                secs(o.node_probation, "--node-probation")?
            },
        },
    })
}

fn parse_labels(items: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| anyhow!("{what} {kv:?} is not of the form key=value"))?;
            if k.is_empty() {
                bail!("{what} {kv:?} has an empty key");
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

pub fn parse_kv(items: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    parse_labels(items, what)
}

pub fn agent_config(
    o: &NodeOptions,
    server: &str,
    data_dir: &Path,
    address: &str,
) -> Result<AgentConfig> {
    let name = o
        .name
        .clone()
        .unwrap_or_else(nimbus_agent::capacity::default_node_name);
    nimbus_api::validate_name("node", &name).map_err(|e| anyhow!("--name: {e}"))?;
    let cpu_millis = o
        .cpus
        .as_deref()
        .map(nimbus_api::units::parse_cpu_millis)
        .transpose()
        .map_err(|e| anyhow!("--cpus: {e}"))?;
    let memory_mib = o
        .memory
        .as_deref()
        .map(nimbus_api::units::parse_memory_mib)
        .transpose()
        .map_err(|e| anyhow!("--memory: {e}"))?;
    let disk_mib = o
        .disk
        .as_deref()
        .map(nimbus_api::units::parse_memory_mib)
        .transpose()
        .map_err(|e| anyhow!("--disk: {e}"))?;
    if !(o.heartbeat_every.is_finite() && o.heartbeat_every > 0.0) {
        bail!("--heartbeat-every must be a positive number of seconds");
    }
    Ok(AgentConfig {
        server: server.to_string(),
        name,
        address: address.to_string(),
        data_dir: absolute(data_dir)?,
        cpu_millis,
        memory_mib,
        disk_mib,
        labels: parse_labels(&o.labels, "--labels")?,
        heartbeat_every: Duration::from_secs_f64(o.heartbeat_every),
        stop_grace: Duration::from_secs(5),
        drivers: if o.sim {
            DriverMode::Sim
        } else {
            DriverMode::Real
        },
        accelerator: match o.accel.as_deref() {
            None => None,
            Some(a @ ("kvm" | "tcg")) => Some(a.to_string()),
            Some(other) => bail!("--accel {other:?}: use kvm or tcg"),
        },
    })
}

fn absolute(p: &Path) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    p.canonicalize()
        .with_context(|| format!("resolving {}", p.display()))
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIMBUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn run_server(cfg: ServerConfig) -> Result<nimbus_server::RunningServer> {
    nimbus_server::start(cfg).await.map_err(|e| anyhow!("{e}"))
}

pub async fn up(server: &ServerOptions, node: &NodeOptions) -> Result<i32> {
    init_tracing();
    let root = absolute(&server.data_dir)?;
    let scfg = server_config(server, &root.join("server"))?;
    let running = run_server(scfg).await?;
    let url = format!("http://{}", running.addr);
    let acfg = agent_config(node, &url, &root.join("agent"), &running.addr.to_string())?;
    eprintln!(
        "nimbus is up: API on {url}, node {:?}, data in {}\n  try: nimbus instance create web --memory 64Mi --cpu 0.5 -- python3 -m http.server 9000",
        acfg.name,
        root.display()
    );
    tokio::select! {
        r = nimbus_agent::run(acfg) => r.map_err(|e| anyhow!("agent: {e}"))?,
        r = running.serve => r.context("server task")?.context("server")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(0)
}

pub async fn server(o: &ServerOptions) -> Result<i32> {
    init_tracing();
    let root = absolute(&o.data_dir)?;
    let running = run_server(server_config(o, &root)?).await?;
    tokio::select! {
        r = running.serve => r.context("server task")?.context("server")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(0)
}

pub async fn agent(
    node: &NodeOptions,
    server: &str,
    data_dir: &Path,
    address: &str,
) -> Result<i32> {
    init_tracing();
    let cfg = agent_config(node, server, data_dir, address)?;
    tokio::select! {
        r = nimbus_agent::run(cfg) => r.map_err(|e| anyhow!("agent: {e}"))?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(0)
}
