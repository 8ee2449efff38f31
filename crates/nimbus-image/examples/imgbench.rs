//! The nimbus-image side of `benches/image/run.sh`: times one backup or restore and
//! prints one JSON line.
//!
//! ```text
//! imgbench backup  <store> <instance> <backup> <file>   # import_file as a backup
//! imgbench restore <store> <instance> <backup> <dest>   # export as sparse raw
//! imgbench stats   <store>
//! ```
//! Environment: `IMGBENCH_AVG` (average chunk bytes), `IMGBENCH_LEVEL` (zstd level),
//! `IMGBENCH_THREADS` (workers; default one per CPU), `IMGBENCH_IO_THREADS`
//! (chunk writers; default 4).

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use nimbus_image::{
    ChunkerConfig, ExportFormat, ImageStore, ImportRequest, ManifestName, StoreOptions,
};

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn open(root: &str) -> nimbus_image::Result<ImageStore> {
    let mut opts = StoreOptions::default();
    if let Some(avg) = env_num::<u32>("IMGBENCH_AVG") {
        opts.chunker = ChunkerConfig::with_avg(avg);
    }
    if let Some(level) = env_num::<i32>("IMGBENCH_LEVEL") {
        opts.zstd_level = level;
    }
    if let Some(threads) = env_num::<usize>("IMGBENCH_THREADS") {
        opts.threads = threads;
    }
    if let Some(io) = env_num::<usize>("IMGBENCH_IO_THREADS") {
        opts.io_threads = io;
    }
    ImageStore::open(root, opts)
}

fn run(args: &[String]) -> nimbus_image::Result<String> {
    let usage = || nimbus_image::ImageError::Invalid {
        what: "arguments".into(),
        reason: "usage: imgbench backup|restore <store> <instance> <backup> <file> | stats <store>"
            .into(),
    };
    match args {
        [op, store, instance, backup, file] if op == "backup" => {
            let store = open(store)?;
            let t = Instant::now();
            let m = store.import_file(
                &ImportRequest::backup(instance.as_str(), backup.as_str()),
                Path::new(file),
                &mut |_| {},
            )?;
            let secs = t.elapsed().as_secs_f64();
            let s = store.stats()?;
            Ok(format!(
                "{{\"op\":\"backup\",\"seconds\":{secs:.3},\"bytes\":{},\"mb_s\":{:.1},\"stored_bytes\":{},\"chunks\":{}}}",
                m.size,
                m.size as f64 / 1e6 / secs,
                s.stored_bytes,
                s.chunk_count
            ))
        }
        [op, store, instance, backup, dest] if op == "restore" => {
            let store = open(store)?;
            let t = Instant::now();
            let m = store.export(
                &ManifestName::backup(instance.as_str(), backup.as_str()),
                Path::new(dest),
                ExportFormat::Raw,
                &mut |_| {},
            )?;
            let secs = t.elapsed().as_secs_f64();
            Ok(format!(
                "{{\"op\":\"restore\",\"seconds\":{secs:.3},\"bytes\":{},\"mb_s\":{:.1}}}",
                m.size,
                m.size as f64 / 1e6 / secs
            ))
        }
        [op, store] if op == "stats" => {
            let s = open(store)?.stats()?;
            serde_json::to_string(&s).map_err(|e| nimbus_image::ImageError::Invalid {
                what: "stats".into(),
                reason: e.to_string(),
            })
        }
        _ => Err(usage()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("imgbench: {e}");
            ExitCode::FAILURE
        }
    }
}
