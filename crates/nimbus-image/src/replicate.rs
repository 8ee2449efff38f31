//! Replication primitives: copy an image or backup between stores, moving only the
//! chunks the destination lacks.
//!
//! ```text
//! let m = src.get(&name)?;
//! let _lease = dst.lease()?;                    // keeps dst's gc away meanwhile
//! for id in dst.missing_chunks(&m)? {
//!     dst.put_chunk_compressed(&id, &src.read_chunk_compressed(&id)?)?;
//! }
//! dst.put_manifest(&m)?;
//! ```
//! Chunks travel in their stored (compressed) form and are verified on arrival.

use std::collections::BTreeSet;
use std::fs;
use std::io;

use crate::codec::Codec;
use crate::error::{ImageError, Result};
use crate::fsutil;
use crate::id::ChunkId;
use crate::manifest::Manifest;
use crate::store::ImageStore;

impl ImageStore {
    /// The distinct chunks of `m` that this store does not have, in first-use order.
    pub fn missing_chunks(&self, m: &Manifest) -> Result<Vec<ChunkId>> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for id in m.extents.iter().filter_map(|e| e.chunk) {
            if seen.insert(id) && !self.has_chunk(&id)? {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// A chunk file's bytes as stored (header byte + raw or zstd payload).
    pub fn read_chunk_compressed(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let path = self.chunk_path(id);
        fs::read(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ImageError::NotFound {
                    what: "chunk",
                    name: id.to_string(),
                }
            } else {
                ImageError::io(format!("reading {}", path.display()), e)
            }
        })
    }

    /// Stores a chunk received from another store, after decoding it and checking
    /// its hash (a mismatch is [`ImageError::Corrupt`] and nothing is stored).
    /// Returns false if the chunk was already here. Durable on return.
    pub fn put_chunk_compressed(&self, id: &ChunkId, bytes: &[u8]) -> Result<bool> {
        let _lock = self.lock_shared()?;
        if self.has_chunk(id)? {
            return Ok(false);
        }
        let mut codec = Codec::new(0);
        codec
            .decode(bytes, id)
            .map_err(|reason| ImageError::Corrupt {
                chunk: *id,
                affected: Vec::new(),
                reason: format!("received chunk does not verify: {reason}"),
            })?;
        self.write_chunk_file(id, bytes)?;
        fsutil::sync_dir(&self.chunks_dir().join(id.prefix()))?;
        Ok(true)
    }

    /// Stores a manifest received from another store. Refuses an invalid manifest,
    /// an existing name (`AlreadyExists`), and a manifest whose chunks are not all
    /// here (`MissingChunks`), so a manifest never points at nothing.
    pub fn put_manifest(&self, m: &Manifest) -> Result<()> {
        m.validate()
            .map_err(|e| ImageError::invalid("manifest", e))?;
        let _lock = self.lock_shared()?;
        let name = m.id();
        self.ensure_absent(&name)?;
        let missing = self.missing_chunks(m)?;
        if !missing.is_empty() {
            return Err(ImageError::MissingChunks {
                name,
                chunks: missing,
            });
        }
        // Chunks renamed into place by writers that have not fsynced their
        // directories yet must be durable before the manifest names them.
        let prefixes: BTreeSet<String> = m.chunk_ids().iter().map(|id| id.prefix()).collect();
        for p in prefixes {
            fsutil::sync_dir(&self.chunks_dir().join(p))?;
        }
        self.write_manifest(m, true)
    }
}
