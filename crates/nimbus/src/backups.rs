//! `nimbus backup ...` and `nimbus store ...`: backups of instances (with a
//! spinner while the node works), restore, prune, and chunk-store maintenance.

use std::time::Duration;

use anyhow::{bail, Result};
use nimbus_api::{Backup, BackupState};

use crate::cli::{BackupCommand, Output, StoreCommand};
use crate::client::ApiClient;
use crate::output;

fn spinner(msg: String) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_message(msg);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

pub async fn backup(api: &ApiClient, out: Output, c: BackupCommand) -> Result<i32> {
    match c {
        BackupCommand::Create { instance, name } => {
            let b: Backup = api
                .post(
                    &format!("/v1/instances/{instance}/backups"),
                    &serde_json::json!({ "name": name }),
                )
                .await?;
            let bar = spinner(format!("backing up {instance} as {}", b.name));
            let done = loop {
                let list: nimbus_api::BackupList = api
                    .get(&format!("/v1/instances/{instance}/backups"))
                    .await?;
                if let Some(x) = list.items.into_iter().find(|x| x.name == b.name) {
                    if x.state != BackupState::Pending {
                        break x;
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            };
            bar.finish_and_clear();
            if out == Output::Json {
                println!("{}", output::json(&done));
            } else if done.state == BackupState::Done {
                println!(
                    "backup {} done: {} bytes, {} new chunks ({} bytes stored)",
                    done.reference(),
                    done.size,
                    done.new_chunks,
                    done.new_bytes
                );
            }
            if done.state == BackupState::Failed {
                bail!(
                    "backup {} failed: {}",
                    done.reference(),
                    done.reason.unwrap_or_default()
                );
            }
        }
        BackupCommand::List { instance } => {
            let list: nimbus_api::BackupList = api
                .get(&format!("/v1/instances/{instance}/backups"))
                .await?;
            println!("{}", output::backups(out, &list.items));
        }
        BackupCommand::Restore {
            backup,
            as_name,
            node,
        } => {
            let inst: nimbus_api::Instance = api
                .post(
                    "/v1/backups/restore",
                    &serde_json::json!({ "backup": backup, "as": as_name, "node": node }),
                )
                .await?;
            let bar = spinner(format!("restoring {backup} as {}", inst.name));
            let last = loop {
                let i: nimbus_api::Instance =
                    api.get(&format!("/v1/instances/{}", inst.name)).await?;
                if matches!(
                    i.state,
                    nimbus_api::InstanceState::Running | nimbus_api::InstanceState::Failed
                ) {
                    break i;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            };
            bar.finish_and_clear();
            if out == Output::Json {
                println!("{}", output::json(&last));
            } else {
                println!(
                    "instance {} restored from {backup}: {} on {}",
                    last.name,
                    last.state,
                    last.node.clone().unwrap_or_default()
                );
            }
            if last.state == nimbus_api::InstanceState::Failed {
                bail!(
                    "the restored instance failed: {}",
                    last.reason.unwrap_or_default()
                );
            }
        }
        BackupCommand::Prune {
            instance,
            keep_last,
        } => {
            let list: nimbus_api::BackupList = api
                .post(
                    &format!("/v1/instances/{instance}/backups/prune"),
                    &serde_json::json!({ "keep_last": keep_last }),
                )
                .await?;
            if out == Output::Json {
                println!("{}", output::json(&list.items));
            } else {
                println!("{} backups of {instance} deleted", list.items.len());
            }
        }
    }
    Ok(0)
}

pub async fn store(api: &ApiClient, out: Output, c: StoreCommand) -> Result<i32> {
    match c {
        StoreCommand::Stats => {
            let s: serde_json::Value = api.get("/v1/store/stats").await?;
            if out == Output::Json {
                println!("{}", output::json(&s));
            } else {
                let n = |k: &str| s[k].as_u64().unwrap_or(0);
                let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
                println!("images:            {}", n("images"));
                println!("backups:           {}", n("backups"));
                println!("logical bytes:     {}", n("logical_bytes"));
                println!("zero (sparse):     {}", n("zero_bytes"));
                println!("unique bytes:      {}", n("unique_bytes"));
                println!("stored bytes:      {}", n("stored_bytes"));
                println!("chunks:            {}", n("chunk_count"));
                println!(
                    "dedup ratio:       {:.2}x",
                    ratio(n("referenced_bytes"), n("unique_bytes"))
                );
                println!(
                    "compression ratio: {:.2}x",
                    ratio(n("unique_bytes"), n("stored_bytes"))
                );
                println!(
                    "overall:           {:.2}x (logical / stored)",
                    ratio(n("logical_bytes"), n("stored_bytes"))
                );
            }
        }
        StoreCommand::Verify => {
            let bar = spinner("verifying every chunk".into());
            let r: serde_json::Value = api.post("/v1/store/verify", &serde_json::json!({})).await?;
            bar.finish_and_clear();
            let bad = r["corrupt_chunks"].as_array().map(|a| a.len()).unwrap_or(0)
                + r["missing_chunks"].as_array().map(|a| a.len()).unwrap_or(0)
                + r["corrupt_manifests"]
                    .as_array()
                    .map(|a| a.len())
                    .unwrap_or(0);
            if out == Output::Json {
                println!("{}", output::json(&r));
            } else {
                println!(
                    "checked {} chunks ({} bytes) and {} manifests",
                    r["chunks_checked"], r["bytes_checked"], r["manifests_checked"]
                );
                let names = |p: &serde_json::Value| {
                    p["referenced_by"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(manifest_label)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                for p in r["corrupt_chunks"].as_array().into_iter().flatten() {
                    println!(
                        "corrupt chunk {} ({}): affects {}",
                        p["chunk"].as_str().unwrap_or("?"),
                        p["reason"].as_str().unwrap_or(""),
                        names(p)
                    );
                }
                for p in r["missing_chunks"].as_array().into_iter().flatten() {
                    println!(
                        "missing chunk {}: affects {}",
                        p["chunk"].as_str().unwrap_or("?"),
                        names(p)
                    );
                }
                for p in r["corrupt_manifests"].as_array().into_iter().flatten() {
                    println!("corrupt manifest: {p}");
                }
            }
            if bad > 0 {
                bail!("the store has {bad} problems (see above)");
            }
            if out == Output::Table {
                println!("store ok");
            }
        }
        StoreCommand::Gc => {
            let r: serde_json::Value = api.post("/v1/store/gc", &serde_json::json!({})).await?;
            if out == Output::Json {
                println!("{}", output::json(&r));
            } else {
                println!(
                    "removed {} chunks ({} bytes); kept {} chunks ({} bytes)",
                    r["removed_chunks"], r["removed_bytes"], r["kept_chunks"], r["kept_bytes"]
                );
            }
        }
    }
    Ok(0)
}

/// "image d1" or "backup vm1@nightly" from a serialized manifest name.
fn manifest_label(v: &serde_json::Value) -> String {
    let name = v["name"].as_str().unwrap_or("?");
    match v["kind"].as_str() {
        Some("image") => format!("image {name}"),
        Some("backup") => format!("backup {}@{name}", v["instance"].as_str().unwrap_or("?")),
        _ => v.to_string(),
    }
}
