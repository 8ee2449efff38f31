//! The event log: one record per notable change, readable with `nimbus events`.

use serde::{Deserialize, Serialize};

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Monotonic sequence number; pass as `after` to read newer ones.
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// What happened, e.g. `instance_created`, `instance_scheduled`, `node_down`.
    pub kind: String,
    /// `instance` or `node`.
    pub object_kind: String,
    pub object: String,
    pub message: String,
}

/// One page of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventList {
    pub items: Vec<Event>,
    /// The highest sequence number returned (or the `after` given); pass as `after` to follow.
    pub last: u64,
}
