//! Prometheus metrics of the server: instances by state, node capacity, allocation and
//! state, scheduler decision latency and queue depth, API request latency, and the
//! timings of failure detection and recovery (RTO, RPO).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use nimbus_api::{Instance, InstanceState, Node};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeStateLabel {
    pub node: String,
    pub state: String,
}

/// One recovery measurement: `ha` is the instance's HA policy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HaLabel {
    pub ha: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub method: String,
    pub route: String,
    pub status: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 17))
}

fn recovery_histogram() -> Histogram {
    // 50 ms .. ~27 min
    Histogram::new(exponential_buckets(0.05, 2.0, 16))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// All server metrics and the registry that exposes them.
pub struct Metrics {
    registry: Registry,
    pub instances: Family<StateLabel, Gauge>,
    pub node_cpu_capacity: Family<NodeLabel, Gauge>,
    pub node_cpu_allocated: Family<NodeLabel, Gauge>,
    pub node_memory_capacity: Family<NodeLabel, Gauge>,
    pub node_memory_allocated: Family<NodeLabel, Gauge>,
    pub node_up: Family<NodeLabel, Gauge>,
    pub node_state: Family<NodeStateLabel, Gauge>,
    /// From a node's last heartbeat to the server declaring it down.
    pub detection_seconds: Histogram,
    /// From a node's last heartbeat to an instance of it running elsewhere (RTO).
    pub recovery_seconds: HistogramFamily<HaLabel>,
    /// Cold recovery: age of the backup restored at the failure (RPO).
    pub data_loss_seconds: HistogramFamily<HaLabel>,
    pub pending: Gauge,
    pub scheduler_latency: Histogram,
    pub api_latency: HistogramFamily<RouteLabel>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("nimbus");
        let m = Metrics {
            registry: Registry::default(),
            instances: Family::default(),
            node_cpu_capacity: Family::default(),
            node_cpu_allocated: Family::default(),
            node_memory_capacity: Family::default(),
            node_memory_allocated: Family::default(),
            node_up: Family::default(),
            node_state: Family::default(),
            detection_seconds: recovery_histogram(),
            recovery_seconds: Family::new_with_constructor(recovery_histogram),
            data_loss_seconds: Family::new_with_constructor(recovery_histogram),
            pending: Gauge::default(),
            scheduler_latency: latency_histogram(),
            api_latency: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "instances",
            "Instances by lifecycle state",
            m.instances.clone(),
        );
        registry.register(
            "node_cpu_capacity_millicores",
            "CPU a node offers, in millicores",
            m.node_cpu_capacity.clone(),
        );
        registry.register(
            "node_cpu_allocated_millicores",
            "CPU allocated to instances on a node, in millicores",
            m.node_cpu_allocated.clone(),
        );
        registry.register(
            "node_memory_capacity_bytes",
            "Memory a node offers",
            m.node_memory_capacity.clone(),
        );
        registry.register(
            "node_memory_allocated_bytes",
            "Memory allocated to instances on a node",
            m.node_memory_allocated.clone(),
        );
        registry.register("node_up", "1 when the node is not down", m.node_up.clone());
        registry.register(
            "node_state",
            "1 for the state each node is in (ready, suspect, down, draining)",
            m.node_state.clone(),
        );
        registry.register(
            "node_failure_detection_seconds",
            "From a node's last heartbeat to the server declaring it down",
            m.detection_seconds.clone(),
        );
        registry.register(
            "instance_recovery_seconds",
            "From a failed node's last heartbeat to its instance running on another node (RTO)",
            m.recovery_seconds.clone(),
        );
        registry.register(
            "instance_data_loss_seconds",
            "Cold recovery: age of the restored backup when the node failed (RPO)",
            m.data_loss_seconds.clone(),
        );
        registry.register(
            "scheduler_pending_instances",
            "Instances waiting for placement (queue depth)",
            m.pending.clone(),
        );
        registry.register(
            "scheduler_decision_seconds",
            "Time of one scheduling pass over the pending queue",
            m.scheduler_latency.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "HTTP API request latency",
            m.api_latency.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Refreshes the gauges derived from stored state.
    pub fn refresh(&self, instances: &[Instance], nodes: &[Node]) {
        self.instances.clear();
        for st in InstanceState::ALL {
            if st == InstanceState::Deleted {
                continue;
            }
            let n = instances.iter().filter(|i| i.state == st).count();
            self.instances
                .get_or_create(&StateLabel {
                    state: st.as_str().into(),
                })
                .set(n as i64);
        }
        for f in [
            &self.node_cpu_capacity,
            &self.node_cpu_allocated,
            &self.node_memory_capacity,
            &self.node_memory_allocated,
            &self.node_up,
        ] {
            f.clear();
        }
        self.node_state.clear();
        const MIB: i64 = 1024 * 1024;
        for n in nodes {
            let l = NodeLabel {
                node: n.name.clone(),
            };
            self.node_cpu_capacity
                .get_or_create(&l)
                .set(n.capacity.cpu_millis as i64);
            self.node_cpu_allocated
                .get_or_create(&l)
                .set(n.allocated.cpu_millis as i64);
            self.node_memory_capacity
                .get_or_create(&l)
                .set(n.capacity.memory_mib as i64 * MIB);
            self.node_memory_allocated
                .get_or_create(&l)
                .set(n.allocated.memory_mib as i64 * MIB);
            self.node_up
                .get_or_create(&l)
                .set((n.state != nimbus_api::NodeState::Down) as i64);
            self.node_state
                .get_or_create(&NodeStateLabel {
                    node: n.name.clone(),
                    state: n.state.as_str().into(),
                })
                .set(1);
        }
    }

    /// Renders the Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}
