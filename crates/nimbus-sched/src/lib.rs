//! Pure, deterministic scheduling for nimbus: given nodes and pending instances, decide
//! which instance runs where (placement policy) and in what order (queue policy), and say
//! in plain words why anything left over is still pending. No IO, clock, globals or randomness.
//!
//! # Layout
//! - [`resources`]: [`Resources`] (cpu millicores, memory and disk MiB) and their wording.
//! - [`node`], [`request`]: the inputs, [`NodeInfo`] and [`Request`].
//! - [`config`]: [`PlacementPolicy`], [`QueuePolicy`], [`SchedulerConfig`].
//! - [`filter`]: feasibility stage (ready, driver, node selector, free resources).
//! - [`score`]: selection stage, each placement policy as a preference order.
//! - [`explain`]: why a request fits nowhere ([`Unplaced`]), the failure slow path.
//! - [`cluster`]: [`ClusterState`], nodes plus the free-capacity index; place / release.
//! - `index`, `segtree`, `fittree` (private): the index behind [`ClusterState`].
//! - [`queue`]: queue stage, [`order_queue`] (fcfs, sjf, priority with aging).
//! - [`plan`]: [`schedule`], one full pass producing a [`Plan`].
//! - [`reference`]: the naive O(nodes) placement the index is tested against.
//!
//! # Index
//! Nodes are grouped by driver set. Per group, first-fit uses a segment tree over node
//! positions holding the max free memory/cpu/disk of each subtree and descends to the
//! leftmost node that fits; best- and worst-fit use a balanced tree ordered by free
//! (memory, cpu, index) whose entries carry their subtree's max free cpu/disk, so the
//! search skips nodes that have memory but no cpu left. A placement is O(log nodes) in
//! the common case; node selectors are checked on candidates as the search reaches them.

pub mod cluster;
pub mod config;
pub mod explain;
pub mod filter;
mod fittree;
mod index;
pub mod node;
pub mod plan;
pub mod queue;
pub mod reference;
pub mod request;
pub mod resources;
pub mod score;
mod segtree;

pub use cluster::ClusterState;
pub use config::{ParsePolicyError, PlacementPolicy, QueuePolicy, SchedulerConfig};
pub use explain::{explain, Rejections, Unplaced};
pub use node::NodeInfo;
pub use plan::{schedule, Placement, Plan};
pub use queue::{effective_priority, order_queue};
pub use request::Request;
pub use resources::{Dimension, Resources};
