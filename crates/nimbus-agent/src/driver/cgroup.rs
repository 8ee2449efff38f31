//! A small direct cgroup layer (v2 unified or v1 per-controller hierarchies) for the process driver.
//!
//! Detection: pure v2 when `/sys/fs/cgroup/cgroup.controllers` exists; otherwise v1,
//! with the mount point of each controller taken from `/proc/self/mountinfo`.
//! A task's cgroup is `<parent>/<name>` (parent is `nimbus` by default) in the v2
//! hierarchy, or in each of the v1 `memory`, `cpu`, `cpuacct` and (when mounted)
//! `pids` and `freezer` hierarchies; co-mounted controllers (`cpu,cpuacct`) share one
//! directory. Freezing (pause, consistent backups) uses `cgroup.freeze` on v2 and the
//! `freezer` controller on v1.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::DriverError;

/// Where cgroup file systems are normally mounted; `cgroup.controllers` in it means pure v2.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// CFS period used for CPU limits, in microseconds.
pub(crate) const CPU_PERIOD_US: u64 = 100_000;
/// Smallest CFS quota the kernel accepts, in microseconds.
const MIN_CPU_QUOTA_US: u64 = 1_000;

/// Keys under which a [`Cgroup`] is stored in [`super::TaskHandle::data`].
pub(crate) const KEY_VERSION: &str = "cgroup_version";
pub(crate) const KEY_V2: &str = "cgroup";
pub(crate) const KEY_MEMORY: &str = "cgroup.memory";
pub(crate) const KEY_CPU: &str = "cgroup.cpu";
pub(crate) const KEY_CPUACCT: &str = "cgroup.cpuacct";
pub(crate) const KEY_PIDS: &str = "cgroup.pids";
pub(crate) const KEY_FREEZER: &str = "cgroup.freezer";
/// How long freezing or thawing may take before it is reported as failed.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which cgroup API the node offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V2,
}

impl Version {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// The mounted cgroup hierarchies of this node.
#[derive(Debug, Clone)]
pub(crate) enum Hierarchy {
    /// The unified hierarchy mounted at `root`.
    V2 { root: PathBuf },
    /// One mount point per controller (co-mounted controllers share a path).
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        cpuacct: PathBuf,
        pids: Option<PathBuf>,
        freezer: Option<PathBuf>,
    },
}

/// Limits applied to a task's cgroup.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub memory_bytes: u64,
    pub cpu_millis: u64,
}

/// One task's cgroup: a directory per hierarchy it lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cgroup {
    V2 {
        path: PathBuf,
    },
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        cpuacct: PathBuf,
        pids: Option<PathBuf>,
        freezer: Option<PathBuf>,
    },
}

fn cg_err(path: &Path, message: impl Into<String>) -> DriverError {
    DriverError::Cgroup {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn io_err(path: &Path, what: &str, e: &io::Error) -> DriverError {
    cg_err(path, format!("{what}: {e}"))
}

/// Writes `value` to a cgroup control file.
pub(crate) fn write_file(path: &Path, value: &str) -> Result<(), DriverError> {
    fs::write(path, value).map_err(|e| io_err(path, &format!("writing {value:?}"), &e))
}

fn read_file(path: &Path) -> Result<String, DriverError> {
    fs::read_to_string(path).map_err(|e| io_err(path, "reading", &e))
}

fn read_u64(path: &Path) -> Result<u64, DriverError> {
    let text = read_file(path)?;
    text.trim()
        .parse()
        .map_err(|_| cg_err(path, format!("expected a number, found {:?}", text.trim())))
}

/// Value of `key` in a flat keyed file such as `memory.events` or `cpu.stat`.
fn read_keyed(path: &Path, key: &str) -> Result<u64, DriverError> {
    let text = read_file(path)?;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if parts.next() == Some(key) {
            if let Some(v) = parts.next().and_then(|v| v.parse().ok()) {
                return Ok(v);
            }
        }
    }
    Err(cg_err(path, format!("no {key:?} entry")))
}

/// Undoes the octal escapes (`\040` for space, ...) of /proc/self/mountinfo.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let oct = bytes.get(i + 1..i + 4);
        if bytes[i] == b'\\' {
            if let Some(oct) = oct.filter(|o| o.iter().all(|b| (b'0'..=b'7').contains(b))) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text into (mount point, fs type, super options) of cgroup mounts.
fn cgroup_mounts(mountinfo: &str) -> Vec<(PathBuf, String, Vec<String>)> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let fstype = right[0];
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let opts = right[2].split(',').map(str::to_string).collect();
        out.push((
            PathBuf::from(unescape_mountinfo(left[4])),
            fstype.to_string(),
            opts,
        ));
    }
    out
}

impl Hierarchy {
    /// Finds the cgroup hierarchies of this node.
    pub(crate) fn detect() -> Result<Hierarchy, DriverError> {
        let mountinfo =
            fs::read_to_string("/proc/self/mountinfo").map_err(|e| DriverError::Io {
                context: "reading /proc/self/mountinfo".into(),
                source: e,
            })?;
        let pure_v2 = Path::new(CGROUP_ROOT).join("cgroup.controllers").exists();
        Self::from_mountinfo(&mountinfo, pure_v2)
    }

    fn from_mountinfo(mountinfo: &str, pure_v2: bool) -> Result<Hierarchy, DriverError> {
        let mounts = cgroup_mounts(mountinfo);
        if pure_v2 {
            let root = mounts
                .iter()
                .find(|(_, fstype, _)| fstype == "cgroup2")
                .map(|(p, _, _)| p.clone())
                .unwrap_or_else(|| PathBuf::from(CGROUP_ROOT));
            return Ok(Hierarchy::V2 { root });
        }
        let find = |controller: &str| {
            mounts
                .iter()
                .find(|(_, fstype, opts)| {
                    fstype == "cgroup" && opts.iter().any(|o| o == controller)
                })
                .map(|(p, _, _)| p.clone())
        };
        let missing = |c: &str| {
            cg_err(
                Path::new(CGROUP_ROOT),
                format!("cgroup v1 controller {c:?} is not mounted (see /proc/self/mountinfo)"),
            )
        };
        Ok(Hierarchy::V1 {
            memory: find("memory").ok_or_else(|| missing("memory"))?,
            cpu: find("cpu").ok_or_else(|| missing("cpu"))?,
            cpuacct: find("cpuacct").ok_or_else(|| missing("cpuacct"))?,
            pids: find("pids"),
            freezer: find("freezer"),
        })
    }

    pub(crate) fn version(&self) -> Version {
        match self {
            Hierarchy::V2 { .. } => Version::V2,
            Hierarchy::V1 { .. } => Version::V1,
        }
    }

    /// The cgroup `<parent>/<name>` (not created).
    pub(crate) fn cgroup(&self, parent: &str, name: &str) -> Cgroup {
        let rel = Path::new(parent).join(name);
        match self {
            Hierarchy::V2 { root } => Cgroup::V2 {
                path: root.join(&rel),
            },
            Hierarchy::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
                freezer,
            } => Cgroup::V1 {
                memory: memory.join(&rel),
                cpu: cpu.join(&rel),
                cpuacct: cpuacct.join(&rel),
                pids: pids.as_ref().map(|p| p.join(&rel)),
                freezer: freezer.as_ref().map(|p| p.join(&rel)),
            },
        }
    }

    /// Creates `<parent>/<name>` with `limits`. A leftover cgroup of that name is emptied
    /// (its processes killed) and recreated, so counters (OOM kills, usage) start at zero.
    pub(crate) fn create(
        &self,
        parent: &str,
        name: &str,
        limits: Limits,
    ) -> Result<Cgroup, DriverError> {
        let cg = self.cgroup(parent, name);
        if cg.dirs().iter().any(|d| d.exists()) {
            cg.kill_all(Duration::from_secs(5))?;
            cg.delete(Duration::from_secs(2))?;
        }
        if let Hierarchy::V2 { root } = self {
            enable_v2_controllers(root, &root.join(parent))?;
        }
        for dir in cg.dirs() {
            fs::create_dir_all(&dir).map_err(|e| io_err(&dir, "creating cgroup", &e))?;
        }
        if let Err(e) = cg.set_limits(limits) {
            let _ = cg.delete(Duration::from_millis(100));
            return Err(e);
        }
        Ok(cg)
    }
}

/// Makes the cpu, memory and pids controllers available to children of `parent`
/// (created if needed): enabled in the subtree_control of every cgroup from `root` down.
fn enable_v2_controllers(root: &Path, parent: &Path) -> Result<(), DriverError> {
    fs::create_dir_all(parent).map_err(|e| io_err(parent, "creating cgroup", &e))?;
    let available = read_file(&root.join("cgroup.controllers"))?;
    let wanted: Vec<&str> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .collect();
    for required in ["cpu", "memory"] {
        if !wanted.contains(&required) {
            return Err(cg_err(
                root,
                format!(
                    "controller {required:?} is not available (cgroup.controllers: {:?})",
                    available.trim()
                ),
            ));
        }
    }
    let rel = parent.strip_prefix(root).unwrap_or(Path::new(""));
    let mut dir = root.to_path_buf();
    let mut chain = vec![dir.clone()];
    for comp in rel.components() {
        dir.push(comp);
        chain.push(dir.clone());
    }
    for dir in chain {
        let control = dir.join("cgroup.subtree_control");
        let enabled = read_file(&control)?;
        for c in &wanted {
            if !enabled.split_whitespace().any(|e| e == *c) {
                fs::write(&control, format!("+{c}")).map_err(|e| {
                    let hint = if e.raw_os_error() == Some(libc::EBUSY) {
                        " (the cgroup has processes of its own; move them to a leaf cgroup)"
                    } else {
                        ""
                    };
                    cg_err(&control, format!("enabling controller {c}: {e}{hint}"))
                })?;
            }
        }
    }
    Ok(())
}

impl Cgroup {
    pub(crate) fn version(&self) -> Version {
        match self {
            Cgroup::V2 { .. } => Version::V2,
            Cgroup::V1 { .. } => Version::V1,
        }
    }

    /// The distinct directories of this cgroup, memory first.
    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        match self {
            Cgroup::V2 { path } => vec![path.clone()],
            Cgroup::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
                freezer,
            } => {
                let mut out: Vec<PathBuf> = Vec::with_capacity(5);
                for p in [
                    Some(memory),
                    Some(cpu),
                    Some(cpuacct),
                    pids.as_ref(),
                    freezer.as_ref(),
                ]
                .into_iter()
                .flatten()
                {
                    if !out.contains(p) {
                        out.push(p.clone());
                    }
                }
                out
            }
        }
    }

    /// The `cgroup.procs` files a process must be written to, to join this cgroup.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    fn memory_dir(&self) -> &Path {
        match self {
            Cgroup::V2 { path } => path,
            Cgroup::V1 { memory, .. } => memory,
        }
    }

    fn set_limits(&self, limits: Limits) -> Result<(), DriverError> {
        let quota = (limits.cpu_millis * (CPU_PERIOD_US / 1000)).max(MIN_CPU_QUOTA_US);
        match self {
            Cgroup::V2 { path } => {
                write_file(&path.join("memory.max"), &limits.memory_bytes.to_string())?;
                let swap = path.join("memory.swap.max");
                if swap.exists() {
                    write_file(&swap, "0")?;
                }
                write_file(&path.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
            }
            Cgroup::V1 { memory, cpu, .. } => {
                // memsw must stay >= the memory limit at every step: lift it first.
                let memsw = memory.join("memory.memsw.limit_in_bytes");
                let has_memsw = memsw.exists();
                if has_memsw {
                    write_file(&memsw, "-1")?;
                }
                write_file(
                    &memory.join("memory.limit_in_bytes"),
                    &limits.memory_bytes.to_string(),
                )?;
                if has_memsw {
                    write_file(&memsw, &limits.memory_bytes.to_string())?;
                }
                let swappiness = memory.join("memory.swappiness");
                if swappiness.exists() {
                    write_file(&swappiness, "0")?;
                }
                write_file(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write_file(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
        }
        Ok(())
    }

    /// How many times the OOM killer killed a process of this cgroup.
    pub(crate) fn oom_kills(&self) -> Result<u64, DriverError> {
        match self {
            Cgroup::V2 { path } => read_keyed(&path.join("memory.events"), "oom_kill"),
            Cgroup::V1 { memory, .. } => read_keyed(&memory.join("memory.oom_control"), "oom_kill"),
        }
    }

    /// Current memory usage in bytes.
    pub(crate) fn memory_usage(&self) -> Result<u64, DriverError> {
        match self {
            Cgroup::V2 { path } => read_u64(&path.join("memory.current")),
            Cgroup::V1 { memory, .. } => read_u64(&memory.join("memory.usage_in_bytes")),
        }
    }

    /// CPU time used by the cgroup's processes, in nanoseconds.
    pub(crate) fn cpu_usage_ns(&self) -> Result<u64, DriverError> {
        match self {
            Cgroup::V2 { path } => {
                Ok(read_keyed(&path.join("cpu.stat"), "usage_usec")?.saturating_mul(1000))
            }
            Cgroup::V1 { cpuacct, .. } => read_u64(&cpuacct.join("cpuacct.usage")),
        }
    }

    /// Pids of all processes in the cgroup (union over its hierarchies). A cgroup that
    /// does not exist has none.
    pub(crate) fn pids(&self) -> Result<Vec<u32>, DriverError> {
        let mut out = Vec::new();
        for file in self.procs_files() {
            match fs::read_to_string(&file) {
                Ok(text) => {
                    for pid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                        if !out.contains(&pid) {
                            out.push(pid);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&file, "reading", &e)),
            }
        }
        Ok(out)
    }

    /// Sends `signal` to every process in the cgroup; returns how many were signalled.
    pub(crate) fn signal_all(&self, signal: i32) -> Result<usize, DriverError> {
        let pids = self.pids()?;
        for &pid in &pids {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
        Ok(pids.len())
    }

    /// SIGKILLs every process in the cgroup until it is empty (processes may fork while
    /// being killed), giving up after `timeout`.
    pub(crate) fn kill_all(&self, timeout: Duration) -> Result<(), DriverError> {
        // Frozen processes do not die until thawed.
        let _ = self.set_frozen(false);
        if let Cgroup::V2 { path } = self {
            let kill = path.join("cgroup.kill");
            if kill.exists() {
                let _ = fs::write(&kill, "1");
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            if self.signal_all(libc::SIGKILL)? == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(cg_err(
                    self.memory_dir(),
                    format!(
                        "processes {:?} still present after SIGKILL for {timeout:?}",
                        self.pids()?
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Freezes (`true`) or thaws every process of the cgroup and waits until the kernel
    /// reports it done. A frozen process keeps its memory and files but runs no code,
    /// so its files can be copied consistently.
    pub(crate) fn set_frozen(&self, frozen: bool) -> Result<(), DriverError> {
        let (control, value) = match self {
            Cgroup::V2 { path } => (path.join("cgroup.freeze"), if frozen { "1" } else { "0" }),
            Cgroup::V1 {
                freezer: Some(f), ..
            } => (
                f.join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
            ),
            Cgroup::V1 { freezer: None, .. } => {
                return Err(cg_err(
                    self.memory_dir(),
                    "the cgroup v1 freezer controller is not mounted on this node",
                ))
            }
        };
        if !control.exists() {
            return Err(cg_err(&control, "freezing is not supported by this kernel"));
        }
        write_file(&control, value)?;
        // v1 passes through FREEZING; v2 reports completion in cgroup.events.
        let done = || match self {
            Cgroup::V2 { path } => {
                read_keyed(&path.join("cgroup.events"), "frozen").map(|v| v == u64::from(frozen))
            }
            Cgroup::V1 { .. } => read_file(&control).map(|s| s.trim() == value),
        };
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        while !done()? {
            if Instant::now() >= deadline {
                return Err(cg_err(
                    &control,
                    format!("not {value} after {FREEZE_TIMEOUT:?}"),
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Removes the cgroup's directories, retrying while processes are still leaving it.
    pub(crate) fn delete(&self, timeout: Duration) -> Result<(), DriverError> {
        let deadline = Instant::now() + timeout;
        for dir in self.dirs() {
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        let pids = self.pids().unwrap_or_default();
                        return Err(io_err(
                            &dir,
                            &format!("removing (processes left: {pids:?})"),
                            &e,
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The cgroup as handle data (see the `KEY_*` constants).
    pub(crate) fn to_data(&self) -> BTreeMap<String, String> {
        let mut data = BTreeMap::new();
        data.insert(KEY_VERSION.to_string(), self.version().as_str().to_string());
        let mut put = |k: &str, p: &Path| {
            data.insert(k.to_string(), p.display().to_string());
        };
        match self {
            Cgroup::V2 { path } => put(KEY_V2, path),
            Cgroup::V1 {
                memory,
                cpu,
                cpuacct,
                pids,
                freezer,
            } => {
                put(KEY_MEMORY, memory);
                put(KEY_CPU, cpu);
                put(KEY_CPUACCT, cpuacct);
                if let Some(p) = pids {
                    put(KEY_PIDS, p);
                }
                if let Some(p) = freezer {
                    put(KEY_FREEZER, p);
                }
            }
        }
        data
    }

    /// Reads a cgroup back from handle data; `None` when the data has none.
    pub(crate) fn from_data(data: &BTreeMap<String, String>) -> Option<Cgroup> {
        let get = |k: &str| data.get(k).map(PathBuf::from);
        match data.get(KEY_VERSION).map(String::as_str) {
            Some("v2") => Some(Cgroup::V2 { path: get(KEY_V2)? }),
            Some("v1") => Some(Cgroup::V1 {
                memory: get(KEY_MEMORY)?,
                cpu: get(KEY_CPU)?,
                cpuacct: get(KEY_CPUACCT)?,
                pids: get(KEY_PIDS),
                freezer: get(KEY_FREEZER),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
42 31 0:39 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_mounts_are_found_and_comounted_dirs_deduplicated() {
        let h = Hierarchy::from_mountinfo(V1_MOUNTINFO, false).unwrap();
        assert_eq!(h.version(), Version::V1);
        let cg = h.cgroup("nimbus", "web");
        assert_eq!(
            cg.dirs(),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/nimbus/web"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/nimbus/web"),
                PathBuf::from("/sys/fs/cgroup/pids/nimbus/web"),
                PathBuf::from("/sys/fs/cgroup/freezer/nimbus/web"),
            ]
        );
        assert_eq!(Cgroup::from_data(&cg.to_data()), Some(cg));
    }

    #[test]
    fn v2_root_comes_from_mountinfo() {
        let info = "25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let h = Hierarchy::from_mountinfo(info, true).unwrap();
        let cg = h.cgroup("nimbus", "db");
        assert_eq!(cg.dirs(), vec![PathBuf::from("/sys/fs/cgroup/nimbus/db")]);
        assert_eq!(Cgroup::from_data(&cg.to_data()), Some(cg));
    }

    #[test]
    fn missing_v1_memory_controller_is_an_error() {
        let info = "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct\n";
        let err = Hierarchy::from_mountinfo(info, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"memory\" is not mounted"), "{err}");
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo(r"/x\"), r"/x\");
    }
}
