//! Replicas this node serves as the hot standby of VMs on other nodes: a raw file the
//! size of the primary's disk, exported over NBD by `qemu-nbd` on this node's
//! address. The primary's QEMU mirrors every guest write into it; when the primary's
//! node fails, this node boots the VM from the file ([`Replicas::take`]), after
//! stopping the export so that the old primary can no longer write to it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use nimbus_api::{StandbyAssignment, StandbyReport};

/// Ports replicas are served on.
const PORTS: std::ops::Range<u16> = 30000..40000;

struct Served {
    generation: u64,
    port: u16,
    export: String,
    file: PathBuf,
    child: Child,
}

/// The replicas of this node.
pub struct Replicas {
    dir: PathBuf,
    address: String,
    served: Mutex<BTreeMap<String, Served>>,
}

impl Replicas {
    /// Replicas live under `data_dir/standby`; exports listen on `address`. Exports
    /// left by an earlier run of the agent are ended (they are started again).
    pub fn new(data_dir: &Path, address: &str) -> Replicas {
        let dir = data_dir.join("standby");
        kill_qemu_nbd_under(&dir);
        Replicas {
            dir,
            address: address.to_string(),
            served: Mutex::new(BTreeMap::new()),
        }
    }

    fn served(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Served>> {
        self.served.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves exactly the wanted replicas: starts missing exports (a new file for a
    /// new generation; the primary's mirror fills it) and ends unwanted ones.
    pub fn reconcile(&self, wanted: &[StandbyAssignment]) {
        let mut served = self.served();
        let unwanted: Vec<String> = served
            .iter()
            .filter(|(name, s)| {
                !wanted
                    .iter()
                    .any(|w| &w.instance == *name && w.generation == s.generation)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in unwanted {
            if let Some(mut s) = served.remove(&name) {
                stop(&mut s.child);
                let _ = std::fs::remove_file(&s.file);
            }
        }
        // An export whose qemu-nbd died is started again.
        served.retain(|_, s| matches!(s.child.try_wait(), Ok(None)));
        for w in wanted {
            if served.contains_key(&w.instance) {
                continue;
            }
            match self.serve(w) {
                Ok(s) => {
                    tracing::info!(instance = %w.instance, port = s.port, "serving a replica");
                    served.insert(w.instance.clone(), s);
                }
                Err(e) => {
                    tracing::warn!(instance = %w.instance, error = %e, "cannot serve replica")
                }
            }
        }
    }

    fn serve(&self, w: &StandbyAssignment) -> Result<Served, String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let file = self.dir.join(format!("{}.raw", w.instance));
        // Never truncated: an export started again (qemu-nbd died, the agent restarted)
        // keeps what the replica holds. Each start has its own export name, so the
        // server sees a new endpoint, marks the standby out of sync, and the primary
        // copies everything again (`sync: full`) before it is in sync once more.
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&file)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        if f.metadata().map(|m| m.len()).unwrap_or(0) != w.disk_bytes {
            f.set_len(w.disk_bytes)
                .map_err(|e| format!("{}: {e}", file.display()))?;
        }
        drop(f);
        let export = format!(
            "{}.{}",
            w.instance,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        );
        let port = PORTS
            .clone()
            .find(|p| std::net::TcpListener::bind((self.address.as_str(), *p)).is_ok())
            .ok_or("no free port for the replica")?;
        let child = Command::new("qemu-nbd")
            .args([
                "--persistent",
                "--shared=1",
                "--format=raw",
                "--cache=writethrough",
            ])
            .arg(format!("--export-name={export}"))
            .arg(format!("--bind={}", self.address))
            .arg(format!("--port={port}"))
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("running qemu-nbd: {e}"))?;
        Ok(Served {
            generation: w.generation,
            port,
            export,
            file,
            child,
        })
    }

    /// What this node serves, for the heartbeat.
    pub fn reports(&self) -> Vec<StandbyReport> {
        self.served()
            .iter()
            .map(|(name, s)| StandbyReport {
                instance: name.clone(),
                generation: s.generation,
                endpoint: format!("{}:{}/{}", self.address, s.port, s.export),
            })
            .collect()
    }

    /// Ends the export of `instance`'s replica and moves the file to `dest`, for this
    /// node to boot the VM from it. None when this node holds no replica of it.
    pub fn take(&self, instance: &str, dest: &Path) -> Option<PathBuf> {
        let file = match self.served().remove(instance) {
            Some(mut s) => {
                stop(&mut s.child);
                s.file
            }
            None => self.dir.join(format!("{instance}.raw")),
        };
        std::fs::rename(&file, dest).ok()?;
        Some(dest.to_path_buf())
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for s in self.served().values_mut() {
            stop(&mut s.child);
        }
    }
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGKILLs qemu-nbd processes serving files under `dir`.
fn kill_qemu_nbd_under(dir: &Path) {
    let needle = dir.to_string_lossy().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.starts_with("qemu-nbd") && cmd.contains(&needle) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
