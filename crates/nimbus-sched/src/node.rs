//! `NodeInfo`: what the scheduler knows about one node (capacity, allocations, labels, drivers).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Resources;

/// One node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    /// Everything the node offers.
    pub capacity: Resources,
    /// What instances placed on it already use.
    pub allocated: Resources,
    pub labels: BTreeMap<String, String>,
    /// Drivers the node's agent runs (`process`, `qemu`, ...).
    pub drivers: Vec<String>,
    /// False when the node is down or draining: it takes no new work.
    pub schedulable: bool,
}

impl NodeInfo {
    /// A schedulable node with nothing allocated, no labels and the given drivers.
    pub fn new(name: impl Into<String>, capacity: Resources, drivers: &[&str]) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            capacity,
            allocated: Resources::ZERO,
            labels: BTreeMap::new(),
            drivers: drivers.iter().map(|d| d.to_string()).collect(),
            schedulable: true,
        }
    }

    /// Capacity minus allocations, clamped at zero (an over-committed node has nothing free).
    pub fn free(&self) -> Resources {
        self.capacity.saturating_sub(self.allocated)
    }

    /// Whether the node runs `driver`.
    pub fn has_driver(&self, driver: &str) -> bool {
        self.drivers.iter().any(|d| d == driver)
    }
}
