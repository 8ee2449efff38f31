//! `nimbus sim ...`: runs the simulator crate; `--from-cluster` snapshots the live
//! cluster through the API the same way the server's scheduler loop sees it.

use anyhow::{anyhow, Result};
use nimbus_sim::cli::{ReportArgs, SimArgs};
use nimbus_sim::live::{ClusterSnapshot, LiveInstance};

use crate::cli::SimCommand;
use crate::client::ApiClient;

pub async fn run(api: &ApiClient, c: SimCommand) -> Result<i32> {
    match c {
        SimCommand::Run {
            scenario,
            trace,
            format,
            from_cluster,
            out,
            seed,
            threads,
            quiet,
        } => {
            let mut args = SimArgs::new(scenario);
            args.trace = trace;
            args.format = format
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e: String| anyhow!("--format: {e}"))?;
            args.out = out;
            args.seed = seed;
            args.threads = threads;
            args.quiet = quiet;
            if from_cluster {
                args.from_cluster = Some(snapshot(api).await?);
            }
            tokio::task::spawn_blocking(move || nimbus_sim::cli::run_cli(args))
                .await
                .map_err(|e| anyhow!("simulator: {e}"))??;
        }
        SimCommand::Report { dir, open } => {
            tokio::task::spawn_blocking(move || {
                nimbus_sim::cli::report_cli(ReportArgs { dir, open })
            })
            .await
            .map_err(|e| anyhow!("simulator: {e}"))??;
        }
    }
    Ok(0)
}

/// The live cluster as the scheduler loop sees it (same conversion code).
async fn snapshot(api: &ApiClient) -> Result<ClusterSnapshot> {
    let instances = api.list_instances(None, None).await?;
    let nodes = api.list_nodes().await?;
    let (nodes_info, pending) = nimbus_server::reconcile::snapshot(&nodes, &instances);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let running = instances
        .iter()
        .filter(|i| i.holds_resources())
        .filter_map(|i| {
            let r = nimbus_api::Resources::from(&i.spec);
            Some(LiveInstance {
                name: i.name.clone(),
                node: i.node.clone()?,
                resources: nimbus_sched::Resources::new(r.cpu_millis, r.memory_mib, r.disk_mib),
                priority: i.spec.priority,
                remaining_s: i.spec.expected_runtime_secs.map(|s| {
                    let age = now.saturating_sub(i.created_at_ms) as f64 / 1000.0;
                    (s as f64 - age).max(0.0)
                }),
            })
        })
        .collect();
    Ok(ClusterSnapshot {
        nodes: nodes_info,
        running,
        pending,
    })
}
