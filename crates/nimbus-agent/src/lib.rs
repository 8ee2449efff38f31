//! The nimbus node agent: registers its node, heartbeats, pulls its assignments by
//! long-poll and runs them through drivers, reporting what it observes.
//!
//! # Layout
//! - [`agent`]: the agent loop (register, long-poll, reconcile, heartbeat, log shipping).
//! - [`capacity`]: detection of the node's cores, memory and disk.
//! - [`client`]: the HTTP client for the server's agent endpoints.
//! - [`driver`]: the `Driver` trait, the process driver and the simulated driver.
//! - [`shim`]: the per-instance supervisor process the process driver launches.
//! - [`store`]: the node's chunk store: image copies and backups.

pub mod agent;
pub mod capacity;
pub mod client;
pub mod driver;
pub mod health;
pub mod replica;
pub mod shim;
pub mod store;

pub use agent::{run, AgentConfig, AgentError, DriverMode};
