//! The QEMU driver: one `qemu-system-x86_64 -name <instance>` per VM, run through the
//! process driver (so it gets a cgroup, a supervising shim, exit-status recording and
//! re-adoption after agent restarts) and controlled through its QMP socket.
//!
//! Per VM, in the task directory: `overlay.qcow2` (a linked clone of the image's base
//! disk, or an empty data disk for kernel images with a disk size), `seed.iso` (the
//! cloud-init NoCloud seed, volume label `cidata`), `qmp.sock` (commands),
//! `qmp-events.sock` (followed by a watcher thread that records shutdown, reset and
//! panic events to `events.jsonl`), and the serial console in the task's log.
//!
//! The accelerator is chosen once per driver by trying: a guest is booted with KVM
//! under a timeout and must print on its serial console; otherwise TCG is used.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nimbus_api::instance::QEMU_OVERHEAD_MIB;

use super::process::ProcessDriver;
use super::qmp;
use super::{
    Driver, DriverError, Fingerprint, Incoming, MigrationStats, MirrorTarget, TaskConfig,
    TaskDetails, TaskHandle, TaskState, TaskStats, VmBoot, LOG_FILE,
};

/// QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// What the tiny guest prints when it is ready.
pub const READY_MARKERS: [&str; 2] = ["nimbus-guest-ready", "Cloud-init v. "];
/// How long a QMP exchange may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// Drive id of the instance's disk (what a mirror copies).
const DISK_ID: &str = "disk0";
/// Block node of the mirror's NBD target, and the mirror job.
const REPLICA_NODE: &str = "replica0";
const MIRROR_JOB: &str = "mirror0";
/// Live migration: the block node of the target's disk export, and the copy job.
const MIGRATION_NODE: &str = "migration0";
const MIGRATION_JOB: &str = "migrate0";
/// Ports the target of a live migration listens on (disk export, migration stream).
const MIGRATION_PORTS: std::ops::Range<u16> = 40000..50000;

const KEY_ACCEL: &str = "accelerator";
const KEY_ENDPOINTS: &str = "endpoints";
const KEY_STARTED_MS: &str = "started_ms";
/// The target of a live migration: where it waits (JSON), until the VM arrives.
const KEY_INCOMING: &str = "incoming";

/// Runs VMs.
pub struct QemuDriver {
    process: ProcessDriver,
    accel: OnceLock<(String, String)>,
    /// Event watcher threads by task directory, so each VM has exactly one.
    watchers: Arc<Mutex<HashMap<PathBuf, ()>>>,
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> DriverError {
    move |source| DriverError::Io { context, source }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl QemuDriver {
    pub fn new(process: ProcessDriver) -> Self {
        QemuDriver {
            process,
            accel: OnceLock::new(),
            watchers: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Forces an accelerator (skips the probe).
    pub fn with_accelerator(self, accel: &str) -> Self {
        let _ = self
            .accel
            .set((accel.to_string(), "set by configuration".to_string()));
        self
    }

    /// The accelerator in use and how it was chosen.
    pub fn accelerator(&self) -> (String, String) {
        self.accel.get_or_init(probe_accelerator).clone()
    }

    fn qemu_args(
        &self,
        cfg: &TaskConfig,
        accel: &str,
        has_disk: bool,
    ) -> Result<Vec<String>, DriverError> {
        let vm = cfg.vm.as_ref().ok_or_else(|| {
            DriverError::Start("no VM configuration (image) resolved for this instance".into())
        })?;
        let dir = &cfg.dir;
        let spec = &cfg.spec;
        let mut a: Vec<String> = vec![
            "-name".into(),
            cfg.name.clone(),
            "-accel".into(),
            // TCG's translation cache defaults to 1 GiB: keep it inside the overhead.
            if accel == "tcg" {
                "tcg,tb-size=32".into()
            } else {
                accel.into()
            },
            "-machine".into(),
            "q35".into(),
            "-cpu".into(),
            if accel == "kvm" { "host" } else { "max" }.into(),
            "-m".into(),
            format!("{}M", spec.memory_mib),
            "-smp".into(),
            spec.vm_vcpus().to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-serial".into(),
            "stdio".into(),
            "-no-reboot".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()),
            "-qmp".into(),
            format!(
                "unix:{},server=on,wait=off",
                dir.join("qmp-events.sock").display()
            ),
            "-device".into(),
            "virtio-rng-pci".into(),
        ];
        match &vm.boot {
            VmBoot::Kernel {
                kernel,
                initrd,
                cmdline,
                ..
            } => {
                a.extend([
                    "-kernel".into(),
                    kernel.display().to_string(),
                    "-initrd".into(),
                    initrd.display().to_string(),
                    "-append".into(),
                    cmdline.clone(),
                ]);
            }
            VmBoot::Disk { .. } => {}
        }
        if has_disk {
            a.extend(drive(&dir.join("overlay.qcow2"), "qcow2", false));
        }
        a.extend(drive(&dir.join("seed.iso"), "raw", true));
        let mut netdev = "user,id=net0".to_string();
        for (host, guest) in &vm.ports {
            netdev.push_str(&format!(",hostfwd=tcp::{host}-:{guest}"));
        }
        a.extend([
            "-netdev".into(),
            netdev,
            "-device".into(),
            "virtio-net-pci,netdev=net0".into(),
        ]);
        if cfg.incoming.is_some() {
            // Wait for the VM: its memory and devices come from the source. It stays
            // paused after it arrives (-S): it runs only once the server has placed it
            // here, and its disk can only be opened for writing once the export ends.
            a.extend(["-incoming".into(), "defer".into(), "-S".into()]);
        }
        Ok(a)
    }

    /// Creates the instance's disk: a qcow2 overlay on the read-only base (linked clone),
    /// or, for the target of a live migration, an empty disk the size of the source's.
    /// Returns whether the VM has a disk.
    fn prepare_disk(&self, cfg: &TaskConfig) -> Result<bool, DriverError> {
        let Some(vm) = &cfg.vm else { return Ok(false) };
        let overlay = cfg.dir.join("overlay.qcow2");
        let mut cmd = Command::new("qemu-img");
        cmd.args(["create", "-q", "-f", "qcow2"]);
        if let Some(incoming) = &cfg.incoming {
            if overlay.exists() {
                // Possibly the only copy of the disk: never replaced by an empty one.
                return Err(DriverError::Start(format!(
                    "{} exists: not replacing it with an empty disk for a migration",
                    overlay.display()
                )));
            }
            let Some(bytes) = incoming.disk_bytes else {
                return Ok(false);
            };
            cmd.arg(&overlay).arg(bytes.to_string());
            run_tool(&mut cmd, "qemu-img create")?;
            return Ok(true);
        }
        if overlay.exists() {
            return Ok(true); // a restart keeps the disk
        }
        let size = (cfg.spec.disk_mib > 0).then(|| format!("{}M", cfg.spec.disk_mib));
        match &vm.boot {
            VmBoot::Disk { base, format } => {
                cmd.arg("-b").arg(base).args(["-F", format]);
            }
            VmBoot::Kernel { disk_base, .. } => match disk_base {
                Some(base) => {
                    cmd.arg("-b").arg(base).args(["-F", "raw"]);
                }
                None if size.is_none() => return Ok(false),
                None => {}
            },
        }
        cmd.arg(&overlay);
        if let Some(s) = &size {
            cmd.arg(s);
        }
        run_tool(&mut cmd, "qemu-img create")?;
        // A disk size below the base's virtual size leaves qemu-img's default (the base's).
        Ok(true)
    }

    /// The target of a live migration, once its QEMU runs: serves the empty disk over
    /// NBD (writable, for the source's mirror) and listens for the migration stream.
    fn await_migration(
        &self,
        cfg: &TaskConfig,
        address: &str,
        has_disk: bool,
    ) -> Result<nimbus_api::MigrationTarget, DriverError> {
        let sock = cfg.dir.join("qmp.sock");
        let deadline = Instant::now() + QMP_TIMEOUT;
        while qmp::query_status(&sock, Duration::from_millis(500)).is_err() {
            if Instant::now() >= deadline {
                return Err(DriverError::Start(format!(
                    "QEMU did not answer on {} within {QMP_TIMEOUT:?}",
                    sock.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut ports = MIGRATION_PORTS
            .clone()
            .filter(|p| std::net::TcpListener::bind((address, *p)).is_ok());
        let mut disk = None;
        if has_disk {
            let port = ports
                .next()
                .ok_or_else(|| DriverError::Start("no free port for the disk export".into()))?;
            let node = disk_node_name(&sock)?;
            qmp::execute(
                &sock,
                QMP_TIMEOUT,
                "nbd-server-start",
                serde_json::json!({
                    "addr": { "type": "inet", "data": { "host": address, "port": port.to_string() } }
                }),
            )?;
            let export = format!("{}.{}", cfg.name, cfg.generation);
            qmp::execute(
                &sock,
                QMP_TIMEOUT,
                "block-export-add",
                serde_json::json!({
                    "type": "nbd", "id": MIGRATION_NODE, "node-name": node,
                    "name": export, "writable": true,
                }),
            )?;
            disk = Some(format!("{address}:{port}/{export}"));
        }
        let port = ports
            .next()
            .ok_or_else(|| DriverError::Start("no free port for the migration".into()))?;
        let uri = format!("tcp:{address}:{port}");
        // The disk is activated at `cont`, after the export ended, not on arrival.
        qmp::execute(
            &sock,
            QMP_TIMEOUT,
            "migrate-set-capabilities",
            serde_json::json!({
                "capabilities": [{ "capability": "late-block-activate", "state": true }]
            }),
        )?;
        qmp::execute(
            &sock,
            QMP_TIMEOUT,
            "migrate-incoming",
            serde_json::json!({ "uri": uri }),
        )?;
        Ok(nimbus_api::MigrationTarget { disk, uri })
    }

    /// The source side of [`Driver::migrate`], without the clean-up.
    fn send_vm(
        sock: &Path,
        to: &nimbus_api::MigrationTarget,
        deadline: Instant,
    ) -> Result<Option<u64>, DriverError> {
        let failed = |message: String| DriverError::Qmp {
            socket: sock.display().to_string(),
            message,
        };
        if let Some(disk) = &to.disk {
            let t: MirrorTarget = disk.parse().map_err(failed)?;
            // Once in sync, every guest write reaches the target before it completes, so
            // the target's disk is whole the moment the guest pauses.
            mirror_to_nbd(sock, &t, MIGRATION_NODE, MIGRATION_JOB)?;
            loop {
                let job = block_job(sock, MIGRATION_JOB)?
                    .ok_or_else(|| failed("the disk copy to the target failed".into()))?;
                if job.get("ready").and_then(|r| r.as_bool()) == Some(true) {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(failed("the disk copy did not finish in time".into()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        qmp::execute(
            sock,
            QMP_TIMEOUT,
            "migrate",
            serde_json::json!({ "uri": to.uri }),
        )?;
        loop {
            let m = qmp::execute(sock, QMP_TIMEOUT, "query-migrate", serde_json::json!({}))?;
            match m.get("status").and_then(|s| s.as_str()).unwrap_or("") {
                "completed" => return Ok(m.get("downtime").and_then(|d| d.as_u64())),
                "failed" | "cancelled" => {
                    return Err(failed(format!(
                        "migration {}: {}",
                        m["status"].as_str().unwrap_or(""),
                        m.get("error-desc")
                            .and_then(|e| e.as_str())
                            .unwrap_or("no reason given")
                    )))
                }
                _ if Instant::now() >= deadline => {
                    let _ =
                        qmp::execute(sock, QMP_TIMEOUT, "migrate_cancel", serde_json::json!({}));
                    return Err(failed("the migration did not finish in time".into()));
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Writes the cloud-init NoCloud seed (`cidata` ISO with meta-data and user-data).
    fn prepare_seed(&self, cfg: &TaskConfig) -> Result<(), DriverError> {
        let seed_dir = cfg.dir.join("seed");
        fs::create_dir_all(&seed_dir)
            .map_err(io_err(format!("creating {}", seed_dir.display())))?;
        let meta = format!(
            "instance-id: {}-{}\nlocal-hostname: {}\n",
            cfg.name, cfg.generation, cfg.name
        );
        fs::write(seed_dir.join("meta-data"), meta).map_err(io_err("writing meta-data".into()))?;
        let user = match (&cfg.spec.user_data, cfg.spec.ssh_authorized_keys.is_empty()) {
            (Some(u), _) => u.clone(),
            (None, false) => {
                let mut s = String::from("#cloud-config\nssh_authorized_keys:\n");
                for k in &cfg.spec.ssh_authorized_keys {
                    s.push_str(&format!("  - {}\n", k.trim()));
                }
                s
            }
            (None, true) => "#cloud-config\n{}\n".to_string(),
        };
        fs::write(seed_dir.join("user-data"), user).map_err(io_err("writing user-data".into()))?;
        let iso = cfg.dir.join("seed.iso");
        let tool = ["genisoimage", "mkisofs", "xorrisofs"]
            .into_iter()
            .find(|t| which(t))
            .ok_or_else(|| {
                DriverError::Start(
                    "no ISO tool found for the cloud-init seed: install genisoimage".into(),
                )
            })?;
        let mut cmd = Command::new(tool);
        cmd.args(["-quiet", "-output"])
            .arg(&iso)
            .args(["-volid", "cidata", "-joliet", "-rock"])
            .arg(seed_dir.join("user-data"))
            .arg(seed_dir.join("meta-data"));
        run_tool(&mut cmd, tool)?;
        Ok(())
    }

    /// Follows the VM's event socket in a thread, appending events to `events.jsonl`.
    fn watch_events(&self, dir: &Path) {
        {
            let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
            if w.contains_key(dir) {
                return;
            }
            w.insert(dir.to_path_buf(), ());
        }
        let dir = dir.to_path_buf();
        let watchers = self.watchers.clone();
        std::thread::spawn(move || {
            let sock = dir.join("qmp-events.sock");
            let deadline = Instant::now() + Duration::from_secs(10);
            while !sock.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let log = dir.join("events.jsonl");
            let _ = qmp::follow_events(&sock, |_, v| {
                if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(&log) {
                    let _ = writeln!(f, "{v}");
                }
            });
            watchers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&dir);
        });
    }

    /// A sentence about the last shutdown-like QMP event, if any.
    fn last_event_reason(dir: &Path) -> Option<String> {
        let text = fs::read_to_string(dir.join("events.jsonl")).ok()?;
        text.lines().rev().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            match v["event"].as_str()? {
                "GUEST_PANICKED" => Some("the guest kernel panicked".to_string()),
                "SHUTDOWN" => {
                    let why = v["data"]["reason"].as_str().unwrap_or("unknown");
                    Some(match why {
                        "guest-shutdown" => "the guest powered off".to_string(),
                        "guest-reset" => "the guest rebooted (VMs stop on reboot)".to_string(),
                        "host-qmp-quit" | "host-qmp-system-reset" => {
                            "stopped through QMP".to_string()
                        }
                        "host-signal" => "QEMU was killed by a signal".to_string(),
                        other => format!("QEMU shut down ({other})"),
                    })
                }
                _ => None,
            }
        })
    }

    fn qmp_sock(handle: &TaskHandle) -> PathBuf {
        handle.dir.join("qmp.sock")
    }
}

/// A block job of the VM as `query-block-jobs` describes it, if there is one.
fn block_job(sock: &Path, id: &str) -> Result<Option<serde_json::Value>, DriverError> {
    let jobs = qmp::execute(sock, QMP_TIMEOUT, "query-block-jobs", serde_json::json!({}))?;
    Ok(jobs
        .as_array()
        .into_iter()
        .flatten()
        .find(|j| j.get("device").and_then(|d| d.as_str()) == Some(id))
        .cloned())
}

/// Starts mirroring the VM's disk to an NBD export (block node `node`, job `job`): a
/// full copy, then every guest write completes only once the export has it
/// (`copy-mode: write-blocking`).
fn mirror_to_nbd(sock: &Path, to: &MirrorTarget, node: &str, job: &str) -> Result<(), DriverError> {
    qmp::execute(
        sock,
        QMP_TIMEOUT,
        "blockdev-add",
        serde_json::json!({
            "driver": "nbd",
            "node-name": node,
            "server": { "type": "inet", "host": to.host, "port": to.port.to_string() },
            "export": to.export,
        }),
    )?;
    let started = qmp::execute(
        sock,
        QMP_TIMEOUT,
        "blockdev-mirror",
        serde_json::json!({
            "job-id": job,
            "device": DISK_ID,
            "target": node,
            "sync": "full",
            "copy-mode": "write-blocking",
        }),
    );
    if let Err(e) = started {
        let _ = qmp::execute(
            sock,
            QMP_TIMEOUT,
            "blockdev-del",
            serde_json::json!({ "node-name": node }),
        );
        return Err(e);
    }
    Ok(())
}

/// Ends a block job (a ready mirror completes with its target whole) and removes the
/// job's target node.
fn end_block_job(sock: &Path, job: &str, node: &str) -> Result<(), DriverError> {
    let _ = qmp::execute(
        sock,
        QMP_TIMEOUT,
        "block-job-cancel",
        serde_json::json!({ "device": job, "force": true }),
    );
    // The job ends asynchronously; the target node can go once it has.
    let deadline = Instant::now() + QMP_TIMEOUT;
    while Instant::now() < deadline && block_job(sock, job)?.is_some() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = qmp::execute(
        sock,
        QMP_TIMEOUT,
        "blockdev-del",
        serde_json::json!({ "node-name": node }),
    );
    Ok(())
}

/// The block node under the VM's disk drive (what an export serves).
fn disk_node_name(sock: &Path) -> Result<String, DriverError> {
    disk_block(sock)?
        .as_ref()
        .and_then(|b| b.pointer("/inserted/node-name"))
        .and_then(|n| n.as_str())
        .map(String::from)
        .ok_or_else(|| DriverError::Qmp {
            socket: sock.display().to_string(),
            message: format!("no block node under drive {DISK_ID}"),
        })
}

/// The VM's disk drive as `query-block` describes it, if it has one.
fn disk_block(sock: &Path) -> Result<Option<serde_json::Value>, DriverError> {
    let blocks = qmp::execute(sock, QMP_TIMEOUT, "query-block", serde_json::json!({}))?;
    Ok(blocks
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b.get("device").and_then(|d| d.as_str()) == Some(DISK_ID))
        .cloned())
}

fn drive(path: &Path, format: &str, readonly: bool) -> [String; 2] {
    [
        "-drive".into(),
        format!(
            "file={},if=virtio,format={format}{}",
            path.display(),
            if readonly {
                ",readonly=on".to_string()
            } else {
                format!(",id={DISK_ID}")
            }
        ),
    ]
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<(), DriverError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| DriverError::Start(format!("running {what}: {e}")))?;
    if !out.status.success() {
        return Err(DriverError::Start(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Tries KVM by booting a guest under a timeout: the firmware must print on the
/// console and, when a tiny guest kernel is cached on the node, the kernel must boot.
/// Some machines have /dev/kvm and still hang or crash guests; those get TCG.
fn probe_accelerator() -> (String, String) {
    if let Ok(forced) = std::env::var("NIMBUS_ACCEL") {
        return (forced, "NIMBUS_ACCEL".into());
    }
    if !Path::new("/dev/kvm").exists() {
        return ("tcg".into(), "no /dev/kvm".into());
    }
    let out = Command::new("timeout")
        .args([
            "10", QEMU, "-accel", "kvm", "-cpu", "host", "-machine", "q35", "-m", "64",
        ])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .args([
            "-chardev",
            "stdio,id=dbg",
            "-device",
            "isa-debugcon,iobase=0x402,chardev=dbg",
        ])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            if text.contains("Running on KVM")
                && !text.contains("Assertion")
                && !text.contains("error")
            {
                ("kvm".into(), "a KVM guest booted its firmware".into())
            } else {
                let first = text
                    .lines()
                    .find(|l| l.contains("error") || l.contains("Assertion"))
                    .unwrap_or("no output within 10 s")
                    .to_string();
                ("tcg".into(), format!("KVM guest failed: {first}"))
            }
        }
        Err(e) => ("tcg".into(), format!("cannot run {QEMU}: {e}")),
    }
}

impl Driver for QemuDriver {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn fingerprint(&self) -> Fingerprint {
        let mut fp = Fingerprint::default();
        let version = Command::new(QEMU).arg("--version").output();
        let Ok(v) = version else {
            fp.facts.insert(
                "qemu_unavailable_reason".into(),
                format!("{QEMU} not found"),
            );
            return fp;
        };
        let line = String::from_utf8_lossy(&v.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        if !which("qemu-img") {
            fp.facts.insert(
                "qemu_unavailable_reason".into(),
                "qemu-img not found".into(),
            );
            return fp;
        }
        let pf = self.process.fingerprint();
        if !pf.available {
            return pf;
        }
        let (accel, why) = self.accelerator();
        fp.available = true;
        fp.facts.insert("qemu_version".into(), line);
        fp.facts.insert("accelerator".into(), accel);
        fp.facts.insert("accelerator_reason".into(), why);
        fp
    }

    fn start(&self, cfg: &TaskConfig) -> Result<TaskHandle, DriverError> {
        let vm = cfg
            .vm
            .as_ref()
            .ok_or_else(|| DriverError::Start("no image resolved for this VM".into()))?;
        fs::create_dir_all(&cfg.dir).map_err(io_err(format!("creating {}", cfg.dir.display())))?;
        for stale in ["qmp.sock", "qmp-events.sock", "events.jsonl"] {
            let _ = fs::remove_file(cfg.dir.join(stale));
        }
        let has_disk = self.prepare_disk(cfg)?;
        self.prepare_seed(cfg)?;
        let (accel, _) = self.accelerator();
        let mut argv = vec![QEMU.to_string()];
        argv.extend(self.qemu_args(cfg, &accel, has_disk)?);
        let mut pcfg = cfg.clone();
        pcfg.spec.command = argv;
        pcfg.spec.memory_mib = cfg.spec.memory_mib + QEMU_OVERHEAD_MIB;
        pcfg.spec.cpu_millis = cfg.spec.cpu_millis.max(250);
        // The console log starts fresh with each boot so readiness is judged on this one.
        let _ = fs::remove_file(cfg.dir.join(LOG_FILE));
        let started = now_ms();
        let mut handle = self.process.start(&pcfg)?;
        handle.driver = "qemu".into();
        handle.data.insert(KEY_ACCEL.into(), accel);
        handle.data.insert(
            KEY_ENDPOINTS.into(),
            vm.ports
                .iter()
                .map(|(h, g)| format!("{h}->{g}/tcp"))
                .collect::<Vec<_>>()
                .join(","),
        );
        handle
            .data
            .insert(KEY_STARTED_MS.into(), started.to_string());
        self.watch_events(&cfg.dir);
        if let Some(incoming) = &cfg.incoming {
            match self.await_migration(cfg, &incoming.address, has_disk) {
                Ok(target) => {
                    let json = serde_json::to_string(&target).unwrap_or_default();
                    handle.data.insert(KEY_INCOMING.into(), json);
                }
                Err(e) => {
                    let _ = self.process.stop(&handle, Duration::from_secs(2));
                    let _ = self.destroy(&handle);
                    return Err(e);
                }
            }
        }
        Ok(handle)
    }

    fn status(&self, handle: &TaskHandle) -> Result<TaskState, DriverError> {
        match self.process.status(handle)? {
            TaskState::Running => Ok(TaskState::Running),
            TaskState::Exited(mut exit) => {
                if let Some(why) = Self::last_event_reason(&handle.dir) {
                    exit.reason = format!("{why}; {}", exit.reason);
                } else if exit.code.is_some_and(|c| c != 0) {
                    // QEMU failed on its own: its last words are on stderr, in the log.
                    let log = fs::read_to_string(handle.dir.join(LOG_FILE)).unwrap_or_default();
                    if let Some(line) = log.lines().rev().find(|l| l.contains("qemu-system")) {
                        exit.reason = format!("{}: {}", exit.reason, line.trim());
                    }
                }
                Ok(TaskState::Exited(exit))
            }
        }
    }

    fn stop(&self, handle: &TaskHandle, grace: Duration) -> Result<(), DriverError> {
        let sock = Self::qmp_sock(handle);
        // A VM that migrated away must never run here again (`cont` would resume it
        // next to its new copy), nor one that waits for a migration: no power button.
        let status = qmp::query_status(&sock, QMP_TIMEOUT).unwrap_or_default();
        if matches!(status.as_str(), "postmigrate" | "inmigrate") {
            let _ = qmp::quit(&sock, QMP_TIMEOUT);
        } else if matches!(self.process.status(handle), Ok(TaskState::Running))
            && qmp::system_powerdown(&sock, QMP_TIMEOUT).is_ok()
        {
            // A paused guest cannot react to the power button.
            let _ = qmp::cont(&sock, QMP_TIMEOUT);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if !matches!(self.process.status(handle), Ok(TaskState::Running)) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = qmp::quit(&sock, QMP_TIMEOUT);
        }
        self.process.stop(handle, Duration::from_secs(2))
    }

    /// Releases the VM's process state; its disk (`overlay.qcow2`) stays for the next
    /// start, and goes when the agent forgets the instance (deleted or moved away).
    fn destroy(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        self.process.destroy(handle)?;
        for f in ["seed.iso", "qmp.sock", "qmp-events.sock", "events.jsonl"] {
            let _ = fs::remove_file(handle.dir.join(f));
        }
        let _ = fs::remove_dir_all(handle.dir.join("seed"));
        Ok(())
    }

    fn recover(&self, handle: &TaskHandle) -> Result<bool, DriverError> {
        let alive = self.process.recover(handle)?;
        if alive && matches!(self.process.status(handle), Ok(TaskState::Running)) {
            self.watch_events(&handle.dir);
        }
        Ok(alive)
    }

    fn stats(&self, handle: &TaskHandle) -> Result<TaskStats, DriverError> {
        self.process.stats(handle)
    }

    fn pause(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        let sock = Self::qmp_sock(handle);
        qmp::stop(&sock, QMP_TIMEOUT)?;
        match qmp::query_status(&sock, QMP_TIMEOUT)?.as_str() {
            "paused" => Ok(()),
            other => Err(DriverError::Qmp {
                socket: sock.display().to_string(),
                message: format!("after stop the VM is {other}, not paused"),
            }),
        }
    }

    fn resume(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        let sock = Self::qmp_sock(handle);
        let status = qmp::query_status(&sock, QMP_TIMEOUT)?;
        if matches!(status.as_str(), "postmigrate" | "inmigrate") {
            // Migrated away (it runs elsewhere), or not here yet: never run here.
            return Err(DriverError::Qmp {
                socket: sock.display().to_string(),
                message: format!("the VM is {status}: it cannot run here"),
            });
        }
        qmp::cont(&sock, QMP_TIMEOUT)?;
        match qmp::query_status(&sock, QMP_TIMEOUT)?.as_str() {
            "running" => Ok(()),
            other => Err(DriverError::Qmp {
                socket: sock.display().to_string(),
                message: format!("after cont the VM is {other}, not running"),
            }),
        }
    }

    fn start_mirror(&self, handle: &TaskHandle, to: &MirrorTarget) -> Result<(), DriverError> {
        let sock = Self::qmp_sock(handle);
        // A previous mirror (to an older standby) goes first.
        let _ = self.stop_mirror(handle);
        mirror_to_nbd(&sock, to, REPLICA_NODE, MIRROR_JOB)
    }

    fn mirror_in_sync(&self, handle: &TaskHandle) -> Result<bool, DriverError> {
        let sock = Self::qmp_sock(handle);
        let job = block_job(&sock, MIRROR_JOB)?.ok_or_else(|| DriverError::Qmp {
            socket: sock.display().to_string(),
            message: "the mirror job is gone (its target failed or it was cancelled)".into(),
        })?;
        Ok(job.get("ready").and_then(|r| r.as_bool()).unwrap_or(false)
            && job.get("status").and_then(|s| s.as_str()) == Some("ready"))
    }

    fn stop_mirror(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        end_block_job(&Self::qmp_sock(handle), MIRROR_JOB, REPLICA_NODE)
    }

    fn poll_incoming(&self, handle: &TaskHandle) -> Result<Incoming, DriverError> {
        let Some(target) = handle.data.get(KEY_INCOMING) else {
            return Ok(Incoming::Arrived);
        };
        let sock = Self::qmp_sock(handle);
        match qmp::query_status(&sock, QMP_TIMEOUT)?.as_str() {
            "inmigrate" => serde_json::from_str(target)
                .map(Incoming::Waiting)
                .map_err(|e| DriverError::Qmp {
                    socket: sock.display().to_string(),
                    message: format!("bad migration target in the task handle: {e}"),
                }),
            "paused" | "running" => {
                // The source is paused for good: its mirror no longer writes.
                let _ = qmp::execute(&sock, QMP_TIMEOUT, "nbd-server-stop", serde_json::json!({}));
                Ok(Incoming::Arrived)
            }
            other => Err(DriverError::Qmp {
                socket: sock.display().to_string(),
                message: format!("waiting for a migration, the VM is {other}"),
            }),
        }
    }

    fn migrate(
        &self,
        handle: &TaskHandle,
        to: &nimbus_api::MigrationTarget,
        timeout: Duration,
    ) -> Result<MigrationStats, DriverError> {
        let sock = Self::qmp_sock(handle);
        let began = Instant::now();
        // One block job per disk: a hot standby's mirror makes way.
        self.stop_mirror(handle)?;
        let sent = Self::send_vm(&sock, to, began + timeout);
        if to.disk.is_some() {
            // After a completed migration the copy is whole (the guest is paused).
            let _ = end_block_job(&sock, MIGRATION_JOB, MIGRATION_NODE);
        }
        let downtime_ms = sent?;
        Ok(MigrationStats {
            downtime_ms,
            total_ms: began.elapsed().as_millis() as u64,
        })
    }

    fn disk_bytes(&self, handle: &TaskHandle) -> Option<u64> {
        disk_block(&Self::qmp_sock(handle))
            .ok()??
            .pointer("/inserted/image/virtual-size")?
            .as_u64()
    }

    fn readiness(&self, handle: &TaskHandle) -> Option<u64> {
        let log = fs::read_to_string(handle.dir.join(LOG_FILE)).ok()?;
        if !READY_MARKERS.iter().any(|m| log.contains(m)) {
            return None;
        }
        let started: u64 = handle.data.get(KEY_STARTED_MS)?.parse().ok()?;
        Some(now_ms().saturating_sub(started))
    }

    fn details(&self, handle: &TaskHandle) -> TaskDetails {
        TaskDetails {
            accelerator: handle.data.get(KEY_ACCEL).cloned(),
            endpoints: handle
                .data
                .get(KEY_ENDPOINTS)
                .map(|e| {
                    e.split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}
