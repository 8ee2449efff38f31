//! The HTML report: one self-contained file (inline CSS and SVG, no scripts) comparing
//! the policies of a run side by side.

use std::fmt::Write as _;

use crate::metrics::{PolicyResult, SimResults};
use crate::svg::{bar_chart, color, esc, line_chart, num, Series};

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1500px}\
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em}\
table{border-collapse:collapse;font-size:.85em}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}\
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}\
.grid{stroke:#e4e4e4}.tick{font-size:11px;fill:#555}.label{font-size:12px}.value{font-size:11px;fill:#333}\
.title{font-size:14px;font-weight:600}.axis{font-size:12px;fill:#444}\
.charts{display:flex;flex-wrap:wrap;gap:24px}.chart{max-width:100%;height:auto}\
.swatch{display:inline-block;width:10px;height:10px;margin-right:6px}.note{color:#555;font-size:.85em}";

fn bars(r: &SimResults, f: impl Fn(&PolicyResult) -> f64) -> Vec<(String, f64)> {
    r.policies
        .iter()
        .map(|p| (p.policy.clone(), f(p)))
        .collect()
}

fn over_time<'a>(r: &'a SimResults, f: impl Fn(&crate::metrics::Sample) -> f64) -> Vec<Series<'a>> {
    r.policies
        .iter()
        .map(|p| Series {
            name: &p.policy,
            points: p.samples.iter().map(|s| (s.t_s, f(s))).collect(),
        })
        .collect()
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

/// The report for `r`.
pub fn html(r: &SimResults) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>nimbus sim: {name}</title><style>{STYLE}</style></head><body>\n<h1>nimbus sim: {name}</h1>\n<p>Seed {seed}; workload: {wl}; {hosts} hosts; {jobs} jobs; horizon {hz}; warm-up {warm} s. Every placement and queueing decision was made by <code>nimbus-sched</code>, the live scheduler.</p>\n",
        name = esc(&r.scenario),
        seed = r.seed,
        wl = esc(&r.workload),
        hosts = r.hosts,
        jobs = r.jobs,
        hz = r.horizon_s.map_or("none (until every job is done)".to_string(), |h| format!("{} s", num(h))),
        warm = num(r.warmup_s),
    );
    s.push_str("<h2>Summary</h2>\n<table><tr><th>policy</th><th>completed</th><th>rejected</th><th>unfinished</th><th>wait mean (s)</th><th>wait p95</th><th>wait p99</th><th>exec mean (s)</th><th>turnaround mean (s)</th><th>turnaround p95</th><th>slowdown mean</th><th>slowdown p95</th><th>slowdown p99</th><th>cpu busy</th><th>memory</th><th>stranded cpu</th><th>stranded mem</th><th>energy (kWh)</th><th>host failures</th><th>interrupted</th><th>recovered</th><th>lost</th></tr>\n");
    for (i, p) in r.policies.iter().enumerate() {
        let _ = writeln!(
            s,
            "<tr><td><span class=\"swatch\" style=\"background:{c}\"></span>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            p.completed,
            p.rejected_too_large + p.rejected_timeout,
            p.unfinished_queued + p.unfinished_running,
            num(p.waiting.mean),
            num(p.waiting.p95),
            num(p.waiting.p99),
            num(p.execution_time.mean),
            num(p.turnaround.mean),
            num(p.turnaround.p95),
            num(p.slowdown.mean),
            num(p.slowdown.p95),
            num(p.slowdown.p99),
            pct(p.cpu_busy_mean),
            pct(p.memory_mean),
            pct(p.stranded_cpu_mean),
            pct(p.stranded_memory_mean),
            num(p.energy_kwh),
            p.host_failures,
            p.interrupted,
            p.recovered,
            p.lost,
            c = color(i),
            name = esc(&p.policy),
        );
    }
    s.push_str("</table>\n");

    s.push_str("<h2>Waiting, turnaround and slowdown</h2>\n<div class=\"charts\">\n");
    for chart in [
        bar_chart("Mean waiting time", "s", &bars(r, |p| p.waiting.mean)),
        bar_chart("p95 waiting time", "s", &bars(r, |p| p.waiting.p95)),
        bar_chart(
            "Mean turnaround (waiting + execution)",
            "s",
            &bars(r, |p| p.turnaround.mean),
        ),
        bar_chart("Mean slowdown", "", &bars(r, |p| p.slowdown.mean)),
        bar_chart("p95 slowdown", "", &bars(r, |p| p.slowdown.p95)),
        bar_chart(
            "Rejected jobs",
            "",
            &bars(r, |p| (p.rejected_too_large + p.rejected_timeout) as f64),
        ),
    ] {
        s.push_str(&chart);
        s.push('\n');
    }
    let cdf: Vec<Series<'_>> = r
        .policies
        .iter()
        .map(|p| Series {
            name: &p.policy,
            points: p
                .waiting_quantiles
                .iter()
                .enumerate()
                .map(|(q, w)| (*w, q as f64 / 100.0))
                .collect(),
        })
        .collect();
    s.push_str(&line_chart(
        "Waiting time CDF (fraction of jobs waiting at most x s)",
        "waiting time (s)",
        &cdf,
        Some(1.0),
    ));
    s.push_str("\n</div>\n<h2>Utilization over time</h2>\n<div class=\"charts\">\n");
    for chart in [
        line_chart(
            "CPU busy (fraction of installed cores)",
            "time (s)",
            &over_time(r, |x| x.cpu_busy),
            Some(1.0),
        ),
        line_chart(
            "Memory reserved (fraction of installed memory)",
            "time (s)",
            &over_time(r, |x| x.memory),
            Some(1.0),
        ),
        line_chart(
            "Queued jobs",
            "time (s)",
            &over_time(r, |x| x.queued as f64),
            None,
        ),
        line_chart(
            "Stranded cpu (free where no job shape fits)",
            "time (s)",
            &over_time(r, |x| x.stranded_cpu),
            None,
        ),
        line_chart("Power (W)", "time (s)", &over_time(r, |x| x.power_w), None),
    ] {
        s.push_str(&chart);
        s.push('\n');
    }
    s.push_str("</div>\n<h2>Capacity and energy</h2>\n<div class=\"charts\">\n");
    for chart in [
        bar_chart("Mean cpu busy", "fraction", &bars(r, |p| p.cpu_busy_mean)),
        bar_chart(
            "Mean stranded cpu",
            "fraction",
            &bars(r, |p| p.stranded_cpu_mean),
        ),
        bar_chart(
            "Mean stranded memory",
            "fraction",
            &bars(r, |p| p.stranded_memory_mean),
        ),
        bar_chart("Energy", "kWh", &bars(r, |p| p.energy_kwh)),
    ] {
        s.push_str(&chart);
        s.push('\n');
    }
    s.push_str("</div>\n<h2>By priority</h2>\n<table><tr><th>policy</th><th>priority</th><th>jobs</th><th>wait mean (s)</th><th>wait p95</th><th>turnaround mean (s)</th></tr>\n");
    for p in &r.policies {
        for b in &p.by_priority {
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.policy),
                b.priority,
                b.waiting.count,
                num(b.waiting.mean),
                num(b.waiting.p95),
                num(b.turnaround.mean)
            );
        }
    }
    s.push_str("</table>\n<p class=\"note\">Waiting: arrival to start (for a job restarted after a host failure, to its last start). Execution: last start to finish; under time sharing longer than the job's duration. Turnaround = waiting + execution. Slowdown: turnaround / max(duration, slowdown floor). Statistics cover jobs that finished and arrived after the warm-up. Stranded: free capacity on nodes where no job shape of the workload fits. Energy: linear power model, idle to max watts with cpu busy, 0 W while a host is down. See docs/simulator.md.</p>\n</body></html>\n");
    s
}
