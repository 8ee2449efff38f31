//! Output files of `sim run`: `summary.csv` (one row per policy), `timeseries.csv`
//! (utilization samples), `results.json` (everything, read back by `sim report`) and
//! `report.html`. All contents are built in memory first and are byte-identical for the
//! same scenario and seed (no timestamps, fixed float formatting, fixed order).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::SimError;
use crate::metrics::{SimResults, Stats};
use crate::report;

/// The results file inside an output directory.
pub const RESULTS_FILE: &str = "results.json";
/// The HTML report inside an output directory.
pub const REPORT_FILE: &str = "report.html";

/// Quotes a CSV field when it needs it.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn stats_header(out: &mut String, name: &str) {
    for s in ["mean", "p50", "p95", "p99", "max"] {
        let _ = write!(out, ",{name}_{s}");
    }
}

fn stats_row(out: &mut String, s: &Stats) {
    for v in [s.mean, s.p50, s.p95, s.p99, s.max] {
        let _ = write!(out, ",{v}");
    }
}

/// `summary.csv`: one row per policy.
pub fn summary_csv(r: &SimResults) -> String {
    let mut out = String::from(
        "policy,placement,queue,execution,backfill,jobs,completed,measured,rejected_too_large,rejected_timeout,unfinished_queued,unfinished_running",
    );
    for s in ["waiting", "execution", "turnaround", "slowdown"] {
        stats_header(&mut out, s);
    }
    out.push_str(",cpu_busy_mean,cpu_reserved_mean,memory_mean,stranded_cpu_mean,stranded_memory_mean,energy_kwh,mean_power_w,host_failures,interrupted,recovered,lost,events,passes,end_s\n");
    for p in &r.policies {
        let _ = write!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            field(&p.policy),
            p.placement,
            p.queue,
            p.execution,
            p.backfill,
            p.jobs,
            p.completed,
            p.measured,
            p.rejected_too_large,
            p.rejected_timeout,
            p.unfinished_queued,
            p.unfinished_running
        );
        for s in [&p.waiting, &p.execution_time, &p.turnaround, &p.slowdown] {
            stats_row(&mut out, s);
        }
        let _ = writeln!(
            out,
            ",{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            p.cpu_busy_mean,
            p.cpu_reserved_mean,
            p.memory_mean,
            p.stranded_cpu_mean,
            p.stranded_memory_mean,
            p.energy_kwh,
            p.mean_power_w,
            p.host_failures,
            p.interrupted,
            p.recovered,
            p.lost,
            p.events,
            p.passes,
            p.end_s
        );
    }
    out
}

/// `timeseries.csv`: every sample of every policy.
pub fn timeseries_csv(r: &SimResults) -> String {
    let mut out = String::from(
        "policy,t_s,cpu_busy,cpu_reserved,memory,queued,running,hosts_up,stranded_cpu,stranded_memory,power_w\n",
    );
    for p in &r.policies {
        let name = field(&p.policy);
        for s in &p.samples {
            let _ = writeln!(
                out,
                "{name},{},{},{},{},{},{},{},{},{},{}",
                s.t_s,
                s.cpu_busy,
                s.cpu_reserved,
                s.memory,
                s.queued,
                s.running,
                s.hosts_up,
                s.stranded_cpu,
                s.stranded_memory,
                s.power_w
            );
        }
    }
    out
}

/// `results.json`.
pub fn results_json(r: &SimResults) -> String {
    let mut s =
        serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

/// Writes every output file into `dir` (created if missing); returns the paths written.
pub fn write_all(dir: &Path, r: &SimResults) -> Result<Vec<PathBuf>, SimError> {
    let files = [
        ("summary.csv", summary_csv(r)),
        ("timeseries.csv", timeseries_csv(r)),
        (RESULTS_FILE, results_json(r)),
        (REPORT_FILE, report::html(r)),
    ];
    std::fs::create_dir_all(dir).map_err(|e| SimError::io("create", dir, e))?;
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        write_file(&path, &text)?;
        written.push(path);
    }
    Ok(written)
}

/// Writes `text` to `path` through a temporary file and a rename, so a reader never sees
/// half a file.
pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), SimError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| SimError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| SimError::io("write", path, e))
}

/// Reads `results.json` from an output directory.
pub fn read_results(dir: &Path) -> Result<SimResults, SimError> {
    let path = dir.join(RESULTS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| SimError::io("read", &path, e))?;
    serde_json::from_str(&text).map_err(|source| SimError::Results { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(field("best-fit/fcfs"), "best-fit/fcfs");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
