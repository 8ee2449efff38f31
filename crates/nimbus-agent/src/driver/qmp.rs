//! A small synchronous QMP client over the VM's unix socket (on the `qapi` crate's
//! typed commands): status, stop/cont, system_powerdown, quit, and the event stream.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::DriverError;

fn qmp_err(socket: &Path, message: impl Into<String>) -> DriverError {
    DriverError::Qmp {
        socket: socket.display().to_string(),
        message: message.into(),
    }
}

/// Connects to the socket with read and write timeouts.
fn connect(socket: &Path, timeout: Duration) -> Result<UnixStream, DriverError> {
    let stream =
        UnixStream::connect(socket).map_err(|e| qmp_err(socket, format!("connect: {e}")))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| qmp_err(socket, e.to_string()))?;
    Ok(stream)
}

/// Connects, negotiates capabilities, and runs `f` with the session.
fn with_session<T>(
    socket: &Path,
    timeout: Duration,
    f: impl FnOnce(
        &mut qapi::Qmp<qapi::Stream<BufReader<&UnixStream>, &UnixStream>>,
    ) -> std::io::Result<T>,
) -> Result<T, DriverError> {
    let stream = connect(socket, timeout)?;
    let mut qmp = qapi::Qmp::from_stream(&stream);
    qmp.handshake()
        .map_err(|e| qmp_err(socket, format!("handshake: {e}")))?;
    f(&mut qmp).map_err(|e| qmp_err(socket, e.to_string()))
}

/// The VM's run state as QMP reports it (`running`, `paused`, `shutdown`, ...).
pub fn query_status(socket: &Path, timeout: Duration) -> Result<String, DriverError> {
    with_session(socket, timeout, |q| {
        let st = q.execute(&qapi::qmp::query_status {})?;
        Ok(serde_json::to_value(st.status)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_else(|| format!("{:?}", st.status)))
    })
}

/// Freezes the guest's vCPUs.
pub fn stop(socket: &Path, timeout: Duration) -> Result<(), DriverError> {
    with_session(socket, timeout, |q| {
        Ok(q.execute(&qapi::qmp::stop {}).map(drop)?)
    })
}

/// Resumes the guest's vCPUs.
pub fn cont(socket: &Path, timeout: Duration) -> Result<(), DriverError> {
    with_session(socket, timeout, |q| {
        Ok(q.execute(&qapi::qmp::cont {}).map(drop)?)
    })
}

/// Presses the ACPI power button.
pub fn system_powerdown(socket: &Path, timeout: Duration) -> Result<(), DriverError> {
    with_session(socket, timeout, |q| {
        Ok(q.execute(&qapi::qmp::system_powerdown {}).map(drop)?)
    })
}

/// Ends QEMU at once.
pub fn quit(socket: &Path, timeout: Duration) -> Result<(), DriverError> {
    with_session(socket, timeout, |q| {
        Ok(q.execute(&qapi::qmp::quit {}).map(drop)?)
    })
}

/// Follows the event stream of a QMP socket until QEMU closes it, calling `on_event`
/// with each event's name and its JSON. Used on a dedicated socket per VM so that
/// commands on the main socket never miss or steal events.
pub fn follow_events(
    socket: &Path,
    mut on_event: impl FnMut(&str, &serde_json::Value),
) -> Result<(), DriverError> {
    let stream =
        UnixStream::connect(socket).map_err(|e| qmp_err(socket, format!("connect: {e}")))?;
    let mut qmp = qapi::Qmp::from_stream(&stream);
    qmp.handshake()
        .map_err(|e| qmp_err(socket, format!("handshake: {e}")))?;
    drop(qmp);
    let reader = BufReader::new(&stream);
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if let Some(name) = v.get("event").and_then(|e| e.as_str()) {
            on_event(name, &v);
        }
    }
    Ok(())
}

/// Runs one QMP command given as JSON (for commands whose typed arguments are unwieldy,
/// such as `blockdev-add` of an NBD client) and returns its `return` value. Events
/// arriving meanwhile are skipped; an `error` answer becomes a [`DriverError::Qmp`].
pub fn execute(
    socket: &Path,
    timeout: Duration,
    command: &str,
    arguments: serde_json::Value,
) -> Result<serde_json::Value, DriverError> {
    use std::io::Write;
    let stream = connect(socket, timeout)?;
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    // The greeting, then capabilities negotiation.
    let mut greeting = String::new();
    reader
        .read_line(&mut greeting)
        .map_err(|e| qmp_err(socket, format!("greeting: {e}")))?;
    let mut answer = |msg: serde_json::Value| -> Result<serde_json::Value, DriverError> {
        let mut line = serde_json::to_vec(&msg).map_err(|e| qmp_err(socket, e.to_string()))?;
        line.push(b'\n');
        writer
            .write_all(&line)
            .map_err(|e| qmp_err(socket, format!("send: {e}")))?;
        loop {
            let mut buf = String::new();
            let n = reader
                .read_line(&mut buf)
                .map_err(|e| qmp_err(socket, format!("read: {e}")))?;
            if n == 0 {
                return Err(qmp_err(socket, "QEMU closed the connection"));
            }
            let v: serde_json::Value =
                serde_json::from_str(&buf).map_err(|e| qmp_err(socket, e.to_string()))?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let desc = e.get("desc").and_then(|d| d.as_str()).unwrap_or("error");
                return Err(qmp_err(socket, format!("{command}: {desc}")));
            }
        }
    };
    answer(serde_json::json!({ "execute": "qmp_capabilities" }))?;
    answer(serde_json::json!({ "execute": command, "arguments": arguments }))
}
