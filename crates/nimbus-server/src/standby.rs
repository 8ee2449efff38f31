//! Hot standbys (`ha = hot`): for each running hot instance the scheduler picks a
//! second node (never the instance's own) and reserves the instance's resources
//! there. For a VM that node serves a replica of the disk over NBD and the VM's QEMU
//! mirrors every write to it synchronously (`blockdev-mirror`, copy mode
//! `write-blocking`); once the mirror reports in sync, the standby can take over with
//! no acknowledged write lost. When the primary's node goes down, the instance is
//! placed directly on its standby node (no queueing, its capacity is already held)
//! and a new standby is chosen for it.

use nimbus_api::{
    HaPolicy, Instance, InstanceKind, InstanceState, MoveCause, NodeState, Recovery, Standby,
    StandbyReport,
};

use crate::cluster::{now_ms, Cluster};
use crate::error::Result;
use crate::reconcile::NODE_LABEL;

impl Cluster {
    /// Keeps a standby for every running hot instance. Run by the scheduler loop right
    /// after its placements, never beside them, so the two never plan the same room.
    pub(crate) fn standby_pass(&self) -> Result<()> {
        let instances = self.all_instances()?;
        let hot: Vec<&Instance> = instances
            .iter()
            .filter(|i| i.spec.ha_policy() == HaPolicy::Hot)
            .collect();
        if hot.is_empty() {
            return Ok(());
        }
        let nodes = self.all_nodes_with(&instances)?;
        let state_of = |n: &str| nodes.iter().find(|x| x.name == n).map(|x| x.state);
        for inst in hot {
            let running = matches!(inst.state, InstanceState::Running | InstanceState::Paused)
                && inst.node.is_some();
            match &inst.standby {
                Some(s) => {
                    // A draining node gives its standbys up too.
                    let stale = !running
                        || s.generation != inst.generation
                        || matches!(
                            state_of(&s.node),
                            None | Some(NodeState::Down | NodeState::Draining)
                        );
                    // A node going down takes the standby with it; the primary's own
                    // move (recovery) is what uses the standby, so only drop it here
                    // when the primary is not being recovered from its node.
                    let primary_down = inst
                        .node
                        .as_deref()
                        .is_some_and(|n| state_of(n) == Some(NodeState::Down));
                    if stale && !primary_down {
                        self.drop_standby(&inst.name, s, "the standby is no longer usable")?;
                    }
                }
                None if running => {
                    // VMs need the disk size before a replica can be made.
                    if inst.kind == InstanceKind::Vm && inst.disk_bytes.is_none() {
                        continue;
                    }
                    self.choose_standby(inst, &nodes)?;
                }
                None => {}
            }
        }
        Ok(())
    }

    fn choose_standby(&self, inst: &Instance, nodes: &[nimbus_api::Node]) -> Result<()> {
        let primary = inst.node.clone().unwrap_or_default();
        let others: Vec<nimbus_api::Node> = nodes
            .iter()
            .filter(|n| n.name != primary)
            .cloned()
            .collect();
        let to = match self.place_elsewhere(inst, &others) {
            Ok(to) => to,
            Err(why) => {
                let reason = format!("no standby node: {why}");
                self.modify_instance(&inst.name, |i| {
                    if i.reason.as_deref() == Some(reason.as_str())
                        || i.state != InstanceState::Running
                    {
                        return Ok(false);
                    }
                    i.reason = Some(reason.clone());
                    Ok(true)
                })?;
                return Ok(());
            }
        };
        let standby = Standby {
            node: to.clone(),
            generation: inst.generation,
            endpoint: None,
            // A process has nothing to replicate: the reserved node is ready at once.
            in_sync: inst.kind == InstanceKind::Process,
        };
        let generation = inst.generation;
        let written = self.modify_instance(&inst.name, |i| {
            if i.standby.is_some()
                || i.generation != generation
                || i.node.as_deref() != Some(&primary)
            {
                return Ok(false);
            }
            i.standby = Some(standby.clone());
            if i.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("no standby node"))
            {
                i.reason = None;
            }
            Ok(true)
        })?;
        if written.standby.as_ref() == Some(&standby) {
            self.event(
                "standby_assigned",
                "instance",
                &inst.name,
                format!(
                    "standby on {to} (capacity reserved{})",
                    if inst.kind == InstanceKind::Vm {
                        "; its replica of the disk is being synchronised"
                    } else {
                        ""
                    }
                ),
            );
            self.schedule_now.notify_one();
        }
        Ok(())
    }

    fn drop_standby(&self, name: &str, s: &Standby, why: &str) -> Result<()> {
        let gone = s.clone();
        let inst = self.modify_instance(name, |i| {
            if i.standby.as_ref() != Some(&gone) {
                return Ok(false);
            }
            i.standby = None;
            Ok(true)
        })?;
        if inst.standby.is_none() {
            self.event(
                "standby_released",
                "instance",
                name,
                format!("standby on {}: {why}", gone.node),
            );
        }
        Ok(())
    }

    /// A node reports it serves a replica: record where.
    pub fn standby_serving(&self, node: &str, r: &StandbyReport) -> Result<()> {
        self.modify_instance(&r.instance, |i| {
            let Some(s) = i.standby.as_mut() else {
                return Ok(false);
            };
            if s.node != node
                || s.generation != r.generation
                || s.endpoint.as_deref() == Some(r.endpoint.as_str())
            {
                return Ok(false);
            }
            s.endpoint = Some(r.endpoint.clone());
            s.in_sync = false;
            Ok(true)
        })
        .map(drop)
        .or_else(|e| match e {
            crate::error::ServerError::NotFound { .. } => Ok(()),
            e => Err(e),
        })
    }

    /// Hot recovery: moves an instance of down node `node` straight onto its standby
    /// node when the standby can take over. `Err(why)` when it cannot (no standby,
    /// replica not in sync, standby node down): the caller falls back to cold recovery.
    pub(crate) fn take_over(
        &self,
        name: &str,
        node: &str,
        failed_at_ms: u64,
    ) -> Result<std::result::Result<(), String>> {
        let inst = self.get_instance(name)?;
        let Some(s) = inst.standby.clone() else {
            return Ok(Err("no standby yet".into()));
        };
        // A suspect standby node is still alive enough: its replica is all there is.
        let standby_state = self.get_node(&s.node).map(|n| n.state).ok();
        if matches!(standby_state, None | Some(NodeState::Down)) {
            return Ok(Err(format!("the standby node {} is down too", s.node)));
        }
        if !s.in_sync {
            return Ok(Err(format!("the replica on {} was not in sync", s.node)));
        }
        let recovery = Recovery {
            cause: MoveCause::NodeDown,
            from_node: node.to_string(),
            policy: HaPolicy::Hot,
            failed_at_ms,
            detected_at_ms: now_ms(),
            from_replica: inst.kind == InstanceKind::Vm,
            backup: None,
            backup_taken_at_ms: None,
        };
        let moved = self.modify_instance(name, |i| {
            if i.node.as_deref() != Some(node)
                || i.standby.as_ref() != Some(&s)
                || !i.state.can_become(InstanceState::Scheduled)
            {
                return Ok(false);
            }
            i.state = InstanceState::Scheduled;
            i.desired = nimbus_api::DesiredState::Running;
            i.node = Some(s.node.clone());
            // A pin to the failed node (e.g. from a restore with --node) cannot hold.
            if i.spec.node_selector.get(NODE_LABEL).map(String::as_str) == Some(node) {
                i.spec.node_selector.remove(NODE_LABEL);
            }
            i.generation += 1;
            i.standby = None;
            i.clear_observed();
            i.reason = Some(format!(
                "node {node} is down: taking over on standby {}",
                s.node
            ));
            i.recovery = Some(recovery.clone());
            Ok(true)
        })?;
        if moved.node.as_deref() != Some(s.node.as_str()) {
            return Ok(Err("moved meanwhile".into()));
        }
        self.event(
            "instance_rescheduled",
            "instance",
            name,
            format!(
                "node {node} down (detected {:.1}s after its last heartbeat); ha hot: taking \
                 over on standby {}{}",
                recovery.detected_at_ms.saturating_sub(failed_at_ms) as f64 / 1000.0,
                s.node,
                if recovery.from_replica {
                    " from its in-sync replica"
                } else {
                    ""
                }
            ),
        );
        self.schedule_now.notify_one();
        Ok(Ok(()))
    }
}
