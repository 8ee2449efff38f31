//! Domain operations on instances and nodes: every change of desired or observed state
//! goes through here, checked by the lifecycle state machine and written to the store
//! with compare-and-swap before anyone is told it happened.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nimbus_api::{
    validate_name, Assignment, CreateInstance, DesiredState, Event, Heartbeat, Instance,
    InstanceReport, InstanceState, Node, NodeState, RegisterNode, Resources, StandbyAssignment,
};
use nimbus_store::{Store, StoreError, TypedStore};
use tokio::sync::Notify;

use crate::error::{Result, ServerError};

pub const INSTANCE: &str = "instance";
pub const NODE: &str = "node";
pub const IMAGE: &str = "image";
/// Page size used when the server scans a whole kind.
const SCAN_PAGE: usize = 1000;
/// Compare-and-swap retries before giving up with a conflict.
const CAS_RETRIES: usize = 16;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Live usage numbers reported by agents; soft state, rebuilt from heartbeats.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub memory_bytes: u64,
    pub cpu_usage_ns: u64,
}

/// Shared handle to the cluster state.
pub struct Cluster {
    pub store: Arc<dyn Store>,
    /// Wakes the scheduler loop when something may be placeable.
    pub schedule_now: Notify,
    /// Last heartbeat of each node as seen by this server process. Soft state: after a
    /// restart every node gets a full timeout of grace before it can be declared down.
    pub heartbeats: Mutex<HashMap<String, Instant>>,
    pub usage: Mutex<HashMap<String, Usage>>,
    /// The last report applied per instance: an identical report needs no store read.
    /// Soft state; empty after a restart, so the first heartbeat applies everything.
    last_reports: Mutex<HashMap<String, InstanceReport>>,
    pub logs: crate::logs::LogStore,
    pub images: crate::images::ImageFiles,
    /// The cluster's chunk store: disk images and backups, deduplicated.
    pub chunks: Arc<nimbus_image::ImageStore>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Node failure detection settings and per-node probation (see `recovery`).
    pub liveness: crate::recovery::Liveness,
}

impl Cluster {
    pub fn new(
        store: Arc<dyn Store>,
        logs: crate::logs::LogStore,
        images: crate::images::ImageFiles,
        chunks: Arc<nimbus_image::ImageStore>,
        metrics: Arc<crate::metrics::Metrics>,
        liveness: crate::recovery::Liveness,
    ) -> Self {
        Cluster {
            store,
            logs,
            images,
            chunks,
            metrics,
            liveness,
            schedule_now: Notify::new(),
            heartbeats: Mutex::new(HashMap::new()),
            usage: Mutex::new(HashMap::new()),
            last_reports: Mutex::new(HashMap::new()),
        }
    }

    /// Appends an event to the durable log. Failure to log never fails the operation.
    pub fn event(&self, kind: &str, object_kind: &str, object: &str, message: impl Into<String>) {
        let ev = Event {
            seq: 0,
            at_ms: now_ms(),
            kind: kind.into(),
            object_kind: object_kind.into(),
            object: object.into(),
            message: message.into(),
        };
        match serde_json::to_string(&ev) {
            Ok(s) => {
                if let Err(e) = self.store.append_event(&s) {
                    tracing::warn!(error = %e, "could not append event");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not encode event"),
        }
    }

    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.store
            .events_after(after, limit)?
            .into_iter()
            .map(|r| {
                let mut ev: Event = serde_json::from_str(&r.value)
                    .map_err(|e| ServerError::Internal(format!("event {}: {e}", r.seq)))?;
                ev.seq = r.seq;
                Ok(ev)
            })
            .collect()
    }

    // ---- reading -------------------------------------------------------------------

    pub fn get_instance(&self, name: &str) -> Result<Instance> {
        self.store
            .get_typed::<Instance>(INSTANCE, name)?
            .map(|(mut i, rev)| {
                i.revision = rev;
                i
            })
            .ok_or_else(|| ServerError::NotFound {
                kind: "instance",
                name: name.to_string(),
            })
    }

    /// Reads one page of instances in name order.
    pub fn instance_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<Instance>> {
        Ok(self
            .store
            .list_typed::<Instance>(INSTANCE, after, limit)?
            .into_iter()
            .map(|(mut i, rev)| {
                i.revision = rev;
                i
            })
            .collect())
    }

    /// Reads every instance.
    pub fn all_instances(&self) -> Result<Vec<Instance>> {
        let mut out = Vec::new();
        loop {
            let page =
                self.instance_page(out.last().map(|i: &Instance| i.name.as_str()), SCAN_PAGE)?;
            let done = page.len() < SCAN_PAGE;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    pub fn get_node(&self, name: &str) -> Result<Node> {
        self.store
            .get_typed::<Node>(NODE, name)?
            .map(|(mut n, rev)| {
                n.revision = rev;
                n
            })
            .ok_or_else(|| ServerError::NotFound {
                kind: "node",
                name: name.to_string(),
            })
    }

    /// Reads every node, with `allocated` and `instances` computed from `instances`.
    pub fn all_nodes_with(&self, instances: &[Instance]) -> Result<Vec<Node>> {
        let mut nodes: Vec<Node> = Vec::new();
        loop {
            let page = self.store.list_typed::<Node>(
                NODE,
                nodes.last().map(|n| n.name.as_str()),
                SCAN_PAGE,
            )?;
            let done = page.len() < SCAN_PAGE;
            nodes.extend(page.into_iter().map(|(mut n, rev)| {
                n.revision = rev;
                n
            }));
            if done {
                break;
            }
        }
        {
            // Heartbeat times are soft state: this server's own observations.
            let seen = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
            let now = now_ms();
            for n in &mut nodes {
                if let Some(t) = seen.get(&n.name) {
                    n.last_heartbeat_ms = now.saturating_sub(t.elapsed().as_millis() as u64);
                }
            }
        }
        let index: HashMap<String, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        for inst in instances.iter().filter(|i| i.holds_resources()) {
            if let Some(&ni) = inst.node.as_ref().and_then(|n| index.get(n)) {
                let node = &mut nodes[ni];
                node.allocated = node.allocated.saturating_add(Resources::from(&inst.spec));
                node.instances += 1;
            }
            // A hot standby reserves the same resources on its node, so a takeover
            // never waits for room; so does the target of a live migration.
            let elsewhere = [
                inst.standby.as_ref().map(|s| &s.node),
                inst.migration.as_ref().map(|m| &m.to_node),
            ];
            for &ni in elsewhere.into_iter().flatten().filter_map(|n| index.get(n)) {
                let node = &mut nodes[ni];
                node.allocated = node.allocated.saturating_add(Resources::from(&inst.spec));
            }
        }
        Ok(nodes)
    }

    // ---- compare-and-swap helper ---------------------------------------------------

    /// Reads an instance, applies `f`, writes it back if `f` returned true; retries on
    /// a concurrent write. Returns the instance as written (or as read, when unchanged).
    pub fn modify_instance(
        &self,
        name: &str,
        mut f: impl FnMut(&mut Instance) -> Result<bool>,
    ) -> Result<Instance> {
        for _ in 0..CAS_RETRIES {
            let mut inst = self.get_instance(name)?;
            let rev = inst.revision;
            if !f(&mut inst)? {
                return Ok(inst);
            }
            inst.updated_at_ms = now_ms();
            match self.store.update_typed(INSTANCE, name, &inst, rev) {
                Ok(new_rev) => {
                    inst.revision = new_rev;
                    self.forget_report(name);
                    return Ok(inst);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServerError::Conflict(format!(
            "instance {name:?} is being changed by many writers; retry"
        )))
    }

    // ---- user actions --------------------------------------------------------------

    /// Creates an instance; idempotent for an identical spec. Returns (instance, created).
    pub fn create_instance(&self, req: CreateInstance) -> Result<(Instance, bool)> {
        validate_name("instance", &req.name).map_err(ServerError::InvalidRequest)?;
        req.spec.validate().map_err(ServerError::InvalidRequest)?;
        if let Ok(existing) = self.get_instance(&req.name) {
            if existing.spec == req.spec {
                return Ok((existing, false));
            }
            return Err(ServerError::AlreadyExists(format!(
                "instance {:?} already exists with a different spec; delete it first or choose \
                 another name",
                req.name
            )));
        }
        self.check_disk_image(&req)?;
        if req.spec.kind == nimbus_api::InstanceKind::Vm {
            self.check_vm(&req)?;
        }
        self.check_ever_fits(&req)?;
        let now = now_ms();
        let mut inst = Instance {
            name: req.name.clone(),
            kind: req.spec.kind,
            spec: req.spec,
            state: InstanceState::Pending,
            desired: DesiredState::Running,
            node: None,
            generation: 0,
            restart_nonce: 0,
            pid: None,
            exit_code: None,
            reason: Some("waiting for the scheduler".into()),
            restarts: 0,
            will_restart: false,
            accelerator: None,
            endpoints: vec![],
            guest_ready: false,
            boot_ms: None,
            queue_seq: self.store.next_sequence("queue")?,
            created_at_ms: now,
            queued_at_ms: now,
            updated_at_ms: now,
            recovery: None,
            standby: None,
            migration: None,
            disk_bytes: None,
            revision: 0,
        };
        match self.store.create_typed(INSTANCE, &inst.name, &inst) {
            Ok(rev) => inst.revision = rev,
            Err(StoreError::AlreadyExists { .. }) => {
                // Lost a race with an identical create: answer like the winner would.
                let existing = self.get_instance(&inst.name)?;
                if existing.spec == inst.spec {
                    return Ok((existing, false));
                }
                return Err(ServerError::AlreadyExists(format!(
                    "instance {:?} already exists with a different spec",
                    inst.name
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.event(
            "instance_created",
            "instance",
            &inst.name,
            format!(
                "{} cpu, {} memory",
                nimbus_api::units::format_cpu(inst.spec.cpu_millis),
                nimbus_api::units::format_mib(inst.spec.memory_mib)
            ),
        );
        self.schedule_now.notify_one();
        Ok((inst, true))
    }

    /// Rejects a request no registered node could ever hold, even empty.
    fn check_ever_fits(&self, req: &CreateInstance) -> Result<()> {
        let nodes = self.all_nodes_with(&[])?;
        if nodes.is_empty() {
            return Ok(());
        }
        let need = Resources::from(&req.spec);
        if nodes.iter().any(|n| n.capacity.fits(need)) {
            return Ok(());
        }
        let max_cpu = nodes
            .iter()
            .map(|n| n.capacity.cpu_millis)
            .max()
            .unwrap_or(0);
        let max_mem = nodes
            .iter()
            .map(|n| n.capacity.memory_mib)
            .max()
            .unwrap_or(0);
        Err(ServerError::Unsatisfiable(format!(
            "instance {:?} asks for {} cpu and {} memory, but the largest node has {} cpu and {} \
             memory: request less or add a bigger node",
            req.name,
            nimbus_api::units::format_cpu(need.cpu_millis),
            nimbus_api::units::format_mib(need.memory_mib),
            nimbus_api::units::format_cpu(max_cpu),
            nimbus_api::units::format_mib(max_mem),
        )))
    }

    fn refuse(inst: &Instance, action: &str, why: &str) -> ServerError {
        ServerError::InvalidState(format!(
            "cannot {action} instance {:?}: it is {}{why}",
            inst.name, inst.state
        ))
    }

    /// Asks an instance to stop. Pending instances stop at once; placed ones go through
    /// `stopping` until their node confirms.
    pub fn stop_instance(&self, name: &str) -> Result<Instance> {
        let inst = self.modify_instance(name, |inst| {
            use InstanceState::*;
            match inst.state {
                Stopped | Stopping | Deleted => {
                    return Err(Self::refuse(inst, "stop", " already"));
                }
                // A lost instance's node is down: nothing to wait for. If the node
                // comes back, its agent stops the instance (it is no longer to run).
                Pending | Lost => {
                    inst.state = inst.state.transition(Stopped).map_err(internal)?;
                    inst.reason = Some("stopped by request".into());
                }
                Failed if !inst.will_restart => {
                    return Err(Self::refuse(inst, "stop", "; start or delete it instead"));
                }
                _ => {
                    inst.state = inst.state.transition(Stopping).map_err(internal)?;
                    inst.reason = Some("stop requested".into());
                }
            }
            inst.desired = DesiredState::Stopped;
            Ok(true)
        })?;
        self.event("instance_stop_requested", "instance", name, "");
        Ok(inst)
    }

    /// Starts a stopped or failed instance again: it goes back to the queue.
    pub fn start_instance(&self, name: &str) -> Result<Instance> {
        let inst = self.modify_instance(name, |inst| {
            use InstanceState::*;
            match inst.state {
                Stopped => {}
                Failed if !inst.will_restart => {}
                _ => {
                    return Err(Self::refuse(
                        inst,
                        "start",
                        "; only stopped or failed instances can be started",
                    ))
                }
            }
            inst.state = inst.state.transition(Pending).map_err(internal)?;
            inst.desired = DesiredState::Running;
            if inst.home_node().is_none() {
                inst.node = None;
            }
            inst.clear_observed();
            inst.reason = Some("waiting for the scheduler".into());
            inst.queued_at_ms = now_ms();
            Ok(true)
        })?;
        self.event("instance_start_requested", "instance", name, "");
        self.schedule_now.notify_one();
        Ok(inst)
    }

    /// Restarts a running instance in place (its node stops and starts the process),
    /// or starts a stopped one.
    pub fn restart_instance(&self, name: &str) -> Result<Instance> {
        let current = self.get_instance(name)?;
        if matches!(current.state, InstanceState::Stopped)
            || (current.state == InstanceState::Failed && !current.will_restart)
        {
            return self.start_instance(name);
        }
        let inst = self.modify_instance(name, |inst| {
            use InstanceState::*;
            match inst.state {
                Scheduled | Starting | Running | Paused | Failed => {}
                _ => {
                    return Err(Self::refuse(
                        inst,
                        "restart",
                        "; wait until it is running, stopped or failed",
                    ))
                }
            }
            inst.restart_nonce += 1;
            Ok(true)
        })?;
        self.event("instance_restart_requested", "instance", name, "");
        Ok(inst)
    }

    /// Deletes an instance. One that runs is stopped by its node first and removed
    /// when the node confirms; one that holds nothing is removed at once.
    pub fn delete_instance(&self, name: &str) -> Result<Instance> {
        for _ in 0..CAS_RETRIES {
            let mut inst = self.get_instance(name)?;
            // A lost instance's node is down and cannot confirm; it goes at once (the
            // node's agent stops it if the node comes back).
            let wait_for_node = (inst.holds_resources() && inst.state != InstanceState::Lost)
                || inst.state == InstanceState::Stopping;
            if wait_for_node {
                if inst.desired == DesiredState::Deleted {
                    return Ok(inst);
                }
                let rev = inst.revision;
                inst.desired = DesiredState::Deleted;
                if inst.state != InstanceState::Stopping {
                    inst.state = inst
                        .state
                        .transition(InstanceState::Stopping)
                        .map_err(internal)?;
                }
                inst.reason = Some("delete requested".into());
                inst.updated_at_ms = now_ms();
                match self.store.update_typed(INSTANCE, name, &inst, rev) {
                    Ok(r) => {
                        inst.revision = r;
                        self.event("instance_delete_requested", "instance", name, "");
                        return Ok(inst);
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            match self.store.delete(INSTANCE, name, inst.revision) {
                Ok(_) => {
                    self.finish_delete(&inst);
                    inst.state = InstanceState::Deleted;
                    inst.desired = DesiredState::Deleted;
                    return Ok(inst);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServerError::Conflict(format!(
            "instance {name:?} is being changed by many writers; retry"
        )))
    }

    /// Drops the cached report of an instance whose stored state changed by other means.
    pub fn forget_report(&self, name: &str) {
        self.last_reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    pub(crate) fn finish_delete(&self, inst: &Instance) {
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&inst.name);
        self.logs.remove(&inst.name);
        self.event("instance_deleted", "instance", &inst.name, "");
        self.schedule_now.notify_one();
    }

    /// Pauses a running instance (VMs: QMP `stop`; processes: the cgroup freezer); its
    /// node confirms with state `paused`.
    pub fn pause_instance(&self, name: &str) -> Result<Instance> {
        let inst = self.modify_instance(name, |inst| {
            if inst.state != InstanceState::Running || inst.desired != DesiredState::Running {
                return Err(Self::refuse(
                    inst,
                    "pause",
                    "; only running instances can be paused",
                ));
            }
            inst.desired = DesiredState::Paused;
            Ok(true)
        })?;
        self.event("instance_pause_requested", "instance", name, "");
        Ok(inst)
    }

    /// Resumes a paused VM.
    pub fn resume_instance(&self, name: &str) -> Result<Instance> {
        let inst = self.modify_instance(name, |inst| {
            if inst.desired != DesiredState::Paused {
                return Err(Self::refuse(
                    inst,
                    "resume",
                    "; only paused VMs can be resumed",
                ));
            }
            inst.desired = DesiredState::Running;
            Ok(true)
        })?;
        self.event("instance_resume_requested", "instance", name, "");
        Ok(inst)
    }

    /// The image the instance's storage starts from exists and suits its kind: a disk
    /// image for a VM, an archive (a restored process backup) for a process.
    fn check_disk_image(&self, req: &CreateInstance) -> Result<()> {
        let Some(d) = &req.spec.disk_image else {
            return Ok(());
        };
        let wanted = match req.spec.kind {
            nimbus_api::InstanceKind::Vm => nimbus_api::ImageKind::Disk,
            nimbus_api::InstanceKind::Process => nimbus_api::ImageKind::Archive,
        };
        match self.get_image(d) {
            Ok(i) if i.kind == wanted => Ok(()),
            Ok(i) => Err(ServerError::InvalidRequest(format!(
                "image {d:?} is a {:?} image; a {:?} starts from a {wanted:?} image",
                i.kind, req.spec.kind
            ))),
            Err(_) => Err(ServerError::InvalidRequest(format!(
                "image {d:?} not found (see `nimbus image list`)"
            ))),
        }
    }

    /// VM checks that need cluster state: the image exists, host ports are free.
    fn check_vm(&self, req: &CreateInstance) -> Result<()> {
        if let Some(image) = &req.spec.image {
            match self.get_image(image) {
                Err(_) => {
                    return Err(ServerError::InvalidRequest(format!(
                        "image {image:?} not found: build it with `nimbus image build tiny`, \
                         import one with `nimbus image import NAME FILE`, or list them with \
                         `nimbus image list`"
                    )))
                }
                Ok(i) if i.kind == nimbus_api::ImageKind::Archive => {
                    return Err(ServerError::InvalidRequest(format!(
                        "image {image:?} is an archive of a process's data directory; a VM \
                         boots a kernel or disk image"
                    )))
                }
                Ok(i)
                    if i.kind == nimbus_api::ImageKind::Kernel
                        && req.spec.ha_policy() == nimbus_api::HaPolicy::Hot
                        && req.spec.disk_mib == 0
                        && req.spec.disk_image.is_none() =>
                {
                    return Err(ServerError::InvalidRequest(format!(
                        "--ha hot replicates the VM's disk, and image {image:?} boots a kernel \
                         with no disk: add --disk-size"
                    )))
                }
                Ok(_) => {}
            }
        }
        let wanted: Vec<u16> = req.spec.ports.iter().filter_map(|p| p.host).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        for other in self.all_instances()? {
            if other.name == req.name
                || !(other.holds_resources() || other.state == InstanceState::Pending)
            {
                continue;
            }
            for p in other.spec.ports.iter().filter_map(|p| p.host) {
                if wanted.contains(&p) {
                    return Err(ServerError::AlreadyExists(format!(
                        "host port {p} is already forwarded to instance {:?}: pick another \
                         port or leave the host port out (--port {}) to get a free one",
                        other.name,
                        req.spec
                            .ports
                            .iter()
                            .find(|x| x.host == Some(p))
                            .map(|x| x.guest)
                            .unwrap_or(0)
                    )));
                }
            }
        }
        Ok(())
    }

    // ---- images --------------------------------------------------------------------

    pub fn get_image(&self, name: &str) -> Result<nimbus_api::Image> {
        self.store
            .get_typed::<nimbus_api::Image>(IMAGE, name)?
            .map(|(mut i, rev)| {
                i.revision = rev;
                i
            })
            .ok_or_else(|| ServerError::NotFound {
                kind: "image",
                name: name.to_string(),
            })
    }

    pub fn all_images(&self) -> Result<Vec<nimbus_api::Image>> {
        Ok(self
            .store
            .list_typed::<nimbus_api::Image>(IMAGE, None, usize::MAX >> 1)?
            .into_iter()
            .map(|(mut i, rev)| {
                i.revision = rev;
                i
            })
            .collect())
    }

    /// Checks uploaded files and records the image.
    pub fn register_image(&self, req: nimbus_api::RegisterImage) -> Result<nimbus_api::Image> {
        validate_name("image", &req.name).map_err(ServerError::InvalidRequest)?;
        if self.get_image(&req.name).is_ok() {
            return Err(ServerError::AlreadyExists(format!(
                "image {:?} already exists; delete it first to replace it",
                req.name
            )));
        }
        let mut img =
            match self
                .images
                .register(&req.name, req.kind, req.cmdline.clone(), &self.chunks)
            {
                Ok(i) => i,
                Err(e) => {
                    self.images.discard_upload(&req.name);
                    return Err(e);
                }
            };
        match self.store.create_typed(IMAGE, &img.name, &img) {
            Ok(rev) => img.revision = rev,
            Err(e) => {
                self.images.remove(&img.name);
                return Err(e.into());
            }
        }
        self.event(
            "image_registered",
            "image",
            &img.name,
            format!("{:?}, {} bytes", img.kind, img.size()).to_lowercase(),
        );
        Ok(img)
    }

    /// Deletes an image unless an instance that still runs (or will) uses it.
    pub fn delete_image(&self, name: &str) -> Result<nimbus_api::Image> {
        let img = self.get_image(name)?;
        if let Some(user) = self.all_instances()?.into_iter().find(|i| {
            i.spec.image.as_deref() == Some(name)
                && i.state != InstanceState::Stopped
                && i.state != InstanceState::Failed
        }) {
            return Err(ServerError::InvalidState(format!(
                "image {name:?} is used by instance {:?}; stop or delete it first",
                user.name
            )));
        }
        self.store.delete(IMAGE, name, img.revision)?;
        self.images.remove(name);
        if img.kind.in_chunk_store() {
            let _ = self.chunks.delete(&nimbus_image::ManifestName::image(name));
        }
        self.event("image_deleted", "image", name, "");
        Ok(img)
    }

    // ---- nodes and agents ----------------------------------------------------------

    /// Registers a node or refreshes its registration (agents call this at start).
    pub fn register_node(&self, req: RegisterNode) -> Result<Node> {
        validate_name("node", &req.name).map_err(ServerError::InvalidRequest)?;
        if req.capacity.cpu_millis == 0 || req.capacity.memory_mib == 0 {
            return Err(ServerError::InvalidRequest(
                "node capacity must have at least 1 millicore and 1 MiB of memory".into(),
            ));
        }
        let now = now_ms();
        for _ in 0..CAS_RETRIES {
            let existing = self.store.get_typed::<Node>(NODE, &req.name)?;
            let (mut node, rev) = match existing {
                Some((n, rev)) => (n, Some(rev)),
                None => (
                    Node {
                        name: req.name.clone(),
                        address: String::new(),
                        capacity: req.capacity,
                        allocated: Resources::default(),
                        labels: Default::default(),
                        drivers: vec![],
                        facts: Default::default(),
                        state: NodeState::Ready,
                        last_heartbeat_ms: now,
                        registered_at_ms: now,
                        drain_offline: false,
                        instances: 0,
                        revision: 0,
                    },
                    None,
                ),
            };
            let was_down = node.state == NodeState::Down;
            let mut probation = None;
            node.address = req.address.clone();
            node.capacity = req.capacity;
            node.labels = req.labels.clone();
            node.drivers = req.drivers.clone();
            node.facts = req.facts.clone();
            node.last_heartbeat_ms = now;
            if was_down {
                // Back after being down: not trusted with new instances at once.
                node.state = NodeState::Suspect;
                probation = Some(self.liveness.came_back(&node.name));
            }
            let res = match rev {
                Some(rev) => self.store.update_typed(NODE, &node.name, &node, rev),
                None => self.store.create_typed(NODE, &node.name, &node),
            };
            match res {
                Ok(r) => {
                    node.revision = r;
                    self.touch(&node.name);
                    if let Some(p) = probation {
                        self.event(
                            "node_suspect",
                            "node",
                            &node.name,
                            format!(
                                "registered again after being down; ready after {:.0}s of \
                                 steady heartbeats",
                                p.as_secs_f64()
                            ),
                        );
                    }
                    self.event(
                        "node_registered",
                        "node",
                        &node.name,
                        format!(
                            "{} cpu, {} memory, drivers {}",
                            nimbus_api::units::format_cpu(node.capacity.cpu_millis),
                            nimbus_api::units::format_mib(node.capacity.memory_mib),
                            node.drivers.join(",")
                        ),
                    );
                    self.schedule_now.notify_one();
                    return Ok(node);
                }
                Err(StoreError::Conflict { .. }) | Err(StoreError::AlreadyExists { .. }) => {
                    continue
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServerError::Conflict(
            "node registration raced; retry".into(),
        ))
    }

    fn touch(&self, node: &str) {
        self.heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), Instant::now());
    }

    /// Records a heartbeat and applies the observed status of each instance.
    pub fn heartbeat(&self, node_name: &str, hb: Heartbeat) -> Result<()> {
        let node = self.get_node(node_name)?;
        self.touch(node_name);
        match node.state {
            NodeState::Down => {
                // Hysteresis: a node that was down waits out a probation (longer each
                // time it flaps) before it takes new instances again.
                let p = self.liveness.came_back(node_name);
                self.set_node_state(
                    node_name,
                    NodeState::Suspect,
                    &format!(
                        "heartbeats resumed after being down; ready after {:.0}s of steady \
                         heartbeats",
                        p.as_secs_f64()
                    ),
                )?;
            }
            NodeState::Suspect if self.liveness.trusted(node_name) => {
                self.set_node_state(node_name, NodeState::Ready, "heartbeats steady")?;
            }
            _ => {}
        }
        for s in &hb.standbys {
            if let Err(e) = self.standby_serving(node_name, s) {
                tracing::warn!(instance = %s.instance, error = %e, "standby report not applied");
            }
        }
        for report in hb.instances {
            {
                let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
                if let (Some(m), Some(c)) = (report.memory_bytes, report.cpu_usage_ns) {
                    usage.insert(
                        report.name.clone(),
                        Usage {
                            memory_bytes: m,
                            cpu_usage_ns: c,
                        },
                    );
                } else {
                    usage.remove(&report.name);
                }
            }
            let mut seen = InstanceReport {
                memory_bytes: None,
                cpu_usage_ns: None,
                ..report.clone()
            };
            seen.name = format!("{node_name}/{}", report.name);
            if self
                .last_reports
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&report.name)
                == Some(&seen)
            {
                continue;
            }
            match self.apply_report(node_name, &report) {
                Ok(()) => {
                    self.last_reports
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(report.name.clone(), seen);
                }
                Err(ServerError::NotFound { .. }) => {}
                Err(e) => tracing::warn!(instance = %report.name, error = %e, "report not applied"),
            }
        }
        Ok(())
    }

    /// Applies one agent report to the instance it is about, if it is current.
    fn apply_report(&self, node: &str, r: &InstanceReport) -> Result<()> {
        let mut remove = None;
        let mut changed_to = None;
        let mut recovered = None;
        let mut mirror_change = None;
        let mut migration_news = None;
        let inst = self.modify_instance(&r.name, |inst| {
            // A live migration's target, or its source with the outcome.
            if let Some(m) = &inst.migration {
                let at = (inst.node.as_deref(), inst.generation);
                if let Some(news) = crate::migration::MigrationNews::of(at, m, node, r) {
                    migration_news = Some((m.clone(), news));
                    return Ok(false);
                }
            }
            // Reports about an older placement, or from another node, are stale.
            if inst.node.as_deref() != Some(node) || inst.generation != r.generation {
                return Ok(false);
            }
            if !inst.holds_resources() && inst.state != InstanceState::Stopping {
                return Ok(false);
            }
            let next = r.state;
            if inst.state != next && !inst.state.can_become(next) {
                // e.g. a `running` report racing a stop request: the request wins.
                return Ok(false);
            }
            if inst.desired == DesiredState::Deleted
                && matches!(next, InstanceState::Stopped | InstanceState::Failed)
            {
                remove = Some(inst.revision);
                return Ok(false);
            }
            if next == InstanceState::Paused && inst.desired != DesiredState::Paused {
                return Ok(false);
            }
            let before = inst.clone();
            inst.state = next;
            inst.pid = r.pid;
            inst.exit_code = r.exit_code;
            inst.reason = r.reason.clone();
            inst.restarts = r.restarts;
            inst.will_restart = r.will_restart;
            inst.accelerator = r.accelerator.clone();
            inst.endpoints = r.endpoints.clone();
            inst.guest_ready = r.guest_ready;
            inst.boot_ms = r.boot_ms;
            if r.disk_bytes.is_some() {
                inst.disk_bytes = r.disk_bytes;
            }
            if let Some(s) = inst.standby.as_mut() {
                let in_sync = r
                    .mirror
                    .as_ref()
                    .is_some_and(|m| m.in_sync && Some(&m.endpoint) == s.endpoint.as_ref())
                    || inst.kind == nimbus_api::InstanceKind::Process;
                if in_sync != s.in_sync {
                    s.in_sync = in_sync;
                    mirror_change = Some((
                        in_sync,
                        s.node.clone(),
                        r.mirror.as_ref().and_then(|m| m.error.clone()),
                    ));
                }
            }
            if inst.state == InstanceState::Stopped && inst.desired == DesiredState::Running {
                // Exited on its own and will not be restarted.
                inst.will_restart = false;
            }
            if before.state != inst.state {
                changed_to = Some(inst.state);
            }
            // Running again after a move (a drain also reports the old copy running
            // until it is moved: only a change to running counts).
            if inst.state == InstanceState::Running && before.state != InstanceState::Running {
                recovered = inst.recovery.take();
            }
            Ok(before != *inst)
        })?;
        if let Some((m, news)) = migration_news {
            return self.migration_news(&r.name, &m, news);
        }
        if let Some(rev) = remove {
            match self.store.delete(INSTANCE, &r.name, rev) {
                Ok(_) => self.finish_delete(&inst),
                Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(());
        }
        if let Some((in_sync, node, error)) = mirror_change {
            if in_sync {
                self.event(
                    "standby_in_sync",
                    "instance",
                    &inst.name,
                    format!("the replica on {node} is in sync: every write reaches it"),
                );
            } else {
                self.event(
                    "standby_out_of_sync",
                    "instance",
                    &inst.name,
                    format!(
                        "the replica on {node} is not in sync{}",
                        error.map(|e| format!(": {e}")).unwrap_or_default()
                    ),
                );
            }
        }
        if let Some(state) = changed_to {
            let msg = inst.reason.clone().unwrap_or_default();
            self.event(&format!("instance_{state}"), "instance", &inst.name, msg);
            if let Some(r) = &recovered {
                self.recovery_completed(&inst, r);
            }
            if !inst.holds_resources() {
                self.schedule_now.notify_one();
            }
        }
        Ok(())
    }

    /// The assignments of one node: every instance placed there that it must run or
    /// stop, and the replicas it serves as the hot standby of VMs elsewhere.
    pub fn assignments(&self, node: &str) -> Result<(Vec<Assignment>, Vec<StandbyAssignment>)> {
        let backups = self.list_backups(None)?;
        let all = self.all_instances()?;
        let standbys = all
            .iter()
            .filter(|i| i.kind == nimbus_api::InstanceKind::Vm)
            .filter_map(|i| {
                let s = i.standby.as_ref().filter(|s| s.node == node)?;
                Some(StandbyAssignment {
                    instance: i.name.clone(),
                    generation: s.generation,
                    disk_bytes: i.disk_bytes?,
                })
            })
            .collect();
        // The target of a live migration waits for the VM under its next generation.
        let incoming: Vec<Assignment> = all
            .iter()
            .filter(|i| i.desired == DesiredState::Running)
            .filter_map(|i| {
                let m = i.migration.as_ref().filter(|m| m.to_node == node)?;
                Some(Assignment {
                    image: i.spec.image.as_ref().and_then(|n| self.get_image(n).ok()),
                    disk_image: None,
                    backups: vec![],
                    mirror_to: None,
                    boot_from_replica: false,
                    migrate_to: None,
                    incoming: Some(nimbus_api::IncomingMigration {
                        disk_bytes: i.disk_bytes,
                        guest_ready: i.guest_ready,
                    }),
                    name: i.name.clone(),
                    spec: i.spec.clone(),
                    generation: m.generation,
                    desired: DesiredState::Running,
                    restart_nonce: i.restart_nonce,
                })
            })
            .collect();
        let mut assignments: Vec<Assignment> = all
            .into_iter()
            .filter(|i| {
                i.node.as_deref() == Some(node)
                    && (i.is_assigned() || i.state == InstanceState::Stopping)
            })
            .map(|i| Assignment {
                image: i.spec.image.as_ref().and_then(|n| self.get_image(n).ok()),
                disk_image: i
                    .spec
                    .disk_image
                    .as_ref()
                    .and_then(|n| self.get_image(n).ok()),
                backups: self.pending_backups(&backups, &i.name),
                mirror_to: i
                    .standby
                    .as_ref()
                    .filter(|s| s.generation == i.generation && i.migration.is_none())
                    .and_then(|s| s.endpoint.clone()),
                boot_from_replica: i.recovery.as_ref().is_some_and(|r| r.from_replica),
                migrate_to: i
                    .migration
                    .as_ref()
                    .filter(|_| i.desired == DesiredState::Running)
                    .and_then(|m| m.target.clone()),
                incoming: None,
                name: i.name,
                spec: i.spec,
                generation: i.generation,
                desired: i.desired,
                restart_nonce: i.restart_nonce,
            })
            .collect();
        assignments.extend(incoming);
        Ok((assignments, standbys))
    }

    /// Changes a node's state (ready, down, draining) with an event.
    pub fn set_node_state(&self, name: &str, state: NodeState, why: &str) -> Result<()> {
        self.set_node_state_with(name, state, why, |_| {})
    }

    /// Changes a node's state, and what `also` changes with it, in one write.
    pub fn set_node_state_with(
        &self,
        name: &str,
        state: NodeState,
        why: &str,
        also: impl Fn(&mut Node),
    ) -> Result<()> {
        for _ in 0..CAS_RETRIES {
            let (mut node, rev) =
                self.store
                    .get_typed::<Node>(NODE, name)?
                    .ok_or_else(|| ServerError::NotFound {
                        kind: "node",
                        name: name.into(),
                    })?;
            let before = node.clone();
            node.state = state;
            also(&mut node);
            if node == before {
                return Ok(());
            }
            match self.store.update_typed(NODE, name, &node, rev) {
                Ok(_) if before.state == state => return Ok(()),
                Ok(_) => {
                    self.event(&format!("node_{}", state.as_str()), "node", name, why);
                    self.schedule_now.notify_one();
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServerError::Conflict(format!(
            "node {name:?} changed concurrently"
        )))
    }
}

fn internal(e: nimbus_api::TransitionError) -> ServerError {
    ServerError::Internal(format!("state machine: {e}"))
}
