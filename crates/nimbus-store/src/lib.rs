//! The durable state store of the nimbus control plane.
//!
//! The [`Store`] trait is shaped like etcd's data model so that a replicated backend
//! fits behind it: objects live under `(kind, key)`, every write bumps one global
//! revision, updates are compare-and-swap on the object's revision (a stale write gets
//! [`StoreError::Conflict`]), and writers can be awaited through [`Store::subscribe`].
//!
//! # Layout
//! - [`sqlite`]: the embedded backend (SQLite in WAL mode, fsync on every commit).
//! - [`typed`]: serde helpers to read and write typed objects through any `Store`.

pub mod sqlite;
pub mod typed;

pub use sqlite::SqliteStore;
pub use typed::TypedStore;

/// One stored object: its JSON value and the revision of its last write.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub key: String,
    pub value: String,
    pub revision: u64,
}

/// One appended event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub seq: u64,
    pub value: String,
}

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Create of a key that exists.
    #[error("{kind} {key:?} already exists")]
    AlreadyExists { kind: String, key: String },
    /// Read, update or delete of a key that does not exist.
    #[error("{kind} {key:?} not found")]
    NotFound { kind: String, key: String },
    /// Compare-and-swap failed: the object changed since it was read.
    #[error(
        "{kind} {key:?} was changed concurrently (expected revision {expected}, found {found})"
    )]
    Conflict {
        kind: String,
        key: String,
        expected: u64,
        found: u64,
    },
    /// A stored value could not be (de)serialized.
    #[error("stored {kind} {key:?} is not valid: {message}")]
    Corrupt {
        kind: String,
        key: String,
        message: String,
    },
    /// The backend failed.
    #[error("store backend: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The store contract shared by every backend.
pub trait Store: Send + Sync + 'static {
    /// The latest revision (0 for an empty store).
    fn revision(&self) -> Result<u64>;
    /// Reads one object.
    fn get(&self, kind: &str, key: &str) -> Result<Option<Record>>;
    /// Lists objects of a kind in key order, starting after `after`, at most `limit`.
    fn list(&self, kind: &str, after: Option<&str>, limit: usize) -> Result<Vec<Record>>;
    /// Creates an object; fails with `AlreadyExists`. Returns its revision.
    fn create(&self, kind: &str, key: &str, value: &str) -> Result<u64>;
    /// Replaces an object if its revision is still `expected`. Returns the new revision.
    fn update(&self, kind: &str, key: &str, value: &str, expected: u64) -> Result<u64>;
    /// Deletes an object if its revision is still `expected`.
    fn delete(&self, kind: &str, key: &str, expected: u64) -> Result<u64>;
    /// Returns the next value of a named durable counter (starting at 1).
    fn next_sequence(&self, name: &str) -> Result<u64>;
    /// Appends an event to the event log; returns its sequence number.
    fn append_event(&self, value: &str) -> Result<u64>;
    /// Reads events with a sequence number greater than `after`, oldest first.
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>>;
    /// A channel that carries the latest revision after every committed write.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
}
