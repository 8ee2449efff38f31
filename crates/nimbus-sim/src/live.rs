//! The live cluster in the simulator: starting a run from a snapshot of the live
//! cluster's nodes and instances (`sim run --from-cluster`), and replaying create
//! requests through `nimbus_sched::schedule` exactly as the server does (for the
//! live/sim agreement test).

use nimbus_sched::{schedule, NodeInfo, Request, Resources, SchedulerConfig};
use serde::{Deserialize, Serialize};

use crate::engine::{simulate, RunOptions};
use crate::error::SimError;
use crate::model::{Execution, HostSpec, Job, PolicySpec, PowerModel, Settings, Sim};

/// An instance running on the live cluster when the snapshot was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveInstance {
    pub name: String,
    /// The node it runs on (a name in [`ClusterSnapshot::nodes`]).
    pub node: String,
    pub resources: Resources,
    pub priority: i32,
    /// How much longer it will run (e.g. its expected runtime minus its age); `None`:
    /// it runs until the horizon.
    pub remaining_s: Option<f64>,
}

/// The live cluster as the server's scheduler loop sees it.
///
/// `nodes` and `pending` are what `nimbus_server::reconcile::snapshot` returns (nodes with
/// their allocations, pending instances as requests); `running` lists the instances that
/// hold resources (scheduled, starting, running, stopping) so the simulator can release
/// them when they end. Allocation on a node beyond its `running` instances is kept as
/// permanent background load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterSnapshot {
    pub nodes: Vec<NodeInfo>,
    pub running: Vec<LiveInstance>,
    pub pending: Vec<Request>,
}

impl ClusterSnapshot {
    /// Hosts (sorted by name, the server's node order) and the jobs at time 0: running
    /// instances placed where they run, then pending ones in queue order (their duration
    /// is the declared runtime, or forever without one).
    pub fn hosts_and_jobs(&self, power: PowerModel) -> Result<(Vec<HostSpec>, Vec<Job>), SimError> {
        let mut nodes = self.nodes.clone();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = nodes.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(SimError::Usage(format!(
                "the cluster snapshot lists node {:?} twice",
                w[0].name
            )));
        }
        let mut jobs = Vec::new();
        for inst in &self.running {
            let Ok(i) = nodes.binary_search_by(|n| n.name.as_str().cmp(&inst.node)) else {
                return Err(SimError::Usage(format!(
                    "instance {:?} runs on node {:?}, which is not in the snapshot",
                    inst.name, inst.node
                )));
            };
            let node = &mut nodes[i];
            node.allocated = node.allocated.saturating_sub(inst.resources);
            let remaining = inst
                .remaining_s
                .filter(|r| r.is_finite())
                .map_or(f64::INFINITY, |r| r.max(0.0));
            jobs.push(Job {
                arrival_s: 0.0,
                duration_s: remaining,
                resources: inst.resources,
                cpu_demand_millis: inst.resources.cpu_millis,
                priority: inst.priority,
                declared_runtime_secs: None,
                initial_host: Some(i as u32),
            });
        }
        let mut pending = self.pending.clone();
        pending.sort_by_key(|r| r.queue_seq);
        for r in pending {
            jobs.push(Job {
                arrival_s: 0.0,
                duration_s: r.expected_runtime_secs.map_or(f64::INFINITY, |s| s as f64),
                resources: r.resources,
                cpu_demand_millis: r.resources.cpu_millis,
                priority: r.priority,
                declared_runtime_secs: r.expected_runtime_secs,
                initial_host: None,
            });
        }
        let hosts = nodes
            .into_iter()
            .map(|node| HostSpec {
                node,
                group: "live".into(),
                power,
                failures: None,
            })
            .collect();
        Ok((hosts, jobs))
    }
}

/// Places `requests` one at a time, in order, each as one `nimbus_sched::schedule` pass
/// over the current nodes (with the allocations of the placements before it), exactly
/// as the live server places one create per pass. Returns each request's node, or
/// `None` when it did not fit (an unplaced request takes no capacity and is not retried).
///
/// `now_ms` of each pass is the request's `queued_at_ms`.
pub fn replay_placements(
    nodes: Vec<NodeInfo>,
    requests: Vec<Request>,
    cfg: &SchedulerConfig,
) -> Vec<Option<String>> {
    let mut nodes = nodes;
    let mut out = Vec::with_capacity(requests.len());
    for req in requests {
        let (now_ms, res) = (req.queued_at_ms, req.resources);
        let plan = schedule(nodes.clone(), vec![req], cfg, now_ms);
        let node = plan.placements.into_iter().next().map(|p| p.node);
        if let Some(name) = &node {
            if let Some(n) = nodes.iter_mut().find(|n| &n.name == name) {
                n.allocated = n.allocated.saturating_add(res);
            }
        }
        out.push(node);
    }
    out
}

/// The simulator's own placements for `requests` arriving one per second in order on
/// `nodes` (each running forever, space-shared, under `cfg`): the engine's incremental
/// path, for comparison with [`replay_placements`]. Drivers and node selectors of the
/// requests are not modelled by the simulator and are ignored; a request that does not
/// fit when it arrives stays queued and, since nothing ever ends, is never placed.
pub fn sim_placements(
    nodes: Vec<NodeInfo>,
    requests: Vec<Request>,
    cfg: &SchedulerConfig,
) -> Vec<Option<String>> {
    let n = requests.len();
    let jobs = requests
        .iter()
        .enumerate()
        .map(|(i, r)| Job {
            arrival_s: (i + 1) as f64,
            duration_s: f64::INFINITY,
            resources: r.resources,
            cpu_demand_millis: r.resources.cpu_millis,
            priority: r.priority,
            declared_runtime_secs: r.expected_runtime_secs,
            initial_host: None,
        })
        .collect();
    let hosts = nodes
        .into_iter()
        .map(|node| HostSpec {
            node,
            group: "live".into(),
            power: PowerModel::default(),
            failures: None,
        })
        .collect();
    let policy = PolicySpec {
        name: "replay".into(),
        scheduler: cfg.clone(),
        execution: Execution::SpaceShared,
    };
    let sim = Sim {
        name: "replay".into(),
        seed: 0,
        hosts,
        jobs,
        policies: vec![policy.clone()],
        settings: Settings {
            horizon_s: Some((n + 1) as f64),
            ..Settings::default()
        },
        workload_source: "requests".into(),
    };
    let opts = RunOptions {
        record_placements: true,
        ..RunOptions::default()
    };
    let r = simulate(&sim, &policy, &opts);
    let mut out = vec![None; n];
    for (j, node) in r.placements {
        if let Some(slot) = out.get_mut(j as usize) {
            *slot = Some(node);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_sched::PlacementPolicy;

    fn node(name: &str, cpu: u64, mem: u64) -> NodeInfo {
        NodeInfo::new(
            name,
            Resources::new(cpu * 1000, mem * 1024, 0),
            &["process"],
        )
    }

    #[test]
    fn replay_sees_earlier_placements() {
        let nodes = vec![node("a", 4, 8), node("b", 8, 16)];
        let reqs: Vec<Request> = [6, 6, 6, 6]
            .iter()
            .enumerate()
            .map(|(i, gib)| {
                Request::new(
                    format!("r{i}"),
                    Resources::new(1000, gib * 1024, 0),
                    "process",
                )
            })
            .collect();
        let cfg = SchedulerConfig {
            placement: PlacementPolicy::BestFit,
            ..SchedulerConfig::default()
        };
        let got = replay_placements(nodes, reqs, &cfg);
        assert_eq!(
            got,
            [
                Some("a".to_string()),
                Some("b".to_string()),
                Some("b".to_string()),
                None
            ]
        );
    }

    #[test]
    fn snapshot_keeps_background_load() {
        let mut a = node("a", 4, 8);
        a.allocated = Resources::new(3000, 6 * 1024, 0);
        let snap = ClusterSnapshot {
            nodes: vec![node("b", 4, 8), a],
            running: vec![LiveInstance {
                name: "web".into(),
                node: "a".into(),
                resources: Resources::new(2000, 4096, 0),
                priority: 0,
                remaining_s: Some(60.0),
            }],
            pending: vec![Request::new("p", Resources::new(500, 512, 0), "process")],
        };
        let (hosts, jobs) = snap.hosts_and_jobs(PowerModel::default()).unwrap();
        assert_eq!(hosts[0].node.name, "a");
        assert_eq!(hosts[0].node.allocated, Resources::new(1000, 2048, 0));
        assert_eq!(jobs[0].initial_host, Some(0));
        assert_eq!(jobs[0].duration_s, 60.0);
        assert!(jobs[1].duration_s.is_infinite());
        let bad = ClusterSnapshot {
            running: vec![LiveInstance {
                node: "zz".into(),
                ..snap.running[0].clone()
            }],
            ..snap
        };
        assert!(bad.hosts_and_jobs(PowerModel::default()).is_err());
    }
}
