//! Build script: tells the tests whether this crate is compiled with optimizations
//! (`--release`, or a `[profile.dev.package.nimbus-sim] opt-level = 3` override in the
//! workspace). The long statistical tests (millions of simulated jobs) run only then and
//! are skipped with a reason in an unoptimized build, where they would take minutes.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(nimbus_sim_optimized)");
    println!("cargo::rerun-if-changed=build.rs");
    let opt = std::env::var("OPT_LEVEL").unwrap_or_default();
    if opt != "0" {
        println!("cargo::rustc-cfg=nimbus_sim_optimized");
    }
}
