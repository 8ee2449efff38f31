//! Reading and maintaining the store: list, get, delete, prune, stats, verify, gc.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use crate::codec::Codec;
use crate::error::{ImageError, IoContext, Result};
use crate::fsutil;
use crate::id::ChunkId;
use crate::manifest::{self, check_name, Kind, Manifest, ManifestName};
use crate::store::{ImageStore, Phase, Progress};

/// Space accounting of a store.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreStats {
    pub images: usize,
    pub backups: usize,
    /// Sum of the manifests' sizes.
    pub logical_bytes: u64,
    /// Of those, bytes in zero extents (holes; stored as nothing).
    pub zero_bytes: u64,
    /// Bytes in chunk extents, counting a chunk every time it is referenced.
    pub referenced_bytes: u64,
    /// Uncompressed bytes of the distinct chunks referenced.
    pub unique_bytes: u64,
    /// Bytes of all chunk files on disk (including unreferenced ones).
    pub stored_bytes: u64,
    /// Chunk files on disk.
    pub chunk_count: u64,
    /// Chunk files no manifest references (gc removes them).
    pub unreferenced_chunks: u64,
    pub unreferenced_bytes: u64,
    /// `referenced_bytes / unique_bytes`: what deduplication saves.
    pub dedup_ratio: f64,
    /// `unique_bytes / stored bytes of referenced chunks`: what zstd saves.
    pub compression_ratio: f64,
}

/// A chunk that failed verification or is missing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkProblem {
    pub chunk: ChunkId,
    pub reason: String,
    /// The images and backups that need it.
    pub referenced_by: Vec<ManifestName>,
}

/// A manifest that cannot be read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestProblem {
    pub path: PathBuf,
    pub reason: String,
}

/// What [`ImageStore::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub manifests_checked: usize,
    /// Chunk files whose content does not match their id.
    pub corrupt_chunks: Vec<ChunkProblem>,
    /// Chunks referenced by a manifest but not on disk.
    pub missing_chunks: Vec<ChunkProblem>,
    pub corrupt_manifests: Vec<ManifestProblem>,
    /// Files under `chunks/` that are not named like chunks (left alone; temporary
    /// files of writes are not listed).
    pub stray_files: Vec<PathBuf>,
}

impl VerifyReport {
    /// True if nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.corrupt_chunks.is_empty()
            && self.missing_chunks.is_empty()
            && self.corrupt_manifests.is_empty()
    }
}

/// What [`ImageStore::gc`] removed and kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub removed_chunks: u64,
    pub removed_bytes: u64,
    pub kept_chunks: u64,
    pub kept_bytes: u64,
    /// Leftovers of interrupted writes removed (from `tmp/` and chunk directories).
    pub removed_tmp_files: u64,
}

/// One file under `chunks/`.
struct ChunkFile {
    /// `None` for files not named like a chunk.
    id: Option<ChunkId>,
    /// A leftover temporary file of an interrupted write.
    tmp: bool,
    path: PathBuf,
    size: u64,
}

impl ImageStore {
    /// The manifest of `name`.
    pub fn get(&self, name: &ManifestName) -> Result<Manifest> {
        name.validate()?;
        let path = self.manifest_path(name);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::NotFound {
                    what: "manifest",
                    name: name.to_string(),
                })
            }
            Err(e) => return Err(ImageError::io(format!("reading {}", path.display()), e)),
        };
        let m = manifest::decode(&bytes, &path)?;
        if m.id() != *name {
            return Err(ImageError::ManifestCorrupt {
                path,
                reason: format!("the file is named for {name} but describes {}", m.id()),
            });
        }
        Ok(m)
    }

    /// The names of all manifests (of one kind, or all), sorted.
    pub fn list_names(&self, kind: Option<Kind>) -> Result<Vec<ManifestName>> {
        let base = self.root.join("manifests");
        let mut out = Vec::new();
        if kind != Some(Kind::Backup) {
            for name in json_stems(&base.join("images"))? {
                out.push(ManifestName::image(name));
            }
        }
        if kind != Some(Kind::Image) {
            for instance in subdirs(&base.join("backups"))? {
                if check_name("instance", &instance).is_err() {
                    continue;
                }
                for name in json_stems(&base.join("backups").join(&instance))? {
                    out.push(ManifestName::backup(instance.clone(), name));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// All manifests (of one kind, or all), sorted by name. A corrupt manifest is an
    /// error ([`ImageStore::verify`] lists them all).
    pub fn list(&self, kind: Option<Kind>) -> Result<Vec<Manifest>> {
        self.list_names(kind)?.iter().map(|n| self.get(n)).collect()
    }

    /// The backups of `instance`, oldest first.
    pub fn backups_of(&self, instance: &str) -> Result<Vec<Manifest>> {
        check_name("instance name", instance)?;
        let dir = self.root.join("manifests").join("backups").join(instance);
        let mut out = json_stems(&dir)?
            .into_iter()
            .map(|n| self.get(&ManifestName::backup(instance, n)))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| (a.created_at_ms, &a.name).cmp(&(b.created_at_ms, &b.name)));
        Ok(out)
    }

    /// Deletes a manifest. Its chunks stay until [`ImageStore::gc`].
    pub fn delete(&self, name: &ManifestName) -> Result<()> {
        name.validate()?;
        let _lock = self.lock_shared()?;
        self.delete_locked(name)
    }

    fn delete_locked(&self, name: &ManifestName) -> Result<()> {
        let path = self.manifest_path(name);
        match fs::remove_file(&path) {
            Ok(()) => fsutil::sync_dir(path.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ImageError::NotFound {
                what: "manifest",
                name: name.to_string(),
            }),
            Err(e) => Err(ImageError::io(format!("removing {}", path.display()), e)),
        }
    }

    /// Deletes all but the newest `keep_last` backups of `instance` (by creation
    /// time); returns the deleted names, oldest first.
    pub fn prune(&self, instance: &str, keep_last: usize) -> Result<Vec<ManifestName>> {
        let _lock = self.lock_shared()?;
        let backups = self.backups_of(instance)?;
        let n = backups.len().saturating_sub(keep_last);
        let mut deleted = Vec::new();
        for m in &backups[..n] {
            let name = m.id();
            self.delete_locked(&name)?;
            deleted.push(name);
        }
        Ok(deleted)
    }

    /// Every readable manifest, and the unreadable ones with why.
    fn load_all(&self) -> Result<(Vec<Manifest>, Vec<ManifestProblem>)> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for name in self.list_names(None)? {
            match self.get(&name) {
                Ok(m) => good.push(m),
                Err(ImageError::ManifestCorrupt { path, reason }) => {
                    bad.push(ManifestProblem { path, reason })
                }
                Err(ImageError::Invalid { reason, .. }) => bad.push(ManifestProblem {
                    path: self.manifest_path(&name),
                    reason,
                }),
                Err(e) => return Err(e),
            }
        }
        Ok((good, bad))
    }

    /// Every file under `chunks/`.
    fn chunk_files(&self) -> Result<Vec<ChunkFile>> {
        let mut out = Vec::new();
        for prefix in subdirs(&self.chunks_dir())? {
            let dir = self.chunks_dir().join(&prefix);
            let entries = fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))?;
            for entry in entries {
                let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
                let path = entry.path();
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    // Removed meanwhile (a concurrent gc cannot run, but be lenient).
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(ImageError::io(format!("reading {}", path.display()), e)),
                };
                let name = entry.file_name();
                let name = name.to_str().unwrap_or_default();
                let id = name
                    .parse::<ChunkId>()
                    .ok()
                    .filter(|id| id.prefix() == prefix && meta.is_file());
                out.push(ChunkFile {
                    id,
                    tmp: name.starts_with(fsutil::TMP_PREFIX) && meta.is_file(),
                    path,
                    size: meta.len(),
                });
            }
        }
        Ok(out)
    }

    /// Space accounting. Fails on a corrupt manifest (its references are unknown).
    pub fn stats(&self) -> Result<StoreStats> {
        let (manifests, bad) = self.load_all()?;
        if let Some(p) = bad.into_iter().next() {
            return Err(ImageError::ManifestCorrupt {
                path: p.path,
                reason: p.reason,
            });
        }
        let mut s = StoreStats::default();
        let mut unique: HashMap<ChunkId, u64> = HashMap::new();
        for m in &manifests {
            match m.kind {
                Kind::Image => s.images += 1,
                Kind::Backup => s.backups += 1,
            }
            s.logical_bytes += m.size;
            for e in &m.extents {
                match e.chunk {
                    Some(id) => {
                        s.referenced_bytes += e.len;
                        unique.insert(id, e.len);
                    }
                    None => s.zero_bytes += e.len,
                }
            }
        }
        s.unique_bytes = unique.values().sum();
        let mut stored_referenced = 0u64;
        for f in self.chunk_files()? {
            let Some(id) = f.id else { continue };
            s.chunk_count += 1;
            s.stored_bytes += f.size;
            if unique.contains_key(&id) {
                stored_referenced += f.size;
            } else {
                s.unreferenced_chunks += 1;
                s.unreferenced_bytes += f.size;
            }
        }
        s.dedup_ratio = ratio(s.referenced_bytes, s.unique_bytes);
        s.compression_ratio = ratio(s.unique_bytes, stored_referenced);
        Ok(s)
    }

    /// Re-hashes every chunk file and checks every manifest: reports corrupt chunks
    /// (with the images and backups that use them), referenced chunks that are
    /// missing, and unreadable manifests. Damage is reported, not an error.
    pub fn verify(&self, progress: &mut dyn FnMut(Progress)) -> Result<VerifyReport> {
        let _lock = self.lock_shared()?;
        let (manifests, corrupt_manifests) = self.load_all()?;
        let mut users: BTreeMap<ChunkId, Vec<ManifestName>> = BTreeMap::new();
        for m in &manifests {
            for id in m.chunk_ids() {
                users.entry(id).or_default().push(m.id());
            }
        }
        let files = self.chunk_files()?;
        let mut report = VerifyReport {
            manifests_checked: manifests.len() + corrupt_manifests.len(),
            corrupt_manifests,
            ..VerifyReport::default()
        };
        let mut present = BTreeSet::new();
        let mut chunks = Vec::new();
        for f in &files {
            match f.id {
                Some(id) => {
                    present.insert(id);
                    chunks.push(f);
                }
                None if f.tmp => {}
                None => report.stray_files.push(f.path.clone()),
            }
        }
        let total: u64 = chunks.iter().map(|f| f.size).sum();
        progress(Progress {
            phase: Phase::Verify,
            done_bytes: 0,
            total_bytes: Some(total),
        });
        let next = AtomicUsize::new(0);
        let (tx, rx) = mpsc::channel::<Result<(usize, Option<String>)>>();
        let chunks_ref = &chunks;
        std::thread::scope(|s| {
            for _ in 0..self.opts.threads.max(1) + self.opts.io_threads {
                let tx = tx.clone();
                let next = &next;
                s.spawn(move || {
                    let mut codec = Codec::new(0);
                    let mut raw = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(f) = chunks_ref.get(i) else { break };
                        let id = f.id.expect("only chunk files are queued");
                        raw.clear();
                        let r = match fs::File::open(&f.path)
                            .and_then(|mut h| h.read_to_end(&mut raw))
                        {
                            Ok(_) => Ok((i, codec.decode(&raw, &id).err())),
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                                Ok((i, Some("removed during verify".into())))
                            }
                            Err(e) => {
                                Err(ImageError::io(format!("reading {}", f.path.display()), e))
                            }
                        };
                        if tx.send(r).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let mut done = 0u64;
            let mut first_err = None;
            for r in rx.iter() {
                match r {
                    Ok((i, problem)) => {
                        let f = chunks_ref[i];
                        done += f.size;
                        report.chunks_checked += 1;
                        report.bytes_checked += f.size;
                        if let Some(reason) = problem {
                            let id = f.id.expect("only chunk files are queued");
                            report.corrupt_chunks.push(ChunkProblem {
                                chunk: id,
                                reason,
                                referenced_by: users.get(&id).cloned().unwrap_or_default(),
                            });
                        }
                        progress(Progress {
                            phase: Phase::Verify,
                            done_bytes: done,
                            total_bytes: Some(total),
                        });
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            first_err.map_or(Ok(()), Err)
        })?;
        report.corrupt_chunks.sort_by_key(|p| p.chunk);
        for (id, names) in users {
            if !present.contains(&id) {
                report.missing_chunks.push(ChunkProblem {
                    chunk: id,
                    reason: "missing".into(),
                    referenced_by: names,
                });
            }
        }
        Ok(report)
    }

    /// Removes exactly the chunks that no manifest references, and leftovers in
    /// `tmp/`. Waits for in-flight writes and blocks new ones while it runs (see the
    /// crate doc). Refuses to run while any manifest is unreadable, since its chunks
    /// would be collected.
    pub fn gc(&self) -> Result<GcReport> {
        let _lock = self.lock_exclusive()?;
        let (manifests, bad) = self.load_all()?;
        if let Some(p) = bad.into_iter().next() {
            return Err(ImageError::ManifestCorrupt {
                path: p.path,
                reason: format!(
                    "{}; gc will not run until it is repaired or deleted",
                    p.reason
                ),
            });
        }
        let referenced: BTreeSet<ChunkId> = manifests.iter().flat_map(|m| m.chunk_ids()).collect();
        let mut report = GcReport::default();
        let mut touched = BTreeSet::new();
        for f in self.chunk_files()? {
            if f.tmp {
                // No writer is active while gc holds the lock: it is a leftover.
                if fs::remove_file(&f.path).is_ok() {
                    report.removed_tmp_files += 1;
                }
                continue;
            }
            let Some(id) = f.id else { continue };
            if referenced.contains(&id) {
                report.kept_chunks += 1;
                report.kept_bytes += f.size;
                continue;
            }
            match fs::remove_file(&f.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ImageError::io(format!("removing {}", f.path.display()), e)),
            }
            report.removed_chunks += 1;
            report.removed_bytes += f.size;
            touched.insert(id.prefix());
        }
        for p in touched {
            fsutil::sync_dir(&self.chunks_dir().join(p))?;
        }
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).ctx(|| format!("listing {}", tmp.display()))? {
            let entry = entry.ctx(|| format!("listing {}", tmp.display()))?;
            if fs::remove_file(entry.path()).is_ok() {
                report.removed_tmp_files += 1;
            }
        }
        // Instances without backups leave empty directories behind.
        let backups = self.root.join("manifests").join("backups");
        for instance in subdirs(&backups)? {
            let _ = fs::remove_dir(backups.join(instance));
        }
        Ok(report)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

/// Names of `*.json` files in `dir` (without the extension); empty if `dir` is
/// missing. Other files (editor leftovers) are ignored.
fn json_stems(dir: &Path) -> Result<Vec<String>> {
    sorted_names(dir, |_, name| {
        let stem = name.strip_suffix(".json")?;
        check_name("name", stem).is_ok().then(|| stem.to_string())
    })
}

/// Names of the subdirectories of `dir`; empty if `dir` is missing.
fn subdirs(dir: &Path) -> Result<Vec<String>> {
    sorted_names(dir, |entry, name| {
        entry
            .file_type()
            .is_ok_and(|t| t.is_dir())
            .then(|| name.to_string())
    })
}

/// The names `keep` maps the entries of `dir` to, sorted; empty if `dir` is missing.
/// Names that are not UTF-8 are skipped.
fn sorted_names(
    dir: &Path,
    keep: impl Fn(&fs::DirEntry, &str) -> Option<String>,
) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ImageError::io(format!("listing {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        if let Some(name) = entry.file_name().to_str().and_then(|n| keep(&entry, n)) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}
