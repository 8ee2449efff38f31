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
//! - [`explain`](mod@explain): why a request fits nowhere ([`Unplaced`]), the failure slow path.
//! - [`cluster`]: [`ClusterState`], nodes plus the free-capacity index; place / release.
//! - `index`, `segtree`, `fittree`, `profile` (private): the index behind [`ClusterState`].
//! - [`queue`]: queue stage, [`order_queue`] (fcfs, sjf, priority with aging).
//! - [`plan`]: [`schedule`], one full pass producing a [`Plan`].
//! - [`reference`](mod@reference): the naive O(nodes) placement the index is tested against.
//!
//! # Index
//! Nodes are grouped by driver set (like Nomad's computed node classes). Per group,
//! first-fit uses a segment tree over node positions and descends to the leftmost node
//! that fits; best- and worst-fit use a treap ordered by free (memory, cpu, index). Both
//! keep, per subtree, the maximum of each node's *profile*: free memory, cpu and disk plus
//! joint scores `min(w * x)` over pairs and triples of dimensions on a grid of ratios. A
//! search therefore skips subtrees where every node lacks something (one node out of cpu,
//! another out of disk), not only subtrees short in a single dimension, and placement
//! stays near O(log nodes) as the cluster fills (see `benches/placement.rs`); the worst
//! case is O(nodes), like a scan. Node selectors are checked on candidates as the search
//! reaches them. The index picks exactly the node [`reference::select_linear`] picks.

pub mod cluster;
pub mod config;
pub mod explain;
pub mod filter;
mod fittree;
mod index;
pub mod node;
pub mod plan;
mod profile;
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
