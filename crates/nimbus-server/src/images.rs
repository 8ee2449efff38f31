//! Image storage on the server: uploaded files land in `images/<name>/.upload/`, are
//! checked when the image is registered (kernel magic, qcow2 consistency, a raw disk
//! that really holds a disk), then move into `images/<name>/` and are served to nodes.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use nimbus_api::{image::files_of, Image, ImageFile, ImageKind};

use crate::error::{Result, ServerError};

/// Largest accepted image file (256 GiB).
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024 * 1024;

pub struct ImageFiles {
    dir: PathBuf,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> ServerError {
    move |e| ServerError::Internal(format!("{context}: {e}"))
}

/// What the checks learned about a disk image.
pub struct DiskInfo {
    pub format: String,
    pub virtual_size: u64,
}

impl ImageFiles {
    pub fn new(dir: PathBuf) -> Self {
        ImageFiles { dir }
    }

    pub fn image_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn upload_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name).join(".upload")
    }

    /// Path of a registered file, if the name is one an image can have.
    pub fn file_path(&self, name: &str, file: &str) -> Result<PathBuf> {
        check_file_name(file)?;
        Ok(self.image_dir(name).join(file))
    }

    /// Opens a new upload of one file (replacing an earlier unfinished one).
    pub fn begin_upload(&self, name: &str, file: &str) -> Result<(File, PathBuf)> {
        check_file_name(file)?;
        let dir = self.upload_dir(name);
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let path = dir.join(file);
        let f = File::create(&path).map_err(io(format!("creating {}", path.display())))?;
        Ok((f, path))
    }

    /// Checks the uploaded files of `name` and moves them into place. Returns the image
    /// description (without timestamps).
    pub fn register(
        &self,
        name: &str,
        kind: ImageKind,
        cmdline: Option<String>,
        chunks: &nimbus_image::ImageStore,
    ) -> Result<Image> {
        if kind == ImageKind::Archive {
            return Err(ServerError::InvalidRequest(
                "archive images are made by restoring a process backup, not uploaded".into(),
            ));
        }
        let up = self.upload_dir(name);
        let mut files = Vec::new();
        for f in files_of(kind) {
            let p = up.join(f);
            if !p.is_file() {
                return Err(ServerError::InvalidRequest(format!(
                    "image {name:?}: file {f:?} was not uploaded (PUT /v1/images/{name}/files/{f} first)"
                )));
            }
        }
        let mut format = None;
        let mut virtual_size = None;
        match kind {
            ImageKind::Kernel => {
                check_kernel(&up.join("vmlinuz"))?;
                check_initrd(&up.join("initrd.img"))?;
            }
            ImageKind::Disk | ImageKind::Archive => {
                let info = check_disk(&up.join("disk"))?;
                format = Some(info.format);
                virtual_size = Some(info.virtual_size);
                // The content goes into the chunk store; nodes copy the chunks they lack.
                chunks
                    .import_file(
                        &nimbus_image::ImportRequest::image(name).overwrite(true),
                        &up.join("disk"),
                        &mut |_| {},
                    )
                    .map_err(crate::error::image_error)?;
                let _ = fs::remove_dir_all(&up);
                let _ = fs::remove_dir(self.image_dir(name));
                return Ok(Image {
                    name: name.to_string(),
                    kind,
                    format,
                    virtual_size,
                    cmdline: None,
                    files: vec![],
                    origin: None,
                    created_at_ms: crate::cluster::now_ms(),
                    revision: 0,
                });
            }
        }
        for f in files_of(kind) {
            let p = up.join(f);
            let (size, sha256) = hash_file(&p)?;
            let dest = self.image_dir(name).join(f);
            fs::rename(&p, &dest).map_err(io(format!("moving {}", p.display())))?;
            files.push(ImageFile {
                name: f.to_string(),
                size,
                sha256,
            });
        }
        let _ = fs::remove_dir_all(&up);
        Ok(Image {
            name: name.to_string(),
            kind,
            format,
            virtual_size,
            cmdline: match kind {
                ImageKind::Kernel => {
                    Some(cmdline.unwrap_or_else(|| "console=ttyS0 panic=-1".to_string()))
                }
                ImageKind::Disk | ImageKind::Archive => None,
            },
            files,
            origin: None,
            created_at_ms: crate::cluster::now_ms(),
            revision: 0,
        })
    }

    /// Removes every file of an image.
    pub fn remove(&self, name: &str) {
        let _ = fs::remove_dir_all(self.image_dir(name));
    }

    /// Removes an unfinished upload.
    pub fn discard_upload(&self, name: &str) {
        let _ = fs::remove_dir_all(self.upload_dir(name));
        let _ = fs::remove_dir(self.image_dir(name));
    }
}

fn check_file_name(file: &str) -> Result<()> {
    if ["vmlinuz", "initrd.img", "disk"].contains(&file) {
        Ok(())
    } else {
        Err(ServerError::InvalidRequest(format!(
            "unknown image file {file:?}: kernel images have vmlinuz and initrd.img, disk images have disk"
        )))
    }
}

fn read_head(path: &Path, n: usize) -> Result<Vec<u8>> {
    let mut f = File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// A Linux bzImage carries "HdrS" at offset 0x202.
fn check_kernel(path: &Path) -> Result<()> {
    let head = read_head(path, 0x210)?;
    if head.len() < 0x206 || &head[0x202..0x206] != b"HdrS" {
        return Err(ServerError::InvalidRequest(
            "vmlinuz is not a Linux kernel image (no bzImage header)".into(),
        ));
    }
    Ok(())
}

/// An initramfs is a cpio archive, possibly compressed.
fn check_initrd(path: &Path) -> Result<()> {
    let h = read_head(path, 8)?;
    let ok = h.starts_with(&[0x1f, 0x8b])
        || h.starts_with(b"070701")
        || h.starts_with(b"070702")
        || h.starts_with(&[0xfd, b'7', b'z', b'X', b'Z'])
        || h.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || h.starts_with(&[0x02, 0x21, 0x4c, 0x18]);
    if !ok {
        return Err(ServerError::InvalidRequest(
            "initrd.img is not an initramfs (cpio, gzip, xz, zstd or lz4)".into(),
        ));
    }
    Ok(())
}

/// Accepts raw and qcow2 disks that qemu-img can read and that hold something bootable.
pub fn check_disk(path: &Path) -> Result<DiskInfo> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .map_err(|e| {
            ServerError::Internal(format!("running qemu-img (install qemu-utils): {e}"))
        })?;
    if !out.status.success() {
        return Err(ServerError::InvalidRequest(format!(
            "not a readable disk image: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| ServerError::Internal(format!("qemu-img info output: {e}")))?;
    let format = info["format"].as_str().unwrap_or("").to_string();
    let virtual_size = info["virtual-size"].as_u64().unwrap_or(0);
    match format.as_str() {
        "qcow2" => {
            if info["backing-filename"].is_string() {
                return Err(ServerError::InvalidRequest(
                    "qcow2 images with a backing file are not accepted: flatten it with \
                     `qemu-img convert -O qcow2 IN OUT`"
                        .into(),
                ));
            }
            let check = Command::new("qemu-img")
                .args(["check", "-f", "qcow2"])
                .arg(path)
                .output()
                .map_err(|e| ServerError::Internal(format!("running qemu-img check: {e}")))?;
            if !check.status.success() {
                let msg = String::from_utf8_lossy(&check.stderr);
                let msg = if msg.trim().is_empty() {
                    String::from_utf8_lossy(&check.stdout).to_string()
                } else {
                    msg.to_string()
                };
                return Err(ServerError::InvalidRequest(format!(
                    "qcow2 image is damaged or truncated: {}",
                    msg.trim()
                )));
            }
        }
        "raw" => {
            let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let head = read_head(path, 0x8006)?;
            let mbr = head.len() >= 512 && head[510] == 0x55 && head[511] == 0xaa;
            let ext = head.len() >= 1082 && head[1080] == 0x53 && head[1081] == 0xef;
            let iso = head.len() >= 0x8006 && &head[0x8001..0x8006] == b"CD001";
            if len == 0 || !len.is_multiple_of(512) || !(mbr || ext || iso) {
                return Err(ServerError::InvalidRequest(
                    "not a disk image: a raw disk must be a multiple of 512 bytes and hold a \
                     partition table or a filesystem"
                        .into(),
                ));
            }
        }
        other => {
            return Err(ServerError::InvalidRequest(format!(
            "unsupported image format {other:?}: use raw or qcow2 (convert with qemu-img convert)"
        )))
        }
    }
    Ok(DiskInfo {
        format,
        virtual_size,
    })
}

/// Size and SHA-256 of a file.
pub fn hash_file(path: &Path) -> Result<(u64, String)> {
    use sha2::Digest;
    let mut f = File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, hex(&h.finalize())))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes a request body to `f`, refusing more than [`MAX_FILE_BYTES`].
pub fn write_chunk(f: &mut File, written: &mut u64, data: &[u8]) -> Result<()> {
    *written += data.len() as u64;
    if *written > MAX_FILE_BYTES {
        return Err(ServerError::InvalidRequest(format!(
            "image file is larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    f.write_all(data).map_err(|e| {
        if e.raw_os_error() == Some(libc_enospc()) {
            ServerError::Internal("the server's disk is full".into())
        } else {
            ServerError::Internal(format!("writing upload: {e}"))
        }
    })
}

const fn libc_enospc() -> i32 {
    28
}
