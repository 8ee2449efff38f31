//! The `Driver` seam: how an agent runs one kind of instance. Implementations:
//! [`process::ProcessDriver`] (real: cgroups + a supervising shim) and
//! [`sim::SimDriver`] (in-memory, for tests and benchmarks at scale).

pub(crate) mod cgroup;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod sim;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use nimbus_api::InstanceSpec;
use serde::{Deserialize, Serialize};

/// Name of the combined stdout/stderr log file in a task's directory.
pub const LOG_FILE: &str = "output.log";

/// Errors of a driver operation; the message is shown to users as the instance reason.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The task could not be started (bad command, cgroup setup failure, ...).
    #[error("failed to start: {0}")]
    Start(String),
    /// A cgroup operation failed.
    #[error("cgroup {path}: {message}")]
    Cgroup { path: String, message: String },
    /// Any other IO failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The driver cannot run on this node.
    #[error("driver unavailable: {0}")]
    Unavailable(String),
    /// The operation does not apply to this kind of task.
    #[error("{0}")]
    Unsupported(String),
    /// A QMP exchange with QEMU failed.
    #[error("QMP {socket}: {message}")]
    Qmp { socket: String, message: String },
}

/// What fingerprinting found: whether the driver works here and facts about the node.
#[derive(Debug, Clone, Default)]
pub struct Fingerprint {
    pub available: bool,
    pub facts: BTreeMap<String, String>,
}

/// The task's data directory inside its task directory: the working directory of a
/// process (and `$NIMBUS_INSTANCE_DATA`), what its backups hold and its restores unpack.
pub const DATA_DIR: &str = "data";

/// Where a VM's disk is mirrored to: an NBD export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorTarget {
    pub host: String,
    pub port: u16,
    pub export: String,
}

impl std::str::FromStr for MirrorTarget {
    type Err = String;
    /// `host:port/export`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("mirror target {s:?} is not HOST:PORT/EXPORT");
        let (addr, export) = s.split_once('/').ok_or_else(bad)?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        Ok(MirrorTarget {
            host: host.to_string(),
            port: port.parse().map_err(|_| bad())?,
            export: export.to_string(),
        })
    }
}

/// Everything a driver needs to start one task.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// Instance name; unique on the node.
    pub name: String,
    pub generation: u64,
    pub spec: InstanceSpec,
    /// A directory owned by this task (status files, working dir). The driver writes
    /// the task's stdout and stderr, interleaved, to [`LOG_FILE`] in it.
    pub dir: PathBuf,
    /// VMs: the image files on this node and the resolved port forwards.
    pub vm: Option<VmConfig>,
    /// VMs: start as the target of a live migration instead of booting.
    pub incoming: Option<IncomingConfig>,
}

/// The target side of a live migration: the VM's QEMU starts waiting for the VM's
/// memory and device state, and serves an empty disk for the source's copy.
#[derive(Debug, Clone)]
pub struct IncomingConfig {
    /// This node's address: the migration stream and the disk export listen on it.
    pub address: String,
    /// Size of the empty disk that receives the copy (None: the VM has no disk).
    pub disk_bytes: Option<u64>,
}

/// Where the target of a live migration is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Still waiting, at this target.
    Waiting(nimbus_api::MigrationTarget),
    /// The VM is all here, paused, and the disk export has ended: it runs once the
    /// server has placed it here ([`Driver::resume`]).
    Arrived,
}

/// How a live migration went, as QEMU measured it on the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationStats {
    /// Milliseconds the guest was paused for the switch.
    pub downtime_ms: Option<u64>,
    /// Milliseconds from the start of the disk copy to the switch.
    pub total_ms: u64,
}

/// What the QEMU driver needs beyond the spec, resolved by the agent.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub boot: VmBoot,
    /// (host port, guest port) pairs, already reserved on this node.
    pub ports: Vec<(u16, u16)>,
}

/// How a VM boots.
#[derive(Debug, Clone)]
pub enum VmBoot {
    /// Direct kernel boot, with an optional disk that starts from `disk_base` (raw).
    Kernel {
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: String,
        disk_base: Option<PathBuf>,
    },
    /// A base disk (read-only; the instance writes to its own overlay).
    Disk { base: PathBuf, format: String },
}

/// Serializable handle to a started task; persisted by the agent so that it can
/// [`Driver::recover`] the task after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskHandle {
    pub name: String,
    pub driver: String,
    /// Pid of the supervising process (shim) or the task itself.
    pub pid: u32,
    /// Start time of `pid` in clock ticks since boot (/proc/PID/stat field 22),
    /// so a recycled pid is never mistaken for the task.
    pub start_ticks: u64,
    /// Pid of the user's process, when known.
    pub child_pid: Option<u32>,
    pub dir: PathBuf,
    /// Driver-specific data (e.g. cgroup paths).
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code when it exited normally.
    pub code: Option<i32>,
    /// Signal number when it was killed.
    pub signal: Option<i32>,
    /// True when the kernel's OOM killer ended it (memory limit reached).
    pub oom_killed: bool,
    /// A sentence for users, e.g. "exited with code 1" or "killed by the OOM killer
    /// (memory limit 64 MiB reached)".
    pub reason: String,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.oom_killed
    }
}

/// State of a task as the driver sees it now.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskState {
    Running,
    Exited(ExitStatus),
}

/// Resource usage of a running task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskStats {
    pub memory_bytes: u64,
    pub cpu_usage_ns: u64,
}

/// One kind of workload runner. Calls are synchronous and short, except `stop`,
/// which may block up to its grace period; the agent calls it off the async runtime.
pub trait Driver: Send + Sync {
    /// Driver name as used in node facts and instance kinds (`process`, `qemu`).
    fn name(&self) -> &'static str;
    /// Probes whether the driver works on this node.
    fn fingerprint(&self) -> Fingerprint;
    /// Starts a task; returns once it has been launched.
    fn start(&self, cfg: &TaskConfig) -> Result<TaskHandle, DriverError>;
    /// Reports whether the task still runs or how it ended. Must keep answering the
    /// exit status after the task ended, until `destroy`.
    fn status(&self, handle: &TaskHandle) -> Result<TaskState, DriverError>;
    /// Asks the task to stop (SIGTERM), then kills it after `grace`. Idempotent.
    fn stop(&self, handle: &TaskHandle, grace: Duration) -> Result<(), DriverError>;
    /// Releases everything the task held (cgroups, status files); keeps logs. Idempotent.
    fn destroy(&self, handle: &TaskHandle) -> Result<(), DriverError>;
    /// Re-attaches to a task started by an earlier agent process. Returns false when the
    /// handle does not refer to a live or finished task of ours anymore.
    fn recover(&self, handle: &TaskHandle) -> Result<bool, DriverError>;
    /// Current resource usage.
    fn stats(&self, handle: &TaskHandle) -> Result<TaskStats, DriverError>;
    /// Freezes a running task (VMs: QMP `stop`).
    fn pause(&self, _handle: &TaskHandle) -> Result<(), DriverError> {
        Err(DriverError::Unsupported(format!(
            "{} tasks cannot be paused",
            self.name()
        )))
    }
    /// Unfreezes a paused task (VMs: QMP `cont`).
    fn resume(&self, _handle: &TaskHandle) -> Result<(), DriverError> {
        Err(DriverError::Unsupported(format!(
            "{} tasks cannot be resumed",
            self.name()
        )))
    }
    /// VMs: starts mirroring the disk synchronously to an NBD export (every guest write
    /// completes only once the export has it, after an initial full copy).
    fn start_mirror(&self, _handle: &TaskHandle, _to: &MirrorTarget) -> Result<(), DriverError> {
        Err(DriverError::Unsupported(format!(
            "{} tasks have no disk to mirror",
            self.name()
        )))
    }
    /// VMs: whether the mirror is in sync (`Ok(false)` while the first copy runs; an
    /// error when there is no mirror job, e.g. it failed).
    fn mirror_in_sync(&self, _handle: &TaskHandle) -> Result<bool, DriverError> {
        Err(DriverError::Unsupported(format!(
            "{} tasks have no disk to mirror",
            self.name()
        )))
    }
    /// VMs: ends the mirror (the disk stays as it is).
    fn stop_mirror(&self, _handle: &TaskHandle) -> Result<(), DriverError> {
        Ok(())
    }
    /// VMs started with [`TaskConfig::incoming`]: whether the migration is still awaited
    /// (and where), or has arrived, in which case the disk export is ended.
    fn poll_incoming(&self, _handle: &TaskHandle) -> Result<Incoming, DriverError> {
        Err(DriverError::Unsupported(format!(
            "{} tasks cannot be migrated",
            self.name()
        )))
    }
    /// VMs: live-migrates the running VM to a waiting target: the disk is mirrored to
    /// the target's export until in sync (writes then reach both), then memory and
    /// device state follow. On success the VM here is paused for good; on failure it
    /// runs on here. Gives up after `timeout`.
    fn migrate(
        &self,
        _handle: &TaskHandle,
        _to: &nimbus_api::MigrationTarget,
        _timeout: Duration,
    ) -> Result<MigrationStats, DriverError> {
        Err(DriverError::Unsupported(format!(
            "{} tasks cannot be migrated",
            self.name()
        )))
    }
    /// VMs: the virtual size of the disk in bytes.
    fn disk_bytes(&self, _handle: &TaskHandle) -> Option<u64> {
        None
    }
    /// Whether the workload inside is ready (VMs: the guest finished booting), with the
    /// milliseconds it took from start. Processes are ready once they run.
    fn readiness(&self, _handle: &TaskHandle) -> Option<u64> {
        Some(0)
    }
    /// Details for the instance status: accelerator, endpoints.
    fn details(&self, _handle: &TaskHandle) -> TaskDetails {
        TaskDetails::default()
    }
}

/// Driver-specific status shown to users.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskDetails {
    pub accelerator: Option<String>,
    pub endpoints: Vec<String>,
}
