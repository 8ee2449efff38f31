//! Nodes: registration, capacity, heartbeats carrying observed instance status, and
//! the assignments an agent pulls.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::instance::{DesiredState, InstanceSpec, InstanceState};

/// An amount of each schedulable resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_mib: u64,
    pub disk_mib: u64,
}

impl Resources {
    pub fn saturating_sub(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
            memory_mib: self.memory_mib.saturating_sub(o.memory_mib),
            disk_mib: self.disk_mib.saturating_sub(o.disk_mib),
        }
    }

    pub fn saturating_add(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            memory_mib: self.memory_mib.saturating_add(o.memory_mib),
            disk_mib: self.disk_mib.saturating_add(o.disk_mib),
        }
    }

    /// Whether `need` fits in `self` in every dimension.
    pub fn fits(self, need: Resources) -> bool {
        need.cpu_millis <= self.cpu_millis
            && need.memory_mib <= self.memory_mib
            && need.disk_mib <= self.disk_mib
    }
}

impl From<&InstanceSpec> for Resources {
    /// What the instance costs its node (VM memory includes QEMU's overhead).
    fn from(s: &InstanceSpec) -> Self {
        s.node_resources()
    }
}

/// Whether a node takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Heartbeating and schedulable.
    Ready,
    /// Missed heartbeats (not yet long enough to be down), or back after being down and
    /// not yet trusted again: takes no new instances; its instances stay where they are.
    Suspect,
    /// Heartbeats stopped arriving for longer than the down timeout.
    Down,
    /// Heartbeating but takes no new instances.
    Draining,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Suspect => "suspect",
            NodeState::Down => "down",
            NodeState::Draining => "draining",
        }
    }
}

/// Body of `POST /v1/nodes`: an agent introducing itself (idempotent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterNode {
    pub name: String,
    /// Where the node can be reached by peers, for display.
    #[serde(default)]
    pub address: String,
    pub capacity: Resources,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Drivers the node fingerprinted as working (e.g. `process`).
    #[serde(default)]
    pub drivers: Vec<String>,
    /// Free-form facts from fingerprinting (cgroup version, kernel, ...).
    #[serde(default)]
    pub facts: BTreeMap<String, String>,
}

/// A node as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Node {
    pub name: String,
    pub address: String,
    pub capacity: Resources,
    /// Sum of the resources of instances placed on it (computed on read).
    #[serde(default)]
    pub allocated: Resources,
    pub labels: BTreeMap<String, String>,
    pub drivers: Vec<String>,
    pub facts: BTreeMap<String, String>,
    pub state: NodeState,
    /// Unix ms of the last heartbeat this server received (the registration time until
    /// the first one after a server restart).
    pub last_heartbeat_ms: u64,
    /// Unix ms of the first registration.
    pub registered_at_ms: u64,
    /// While draining: move VMs stopped (backup and restore) rather than live.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain_offline: bool,
    /// Count of instances placed on it (computed on read).
    #[serde(default)]
    pub instances: u32,
    #[serde(default)]
    pub revision: u64,
}

/// One instance as an agent observes it, carried in heartbeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceReport {
    pub name: String,
    /// The generation of the assignment this report is about.
    pub generation: u64,
    pub state: InstanceState,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub will_restart: bool,
    /// Resident memory in bytes, when running.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU time used in nanoseconds, when running.
    #[serde(default)]
    pub cpu_usage_ns: Option<u64>,
    #[serde(default)]
    pub accelerator: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub guest_ready: bool,
    #[serde(default)]
    pub boot_ms: Option<u64>,
    /// VMs: virtual size of the instance's disk in bytes (what a replica must hold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// VMs with `ha = hot`: the synchronous mirror of the disk to the standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorReport>,
    /// The target of a live migration: where it waits for the VM (absent once the
    /// guest runs here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming: Option<crate::instance::MigrationTarget>,
    /// The source of a live migration: how it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationReport>,
}

/// How a live migration ended, as its source reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MigrationReport {
    /// The target's migration stream (`tcp:host:port`) this report is about.
    pub uri: String,
    /// The guest now runs on the target; this node's copy is paused for good.
    pub completed: bool,
    /// Milliseconds the guest was paused for the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Milliseconds from the start of the disk copy to the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
    /// Why it failed (the guest runs on here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The state of a VM's disk mirror to its standby's replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MirrorReport {
    /// The replica's NBD endpoint (`host:port`).
    pub endpoint: String,
    /// Source and replica are in sync: from now on every guest write reaches both
    /// before it completes.
    pub in_sync: bool,
    /// Why the mirror is not running, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A replica this node serves for a hot VM running elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StandbyReport {
    pub instance: String,
    /// The primary's generation the replica was made for.
    pub generation: u64,
    /// Where the replica is served (NBD, `host:port`).
    pub endpoint: String,
}

/// Body of `POST /v1/nodes/{name}/heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    #[serde(default)]
    pub instances: Vec<InstanceReport>,
    /// Replicas this node serves (hot standbys of VMs on other nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standbys: Vec<StandbyReport>,
}

/// One piece of work an agent must run (or stop).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Assignment {
    pub name: String,
    pub spec: InstanceSpec,
    pub generation: u64,
    pub desired: DesiredState,
    pub restart_nonce: u64,
    /// VMs: the image, resolved by the server, so the node can fetch it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<crate::image::Image>,
    /// The image the instance's storage starts from (see `InstanceSpec::disk_image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_image: Option<crate::image::Image>,
    /// Backups asked for and not done yet: the node makes them and reports each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<String>,
    /// Hot VMs: mirror the disk synchronously to this replica (NBD `host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_to: Option<String>,
    /// Hot VMs failed over to this node: boot from the replica this node served.
    #[serde(default)]
    pub boot_from_replica: bool,
    /// Live migration, source side: send the VM to this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate_to: Option<crate::instance::MigrationTarget>,
    /// Live migration, target side: start a QEMU that waits for the VM instead of
    /// booting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming: Option<IncomingMigration>,
}

/// What the target of a live migration needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IncomingMigration {
    /// Virtual size of the VM's disk (an empty one of this size receives the copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// The guest had finished booting on the source.
    #[serde(default)]
    pub guest_ready: bool,
}

/// A replica a node must hold and serve for a hot VM on another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StandbyAssignment {
    pub instance: String,
    /// The primary's generation.
    pub generation: u64,
    /// Virtual size of the primary's disk.
    pub disk_bytes: u64,
}

/// Answer of `GET /v1/nodes/{name}/assignments`: the full set for that node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Assignments {
    /// Store revision the set was read at; pass as `index` to wait for the next change.
    pub index: u64,
    pub assignments: Vec<Assignment>,
    /// Disk images this node should hold a copy of (replication requests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<crate::image::Image>,
    /// Replicas this node serves as the hot standby of VMs on other nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standbys: Vec<StandbyAssignment>,
}

/// One page of `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeList {
    pub items: Vec<Node>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}
