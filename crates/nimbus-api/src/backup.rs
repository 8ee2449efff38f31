//! Backups: point-in-time copies of an instance's disk (or a process instance's
//! directory) kept in the chunk store, restorable as a new instance on any node.

use serde::{Deserialize, Serialize};

/// Where a backup is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackupState {
    /// Asked for; the instance's node has not finished it.
    Pending,
    /// Complete and stored in the cluster's chunk store.
    Done,
    /// The node could not make it; `reason` says why.
    Failed,
}

/// A backup as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Backup {
    pub instance: String,
    pub name: String,
    pub state: BackupState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The node that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Logical size in bytes (the whole disk).
    #[serde(default)]
    pub size: u64,
    /// Bytes of chunks this backup added to the cluster store (compressed).
    #[serde(default)]
    pub new_bytes: u64,
    /// Chunks of this backup that were not in the cluster store yet.
    #[serde(default)]
    pub new_chunks: u64,
    /// How the disk was read: `stopped`, or `paused` (a running VM, paused for the copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at_ms: Option<u64>,
    #[serde(default)]
    pub revision: u64,
}

impl Backup {
    /// `instance@name`, how users refer to a backup.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.instance, self.name)
    }
}

/// Body of `POST /v1/instances/{name}/backups`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBackup {
    /// Defaults to a timestamp name.
    #[serde(default)]
    pub name: Option<String>,
}

/// Body of `POST /v1/backups/restore`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBackup {
    /// `instance@name`.
    pub backup: String,
    /// Name of the new instance.
    #[serde(rename = "as")]
    pub as_name: String,
    /// Place it on this node.
    #[serde(default)]
    pub node: Option<String>,
}

/// Body of `POST /v1/instances/{name}/backups/prune`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneBackups {
    pub keep_last: usize,
}

/// Answer of `GET /v1/instances/{name}/backups`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupList {
    pub items: Vec<Backup>,
}

/// Body an agent sends when a backup finished (`POST .../backups/{backup}/complete`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupResult {
    pub ok: bool,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub new_bytes: u64,
    #[serde(default)]
    pub new_chunks: u64,
    #[serde(default)]
    pub consistency: Option<String>,
}
