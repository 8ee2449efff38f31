//! `SimDriver`: an in-memory simulated driver, so tests and benchmarks can run thousands of nodes in one process.
//!
//! Tasks "run" without processes or files: a task is an entry in a map with a fake,
//! deterministic pid (1000, 1001, ...). It runs until stopped, unless its spec's env asks
//! for something else:
//!
//! * `NIMBUS_SIM_EXIT_AFTER_MS=N`: the task exits N ms after it started, with
//!   * `NIMBUS_SIM_EXIT_CODE=C` (default 0), or
//!   * `NIMBUS_SIM_OOM=1`: killed by the OOM killer (SIGKILL, `oom_killed`);
//! * `NIMBUS_SIM_START_ERROR=message`: `start` fails with that message;
//! * `NIMBUS_SIM_MEMORY_MIB=N`: memory usage reported by `stats` (default: half the limit).
//!
//! `stop` ends a running task at once with SIGTERM (it never waits for the grace
//! period). The driver answers to the name `process` by default so that it can stand in
//! for the process driver; see [`SimDriver::named`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{
    Driver, DriverError, ExitStatus, Fingerprint, TaskConfig, TaskHandle, TaskState, TaskStats,
};

/// First fake pid handed out.
const FIRST_PID: u32 = 1000;

/// The simulated driver. Cheap: one map entry per task.
pub struct SimDriver {
    name: &'static str,
    inner: Mutex<SimState>,
}

#[derive(Default)]
struct SimState {
    next: u64,
    tasks: HashMap<String, SimTask>,
}

struct SimTask {
    pid: u32,
    start_ticks: u64,
    started: Instant,
    exit_after: Option<Duration>,
    exit_code: i32,
    oom: bool,
    memory_mib: u64,
    memory_limit_mib: u64,
    cpu_millis: u64,
    exited: Option<ExitStatus>,
}

impl SimTask {
    /// Settles a scheduled exit whose time has come.
    fn poll(&mut self, now: Instant) {
        if self.exited.is_some() {
            return;
        }
        if let Some(after) = self.exit_after {
            if now.duration_since(self.started) >= after {
                self.exited = Some(if self.oom {
                    ExitStatus {
                        code: None,
                        signal: Some(9),
                        oom_killed: true,
                        reason: format!(
                            "OOM killed: memory limit of {} MiB reached",
                            self.memory_limit_mib
                        ),
                    }
                } else {
                    ExitStatus {
                        code: Some(self.exit_code),
                        signal: None,
                        oom_killed: false,
                        reason: format!("exited with code {}", self.exit_code),
                    }
                });
            }
        }
    }
}

impl Default for SimDriver {
    fn default() -> Self {
        Self::new()
    }
}

fn env_parse<T: std::str::FromStr>(
    env: &BTreeMap<String, String>,
    key: &str,
) -> Result<Option<T>, DriverError> {
    match env.get(key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| DriverError::Start(format!("{key}={v:?} is not a valid number"))),
    }
}

impl SimDriver {
    /// A simulated driver named `process`.
    pub fn new() -> Self {
        Self::named("process")
    }

    /// A simulated driver reporting `name` as its driver name.
    pub fn named(name: &'static str) -> Self {
        SimDriver {
            name,
            inner: Mutex::new(SimState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SimState> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of tasks currently running.
    pub fn running(&self) -> usize {
        let now = Instant::now();
        let mut st = self.state();
        let mut n = 0;
        for t in st.tasks.values_mut() {
            t.poll(now);
            if t.exited.is_none() {
                n += 1;
            }
        }
        n
    }

    /// Ends a running task now with `status` (e.g. to simulate a crash). Returns false if
    /// the task is unknown or already ended.
    pub fn exit(&self, name: &str, status: ExitStatus) -> bool {
        let mut st = self.state();
        match st.tasks.get_mut(name) {
            Some(t) if t.exited.is_none() => {
                t.exited = Some(status);
                true
            }
            _ => false,
        }
    }

    fn with_task<R>(&self, handle: &TaskHandle, f: impl FnOnce(&mut SimTask) -> R) -> Option<R> {
        let mut st = self.state();
        let task = st.tasks.get_mut(&handle.name)?;
        if task.pid != handle.pid || task.start_ticks != handle.start_ticks {
            return None;
        }
        task.poll(Instant::now());
        Some(f(task))
    }
}

impl Driver for SimDriver {
    fn name(&self) -> &'static str {
        self.name
    }

    fn fingerprint(&self) -> Fingerprint {
        let mut facts = BTreeMap::new();
        facts.insert("simulated".to_string(), "true".to_string());
        facts.insert("cgroup_version".to_string(), "sim".to_string());
        Fingerprint {
            available: true,
            facts,
        }
    }

    fn start(&self, cfg: &TaskConfig) -> Result<TaskHandle, DriverError> {
        let env = &cfg.spec.env;
        if let Some(msg) = env.get("NIMBUS_SIM_START_ERROR") {
            return Err(DriverError::Start(msg.clone()));
        }
        if cfg.spec.command.is_empty() {
            return Err(DriverError::Start("the command is empty".into()));
        }
        let exit_after =
            env_parse::<u64>(env, "NIMBUS_SIM_EXIT_AFTER_MS")?.map(Duration::from_millis);
        let exit_code = env_parse::<i32>(env, "NIMBUS_SIM_EXIT_CODE")?.unwrap_or(0);
        let oom = env
            .get("NIMBUS_SIM_OOM")
            .is_some_and(|v| v == "1" || v == "true");
        let memory_mib =
            env_parse::<u64>(env, "NIMBUS_SIM_MEMORY_MIB")?.unwrap_or(cfg.spec.memory_mib / 2);

        let mut st = self.state();
        let n = st.next;
        st.next += 1;
        let pid = FIRST_PID.wrapping_add(n as u32);
        let start_ticks = n + 1;
        st.tasks.insert(
            cfg.name.clone(),
            SimTask {
                pid,
                start_ticks,
                started: Instant::now(),
                exit_after,
                exit_code,
                oom,
                memory_mib,
                memory_limit_mib: cfg.spec.memory_mib,
                cpu_millis: cfg.spec.cpu_millis,
                exited: None,
            },
        );
        Ok(TaskHandle {
            name: cfg.name.clone(),
            driver: self.name.to_string(),
            pid,
            start_ticks,
            child_pid: Some(pid),
            dir: cfg.dir.clone(),
            data: BTreeMap::from([("sim".to_string(), "true".to_string())]),
        })
    }

    fn status(&self, handle: &TaskHandle) -> Result<TaskState, DriverError> {
        Ok(self
            .with_task(handle, |t| match &t.exited {
                Some(st) => TaskState::Exited(st.clone()),
                None => TaskState::Running,
            })
            .unwrap_or_else(|| {
                TaskState::Exited(ExitStatus {
                    code: None,
                    signal: None,
                    oom_killed: false,
                    reason: "supervisor lost; process gone".into(),
                })
            }))
    }

    fn stop(&self, handle: &TaskHandle, _grace: Duration) -> Result<(), DriverError> {
        self.with_task(handle, |t| {
            if t.exited.is_none() {
                t.exited = Some(ExitStatus {
                    code: None,
                    signal: Some(15),
                    oom_killed: false,
                    reason: "killed by signal 15 (SIGTERM)".into(),
                });
            }
        });
        Ok(())
    }

    fn destroy(&self, handle: &TaskHandle) -> Result<(), DriverError> {
        let mut st = self.state();
        if let Some(t) = st.tasks.get(&handle.name) {
            if t.pid == handle.pid && t.start_ticks == handle.start_ticks {
                st.tasks.remove(&handle.name);
            }
        }
        Ok(())
    }

    fn recover(&self, handle: &TaskHandle) -> Result<bool, DriverError> {
        Ok(self.with_task(handle, |_| ()).is_some())
    }

    fn stats(&self, handle: &TaskHandle) -> Result<TaskStats, DriverError> {
        self.with_task(handle, |t| {
            if t.exited.is_some() {
                return TaskStats::default();
            }
            let elapsed = t.started.elapsed();
            TaskStats {
                memory_bytes: t.memory_mib * 1024 * 1024,
                // As if the task used its whole CPU quota all the time.
                cpu_usage_ns: (elapsed.as_nanos() as u64).saturating_mul(t.cpu_millis) / 1000,
            }
        })
        .ok_or_else(|| DriverError::Start(format!("unknown simulated task {}", handle.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_api::InstanceSpec;

    fn cfg(name: &str, env: &[(&str, &str)]) -> TaskConfig {
        let spec: InstanceSpec = serde_json::from_value(serde_json::json!({
            "command": ["sleep", "30"],
            "cpu_millis": 500,
            "memory_mib": 64,
            "env": env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        }))
        .unwrap();
        TaskConfig {
            name: name.into(),
            generation: 1,
            spec,
            dir: format!("/nonexistent/{name}").into(),
            vm: None,
            incoming: None,
        }
    }

    #[test]
    fn lifecycle_start_stop_destroy() {
        let d = SimDriver::new();
        assert!(d.fingerprint().available);
        let h = d.start(&cfg("a", &[])).unwrap();
        let h2 = d.start(&cfg("b", &[])).unwrap();
        assert_eq!((h.pid, h2.pid), (1000, 1001));
        assert_eq!(d.status(&h).unwrap(), TaskState::Running);
        assert!(d.recover(&h).unwrap());
        assert_eq!(d.stats(&h).unwrap().memory_bytes, 32 * 1024 * 1024);
        assert_eq!(d.running(), 2);

        d.stop(&h, Duration::from_secs(10)).unwrap();
        d.stop(&h, Duration::from_secs(10)).unwrap();
        match d.status(&h).unwrap() {
            TaskState::Exited(st) => {
                assert_eq!(st.signal, Some(15));
                assert!(!st.success());
            }
            s => panic!("expected exited, got {s:?}"),
        }
        assert_eq!(d.running(), 1);
        d.destroy(&h).unwrap();
        d.destroy(&h).unwrap();
        assert!(!d.recover(&h).unwrap());
        assert!(d.recover(&h2).unwrap());

        // A new driver (a restarted agent) knows nothing of earlier tasks.
        assert!(!SimDriver::new().recover(&h2).unwrap());
        let mut wrong = h2.clone();
        wrong.start_ticks += 100;
        assert!(!d.recover(&wrong).unwrap());
    }

    #[test]
    fn scheduled_exit_with_code() {
        let d = SimDriver::new();
        let h = d
            .start(&cfg(
                "x",
                &[
                    ("NIMBUS_SIM_EXIT_AFTER_MS", "30"),
                    ("NIMBUS_SIM_EXIT_CODE", "1"),
                ],
            ))
            .unwrap();
        assert_eq!(d.status(&h).unwrap(), TaskState::Running);
        std::thread::sleep(Duration::from_millis(50));
        let TaskState::Exited(st) = d.status(&h).unwrap() else {
            panic!("still running");
        };
        assert_eq!(st.code, Some(1));
        assert_eq!(st.reason, "exited with code 1");
        // Stop after exit keeps the recorded status.
        d.stop(&h, Duration::ZERO).unwrap();
        assert_eq!(d.status(&h).unwrap(), TaskState::Exited(st));
    }

    #[test]
    fn oom_and_start_errors() {
        let d = SimDriver::new();
        let h = d
            .start(&cfg(
                "o",
                &[("NIMBUS_SIM_EXIT_AFTER_MS", "0"), ("NIMBUS_SIM_OOM", "1")],
            ))
            .unwrap();
        let TaskState::Exited(st) = d.status(&h).unwrap() else {
            panic!("still running");
        };
        assert!(st.oom_killed);
        assert_eq!(st.reason, "OOM killed: memory limit of 64 MiB reached");

        let err = d
            .start(&cfg("e", &[("NIMBUS_SIM_START_ERROR", "no luck")]))
            .unwrap_err();
        assert_eq!(err.to_string(), "failed to start: no luck");
        let err = d
            .start(&cfg("e", &[("NIMBUS_SIM_EXIT_CODE", "x")]))
            .unwrap_err();
        assert!(err.to_string().contains("NIMBUS_SIM_EXIT_CODE"), "{err}");
    }
}
