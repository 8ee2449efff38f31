//! Live migration of running VMs off draining nodes, with QEMU's own migration and an
//! NBD copy of the disk (no shared storage).
//!
//! 1. The drain picks a target with the scheduler (the VM's resources are reserved
//!    there) among nodes with the same QEMU version and accelerator, and records the
//!    move on the instance (`migration`, the placement's next generation).
//! 2. The target node starts the VM's QEMU waiting for it (`-incoming defer`) with an
//!    empty disk of the same size, exported writable over NBD, and reports where.
//! 3. The source node mirrors the disk to that export (write-blocking, so once in sync
//!    every guest write reaches both), then migrates memory and device state, and
//!    reports the outcome with QEMU's measured downtime.
//! 4. On success the instance is placed on the target in one compare-and-swap (the
//!    source's paused copy is unassigned and quits; it is never resumed). On failure,
//!    or when the target node fails or it takes too long, the target is unassigned and
//!    the VM moves offline instead (stop, back up, restore), as the drain would without
//!    live migration.

use nimbus_api::{
    DesiredState, Instance, InstanceKind, InstanceReport, InstanceState, Migration,
    MigrationReport, Node, NodeState, Recovery,
};
use nimbus_sched::SchedulerConfig;

use crate::cluster::{now_ms, Cluster};
use crate::error::Result;
use crate::metrics::HaLabel;
use crate::reconcile::{request_for, snapshot, NODE_LABEL};

/// How long a live migration may take, from the choice of target to the switch.
const MIGRATION_TIMEOUT_MS: u64 = 180_000;
/// How long an arrived VM (paused on the target) waits for the source's report, which
/// carries QEMU's downtime and normally comes at the same moment, before it is placed
/// on the target without it.
const SOURCE_REPORT_WAIT_MS: u64 = 1_000;

/// Node facts that must match for QEMU to accept a migration between two nodes.
const MIGRATION_FACTS: [&str; 2] = ["qemu_version", "accelerator"];

/// What became of an attempt to start a live migration.
pub(crate) enum LiveStart {
    /// Under way (or claimed by someone else meanwhile).
    Started,
    /// No node has room now: the VM keeps running where it is and the drain waits.
    Waiting,
    /// Not possible (why): the VM is moved offline instead.
    Offline(String),
}

/// A report about a live migration, taken out of the normal report handling.
pub(crate) enum MigrationNews {
    /// From the target: it waits at this endpoint.
    TargetWaiting(nimbus_api::MigrationTarget),
    /// From the target: the guest runs there.
    Arrived,
    /// From either side: it failed.
    Failed(String),
    /// From the source: QEMU completed it.
    Completed(MigrationReport),
}

impl MigrationNews {
    /// Reads what a report from `node` says about migration `m` of an instance placed
    /// at (`at_node`, `at_generation`), if it is about it: a report from the target
    /// (its node and generation), or a source report carrying the outcome.
    pub(crate) fn of(
        (at_node, at_generation): (Option<&str>, u64),
        m: &Migration,
        node: &str,
        r: &InstanceReport,
    ) -> Option<MigrationNews> {
        if node == m.to_node && r.generation == m.generation {
            return match (&r.incoming, r.state) {
                (Some(t), _) => {
                    (m.target.as_ref() != Some(t)).then(|| MigrationNews::TargetWaiting(t.clone()))
                }
                // Paused: arrived and waiting to be placed there; running: placed.
                (None, InstanceState::Paused | InstanceState::Running) => {
                    Some(MigrationNews::Arrived)
                }
                (None, InstanceState::Failed | InstanceState::Stopped) => {
                    Some(MigrationNews::Failed(format!(
                        "the target failed: {}",
                        r.reason.clone().unwrap_or_default()
                    )))
                }
                _ => None,
            };
        }
        if at_node != Some(node) || r.generation != at_generation {
            return None;
        }
        let report = r.migration.as_ref()?;
        if m.target.as_ref().map(|t| &t.uri) != Some(&report.uri) {
            return None; // about an earlier attempt
        }
        Some(if report.completed {
            MigrationNews::Completed(report.clone())
        } else {
            MigrationNews::Failed(report.error.clone().unwrap_or_default())
        })
    }
}

impl Cluster {
    /// Starts moving running VM `inst` off draining `node` live.
    pub(crate) fn start_live_migration(
        &self,
        inst: &Instance,
        node: &str,
        nodes: &[Node],
    ) -> Result<LiveStart> {
        let Some(source) = nodes.iter().find(|n| n.name == node) else {
            return Ok(LiveStart::Offline(format!("node {node} is unknown")));
        };
        if inst.disk_bytes.is_none() && self.may_have_disk(inst) {
            // The target's empty disk must have the size of the source's.
            return Ok(LiveStart::Waiting);
        }
        let compatible = |n: &Node| {
            MIGRATION_FACTS
                .iter()
                .all(|f| n.facts.get(*f) == source.facts.get(*f))
        };
        let others: Vec<Node> = nodes.iter().filter(|n| n.name != node).cloned().collect();
        let same: Vec<Node> = others.iter().filter(|n| compatible(n)).cloned().collect();
        let to = match self.place_elsewhere(inst, &same) {
            Ok(to) => to,
            Err(why) => {
                if self.place_elsewhere(inst, &others).is_ok() {
                    return Ok(LiveStart::Offline(format!(
                        "no node with room runs the same QEMU version and accelerator as {node}"
                    )));
                }
                let reason = format!("node {node} is draining: waiting for room elsewhere: {why}");
                self.modify_instance(&inst.name, |i| {
                    if i.reason.as_deref() == Some(reason.as_str()) || i.migration.is_some() {
                        return Ok(false);
                    }
                    i.reason = Some(reason.clone());
                    Ok(true)
                })?;
                return Ok(LiveStart::Waiting);
            }
        };
        let now = now_ms();
        let migration = Migration {
            to_node: to.clone(),
            generation: inst.generation + 1,
            target: None,
            started_at_ms: now,
            source: None,
            arrived_at_ms: None,
        };
        let recovery = Recovery::drain(node, inst.spec.ha_policy(), now);
        let generation = inst.generation;
        let written = self.modify_instance(&inst.name, |i| {
            if i.node.as_deref() != Some(node)
                || i.generation != generation
                || i.state != InstanceState::Running
                || i.desired != DesiredState::Running
                || i.recovery.is_some()
                || i.migration.is_some()
            {
                return Ok(false);
            }
            i.migration = Some(migration.clone());
            i.recovery = Some(recovery.clone());
            i.reason = Some(format!("node {node} is draining: live-migrating to {to}"));
            Ok(true)
        })?;
        if written.migration.as_ref() == Some(&migration) {
            self.event(
                "live_migration_started",
                "instance",
                &inst.name,
                format!("node {node} is draining: live-migrating to {to}"),
            );
        }
        Ok(LiveStart::Started)
    }

    /// Whether a VM may have a disk (a disk image, a disk size, or a disk to start
    /// from); its node reports the size once it runs.
    fn may_have_disk(&self, inst: &Instance) -> bool {
        let disk_image = inst
            .spec
            .image
            .as_ref()
            .and_then(|n| self.get_image(n).ok())
            .is_some_and(|i| i.kind == nimbus_api::ImageKind::Disk);
        disk_image || inst.spec.disk_mib > 0 || inst.spec.disk_image.is_some()
    }

    /// The node the scheduler would place `inst` on among `nodes`, or why none.
    pub(crate) fn place_elsewhere(
        &self,
        inst: &Instance,
        nodes: &[Node],
    ) -> std::result::Result<String, String> {
        let (infos, _) = snapshot(nodes, &[]);
        let mut req = request_for(inst);
        req.node_selector.remove(NODE_LABEL);
        let plan = nimbus_sched::schedule(infos, vec![req], &SchedulerConfig::default(), now_ms());
        match plan.placements.first() {
            Some(p) => Ok(p.node.clone()),
            None => Err(plan
                .unplaced
                .first()
                .map(|(_, w)| w.reason.clone())
                .unwrap_or_else(|| "no node".into())),
        }
    }

    /// Checks a live migration in flight: it is abandoned when its target node fails,
    /// the VM is stopped meanwhile, or it takes too long.
    pub(crate) fn check_live_migration(&self, inst: &Instance, m: &Migration) -> Result<()> {
        if let Some(t) = m.arrived_at_ms {
            if now_ms().saturating_sub(t) > SOURCE_REPORT_WAIT_MS {
                return self.migration_completed(&inst.name, m);
            }
            return Ok(());
        }
        let target = self.get_node(&m.to_node).map(|n| n.state).ok();
        let why = if inst.desired != DesiredState::Running {
            Some("the VM was stopped".to_string())
        } else if matches!(target, None | Some(NodeState::Down)) {
            Some(format!("the target node {} is down", m.to_node))
        } else if now_ms().saturating_sub(m.started_at_ms) > MIGRATION_TIMEOUT_MS {
            Some(format!(
                "it did not finish within {}s",
                MIGRATION_TIMEOUT_MS / 1000
            ))
        } else {
            None
        };
        match why {
            Some(why) => self.migration_failed(&inst.name, m, &why),
            None => Ok(()),
        }
    }

    /// Applies what a report says about the instance's live migration.
    pub(crate) fn migration_news(
        &self,
        name: &str,
        m: &Migration,
        news: MigrationNews,
    ) -> Result<()> {
        match news {
            MigrationNews::TargetWaiting(t) => {
                self.update_migration(name, m, |cur| cur.target = Some(t.clone()))
            }
            // The target holds the whole VM, paused: placing it there is what lets it
            // run (its assignment loses `incoming`), and what stops the source's copy.
            // Both reports are waited for (they come together), so that the move is
            // recorded with QEMU's downtime.
            MigrationNews::Arrived => {
                let now = now_ms();
                self.update_migration(name, m, |cur| {
                    cur.arrived_at_ms.get_or_insert(now);
                })?;
                self.complete_when_reported(name, m)
            }
            MigrationNews::Completed(report) => {
                self.update_migration(name, m, |cur| cur.source = Some(report.clone()))?;
                self.complete_when_reported(name, m)
            }
            MigrationNews::Failed(why) => self.migration_failed(name, m, &why),
        }
    }

    /// Changes the instance's migration if it still is `m`.
    fn update_migration(
        &self,
        name: &str,
        m: &Migration,
        f: impl Fn(&mut Migration),
    ) -> Result<()> {
        self.modify_instance(name, |i| {
            match i.migration.as_mut().filter(|x| same(x, m)) {
                Some(cur) => {
                    f(cur);
                    Ok(true)
                }
                None => Ok(false),
            }
        })?;
        Ok(())
    }

    /// Places the instance on the target once it has arrived there and the source has
    /// reported (or is not there to report).
    fn complete_when_reported(&self, name: &str, m: &Migration) -> Result<()> {
        let inst = self.get_instance(name)?;
        let Some(cur) = inst.migration.as_ref().filter(|x| same(x, m)) else {
            return Ok(());
        };
        let source_ready = inst
            .node
            .as_deref()
            .and_then(|n| self.get_node(n).ok())
            .is_some_and(|n| matches!(n.state, NodeState::Ready | NodeState::Draining));
        if cur.arrived_at_ms.is_some() && (cur.source.is_some() || !source_ready) {
            return self.migration_completed(name, cur);
        }
        Ok(())
    }

    /// The VM is all on the target: the instance is placed there.
    fn migration_completed(&self, name: &str, m: &Migration) -> Result<()> {
        let mut from = None;
        let mut report = None;
        let inst = self.modify_instance(name, |i| {
            if !i.migration.as_ref().is_some_and(|x| same(x, m)) {
                return Ok(false);
            }
            from = i.node.clone();
            report = i.migration.as_ref().and_then(|x| x.source.clone());
            i.node = Some(m.to_node.clone());
            i.generation = m.generation;
            i.migration = None;
            i.recovery = None;
            i.state = InstanceState::Running;
            // The same guest, booted already: only what belongs to the node goes.
            let (guest_ready, boot_ms) = (i.guest_ready, i.boot_ms);
            i.clear_observed();
            i.guest_ready = guest_ready;
            i.boot_ms = boot_ms;
            if let Some(old) = from.as_deref() {
                // A pin to the node being left cannot hold.
                if i.spec.node_selector.get(NODE_LABEL).map(String::as_str) == Some(old) {
                    i.spec.node_selector.remove(NODE_LABEL);
                }
                i.reason = Some(format!("live-migrated from {old}"));
            }
            Ok(true)
        })?;
        let Some(from) = from.filter(|_| inst.node.as_deref() == Some(m.to_node.as_str())) else {
            return Ok(());
        };
        let elapsed_ms = now_ms().saturating_sub(m.started_at_ms);
        let downtime_ms = report.as_ref().and_then(|r| r.downtime_ms);
        self.metrics
            .recovery_seconds
            .get_or_create(&HaLabel { ha: "drain".into() })
            .observe(downtime_ms.unwrap_or(elapsed_ms) as f64 / 1000.0);
        self.event(
            "instance_moved",
            "instance",
            name,
            format!(
                "live-migrated from {from} to {}: {:.1}s in all (disk copy and memory){}",
                m.to_node,
                report
                    .as_ref()
                    .and_then(|r| r.total_ms)
                    .unwrap_or(elapsed_ms) as f64
                    / 1000.0,
                downtime_ms
                    .map(|d| format!("; QEMU downtime {d} ms, then resumed there once placed"))
                    .unwrap_or_default(),
            ),
        );
        self.schedule_now.notify_one();
        Ok(())
    }

    /// The migration failed or was abandoned: the target is unassigned, and a VM still
    /// being drained moves offline instead (stop, back up, restore).
    pub(crate) fn migration_failed(&self, name: &str, m: &Migration, why: &str) -> Result<()> {
        let inst = self.get_instance(name)?;
        let draining = inst
            .node
            .as_deref()
            .and_then(|n| self.get_node(n).ok())
            .is_some_and(|n| n.state == NodeState::Draining);
        let mut dropped = false;
        let mut offline = false;
        self.modify_instance(name, |i| {
            if !i.migration.as_ref().is_some_and(|x| same(x, m)) {
                return Ok(false);
            }
            dropped = true;
            i.migration = None;
            offline = draining
                && i.kind == InstanceKind::Vm
                && i.desired == DesiredState::Running
                && i.state.can_become(InstanceState::Stopping);
            if offline {
                i.state = InstanceState::Stopping;
                i.desired = DesiredState::Stopped;
                i.reason = Some(format!(
                    "live migration to {} failed ({why}): stopping it to back up its disk",
                    m.to_node
                ));
            } else {
                i.recovery = None;
            }
            Ok(true)
        })?;
        if dropped {
            self.event(
                "live_migration_failed",
                "instance",
                name,
                format!(
                    "live migration to {} failed: {why}{}",
                    m.to_node,
                    if offline {
                        "; moving it offline (stop, back up, restore)"
                    } else {
                        ""
                    }
                ),
            );
            self.schedule_now.notify_one();
        }
        Ok(())
    }
}

/// The same migration (a later one to the same node has another generation).
fn same(a: &Migration, b: &Migration) -> bool {
    a.to_node == b.to_node && a.generation == b.generation
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_api::MigrationTarget;

    fn report(generation: u64, state: &str, extra: serde_json::Value) -> InstanceReport {
        let mut v = serde_json::json!({ "name": "vm", "generation": generation, "state": state });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    fn target(port: u16) -> MigrationTarget {
        MigrationTarget {
            disk: Some(format!("10.0.0.2:{}/vm.4", port + 1)),
            uri: format!("tcp:10.0.0.2:{port}"),
        }
    }

    #[test]
    fn reports_are_read_by_who_sent_them_and_about_which_attempt() {
        let at = (Some("a"), 3);
        let mut m = Migration {
            to_node: "b".into(),
            generation: 4,
            target: None,
            started_at_ms: 0,
            source: None,
            arrived_at_ms: None,
        };
        let waiting = report(
            4,
            "running",
            serde_json::json!({ "incoming": target(40000) }),
        );
        // The target: where it waits (once), then its arrival or failure.
        assert!(matches!(
            MigrationNews::of(at, &m, "b", &waiting),
            Some(MigrationNews::TargetWaiting(t)) if t == target(40000)
        ));
        m.target = Some(target(40000));
        assert!(MigrationNews::of(at, &m, "b", &waiting).is_none());
        assert!(
            MigrationNews::of(at, &m, "b", &report(4, "starting", serde_json::json!({}))).is_none()
        );
        for state in ["paused", "running"] {
            assert!(matches!(
                MigrationNews::of(at, &m, "b", &report(4, state, serde_json::json!({}))),
                Some(MigrationNews::Arrived)
            ));
        }
        assert!(matches!(
            MigrationNews::of(at, &m, "b", &report(4, "failed", serde_json::json!({ "reason": "boom" }))),
            Some(MigrationNews::Failed(why)) if why.contains("boom")
        ));
        // Another node, or an older placement on the target node: not about it.
        assert!(MigrationNews::of(at, &m, "c", &waiting).is_none());
        assert!(
            MigrationNews::of(at, &m, "b", &report(2, "running", serde_json::json!({}))).is_none()
        );
        // The source: its outcome, for this attempt only.
        let outcome = |uri: &str, completed: bool| {
            report(
                3,
                "running",
                serde_json::json!({
                    "migration": { "uri": uri, "completed": completed, "downtime_ms": 12, "error": "refused" }
                }),
            )
        };
        assert!(matches!(
            MigrationNews::of(at, &m, "a", &outcome("tcp:10.0.0.2:40000", true)),
            Some(MigrationNews::Completed(r)) if r.downtime_ms == Some(12)
        ));
        assert!(matches!(
            MigrationNews::of(at, &m, "a", &outcome("tcp:10.0.0.2:40000", false)),
            Some(MigrationNews::Failed(why)) if why == "refused"
        ));
        assert!(MigrationNews::of(at, &m, "a", &outcome("tcp:10.0.0.2:39000", true)).is_none());
        assert!(
            MigrationNews::of(at, &m, "a", &report(3, "running", serde_json::json!({}))).is_none()
        );
    }
}
