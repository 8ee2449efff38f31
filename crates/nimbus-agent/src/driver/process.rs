//! `ProcessDriver`: runs a command in its own cgroup under a detached supervising shim.
//!
//! `start` creates the cgroup `nimbus/<name>` with the spec's limits, writes
//! `<dir>/shim.json` and spawns the shim (`<shim_cmd...> <dir>/shim.json`, in production
//! `nimbus __shim`) in a new session, records its pid and start time in `<dir>/shim.pid`,
//! and returns once the shim reports the command running (`child.pid`) or finished
//! (`exit.json`). The shim runs the command inside the cgroup (see [`crate::shim`]).
//! Everything after that works from the files and the cgroup, so a restarted agent
//! sees the same answers as the one that started the task:
//!
//! * `status`: `exit.json` of this start present → exited with it; shim alive (same pid
//!   *and* start time) → running; shim gone without `exit.json` (it was SIGKILLed) →
//!   running while the cgroup still has processes (the command outlived its
//!   supervisor; `stop` and `destroy` still reach it through the cgroup), else exited
//!   with "supervisor lost; process gone".
//! * `stop`: SIGTERM to every process in the cgroup, SIGKILL after the grace period,
//!   then wait briefly for the shim to record the exit.
//! * `destroy`: kill what is left, remove the cgroup and the status files; keep the log.
//! * `recover`: true when `exit.json` of this start exists or the shim is alive with the
//!   same start time.
//!
//! Every start gets a `run_id` (in the handle data, `shim.json` and `exit.json`).
//! Starting a task again while an earlier start still runs kills the earlier shim and
//! command; the earlier handle then reads as exited ("replaced by a newer start of this
//! task") and `stop`/`destroy` on it leave the newer start alone.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use super::cgroup::{Cgroup, Hierarchy, Limits};
use super::{
    Driver, DriverError, ExitStatus, Fingerprint, TaskConfig, TaskHandle, TaskState, TaskStats,
    DATA_DIR,
};
use crate::shim::{self, ExitRecord, ShimConfig, CHILD_PID_FILE, CONFIG_FILE, EXIT_FILE, SHIM_ARG};

/// Handle data key holding the memory limit (for messages when the shim is lost).
const KEY_MEMORY_MIB: &str = "memory_mib";
/// Handle data key identifying one start of a task (see [`ShimConfig::run_id`]).
const KEY_RUN_ID: &str = "run_id";
/// Pid and start time of a task's shim ("PID START_TICKS"), written by the driver so
/// that a new start of the task can retire a shim an earlier agent lost track of.
const SHIM_PID_FILE: &str = "shim.pid";
/// Default parent cgroup of all tasks.
pub const DEFAULT_CGROUP_PARENT: &str = "nimbus";
/// PATH given to commands when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long processes get to leave the cgroup after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the shim to record an exit after its command died.
const EXIT_RECORD_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs process instances: one cgroup and one supervising shim per task.
pub struct ProcessDriver {
    state_root: PathBuf,
    shim_cmd: Vec<OsString>,
    cgroup_parent: String,
    start_timeout: Duration,
    hierarchy: OnceLock<Result<Hierarchy, String>>,
}

impl ProcessDriver {
    /// A driver whose shim is started as `shim_cmd... <config-file>` (production:
    /// [`ProcessDriver::default_shim_cmd`]). `state_root` is where task directories live;
    /// fingerprinting creates it and requires it to be usable. Task directories
    /// ([`TaskConfig::dir`]) are used as given and made absolute at start.
    pub fn new(state_root: PathBuf, shim_cmd: Vec<OsString>) -> Self {
        ProcessDriver {
            state_root,
            shim_cmd,
            cgroup_parent: DEFAULT_CGROUP_PARENT.to_string(),
            start_timeout: Duration::from_secs(5),
            hierarchy: OnceLock::new(),
        }
    }

    /// The command that starts a shim (before its config-file argument).
    pub fn shim_cmd(&self) -> Vec<OsString> {
        self.shim_cmd.clone()
    }

    /// `[current_exe, "__shim"]`: this very binary, routed to [`crate::shim::main`].
    pub fn default_shim_cmd() -> io::Result<Vec<OsString>> {
        Ok(vec![
            std::env::current_exe()?.into_os_string(),
            SHIM_ARG.into(),
        ])
    }

    /// Puts task cgroups under `parent` instead of `nimbus` (one path component).
    pub fn with_cgroup_parent(mut self, parent: impl Into<String>) -> Self {
        self.cgroup_parent = parent.into();
        self
    }

    fn hierarchy(&self) -> Result<&Hierarchy, DriverError> {
        self.hierarchy
            .get_or_init(|| Hierarchy::detect().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| DriverError::Unavailable(e.clone()))
    }

    fn probe(&self) -> Result<Hierarchy, DriverError> {
        let Some(exe) = self.shim_cmd.first() else {
            return Err(DriverError::Unavailable(
                "no shim command configured".into(),
            ));
        };
        if !shim::is_executable(Path::new(exe)) {
            return Err(DriverError::Unavailable(format!(
                "shim executable {} not found",
                Path::new(exe).display()
            )));
        }
        fs::create_dir_all(&self.state_root).map_err(|e| {
            DriverError::Unavailable(format!(
                "cannot create the state directory {}: {e}",
                self.state_root.display()
            ))
        })?;
        let h = self.hierarchy()?.clone();
        let probe = format!(".probe-{}", std::process::id());
        let cg = h.create(
            &self.cgroup_parent,
            &probe,
            Limits {
                memory_bytes: 64 << 20,
                cpu_millis: 100,
            },
        )?;
        cg.delete(Duration::from_secs(1))?;
        Ok(h)
    }

    fn spawn_shim(&self, config: &Path) -> io::Result<std::process::Child> {
        let mut cmd = Command::new(&self.shim_cmd[0]);
        cmd.args(&self.shim_cmd[1..])
            .arg(config)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn()
    }

    /// Starts the shim and waits until it reports the command running or finished.
    fn launch(&self, cfg: &TaskConfig, dir: &Path, cg: &Cgroup) -> Result<TaskHandle, DriverError> {
        let mut env = BTreeMap::new();
        env.insert(
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string()),
        );
        env.insert(
            "HOME".to_string(),
            std::env::var("HOME").unwrap_or_else(|_| "/".to_string()),
        );
        let data = dir.join(DATA_DIR);
        fs::create_dir_all(&data).map_err(|e| io_err(format!("creating {}", data.display()), e))?;
        env.insert(
            "NIMBUS_INSTANCE_DATA".to_string(),
            data.display().to_string(),
        );
        env.extend(cfg.spec.env.clone());
        let workdir = match &cfg.spec.workdir {
            Some(w) => data.join(w),
            None => data,
        };
        let shim_cfg = ShimConfig {
            name: cfg.name.clone(),
            command: cfg.spec.command.clone(),
            env,
            workdir,
            dir: dir.to_path_buf(),
            memory_mib: cfg.spec.memory_mib,
            cgroup: cg.to_data(),
            run_id: run_id(cfg.generation),
        };
        let config_path = dir.join(CONFIG_FILE);
        let json =
            serde_json::to_vec_pretty(&shim_cfg).map_err(|e| DriverError::Start(e.to_string()))?;
        shim::write_atomic(&config_path, &json)
            .map_err(|e| io_err(format!("writing {}", config_path.display()), e))?;

        let child = self.spawn_shim(&config_path).map_err(|e| {
            DriverError::Start(format!(
                "cannot run the supervisor {}: {e}",
                Path::new(&self.shim_cmd[0]).display()
            ))
        })?;
        let pid = child.id();
        // The shim is our unreaped child, so /proc/<pid> exists even if it already exited.
        let start_ticks = proc_stat(pid).map(|s| s.start_ticks).ok_or_else(|| {
            DriverError::Start(format!(
                "supervisor pid {pid} vanished before it could be inspected"
            ))
        })?;
        let shim_exit = reap_in_background(child);
        let pid_file = dir.join(SHIM_PID_FILE);
        if let Err(e) = shim::write_atomic(&pid_file, format!("{pid} {start_ticks}\n").as_bytes()) {
            // SAFETY: kill(2) has no memory-safety preconditions; the shim is our child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            return Err(io_err(format!("writing {}", pid_file.display()), e));
        }

        let mut handle = TaskHandle {
            name: cfg.name.clone(),
            driver: "process".to_string(),
            pid,
            start_ticks,
            child_pid: None,
            dir: dir.to_path_buf(),
            data: cg.to_data(),
        };
        handle
            .data
            .insert(KEY_MEMORY_MIB.to_string(), cfg.spec.memory_mib.to_string());
        handle
            .data
            .insert(KEY_RUN_ID.to_string(), shim_cfg.run_id.clone());
        let finished = |h: &TaskHandle| matches!(handle_exit(h), Ok(Some(_)));

        let deadline = Instant::now() + self.start_timeout;
        loop {
            if let Some(child_pid) = read_child_pid(dir) {
                handle.child_pid = Some(child_pid);
                return Ok(handle);
            }
            if finished(&handle) {
                return Ok(handle);
            }
            let exited = shim_exit.lock().map(|s| *s).unwrap_or(None);
            let failure = if let Some(st) = exited {
                // It may have written the files just before exiting.
                if read_child_pid(dir).is_some() || finished(&handle) {
                    continue;
                }
                Some(format!(
                    "the supervisor exited ({st}) without starting the command; is {:?} routed to nimbus_agent::shim::main?",
                    self.shim_cmd
                ))
            } else if Instant::now() >= deadline {
                Some(format!(
                    "the supervisor did not start the command within {:?}",
                    self.start_timeout
                ))
            } else {
                None
            };
            if let Some(msg) = failure {
                if is_alive(pid, start_ticks) {
                    // SAFETY: kill(2) has no memory-safety preconditions; pid verified above.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
                return Err(DriverError::Start(msg));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn shim_alive(handle: &TaskHandle) -> bool {
        is_alive(handle.pid, handle.start_ticks)
    }

    /// Waits (bounded) for the shim to record the exit or disappear.
    fn wait_for_shim(handle: &TaskHandle, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Self::shim_alive(handle)
            && !matches!(handle_exit(handle), Ok(Some(_)))
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Kills the shim recorded in `dir` if it is still alive, and waits until it is gone.
fn retire_old_shim(dir: &Path) {
    let Ok(text) = fs::read_to_string(dir.join(SHIM_PID_FILE)) else {
        return;
    };
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(pid)), Some(Ok(ticks))) = (parts.next(), parts.next()) else {
        return;
    };
    let Ok(pid) = u32::try_from(pid) else {
        return;
    };
    if !is_alive(pid, ticks) {
        return;
    }
    tracing::warn!(pid, dir = %dir.display(), "killing the supervisor of an earlier start of this task");
    // SAFETY: kill(2) has no memory-safety preconditions; pid and start time verified.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(2);
    while is_alive(pid, ticks) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
}

/// Whether the task was started again (by `start` with another handle) after `handle`:
/// the files and the cgroup then belong to the newer start.
fn superseded(handle: &TaskHandle) -> bool {
    let Some(ours) = handle.data.get(KEY_RUN_ID) else {
        return false;
    };
    let Ok(bytes) = fs::read(handle.dir.join(CONFIG_FILE)) else {
        return false;
    };
    match serde_json::from_slice::<ShimConfig>(&bytes) {
        Ok(cfg) => !cfg.run_id.is_empty() && cfg.run_id != *ours,
        Err(_) => false,
    }
}

/// A token unique to one start of a task: generation, agent pid and the time.
fn run_id(generation: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{generation}-{}-{nanos}", std::process::id())
}

/// Reaps the shim on a small dedicated thread so it never lingers as a zombie;
/// the slot receives its exit status.
fn reap_in_background(
    mut child: std::process::Child,
) -> Arc<Mutex<Option<std::process::ExitStatus>>> {
    let slot = Arc::new(Mutex::new(None));
    let out = slot.clone();
    let pid = child.id();
    let spawned = thread::Builder::new()
        .name(format!("shim-wait-{pid}"))
        .stack_size(64 * 1024)
        .spawn(move || {
            if let Ok(status) = child.wait() {
                if let Ok(mut s) = out.lock() {
                    *s = Some(status);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(pid, error = %e, "cannot start a thread to reap the shim; it stays a zombie until the agent exits");
    }
    slot
}

fn io_err(context: String, source: io::Error) -> DriverError {
    DriverError::Io { context, source }
}

fn remove_if_exists(path: &Path) -> Result<(), DriverError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("removing {}", path.display()), e)),
    }
}

fn read_child_pid(dir: &Path) -> Option<u32> {
    fs::read_to_string(dir.join(CHILD_PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The exit status recorded for the run `run_id` (any run when `None`); a record left
/// by another start of the task counts as none.
fn read_exit(dir: &Path, run_id: Option<&str>) -> Result<Option<ExitStatus>, DriverError> {
    let path = dir.join(EXIT_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let rec: ExitRecord = serde_json::from_slice(&bytes).map_err(|e| {
                io_err(
                    format!("parsing {}", path.display()),
                    io::Error::new(io::ErrorKind::InvalidData, e),
                )
            })?;
            let ours = match run_id {
                Some(id) => rec.run_id.is_empty() || rec.run_id == id,
                None => true,
            };
            Ok(ours.then_some(rec.status))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("reading {}", path.display()), e)),
    }
}

fn handle_exit(handle: &TaskHandle) -> Result<Option<ExitStatus>, DriverError> {
    read_exit(&handle.dir, handle.data.get(KEY_RUN_ID).map(String::as_str))
}

/// State letter and start time (field 22, clock ticks since boot) of a process.
pub(crate) struct ProcStat {
    pub state: char,
    pub start_ticks: u64,
}

pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        // Field 3 (state) is fields[0], so field 22 is fields[19].
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// Whether `pid` is a live (not zombie) process that started at `start_ticks`.
pub(crate) fn is_alive(pid: u32, start_ticks: u64) -> bool {
    matches!(proc_stat(pid), Some(s) if s.start_ticks == start_ticks && s.state != 'Z' && s.state != 'X')
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn check_name(name: &str) -> Result<(), DriverError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(DriverError::Start(format!(
            "instance name {name:?} cannot be used as a cgroup name"
        )));
    }
    Ok(())
}

/// The cgroup a task runs in, for operations that need one.
fn task_cgroup(handle: &TaskHandle) -> Result<Cgroup, DriverError> {
    Cgroup::from_data(&handle.data).ok_or_else(|| {
        DriverError::Unsupported(format!(
            "task {} records no cgroup (started without one)",
            handle.name
        ))
    })
}

impl Driver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    fn fingerprint(&self) -> Fingerprint {
        let mut facts = BTreeMap::new();
        facts.insert("kernel".to_string(), kernel_release());
        match self.probe() {
            Ok(h) => {
                facts.insert(
                    "cgroup_version".to_string(),
                    h.version().as_str().to_string(),
                );
                Fingerprint {
                    available: true,
                    facts,
                }
            }
            Err(e) => {
                if let Ok(h) = self.hierarchy() {
                    facts.insert(
                        "cgroup_version".to_string(),
                        h.version().as_str().to_string(),
                    );
                }
                facts.insert("process_unavailable_reason".to_string(), e.to_string());
                Fingerprint {
                    available: false,
                    facts,
                }
            }
        }
    }

    fn start(&self, cfg: &TaskConfig) -> Result<TaskHandle, DriverError> {
        check_name(&cfg.name)?;
        if !matches!(cfg.spec.command.first(), Some(c) if !c.is_empty()) {
            return Err(DriverError::Start("the command is empty".into()));
        }
        if self.shim_cmd.is_empty() {
            return Err(DriverError::Unavailable(
                "no shim command configured".into(),
            ));
        }
        let hierarchy = self.hierarchy()?;
        let dir = cfg.dir.clone();
        fs::create_dir_all(&dir).map_err(|e| io_err(format!("creating {}", dir.display()), e))?;
        // The shim runs in `/` and the handle outlives this process: use an absolute path.
        let dir = fs::canonicalize(&dir)
            .map_err(|e| io_err(format!("resolving {}", dir.display()), e))?;
        // A shim of an earlier start still running (its handle was lost) must go first:
        // once its command dies it would record an exit and empty the cgroup, which by
        // then is the new task's.
        retire_old_shim(&dir);
        for f in [EXIT_FILE, CHILD_PID_FILE, SHIM_PID_FILE] {
            remove_if_exists(&dir.join(f))?;
        }
        let cg = hierarchy.create(
            &self.cgroup_parent,
            &cfg.name,
            Limits {
                memory_bytes: cfg.spec.memory_mib.saturating_mul(1024 * 1024),
                cpu_millis: cfg.spec.cpu_millis,
            },
        )?;
        match self.launch(cfg, &dir, &cg) {
            Ok(h) => Ok(h),
            Err(e) => {
                let _ = cg.kill_all(KILL_TIMEOUT);
                let _ = cg.delete(Duration::from_secs(1));
                Err(e)
            }
        }
    }

    fn status(&self, handle: &TaskHandle) -> Result<TaskState, DriverError> {
        if let Some(st) = handle_exit(handle)? {
            return Ok(TaskState::Exited(st));
        }
        if superseded(handle) {
            return Ok(TaskState::Exited(ExitStatus {
                code: None,
                signal: None,
                oom_killed: false,
                reason: "replaced by a newer start of this task".into(),
            }));
        }
        if Self::shim_alive(handle) {
            return Ok(TaskState::Running);
        }
        // The shim writes exit.json before it exits: look again now that it is gone.
        if let Some(st) = handle_exit(handle)? {
            return Ok(TaskState::Exited(st));
        }
        let cg = Cgroup::from_data(&handle.data);
        if let Some(cg) = &cg {
            if !cg.pids()?.is_empty() {
                return Ok(TaskState::Running);
            }
        }
        let oom = cg.and_then(|c| c.oom_kills().ok()).unwrap_or(0) > 0;
        let reason = if oom {
            let mib = handle
                .data
                .get(KEY_MEMORY_MIB)
                .map(String::as_str)
                .unwrap_or("?");
            format!("OOM killed: memory limit of {mib} MiB reached (supervisor lost)")
        } else {
            "supervisor lost; process gone".to_string()
        };
        Ok(TaskState::Exited(ExitStatus {
            code: None,
            signal: None,
            oom_killed: oom,
            reason,
        }))
    }

    fn stop(&self, handle: &TaskHandle, grace: Duration) -> Result<(), DriverError> {
        if superseded(handle) {
            // The cgroup now holds the newer start's processes.
            return Ok(());
        }
        let cg = Cgroup::from_data(&handle.data);
        let Some(cg) = cg else {
            // No cgroup recorded: ask the shim, which forwards SIGTERM to the command.
            if Self::shim_alive(handle) {
                // SAFETY: kill(2) has no memory-safety preconditions; pid verified above.
                unsafe { libc::kill(handle.pid as libc::pid_t, libc::SIGTERM) };
            }
            Self::wait_for_shim(handle, grace);
            return Ok(());
        };
        // A paused task must run again to handle SIGTERM.
        let _ = cg.set_frozen(false);
        if cg.signal_all(libc::SIGTERM)? > 0 {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && !cg.pids()?.is_empty() {
                thread::sleep(Duration::from_millis(10));
            }
        }
        cg.kill_all(KILL_TIMEOUT)?;
        Self::wait_for_shim(handle, EXIT_RECORD_TIMEOUT);
        Ok(())
    }

    fn pause(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        task_cgroup(handle)?.set_frozen(true)
    }

    fn resume(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        task_cgroup(handle)?.set_frozen(false)
    }

    fn destroy(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        if superseded(handle) {
            // Everything of this start went when the task was started again; the
            // cgroup and the files are the newer start's.
            return Ok(());
        }
        let cg = Cgroup::from_data(&handle.data);
        if let Some(cg) = &cg {
            cg.kill_all(KILL_TIMEOUT)?;
        }
        Self::wait_for_shim(handle, EXIT_RECORD_TIMEOUT);
        if Self::shim_alive(handle) {
            // SAFETY: kill(2) has no memory-safety preconditions; pid verified above.
            unsafe { libc::kill(handle.pid as libc::pid_t, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(2);
            while Self::shim_alive(handle) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(cg) = &cg {
            cg.delete(Duration::from_secs(2))?;
        }
        for f in [EXIT_FILE, CHILD_PID_FILE, SHIM_PID_FILE, CONFIG_FILE] {
            remove_if_exists(&handle.dir.join(f))?;
            remove_if_exists(&handle.dir.join(format!("{f}.tmp")))?;
        }
        Ok(())
    }

    fn recover(&self, handle: &TaskHandle) -> Result<bool, DriverError> {
        Ok(handle_exit(handle)?.is_some() || (!superseded(handle) && Self::shim_alive(handle)))
    }

    fn stats(&self, handle: &TaskHandle) -> Result<TaskStats, DriverError> {
        if superseded(handle) {
            return Ok(TaskStats::default());
        }
        let cg = Cgroup::from_data(&handle.data).ok_or_else(|| DriverError::Cgroup {
            path: handle.name.clone(),
            message: "the task handle records no cgroup".into(),
        })?;
        Ok(TaskStats {
            memory_bytes: cg.memory_usage()?,
            cpu_usage_ns: cg.cpu_usage_ns()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_of_self() {
        let me = proc_stat(std::process::id()).unwrap();
        assert!(matches!(me.state, 'R' | 'S'), "{}", me.state);
        assert!(is_alive(std::process::id(), me.start_ticks));
        assert!(!is_alive(std::process::id(), me.start_ticks + 1));
    }

    #[test]
    fn bad_names_are_refused() {
        for n in ["", ".", "..", "a/b"] {
            assert!(check_name(n).is_err(), "{n:?}");
        }
        assert!(check_name("web-1").is_ok());
    }
}
