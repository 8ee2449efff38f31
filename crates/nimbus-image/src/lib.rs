//! A chunked, deduplicated, compressed, content-addressed store for VM disk images
//! and instance backups.
//!
//! An image (or backup) is cut into zero runs and content-defined chunks (FastCDC
//! 2020, 1 MiB average by default); each chunk is stored once per store under its
//! BLAKE3 id, zstd-compressed when that helps, and a manifest lists the extents. Zero
//! runs, including holes of sparse files (found with SEEK_DATA/SEEK_HOLE, never read),
//! cost nothing; identical chunks across every image and backup are stored once;
//! a second backup of a disk stores only the chunks that changed.
//!
//! The API is synchronous and blocking (async callers wrap it in `spawn_blocking`);
//! an [`ImageStore`] is `Send + Sync` and can be shared between threads, and several
//! processes can use one store directory at the same time.
//!
//! # Layout
//! - [`store`]: [`ImageStore`], its options and paths; opening a store.
//! - [`import`]: `import_reader`/`import_file`: qemu-img detection and conversion,
//!   hole-skipping reads, the parallel hash/compress/write pipeline.
//! - [`export`]: `export` to raw (sparse) or qcow2, verifying every chunk.
//! - [`maint`]: `list`, `get`, `delete`, `prune`, `stats`, `verify`, `gc`.
//! - `check`: [`ImageStore::verify_manifest`], re-hashing the chunks of one image or
//!   backup (before a restore trusts it).
//! - [`replicate`]: primitives to copy images between stores (only missing chunks).
//! - [`chunker`]: zero-run detection and FastCDC cutting; [`ChunkerConfig`].
//! - [`codec`]: the chunk file format (header byte + raw or zstd payload).
//! - [`manifest`]: [`Manifest`], [`ManifestName`], the checksummed manifest file.
//! - [`id`]: [`ChunkId`]. [`error`]: [`ImageError`]. `fsutil`, `qemu`: helpers.
//!
//! # On disk
//! ```text
//! <root>/store.json                        {"nimbus_image_store": 1}
//! <root>/lock                              flock: shared = writers/readers, exclusive = gc
//! <root>/chunks/<2 hex>/<64 hex>           one chunk: 1 header byte (0 raw, 1 zstd) + payload
//! <root>/chunks/<2 hex>/.tmp.*             a chunk being written (removed by gc)
//! <root>/manifests/images/<name>.json      {"nimbus_image_manifest":1,"blake3":..,"manifest":{..}}
//! <root>/manifests/backups/<instance>/<name>.json
//! <root>/tmp/                              other files being written (removed by gc)
//! ```
//! A chunk's id is the BLAKE3 hash of its *uncompressed* content, so every reader can
//! verify what it reads; the manifest carries the BLAKE3 of its own body, so a damaged
//! manifest is reported as [`ImageError::ManifestCorrupt`] instead of being trusted.
//!
//! # Crash safety
//! Every file (chunk, manifest, exported image) is written under a unique temporary
//! name, fsynced, and renamed into place, and the directory is fsynced. So a chunk
//! file that exists under its final name is complete. An import writes all its chunks
//! first, fsyncs their directories, and only then writes the manifest: after a
//! `kill -9` at any point there is no manifest, or a manifest whose chunks are all on
//! disk. Running the import again skips the chunks that made it (they are found by
//! id) and finishes; chunks of an import that is never retried are unreferenced and
//! removed by the next [`ImageStore::gc`], which also empties `tmp/`.
//!
//! # Concurrency: why gc never deletes a chunk an in-flight write will reference
//! Every operation that writes, or reads chunks (imports, exports, `verify`,
//! `delete`, `prune`, the `put_*` primitives) holds a *shared* `flock` on
//! `<root>/lock` for its whole duration: an import from before its first chunk until
//! after its manifest's rename. `gc` holds it *exclusively*. So gc never overlaps a
//! write: when it gets the lock, every earlier write has either finished (its
//! manifest is in place, so its chunks are referenced) or died (its chunks are
//! garbage), and writes that start later wait until gc is done. The kernel releases
//! the lock of a process that dies, so a crashed writer never blocks gc.
//! Replication, which puts chunks and the manifest in separate calls, holds a
//! [`WriteLease`] ([`ImageStore::lease`]) across them; without one, gc may collect
//! the copied chunks in between and `put_manifest` refuses with
//! [`ImageError::MissingChunks`] (never a dangling manifest). Note that a process
//! holding a lease and calling `gc` itself waits forever: drop the lease first.
//!
//! Two writers that store the same chunk both write a temporary file and rename it
//! onto the same name with the same content, which is harmless. An import that
//! finds a chunk already present still fsyncs that chunk's directory before writing
//! its manifest, in case the writer that put it there has not done so yet.
//!
//! # Design notes
//! - **Zero runs split chunks.** The source is examined in 4 KiB blocks aligned to
//!   offset 0; a run of at least 64 KiB of zero blocks becomes a zero extent and the
//!   data between runs is cut by FastCDC. The decision depends only on the bytes,
//!   so holes skipped with SEEK_HOLE and zeros read from a stream give identical
//!   manifests (and dedup against each other), free space costs no CPU, and a write
//!   into free space costs a small chunk instead of dirtying a 1 MiB one.
//! - **Chunk files, not pack files.** One file per chunk (1 MiB average) keeps gc a
//!   plain `unlink` (no repacking) and replication a file copy; at 1 MiB the per-file
//!   overhead is small. Chunks are written by `io_threads` writers so that their
//!   fsyncs overlap, each through a temporary file in its own fan-out directory;
//!   `chunks/` carries ext4's "top directory" flag (`chattr +T`) so the 256 fan-out
//!   directories, and the chunk inodes in them, spread over the file system's block
//!   groups instead of contending for one.
//! - **Compression only where it pays.** Before compressing a chunk with zstd, eight
//!   4 KiB samples spread over it are compressed at level 1; if none shrinks by 3%,
//!   the chunk (already compressed media, encrypted or random data) is stored as is
//!   without a full zstd pass. A chunk whose compressed form is not smaller is stored
//!   as is too (header byte 0).
//! - **Locks, not leases on time.** gc could instead spare chunks younger than the
//!   oldest in-flight write, but that needs clocks and registrations that a crash
//!   leaves behind; `flock` is released by the kernel on death and makes gc exact
//!   (it removes exactly the unreferenced chunks).

mod check;
pub mod chunker;
pub mod codec;
pub mod error;
pub mod export;
mod fsutil;
pub mod id;
pub mod import;
pub mod maint;
pub mod manifest;
mod qemu;
pub mod replicate;
pub mod store;

pub use chunker::ChunkerConfig;
pub use error::{ImageError, Result};
pub use export::ExportFormat;
pub use id::ChunkId;
pub use import::ImportRequest;
pub use maint::{ChunkProblem, GcReport, ManifestProblem, StoreStats, VerifyReport};
pub use manifest::{Extent, FormatInfo, Kind, Manifest, ManifestName};
pub use store::{ImageStore, Phase, Progress, StoreOptions, WriteLease};

#[cfg(test)]
mod tests {
    #[test]
    fn the_store_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<crate::ImageStore>();
        send_sync::<crate::WriteLease>();
    }
}
