//! The `sim run` / `sim report` entry points end to end: byte-identical outputs for the
//! same scenario and seed, bad input rejected with file, line and column before anything
//! is written, the shipped examples and sample traces.

use std::path::{Path, PathBuf};

use nimbus_sim::cli::{load, report_cli, run, run_cli, ReportArgs, SimArgs};
use nimbus_sim::samples::{azure_sample, google_sample, SAMPLE_SEED};
use nimbus_sim::trace::TraceFormat;

const SCENARIO: &str = r#"
name = "determinism"
seed = 5
warmup_s = 600
max_wait_s = 7200

[[hosts]]
name = "a"
count = 30
cpu = 16
memory = "64Gi"
mtbf_h = 5
mttr_h = 0.5

[[hosts]]
name = "b"
count = 10
cpu = 48
memory = "192Gi"
idle_w = 150
max_w = 450

[workload]
jobs = 3000
arrival = { process = "bursty", rate_per_s = 0.3, burst_rate_per_s = 3, mean_burst_s = 120, mean_calm_s = 1200 }
duration = { dist = "pareto", scale_s = 120, shape = 1.6, max_s = 86400 }
sizes = [{ cpu = 2, memory = "4Gi", weight = 5 }, { cpu = 8, memory = "32Gi", weight = 2 }, { cpu = 16, memory = "16Gi", weight = 1 }]
priorities = [{ priority = 0, weight = 3 }, { priority = 9, weight = 1 }]
declared_runtime = "noisy"

[[policies]]
placement = "best-fit"
queue = "sjf"

[[policies]]
placement = "worst-fit"
queue = "priority"

[[policies]]
placement = "first-fit"
queue = "fcfs"
execution = "time-shared"
quantum_ms = 30000

[[policies]]
placement = "best-fit"
queue = "fcfs"
execution = "time-shared"
"#;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sim")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn args(scenario: &Path, out: &Path) -> SimArgs {
    SimArgs {
        out: out.to_path_buf(),
        quiet: true,
        progress: false,
        ..SimArgs::new(scenario)
    }
}

#[test]
fn same_scenario_and_seed_give_byte_identical_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write(tmp.path(), "s.toml", SCENARIO);
    let (one, two, three) = (
        tmp.path().join("one"),
        tmp.path().join("two"),
        tmp.path().join("three"),
    );
    run_cli(SimArgs {
        threads: Some(2),
        ..args(&scenario, &one)
    })
    .unwrap();
    run_cli(SimArgs {
        threads: Some(1),
        ..args(&scenario, &two)
    })
    .unwrap();
    for f in [
        "summary.csv",
        "timeseries.csv",
        "results.json",
        "report.html",
    ] {
        let a = std::fs::read(one.join(f)).unwrap();
        let b = std::fs::read(two.join(f)).unwrap();
        assert!(!a.is_empty(), "{f} is empty");
        assert!(a == b, "{f} differs between runs");
    }
    // Another seed, another run.
    run_cli(SimArgs {
        seed: Some(6),
        ..args(&scenario, &three)
    })
    .unwrap();
    assert_ne!(
        std::fs::read(one.join("results.json")).unwrap(),
        std::fs::read(three.join("results.json")).unwrap()
    );
    // The summary has one row per policy, the report compares them.
    let summary = std::fs::read_to_string(one.join("summary.csv")).unwrap();
    assert_eq!(summary.lines().count(), 5);
    assert!(summary
        .lines()
        .nth(1)
        .unwrap()
        .starts_with("best-fit/sjf,best-fit,sjf,space-shared,true,3000,"));
    let html = std::fs::read_to_string(one.join("report.html")).unwrap();
    assert!(
        html.contains("<svg")
            && html.contains("first-fit/fcfs/rr-30s")
            && html.contains("best-fit/fcfs/ps")
    );
    // `sim report` rebuilds the same report from results.json.
    std::fs::remove_file(one.join("report.html")).unwrap();
    report_cli(ReportArgs {
        dir: one.clone(),
        open: false,
    })
    .unwrap();
    assert!(
        std::fs::read(one.join("report.html")).unwrap()
            == std::fs::read(two.join("report.html")).unwrap()
    );
}

#[test]
fn bad_scenarios_are_rejected_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let cases = [
        ("cpu = 16\n", "cpu = 16000\n", "s.toml:10:7: cpu 16000 is absurd: at most 4096 cores are accepted"),
        ("memory = \"64Gi\"\n", "memory = \"64Xi\"\n", "s.toml:11:10: memory \"64Xi\" has unknown unit \"Xi\": use Mi, Gi, Ti (or M, G, T)"),
        ("shape = 1.6", "shape = 0", "s.toml:26:54: 0 is not a valid positive number: give a number above 0 and at most 1000000000000"),
        ("queue = \"sjf\"", "queue = \"lifo\"", "s.toml:33:9: unknown variant `lifo`, expected one of `fcfs`, `sjf`, `priority`"),
        ("[workload]", "[workload\n", "s.toml:23:10: invalid table header\nexpected `.`, `]`"),
        ("jobs = 3000", "jobs = 1000000000000", "s.toml:24:8: 1000000000000 is not a valid job count: give 1 to 100000000"),
    ];
    for (from, to, want) in cases {
        let text = SCENARIO.replacen(from, to, 1);
        assert_ne!(text, SCENARIO, "{from}");
        let scenario = write(tmp.path(), "s.toml", &text);
        let err = run_cli(args(&scenario, &out)).unwrap_err().to_string();
        let err = err.replace(&format!("{}/", tmp.path().display()), "");
        assert_eq!(err, want, "{to}");
        assert!(!out.exists(), "nothing may be written on bad input");
    }
}

#[test]
fn bad_traces_are_rejected_with_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let scenario = write(
        tmp.path(),
        "s.toml",
        "[[hosts]]\ncount = 2\ncpu = 8\nmemory = \"32Gi\"\n\n[workload]\ntrace = \"vms.csv\"\n\n[[policies]]\nplacement = \"best-fit\"\nqueue = \"fcfs\"\n",
    );
    let header = "vmid,subscriptionid,deploymentid,vmcreated,vmdeleted,maxcpu,avgcpu,p95maxcpu,vmcategory,vmcorecountbucket,vmmemorybucket\n";
    let cases = [
        (format!("{header}a,s,d,0,300,1,1,1,Unknown,2,4\nb,s,d,600,300,1,1,1,Unknown,2,4\n"), "vms.csv:3:5: vmdeleted: 300 is before vmcreated 600".to_string()),
        (format!("{header}a,s,d,0,300,1,1,1,Unknown,100000,4\n"), "vms.csv:2:10: vmcorecountbucket: 100000 cores is absurd: at most 4096 are accepted".to_string()),
        ("vmid,vmcreated,vmdeleted,owner,vmcorecountbucket,vmmemorybucket\n".to_string(), "vms.csv:1: unknown column \"owner\" for the azure trace format (known columns: vmid, subscriptionid, deploymentid, vmcreated, vmdeleted, maxcpu, avgcpu, p95maxcpu, vmcategory, vmcorecountbucket, vmmemorybucket)".to_string()),
    ];
    for (trace, want) in cases {
        write(tmp.path(), "vms.csv", &trace);
        let err = run_cli(args(&scenario, &out)).unwrap_err().to_string();
        let err = err.replace(&format!("{}/", tmp.path().display()), "");
        assert_eq!(err, want);
        assert!(!out.exists());
    }
    // The same trace given on the command line, with an explicit format.
    write(
        tmp.path(),
        "vms.csv",
        &format!("{header}a,s,d,0,300,1,1,1,Unknown,2,4\n"),
    );
    let gen = write(
        tmp.path(),
        "g.toml",
        "[[hosts]]\ncount = 2\ncpu = 8\nmemory = \"32Gi\"\n\n[[policies]]\nplacement = \"best-fit\"\nqueue = \"fcfs\"\n",
    );
    let a = SimArgs {
        trace: Some(tmp.path().join("vms.csv")),
        format: Some(TraceFormat::Azure),
        ..args(&gen, &out)
    };
    let sim = load(&a).unwrap();
    assert_eq!(sim.jobs.len(), 1);
    let a = SimArgs {
        format: Some(TraceFormat::Google),
        ..a
    };
    let err = load(&a).unwrap_err().to_string();
    assert!(err.contains("unknown columns \"vmid\""), "{err}");
    // No workload at all.
    let err = load(&args(&gen, &out)).unwrap_err().to_string();
    assert!(
        err.ends_with(
            "g.toml: no workload: add [workload] (a trace or a generator) or give --trace"
        ),
        "{err}"
    );
}

#[test]
fn report_needs_results() {
    let tmp = tempfile::tempdir().unwrap();
    let err = report_cli(ReportArgs {
        dir: tmp.path().to_path_buf(),
        open: false,
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("cannot read ") && err.contains("results.json"),
        "{err}"
    );
    std::fs::write(tmp.path().join("results.json"), "{\"scenario\": 1}").unwrap();
    let err = report_cli(ReportArgs {
        dir: tmp.path().to_path_buf(),
        open: false,
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("not a simulation results file"), "{err}");
}

#[test]
fn shipped_sample_traces_are_the_generated_ones() {
    let azure = std::fs::read_to_string(examples().join("sample-azure.csv")).unwrap();
    assert_eq!(
        azure,
        azure_sample(500, SAMPLE_SEED),
        "regenerate with: cargo run -p nimbus-sim --example sim -- samples examples/sim"
    );
    let google = std::fs::read_to_string(examples().join("sample-google-task-events.csv")).unwrap();
    assert_eq!(google, google_sample(60, SAMPLE_SEED));
}

#[test]
fn shipped_scenarios_load_and_run() {
    let mut names: Vec<PathBuf> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 3, "{names:?}");
    for path in names {
        let mut sim = load(&args(&path, Path::new("unused"))).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !sim.jobs.is_empty() && !sim.policies.is_empty(),
            "{}",
            path.display()
        );
        // A slice of the workload is enough to exercise every policy here.
        sim.jobs.truncate(1500);
        sim.settings.horizon_s = None;
        let r = run(&sim, 2, false);
        for p in &r.policies {
            assert!(p.completed > 0, "{}: {}", path.display(), p.policy);
        }
    }
}

#[test]
fn runs_from_a_live_cluster_snapshot() {
    use nimbus_sched::{NodeInfo, Request, Resources};
    use nimbus_sim::{ClusterSnapshot, LiveInstance};

    let tmp = tempfile::tempdir().unwrap();
    let scenario = write(
        tmp.path(),
        "live.toml",
        "[live]\nidle_w = 90\nmax_w = 210\n\n[workload]\njobs = 200\narrival = { process = \"poisson\", rate_per_s = 0.1 }\nduration = { dist = \"exponential\", mean_s = 60 }\n\n[[policies]]\nplacement = \"best-fit\"\nqueue = \"fcfs\"\n",
    );
    let node = |name: &str, cores: u64| {
        NodeInfo::new(
            name,
            Resources::new(cores * 1000, cores * 4096, 0),
            &["process"],
        )
    };
    let mut busy = node("b", 8);
    busy.allocated = Resources::new(6000, 24 * 1024, 0);
    let snap = ClusterSnapshot {
        nodes: vec![node("c", 4), busy, node("a", 16)],
        running: vec![
            LiveInstance {
                name: "web".into(),
                node: "b".into(),
                resources: Resources::new(2000, 8192, 0),
                priority: 0,
                remaining_s: Some(100.0),
            },
            LiveInstance {
                name: "db".into(),
                node: "a".into(),
                resources: Resources::new(4000, 16384, 0),
                priority: 5,
                remaining_s: None,
            },
        ],
        pending: vec![Request {
            expected_runtime_secs: Some(30),
            ..Request::new("batch", Resources::new(1000, 1024, 0), "process")
        }],
    };
    let out = tmp.path().join("out");
    let a = SimArgs {
        from_cluster: Some(snap),
        ..args(&scenario, &out)
    };
    let sim = load(&a).unwrap();
    assert_eq!(sim.hosts.len(), 3);
    assert_eq!(sim.hosts[0].node.name, "a");
    assert_eq!(sim.hosts[0].power.idle_w, 90.0);
    // b keeps 4 cores / 16 GiB of untracked background load after "web" is taken out.
    assert_eq!(
        sim.hosts[1].node.allocated,
        Resources::new(4000, 16 * 1024, 0)
    );
    assert_eq!(sim.jobs.len(), 203);
    run_cli(a).unwrap();
    let r = nimbus_sim::output::read_results(&out).unwrap();
    let p = &r.policies[0];
    assert!(
        r.workload.starts_with("live cluster + generator"),
        "{}",
        r.workload
    );
    // "db" runs forever; everything else finishes.
    assert_eq!((p.completed, p.unfinished_running), (202, 1));
    // Without the live cluster there are no hosts.
    let err = load(&args(&scenario, &out)).unwrap_err().to_string();
    assert!(
        err.ends_with("live.toml: no hosts: add [[hosts]] groups (or start from the live cluster)"),
        "{err}"
    );
}
