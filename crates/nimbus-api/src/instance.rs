//! Instances: what a user asks for (spec), what the system observed (status), and the
//! lifecycle state machine that every state change goes through.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::units::{check_cpu_millis, MAX_MEMORY_MIB};

/// Largest accepted command line, in bytes (all arguments together).
pub const MAX_COMMAND_BYTES: usize = 128 * 1024;
/// Largest accepted disk request, in MiB (1 PiB).
pub const MAX_DISK_MIB: u64 = 1024 * 1024 * 1024;

/// What runs the instance.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum InstanceKind {
    /// A command in its own cgroup on the node.
    #[default]
    Process,
    /// A QEMU virtual machine.
    Vm,
}

impl InstanceKind {
    /// The driver name that runs this kind.
    pub fn driver(self) -> &'static str {
        match self {
            InstanceKind::Process => "process",
            InstanceKind::Vm => "qemu",
        }
    }
}

/// What the node does when the instance's process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Leave it exited.
    #[default]
    Never,
    /// Restart with exponential backoff when it exits non-zero or is killed.
    OnFailure,
    /// Restart with exponential backoff whenever it exits.
    Always,
}

impl RestartPolicy {
    /// Whether an exit with this outcome is followed by a restart.
    pub fn restarts_after(self, success: bool) -> bool {
        match self {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Always => true,
        }
    }
}

/// What happens to an instance when its node goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HaPolicy {
    /// Marked `lost` and left on its node; it runs again if the node comes back.
    None,
    /// Placed again on a healthy node and started fresh (a process's data directory
    /// and a VM's disk start empty / from the image).
    Restart,
    /// Placed again on a healthy node from its latest completed backup (data loss:
    /// whatever changed since that backup). With no backup yet, as `restart`.
    Cold,
    /// A standby node (another node, capacity reserved) takes over at once. VMs: it
    /// holds a synchronous replica of the disk (every guest write reaches it before
    /// it completes), so no acknowledged write is lost. Processes: started there on
    /// promotion, fresh.
    Hot,
}

impl HaPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            HaPolicy::None => "none",
            HaPolicy::Restart => "restart",
            HaPolicy::Cold => "cold",
            HaPolicy::Hot => "hot",
        }
    }
}

impl std::str::FromStr for HaPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(HaPolicy::None),
            "restart" => Ok(HaPolicy::Restart),
            "cold" => Ok(HaPolicy::Cold),
            "hot" => Ok(HaPolicy::Hot),
            _ => Err(format!(
                "unknown HA policy {s:?}: expected none, restart, cold or hot"
            )),
        }
    }
}

/// A probe of an instance's service. Failing `failures` times in a row counts as the
/// instance failing: its node stops it and its restart policy applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    /// A process's port on its node, or a VM's guest port (one it forwards).
    pub port: u16,
    /// HTTP: the path to GET (default `/`); any 2xx or 3xx answer is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Seconds between probes.
    #[serde(default = "HealthCheck::default_interval")]
    pub interval_secs: u64,
    /// Consecutive failed probes that make the instance unhealthy.
    #[serde(default = "HealthCheck::default_failures")]
    pub failures: u32,
    /// Seconds after a start before failed probes count (VMs: and the guest is ready).
    #[serde(default = "HealthCheck::default_grace")]
    pub grace_secs: u64,
}

/// How a health check probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// A TCP connection is accepted.
    Tcp,
    /// An HTTP/1.1 GET answers 2xx or 3xx.
    Http,
}

impl HealthCheck {
    fn default_interval() -> u64 {
        2
    }
    fn default_failures() -> u32 {
        3
    }
    fn default_grace() -> u64 {
        10
    }

    fn validate(&self) -> Result<(), String> {
        if self.port == 0 {
            return Err("health check port must be between 1 and 65535".into());
        }
        if self.interval_secs == 0 || self.interval_secs > 3600 {
            return Err("health check interval must be 1 to 3600 seconds".into());
        }
        if self.failures == 0 || self.failures > 100 {
            return Err("health check failures must be 1 to 100".into());
        }
        if let Some(p) = &self.path {
            if !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "health check path {p:?} must start with / and have no spaces"
                ));
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for HealthCheck {
    type Err = String;
    /// `tcp:PORT` or `http:PORT[/PATH]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("health check {s:?} is invalid: use tcp:PORT or http:PORT/PATH");
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let kind = match kind {
            "tcp" => HealthCheckKind::Tcp,
            "http" => HealthCheckKind::Http,
            _ => return Err(bad()),
        };
        let (port, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(rest[i..].to_string())),
            None => (rest, None),
        };
        if kind == HealthCheckKind::Tcp && path.is_some() {
            return Err(bad());
        }
        let check = HealthCheck {
            kind,
            port: port.parse().map_err(|_| bad())?,
            path,
            interval_secs: Self::default_interval(),
            failures: Self::default_failures(),
            grace_secs: Self::default_grace(),
        };
        check.validate()?;
        Ok(check)
    }
}

/// Shortest accepted interval between automatic backups.
pub const MIN_BACKUP_EVERY_SECS: u64 = 5;

/// The user's request: everything needed to place and run an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    #[serde(default)]
    pub kind: InstanceKind,
    /// The command and its arguments (process instances).
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment variables for the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to the instance's data directory on the node (the
    /// default; also `$NIMBUS_INSTANCE_DATA`), which backups hold and restores unpack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// CPU in millicores (1000 = one core); enforced as a CFS quota.
    pub cpu_millis: u64,
    /// Memory in MiB; a hard limit, exceeding it is an OOM kill.
    pub memory_mib: u64,
    /// Disk in MiB reserved on the node.
    #[serde(default)]
    pub disk_mib: u64,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Higher runs first under the `priority` queue policy.
    #[serde(default)]
    pub priority: i32,
    /// Declared expected runtime in seconds, used by the `sjf` queue policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_runtime_secs: Option<u64>,
    /// Labels a node must carry (all of them, equal values) to run this instance.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// VM only: the image to boot (see `/v1/images`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// What the instance's own storage starts from (a restored backup): for VMs that
    /// boot a kernel image, a disk image for their disk (disk-image VMs start from
    /// `image` itself); for processes, an archive image unpacked into the data
    /// directory before the first start of each placement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_image: Option<String>,
    /// VM only: virtual CPUs (defaults to the cpu request rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// VM only: TCP ports forwarded from the node to the guest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    /// VM only: cloud-init user-data (a `#!` script or `#cloud-config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// VM only: SSH public keys installed by cloud-init.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    /// What happens when the node goes down (default: `restart` for processes,
    /// `none` for VMs, whose disk lives on the node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaPolicy>,
    /// Take a backup this often (seconds) while the instance runs; the newest
    /// [`AUTO_BACKUPS_KEPT`] automatic backups are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_every_secs: Option<u64>,
    /// A probe of the instance's service, run by its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// How many automatic (`--backup-every`) backups of an instance are kept.
pub const AUTO_BACKUPS_KEPT: usize = 3;

/// A TCP port forwarded from the node to a VM guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Port on the node; chosen by the node when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<u16>,
    /// Port in the guest.
    pub guest: u16,
}

impl std::str::FromStr for PortSpec {
    type Err = String;
    /// `8080:80` (host:guest) or `80` (the node picks the host port).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("port {s:?} is invalid: use HOST:GUEST (8080:80) or GUEST (80)");
        let parse = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
        match s.split_once(':') {
            Some((h, g)) => Ok(PortSpec {
                host: Some(parse(h).ok_or_else(bad)?),
                guest: parse(g).ok_or_else(bad)?,
            }),
            None => Ok(PortSpec {
                host: None,
                guest: parse(s).ok_or_else(bad)?,
            }),
        }
    }
}

/// Largest accepted user-data, in bytes (what fits a NoCloud seed comfortably).
pub const MAX_USER_DATA_BYTES: usize = 64 * 1024;
/// Memory a QEMU process needs beyond the guest's RAM; counted against the node and
/// part of the VM's memory limit. Measured: a 128 MiB tiny guest under TCG (32 MiB
/// translation cache) has 183 MiB resident once booted; block jobs (backup copies,
/// a hot standby's disk mirror, with its 16 MiB of buffers) need room on top.
pub const QEMU_OVERHEAD_MIB: u64 = 128;
/// Most virtual CPUs one VM may have.
pub const MAX_VCPUS: u32 = 255;

impl InstanceSpec {
    /// The HA policy in effect (see [`InstanceSpec::ha`]).
    pub fn ha_policy(&self) -> HaPolicy {
        self.ha.unwrap_or(match self.kind {
            InstanceKind::Process => HaPolicy::Restart,
            InstanceKind::Vm => HaPolicy::None,
        })
    }

    /// Checks the spec for values that can never work, with a message a person can act on.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(h) = &self.health_check {
            h.validate()?;
            if self.kind == InstanceKind::Vm && !self.ports.iter().any(|p| p.guest == h.port) {
                return Err(format!(
                    "the health check probes guest port {}, which the VM does not forward: add \
                     --port {}",
                    h.port, h.port
                ));
            }
        }
        if let Some(s) = self.backup_every_secs {
            if s < MIN_BACKUP_EVERY_SECS {
                return Err(format!(
                    "backup_every_secs {s} is too short: at least {MIN_BACKUP_EVERY_SECS} seconds"
                ));
            }
        }
        check_cpu_millis(self.cpu_millis).map_err(|e| format!("cpu_millis: {e}"))?;
        if self.memory_mib == 0 {
            return Err("memory_mib must be at least 1".into());
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(format!(
                "memory_mib {} is too large: at most {MAX_MEMORY_MIB} MiB (64 TiB)",
                self.memory_mib
            ));
        }
        if self.disk_mib > MAX_DISK_MIB {
            return Err(format!(
                "disk_mib {} is too large: at most {MAX_DISK_MIB} MiB",
                self.disk_mib
            ));
        }
        match self.kind {
            InstanceKind::Process => {
                if self.command.is_empty() || self.command[0].trim().is_empty() {
                    return Err(
                        "command is empty: give the program to run, e.g. -- python3 -m http.server"
                            .into(),
                    );
                }
                if let Some(d) = &self.disk_image {
                    crate::validate_name("image", d)?;
                }
            }
            InstanceKind::Vm => self.validate_vm()?,
        }
        let bytes: usize = self.command.iter().map(|a| a.len() + 1).sum();
        if bytes > MAX_COMMAND_BYTES {
            return Err(format!(
                "command is {bytes} bytes long; at most {MAX_COMMAND_BYTES} are accepted"
            ));
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err("command arguments must not contain NUL bytes".into());
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(format!("environment variable name {key:?} is invalid"));
            }
        }
        for (k, v) in &self.node_selector {
            if k.is_empty() {
                return Err(format!(
                    "node_selector has an empty label name (value {v:?})"
                ));
            }
        }
        if self.kind == InstanceKind::Process
            && (self.image.is_some()
                || self.vcpus.is_some()
                || !self.ports.is_empty()
                || self.user_data.is_some()
                || !self.ssh_authorized_keys.is_empty())
        {
            return Err(
                "image, vcpus, ports, user_data and ssh_authorized_keys are for VMs: add --vm \
                 (kind \"vm\")"
                    .into(),
            );
        }
        Ok(())
    }

    fn validate_vm(&self) -> Result<(), String> {
        if !self.command.is_empty() {
            return Err("a VM runs its image, not a command: drop the command or the --vm".into());
        }
        match &self.image {
            None => return Err("a VM needs an image: give --image NAME or --disk FILE".into()),
            Some(i) => crate::validate_name("image", i)?,
        }
        if let Some(d) = &self.disk_image {
            crate::validate_name("image", d)?;
        }
        if let Some(v) = self.vcpus {
            if v == 0 || v > MAX_VCPUS {
                return Err(format!("vcpus {v} is out of range: 1 to {MAX_VCPUS}"));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.ports {
            if p.guest == 0 || p.host == Some(0) {
                return Err("ports must be between 1 and 65535".into());
            }
            if let Some(h) = p.host {
                if !seen.insert(h) {
                    return Err(format!("host port {h} is forwarded twice"));
                }
            }
        }
        if let Some(u) = &self.user_data {
            if u.len() > MAX_USER_DATA_BYTES {
                return Err(format!(
                    "user-data is {} bytes; at most {MAX_USER_DATA_BYTES} bytes are accepted",
                    u.len()
                ));
            }
        }
        for k in &self.ssh_authorized_keys {
            if !k.starts_with("ssh-") && !k.starts_with("ecdsa-") && !k.starts_with("sk-") {
                return Err(format!(
                    "{:?} does not look like an SSH public key (expected ssh-ed25519 AAAA...)",
                    k.chars().take(30).collect::<String>()
                ));
            }
        }
        Ok(())
    }

    /// Virtual CPUs of a VM: the declared count, or the cpu request rounded up.
    pub fn vm_vcpus(&self) -> u32 {
        self.vcpus
            .unwrap_or_else(|| self.cpu_millis.div_ceil(1000).max(1) as u32)
    }

    /// What the instance costs its node: for VMs, the guest memory plus QEMU's own.
    pub fn node_resources(&self) -> crate::Resources {
        let overhead = match self.kind {
            InstanceKind::Vm => QEMU_OVERHEAD_MIB,
            InstanceKind::Process => 0,
        };
        crate::Resources {
            cpu_millis: self.cpu_millis,
            memory_mib: self.memory_mib.saturating_add(overhead),
            disk_mib: self.disk_mib,
        }
    }
}

/// Body of `POST /v1/instances`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstance {
    pub name: String,
    pub spec: InstanceSpec,
}

/// What the user wants the instance to be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    Running,
    /// Running but frozen (VMs only).
    Paused,
    Stopped,
    Deleted,
}

/// Observed lifecycle state. See docs/lifecycle.md for the diagram.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Accepted, waiting for a node with room.
    Pending,
    /// Assigned to a node; the node has not started it yet.
    Scheduled,
    /// The node is starting it (or restarting it after an exit).
    Starting,
    /// Its process runs.
    Running,
    /// A VM frozen by request (QMP `stop`); resumes where it was.
    Paused,
    /// The node is stopping it.
    Stopping,
    /// Not running, by request or after a clean exit; holds no resources.
    Stopped,
    /// Exited with an error, was killed, or could not start.
    Failed,
    /// Its node is down and it was not moved (HA policy `none`); it runs again if the
    /// node comes back.
    Lost,
    /// Gone; only seen in events.
    Deleted,
}

impl InstanceState {
    pub const ALL: [InstanceState; 10] = [
        InstanceState::Pending,
        InstanceState::Scheduled,
        InstanceState::Starting,
        InstanceState::Running,
        InstanceState::Paused,
        InstanceState::Stopping,
        InstanceState::Stopped,
        InstanceState::Failed,
        InstanceState::Lost,
        InstanceState::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Scheduled => "scheduled",
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Paused => "paused",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::Failed => "failed",
            InstanceState::Lost => "lost",
            InstanceState::Deleted => "deleted",
        }
    }

    /// The one table of allowed transitions. Every state change, whether asked for by
    /// a user, decided by the scheduler or reported by an agent, is checked here.
    pub fn can_become(self, next: InstanceState) -> bool {
        use InstanceState::*;
        matches!(
            (self, next),
            (Pending, Scheduled | Stopped | Deleted)
                | (
                    Scheduled,
                    Starting | Running | Stopping | Stopped | Failed | Pending | Lost
                )
                | (
                    Starting,
                    Running | Stopping | Stopped | Failed | Pending | Lost | Scheduled
                )
                | (
                    Running,
                    Starting | Paused | Stopping | Stopped | Failed | Pending | Lost | Scheduled
                )
                | (
                    Paused,
                    Running | Stopping | Stopped | Failed | Pending | Lost | Scheduled
                )
                | (
                    Lost,
                    Starting | Running | Paused | Stopping | Stopped | Failed | Pending | Scheduled
                )
                | (Stopping, Stopped | Failed | Deleted)
                | (Stopped, Pending | Deleted)
                | (
                    Failed,
                    Starting | Running | Stopping | Stopped | Pending | Deleted | Lost | Scheduled
                )
        )
    }

    /// Checks a transition, with the message a user sees when it is refused.
    pub fn transition(self, next: InstanceState) -> Result<InstanceState, TransitionError> {
        if self == next || self.can_become(next) {
            Ok(next)
        } else {
            Err(TransitionError {
                from: self,
                to: next,
            })
        }
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for InstanceState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InstanceState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown state {s:?}: expected one of {}",
                    InstanceState::ALL.map(|s| s.as_str()).join(", ")
                )
            })
    }
}

/// A refused state change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot go from {from} to {to}")]
pub struct TransitionError {
    pub from: InstanceState,
    pub to: InstanceState,
}

/// An instance as the API returns it: spec plus observed status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Instance {
    pub name: String,
    pub kind: InstanceKind,
    pub spec: InstanceSpec,
    pub state: InstanceState,
    pub desired: DesiredState,
    /// Node it is assigned to (or last ran on, when failed).
    #[serde(default)]
    pub node: Option<String>,
    /// Bumped each time the instance is assigned to a node; agents ignore and stop
    /// work whose generation is older than the current one.
    pub generation: u64,
    /// Bumped by `restart`; the node restarts the process when it changes.
    #[serde(default)]
    pub restart_nonce: u64,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why the instance is in its state: pending reason, exit or failure cause.
    #[serde(default)]
    pub reason: Option<String>,
    /// How many times the node restarted it under its restart policy.
    #[serde(default)]
    pub restarts: u32,
    /// True while a failed instance waits for a restart by its restart policy.
    #[serde(default)]
    pub will_restart: bool,
    /// VMs: `kvm` or `tcg`, as chosen by the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    /// VMs: forwarded ports as `HOST_PORT->GUEST_PORT/tcp` on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// VMs: the guest reported it finished booting (console marker).
    #[serde(default)]
    pub guest_ready: bool,
    /// VMs: milliseconds from QEMU start to guest ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_ms: Option<u64>,
    /// Order of arrival in the queue (monotonic); first-come-first-served uses it.
    pub queue_seq: u64,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// When it last entered the pending queue (unix ms); aging counts from here.
    pub queued_at_ms: u64,
    /// Unix milliseconds of the last state change.
    pub updated_at_ms: u64,
    /// Set while the instance is moved off a failed node; cleared once it runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
    /// `ha = hot`: the node standing by to take over, with its reserved capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<Standby>,
    /// A running VM being live-migrated off a draining node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Migration>,
    /// VMs: virtual size of the disk, as its node reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// Store revision of this object (compare-and-swap token).
    #[serde(default)]
    pub revision: u64,
}

/// The standby of a hot instance: a node with capacity reserved for it and, for VMs,
/// a synchronous replica of its disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Standby {
    pub node: String,
    /// The primary's generation this standby was chosen for.
    pub generation: u64,
    /// VMs: where the standby serves the replica (NBD `host:port`), once it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Ready to take over: VMs once the mirror is in sync; processes at once.
    #[serde(default)]
    pub in_sync: bool,
}

/// A live migration of a running VM to another node. The target node starts a QEMU
/// that waits for the VM's memory and serves an empty disk of the same size over NBD;
/// the source mirrors its disk there (every write reaching both once in sync), then
/// migrates memory and device state, and the guest runs on without a reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Migration {
    pub to_node: String,
    /// The generation of the placement on the target (the instance's next).
    pub generation: u64,
    /// Where the target waits, once it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<MigrationTarget>,
    /// Unix ms.
    pub started_at_ms: u64,
    /// The source's report that QEMU completed the migration (with its downtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::node::MigrationReport>,
    /// When the target reported the VM arrived (paused there), unix ms. The move
    /// completes once both this and the source's report are in, or a moment after
    /// the arrival without the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrived_at_ms: Option<u64>,
}

/// Where the target of a live migration waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MigrationTarget {
    /// The NBD export of the target's disk, `host:port/export`; absent for a VM
    /// without a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// QEMU's incoming migration stream, `tcp:host:port`.
    pub uri: String,
}

/// Why an instance is moved off its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MoveCause {
    /// The node went down.
    #[default]
    NodeDown,
    /// The node is being drained.
    Drain,
}

/// An instance's move off its node (failed or drained), with the times RTO and RPO
/// are read from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recovery {
    #[serde(default)]
    pub cause: MoveCause,
    /// The node it ran on.
    pub from_node: String,
    pub policy: HaPolicy,
    /// Node down: unix ms of the node's last heartbeat, the latest moment it is known
    /// to have run. Drain: when the move began.
    pub failed_at_ms: u64,
    /// Unix ms when the server declared the node down (drain: when the move began).
    pub detected_at_ms: u64,
    /// Hot recovery of a VM: it boots on its standby node from the replica there.
    #[serde(default)]
    pub from_replica: bool,
    /// Cold recovery: the backup it was restored from, and when that backup was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_taken_at_ms: Option<u64>,
}

impl Recovery {
    /// A move off draining node `from_node`, begun at `now_ms`.
    pub fn drain(from_node: &str, policy: HaPolicy, now_ms: u64) -> Recovery {
        Recovery {
            cause: MoveCause::Drain,
            from_node: from_node.to_string(),
            policy,
            failed_at_ms: now_ms,
            detected_at_ms: now_ms,
            from_replica: false,
            backup: None,
            backup_taken_at_ms: None,
        }
    }
}

impl Instance {
    /// Forgets what the last placement observed (process, exit, guest, endpoints),
    /// before the instance is placed again.
    pub fn clear_observed(&mut self) {
        self.pid = None;
        self.exit_code = None;
        self.will_restart = false;
        self.guest_ready = false;
        self.boot_ms = None;
        self.endpoints.clear();
        self.accelerator = None;
    }

    /// Whether this instance counts against its node's capacity.
    pub fn holds_resources(&self) -> bool {
        use InstanceState::*;
        self.node.is_some()
            && match self.state {
                Scheduled | Starting | Running | Paused | Stopping | Lost => true,
                Failed => self.will_restart,
                Pending | Stopped | Deleted => false,
            }
    }

    /// Whether the node should know about this instance at all: everything that holds
    /// resources there, and a stopped or failed VM, whose disk lives on that node.
    pub fn is_assigned(&self) -> bool {
        self.holds_resources()
            || (self.kind == InstanceKind::Vm
                && self.node.is_some()
                && matches!(self.state, InstanceState::Stopped | InstanceState::Failed))
    }

    /// The node a pending instance must return to: a VM keeps its disk on the node it
    /// last ran on.
    pub fn home_node(&self) -> Option<&str> {
        match self.kind {
            InstanceKind::Vm => self.node.as_deref(),
            InstanceKind::Process => None,
        }
    }
}

/// One page of `GET /v1/instances`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceList {
    pub items: Vec<Instance>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}
