//! Exporting (restoring) an image or backup to a raw or qcow2 file.
//!
//! The output is written under a temporary name next to the destination, sparse
//! (zero extents are never written), by `threads + io_threads` workers that read,
//! decompress and verify chunks in parallel and write them at their offsets
//! (starting writeback of each piece at once, so the disk works while chunks are
//! decoded). Only a complete, fsynced output is renamed to the destination; on any
//! error (a corrupt or missing chunk, a full disk) the partial output is removed.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{self, TryRecvError};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::codec::Codec;
use crate::error::{ImageError, IoContext, Result};
use crate::fsutil::{self, TmpFile};
use crate::id::ChunkId;
use crate::manifest::{Manifest, ManifestName};
use crate::qemu;
use crate::store::{ImageStore, Phase, Progress};

/// The format of an exported file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// A sparse raw disk image.
    Raw,
    /// qcow2, made by `qemu-img convert -O qcow2` from a temporary raw file.
    Qcow2,
}

impl ImageStore {
    /// Writes image or backup `name` to `dest` (which must not exist) as `format`.
    /// Every chunk is verified against its id: a corrupt chunk fails with
    /// [`ImageError::Corrupt`], a missing one with [`ImageError::MissingChunks`], and
    /// `dest` is then not created.
    pub fn export(
        &self,
        name: &ManifestName,
        dest: &Path,
        format: ExportFormat,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Manifest> {
        name.validate()?;
        let _lock = self.lock_shared()?;
        let m = self.get(name)?;
        if fs::symlink_metadata(dest).is_ok() {
            return Err(ImageError::AlreadyExists {
                what: "file",
                name: dest.display().to_string(),
            });
        }
        let file_name = dest.file_name().and_then(|f| f.to_str()).ok_or_else(|| {
            ImageError::invalid(
                "destination",
                format!("{} has no file name", dest.display()),
            )
        })?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => Path::new(".").to_path_buf(),
        };
        let partial_prefix = format!(".{file_name}.nimbus-partial");
        match format {
            ExportFormat::Raw => {
                let out = TmpFile::create(&dir, &partial_prefix)?;
                self.write_raw(&m, out.file(), progress)?;
                out.persist(dest, true)?;
            }
            ExportFormat::Qcow2 => {
                let raw = TmpFile::create(&self.tmp_dir(), "export.raw")?;
                self.write_raw(&m, raw.file(), progress)?;
                progress(Progress {
                    phase: Phase::Convert,
                    done_bytes: 0,
                    total_bytes: Some(m.size),
                });
                let out = TmpFile::reserve(&dir, &partial_prefix);
                qemu::convert(
                    &self.opts.qemu_img,
                    &raw.path,
                    "raw",
                    &out.path,
                    "qcow2",
                    false,
                )?;
                drop(raw);
                out.persist(dest, true)?;
                progress(Progress {
                    phase: Phase::Convert,
                    done_bytes: m.size,
                    total_bytes: Some(m.size),
                });
            }
        }
        fsutil::sync_dir(&dir)?;
        Ok(m)
    }

    /// Writes the manifest's content into `file` (empty, becomes `m.size` long).
    fn write_raw(
        &self,
        m: &Manifest,
        file: &File,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<()> {
        file.set_len(m.size)
            .ctx(|| format!("sizing the output to {} bytes", m.size))?;
        // Reading cold chunk files is I/O-bound: more workers than CPUs keep the disk
        // busy while others decompress and hash.
        let threads = self.opts.threads.max(1) + self.opts.io_threads;
        let total = Some(m.size);
        let zero_bytes = m.size - m.data_bytes();
        let mut done = zero_bytes;
        progress(Progress {
            phase: Phase::Export,
            done_bytes: done,
            total_bytes: total,
        });
        let (job_tx, job_rx) = mpsc::sync_channel::<(u64, u64, ChunkId)>(threads * 2);
        let job_rx = Mutex::new(job_rx);
        let (res_tx, res_rx) = mpsc::channel::<Result<u64>>();
        let name = m.id();
        std::thread::scope(|s| {
            for _ in 0..threads {
                let res_tx = res_tx.clone();
                let (job_rx, name) = (&job_rx, &name);
                s.spawn(move || {
                    let mut codec = Codec::new(0);
                    let mut raw = Vec::new();
                    loop {
                        let job = job_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((offset, len, id)) = job else { break };
                        let r = self
                            .read_verified(&id, len, name, &mut codec, &mut raw)
                            .and_then(|content| {
                                file.write_all_at(content, offset)
                                    .ctx(|| format!("writing the output at byte {offset}"))?;
                                start_writeback(file, offset, content.len());
                                Ok(())
                            })
                            .map(|()| len);
                        if res_tx.send(r).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(res_tx);
            let mut result = Ok(());
            for e in m.extents.iter() {
                let Some(id) = e.chunk else { continue };
                if job_tx.send((e.offset, e.len, id)).is_err() {
                    break;
                }
                loop {
                    match res_rx.try_recv() {
                        Ok(Ok(n)) => done += n,
                        Ok(Err(err)) => {
                            result = Err(err);
                            break;
                        }
                        Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
                    }
                }
                if result.is_err() {
                    break;
                }
                progress(Progress {
                    phase: Phase::Export,
                    done_bytes: done,
                    total_bytes: total,
                });
            }
            drop(job_tx);
            for r in res_rx.iter() {
                match r {
                    Ok(n) => done += n,
                    Err(err) => {
                        if result.is_ok() {
                            result = Err(err);
                        }
                    }
                }
            }
            result
        })?;
        progress(Progress {
            phase: Phase::Export,
            done_bytes: done,
            total_bytes: total,
        });
        Ok(())
    }

    /// Reads chunk `id` and checks it is `len` bytes with the right hash.
    pub(crate) fn read_verified<'a>(
        &self,
        id: &ChunkId,
        len: u64,
        name: &ManifestName,
        codec: &'a mut Codec,
        raw: &'a mut Vec<u8>,
    ) -> Result<&'a [u8]> {
        let path = self.chunk_path(id);
        raw.clear();
        match File::open(&path) {
            Ok(mut f) => f
                .read_to_end(raw)
                .ctx(|| format!("reading chunk {}", path.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::MissingChunks {
                    name: name.clone(),
                    chunks: vec![*id],
                })
            }
            Err(e) => return Err(ImageError::io(format!("opening {}", path.display()), e)),
        };
        let corrupt = |reason: String| ImageError::Corrupt {
            chunk: *id,
            affected: vec![name.clone()],
            reason,
        };
        let content = codec.decode(raw, id).map_err(corrupt)?;
        if content.len() as u64 != len {
            return Err(ImageError::Corrupt {
                chunk: *id,
                affected: vec![name.clone()],
                reason: format!("it holds {} bytes, the manifest says {len}", content.len()),
            });
        }
        Ok(content)
    }
}

/// Starts writing a range of `file` to disk now, without waiting, so that the final
/// fsync finds little left to do (the kernel would otherwise hold gigabytes of a
/// restore dirty in memory and write them all at the end).
fn start_writeback(file: &File, offset: u64, len: usize) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: a hint on our own descriptor; failure is harmless.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}
