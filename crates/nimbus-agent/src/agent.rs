//! The agent loop: register, long-poll assignments, reconcile them against local tasks
//! through the drivers, heartbeat observed state, ship logs.
//!
//! Every task the agent runs has a record in `<data-dir>/tasks/<name>.json` (driver
//! handle, generation, restart count), so an agent killed with `kill -9` and started
//! again re-adopts what still runs and reports what ended meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nimbus_api::{
    Assignment, DesiredState, Heartbeat, InstanceReport, InstanceSpec, InstanceState, RegisterNode,
    Resources,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::client::ServerClient;
use crate::driver::process::ProcessDriver;
use crate::driver::qemu::QemuDriver;
use crate::driver::sim::SimDriver;
use crate::driver::{
    Driver, ExitStatus, TaskConfig, TaskHandle, TaskState, VmBoot, VmConfig, DATA_DIR, LOG_FILE,
};

/// Which drivers the agent runs instances with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverMode {
    /// Real processes in cgroups.
    Real,
    /// Simulated tasks (no processes), for tests and benchmarks at scale.
    Sim,
}

/// How to run an agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: String,
    pub name: String,
    pub address: String,
    pub data_dir: PathBuf,
    /// Capacity overrides; detected when absent.
    pub cpu_millis: Option<u64>,
    pub memory_mib: Option<u64>,
    pub disk_mib: Option<u64>,
    pub labels: BTreeMap<String, String>,
    pub heartbeat_every: Duration,
    /// How long a stopping task gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    pub drivers: DriverMode,
    /// Forces the VM accelerator (`kvm` or `tcg`) instead of probing.
    pub accelerator: Option<String>,
}

/// Errors that end the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no usable driver on this node: {0}")]
    NoDriver(String),
    #[error("opening the node's chunk store: {0}")]
    ChunkStore(String),
    #[error("{0}")]
    Thread(String),
}

/// First restart waits this long; each consecutive failure doubles it.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A task that ran at least this long resets the backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);
/// New output of a task to ship: (name, generation, offset, bytes).
type OutputChunk = (String, u64, u64, Vec<u8>);

/// Wait between attempts to (re)start a failed disk mirror.
const MIRROR_RETRY: Duration = Duration::from_secs(3);
/// How long a live migration (disk copy and memory) may take before it is given up.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);

/// The local address of the route to the server at `url` (what peers on the same
/// network reach this node at).
fn route_address(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let hostport = rest.split('/').next()?;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .ok()?
        .next()?;
    let sock = std::net::UdpSocket::bind(if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .ok()?;
    sock.connect(addr).ok()?;
    Some(sock.local_addr().ok()?.ip().to_string())
}

/// Most log bytes shipped per instance per heartbeat.
const LOG_CHUNK: u64 = 512 * 1024;

/// What the agent remembers about one task; persisted across agent restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TaskRecord {
    name: String,
    generation: u64,
    restart_nonce: u64,
    spec: InstanceSpec,
    handle: Option<TaskHandle>,
    state: InstanceState,
    exit: Option<ExitStatus>,
    reason: Option<String>,
    restarts: u32,
    consecutive_failures: u32,
    will_restart: bool,
    /// Bytes of the log already shipped to the server.
    log_offset: u64,
    /// VMs: the image as the server described it.
    #[serde(default)]
    image: Option<nimbus_api::Image>,
    /// VMs: (host, guest) port forwards reserved on this node.
    #[serde(default)]
    ports: Vec<(u16, u16)>,
    /// VMs: milliseconds from start to guest ready, once seen.
    #[serde(default)]
    boot_ms: Option<u64>,
    /// The image the instance's storage starts from, as the server described it: a
    /// VM's disk, or the archive a process's data directory is unpacked from.
    #[serde(default)]
    disk_image: Option<nimbus_api::Image>,
    /// Processes: the data directory was unpacked from `disk_image` for this placement.
    #[serde(default)]
    data_restored: bool,
    /// Hot VMs failed over here: the disk starts from this node's replica.
    #[serde(default)]
    boot_from_replica: bool,
    /// VMs: virtual size of the disk, once known.
    #[serde(default)]
    disk_bytes: Option<u64>,
    /// Hot VMs: the disk's mirror to the standby's replica.
    #[serde(default)]
    mirror: Option<nimbus_api::MirrorReport>,
    #[serde(skip)]
    mirror_retry_at: Option<Instant>,
    /// Failed looks at the mirror in a row (one QMP timeout is not a lost mirror).
    #[serde(skip)]
    mirror_errors: u32,
    /// Live migration, target side: the VM is awaited here (from the assignment) until
    /// it arrives, at `incoming_target`.
    #[serde(default)]
    incoming: Option<nimbus_api::IncomingMigration>,
    #[serde(default)]
    incoming_target: Option<nimbus_api::MigrationTarget>,
    /// Live migration, source side: how it went. Once completed the VM here is paused
    /// for good and waits to be unassigned.
    #[serde(default)]
    migration: Option<nimbus_api::MigrationReport>,
    /// Backups of this placement already made and reported.
    #[serde(default)]
    backups_done: Vec<String>,
    #[serde(skip)]
    restart_at: Option<Instant>,
    #[serde(skip)]
    started: Option<Instant>,
}

impl Agent {
    /// Whether a VM is migrating in (or cannot be told: the tasks are busy).
    fn awaits_migration(&self) -> bool {
        self.tasks
            .try_lock()
            .map(|t| t.values().any(|r| r.incoming.is_some()))
            .unwrap_or(false)
    }
}

impl TaskRecord {
    /// The VM left this node by live migration: it must never run here again.
    fn migrated_away(&self) -> bool {
        self.migration.as_ref().is_some_and(|m| m.completed)
    }
}

struct Agent {
    cfg: AgentConfig,
    /// Where peers reach this node (replica exports, migration targets).
    address: String,
    drivers: HashMap<&'static str, Arc<dyn Driver>>,
    tasks: Mutex<BTreeMap<String, TaskRecord>>,
    /// The latest assignments from the server (None until the first answer).
    assignments: Mutex<Option<Vec<Assignment>>>,
    /// Wakes the reconciler (new assignments).
    reconcile_now: Notify,
    /// Wakes the heartbeat (observed state changed).
    report_now: Notify,
    client: Arc<ServerClient>,
    rt: tokio::runtime::Handle,
    /// Host ports forwarded to VMs on this node, and their owners.
    ports: Mutex<BTreeMap<u16, String>>,
    /// The node's chunk store (disk images and backups).
    store: crate::store::NodeStore,
    /// Disk images the server asked this node to hold, and those copied already.
    wanted_images: Mutex<Vec<nimbus_api::Image>>,
    replicated: Mutex<std::collections::BTreeSet<String>>,
    /// The last heartbeat built; sent again while a long reconcile step (an image
    /// copy, a backup) holds the tasks, so the node is never silent because it is busy.
    last_heartbeat: Mutex<Heartbeat>,
    /// Replicas this node serves as a hot standby, and the ones the server wants.
    replicas: crate::replica::Replicas,
    standbys_wanted: Mutex<Vec<nimbus_api::StandbyAssignment>>,
    /// Results of the tasks' health checks.
    health: crate::health::Health,
}

fn tasks_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tasks")
}

fn instance_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("instances").join(name)
}

impl Agent {
    fn driver_for(&self, spec: &InstanceSpec) -> Option<Arc<dyn Driver>> {
        self.drivers.get(spec.kind.driver()).cloned()
    }

    fn persist(&self, rec: &TaskRecord) {
        let dir = tasks_dir(&self.cfg.data_dir);
        let path = dir.join(format!("{}.json", rec.name));
        let tmp = dir.join(format!(".{}.json.tmp", rec.name));
        let res = serde_json::to_vec_pretty(rec)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            });
        if let Err(e) = res {
            tracing::error!(task = %rec.name, error = %e, "cannot persist task record");
        }
    }

    fn forget(&self, name: &str) {
        let _ = std::fs::remove_file(tasks_dir(&self.cfg.data_dir).join(format!("{name}.json")));
        let _ = std::fs::remove_dir_all(instance_dir(&self.cfg.data_dir, name));
    }

    /// Loads task records left by an earlier agent process and re-attaches to them.
    fn recover(&self) {
        let dir = tasks_dir(&self.cfg.data_dir);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let rec: TaskRecord = match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(r) => r,
                None => {
                    tracing::warn!(path = %path.display(), "unreadable task record, ignored");
                    continue;
                }
            };
            let mut rec = rec;
            if let (Some(handle), Some(driver)) = (rec.handle.clone(), self.driver_for(&rec.spec)) {
                match driver.recover(&handle) {
                    Ok(true) => {
                        tracing::info!(task = %rec.name, pid = handle.pid, "re-adopted task");
                        rec.started = Some(Instant::now());
                    }
                    Ok(false) | Err(_) => {
                        tracing::warn!(task = %rec.name, "task vanished while the agent was down");
                        rec.handle = None;
                        if matches!(rec.state, InstanceState::Running | InstanceState::Starting) {
                            let exit = ExitStatus {
                                code: None,
                                signal: None,
                                oom_killed: false,
                                reason: "process vanished while the agent was down".into(),
                            };
                            self.on_exit(&mut rec, exit);
                        }
                    }
                }
            }
            let mut ports = self.ports.lock().unwrap_or_else(|p| p.into_inner());
            for (h, _) in &rec.ports {
                ports.insert(*h, rec.name.clone());
            }
            drop(ports);
            tasks.insert(rec.name.clone(), rec);
        }
    }

    /// Records how a task ended and decides whether it restarts.
    fn on_exit(&self, rec: &mut TaskRecord, exit: ExitStatus) {
        if let (Some(h), Some(d)) = (rec.handle.take(), self.driver_for(&rec.spec)) {
            if let Err(e) = d.destroy(&h) {
                tracing::warn!(task = %rec.name, error = %e, "destroy after exit failed");
            }
        }
        if rec.incoming.is_some() || rec.migrated_away() {
            // A migration target that failed, or a VM that migrated away: never
            // restarted here (the server falls back, or has moved it).
            rec.will_restart = false;
            rec.incoming_target = None;
            self.release_ports(rec);
            rec.state = InstanceState::Failed;
            rec.reason = Some(format!("live migration: {}", exit.reason));
            rec.exit = Some(exit);
            return;
        }
        let success = exit.success();
        let ran_long = rec
            .started
            .is_some_and(|s| s.elapsed() >= BACKOFF_RESET_AFTER);
        if ran_long {
            rec.consecutive_failures = 0;
        }
        if rec.spec.restart.restarts_after(success) {
            let delay = BACKOFF_BASE
                .saturating_mul(1u32 << rec.consecutive_failures.min(10))
                .min(BACKOFF_MAX);
            rec.consecutive_failures += 1;
            rec.restart_at = Some(Instant::now() + delay);
            rec.will_restart = true;
            rec.state = InstanceState::Failed;
            rec.reason = Some(format!(
                "{}; restarting in {:.0}s",
                exit.reason,
                delay.as_secs_f64()
            ));
        } else {
            rec.will_restart = false;
            self.release_ports(rec);
            rec.state = if success {
                InstanceState::Stopped
            } else {
                InstanceState::Failed
            };
            rec.reason = Some(exit.reason.clone());
        }
        rec.exit = Some(exit);
        tracing::info!(task = %rec.name, state = %rec.state, reason = ?rec.reason, "task exited");
    }

    /// Starts (or restarts) a task's process.
    fn start_task(&self, rec: &mut TaskRecord) {
        let Some(driver) = self.driver_for(&rec.spec) else {
            rec.state = InstanceState::Failed;
            rec.will_restart = false;
            rec.reason = Some(format!(
                "this node has no working {} driver",
                rec.spec.kind.driver()
            ));
            return;
        };
        let dir = instance_dir(&self.cfg.data_dir, &rec.name);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            rec.state = InstanceState::Failed;
            rec.reason = Some(format!("cannot create {}: {e}", dir.display()));
            return;
        }
        if rec.spec.kind == nimbus_api::InstanceKind::Process && !rec.data_restored {
            if let Some(img) = rec.disk_image.clone() {
                if let Err(reason) = self.store.restore_dir(&img.name, &dir.join(DATA_DIR)) {
                    let exit = ExitStatus {
                        code: None,
                        signal: None,
                        oom_killed: false,
                        reason: format!("restoring the data directory: {reason}"),
                    };
                    self.on_exit(rec, exit);
                    return;
                }
                rec.data_restored = true;
            }
        }
        let vm = if rec.spec.kind == nimbus_api::InstanceKind::Vm {
            match self.prepare_vm(rec) {
                Ok(vm) => Some(vm),
                Err(reason) => {
                    let exit = ExitStatus {
                        code: None,
                        signal: None,
                        oom_killed: false,
                        reason,
                    };
                    self.on_exit(rec, exit);
                    return;
                }
            }
        } else {
            None
        };
        let cfg = TaskConfig {
            name: rec.name.clone(),
            generation: rec.generation,
            spec: rec.spec.clone(),
            dir,
            vm,
            incoming: rec
                .incoming
                .as_ref()
                .map(|i| crate::driver::IncomingConfig {
                    address: self.address.clone(),
                    disk_bytes: i.disk_bytes,
                }),
        };
        rec.exit = None;
        rec.boot_ms = None;
        // A new QEMU has no mirror job: set it up again (the standby is out of sync
        // until the new mirror is).
        rec.mirror = None;
        match driver.start(&cfg) {
            Ok(handle) => {
                rec.handle = Some(handle);
                // A migration target is not running the VM until it has arrived.
                rec.state = if rec.incoming.is_some() {
                    InstanceState::Starting
                } else {
                    InstanceState::Running
                };
                rec.will_restart = false;
                rec.reason = None;
                rec.started = Some(Instant::now());
            }
            Err(e) => {
                let exit = ExitStatus {
                    code: None,
                    signal: None,
                    oom_killed: false,
                    reason: e.to_string(),
                };
                self.on_exit(rec, exit);
            }
        }
    }

    /// Stops a task's process (SIGTERM, then SIGKILL after the grace period).
    fn stop_task(&self, rec: &mut TaskRecord, why: &str) {
        if let (Some(h), Some(d)) = (rec.handle.take(), self.driver_for(&rec.spec)) {
            if let Err(e) = d.stop(&h, self.cfg.stop_grace) {
                tracing::warn!(task = %rec.name, error = %e, "stop failed");
            }
            if let Ok(TaskState::Exited(exit)) = d.status(&h) {
                rec.exit = Some(exit);
            }
            if let Err(e) = d.destroy(&h) {
                tracing::warn!(task = %rec.name, error = %e, "destroy failed");
            }
        }
        rec.state = InstanceState::Stopped;
        rec.will_restart = false;
        rec.restart_at = None;
        rec.reason = Some(why.to_string());
        self.release_ports(rec);
    }

    fn new_record(&self, a: &Assignment) -> TaskRecord {
        // A fresh placement starts a fresh log.
        let dir = instance_dir(&self.cfg.data_dir, &a.name);
        let _ = std::fs::remove_file(dir.join(LOG_FILE));
        TaskRecord {
            name: a.name.clone(),
            generation: a.generation,
            restart_nonce: a.restart_nonce,
            spec: a.spec.clone(),
            handle: None,
            state: InstanceState::Starting,
            exit: None,
            reason: None,
            restarts: 0,
            consecutive_failures: 0,
            will_restart: false,
            log_offset: 0,
            image: a.image.clone(),
            ports: vec![],
            boot_ms: None,
            backups_done: vec![],
            disk_image: a.disk_image.clone(),
            data_restored: false,
            boot_from_replica: a.boot_from_replica,
            disk_bytes: None,
            mirror: None,
            mirror_retry_at: None,
            mirror_errors: 0,
            incoming: a.incoming.clone(),
            incoming_target: None,
            migration: None,
            restart_at: None,
            started: None,
        }
    }

    /// Fetches the VM's image into the node's cache and reserves its host ports.
    fn prepare_vm(&self, rec: &mut TaskRecord) -> Result<VmConfig, String> {
        // A hot VM taking over here boots from the replica this node kept in sync;
        // taken first, so that nothing below can leave it where it would be removed.
        let replica = if rec.boot_from_replica {
            let dest = instance_dir(&self.cfg.data_dir, &rec.name).join("replica.raw");
            if dest.exists() {
                Some(dest)
            } else {
                Some(
                    self.replicas
                        .take(&rec.name, &dest)
                        .ok_or_else(|| format!("this node holds no replica of {}", rec.name))?,
                )
            }
        } else {
            None
        };
        let image = rec
            .image
            .clone()
            .ok_or_else(|| format!("image {:?} is not known to the server", rec.spec.image))?;
        if image.kind == nimbus_api::ImageKind::Archive {
            return Err(format!(
                "image {} is an archive for a process's data directory, not a bootable image",
                image.name
            ));
        }
        let dir = self.cfg.data_dir.join("images").join(&image.name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        if image.kind == nimbus_api::ImageKind::Disk {
            let base = match replica {
                Some(r) => r,
                None => self.store.image_file(&image.name, &dir)?,
            };
            if rec.ports.is_empty() {
                rec.ports = self.reserve_ports(&rec.name, &rec.spec.ports)?;
            }
            return Ok(VmConfig {
                boot: VmBoot::Disk {
                    base,
                    format: "raw".into(),
                },
                ports: rec.ports.clone(),
            });
        }
        for f in &image.files {
            let path = dir.join(&f.name);
            let cached = std::fs::metadata(&path)
                .map(|m| m.len() == f.size)
                .unwrap_or(false)
                && std::fs::read_to_string(dir.join(format!("{}.sha256", f.name)))
                    .map(|h| h.trim() == f.sha256)
                    .unwrap_or(false);
            if cached {
                continue;
            }
            tracing::info!(image = %image.name, file = %f.name, bytes = f.size, "fetching image file");
            let sha = self
                .rt
                .block_on(self.client.download_image_file(&image.name, &f.name, &path))
                .map_err(|e| format!("fetching image {}: {e}", image.name))?;
            if sha != f.sha256 {
                let _ = std::fs::remove_file(&path);
                return Err(format!(
                    "image {} file {} arrived damaged (sha256 {sha}, expected {})",
                    image.name, f.name, f.sha256
                ));
            }
            std::fs::write(dir.join(format!("{}.sha256", f.name)), &sha)
                .map_err(|e| format!("writing checksum: {e}"))?;
        }
        let boot = match image.kind {
            nimbus_api::ImageKind::Kernel => VmBoot::Kernel {
                kernel: dir.join("vmlinuz"),
                initrd: dir.join("initrd.img"),
                cmdline: image.cmdline.clone().unwrap_or_default(),
                disk_base: match &rec.disk_image {
                    _ if replica.is_some() => replica.clone(),
                    Some(d) => Some(
                        self.store
                            .image_file(&d.name, &self.cfg.data_dir.join("images").join(&d.name))?,
                    ),
                    None => None,
                },
            },
            nimbus_api::ImageKind::Disk | nimbus_api::ImageKind::Archive => VmBoot::Disk {
                base: dir.join("disk"),
                format: image.format.clone().unwrap_or_else(|| "raw".into()),
            },
        };
        if rec.ports.is_empty() {
            rec.ports = self.reserve_ports(&rec.name, &rec.spec.ports)?;
        }
        Ok(VmConfig {
            boot,
            ports: rec.ports.clone(),
        })
    }

    /// Picks host ports: the requested ones must be free; the others are chosen so
    /// that no two VMs on this node collide.
    fn reserve_ports(
        &self,
        name: &str,
        wanted: &[nimbus_api::PortSpec],
    ) -> Result<Vec<(u16, u16)>, String> {
        let mut reserved = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        let taken = |p: u16| reserved.get(&p).is_some_and(|owner| owner != name);
        let free = |p: u16| !taken(p) && std::net::TcpListener::bind(("0.0.0.0", p)).is_ok();
        let mut out: Vec<(u16, u16)> = Vec::new();
        for p in wanted {
            let host = match p.host {
                Some(h) => {
                    if !free(h) {
                        return Err(format!("host port {h} is already in use on this node"));
                    }
                    h
                }
                None => {
                    // Each node and instance starts looking at its own place in the
                    // range: agents sharing a host rarely race for the same port.
                    let mut seed = std::collections::hash_map::DefaultHasher::new();
                    std::hash::Hash::hash(&(&self.cfg.name, name), &mut seed);
                    let span = 10000u16;
                    let first = (std::hash::Hasher::finish(&seed) % u64::from(span)) as u16;
                    (0..span)
                        .map(|i| 20000 + (first + i) % span)
                        .find(|h| free(*h) && !out.iter().any(|o| o.0 == *h))
                        .ok_or("no free host port between 20000 and 29999")?
                }
            };
            out.push((host, p.guest));
        }
        for (h, _) in &out {
            reserved.insert(*h, name.to_string());
        }
        Ok(out)
    }

    /// Pauses or resumes a running task to match the desired state, and notes when its
    /// workload became ready.
    fn follow_desired_pause(&self, rec: &mut TaskRecord, desired: DesiredState) {
        let (Some(h), Some(d)) = (rec.handle.clone(), self.driver_for(&rec.spec)) else {
            return;
        };
        match (desired, rec.state) {
            (DesiredState::Paused, InstanceState::Running) => match d.pause(&h) {
                Ok(()) => {
                    rec.state = InstanceState::Paused;
                    rec.reason = Some("paused by request".into());
                }
                Err(e) => rec.reason = Some(format!("pause failed: {e}")),
            },
            (DesiredState::Running, InstanceState::Paused) => match d.resume(&h) {
                Ok(()) => {
                    rec.state = InstanceState::Running;
                    rec.reason = None;
                }
                Err(e) => rec.reason = Some(format!("resume failed: {e}")),
            },
            _ => {}
        }
        if rec.boot_ms.is_none() && rec.state == InstanceState::Running {
            rec.boot_ms = d.readiness(&h);
        }
    }

    /// Starts, checks or ends a hot VM's disk mirror to match `to` (the standby's
    /// replica, from the assignment).
    fn follow_mirror(&self, rec: &mut TaskRecord, to: Option<&str>) {
        let (Some(h), Some(d)) = (rec.handle.clone(), self.driver_for(&rec.spec)) else {
            return;
        };
        if rec.spec.kind != nimbus_api::InstanceKind::Vm || rec.state != InstanceState::Running {
            return;
        }
        if rec.disk_bytes.is_none() {
            rec.disk_bytes = d.disk_bytes(&h);
        }
        let Some(to) = to else {
            if rec.mirror.take().is_some() {
                let _ = d.stop_mirror(&h);
            }
            return;
        };
        let same = rec.mirror.as_ref().is_some_and(|m| m.endpoint == to);
        let failed = rec.mirror.as_ref().is_some_and(|m| m.error.is_some());
        let retry_due = rec.mirror_retry_at.is_none_or(|t| Instant::now() >= t);
        if same && !failed {
            match d.mirror_in_sync(&h) {
                Ok(in_sync) => {
                    rec.mirror_errors = 0;
                    if let Some(m) = rec.mirror.as_mut() {
                        m.in_sync = in_sync;
                    }
                }
                Err(_) if rec.mirror_errors < 2 => rec.mirror_errors += 1,
                Err(e) => {
                    rec.mirror_errors = 0;
                    tracing::warn!(task = %rec.name, error = %e, "mirror lost");
                    rec.mirror = Some(nimbus_api::MirrorReport {
                        endpoint: to.to_string(),
                        in_sync: false,
                        error: Some(e.to_string()),
                    });
                    rec.mirror_retry_at = Some(Instant::now() + MIRROR_RETRY);
                }
            }
            return;
        }
        if same && !retry_due {
            return;
        }
        let started = to
            .parse::<crate::driver::MirrorTarget>()
            .and_then(|t| d.start_mirror(&h, &t).map_err(|e| e.to_string()));
        if let Err(e) = &started {
            tracing::warn!(task = %rec.name, target = %to, error = %e, "cannot start the mirror");
            rec.mirror_retry_at = Some(Instant::now() + MIRROR_RETRY);
        } else {
            tracing::info!(task = %rec.name, target = %to, "mirroring the disk");
        }
        rec.mirror = Some(nimbus_api::MirrorReport {
            endpoint: to.to_string(),
            in_sync: false,
            error: started.err(),
        });
    }

    /// Live migration, target side: reports where the VM is awaited (`starting`), then
    /// that it has arrived (`paused`), and runs it once the server has placed it here
    /// (`placed`: the assignment no longer says `incoming`). Never before: until then
    /// the server may still abandon the migration for the source's copy.
    fn follow_incoming(&self, rec: &mut TaskRecord, placed: bool) {
        let (Some(h), Some(d), Some(incoming)) = (
            rec.handle.clone(),
            self.driver_for(&rec.spec),
            rec.incoming.clone(),
        ) else {
            return;
        };
        match d.poll_incoming(&h) {
            Ok(crate::driver::Incoming::Waiting(t)) => rec.incoming_target = Some(t),
            Ok(crate::driver::Incoming::Arrived) if !placed => {
                rec.incoming_target = None;
                rec.state = InstanceState::Paused;
            }
            Ok(crate::driver::Incoming::Arrived) => match d.resume(&h) {
                Ok(()) => {
                    tracing::info!(task = %rec.name, "the VM arrived by live migration and runs");
                    rec.incoming = None;
                    rec.incoming_target = None;
                    rec.state = InstanceState::Running;
                    rec.reason = None;
                    if incoming.guest_ready {
                        // Booted on the source: usable from the moment it runs here.
                        rec.boot_ms = rec.started.map(|s| s.elapsed().as_millis() as u64);
                    }
                }
                Err(e) => tracing::warn!(task = %rec.name, error = %e, "resuming the arrived VM"),
            },
            Err(e) => tracing::warn!(task = %rec.name, error = %e, "incoming migration"),
        }
    }

    /// Live migration, source side: sends the VM to `to` once (the server decides what
    /// follows a failure).
    fn follow_migration(&self, rec: &mut TaskRecord, to: Option<&nimbus_api::MigrationTarget>) {
        let Some(to) = to else {
            // No migration wanted (any more): a failed attempt is forgotten, so that a
            // later one is not taken for it.
            if rec.migration.as_ref().is_some_and(|m| !m.completed) {
                rec.migration = None;
            }
            return;
        };
        let (Some(h), Some(d)) = (rec.handle.clone(), self.driver_for(&rec.spec)) else {
            return;
        };
        if rec.state != InstanceState::Running
            || rec.migration.as_ref().is_some_and(|m| m.uri == to.uri)
        {
            return;
        }
        tracing::info!(task = %rec.name, target = %to.uri, "live-migrating");
        rec.mirror = None;
        let report = match d.migrate(&h, to, MIGRATION_TIMEOUT) {
            Ok(stats) => {
                tracing::info!(task = %rec.name, downtime_ms = ?stats.downtime_ms, total_ms = stats.total_ms, "live migration completed");
                rec.reason = Some(format!("live-migrated to {}", to.uri));
                nimbus_api::MigrationReport {
                    uri: to.uri.clone(),
                    completed: true,
                    downtime_ms: stats.downtime_ms,
                    total_ms: Some(stats.total_ms),
                    error: None,
                }
            }
            Err(e) => {
                tracing::warn!(task = %rec.name, error = %e, "live migration failed");
                nimbus_api::MigrationReport {
                    uri: to.uri.clone(),
                    completed: false,
                    downtime_ms: None,
                    total_ms: None,
                    error: Some(e.to_string()),
                }
            }
        };
        rec.migration = Some(report);
    }

    /// Gives a task's host ports back to the node.
    fn release_ports(&self, rec: &mut TaskRecord) {
        let mut reserved = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        for (h, _) in rec.ports.drain(..) {
            if reserved.get(&h) == Some(&rec.name) {
                reserved.remove(&h);
            }
        }
    }

    /// One pass: make local tasks match the assignments. Returns true if any observed
    /// state changed.
    fn reconcile(&self) -> bool {
        // Before the assignments (which the poller writes first): a replica is never
        // dropped on the strength of a newer answer than the assignments seen here.
        let standbys = self
            .standbys_wanted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(assignments) = self
            .assignments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return false;
        };
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        let wanted: BTreeMap<&str, &Assignment> =
            assignments.iter().map(|a| (a.name.as_str(), a)).collect();

        // Tasks no longer assigned here (deleted, or moved away): stop and forget them.
        let gone: Vec<String> = tasks
            .keys()
            .filter(|n| !wanted.contains_key(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(mut rec) = tasks.remove(&name) {
                self.stop_task(&mut rec, "no longer assigned to this node");
                self.forget(&name);
                changed = true;
            }
        }

        for a in &assignments {
            let observed = |r: &TaskRecord| {
                (
                    r.state,
                    r.restarts,
                    r.will_restart,
                    r.boot_ms,
                    r.mirror.clone(),
                    r.incoming_target.clone(),
                    r.migration.clone(),
                )
            };
            let before = tasks.get(&a.name).map(observed);
            // An older placement of the same name: replace it.
            if tasks
                .get(&a.name)
                .is_some_and(|r| r.generation != a.generation)
            {
                if let Some(mut old) = tasks.remove(&a.name) {
                    self.stop_task(&mut old, "replaced by a newer placement");
                }
            }
            match a.desired {
                DesiredState::Running | DesiredState::Paused => {
                    let rec = tasks
                        .entry(a.name.clone())
                        .or_insert_with(|| self.new_record(a));
                    if rec.handle.is_none() && rec.state == InstanceState::Starting {
                        self.start_task(rec);
                    } else if rec.restart_nonce != a.restart_nonce {
                        rec.restart_nonce = a.restart_nonce;
                        self.stop_task(rec, "restart requested");
                        rec.state = InstanceState::Starting;
                        self.start_task(rec);
                    } else if rec.migrated_away() {
                        // Paused for good; stopped once the server moves it.
                    } else if let Some(h) = rec.handle.clone() {
                        if let Some(d) = self.driver_for(&rec.spec) {
                            match d.status(&h) {
                                Ok(TaskState::Running) => {
                                    let threshold =
                                        rec.spec.health_check.as_ref().map(|c| c.failures);
                                    let unhealthy = threshold.and_then(|t| {
                                        self.health.unhealthy(&rec.name, rec.generation, t)
                                    });
                                    if let Some(why) = unhealthy {
                                        tracing::warn!(task = %rec.name, reason = %why, "unhealthy: stopping");
                                        if let Err(e) = d.stop(&h, self.cfg.stop_grace) {
                                            tracing::warn!(task = %rec.name, error = %e, "stop failed");
                                        }
                                        self.health.forget(&rec.name);
                                        let exit = ExitStatus {
                                            code: None,
                                            signal: None,
                                            oom_killed: false,
                                            reason: why,
                                        };
                                        self.on_exit(rec, exit);
                                    }
                                }
                                Ok(TaskState::Exited(exit)) => self.on_exit(rec, exit),
                                Err(e) => {
                                    tracing::warn!(task = %rec.name, error = %e, "status failed")
                                }
                            }
                        }
                    } else if rec.will_restart && rec.restart_at.is_none_or(|t| Instant::now() >= t)
                    {
                        rec.restarts += 1;
                        rec.state = InstanceState::Starting;
                        self.start_task(rec);
                    }
                    if rec.incoming.is_some() {
                        self.follow_incoming(rec, a.incoming.is_none());
                    } else if !rec.migrated_away() {
                        self.follow_desired_pause(rec, a.desired);
                        self.follow_mirror(rec, a.mirror_to.as_deref());
                        self.follow_migration(rec, a.migrate_to.as_ref());
                    }
                }
                DesiredState::Stopped | DesiredState::Deleted => {
                    let why = if a.desired == DesiredState::Deleted {
                        "deleted by request"
                    } else {
                        "stopped by request"
                    };
                    match tasks.get_mut(&a.name) {
                        Some(rec) if rec.state != InstanceState::Stopped => {
                            self.stop_task(rec, why)
                        }
                        Some(_) => {}
                        None => {
                            let mut rec = self.new_record(a);
                            rec.state = InstanceState::Stopped;
                            rec.reason = Some(why.into());
                            tasks.insert(a.name.clone(), rec);
                        }
                    }
                }
            }
            if let Some(rec) = tasks
                .get_mut(&a.name)
                .filter(|r| r.incoming.is_none() && !r.migrated_away())
            {
                for b in &a.backups {
                    // Done once the server has the report; otherwise the next pass
                    // tries again (the copy costs little: unchanged chunks are kept).
                    if !rec.backups_done.contains(b) && self.make_backup(rec, b) {
                        rec.backups_done.push(b.clone());
                        self.persist(rec);
                    }
                }
            }
            if let Some(rec) = tasks.get(&a.name) {
                if before != Some(observed(rec)) {
                    changed = true;
                    self.persist(rec);
                }
            }
        }
        drop(tasks);
        // After the tasks: a VM taking over from a replica here has taken its file.
        self.replicas.reconcile(&standbys);
        self.replicate_wanted_images();
        changed
    }

    /// Backs up an instance's disk (VMs) or data directory (processes) and reports the
    /// outcome to the server; false when the report did not reach it.
    fn make_backup(&self, rec: &mut TaskRecord, name: &str) -> bool {
        let dir = instance_dir(&self.cfg.data_dir, &rec.name);
        let running = rec.handle.is_some() && rec.state == InstanceState::Running;
        let driver = self.driver_for(&rec.spec);
        let handle = rec.handle.clone();
        let pause = || -> Result<(), String> {
            match (&driver, &handle) {
                (Some(d), Some(h)) => d
                    .pause(h)
                    .map_err(|e| format!("pausing for the backup: {e}")),
                _ => Ok(()),
            }
        };
        let resume = || -> Result<(), String> {
            match (&driver, &handle) {
                (Some(d), Some(h)) => d
                    .resume(h)
                    .map_err(|e| format!("resuming after the backup: {e}")),
                _ => Ok(()),
            }
        };
        let meta = serde_json::to_value(&rec.spec).unwrap_or_default();
        let bracket = running.then_some((
            &pause as &dyn Fn() -> Result<(), String>,
            &resume as &dyn Fn() -> Result<(), String>,
        ));
        let (res, paused) = match rec.spec.kind {
            nimbus_api::InstanceKind::Vm => (
                self.store
                    .backup_disk(&rec.name, name, &dir.join("overlay.qcow2"), meta, bracket),
                "paused",
            ),
            nimbus_api::InstanceKind::Process => (
                self.store
                    .backup_dir(&rec.name, name, &dir.join(DATA_DIR), meta, bracket),
                "frozen",
            ),
        };
        let body = match &res {
            Ok((m, t)) => serde_json::json!({
                "ok": true, "size": m.size, "new_bytes": t.bytes, "new_chunks": t.chunks,
                "consistency": if running { paused } else { "stopped" },
            }),
            Err(e) => serde_json::json!({ "ok": false, "reason": e }),
        };
        if let Err(e) = &res {
            tracing::warn!(instance = %rec.name, backup = %name, error = %e, "backup failed");
        }
        let path = format!("/v1/nodes/{}/backups/{}/{name}", self.cfg.name, rec.name);
        match self.rt.block_on(self.client.post_json(&path, &body)) {
            Ok(_) => true,
            // The server answered: retrying would get the same answer.
            Err(e @ crate::client::ClientError::Api { .. }) => {
                tracing::warn!(instance = %rec.name, backup = %name, error = %e, "backup report refused");
                true
            }
            Err(e) => {
                tracing::warn!(instance = %rec.name, backup = %name, error = %e, "backup report failed; will retry");
                false
            }
        }
    }

    /// Copies the disk images the server asked this node to hold.
    fn replicate_wanted_images(&self) {
        let wanted = self
            .wanted_images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for img in wanted {
            if self
                .replicated
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&img.name)
            {
                continue;
            }
            match self.store.fetch_image(&img.name) {
                Ok((_, t)) => {
                    let path = format!("/v1/nodes/{}/replicas/{}", self.cfg.name, img.name);
                    let body =
                        serde_json::json!({ "copied_chunks": t.chunks, "copied_bytes": t.bytes });
                    if self
                        .rt
                        .block_on(self.client.post_json(&path, &body))
                        .is_ok()
                    {
                        self.replicated
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(img.name.clone());
                    }
                }
                Err(e) => tracing::warn!(image = %img.name, error = %e, "replication failed"),
            }
        }
    }

    /// The running tasks whose health checks are due to count: started longer ago than
    /// their grace period (VMs: and their guest is ready). Empty while a long reconcile
    /// step holds the tasks.
    fn health_targets(&self) -> Vec<crate::health::Target> {
        let Ok(tasks) = self.tasks.try_lock() else {
            return vec![];
        };
        tasks
            .values()
            .filter(|r| r.state == InstanceState::Running && r.handle.is_some())
            .filter(|r| r.incoming.is_none() && !r.migrated_away())
            .filter_map(|r| {
                let check = r.spec.health_check.clone()?;
                let grace = Duration::from_secs(check.grace_secs);
                if r.started.is_none_or(|s| s.elapsed() < grace) {
                    return None;
                }
                let port = match r.spec.kind {
                    nimbus_api::InstanceKind::Process => check.port,
                    nimbus_api::InstanceKind::Vm => {
                        r.boot_ms?;
                        r.ports.iter().find(|(_, g)| *g == check.port)?.0
                    }
                };
                Some(crate::health::Target {
                    name: r.name.clone(),
                    generation: r.generation,
                    addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    check,
                })
            })
            .collect()
    }

    /// The heartbeat and the output to ship before it, read under one lock so that
    /// a task's last output always goes before the report of its exit. While a long
    /// reconcile step holds the tasks, the last heartbeat is sent again and output
    /// waits: the node is never silent because it is busy.
    fn heartbeat_parts(&self) -> (Heartbeat, Vec<OutputChunk>) {
        let tasks = match self.tasks.try_lock() {
            Ok(t) => t,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                let last = self
                    .last_heartbeat
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                return (last, vec![]);
            }
        };
        let logs = self.pending_logs(&tasks);
        (self.reports(&tasks), logs)
    }

    /// Builds the heartbeat from local tasks.
    fn reports(&self, tasks: &BTreeMap<String, TaskRecord>) -> Heartbeat {
        let instances = tasks
            .values()
            .map(|rec| {
                let details = rec
                    .handle
                    .as_ref()
                    .and_then(|h| self.driver_for(&rec.spec).map(|d| d.details(h)))
                    .unwrap_or_default();
                let stats = rec
                    .handle
                    .as_ref()
                    .and_then(|h| self.driver_for(&rec.spec).and_then(|d| d.stats(h).ok()));
                InstanceReport {
                    name: rec.name.clone(),
                    generation: rec.generation,
                    state: rec.state,
                    pid: rec
                        .handle
                        .as_ref()
                        .and_then(|h| h.child_pid.or(Some(h.pid))),
                    exit_code: rec.exit.as_ref().and_then(|e| e.code),
                    reason: rec.reason.clone(),
                    restarts: rec.restarts,
                    will_restart: rec.will_restart,
                    memory_bytes: stats.as_ref().map(|s| s.memory_bytes),
                    cpu_usage_ns: stats.as_ref().map(|s| s.cpu_usage_ns),
                    accelerator: details.accelerator,
                    endpoints: details.endpoints,
                    guest_ready: rec.boot_ms.is_some() && rec.handle.is_some(),
                    boot_ms: rec.boot_ms,
                    disk_bytes: rec.disk_bytes,
                    mirror: rec.mirror.clone(),
                    incoming: rec.incoming_target.clone(),
                    migration: rec.migration.clone(),
                }
            })
            .collect();
        let hb = Heartbeat {
            instances,
            standbys: self.replicas.reports(),
        };
        *self
            .last_heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = hb.clone();
        hb
    }

    /// New log bytes of each task: (name, generation, offset, bytes).
    fn pending_logs(&self, tasks: &BTreeMap<String, TaskRecord>) -> Vec<OutputChunk> {
        use std::io::{Read, Seek, SeekFrom};
        let mut out = Vec::new();
        for rec in tasks.values() {
            let path = instance_dir(&self.cfg.data_dir, &rec.name).join(LOG_FILE);
            let Ok(mut f) = std::fs::File::open(&path) else {
                continue;
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len <= rec.log_offset {
                continue;
            }
            let n = (len - rec.log_offset).min(LOG_CHUNK);
            let mut buf = vec![0; n as usize];
            if f.seek(SeekFrom::Start(rec.log_offset)).is_ok() && f.read_exact(&mut buf).is_ok() {
                out.push((rec.name.clone(), rec.generation, rec.log_offset, buf));
            }
        }
        out
    }

    fn logs_shipped(&self, name: &str, generation: u64, new_offset: u64) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rec) = tasks.get_mut(name) {
            if rec.generation == generation && rec.log_offset < new_offset {
                rec.log_offset = new_offset;
                self.persist(rec);
            }
        }
    }
}

fn build_drivers(cfg: &AgentConfig) -> HashMap<&'static str, Arc<dyn Driver>> {
    let mut drivers: HashMap<&'static str, Arc<dyn Driver>> = HashMap::new();
    match cfg.drivers {
        DriverMode::Sim => {
            drivers.insert("process", Arc::new(SimDriver::new()));
            drivers.insert("qemu", Arc::new(SimDriver::named("qemu")));
        }
        DriverMode::Real => match ProcessDriver::default_shim_cmd() {
            Ok(shim) => {
                // One cgroup subtree per node, so several agents can share a host.
                let d = ProcessDriver::new(cfg.data_dir.join("instances"), shim)
                    .with_cgroup_parent(format!("nimbus/{}", cfg.name));
                if d.fingerprint().available {
                    let qemu_proc =
                        ProcessDriver::new(cfg.data_dir.join("instances"), d.shim_cmd())
                            .with_cgroup_parent(format!("nimbus/{}", cfg.name));
                    let mut qemu = QemuDriver::new(qemu_proc);
                    if let Some(a) = &cfg.accelerator {
                        qemu = qemu.with_accelerator(a);
                    }
                    let fp = qemu.fingerprint();
                    if fp.available {
                        drivers.insert("qemu", Arc::new(qemu));
                    } else {
                        tracing::warn!(facts = ?fp.facts, "qemu driver unavailable");
                    }
                    drivers.insert("process", Arc::new(d));
                } else {
                    tracing::warn!("process driver unavailable (no usable cgroup hierarchy)");
                }
            }
            Err(e) => tracing::warn!(error = %e, "process driver unavailable"),
        },
    }
    drivers
}

/// Runs the agent until the process ends.
pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    for dir in [
        cfg.data_dir.clone(),
        tasks_dir(&cfg.data_dir),
        cfg.data_dir.join("instances"),
    ] {
        std::fs::create_dir_all(&dir).map_err(|source| AgentError::DataDir {
            path: dir.clone(),
            source,
        })?;
    }
    let drivers = build_drivers(&cfg);
    if drivers.is_empty() {
        return Err(AgentError::NoDriver(
            "the process driver needs a writable cgroup hierarchy (run as root)".into(),
        ));
    }
    let detected = crate::capacity::detect(&cfg.data_dir);
    let capacity = Resources {
        cpu_millis: cfg.cpu_millis.unwrap_or(detected.cpu_millis),
        memory_mib: cfg.memory_mib.unwrap_or(detected.memory_mib),
        disk_mib: cfg.disk_mib.unwrap_or(detected.disk_mib),
    };
    let mut facts = BTreeMap::new();
    let mut driver_names: Vec<String> = Vec::new();
    for (name, d) in &drivers {
        driver_names.push(name.to_string());
        facts.extend(d.fingerprint().facts);
    }
    driver_names.sort();
    // Where peers reach this node (replica exports): given, or the local address of
    // the route to the server.
    let address = if cfg.address.is_empty() {
        route_address(&cfg.server).unwrap_or_else(|| "127.0.0.1".to_string())
    } else {
        cfg.address.clone()
    };
    let registration = RegisterNode {
        name: cfg.name.clone(),
        address: address.clone(),
        capacity,
        labels: cfg.labels.clone(),
        drivers: driver_names,
        facts,
    };

    let client = Arc::new(ServerClient::new(&cfg.server));
    let agent = Arc::new(Agent {
        cfg: cfg.clone(),
        address: address.clone(),
        drivers,
        tasks: Mutex::new(BTreeMap::new()),
        assignments: Mutex::new(None),
        reconcile_now: Notify::new(),
        report_now: Notify::new(),
        client: client.clone(),
        rt: tokio::runtime::Handle::current(),
        ports: Mutex::new(BTreeMap::new()),
        store: crate::store::NodeStore {
            chunks: nimbus_image::ImageStore::open(
                cfg.data_dir.join("store"),
                nimbus_image::StoreOptions::default(),
            )
            .map_err(|e| AgentError::ChunkStore(e.to_string()))?,
            client: client.clone(),
            rt: tokio::runtime::Handle::current(),
        },
        wanted_images: Mutex::new(Vec::new()),
        replicated: Mutex::new(Default::default()),
        last_heartbeat: Mutex::new(Heartbeat {
            instances: vec![],
            standbys: vec![],
        }),
        replicas: crate::replica::Replicas::new(&cfg.data_dir, &address),
        standbys_wanted: Mutex::new(Vec::new()),
        health: crate::health::Health::default(),
    });
    {
        // Probes run on their own thread: a slow service never holds up the reconciler.
        let a = agent.clone();
        std::thread::Builder::new()
            .name("health".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(250));
                let targets = a.health_targets();
                a.health.probe_due(&targets);
            })
            .map_err(|e| AgentError::Thread(format!("starting the health checker: {e}")))?;
    }
    {
        let a = agent.clone();
        let _ = tokio::task::spawn_blocking(move || a.recover()).await;
    }

    // Register, retrying until the server answers.
    let mut delay = Duration::from_millis(100);
    loop {
        match client.register(&registration).await {
            Ok(node) => {
                tracing::info!(node = %node.name, server = %cfg.server, "registered");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "registration failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }

    tokio::spawn(poll_assignments(
        agent.clone(),
        client.clone(),
        registration.clone(),
    ));
    tokio::spawn(heartbeat_loop(agent.clone(), client.clone(), registration));

    // The reconciler: on new assignments, and twice a second to watch tasks (20 times
    // while a VM migrates in: its guest is paused from its arrival until it runs).
    loop {
        let tick = if agent.awaits_migration() {
            Duration::from_millis(50)
        } else {
            Duration::from_millis(500)
        };
        let _ = tokio::time::timeout(tick, agent.reconcile_now.notified()).await;
        let a = agent.clone();
        if let Ok(true) = tokio::task::spawn_blocking(move || a.reconcile()).await {
            agent.report_now.notify_one();
        }
    }
}

async fn poll_assignments(agent: Arc<Agent>, client: Arc<ServerClient>, reg: RegisterNode) {
    let mut index = None;
    loop {
        match client
            .assignments(&reg.name, index, Duration::from_secs(30))
            .await
        {
            Ok(set) => {
                index = Some(set.index);
                *agent.assignments.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(set.assignments);
                *agent
                    .wanted_images
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = set.images;
                *agent
                    .standbys_wanted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = set.standbys;
                agent.reconcile_now.notify_one();
            }
            Err(crate::client::ClientError::Api { status: 404, .. }) => {
                // The server forgot us (fresh store): register again.
                let _ = client.register(&reg).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "assignments poll failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn heartbeat_loop(agent: Arc<Agent>, client: Arc<ServerClient>, reg: RegisterNode) {
    loop {
        let _ = tokio::time::timeout(agent.cfg.heartbeat_every, agent.report_now.notified()).await;
        let a = agent.clone();
        let Ok((hb, logs)) = tokio::task::spawn_blocking(move || a.heartbeat_parts()).await else {
            continue;
        };
        // Output first, so a task's last words reach the server before its exit does.
        for (name, generation, offset, bytes) in logs {
            let n = bytes.len() as u64;
            match client.ship_logs(&name, generation, offset, bytes).await {
                Ok(()) => {
                    let a = agent.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        a.logs_shipped(&name, generation, offset + n)
                    })
                    .await;
                }
                Err(e) => tracing::debug!(instance = %name, error = %e, "log shipping failed"),
            }
        }
        match client.heartbeat(&reg.name, &hb).await {
            Ok(()) => {}
            Err(crate::client::ClientError::Api { status: 404, .. }) => {
                let _ = client.register(&reg).await;
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}
