//! Importing images and backups: detect, convert, chunk, store chunks, then the
//! manifest.
//!
//! The calling thread reads the source (skipping holes) and cuts it into zero runs
//! and chunks; `threads` workers hash and compress chunks in parallel, `io_threads`
//! writers write and fsync new chunk files (overlapping their fsyncs); the calling
//! thread puts the ids back in order. The manifest is written only after
//! every chunk is durable.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Mutex;

use crate::chunker::{is_zero, Piece, Segmenter};
use crate::codec::Codec;
use crate::error::{ImageError, IoContext, Result};
use crate::fsutil::{self, Range, TmpFile};
use crate::id::ChunkId;
use crate::manifest::{Extent, FormatInfo, Kind, Manifest, ManifestName};
use crate::qemu;
use crate::store::{ImageStore, Phase, Progress};

/// Read size of the import pipeline.
const READ_BUF: usize = 8 << 20;

/// What to import as.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportRequest {
    pub name: ManifestName,
    /// Stored with the manifest (for backups: the instance spec).
    pub meta: Option<serde_json::Value>,
    /// Replace an existing manifest of the same name instead of failing with
    /// `AlreadyExists`.
    pub overwrite: bool,
}

impl ImportRequest {
    /// Import as image `name`.
    pub fn image(name: impl Into<String>) -> Self {
        ImportRequest {
            name: ManifestName::image(name),
            meta: None,
            overwrite: false,
        }
    }

    /// Import as backup `name` of `instance`.
    pub fn backup(instance: impl Into<String>, name: impl Into<String>) -> Self {
        ImportRequest {
            name: ManifestName::backup(instance, name),
            meta: None,
            overwrite: false,
        }
    }

    /// With free-form metadata.
    pub fn with_meta(mut self, meta: serde_json::Value) -> Self {
        self.meta = Some(meta);
        self
    }

    /// Allowing to replace an existing manifest.
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }
}

/// File name extensions that promise a non-raw format.
const IMAGE_EXTENSIONS: &[&str] = &[
    "qcow2",
    "qcow",
    "vmdk",
    "vdi",
    "vhd",
    "vhdx",
    "vpc",
    "qed",
    "parallels",
    "dmg",
];

enum Source<'a> {
    Reader(&'a mut dyn Read),
    File { file: &'a File, size: u64 },
}

/// An extent being assembled: its chunk id arrives from a worker later.
#[derive(Clone, Copy)]
enum Slot {
    Zero,
    Pending,
    Chunk(ChunkId),
}

impl ImageStore {
    /// Imports raw bytes from `reader` (format `"stream"`).
    pub fn import_reader(
        &self,
        req: &ImportRequest,
        reader: &mut dyn Read,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Manifest> {
        req.name.validate()?;
        let _lock = self.lock_shared()?;
        if !req.overwrite {
            self.ensure_absent(&req.name)?;
        }
        let (extents, size) = self.ingest(Source::Reader(reader), None, progress)?;
        let format = FormatInfo {
            source_format: "stream".into(),
            virtual_size: size,
            source_allocated: None,
        };
        self.finish_import(req, extents, size, format)
    }

    /// Imports a raw or qcow2 disk image file (or block device). The format is
    /// detected with `qemu-img info`; qcow2 is checked (`qemu-img check`) and
    /// converted to a temporary sparse raw file first. Other formats are
    /// `UnsupportedFormat`; unreadable files, truncated or damaged qcow2, and files
    /// whose name promises a format their content does not have are `NotAnImage`.
    pub fn import_file(
        &self,
        req: &ImportRequest,
        path: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Manifest> {
        req.name.validate()?;
        if !path.exists() {
            return Err(ImageError::NotFound {
                what: "file",
                name: path.display().to_string(),
            });
        }
        let _lock = self.lock_shared()?;
        if !req.overwrite {
            self.ensure_absent(&req.name)?;
        }
        let info = qemu::info(&self.opts.qemu_img, path)?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        if let Some(ext) = ext.filter(|e| IMAGE_EXTENSIONS.contains(&e.as_str())) {
            if info.format == "raw" {
                return Err(ImageError::NotAnImage {
                    path: path.to_path_buf(),
                    reason: format!(
                        "the name says .{ext} but qemu-img finds no {ext} header (the content \
                         looks like raw data); rename it if it really is a raw disk"
                    ),
                });
            }
        }
        let (raw_path, converted) = match info.format.as_str() {
            "raw" => (path.to_path_buf(), None),
            "qcow2" => {
                qemu::check(&self.opts.qemu_img, path, "qcow2")?;
                progress(Progress {
                    phase: Phase::Convert,
                    done_bytes: 0,
                    total_bytes: Some(info.virtual_size),
                });
                let tmp = TmpFile::reserve(&self.tmp_dir(), "import.raw");
                qemu::convert(&self.opts.qemu_img, path, "qcow2", &tmp.path, "raw", true)?;
                progress(Progress {
                    phase: Phase::Convert,
                    done_bytes: info.virtual_size,
                    total_bytes: Some(info.virtual_size),
                });
                (tmp.path.clone(), Some(tmp))
            }
            other => {
                return Err(ImageError::UnsupportedFormat {
                    path: path.to_path_buf(),
                    format: other.to_string(),
                })
            }
        };
        let file = File::open(&raw_path).ctx(|| format!("opening {}", raw_path.display()))?;
        let size = fsutil::file_len(&file, &raw_path)?;
        if converted.is_some() && size != info.virtual_size {
            return Err(ImageError::Tool {
                tool: "qemu-img convert".into(),
                stderr: format!(
                    "produced {size} bytes for a virtual size of {}",
                    info.virtual_size
                ),
            });
        }
        let (extents, size) =
            self.ingest(Source::File { file: &file, size }, Some(size), progress)?;
        drop(converted);
        let format = FormatInfo {
            source_format: info.format,
            virtual_size: size,
            source_allocated: info.actual_size,
        };
        self.finish_import(req, extents, size, format)
    }

    fn finish_import(
        &self,
        req: &ImportRequest,
        extents: Vec<Extent>,
        size: u64,
        format: FormatInfo,
    ) -> Result<Manifest> {
        let m = Manifest {
            kind: req.name.kind(),
            name: req.name.name().to_string(),
            instance: req.name.instance().map(str::to_string),
            created_at_ms: fsutil::now_ms(),
            size,
            format,
            meta: req.meta.clone(),
            chunker: self.opts.chunker,
            extents,
        };
        debug_assert!(m.kind == Kind::Backup || m.instance.is_none());
        m.validate()
            .map_err(|e| ImageError::invalid("import result", e))?;
        self.write_manifest(&m, !req.overwrite)?;
        Ok(m)
    }

    /// Reads, cuts and stores a source; returns its extents once every chunk is
    /// durable.
    fn ingest(
        &self,
        source: Source<'_>,
        total: Option<u64>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Vec<Extent>, u64)> {
        let threads = self.opts.threads.max(1);
        let io_threads = self.opts.io_threads.max(1);
        let level = self.opts.zstd_level;
        let (job_tx, job_rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(threads * 2);
        let job_rx = Mutex::new(job_rx);
        let (write_tx, write_rx) = mpsc::sync_channel::<(usize, ChunkId, Vec<u8>)>(io_threads * 2);
        let write_rx = Mutex::new(write_rx);
        let (res_tx, res_rx) = mpsc::channel::<Result<(usize, ChunkId)>>();
        let claimed = Mutex::new(HashSet::<ChunkId>::new());
        let touched = Mutex::new(BTreeSet::<String>::new());
        let mut seg = Segmenter::new(self.opts.chunker)?;

        let mut slots: Vec<(u64, u64, Slot)> = Vec::new();
        let mut pos = 0u64;

        let outcome = std::thread::scope(|s| {
            // Compressors (one per CPU): hash, skip known chunks, encode.
            for _ in 0..threads {
                let (res_tx, write_tx) = (res_tx.clone(), write_tx.clone());
                let (job_rx, claimed, touched) = (&job_rx, &claimed, &touched);
                s.spawn(move || {
                    let mut codec = Codec::new(level);
                    loop {
                        let job = job_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((idx, data)) = job else { break };
                        let prepared = self.prepare_chunk(&data, &mut codec, claimed, touched);
                        let sent = match prepared {
                            Ok((id, None)) => res_tx.send(Ok((idx, id))).is_ok(),
                            Ok((id, Some(encoded))) => write_tx.send((idx, id, encoded)).is_ok(),
                            Err(e) => res_tx.send(Err(e)).is_ok(),
                        };
                        if !sent {
                            break;
                        }
                    }
                });
            }
            // Writers: write, fsync and rename chunk files. Several at once, so that
            // fsyncs overlap (the file system commits them together) and compression
            // never waits for the disk.
            for _ in 0..io_threads {
                let res_tx = res_tx.clone();
                let (write_rx, touched) = (&write_rx, &touched);
                s.spawn(move || loop {
                    let job = write_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((idx, id, encoded)) = job else { break };
                    let r = self.write_chunk_file(&id, &encoded).map(|()| {
                        touched
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(id.prefix());
                        (idx, id)
                    });
                    if res_tx.send(r).is_err() {
                        break;
                    }
                });
            }
            drop(write_tx);
            drop(res_tx);

            let fill =
                |slots: &mut Vec<(u64, u64, Slot)>, r: Result<(usize, ChunkId)>| -> Result<()> {
                    let (idx, id) = r?;
                    slots[idx].2 = Slot::Chunk(id);
                    Ok(())
                };
            // Takes the results that are ready, without waiting.
            let drain = |slots: &mut Vec<(u64, u64, Slot)>,
                         rx: &Receiver<Result<(usize, ChunkId)>>|
             -> Result<()> {
                loop {
                    match rx.try_recv() {
                        Ok(r) => fill(slots, r)?,
                        Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return Ok(()),
                    }
                }
            };

            let produced = {
                let mut emit = |p: Piece| -> Result<()> {
                    match p {
                        Piece::Zero(len) => push_zero(&mut slots, &mut pos, len),
                        Piece::Data(data) if is_zero(&data) => {
                            push_zero(&mut slots, &mut pos, data.len() as u64)
                        }
                        Piece::Data(data) => {
                            let len = data.len() as u64;
                            slots.push((pos, len, Slot::Pending));
                            pos += len;
                            if job_tx.send((slots.len() - 1, data)).is_err() {
                                return Err(ImageError::invalid("import", "the workers stopped"));
                            }
                            drain(&mut slots, &res_rx)?;
                        }
                    }
                    Ok(())
                };
                feed(source, &mut seg, &mut emit, total, progress)
                    .and_then(|n| seg.finish(&mut emit).map(|()| n))
            };
            drop(job_tx);
            // Wait for the workers; keep the first error.
            let mut result = produced;
            for r in res_rx.iter() {
                if let Err(e) = fill(&mut slots, r) {
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
            result
        });
        let size = outcome?;
        self.sync_chunk_dirs(&touched)?;
        if pos != size {
            return Err(ImageError::invalid(
                "import",
                format!("extents cover {pos} bytes of {size}"),
            ));
        }
        let extents = slots
            .into_iter()
            .map(|(offset, len, slot)| match slot {
                Slot::Zero => Ok(Extent {
                    offset,
                    len,
                    chunk: None,
                }),
                Slot::Chunk(id) => Ok(Extent {
                    offset,
                    len,
                    chunk: Some(id),
                }),
                Slot::Pending => Err(ImageError::invalid(
                    "import",
                    format!("no chunk id for the extent at {offset}"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        progress(Progress {
            phase: Phase::Import,
            done_bytes: size,
            total_bytes: Some(size),
        });
        Ok((extents, size))
    }

    /// Hashes a chunk; returns its id and, unless the store (or this import)
    /// already has it, its encoded bytes to write.
    fn prepare_chunk(
        &self,
        data: &[u8],
        codec: &mut Codec,
        claimed: &Mutex<HashSet<ChunkId>>,
        touched: &Mutex<BTreeSet<String>>,
    ) -> Result<(ChunkId, Option<Vec<u8>>)> {
        let id = ChunkId::of(data);
        let first = claimed.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
        if !first {
            return Ok((id, None));
        }
        if self.has_chunk(&id)? {
            // Another writer may have renamed it into place without having fsynced
            // the directory yet: fsync it too before the manifest refers to it.
            touched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.prefix());
            return Ok((id, None));
        }
        let mut encoded = Vec::new();
        codec.encode(data, &mut encoded);
        Ok((id, Some(encoded)))
    }
}

fn push_zero(slots: &mut Vec<(u64, u64, Slot)>, pos: &mut u64, len: u64) {
    if let Some((_, last_len, Slot::Zero)) = slots.last_mut() {
        *last_len += len;
    } else {
        slots.push((*pos, len, Slot::Zero));
    }
    *pos += len;
}

/// Feeds a source into the segmenter; returns the number of bytes.
fn feed(
    source: Source<'_>,
    seg: &mut Segmenter,
    emit: &mut dyn FnMut(Piece) -> Result<()>,
    total: Option<u64>,
    progress: &mut dyn FnMut(Progress),
) -> Result<u64> {
    let mut buf = vec![0u8; READ_BUF];
    let mut done = 0u64;
    let mut report = |done: u64| {
        progress(Progress {
            phase: Phase::Import,
            done_bytes: done,
            total_bytes: total,
        })
    };
    match source {
        Source::Reader(r) => loop {
            let n = read_full(r, &mut buf).ctx(|| format!("reading the source at byte {done}"))?;
            if n == 0 {
                break;
            }
            seg.push_data(&buf[..n], emit)?;
            done += n as u64;
            report(done);
            if n < buf.len() {
                break;
            }
        },
        Source::File { file, size } => {
            for range in fsutil::file_ranges(file, size)? {
                match range {
                    Range::Hole { len, .. } => {
                        seg.push_zeros(len);
                        done += len;
                    }
                    Range::Data { offset, len } => {
                        let mut off = offset;
                        let end = offset + len;
                        while off < end {
                            let n = ((end - off) as usize).min(buf.len());
                            file.read_exact_at(&mut buf[..n], off).map_err(|e| {
                                if e.kind() == io::ErrorKind::UnexpectedEof {
                                    ImageError::invalid(
                                        "source",
                                        "the file shrank while it was being imported",
                                    )
                                } else {
                                    ImageError::io(format!("reading the source at byte {off}"), e)
                                }
                            })?;
                            seg.push_data(&buf[..n], emit)?;
                            off += n as u64;
                            done += n as u64;
                            report(done);
                        }
                    }
                }
            }
        }
    }
    Ok(done)
}

/// Reads until `buf` is full or the reader ends.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
