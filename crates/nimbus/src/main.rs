//! The `nimbus` binary: `up`, `server`, `agent`, and the client commands that talk to
//! the API (`instance`, `apply`, `node`, `events`).
//!
//! # Layout
//! - `cli`: argument definitions (clap).
//! - `run`: the long-running roles (`up`, `server`, `agent`).
//! - `commands`: client commands, one function each.
//! - `client`: the typed HTTP client.
//! - `images`: image build, import, export and listing.
//! - `backups`: backups and chunk-store maintenance.
//! - `sim`: the datacenter simulator and its live-cluster snapshot.
//! - `output`: tables and JSON.

mod backups;
mod cli;
mod client;
mod commands;
mod images;
mod output;
mod run;
mod sim;

use clap::Parser;

fn main() {
    // The process driver re-executes this binary as the per-instance supervisor.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == nimbus_agent::shim::SHIM_ARG)
    {
        let Some(cfg) = args.get(2) else {
            eprintln!("usage: nimbus {} CONFIG", nimbus_agent::shim::SHIM_ARG);
            std::process::exit(2);
        };
        std::process::exit(nimbus_agent::shim::main(std::path::Path::new(cfg)));
    }

    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        match commands::dispatch(cli).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        }
    });
    std::process::exit(code);
}
