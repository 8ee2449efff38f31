//! Health checks of running tasks: a thread of the agent probes each task's service
//! (TCP connect, or an HTTP GET answering 2xx/3xx) on its interval and counts failures
//! in a row; the reconciler stops a task whose count reached its threshold, and the
//! task's restart policy decides what follows, as for a crash.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nimbus_api::{HealthCheck, HealthCheckKind};

/// Longest a single probe may take.
const MAX_PROBE_TIME: Duration = Duration::from_secs(2);

/// One task to probe.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub generation: u64,
    pub addr: SocketAddr,
    pub check: HealthCheck,
}

#[derive(Debug)]
struct Probes {
    generation: u64,
    failures: u32,
    last_error: Option<String>,
    next_at: Instant,
}

/// Probe results of this node's tasks.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<HashMap<String, Probes>>,
}

impl Health {
    fn state(&self) -> std::sync::MutexGuard<'_, HashMap<String, Probes>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Probes the targets that are due (blocking: run it off the reconciler) and
    /// forgets tasks that are no longer targets.
    pub fn probe_due(&self, targets: &[Target]) {
        let now = Instant::now();
        let due: Vec<&Target> = {
            let mut st = self.state();
            st.retain(|name, p| {
                targets
                    .iter()
                    .any(|t| &t.name == name && t.generation == p.generation)
            });
            targets
                .iter()
                .filter(|t| st.get(&t.name).is_none_or(|p| now >= p.next_at))
                .collect()
        };
        for t in due {
            let interval = Duration::from_secs(t.check.interval_secs);
            let result = probe(t.addr, &t.check, interval.min(MAX_PROBE_TIME));
            let mut st = self.state();
            let p = st.entry(t.name.clone()).or_insert(Probes {
                generation: t.generation,
                failures: 0,
                last_error: None,
                next_at: now,
            });
            p.next_at = Instant::now() + interval;
            match result {
                Ok(()) => {
                    p.failures = 0;
                    p.last_error = None;
                }
                Err(e) => {
                    p.failures += 1;
                    p.last_error = Some(e);
                }
            }
        }
    }

    /// Why task `name` is unhealthy, once its failures in a row reached `threshold`.
    pub fn unhealthy(&self, name: &str, generation: u64, threshold: u32) -> Option<String> {
        let st = self.state();
        let p = st.get(name).filter(|p| p.generation == generation)?;
        (p.failures >= threshold).then(|| {
            format!(
                "health check failed {} times in a row: {}",
                p.failures,
                p.last_error.as_deref().unwrap_or("no answer")
            )
        })
    }

    /// Starts counting afresh (after a restart).
    pub fn forget(&self, name: &str) {
        self.state().remove(name);
    }
}

/// One probe of `addr`.
pub fn probe(addr: SocketAddr, check: &HealthCheck, timeout: Duration) -> Result<(), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    if check.kind == HealthCheckKind::Tcp {
        return Ok(());
    }
    s.set_read_timeout(Some(timeout))
        .and_then(|_| s.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let path = check.path.as_deref().unwrap_or("/");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: nimbus-health\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("GET {path}: no answer ({e})")),
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET {path}: not an HTTP answer"))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("GET {path}: status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str) -> HealthCheck {
        s.parse().unwrap()
    }

    #[test]
    fn probes_tcp_and_http_and_counts_failures_in_a_row() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for (i, conn) in listener.incoming().take(3).enumerate() {
                let mut c = conn.unwrap();
                // The whole request (the TCP probe sends none), so closing resets nothing.
                let mut req = Vec::new();
                let mut buf = [0u8; 512];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let status = if i == 2 { "503 Unavailable" } else { "200 OK" };
                let _ = write!(c, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let t = Duration::from_secs(2);
        probe(addr, &check(&format!("tcp:{}", addr.port())), t).unwrap();
        probe(addr, &check(&format!("http:{}/healthz", addr.port())), t).unwrap();
        let err = probe(addr, &check(&format!("http:{}/", addr.port())), t).unwrap_err();
        assert!(err.contains("503"), "{err}");
        server.join().unwrap();

        // Nothing listens any more: failures count up to the threshold.
        let h = Health::default();
        let mut c = check(&format!("tcp:{}", addr.port()));
        c.interval_secs = 1;
        let target = Target {
            name: "web".into(),
            generation: 1,
            addr,
            check: c,
        };
        for _ in 0..3 {
            h.state()
                .entry("web".into())
                .and_modify(|p| p.next_at = Instant::now());
            h.probe_due(std::slice::from_ref(&target));
        }
        let why = h
            .unhealthy("web", 1, 3)
            .expect("unhealthy after 3 failures");
        assert!(why.contains("3 times in a row"), "{why}");
        assert!(
            h.unhealthy("web", 2, 3).is_none(),
            "another placement starts afresh"
        );
        h.forget("web");
        assert!(h.unhealthy("web", 1, 3).is_none());
    }

    #[test]
    fn health_check_strings_parse() {
        let c = check("http:8080/healthz");
        assert_eq!((c.kind, c.port), (HealthCheckKind::Http, 8080));
        assert_eq!(c.path.as_deref(), Some("/healthz"));
        assert!("tcp:0".parse::<HealthCheck>().is_err());
        assert!("tcp:80/x".parse::<HealthCheck>().is_err());
        assert!("udp:53".parse::<HealthCheck>().is_err());
    }
}
