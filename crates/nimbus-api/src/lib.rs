//! Wire types of the nimbus HTTP API, shared by the server, the agents and the CLI.
//!
//! # Layout
//! - [`units`]: parsing of human sizes (`64Mi`, `0.5` cpu) into the integer units the API uses.
//! - [`instance`]: instance specs, status, and the lifecycle state machine.
//! - [`node`]: node registration, capacity, heartbeats and assignments.
//! - [`backup`]: backups of instance disks and their restore.
//! - [`event`]: the event log.
//! - [`image`]: VM images kept by the server.
//! - [`error`]: the one JSON error shape and its codes.
//! - [`specfile`]: the TOML spec file read by `nimbus apply`.

pub mod backup;
pub mod error;
pub mod event;
pub mod image;
pub mod instance;
pub mod node;
pub mod specfile;
pub mod units;

pub use backup::{Backup, BackupList, BackupState, CreateBackup, PruneBackups, RestoreBackup};
pub use error::{ApiError, ErrorBody, ErrorCode};
pub use event::{Event, EventList};
pub use image::{Image, ImageFile, ImageKind, ImageList, RegisterImage, ReplicateImage};
pub use instance::{
    CreateInstance, DesiredState, HaPolicy, HealthCheck, HealthCheckKind, Instance, InstanceKind,
    InstanceList, InstanceSpec, InstanceState, Migration, MigrationTarget, MoveCause, PortSpec,
    Recovery, RestartPolicy, Standby, TransitionError,
};
pub use node::{
    Assignment, Assignments, Heartbeat, IncomingMigration, InstanceReport, MigrationReport,
    MirrorReport, Node, NodeList, NodeState, RegisterNode, Resources, StandbyAssignment,
    StandbyReport,
};

/// Default address of the API server.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8470";

/// Checks a client-chosen name: 1 to 63 characters of `a-z`, `0-9` and `-`,
/// starting with a letter and not ending with `-` (a DNS label).
pub fn validate_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} name must not be empty"));
    }
    if name.len() > 63 {
        return Err(format!(
            "{what} name {name:?} is {} characters long; at most 63 are allowed",
            name.len()
        ));
    }
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let first_ok = name.starts_with(|c: char| c.is_ascii_lowercase());
    if !ok_chars || !first_ok || name.ends_with('-') {
        return Err(format!(
            "{what} name {name:?} is invalid: use lowercase letters, digits and '-', \
             start with a letter and do not end with '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("instance", "web-1").is_ok());
        assert!(validate_name("instance", "").is_err());
        assert!(validate_name("instance", "Web").is_err());
        assert!(validate_name("instance", "1web").is_err());
        assert!(validate_name("instance", "web-").is_err());
        assert!(validate_name("instance", "we b").is_err());
        assert!(validate_name("instance", &"a".repeat(64)).is_err());
    }
}
