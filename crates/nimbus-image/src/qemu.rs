//! Format detection and conversion with `qemu-img` (qemu-utils).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;

use crate::error::{ImageError, Result};

/// What `qemu-img info` says about a file.
#[derive(Debug, Clone)]
pub(crate) struct Info {
    pub format: String,
    pub virtual_size: u64,
    pub actual_size: Option<u64>,
}

#[derive(Deserialize)]
struct InfoJson {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "actual-size")]
    actual_size: Option<u64>,
    #[serde(rename = "backing-filename")]
    backing_filename: Option<String>,
    #[serde(rename = "format-specific")]
    format_specific: Option<serde_json::Value>,
}

/// An absolute path, so that qemu-img never reads it as an option or a protocol
/// (`nbd:...`, `json:{...}`).
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path)
        .map_err(|e| ImageError::io(format!("resolving {}", path.display()), e))
}

fn run(qemu_img: &Path, args: &[&std::ffi::OsStr]) -> Result<Output> {
    Command::new(qemu_img).args(args).output().map_err(|e| {
        let stderr = if e.kind() == io::ErrorKind::NotFound {
            format!(
                "{} not found: install qemu-utils (apt-get install qemu-utils)",
                qemu_img.display()
            )
        } else {
            format!("cannot run {}: {e}", qemu_img.display())
        };
        ImageError::Tool {
            tool: "qemu-img".into(),
            stderr,
        }
    })
}

fn stderr_of(out: &Output) -> String {
    let s = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if s.is_empty() {
        format!("qemu-img exited with {}", out.status)
    } else {
        s
    }
}

fn is_disk_full(stderr: &str) -> bool {
    stderr.contains("No space left on device") || stderr.contains("Disk quota exceeded")
}

/// Detects the format of `path`. Files qemu-img cannot open are `NotAnImage`.
/// Images that would make qemu-img read other files (a backing file, an external
/// data file) are refused: an uploaded image must not be able to pull host files in.
pub(crate) fn info(qemu_img: &Path, path: &Path) -> Result<Info> {
    let abs = absolute(path)?;
    let out = run(
        qemu_img,
        &["info".as_ref(), "--output=json".as_ref(), abs.as_os_str()],
    )?;
    if !out.status.success() {
        return Err(ImageError::NotAnImage {
            path: path.to_path_buf(),
            reason: stderr_of(&out),
        });
    }
    let info: InfoJson = serde_json::from_slice(&out.stdout).map_err(|e| ImageError::Tool {
        tool: "qemu-img info".into(),
        stderr: format!("unexpected output: {e}"),
    })?;
    if let Some(backing) = info.backing_filename {
        return Err(ImageError::NotAnImage {
            path: path.to_path_buf(),
            reason: format!(
                "it has a backing file ({backing}); flatten it first with qemu-img convert"
            ),
        });
    }
    let data_file = info
        .format_specific
        .as_ref()
        .and_then(|v| v.pointer("/data/data-file"))
        .and_then(|v| v.as_str());
    if let Some(data_file) = data_file {
        return Err(ImageError::NotAnImage {
            path: path.to_path_buf(),
            reason: format!(
                "it uses an external data file ({data_file}); convert it to a plain image first"
            ),
        });
    }
    Ok(Info {
        format: info.format,
        virtual_size: info.virtual_size,
        actual_size: info.actual_size,
    })
}

/// Checks a qcow2 image's metadata (`qemu-img check`): qemu-img happily converts a
/// truncated qcow2, reading zeros for what is missing, so this is what catches it.
/// Leaked clusters (exit code 3) are harmless and accepted.
pub(crate) fn check(qemu_img: &Path, path: &Path, format: &str) -> Result<()> {
    let abs = absolute(path)?;
    let out = run(
        qemu_img,
        &[
            "check".as_ref(),
            "-f".as_ref(),
            format.as_ref(),
            abs.as_os_str(),
        ],
    )?;
    match out.status.code() {
        Some(0) | Some(3) => Ok(()),
        _ => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let summary = stdout
                .lines()
                .find(|l| l.contains("errors were found") || l.contains("corruption"))
                .map(|l| format!("{}; ", l.trim()))
                .unwrap_or_default();
            let stderr = stderr_of(&out);
            let detail: Vec<&str> = stderr.lines().take(3).collect();
            Err(ImageError::NotAnImage {
                path: path.to_path_buf(),
                reason: format!(
                    "it is damaged or truncated (qemu-img check: {summary}{})",
                    detail.join("; ")
                ),
            })
        }
    }
}

/// Converts `src` (of `src_format`) into a new file `dst` of `dst_format`.
/// A failure reading the source is `NotAnImage` when `source_is_input`, a `Tool`
/// error otherwise; running out of space is `DiskFull`.
pub(crate) fn convert(
    qemu_img: &Path,
    src: &Path,
    src_format: &str,
    dst: &Path,
    dst_format: &str,
    source_is_input: bool,
) -> Result<()> {
    let (abs_src, abs_dst) = (absolute(src)?, absolute(dst)?);
    let out = run(
        qemu_img,
        &[
            "convert".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            src_format.as_ref(),
            "-O".as_ref(),
            dst_format.as_ref(),
            abs_src.as_os_str(),
            abs_dst.as_os_str(),
        ],
    )?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = stderr_of(&out);
    if is_disk_full(&stderr) {
        return Err(ImageError::DiskFull {
            context: format!("converting {} to {dst_format}: {stderr}", src.display()),
        });
    }
    if source_is_input {
        Err(ImageError::NotAnImage {
            path: src.to_path_buf(),
            reason: stderr,
        })
    } else {
        Err(ImageError::Tool {
            tool: "qemu-img convert".into(),
            stderr,
        })
    }
}
