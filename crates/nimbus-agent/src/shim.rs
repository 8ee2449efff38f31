//! The per-instance supervisor ("shim"): runs one user command in its cgroup and records how it ended.
//!
//! The process driver starts `nimbus __shim <dir>/shim.json` for every task instead of
//! running the command as a child of the agent, so that the agent can be killed and
//! restarted without losing the task or its exit status (like conmon or Nomad's
//! executor). The shim:
//!
//! 1. becomes a session leader (`setsid`), detached from the agent and its terminal;
//!    it stays *outside* the task's cgroup, so an OOM kill never hits it;
//! 2. spawns the command with stdin `/dev/null` and stdout+stderr appended to
//!    [`LOG_FILE`], a clean environment (the driver passes the full map), and joins
//!    the task's cgroup between fork and exec (it writes `0` to every `cgroup.procs`
//!    through descriptors opened beforehand), so the command never runs outside it;
//! 3. writes the child's pid to [`CHILD_PID_FILE`] (atomically) as soon as it runs;
//! 4. forwards SIGTERM and SIGINT to the child;
//! 5. waits for the child, kills whatever it left behind in the cgroup, works out
//!    code / signal / OOM kill, writes [`EXIT_FILE`] (tmp + fsync + rename) and exits 0.
//!
//! A command that cannot be started ends with code 127 ("command not found: X", or
//! the error) or 126 (found but not executable), recorded the same way.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::driver::cgroup::Cgroup;
use crate::driver::{ExitStatus, LOG_FILE};

/// The hidden first argument that makes the nimbus binary act as a shim.
pub const SHIM_ARG: &str = "__shim";
/// Shim configuration file in the task directory (written by the driver).
pub const CONFIG_FILE: &str = "shim.json";
/// The user's process id, written by the shim once the command runs.
pub const CHILD_PID_FILE: &str = "child.pid";
/// How the command ended ([`ExitStatus`] as JSON), written by the shim.
pub const EXIT_FILE: &str = "exit.json";

/// What the shim runs; written by the process driver to [`CONFIG_FILE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShimConfig {
    /// Instance name (for messages).
    pub name: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// The complete environment of the command.
    pub env: BTreeMap<String, String>,
    /// Working directory of the command.
    pub workdir: PathBuf,
    /// Task directory: log and status files go here.
    pub dir: PathBuf,
    /// Memory limit, for the OOM message.
    pub memory_mib: u64,
    /// The task's cgroup, in task-handle form (`cgroup_version`, `cgroup.memory`, ...).
    pub cgroup: BTreeMap<String, String>,
    /// Identifies this start of the task; copied into [`EXIT_FILE`] so that a record
    /// written late by the shim of an earlier start is never taken for this one.
    #[serde(default)]
    pub run_id: String,
}

/// Contents of [`EXIT_FILE`]: the exit status and the run it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    #[serde(flatten)]
    pub status: ExitStatus,
    /// [`ShimConfig::run_id`] of the run; empty when the configuration was unreadable.
    #[serde(default)]
    pub run_id: String,
}

/// Runs the shim when the process was started as `<exe> __shim CONFIG`: returns the exit
/// code to exit with, or `None` when the arguments are not a shim invocation. Call it
/// first thing in `main`, before starting an async runtime or any thread.
pub fn dispatch_from_args() -> Option<i32> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != SHIM_ARG {
        return None;
    }
    let Some(config) = args.next() else {
        eprintln!("usage: nimbus {SHIM_ARG} CONFIG_FILE");
        return Some(2);
    };
    Some(main(config))
}

/// Shim entry point: supervises the command described by `config_file` until it exits.
/// Returns 0 once the exit status has been recorded, 1 if even that failed.
pub fn main(config_file: impl AsRef<Path>) -> i32 {
    let config_file = config_file.as_ref();
    // The driver normally starts us as a session leader already (setsid in pre_exec);
    // then this fails with EPERM, which is fine.
    // SAFETY: setsid has no memory-safety preconditions.
    unsafe { libc::setsid() };
    install_signal_forwarding();

    let fallback_dir = config_file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let (dir, record) = match load_config(config_file) {
        Ok(cfg) => (
            cfg.dir.clone(),
            ExitRecord {
                status: supervise(&cfg),
                run_id: cfg.run_id.clone(),
            },
        ),
        Err(msg) => (
            fallback_dir,
            ExitRecord {
                status: failure(None, format!("supervisor failed: {msg}")),
                run_id: String::new(),
            },
        ),
    };
    let json = serde_json::to_vec_pretty(&record).unwrap_or_else(|_| b"{}".to_vec());
    match write_atomic(&dir.join(EXIT_FILE), &json) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn load_config(path: &Path) -> Result<ShimConfig, String> {
    let bytes = fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let cfg: ShimConfig =
        serde_json::from_slice(&bytes).map_err(|e| format!("parsing {}: {e}", path.display()))?;
    if cfg.command.is_empty() {
        return Err("the command is empty".into());
    }
    Ok(cfg)
}

fn failure(code: Option<i32>, reason: String) -> ExitStatus {
    ExitStatus {
        code,
        signal: None,
        oom_killed: false,
        reason,
    }
}

/// Pid of the running child, for the signal handler (0 when none).
static CHILD: AtomicI32 = AtomicI32::new(0);
/// A signal received before the child existed, forwarded once it does.
static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    // SAFETY: only async-signal-safe calls (kill) and errno save/restore.
    unsafe {
        let errno = *libc::__errno_location();
        let pid = CHILD.load(Ordering::SeqCst);
        if pid > 0 {
            libc::kill(pid, sig);
        } else {
            PENDING.store(sig, Ordering::SeqCst);
        }
        *libc::__errno_location() = errno;
    }
}

fn install_signal_forwarding() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction with a valid handler and empty mask is well formed;
        // the handler only performs async-signal-safe operations. Handlers are reset to
        // the default in the child by exec.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// Whether `program` can be found the way execvp will look for it.
fn command_exists(program: &str, path_var: Option<&str>, workdir: &Path) -> bool {
    if program.contains('/') {
        return workdir.join(program).exists();
    }
    path_var
        .unwrap_or("/usr/local/bin:/usr/bin:/bin")
        .split(':')
        .map(|d| {
            if d.is_empty() {
                workdir.to_path_buf()
            } else {
                workdir.join(d)
            }
        })
        .any(|d| d.join(program).is_file())
}

/// Runs the command and returns how it ended.
fn supervise(cfg: &ShimConfig) -> ExitStatus {
    let program = &cfg.command[0];
    let Some(cgroup) = Cgroup::from_data(&cfg.cgroup) else {
        return failure(
            None,
            "supervisor failed: the configuration names no cgroup".into(),
        );
    };
    let oom_before = cgroup.oom_kills().unwrap_or(0);

    // Open the cgroup.procs files now, so that joining between fork and exec is a plain
    // write(2) on an open descriptor (no allocation, no path lookup).
    let mut procs: Vec<OwnedFd> = Vec::new();
    for file in cgroup.procs_files() {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&file)
        {
            Ok(f) => procs.push(f.into()),
            Err(e) => {
                return failure(
                    None,
                    format!(
                        "failed to start: cannot join cgroup {}: {e}",
                        file.display()
                    ),
                )
            }
        }
    }
    if !cfg.workdir.is_dir() {
        return failure(
            Some(127),
            format!("working directory {} does not exist", cfg.workdir.display()),
        );
    }
    if !command_exists(
        program,
        cfg.env.get("PATH").map(String::as_str),
        &cfg.workdir,
    ) {
        return failure(Some(127), format!("command not found: {program}"));
    }
    let log = match OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(cfg.dir.join(LOG_FILE))
    {
        Ok(f) => f,
        Err(e) => return failure(None, format!("failed to start: opening {LOG_FILE}: {e}")),
    };
    let log2 = match log.try_clone() {
        Ok(f) => f,
        Err(e) => return failure(None, format!("failed to start: opening {LOG_FILE}: {e}")),
    };

    let fds: Vec<i32> = procs.iter().map(AsRawFd::as_raw_fd).collect();
    let mut cmd = Command::new(program);
    cmd.args(&cfg.command[1..])
        .env_clear()
        .envs(&cfg.env)
        .current_dir(&cfg.workdir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: the closure runs between fork and exec and only calls write(2) on
    // descriptors that stay open until after spawn returns; it does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = cgroup.kill_all(Duration::from_secs(5));
            return match e.kind() {
                io::ErrorKind::NotFound => {
                    failure(Some(127), format!("command not found: {program}"))
                }
                io::ErrorKind::PermissionDenied => failure(
                    Some(126),
                    format!("permission denied: cannot execute {program}"),
                ),
                _ => failure(Some(127), format!("failed to start {program}: {e}")),
            };
        }
    };
    drop(procs);
    let pid = child.id() as i32;
    CHILD.store(pid, Ordering::SeqCst);
    let pending = PENDING.swap(0, Ordering::SeqCst);
    if pending != 0 {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, pending) };
    }
    if let Err(e) = write_atomic(&cfg.dir.join(CHILD_PID_FILE), pid.to_string().as_bytes()) {
        let _ = child.kill();
        let _ = child.wait();
        let _ = cgroup.kill_all(Duration::from_secs(5));
        return failure(
            None,
            format!("supervisor failed: writing {CHILD_PID_FILE}: {e}"),
        );
    }

    // Wait without reaping, stop forwarding signals to the pid, then reap: the signal
    // handler can never hit a recycled pid.
    wait_exited_no_reap(pid);
    CHILD.store(0, Ordering::SeqCst);
    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => {
            return failure(
                None,
                format!("supervisor failed: waiting for the command: {e}"),
            )
        }
    };
    // The task is over when its main process is; nothing it left behind keeps running.
    let _ = cgroup.kill_all(Duration::from_secs(5));
    let oom = cgroup.oom_kills().map(|n| n > oom_before).unwrap_or(false);
    describe_exit(status.code(), status.signal(), oom, cfg.memory_mib)
}

fn wait_exited_no_reap(pid: i32) {
    loop {
        // SAFETY: waitid writes into the zeroed siginfo we own.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// The [`ExitStatus`] (with its sentence for users) of a process that ended.
pub(crate) fn describe_exit(
    code: Option<i32>,
    signal: Option<i32>,
    oom: bool,
    memory_mib: u64,
) -> ExitStatus {
    let reason = if oom {
        format!("OOM killed: memory limit of {memory_mib} MiB reached")
    } else if let Some(sig) = signal {
        match signal_name(sig) {
            Some(name) => format!("killed by signal {sig} ({name})"),
            None => format!("killed by signal {sig}"),
        }
    } else {
        format!("exited with code {}", code.unwrap_or(-1))
    };
    ExitStatus {
        code,
        signal,
        oom_killed: oom,
        reason,
    }
}

/// Conventional name of a signal number.
pub(crate) fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp_name: OsString = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Whether a file is executable by someone (used by fingerprinting the shim command).
pub(crate) fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons() {
        assert_eq!(
            describe_exit(Some(3), None, false, 64).reason,
            "exited with code 3"
        );
        assert_eq!(
            describe_exit(None, Some(9), false, 64).reason,
            "killed by signal 9 (SIGKILL)"
        );
        let oom = describe_exit(None, Some(9), true, 32);
        assert!(oom.oom_killed);
        assert_eq!(oom.reason, "OOM killed: memory limit of 32 MiB reached");
        assert_eq!(
            describe_exit(None, Some(64), false, 1).reason,
            "killed by signal 64"
        );
    }

    #[test]
    fn command_lookup_follows_path() {
        let dir = tempfile::tempdir().unwrap();
        assert!(command_exists("sh", Some("/usr/bin:/bin"), dir.path()));
        assert!(!command_exists(
            "no-such-cmd-xyz",
            Some("/usr/bin:/bin"),
            dir.path()
        ));
        assert!(command_exists("/bin/sh", None, dir.path()));
        fs::write(dir.path().join("run.sh"), "").unwrap();
        assert!(command_exists("./run.sh", None, dir.path()));
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        write_atomic(&p, b"1").unwrap();
        write_atomic(&p, b"2").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"2");
        assert!(!dir.path().join("x.json.tmp").exists());
    }
}
