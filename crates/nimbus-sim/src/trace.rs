//! Trace replay: the Azure public VM trace (`vmtable.csv` columns) and Google cluster-data
//! (2011) task events, read into [`Job`]s. Formats and mappings are documented in
//! `docs/simulator.md`; errors name the file, line and column.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use nimbus_sched::Resources;
use serde::{Deserialize, Serialize};

use crate::error::SimError;
use crate::generate::DeclaredRuntime;
use crate::model::Job;
use crate::rng::stream;
use crate::units::{MAX_CPU_MILLIS, MAX_MEMORY_MIB};

/// A trace file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceFormat {
    /// Azure public dataset VM table: one row per VM, timestamps in seconds.
    Azure,
    /// Google cluster-data 2011 task events: one row per event, timestamps in µs.
    Google,
}

impl TraceFormat {
    /// `azure` or `google`.
    pub fn as_str(self) -> &'static str {
        match self {
            TraceFormat::Azure => "azure",
            TraceFormat::Google => "google",
        }
    }

    /// Every column of the format, in the order of a header-less file.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            TraceFormat::Azure => AZURE_COLUMNS,
            TraceFormat::Google => GOOGLE_COLUMNS,
        }
    }

    fn required(self) -> &'static [&'static str] {
        match self {
            TraceFormat::Azure => &[
                "vmcreated",
                "vmdeleted",
                "vmcorecountbucket",
                "vmmemorybucket",
            ],
            TraceFormat::Google => &[
                "time",
                "job_id",
                "task_index",
                "event_type",
                "cpu_request",
                "memory_request",
            ],
        }
    }
}

impl std::str::FromStr for TraceFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "azure" => Ok(TraceFormat::Azure),
            "google" => Ok(TraceFormat::Google),
            other => Err(format!(
                "unknown trace format {other:?}: use one of azure, google"
            )),
        }
    }
}

impl std::fmt::Display for TraceFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Columns of the Azure public VM trace (`vmtable.csv`), in file order.
pub const AZURE_COLUMNS: &[&str] = &[
    "vmid",
    "subscriptionid",
    "deploymentid",
    "vmcreated",
    "vmdeleted",
    "maxcpu",
    "avgcpu",
    "p95maxcpu",
    "vmcategory",
    "vmcorecountbucket",
    "vmmemorybucket",
];

/// Columns of Google cluster-data 2011 `task_events`, in file order (snake_case names).
pub const GOOGLE_COLUMNS: &[&str] = &[
    "time",
    "missing_info",
    "job_id",
    "task_index",
    "machine_id",
    "event_type",
    "user",
    "scheduling_class",
    "priority",
    "cpu_request",
    "memory_request",
    "disk_request",
    "different_machines",
];

/// How to read a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceOptions {
    /// `None`: detected from the header.
    pub format: Option<TraceFormat>,
    /// Every time (arrival, duration) is multiplied by this.
    pub time_scale: f64,
    /// Keep only the first this many jobs (file order).
    pub max_jobs: Option<u64>,
    /// Google requests are fractions of the largest machine: this many millicores = 1.0.
    pub cpu_scale_millis: u64,
    /// ... and this many MiB = 1.0.
    pub memory_scale_mib: u64,
    pub declared: DeclaredRuntime,
    /// Seed for noisy declared runtimes.
    pub seed: u64,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            format: None,
            time_scale: 1.0,
            max_jobs: None,
            cpu_scale_millis: 32_000,
            memory_scale_mib: 128 * 1024,
            declared: DeclaredRuntime::Exact,
            seed: 0,
        }
    }
}

/// A trace read into jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub format: TraceFormat,
    /// In arrival order, times rebased so the first arrival is at 0.
    pub jobs: Vec<Job>,
    /// Rows or tasks that yield no job (Google tasks never scheduled or never ended).
    pub skipped: u64,
}

/// Reads the trace at `path`.
pub fn load_trace(path: &Path, opts: &TraceOptions) -> Result<Trace, SimError> {
    let mut text = String::new();
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| SimError::io("read", path, e))?;
    parse_trace(path, &text, opts)
}

/// Parses trace `text` (read from `path`, which is only used in errors).
pub fn parse_trace(path: &Path, text: &str, opts: &TraceOptions) -> Result<Trace, SimError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let mut records = rdr.records();
    let ctx = Ctx {
        path: path.to_path_buf(),
    };
    let Some(first) = records.next() else {
        return Err(ctx.err(1, 1, "the trace is empty".into()));
    };
    let first = first.map_err(|e| ctx.csv(e))?;
    let (format, columns, header) = detect(&ctx, &first, opts.format)?;
    let mut rows = Rows {
        ctx,
        columns,
        format,
        pending: if header { None } else { Some(first) },
        records,
    };
    let mut trace = match format {
        TraceFormat::Azure => azure(&mut rows, opts)?,
        TraceFormat::Google => google(&mut rows, opts)?,
    };
    // Rebase, declare runtimes, order by arrival (stable: ties keep file order).
    let t0 = trace
        .jobs
        .iter()
        .map(|j| j.arrival_s)
        .fold(f64::INFINITY, f64::min);
    let mut rng = stream(opts.seed, "declared-runtimes", 0);
    for j in &mut trace.jobs {
        j.arrival_s = (j.arrival_s - t0) * opts.time_scale;
        j.duration_s *= opts.time_scale;
        j.declared_runtime_secs = opts.declared.declare(j.duration_s, &mut rng);
    }
    trace
        .jobs
        .sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
    Ok(trace)
}

struct Ctx {
    path: PathBuf,
}

impl Ctx {
    fn err(&self, line: u64, column: usize, message: String) -> SimError {
        SimError::Parse {
            path: self.path.clone(),
            line: line as usize,
            column,
            message,
        }
    }

    fn csv(&self, e: csv::Error) -> SimError {
        let line = e.position().map_or(0, |p| p.line());
        self.err(line, 1, format!("not valid CSV: {e}"))
    }
}

/// Decides the format and column positions from the first record.
fn detect(
    ctx: &Ctx,
    first: &csv::StringRecord,
    format: Option<TraceFormat>,
) -> Result<(TraceFormat, Vec<&'static str>, bool), SimError> {
    let line = first.position().map_or(1, |p| p.line());
    let names: Vec<String> = first.iter().map(|f| f.to_ascii_lowercase()).collect();
    let known = |f: TraceFormat| names.iter().any(|n| f.columns().contains(&n.as_str()));
    // A first row naming any known column is a header (even of the other format: its
    // columns are then reported as unknown for this one).
    let is_header = known(TraceFormat::Azure) || known(TraceFormat::Google);
    if !is_header {
        // No header: the documented column order, identified by field count.
        let by_count = [TraceFormat::Azure, TraceFormat::Google]
            .into_iter()
            .find(|f| f.columns().len() == first.len());
        let f = match (format, by_count) {
            (Some(f), _) if f.columns().len() == first.len() => f,
            (None, Some(f)) => f,
            (f, _) => {
                let what = f.map_or("azure (11) or google (13)".to_string(), |f| {
                    format!("{f} ({})", f.columns().len())
                });
                return Err(ctx.err(
                    line,
                    1,
                    format!(
                        "no header row and {} fields: name the columns in a header row, \
                         or give exactly the {what} fields in the documented order",
                        first.len()
                    ),
                ));
            }
        };
        return Ok((f, f.columns().to_vec(), false));
    }
    let f = match format {
        Some(f) => f,
        None if names.iter().any(|n| n == "vmcreated") => TraceFormat::Azure,
        None if names.iter().any(|n| n == "event_type") => TraceFormat::Google,
        None => {
            return Err(ctx.err(
                line,
                1,
                "cannot tell the trace format from the header (no vmcreated or event_type \
                 column): give the format (azure or google)"
                    .into(),
            ))
        }
    };
    let unknown: Vec<String> = names
        .iter()
        .filter(|n| !f.columns().contains(&n.as_str()))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(SimError::UnknownColumns {
            path: ctx.path.clone(),
            line: line as usize,
            format: f.as_str(),
            columns: unknown,
            expected: f.columns().to_vec(),
        });
    }
    let mut columns = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        let c = f.columns().iter().copied().find(|c| c == n).unwrap_or("");
        if columns.contains(&c) {
            return Err(ctx.err(line, i + 1, format!("column {n:?} appears twice")));
        }
        columns.push(c);
    }
    let missing: Vec<&str> = f
        .required()
        .iter()
        .copied()
        .filter(|r| !columns.contains(r))
        .collect();
    if !missing.is_empty() {
        return Err(ctx.err(
            line,
            1,
            format!(
                "the {f} format needs column{} {} in the header",
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", ")
            ),
        ));
    }
    Ok((f, columns, true))
}

/// Data rows with their column names.
struct Rows<'a> {
    ctx: Ctx,
    columns: Vec<&'static str>,
    format: TraceFormat,
    pending: Option<csv::StringRecord>,
    records: csv::StringRecordsIter<'a, &'a [u8]>,
}

/// One data row: typed access by column name, errors located at the field.
struct Row<'r> {
    rec: csv::StringRecord,
    line: u64,
    columns: &'r [&'static str],
    ctx: &'r Ctx,
}

impl Rows<'_> {
    fn next_row(&mut self) -> Option<Result<(csv::StringRecord, u64), SimError>> {
        let rec = match self.pending.take() {
            Some(r) => r,
            None => match self.records.next()? {
                Ok(r) => r,
                Err(e) => return Some(Err(self.ctx.csv(e))),
            },
        };
        let line = rec.position().map_or(0, |p| p.line());
        if rec.len() != self.columns.len() {
            return Some(Err(self.ctx.err(
                line,
                rec.len().min(self.columns.len()) + 1,
                format!(
                    "expected {} fields ({} format), found {}",
                    self.columns.len(),
                    self.format,
                    rec.len()
                ),
            )));
        }
        Some(Ok((rec, line)))
    }
}

impl Row<'_> {
    fn index(&self, col: &str) -> Option<usize> {
        self.columns.iter().position(|c| *c == col)
    }

    /// The raw field, `None` when the column is absent or the field empty.
    fn raw(&self, col: &str) -> Option<(&str, usize)> {
        let i = self.index(col)?;
        let v = self.rec.get(i)?;
        (!v.is_empty()).then_some((v, i + 1))
    }

    fn err(&self, column: usize, col: &str, msg: String) -> SimError {
        self.ctx.err(self.line, column, format!("{col}: {msg}"))
    }

    fn required(&self, col: &str) -> Result<(&str, usize), SimError> {
        self.raw(col).ok_or_else(|| {
            let c = self.index(col).map_or(1, |i| i + 1);
            self.err(c, col, "empty; a value is required".into())
        })
    }

    fn num(&self, col: &str, v: &str, at: usize) -> Result<f64, SimError> {
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            _ => Err(self.err(at, col, format!("{v:?} is not a number"))),
        }
    }

    fn int(&self, col: &str, v: &str, at: usize) -> Result<i64, SimError> {
        v.parse::<i64>()
            .map_err(|_| self.err(at, col, format!("{v:?} is not an integer")))
    }

    /// A number in `lo..=hi` (inclusive), or `None` if absent.
    fn ranged(&self, col: &str, lo: f64, hi: f64) -> Result<Option<f64>, SimError> {
        let Some((v, at)) = self.raw(col) else {
            return Ok(None);
        };
        let x = self.num(col, v, at)?;
        if !(lo..=hi).contains(&x) {
            return Err(self.err(at, col, format!("{v} is outside {lo}..={hi}")));
        }
        Ok(Some(x))
    }
}

/// Azure bucket values: a number, or `>N` meaning the next power of two above N.
fn bucket(v: &str) -> Option<f64> {
    if let Some(rest) = v.strip_prefix('>') {
        let n: f64 = rest.trim().parse().ok()?;
        if !(0.0..=1e12).contains(&n) {
            return None;
        }
        let mut p = 1.0;
        while p <= n {
            p *= 2.0;
        }
        Some(p)
    } else {
        v.parse::<f64>().ok().filter(|x| x.is_finite())
    }
}

fn azure(rows: &mut Rows<'_>, opts: &TraceOptions) -> Result<Trace, SimError> {
    let mut jobs = Vec::new();
    let max = opts.max_jobs.unwrap_or(u64::MAX);
    while let Some(next) = rows.next_row() {
        if jobs.len() as u64 >= max {
            break;
        }
        let (rec, line) = next?;
        let row = Row {
            rec,
            line,
            columns: &rows.columns,
            ctx: &rows.ctx,
        };
        let (c, c_at) = row.required("vmcreated")?;
        let created = row.num("vmcreated", c, c_at)?;
        let (d, d_at) = row.required("vmdeleted")?;
        let deleted = row.num("vmdeleted", d, d_at)?;
        if created < 0.0 {
            return Err(row.err(c_at, "vmcreated", format!("{c} is negative")));
        }
        if deleted < created {
            return Err(row.err(d_at, "vmdeleted", format!("{d} is before vmcreated {c}")));
        }
        let (cores, k_at) = row.required("vmcorecountbucket")?;
        let cores_n = bucket(cores).filter(|x| *x > 0.0).ok_or_else(|| {
            row.err(
                k_at,
                "vmcorecountbucket",
                format!("{cores:?} is not a core count like 2, 8 or >24"),
            )
        })?;
        let cpu_millis = (cores_n * 1000.0).round();
        if cpu_millis > MAX_CPU_MILLIS as f64 {
            return Err(row.err(
                k_at,
                "vmcorecountbucket",
                format!(
                    "{cores} cores is absurd: at most {} are accepted",
                    MAX_CPU_MILLIS / 1000
                ),
            ));
        }
        let (mem, m_at) = row.required("vmmemorybucket")?;
        let mem_gb = bucket(mem).filter(|x| *x > 0.0).ok_or_else(|| {
            row.err(
                m_at,
                "vmmemorybucket",
                format!("{mem:?} is not a memory size in GB like 4, 64 or >64"),
            )
        })?;
        let memory_mib = (mem_gb * 1024.0).ceil();
        if memory_mib > MAX_MEMORY_MIB as f64 {
            return Err(row.err(
                m_at,
                "vmmemorybucket",
                format!(
                    "{mem} GB is absurd: at most {} GB is accepted",
                    MAX_MEMORY_MIB / 1024
                ),
            ));
        }
        for col in ["maxcpu", "p95maxcpu"] {
            row.ranged(col, 0.0, 100.0)?;
        }
        let avg = row.ranged("avgcpu", 0.0, 100.0)?.unwrap_or(100.0);
        let priority = match row.raw("vmcategory") {
            None => 0,
            Some((v, at)) => match v.to_ascii_lowercase().as_str() {
                "delay-insensitive" => 0,
                "unknown" => 1,
                "interactive" => 2,
                _ => {
                    return Err(row.err(
                        at,
                        "vmcategory",
                        format!("{v:?} is not one of Delay-insensitive, Interactive, Unknown"),
                    ))
                }
            },
        };
        let cpu_millis = cpu_millis as u64;
        jobs.push(Job {
            arrival_s: created,
            duration_s: deleted - created,
            resources: Resources::new(cpu_millis, memory_mib as u64, 0),
            cpu_demand_millis: (cpu_millis as f64 * avg / 100.0).round() as u64,
            priority,
            declared_runtime_secs: None,
            initial_host: None,
        });
    }
    Ok(Trace {
        format: TraceFormat::Azure,
        jobs,
        skipped: 0,
    })
}

/// A Google task between its SUBMIT and its end.
struct Task {
    submit_s: f64,
    start_s: Option<f64>,
    cpu: f64,
    mem: f64,
    priority: i32,
}

/// The Google `time` value meaning "after the trace window" (2^63 - 1).
const GOOGLE_END_OF_TIME: i64 = i64::MAX;

fn google(rows: &mut Rows<'_>, opts: &TraceOptions) -> Result<Trace, SimError> {
    let mut open: BTreeMap<(i64, i64), Task> = BTreeMap::new();
    let mut jobs = Vec::new();
    let mut skipped = 0u64;
    let max = opts.max_jobs.unwrap_or(u64::MAX);
    while let Some(next) = rows.next_row() {
        if jobs.len() as u64 >= max {
            break;
        }
        let (rec, line) = next?;
        let row = Row {
            rec,
            line,
            columns: &rows.columns,
            ctx: &rows.ctx,
        };
        let (t, t_at) = row.required("time")?;
        let time = row.int("time", t, t_at)?;
        if time < 0 {
            return Err(row.err(t_at, "time", format!("{t} is negative")));
        }
        let (j, j_at) = row.required("job_id")?;
        let job_id = row.int("job_id", j, j_at)?;
        let (ti, ti_at) = row.required("task_index")?;
        let task_index = row.int("task_index", ti, ti_at)?;
        let (e, e_at) = row.required("event_type")?;
        let event = row.int("event_type", e, e_at)?;
        if !(0..=8).contains(&event) {
            return Err(row.err(
                e_at,
                "event_type",
                format!("{e} is not an event type 0..=8"),
            ));
        }
        let cpu = row.ranged("cpu_request", 0.0, 1.0)?;
        let mem = row.ranged("memory_request", 0.0, 1.0)?;
        row.ranged("disk_request", 0.0, 1.0)?;
        let priority = match row.raw("priority") {
            Some((p, at)) => {
                let p = row.int("priority", p, at)?;
                i32::try_from(p)
                    .ok()
                    .filter(|p| (0..=11).contains(p))
                    .ok_or_else(|| {
                        row.err(at, "priority", format!("{p} is not a priority 0..=11"))
                    })?
            }
            None => 0,
        };
        if time == GOOGLE_END_OF_TIME {
            continue;
        }
        let now = time as f64 / 1e6;
        let key = (job_id, task_index);
        match event {
            0 => {
                if open.contains_key(&key) {
                    skipped += 1;
                }
                open.insert(
                    key,
                    Task {
                        submit_s: now,
                        start_s: None,
                        cpu: cpu.unwrap_or(0.0),
                        mem: mem.unwrap_or(0.0),
                        priority,
                    },
                );
            }
            1 => {
                if let Some(task) = open.get_mut(&key) {
                    task.start_s.get_or_insert(now);
                }
            }
            2..=6 => {
                let Some(task) = open.remove(&key) else {
                    continue;
                };
                let Some(start) = task.start_s else {
                    skipped += 1;
                    continue;
                };
                let cpu_millis = (task.cpu * opts.cpu_scale_millis as f64).round() as u64;
                jobs.push(Job {
                    arrival_s: task.submit_s,
                    duration_s: (now - start).max(0.0),
                    resources: Resources::new(
                        cpu_millis,
                        (task.mem * opts.memory_scale_mib as f64).ceil() as u64,
                        0,
                    ),
                    cpu_demand_millis: cpu_millis,
                    priority: task.priority,
                    declared_runtime_secs: None,
                    initial_host: None,
                });
            }
            _ => {
                if let Some(task) = open.get_mut(&key) {
                    if let Some(c) = cpu {
                        task.cpu = c;
                    }
                    if let Some(m) = mem {
                        task.mem = m;
                    }
                }
            }
        }
    }
    skipped += open.len() as u64;
    Ok(Trace {
        format: TraceFormat::Google,
        jobs,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, format: Option<TraceFormat>) -> Result<Trace, SimError> {
        let opts = TraceOptions {
            format,
            ..TraceOptions::default()
        };
        parse_trace(Path::new("t.csv"), text, &opts)
    }

    const AZ_HEADER: &str = "vmid,subscriptionid,deploymentid,vmcreated,vmdeleted,maxcpu,avgcpu,p95maxcpu,vmcategory,vmcorecountbucket,vmmemorybucket\n";

    #[test]
    fn azure_rows_become_jobs() {
        let text = format!(
            "{AZ_HEADER}a,s,d,600,4200,90,50,80,Interactive,4,8\nb,s,d,300,900,10,5,9,Delay-insensitive,>24,>64\n"
        );
        let t = parse(&text, None).unwrap();
        assert_eq!(t.format, TraceFormat::Azure);
        assert_eq!(t.jobs.len(), 2);
        let b = &t.jobs[0];
        assert_eq!(b.arrival_s, 0.0);
        assert_eq!(b.duration_s, 600.0);
        assert_eq!(b.resources, Resources::new(32_000, 128 * 1024, 0));
        assert_eq!(b.priority, 0);
        let a = &t.jobs[1];
        assert_eq!(a.arrival_s, 300.0);
        assert_eq!(a.resources, Resources::new(4000, 8192, 0));
        assert_eq!(a.cpu_demand_millis, 2000);
        assert_eq!(a.priority, 2);
        assert_eq!(a.declared_runtime_secs, Some(3600));
    }

    #[test]
    fn headerless_azure_in_documented_order() {
        let t = parse("a,s,d,0,60,1,1,1,Unknown,2,4\n", Some(TraceFormat::Azure)).unwrap();
        assert_eq!(t.jobs[0].resources, Resources::new(2000, 4096, 0));
        assert_eq!(t.jobs[0].priority, 1);
    }

    #[test]
    fn unknown_columns_are_named() {
        let err = parse("vmid,vmcreated,vmdeleted,color,size\n", None).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("t.csv:1: unknown columns \"color\", \"size\" for the azure"),
            "{msg}"
        );
    }

    #[test]
    fn bad_fields_give_line_and_column() {
        let cases = [
            ("a,s,d,10,5,1,1,1,Unknown,2,4", "t.csv:2:5: vmdeleted: 5 is before vmcreated 10"),
            ("a,s,d,x,5,1,1,1,Unknown,2,4", "t.csv:2:4: vmcreated: \"x\" is not a number"),
            ("a,s,d,1,5,1,1,1,Unknown,9999,4", "t.csv:2:10: vmcorecountbucket: 9999 cores is absurd: at most 4096 are accepted"),
            ("a,s,d,1,5,1,1,1,Unknown,2,0", "t.csv:2:11: vmmemorybucket: \"0\" is not a memory size in GB like 4, 64 or >64"),
            ("a,s,d,1,5,1,150,1,Unknown,2,4", "t.csv:2:7: avgcpu: 150 is outside 0..=100"),
            ("a,s,d,1,5,1,1,1,Gaming,2,4", "t.csv:2:9: vmcategory: \"Gaming\" is not one of Delay-insensitive, Interactive, Unknown"),
            ("a,s,d,1,5", "t.csv:2:6: expected 11 fields (azure format), found 5"),
            ("a,s,d,,5,1,1,1,Unknown,2,4", "t.csv:2:4: vmcreated: empty; a value is required"),
        ];
        for (row, want) in cases {
            let err = parse(&format!("{AZ_HEADER}{row}\n"), None).unwrap_err();
            assert_eq!(err.to_string(), want, "{row}");
        }
    }

    #[test]
    fn missing_required_column() {
        let err = parse("vmid,vmcreated,vmdeleted\nx,1,2\n", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.csv:1:1: the azure format needs columns vmcorecountbucket, vmmemorybucket in the header"
        );
    }

    const G_HEADER: &str = "time,missing_info,job_id,task_index,machine_id,event_type,user,scheduling_class,priority,cpu_request,memory_request,disk_request,different_machines\n";

    #[test]
    fn google_tasks_from_submit_schedule_finish() {
        let text = format!(
            "{G_HEADER}\
             1000000,,7,0,,0,u,1,9,0.125,0.25,0.001,0\n\
             3000000,,7,0,m1,1,u,1,9,,,,0\n\
             2000000,,7,1,,0,u,1,2,0.5,0.5,0,0\n\
             13000000,,7,0,m1,4,u,1,9,,,,0\n\
             14000000,,7,1,,5,u,1,2,,,,0\n\
             15000000,,8,0,,0,u,1,0,0.1,0.1,0,0\n"
        );
        let t = parse(&text, None).unwrap();
        assert_eq!(t.format, TraceFormat::Google);
        // task 7/1 killed before scheduling, 8/0 never ends: both skipped.
        assert_eq!(t.skipped, 2);
        assert_eq!(t.jobs.len(), 1);
        let j = &t.jobs[0];
        assert_eq!(j.arrival_s, 0.0);
        assert_eq!(j.duration_s, 10.0);
        assert_eq!(j.resources, Resources::new(4000, 32 * 1024, 0));
        assert_eq!(j.priority, 9);
    }

    #[test]
    fn google_bad_values() {
        let cases = [
            (
                "1,,7,0,,9,u,1,9,0.1,0.1,0,0",
                "t.csv:2:6: event_type: 9 is not an event type 0..=8",
            ),
            (
                "1,,7,0,,0,u,1,9,1.5,0.1,0,0",
                "t.csv:2:10: cpu_request: 1.5 is outside 0..=1",
            ),
            (
                "1,,7,0,,0,u,1,99,0.1,0.1,0,0",
                "t.csv:2:9: priority: 99 is not a priority 0..=11",
            ),
            (
                "-5,,7,0,,0,u,1,9,0.1,0.1,0,0",
                "t.csv:2:1: time: -5 is negative",
            ),
        ];
        for (row, want) in cases {
            let err = parse(&format!("{G_HEADER}{row}\n"), None).unwrap_err();
            assert_eq!(err.to_string(), want, "{row}");
        }
    }

    #[test]
    fn empty_and_headerless_ambiguity() {
        assert_eq!(
            parse("", None).unwrap_err().to_string(),
            "t.csv:1:1: the trace is empty"
        );
        let err = parse("1,2,3\n", None).unwrap_err().to_string();
        assert!(err.contains("no header row and 3 fields"), "{err}");
    }
}
