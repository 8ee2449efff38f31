//! The store handle: options, paths, opening, locks and the chunk writer.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::chunker::ChunkerConfig;
use crate::error::{ImageError, IoContext, Result};
use crate::fsutil::{self, FileLock, TmpFile};
use crate::id::ChunkId;
use crate::manifest::{self, Manifest, ManifestName};

/// The store format version in `store.json`.
pub const STORE_VERSION: u32 = 1;

/// How a store cuts, compresses and processes data.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Chunk sizes for new imports (existing manifests restore whatever cut them).
    pub chunker: ChunkerConfig,
    /// zstd level for new chunks, 1..=22; 0 stores chunks uncompressed.
    pub zstd_level: i32,
    /// Worker threads hashing, compressing and verifying chunks (0: one per CPU).
    pub threads: usize,
    /// Threads writing and fsyncing chunk files during imports (0: 4), so that
    /// fsyncs overlap each other and the compression. Exports and verify read
    /// chunks with `threads + io_threads` workers.
    pub io_threads: usize,
    /// The qemu-img binary (from qemu-utils).
    pub qemu_img: PathBuf,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            chunker: ChunkerConfig::default(),
            zstd_level: 3,
            threads: 0,
            io_threads: 0,
            qemu_img: PathBuf::from("qemu-img"),
        }
    }
}

/// What an operation is doing, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// qemu-img converts the source to raw (or the export to qcow2); no byte counts.
    Convert,
    /// Reading, chunking and storing the source.
    Import,
    /// Writing the output.
    Export,
    /// Re-hashing chunk files.
    Verify,
}

/// Progress of a long operation: `done_bytes` of `total_bytes` (unknown for streams).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: Phase,
    pub done_bytes: u64,
    pub total_bytes: Option<u64>,
}

/// Keeps gc from running while held (a shared lock on the store). Hold one across
/// `put_chunk_compressed` calls and the final `put_manifest` of a replication.
#[derive(Debug)]
pub struct WriteLease {
    _lock: FileLock,
}

/// A store of images and backups under one directory.
#[derive(Debug)]
pub struct ImageStore {
    pub(crate) root: PathBuf,
    pub(crate) opts: StoreOptions,
}

#[derive(Serialize, Deserialize)]
struct StoreFile {
    nimbus_image_store: u32,
}

impl ImageStore {
    /// Opens the store at `root`, creating its layout if needed.
    pub fn open(root: impl AsRef<Path>, opts: StoreOptions) -> Result<ImageStore> {
        opts.chunker.validate()?;
        if !(0..=22).contains(&opts.zstd_level) {
            return Err(ImageError::invalid(
                "zstd level",
                format!("{} is outside 0..=22", opts.zstd_level),
            ));
        }
        let mut opts = opts;
        if opts.threads == 0 {
            opts.threads = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
        }
        if opts.io_threads == 0 {
            opts.io_threads = 4;
        }
        let root = std::path::absolute(root.as_ref())
            .map_err(|e| ImageError::io(format!("resolving {}", root.as_ref().display()), e))?;
        let store = ImageStore { root, opts };
        store.init()?;
        Ok(store)
    }

    fn init(&self) -> Result<()> {
        fsutil::create_dir_durable(&self.root)?;
        let marker = self.root.join("store.json");
        match fs::read(&marker) {
            Ok(bytes) => {
                let f: StoreFile = serde_json::from_slice(&bytes).map_err(|e| {
                    ImageError::invalid(
                        "store",
                        format!("{} is not a nimbus image store: {e}", marker.display()),
                    )
                })?;
                if f.nimbus_image_store != STORE_VERSION {
                    return Err(ImageError::invalid(
                        "store",
                        format!(
                            "{} has format version {}, this build reads {STORE_VERSION}",
                            self.root.display(),
                            f.nimbus_image_store
                        ),
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io(format!("reading {}", marker.display()), e)),
        }
        for dir in [
            self.tmp_dir(),
            self.root.join("manifests").join("images"),
            self.root.join("manifests").join("backups"),
        ] {
            fsutil::create_dir_durable(&dir)?;
        }
        let chunks = self.root.join("chunks");
        if !chunks.join("ff").is_dir() {
            fsutil::create_dir_durable(&chunks)?;
            fsutil::set_topdir(&chunks);
            for i in 0..=255u8 {
                let d = chunks.join(format!("{i:02x}"));
                match fs::create_dir(&d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(ImageError::io(format!("creating {}", d.display()), e)),
                }
            }
            fsutil::sync_dir(&chunks)?;
        }
        if !marker.exists() {
            let body = serde_json::to_vec(&StoreFile {
                nimbus_image_store: STORE_VERSION,
            })
            .unwrap_or_default();
            match fsutil::write_durably(&self.tmp_dir(), &marker, &body, true) {
                Ok(()) | Err(ImageError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
            fsutil::sync_dir(&self.root)?;
        }
        Ok(())
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The options in effect (with `threads` resolved).
    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    /// Takes a [`WriteLease`], waiting for a running gc to finish.
    pub fn lease(&self) -> Result<WriteLease> {
        Ok(WriteLease {
            _lock: self.lock_shared()?,
        })
    }

    pub(crate) fn lock_shared(&self) -> Result<FileLock> {
        fsutil::lock(&self.root.join("lock"), false)
    }

    pub(crate) fn lock_exclusive(&self) -> Result<FileLock> {
        fsutil::lock(&self.root.join("lock"), true)
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn chunks_dir(&self) -> PathBuf {
        self.root.join("chunks")
    }

    /// Where chunk `id` lives.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        self.chunks_dir().join(id.prefix()).join(id.to_hex())
    }

    /// Where the manifest of `name` lives (whether or not it exists).
    pub fn manifest_path(&self, name: &ManifestName) -> PathBuf {
        let base = self.root.join("manifests");
        match name {
            ManifestName::Image { name } => base.join("images").join(format!("{name}.json")),
            ManifestName::Backup { instance, name } => base
                .join("backups")
                .join(instance)
                .join(format!("{name}.json")),
        }
    }

    /// True if chunk `id` is stored.
    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        let path = self.chunk_path(id);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ImageError::io(format!("checking {}", path.display()), e)),
        }
    }

    /// Writes an encoded chunk file durably except for its directory's fsync, which
    /// the caller does (once per directory) before referencing the chunk. The
    /// temporary file lives in the chunk's own directory (`.tmp*`), so that creating
    /// and renaming it touches only that directory.
    pub(crate) fn write_chunk_file(&self, id: &ChunkId, encoded: &[u8]) -> Result<()> {
        let dest = self.chunk_path(id);
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        let tmp = match TmpFile::create(&dir, fsutil::TMP_PREFIX) {
            Err(ImageError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                // Someone removed the fan-out directory: recreate it.
                fsutil::create_dir_durable(&dir)?;
                TmpFile::create(&dir, fsutil::TMP_PREFIX)?
            }
            other => other?,
        };
        tmp.file()
            .write_all(encoded)
            .ctx(|| format!("writing chunk {id}"))?;
        tmp.persist_with(&dest, false, true)
    }

    /// fsyncs the fan-out directories named in `prefixes`.
    pub(crate) fn sync_chunk_dirs(&self, prefixes: &Mutex<BTreeSet<String>>) -> Result<()> {
        let prefixes = std::mem::take(&mut *prefixes.lock().unwrap_or_else(|p| p.into_inner()));
        for p in prefixes {
            fsutil::sync_dir(&self.chunks_dir().join(p))?;
        }
        Ok(())
    }

    /// Writes a manifest durably. With `no_clobber` an existing one is an error.
    pub(crate) fn write_manifest(&self, m: &Manifest, no_clobber: bool) -> Result<()> {
        let name = m.id();
        let path = self.manifest_path(&name);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fsutil::create_dir_durable(&dir)?;
        let bytes = manifest::encode(m)?;
        match fsutil::write_durably(&self.tmp_dir(), &path, &bytes, no_clobber) {
            Err(ImageError::AlreadyExists { .. }) => {
                return Err(ImageError::AlreadyExists {
                    what: "manifest",
                    name: name.to_string(),
                })
            }
            other => other?,
        }
        fsutil::sync_dir(&dir)
    }

    /// Fails with `AlreadyExists` if `name` has a manifest.
    pub(crate) fn ensure_absent(&self, name: &ManifestName) -> Result<()> {
        if self.manifest_path(name).exists() {
            return Err(ImageError::AlreadyExists {
                what: "manifest",
                name: name.to_string(),
            });
        }
        Ok(())
    }
}
