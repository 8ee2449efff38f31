//! A stand-in for `nimbus sim` while developing the simulator (the `nimbus` binary wires
//! the same library calls behind clap):
//!
//! ```text
//! cargo run --release -p nimbus-sim --example sim -- run examples/sim/azure-like.toml [--trace F] [--format azure|google] [--out DIR] [--seed N] [--threads N]
//! cargo run --release -p nimbus-sim --example sim -- report out/ [--open]
//! cargo run --release -p nimbus-sim --example sim -- samples examples/sim   # regenerate the sample traces
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use nimbus_sim::cli::{report_cli, run_cli, ReportArgs, SimArgs};
use nimbus_sim::samples::{azure_sample, google_sample, SAMPLE_SEED};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") if args.len() >= 2 => {
            let mut a = SimArgs::new(&args[1]);
            let mut it = args[2..].iter();
            while let Some(flag) = it.next() {
                let mut value = || it.next().cloned().unwrap_or_default();
                match flag.as_str() {
                    "--trace" => a.trace = Some(PathBuf::from(value())),
                    "--format" => match value().parse() {
                        Ok(f) => a.format = Some(f),
                        Err(e) => return fail(&e),
                    },
                    "--out" => a.out = PathBuf::from(value()),
                    "--seed" => a.seed = value().parse().ok(),
                    "--threads" => a.threads = value().parse().ok(),
                    "--quiet" => a.quiet = true,
                    other => return fail(&format!("unknown flag {other}")),
                }
            }
            run_cli(a).map_err(|e| e.to_string())
        }
        Some("report") if args.len() >= 2 => report_cli(ReportArgs {
            dir: PathBuf::from(&args[1]),
            open: args.iter().any(|a| a == "--open"),
        })
        .map_err(|e| e.to_string()),
        Some("samples") if args.len() >= 2 => {
            let dir = PathBuf::from(&args[1]);
            std::fs::write(dir.join("sample-azure.csv"), azure_sample(500, SAMPLE_SEED))
                .and_then(|_| {
                    std::fs::write(
                        dir.join("sample-google-task-events.csv"),
                        google_sample(60, SAMPLE_SEED),
                    )
                })
                .map_err(|e| e.to_string())
        }
        _ => Err(
            "usage: sim run SCENARIO [flags] | sim report DIR [--open] | sim samples DIR".into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}
