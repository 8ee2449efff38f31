//! The one error type of the image store; every variant says what to do next.

use std::io;
use std::path::PathBuf;

use crate::id::ChunkId;
use crate::manifest::ManifestName;

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An image, backup, chunk or file that the operation needs does not exist.
    #[error("{what} {name} not found")]
    NotFound { what: &'static str, name: String },
    /// The target exists; pass `overwrite` (imports) or remove it first (exports).
    #[error("{what} {name} already exists")]
    AlreadyExists { what: &'static str, name: String },
    /// The file is not a readable disk image (qemu-img's own words in `reason`).
    #[error("{} is not a usable disk image: {reason}", path.display())]
    NotAnImage { path: PathBuf, reason: String },
    /// A real disk image in a format the store does not take; convert it to raw or
    /// qcow2 first (`qemu-img convert -O qcow2`).
    #[error(
        "{} is a {format:?} image, which is not supported: convert it to raw or qcow2 first",
        path.display()
    )]
    UnsupportedFormat { path: PathBuf, format: String },
    /// A chunk's content does not match its id. `affected` lists the images and
    /// backups that reference it: restore them from another copy, or delete the chunk
    /// file and import the image again (the import recreates missing chunks).
    #[error("chunk {chunk} is corrupt ({reason}); affected: {}", names(affected))]
    Corrupt {
        chunk: ChunkId,
        affected: Vec<ManifestName>,
        reason: String,
    },
    /// A manifest file cannot be trusted (bad checksum, truncated, inconsistent).
    #[error("manifest {} is corrupt: {reason}", path.display())]
    ManifestCorrupt { path: PathBuf, reason: String },
    /// A manifest references chunks that are not in the store: copy them first
    /// ([`crate::ImageStore::missing_chunks`]).
    #[error("{name} references {} chunk(s) missing from the store (first: {})", chunks.len(), first(chunks))]
    MissingChunks {
        name: ManifestName,
        chunks: Vec<ChunkId>,
    },
    /// The filesystem is full (ENOSPC or quota). Temporary files were removed; free
    /// space (e.g. delete old backups and run gc) and retry.
    #[error("disk full while {context}; temporary files were removed")]
    DiskFull { context: String },
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// An external tool (qemu-img) failed or is missing.
    #[error("{tool} failed: {stderr}")]
    Tool { tool: String, stderr: String },
    /// A bad argument: a name, a chunker configuration, a manifest given to
    /// `put_manifest`.
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
}

fn names(list: &[ManifestName]) -> String {
    if list.is_empty() {
        "nothing references it".to_string()
    } else {
        list.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn first(list: &[ChunkId]) -> String {
    list.first().map(|c| c.to_string()).unwrap_or_default()
}

/// Results of this crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

impl ImageError {
    /// Wraps an I/O error with what was being done; ENOSPC and EDQUOT become
    /// [`ImageError::DiskFull`].
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        let context = context.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ImageError::DiskFull { context },
            _ => ImageError::Io { context, source },
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        ImageError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// `.ctx("reading x")` on I/O results.
pub(crate) trait IoContext<T> {
    fn ctx<F: FnOnce() -> String>(self, context: F) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, context: F) -> Result<T> {
        self.map_err(|e| ImageError::io(context(), e))
    }
}
