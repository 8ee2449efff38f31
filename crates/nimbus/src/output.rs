//! Rendering for the terminal: kubectl-style tables, or JSON with `-o json`.

use comfy_table::{presets::NOTHING, Table};
use nimbus_api::units::{format_cpu, format_mib};
use nimbus_api::{Event, Instance, Node};
use serde::Serialize;

use crate::cli::Output;

pub fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    t
}

/// "5s", "3m", "2h", "4d".
pub fn age(since_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let s = now.saturating_sub(since_ms) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

pub fn instances(out: Output, items: &[Instance]) -> String {
    if out == Output::Json {
        return json(&items);
    }
    let mut t = table(&[
        "NAME", "KIND", "STATE", "NODE", "CPU", "MEMORY", "RESTARTS", "AGE", "REASON",
    ]);
    for i in items {
        t.add_row(vec![
            i.name.clone(),
            format!("{:?}", i.kind).to_lowercase(),
            i.state.to_string(),
            i.node.clone().unwrap_or_else(|| "-".into()),
            format_cpu(i.spec.cpu_millis),
            format_mib(i.spec.memory_mib),
            i.restarts.to_string(),
            age(i.created_at_ms),
            i.reason.clone().unwrap_or_default(),
        ]);
    }
    t.to_string()
}

pub fn instance(out: Output, i: &Instance) -> String {
    if out == Output::Json {
        return json(i);
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let rows = [
        ("name", i.name.clone()),
        ("kind", format!("{:?}", i.kind).to_lowercase()),
        ("state", i.state.to_string()),
        ("desired", format!("{:?}", i.desired).to_lowercase()),
        ("node", opt(i.node.clone())),
        ("generation", i.generation.to_string()),
        ("pid", opt(i.pid.map(|p| p.to_string()))),
        ("exit code", opt(i.exit_code.map(|c| c.to_string()))),
        ("reason", opt(i.reason.clone())),
        ("restarts", i.restarts.to_string()),
        ("command", shell_words(&i.spec.command)),
        ("cpu", format_cpu(i.spec.cpu_millis)),
        ("memory", format_mib(i.spec.memory_mib)),
        (
            "restart policy",
            json(&i.spec.restart).trim_matches('"').to_string(),
        ),
        ("image", opt(i.spec.image.clone())),
        ("accelerator", opt(i.accelerator.clone())),
        (
            "endpoints",
            if i.endpoints.is_empty() {
                "-".into()
            } else {
                i.endpoints.join(", ")
            },
        ),
        (
            "guest ready",
            match (i.guest_ready, i.boot_ms) {
                (true, Some(ms)) => format!("yes, {ms} ms after start"),
                (true, None) => "yes".into(),
                _ => "no".into(),
            },
        ),
        ("age", age(i.created_at_ms)),
    ];
    rows.iter()
        .map(|(k, v)| format!("{:<15} {v}", format!("{k}:")))
        .collect::<Vec<_>>()
        .join("\n")
}

fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"\\$`".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn nodes(out: Output, items: &[Node]) -> String {
    if out == Output::Json {
        return json(&items);
    }
    let mut t = table(&[
        "NAME",
        "STATE",
        "CPU (ALLOC/CAP)",
        "MEMORY (ALLOC/CAP)",
        "INSTANCES",
        "HEARTBEAT",
        "DRIVERS",
        "LABELS",
        "AGE",
    ]);
    for n in items {
        let labels = n
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        t.add_row(vec![
            n.name.clone(),
            n.state.as_str().to_string(),
            format!(
                "{}/{}",
                format_cpu(n.allocated.cpu_millis),
                format_cpu(n.capacity.cpu_millis)
            ),
            format!(
                "{}/{}",
                format_mib(n.allocated.memory_mib),
                format_mib(n.capacity.memory_mib)
            ),
            n.instances.to_string(),
            format!("{} ago", age(n.last_heartbeat_ms)),
            n.drivers.join(","),
            if labels.is_empty() {
                "-".into()
            } else {
                labels
            },
            age(n.registered_at_ms),
        ]);
    }
    t.to_string()
}

pub fn event_line(e: &Event) -> String {
    let secs = e.at_ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!(
        "{h:02}:{m:02}:{s:02}.{:03}  {:<28} {:<8} {:<20} {}",
        e.at_ms % 1000,
        e.kind,
        e.object_kind,
        e.object,
        e.message
    )
}

pub fn images(out: Output, items: &[nimbus_api::Image]) -> String {
    if out == Output::Json {
        return json(&items);
    }
    let mut t = table(&["NAME", "KIND", "FORMAT", "SIZE", "AGE"]);
    for i in items {
        t.add_row(vec![
            i.name.clone(),
            format!("{:?}", i.kind).to_lowercase(),
            i.format.clone().unwrap_or_else(|| "-".into()),
            format_mib(i.size().div_ceil(1024 * 1024)),
            age(i.created_at_ms),
        ]);
    }
    t.to_string()
}

pub fn backups(out: Output, items: &[nimbus_api::Backup]) -> String {
    if out == Output::Json {
        return json(&items);
    }
    let mut t = table(&[
        "BACKUP",
        "STATE",
        "NODE",
        "SIZE",
        "NEW BYTES",
        "CONSISTENCY",
        "AGE",
        "REASON",
    ]);
    for b in items {
        t.add_row(vec![
            b.reference(),
            format!("{:?}", b.state).to_lowercase(),
            b.node.clone().unwrap_or_else(|| "-".into()),
            format_mib(b.size.div_ceil(1024 * 1024)),
            b.new_bytes.to_string(),
            b.consistency.clone().unwrap_or_else(|| "-".into()),
            age(b.created_at_ms),
            b.reason.clone().unwrap_or_default(),
        ]);
    }
    t.to_string()
}
