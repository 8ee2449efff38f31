//! Failure handling: node liveness (ready -> suspect -> down, and back through a
//! probation), moving the instances of a down node by their HA policy, and the
//! automatic backups cold recovery restores from.
//!
//! Everything decided here is written to the store first (node state, each
//! instance's move as one compare-and-swap), so a server restarted in the middle of
//! a failover finds the down node and the instances still on it, and carries on.
//! Timings (last heartbeat, detection, running again) go to events and metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nimbus_api::{
    instance::AUTO_BACKUPS_KEPT, BackupState, DesiredState, HaPolicy, Instance, InstanceKind,
    InstanceState, MoveCause, NodeState, Recovery,
};
use nimbus_store::StoreError;

use crate::cluster::{now_ms, Cluster, INSTANCE};
use crate::error::{Result, ServerError};
use crate::metrics::HaLabel;
use crate::migration::LiveStart;
use crate::reconcile::NODE_LABEL;

/// A pending backup with no report from its node for this long is failed.
const PENDING_BACKUP_TIMEOUT: Duration = Duration::from_secs(3600);
/// Prefix of the names of automatic (`backup_every_secs`) backups.
pub const AUTO_BACKUP_PREFIX: &str = "auto-";
/// Longest probation of a node that keeps going down.
const MAX_PROBATION: Duration = Duration::from_secs(300);
/// A node that stayed up this long starts again from the base probation.
const FLAP_MEMORY: Duration = Duration::from_secs(600);

/// When silent nodes become suspect and down, and how long a returning node waits.
#[derive(Debug, Clone, Copy)]
pub struct LivenessConfig {
    /// No heartbeat for this long: the node is `suspect` (takes no new instances).
    pub suspect_after: Duration,
    /// No heartbeat for this long: the node is `down` and its instances move.
    pub down_after: Duration,
    /// A node back from `down` stays `suspect` this long (doubled each time it goes
    /// down again within ten minutes, up to five minutes) before it is `ready`.
    pub probation: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            suspect_after: Duration::from_secs(1),
            down_after: Duration::from_secs(2),
            probation: Duration::from_secs(5),
        }
    }
}

/// Per-node flap history (soft state: a restarted server trusts returning nodes).
#[derive(Debug)]
struct Flaps {
    downs: u32,
    last_down: Instant,
    trusted_from: Instant,
}

/// Liveness settings and the probation of each node that came back.
#[derive(Debug)]
pub struct Liveness {
    pub cfg: LivenessConfig,
    flaps: Mutex<HashMap<String, Flaps>>,
    /// Draining nodes already announced as empty.
    drained: Mutex<std::collections::HashSet<String>>,
}

impl Liveness {
    pub fn new(cfg: LivenessConfig) -> Self {
        Liveness {
            cfg,
            flaps: Mutex::new(HashMap::new()),
            drained: Mutex::new(Default::default()),
        }
    }

    /// True the first time a draining node is seen empty (since it last was not).
    fn first_time_empty(&self, node: &str) -> bool {
        self.drained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string())
    }

    fn not_empty(&self, node: &str) {
        self.drained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
    }

    fn flaps(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flaps>> {
        self.flaps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that `node` was declared down.
    fn went_down(&self, node: &str) {
        let now = Instant::now();
        let mut f = self.flaps();
        let e = f.entry(node.to_string()).or_insert(Flaps {
            downs: 0,
            last_down: now,
            trusted_from: now,
        });
        if now.duration_since(e.last_down) > FLAP_MEMORY {
            e.downs = 0;
        }
        e.downs += 1;
        e.last_down = now;
    }

    /// Starts the probation of a node that is heard from again after being down;
    /// returns its length.
    pub fn came_back(&self, node: &str) -> Duration {
        let now = Instant::now();
        let mut f = self.flaps();
        let e = f.entry(node.to_string()).or_insert(Flaps {
            downs: 1,
            last_down: now,
            trusted_from: now,
        });
        let doublings = e.downs.saturating_sub(1).min(16);
        let p = self
            .cfg
            .probation
            .saturating_mul(1u32 << doublings)
            .min(MAX_PROBATION);
        e.trusted_from = now + p;
        p
    }

    /// Whether a suspect node may be ready again (its probation, if any, is over).
    pub fn trusted(&self, node: &str) -> bool {
        self.flaps()
            .get(node)
            .is_none_or(|f| Instant::now() >= f.trusted_from)
    }
}

/// Watches heartbeats: marks silent nodes suspect, then down, and moves the
/// instances of down nodes.
pub async fn liveness_loop(cluster: Arc<Cluster>) {
    let started = Instant::now();
    let cfg = cluster.liveness.cfg;
    let tick = (cfg.suspect_after / 4).clamp(Duration::from_millis(50), Duration::from_millis(250));
    loop {
        tokio::time::sleep(tick).await;
        let c = cluster.clone();
        let res = tokio::task::spawn_blocking(move || liveness_pass(&c, started)).await;
        if let Ok(Err(e)) = res {
            tracing::warn!(error = %e, "liveness pass failed");
        }
    }
}

/// One look at every node's last heartbeat.
fn liveness_pass(cluster: &Cluster, started: Instant) -> Result<()> {
    let cfg = cluster.liveness.cfg;
    let seen: HashMap<String, Instant> = cluster
        .heartbeats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    // Mark every node first, recover after: nodes lost together are all known to be
    // down before anything is moved (a hot standby on one of them is not used).
    let mut down = Vec::new();
    for node in cluster.all_nodes_with(&[])? {
        // A node never heard from by this process gets a full timeout from start-up.
        let silent = seen.get(&node.name).copied().unwrap_or(started).elapsed();
        let failed_at_ms = now_ms().saturating_sub(silent.as_millis() as u64);
        let state = match node.state {
            NodeState::Down => NodeState::Down,
            _ if silent > cfg.down_after => {
                let why = format!(
                    "no heartbeat for {:.1}s (down after {:.1}s)",
                    silent.as_secs_f64(),
                    cfg.down_after.as_secs_f64()
                );
                if !set_state(cluster, &node.name, NodeState::Down, &why)? {
                    continue;
                }
                cluster.liveness.went_down(&node.name);
                cluster
                    .metrics
                    .detection_seconds
                    .observe(silent.as_secs_f64());
                NodeState::Down
            }
            NodeState::Ready if silent > cfg.suspect_after => {
                let why = format!("no heartbeat for {:.1}s", silent.as_secs_f64());
                set_state(cluster, &node.name, NodeState::Suspect, &why)?;
                NodeState::Suspect
            }
            s => s,
        };
        if state == NodeState::Down {
            down.push((node.name, failed_at_ms));
        }
    }
    for (node, failed_at_ms) in down {
        cluster.recover_node(&node, failed_at_ms)?;
    }
    Ok(())
}

/// Sets a node's state; false when the node is gone.
fn set_state(cluster: &Cluster, node: &str, state: NodeState, why: &str) -> Result<bool> {
    match cluster.set_node_state(node, state, why) {
        Ok(()) => Ok(true),
        Err(ServerError::Store(StoreError::NotFound { .. }))
        | Err(ServerError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

impl Cluster {
    /// Moves every instance off down node `node` by its HA policy. Idempotent: run on
    /// every liveness pass while the node is down, so a failover interrupted by a
    /// server restart is completed by the next server.
    pub fn recover_node(&self, node: &str, failed_at_ms: u64) -> Result<()> {
        let on_node: Vec<Instance> = self
            .all_instances()?
            .into_iter()
            .filter(|i| i.node.as_deref() == Some(node))
            .filter(|i| {
                (i.holds_resources() && i.state != InstanceState::Lost)
                    || i.state == InstanceState::Stopping
                    // Stopped for a drain that the node's failure interrupted.
                    || i.recovery.as_ref().is_some_and(|r| r.cause == MoveCause::Drain)
            })
            .collect();
        for inst in on_node {
            if let Err(e) = self.recover_instance(&inst.name, node, failed_at_ms) {
                match e {
                    ServerError::NotFound { .. } => {}
                    e => tracing::warn!(instance = %inst.name, error = %e, "recovery step failed"),
                }
            }
        }
        Ok(())
    }

    fn recover_instance(&self, name: &str, node: &str, failed_at_ms: u64) -> Result<()> {
        let mut inst = self.get_instance(name)?;
        if inst.node.as_deref() != Some(node) {
            return Ok(());
        }
        if let Some(m) = &inst.migration {
            // The source is gone: its VM recovers by its HA policy like any other.
            self.migration_failed(name, m, &format!("node {node} went down"))?;
            inst = self.get_instance(name)?;
        }
        // A stop or delete in flight cannot be confirmed by a down node: finish it here
        // (the node's agent stops the instance if it comes back).
        if inst.state == InstanceState::Stopping {
            if inst.desired == nimbus_api::DesiredState::Deleted {
                match self.store.delete(INSTANCE, name, inst.revision) {
                    Ok(_) => self.finish_delete(&inst),
                    Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                return Ok(());
            }
            self.modify_instance(name, |i| {
                if i.state != InstanceState::Stopping || i.node.as_deref() != Some(node) {
                    return Ok(false);
                }
                i.state = InstanceState::Stopped;
                i.reason = Some(format!("node {node} went down while stopping"));
                i.pid = None;
                Ok(true)
            })?;
            return Ok(());
        }
        let policy = inst.spec.ha_policy();
        let detected_at_ms = now_ms();
        let drain_interrupted = inst.state == InstanceState::Stopped
            && inst
                .recovery
                .as_ref()
                .is_some_and(|r| r.cause == MoveCause::Drain);
        if drain_interrupted && policy == HaPolicy::None {
            // Stopped for a drain, not moved: it stays, stopped, like any stopped VM.
            self.modify_instance(name, |i| {
                if i.recovery.take().is_none() {
                    return Ok(false);
                }
                i.reason = Some(format!("node {node} went down while it was being drained"));
                Ok(true)
            })?;
            return Ok(());
        }
        if policy == HaPolicy::None {
            let lost = self.modify_instance(name, |i| {
                if i.node.as_deref() != Some(node) || !i.state.can_become(InstanceState::Lost) {
                    return Ok(false);
                }
                i.state = InstanceState::Lost;
                i.recovery = None;
                i.reason = Some(format!(
                    "node {node} is down; HA policy none: it stays there and runs again if the \
                     node comes back"
                ));
                Ok(true)
            })?;
            if lost.state == InstanceState::Lost {
                self.event(
                    "instance_lost",
                    "instance",
                    name,
                    format!("node {node} is down; not moved (ha none)"),
                );
            }
            return Ok(());
        }
        let mut no_takeover = None;
        if policy == HaPolicy::Hot {
            match self.take_over(name, node, failed_at_ms)? {
                Ok(()) => return Ok(()),
                Err(why) => no_takeover = Some(why),
            }
        }
        // Cold (and hot without a ready standby): the newest completed backup that
        // verifies becomes the starting image.
        let mut restored: Option<(String, String, u64)> = None;
        let mut skipped = Vec::new();
        if matches!(policy, HaPolicy::Cold | HaPolicy::Hot) {
            let mut done: Vec<_> = self
                .list_backups(Some(name))?
                .into_iter()
                .filter(|b| b.state == BackupState::Done)
                .collect();
            done.reverse();
            for b in done {
                let image = format!("{name}-{}", b.name);
                match self.image_from_backup(name, &b.name, &image) {
                    Ok(_) => {
                        restored = Some((b.name.clone(), image, b.created_at_ms));
                        break;
                    }
                    Err(e) => skipped.push(format!("{}: {e}", b.name)),
                }
            }
        }
        let recovery = Recovery {
            cause: MoveCause::NodeDown,
            from_node: node.to_string(),
            policy,
            failed_at_ms,
            detected_at_ms,
            from_replica: false,
            backup: restored.as_ref().map(|r| r.0.clone()),
            backup_taken_at_ms: restored.as_ref().map(|r| r.2),
        };
        let image = restored.as_ref().map(|r| r.1.as_str());
        if !self.requeue_off(name, node, image, recovery, "is down")? {
            return Ok(());
        }
        let how = match (&restored, policy) {
            (Some((b, _, taken)), _) => format!(
                "from backup {b}, taken {:.1}s before the node's last heartbeat",
                failed_at_ms.saturating_sub(*taken) as f64 / 1000.0
            ),
            (None, HaPolicy::Cold | HaPolicy::Hot) if skipped.is_empty() => {
                "no backup yet: starting fresh".to_string()
            }
            (None, HaPolicy::Cold | HaPolicy::Hot) => {
                format!("no usable backup ({}): starting fresh", skipped.join("; "))
            }
            _ => "starting fresh".to_string(),
        };
        self.event(
            "instance_rescheduled",
            "instance",
            name,
            format!(
                "node {node} down (detected {:.1}s after its last heartbeat); ha {}: {}{how}",
                detected_at_ms.saturating_sub(failed_at_ms) as f64 / 1000.0,
                policy.as_str(),
                no_takeover
                    .map(|w| format!("no takeover ({w}); "))
                    .unwrap_or_default()
            ),
        );
        Ok(())
    }

    /// Puts an instance that is on `node` back in the queue to run elsewhere, starting
    /// from `image` (a restored backup) when given. One compare-and-swap: false when
    /// the instance has left `node` meanwhile (someone else moved it).
    fn requeue_off(
        &self,
        name: &str,
        node: &str,
        image: Option<&str>,
        recovery: Recovery,
        why: &str,
    ) -> Result<bool> {
        let mut spec = self.get_instance(name)?.spec;
        if let Some(image) = image {
            self.start_from_image(&mut spec, image);
        }
        // A pin to the node being left (e.g. from a restore with --node) cannot hold.
        if spec.node_selector.get(NODE_LABEL).map(String::as_str) == Some(node) {
            spec.node_selector.remove(NODE_LABEL);
        }
        let moved = self.modify_instance(name, |i| {
            if i.node.as_deref() != Some(node) || !i.state.can_become(InstanceState::Pending) {
                return Ok(false);
            }
            i.spec = spec.clone();
            i.state = InstanceState::Pending;
            i.desired = DesiredState::Running;
            i.node = None;
            i.clear_observed();
            i.queued_at_ms = now_ms();
            i.reason = Some(format!("node {node} {why}: placing again"));
            i.recovery = Some(recovery.clone());
            Ok(true)
        })?;
        Ok(moved.state == InstanceState::Pending && moved.node.is_none())
    }

    /// Called when a moved instance runs again: records RTO and RPO.
    pub(crate) fn recovery_completed(&self, inst: &Instance, r: &Recovery) {
        let now = now_ms();
        let rto = now.saturating_sub(r.failed_at_ms) as f64 / 1000.0;
        let label = HaLabel {
            ha: match r.cause {
                MoveCause::NodeDown => r.policy.as_str().into(),
                MoveCause::Drain => "drain".into(),
            },
        };
        self.metrics
            .recovery_seconds
            .get_or_create(&label)
            .observe(rto);
        let rpo = r
            .backup_taken_at_ms
            .filter(|_| r.cause == MoveCause::NodeDown)
            .map(|t| r.failed_at_ms.saturating_sub(t) as f64 / 1000.0);
        if let Some(rpo) = rpo {
            self.metrics
                .data_loss_seconds
                .get_or_create(&label)
                .observe(rpo);
        }
        let to = inst.node.as_deref().unwrap_or("?");
        if r.cause == MoveCause::Drain {
            self.event(
                "instance_moved",
                "instance",
                &inst.name,
                format!(
                    "running on {to} after draining node {}: downtime {rto:.1}s",
                    r.from_node
                ),
            );
            return;
        }
        self.event(
            "failover_completed",
            "instance",
            &inst.name,
            format!(
                "running on {to} after node {} failed: detection {:.1}s, recovery (RTO) {rto:.1}s{}",
                r.from_node,
                r.detected_at_ms.saturating_sub(r.failed_at_ms) as f64 / 1000.0,
                match (rpo, &r.backup) {
                    (Some(rpo), Some(b)) => format!(", data loss (RPO) {rpo:.1}s (backup {b})"),
                    _ => String::new(),
                }
            ),
        );
    }
}

/// Moves instances off draining nodes, a step per pass.
pub async fn drain_loop(cluster: Arc<Cluster>) {
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = cluster.clone();
        let res = tokio::task::spawn_blocking(move || c.drain_pass()).await;
        if let Ok(Err(e)) = res {
            tracing::warn!(error = %e, "drain pass failed");
        }
    }
}

/// Prefix of the names of the backups a drain takes to carry data across.
pub const DRAIN_BACKUP_PREFIX: &str = "drain-";

impl Cluster {
    /// Marks a node draining: it takes no new instances and its instances move off,
    /// running VMs live unless `offline`.
    pub fn drain_node(&self, name: &str, offline: bool) -> Result<nimbus_api::Node> {
        let node = self.get_node(name)?;
        match node.state {
            NodeState::Down => {
                return Err(ServerError::InvalidState(format!(
                    "node {name:?} is down: its instances are moved by their HA policy, there \
                     is nothing to drain"
                )))
            }
            _ => self.set_node_state_with(name, NodeState::Draining, "drain requested", |n| {
                n.drain_offline = offline
            })?,
        }
        self.get_node(name)
    }

    /// Makes a draining node schedulable again (instances already moved stay moved).
    pub fn undrain_node(&self, name: &str) -> Result<nimbus_api::Node> {
        let node = self.get_node(name)?;
        if node.state != NodeState::Draining {
            return Err(ServerError::InvalidState(format!(
                "node {name:?} is {}, not draining",
                node.state.as_str()
            )));
        }
        self.set_node_state_with(name, NodeState::Ready, "drain cancelled", |n| {
            n.drain_offline = false
        })?;
        // Live migrations not placed yet stop here: the VMs stay (and keep running).
        for inst in self.all_instances()? {
            if let Some(m) = inst
                .migration
                .as_ref()
                .filter(|_| inst.node.as_deref() == Some(name))
            {
                self.migration_failed(&inst.name, m, "the drain was cancelled")?;
            }
        }
        self.get_node(name)
    }

    /// One step of every draining node's instances. A running VM is live-migrated
    /// (see [`crate::migration`]); where that cannot be, or the drain is offline, it is
    /// stopped, its stopped disk backed up, and it is placed again from the backup: no
    /// write is lost either way. A process is backed up while frozen and placed again
    /// from the backup (its writes after the backup are lost; the old copy stops when
    /// its node sees it moved).
    fn drain_pass(&self) -> Result<()> {
        let instances = self.all_instances()?;
        let mut nodes = self.all_nodes_with(&instances)?;
        let draining: Vec<nimbus_api::Node> = nodes
            .iter()
            .filter(|n| n.state == NodeState::Draining)
            .cloned()
            .collect();
        for drained in &draining {
            let node = drained.name.clone();
            let on: Vec<&Instance> = instances
                .iter()
                .filter(|i| i.node.as_deref() == Some(node.as_str()))
                .filter(|i| {
                    i.holds_resources()
                        || i.recovery
                            .as_ref()
                            .is_some_and(|r| r.cause == MoveCause::Drain)
                })
                .collect();
            if on.is_empty() {
                if self.liveness.first_time_empty(&node) {
                    self.event("node_drained", "node", &node, "no instances left");
                }
                continue;
            }
            self.liveness.not_empty(&node);
            for inst in on {
                let may_start_live = inst.kind == InstanceKind::Vm
                    && inst.state == InstanceState::Running
                    && inst.migration.is_none();
                let step = self.drain_step(inst, drained, &nodes);
                if may_start_live && step.is_ok() {
                    // A migration just started reserved room on its target: the next
                    // VM's choice must see it.
                    nodes = self.all_nodes_with(&self.all_instances()?)?;
                }
                if let Err(e) = step {
                    match e {
                        ServerError::NotFound { .. } | ServerError::Conflict(_) => {}
                        e => tracing::warn!(instance = %inst.name, error = %e, "drain step failed"),
                    }
                }
            }
        }
        Ok(())
    }

    fn drain_step(
        &self,
        inst: &Instance,
        drained: &nimbus_api::Node,
        nodes: &[nimbus_api::Node],
    ) -> Result<()> {
        let now = now_ms();
        let name = inst.name.as_str();
        let node = drained.name.as_str();
        if let Some(m) = &inst.migration {
            return self.check_live_migration(inst, m);
        }
        let Some(r) = inst
            .recovery
            .clone()
            .filter(|r| r.cause == MoveCause::Drain)
        else {
            if inst.desired == DesiredState::Stopped || inst.desired == DesiredState::Deleted {
                return Ok(()); // a stop or delete in flight: nothing to move
            }
            let mut offline_because = None;
            if inst.kind == InstanceKind::Vm
                && inst.state == InstanceState::Running
                && !drained.drain_offline
            {
                match self.start_live_migration(inst, node, nodes)? {
                    LiveStart::Started | LiveStart::Waiting => return Ok(()),
                    LiveStart::Offline(why) => offline_because = Some(why),
                }
            }
            // Claim the move first (one compare-and-swap); the backup comes after.
            let r = Recovery::drain(node, inst.spec.ha_policy(), now);
            let how = match (inst.kind, offline_because) {
                (InstanceKind::Vm, None) => "stopping it to back up its disk".to_string(),
                (InstanceKind::Vm, Some(why)) => {
                    format!("stopping it to back up its disk (not live: {why})")
                }
                (InstanceKind::Process, _) => "backing up its data directory".to_string(),
            };
            let mut claimed = false;
            self.modify_instance(name, |i| {
                if i.node.as_deref() != Some(node) || i.recovery.is_some() {
                    return Ok(false);
                }
                if i.kind == InstanceKind::Vm {
                    if !i.state.can_become(InstanceState::Stopping) {
                        return Ok(false);
                    }
                    i.state = InstanceState::Stopping;
                    i.desired = DesiredState::Stopped;
                }
                i.reason = Some(format!("node {node} is draining: {how}"));
                i.recovery = Some(r.clone());
                claimed = true;
                Ok(true)
            })?;
            if claimed {
                self.event(
                    "instance_drain_started",
                    "instance",
                    name,
                    format!("node {node} is draining: {how}"),
                );
            }
            return Ok(());
        };
        let Some(backup) = r.backup.clone() else {
            // A process is backed up as it runs (frozen for the copy); a VM once stopped.
            if inst.kind == InstanceKind::Process || inst.state == InstanceState::Stopped {
                let b = self.create_backup(name, Some(format!("{DRAIN_BACKUP_PREFIX}{now}")))?;
                self.modify_instance(name, |i| {
                    let Some(ir) = i
                        .recovery
                        .as_mut()
                        .filter(|x| x.cause == MoveCause::Drain && x.backup.is_none())
                    else {
                        return Ok(false);
                    };
                    ir.backup = Some(b.name.clone());
                    Ok(true)
                })?;
            }
            return Ok(());
        };
        let b = self.get_backup(name, &backup)?;
        let image = format!("{name}-{backup}");
        let mut r = r;
        r.backup_taken_at_ms = Some(b.created_at_ms);
        let failure = match b.state {
            BackupState::Pending => return Ok(()),
            BackupState::Done => match self.image_from_backup(name, &backup, &image) {
                Ok(_) => None,
                Err(e) => Some(format!("backup {backup} unusable: {e}")),
            },
            BackupState::Failed => Some(format!(
                "backup {backup} failed: {}",
                b.reason.clone().unwrap_or_default()
            )),
        };
        match failure {
            None => {
                if self.requeue_off(name, node, Some(&image), r, "is draining")? {
                    self.event(
                        "instance_rescheduled",
                        "instance",
                        name,
                        format!("node {node} is draining: from backup {backup}"),
                    );
                }
            }
            // A VM's disk is never given up: it stays stopped where it is.
            Some(why) if inst.kind == InstanceKind::Vm => {
                self.modify_instance(name, |i| {
                    if !i
                        .recovery
                        .as_ref()
                        .is_some_and(|x| x.cause == MoveCause::Drain)
                    {
                        return Ok(false);
                    }
                    i.recovery = None;
                    i.reason = Some(format!(
                        "drain of {node} could not move it ({why}); it stays stopped there: \
                         start it, or delete it"
                    ));
                    Ok(true)
                })?;
                self.event("drain_failed", "instance", name, why);
            }
            // A process moves anyway, fresh, like `--ha restart`.
            Some(why) => {
                if self.requeue_off(name, node, None, r, "is draining")? {
                    self.event(
                        "instance_rescheduled",
                        "instance",
                        name,
                        format!("node {node} is draining: {why}: starting fresh"),
                    );
                }
            }
        }
        Ok(())
    }
}

/// Takes the automatic backups asked for with `backup_every_secs`, and keeps the newest
/// [`AUTO_BACKUPS_KEPT`] of each instance.
pub async fn backup_loop(cluster: Arc<Cluster>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let c = cluster.clone();
        let res = tokio::task::spawn_blocking(move || backup_pass(&c)).await;
        if let Ok(Err(e)) = res {
            tracing::warn!(error = %e, "automatic backups: pass failed");
        }
    }
}

fn backup_pass(cluster: &Cluster) -> Result<()> {
    let now = now_ms();
    let backups = cluster.list_backups(None)?;
    // A backup whose node never reported (it died, or lost the report) fails after a
    // while, so that nothing waits on it for ever.
    for b in backups.iter().filter(|b| b.state == BackupState::Pending) {
        if now.saturating_sub(b.created_at_ms) > PENDING_BACKUP_TIMEOUT.as_millis() as u64 {
            let node = b.node.clone().unwrap_or_default();
            let reason = format!(
                "no report from node {node} within {} minutes",
                PENDING_BACKUP_TIMEOUT.as_secs() / 60
            );
            let r = nimbus_api::backup::BackupResult {
                ok: false,
                reason: Some(reason),
                size: 0,
                new_bytes: 0,
                new_chunks: 0,
                consistency: None,
            };
            if let Err(e) = cluster.complete_backup(&b.instance, &b.name, &node, r) {
                tracing::warn!(backup = %b.name, error = %e, "cannot fail a stale backup");
            }
        }
    }
    let wanted: Vec<Instance> = cluster
        .all_instances()?
        .into_iter()
        .filter(|i| i.spec.backup_every_secs.is_some() && i.state == InstanceState::Running)
        // A VM is backed up through QMP: wait until its guest is up.
        .filter(|i| i.kind == InstanceKind::Process || i.guest_ready)
        .collect();
    for inst in wanted {
        let every_ms = inst
            .spec
            .backup_every_secs
            .unwrap_or(0)
            .saturating_mul(1000);
        let autos: Vec<_> = backups
            .iter()
            .filter(|b| b.instance == inst.name && b.name.starts_with(AUTO_BACKUP_PREFIX))
            .collect();
        if autos.iter().any(|b| b.state == BackupState::Pending) {
            continue;
        }
        // Keep the newest completed ones; failed ones are only noise (their failure is
        // in the events) and must never push a good backup out.
        let auto = |b: &nimbus_api::Backup| b.name.starts_with(AUTO_BACKUP_PREFIX);
        if autos.iter().any(|b| b.state == BackupState::Failed) {
            cluster.prune_backups_where(&inst.name, 0, |b| {
                auto(b) && b.state == BackupState::Failed
            })?;
        }
        let done = autos
            .iter()
            .filter(|b| b.state == BackupState::Done)
            .count();
        if done > AUTO_BACKUPS_KEPT {
            cluster.prune_backups_where(&inst.name, AUTO_BACKUPS_KEPT, |b| {
                auto(b) && b.state == BackupState::Done
            })?;
        }
        let latest = autos.iter().map(|b| b.created_at_ms).max();
        if latest.is_none_or(|t| now.saturating_sub(t) >= every_ms) {
            match cluster.create_backup(&inst.name, Some(format!("{AUTO_BACKUP_PREFIX}{now}"))) {
                Ok(_) | Err(ServerError::AlreadyExists(_)) => {}
                Err(e) => {
                    tracing::warn!(instance = %inst.name, error = %e, "automatic backup not taken")
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probation_doubles_for_a_flapping_node_and_is_capped() {
        let l = Liveness::new(LivenessConfig {
            probation: Duration::from_secs(5),
            ..Default::default()
        });
        assert!(l.trusted("n1"), "a node never down is trusted");
        l.went_down("n1");
        assert_eq!(l.came_back("n1"), Duration::from_secs(5));
        assert!(!l.trusted("n1"));
        l.went_down("n1");
        assert_eq!(l.came_back("n1"), Duration::from_secs(10));
        l.went_down("n1");
        assert_eq!(l.came_back("n1"), Duration::from_secs(20));
        for _ in 0..20 {
            l.went_down("n1");
        }
        assert_eq!(l.came_back("n1"), MAX_PROBATION);
        assert!(l.trusted("n2"));
    }
}
