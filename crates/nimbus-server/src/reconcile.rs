//! The scheduler loop: places pending instances with `nimbus-sched` (node liveness
//! and recovery are in `recovery`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_api::{DesiredState, Instance, InstanceState, Node, NodeState, Resources};
use nimbus_sched::{NodeInfo, Request, SchedulerConfig};

use crate::cluster::{now_ms, Cluster};
use crate::metrics::Metrics;

/// Label every node carries implicitly: its own name. A VM returning to the node
/// that holds its disk selects on it.
pub const NODE_LABEL: &str = "nimbus/node";

fn sched_resources(r: Resources) -> nimbus_sched::Resources {
    nimbus_sched::Resources {
        cpu_millis: r.cpu_millis,
        memory_mib: r.memory_mib,
        disk_mib: r.disk_mib,
    }
}

/// Builds the scheduler's read-only view of the cluster.
pub fn snapshot(nodes: &[Node], instances: &[Instance]) -> (Vec<NodeInfo>, Vec<Request>) {
    let node_infos = nodes
        .iter()
        .map(|n| NodeInfo {
            name: n.name.clone(),
            capacity: sched_resources(n.capacity),
            allocated: sched_resources(n.allocated),
            labels: {
                let mut l = n.labels.clone();
                l.insert(NODE_LABEL.to_string(), n.name.clone());
                l
            },
            drivers: n.drivers.clone(),
            schedulable: n.state == NodeState::Ready,
        })
        .collect();
    let pending = instances
        .iter()
        .filter(|i| i.state == InstanceState::Pending && i.desired == DesiredState::Running)
        .map(request_for)
        .collect();
    (node_infos, pending)
}

/// What the scheduler is asked to place for an instance.
pub fn request_for(i: &Instance) -> Request {
    Request {
        id: i.name.clone(),
        resources: sched_resources(Resources::from(&i.spec)),
        driver: i.spec.kind.driver().to_string(),
        node_selector: {
            let mut sel = i.spec.node_selector.clone();
            if let Some(home) = i.home_node() {
                sel.insert(NODE_LABEL.to_string(), home.to_string());
            }
            sel
        },
        priority: i.spec.priority,
        expected_runtime_secs: i.spec.expected_runtime_secs,
        queue_seq: i.queue_seq,
        queued_at_ms: i.queued_at_ms,
    }
}

/// One scheduling pass: read, plan (pure), write the decisions. Returns how many
/// instances were placed.
pub fn schedule_pass(cluster: &Cluster, cfg: &SchedulerConfig, metrics: &Metrics) -> usize {
    let instances = match cluster.all_instances() {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "scheduler: cannot read instances");
            return 0;
        }
    };
    let nodes = match cluster.all_nodes_with(&instances) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "scheduler: cannot read nodes");
            return 0;
        }
    };
    let (node_infos, pending) = snapshot(&nodes, &instances);
    metrics.pending.set(pending.len() as i64);
    if pending.is_empty() {
        return 0;
    }
    let started = Instant::now();
    let plan = nimbus_sched::schedule(node_infos, pending, cfg, now_ms());
    metrics
        .scheduler_latency
        .observe(started.elapsed().as_secs_f64());

    let mut placed = 0;
    for p in &plan.placements {
        let res = cluster.modify_instance(&p.request_id, |inst| {
            if inst.state != InstanceState::Pending || inst.desired != DesiredState::Running {
                return Ok(false);
            }
            inst.state = InstanceState::Pending
                .transition(InstanceState::Scheduled)
                .map_err(|e| crate::error::ServerError::Internal(e.to_string()))?;
            inst.node = Some(p.node.clone());
            inst.generation += 1;
            inst.reason = None;
            inst.pid = None;
            inst.exit_code = None;
            Ok(true)
        });
        match res {
            Ok(inst) if inst.state == InstanceState::Scheduled => {
                placed += 1;
                cluster.event(
                    "instance_scheduled",
                    "instance",
                    &inst.name,
                    format!("placed on node {} (generation {})", p.node, inst.generation),
                );
            }
            Ok(_) => {}
            Err(crate::error::ServerError::NotFound { .. }) => {}
            Err(e) => tracing::warn!(instance = %p.request_id, error = %e, "placement not written"),
        }
    }
    for (id, why) in &plan.unplaced {
        let reason = why.reason.clone();
        let res = cluster.modify_instance(id, |inst| {
            if inst.state != InstanceState::Pending || inst.reason.as_deref() == Some(&reason) {
                return Ok(false);
            }
            inst.reason = Some(reason.clone());
            Ok(true)
        });
        if let Err(e) = res {
            if !matches!(e, crate::error::ServerError::NotFound { .. }) {
                tracing::warn!(instance = %id, error = %e, "pending reason not written");
            }
        }
    }
    metrics.pending.set(plan.unplaced.len() as i64);
    placed
}

/// Runs the scheduler whenever something changed, and at least every second.
pub async fn scheduler_loop(cluster: Arc<Cluster>, cfg: SchedulerConfig, metrics: Arc<Metrics>) {
    loop {
        let _ = tokio::time::timeout(Duration::from_secs(1), cluster.schedule_now.notified()).await;
        let c = cluster.clone();
        let cfg2 = cfg.clone();
        let m = metrics.clone();
        let _ = tokio::task::spawn_blocking(move || {
            schedule_pass(&c, &cfg2, &m);
            if let Err(e) = c.standby_pass() {
                tracing::warn!(error = %e, "standby pass failed");
            }
        })
        .await;
    }
}
