//! `Request`: one pending instance waiting for a node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Resources;

/// One instance waiting to be placed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Request {
    /// The instance name; reported back in [`crate::Plan`].
    pub id: String,
    pub resources: Resources,
    /// The driver that must run it; empty means any node will do.
    pub driver: String,
    /// Labels a node must carry, all of them, with these exact values.
    pub node_selector: BTreeMap<String, String>,
    /// Higher runs first under the `priority` queue policy.
    pub priority: i32,
    /// Expected runtime, used by the `sjf` queue policy; `None` sorts last.
    pub expected_runtime_secs: Option<u64>,
    /// Arrival order; the final tie-breaker of every queue policy.
    pub queue_seq: u64,
    /// When the request was queued (ms, same clock as `now_ms`), for priority aging.
    pub queued_at_ms: u64,
}

impl Request {
    /// A request with the given id, resources and driver; everything else default.
    pub fn new(id: impl Into<String>, resources: Resources, driver: impl Into<String>) -> Request {
        Request {
            id: id.into(),
            resources,
            driver: driver.into(),
            ..Request::default()
        }
    }
}
