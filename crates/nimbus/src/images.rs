//! `nimbus image ...`: build the tiny guest from Debian packages, import disk files,
//! list, show and delete images. Uploads show a progress bar.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use nimbus_api::{Image, ImageKind, RegisterImage};

use crate::cli::{ImageCommand, Output};
use crate::client::ApiClient;
use crate::output;

/// The tiny guest's build script and init, carried in the binary.
const TINY_BUILD: &str = include_str!("../../../images/tiny/build.sh");
const TINY_INIT: &str = include_str!("../../../images/tiny/init");

pub async fn run(api: &ApiClient, out: Output, c: ImageCommand) -> Result<i32> {
    match c {
        ImageCommand::Build { recipe, name } => {
            let name = name.unwrap_or(recipe);
            nimbus_api::validate_name("image", &name).map_err(|e| anyhow!(e))?;
            let img = build_tiny(api, &name).await?;
            print_image(out, &img);
        }
        ImageCommand::Import { name, file } => {
            let img = import_disk(api, &name, &file).await?;
            print_image(out, &img);
        }
        ImageCommand::Export { name, file, format } => {
            let format = format.unwrap_or_else(|| {
                if file.extension().is_some_and(|e| e == "qcow2") {
                    "qcow2".into()
                } else {
                    "raw".into()
                }
            });
            if file.exists() {
                bail!("{} exists; choose another file name", file.display());
            }
            let bar = bytes_bar("export");
            let b = bar.clone();
            let res = api
                .download(
                    &format!("/v1/images/{name}/export?format={format}"),
                    &file,
                    move |done, total| {
                        b.set_length(total);
                        b.set_position(done);
                    },
                )
                .await;
            bar.finish_and_clear();
            if let Err(e) = res {
                let _ = std::fs::remove_file(&file);
                return Err(e.into());
            }
            if out == Output::Table {
                println!("image {name} exported to {} ({format})", file.display());
            }
        }
        ImageCommand::Replicate { name, node } => {
            let _: serde_json::Value = api
                .post(
                    &format!("/v1/images/{name}/replicate"),
                    &serde_json::json!({ "node": node }),
                )
                .await
                .or_else(|e| match e {
                    crate::client::ClientError::Decode(_) => Ok(serde_json::Value::Null),
                    other => Err(other),
                })?;
            if out == Output::Table {
                println!("node {node} is copying image {name} (see `nimbus events`)");
            }
        }
        ImageCommand::List => {
            println!("{}", output::images(out, &api.list_images().await?));
        }
        ImageCommand::Show { name } => {
            let img = api.get_image(&name).await?;
            println!("{}", output::images(out, std::slice::from_ref(&img)));
        }
        ImageCommand::Delete { name } => {
            api.delete_image(&name).await?;
            if out == Output::Table {
                println!("image {name} deleted");
            }
        }
    }
    Ok(0)
}

fn print_image(out: Output, img: &Image) {
    if out == Output::Json {
        println!("{}", output::json(img));
    } else {
        println!("image {} registered ({} bytes)", img.name, img.size());
    }
}

/// Builds the tiny guest locally (cached) and uploads it.
async fn build_tiny(api: &ApiClient, name: &str) -> Result<Image> {
    if let Ok(existing) = api.get_image(name).await {
        eprintln!("image {name} exists already; delete it first to rebuild");
        return Ok(existing);
    }
    let work = tempfile::tempdir().context("creating a temporary directory")?;
    let script = work.path().join("build.sh");
    let init = work.path().join("init");
    std::fs::write(&script, TINY_BUILD)?;
    std::fs::write(&init, TINY_INIT)?;
    let outdir = work.path().join("out");
    let status = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(&outdir)
        .env("NIMBUS_TINY_INIT", &init)
        .status()
        .await
        .context("running the image build script (needs bash)")?;
    if !status.success() {
        bail!("building the tiny image failed (see the messages above)");
    }
    let cmdline = std::fs::read_to_string(outdir.join("cmdline"))
        .map(|s| s.trim().to_string())
        .ok();
    upload(api, name, "vmlinuz", &outdir.join("vmlinuz")).await?;
    upload(api, name, "initrd.img", &outdir.join("initrd.img")).await?;
    Ok(api
        .register_image(&RegisterImage {
            name: name.to_string(),
            kind: ImageKind::Kernel,
            cmdline,
        })
        .await?)
}

/// Uploads a disk file and registers it.
pub async fn import_disk(api: &ApiClient, name: &str, file: &Path) -> Result<Image> {
    nimbus_api::validate_name("image", name).map_err(|e| anyhow!(e))?;
    if !file.is_file() {
        bail!("{} is not a file", file.display());
    }
    upload(api, name, "disk", file).await?;
    Ok(api
        .register_image(&RegisterImage {
            name: name.to_string(),
            kind: ImageKind::Disk,
            cmdline: None,
        })
        .await?)
}

/// A byte-counting progress bar on stderr (hidden when stderr is not a terminal).
fn bytes_bar(label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

async fn upload(api: &ApiClient, name: &str, file: &str, path: &Path) -> Result<()> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let bar = bytes_bar(file);
    bar.set_length(len);
    let b = bar.clone();
    let res = api
        .upload_image_file(name, file, path, move |n| b.set_position(n))
        .await;
    bar.finish_and_clear();
    res.map_err(Into::into)
}
