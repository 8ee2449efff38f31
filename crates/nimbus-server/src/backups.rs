//! Backups and replication over the cluster's chunk store.
//!
//! A backup is asked for through the API and recorded as `pending`; the node running
//! the instance sees it in its assignments, copies the VM's disk (or a tar of the
//! process's data directory) into its own chunk store (a running VM is paused, a
//! running process frozen, for the copy, so it is consistent), sends the server only
//! the chunks it lacks, and reports. Restore turns a backup into an image (disk or
//! archive; no data copied: the manifest points at the same chunks) and creates an
//! instance from it on any node, which copies the chunks it lacks.

use nimbus_api::backup::BackupResult;
use nimbus_api::{
    validate_name, Backup, BackupState, CreateInstance, Image, ImageKind, InstanceKind,
    InstanceSpec,
};
use nimbus_image::{Kind, ManifestName};
use nimbus_store::{StoreError, TypedStore};

use crate::cluster::{now_ms, Cluster, IMAGE};
use crate::error::{image_error, Result, ServerError};

pub const BACKUP: &str = "backup";
pub const REPLICA: &str = "replica";

fn key(instance: &str, name: &str) -> String {
    format!("{instance}/{name}")
}

/// Splits `instance@name`.
pub fn parse_reference(r: &str) -> Result<(String, String)> {
    r.split_once('@')
        .filter(|(i, n)| !i.is_empty() && !n.is_empty())
        .map(|(i, n)| (i.to_string(), n.to_string()))
        .ok_or_else(|| {
            ServerError::InvalidRequest(format!(
                "backup {r:?} is not of the form INSTANCE@NAME (see `nimbus backup list INSTANCE`)"
            ))
        })
}

impl Cluster {
    pub fn get_backup(&self, instance: &str, name: &str) -> Result<Backup> {
        self.store
            .get_typed::<Backup>(BACKUP, &key(instance, name))?
            .map(|(mut b, rev)| {
                b.revision = rev;
                b
            })
            .ok_or_else(|| ServerError::NotFound {
                kind: "backup",
                name: format!("{instance}@{name}"),
            })
    }

    /// Every backup, or those of one instance, oldest first.
    pub fn list_backups(&self, instance: Option<&str>) -> Result<Vec<Backup>> {
        let mut all: Vec<Backup> = self
            .store
            .list_typed::<Backup>(BACKUP, None, usize::MAX >> 1)?
            .into_iter()
            .map(|(mut b, rev)| {
                b.revision = rev;
                b
            })
            .filter(|b| instance.is_none_or(|i| b.instance == i))
            .collect();
        all.sort_by_key(|b| (b.created_at_ms, b.name.clone()));
        Ok(all)
    }

    /// Asks the instance's node for a backup.
    pub fn create_backup(&self, instance: &str, name: Option<String>) -> Result<Backup> {
        let inst = self.get_instance(instance)?;
        let name = name.unwrap_or_else(|| format!("b{}", now_ms()));
        validate_name("backup", &name).map_err(ServerError::InvalidRequest)?;
        if inst.kind == InstanceKind::Vm
            && inst.spec.image.is_some()
            && self
                .get_image(inst.spec.image.as_deref().unwrap_or(""))
                .map(|i| i.kind == ImageKind::Kernel && inst.spec.disk_mib == 0)
                .unwrap_or(false)
        {
            return Err(ServerError::InvalidState(format!(
                "instance {instance:?} boots a kernel image and has no disk to back up \
                 (create it with --disk-size to give it one)"
            )));
        }
        let Some(node) = inst.node.clone().filter(|_| inst.is_assigned()) else {
            let what = match inst.kind {
                InstanceKind::Vm => "disk",
                InstanceKind::Process => "data directory",
            };
            return Err(ServerError::InvalidState(format!(
                "instance {instance:?} is {} and on no node: there is no {what} to back up",
                inst.state
            )));
        };
        let mut b = Backup {
            instance: instance.to_string(),
            name: name.clone(),
            state: BackupState::Pending,
            reason: None,
            node: Some(node),
            size: 0,
            new_bytes: 0,
            new_chunks: 0,
            consistency: None,
            created_at_ms: now_ms(),
            completed_at_ms: None,
            revision: 0,
        };
        match self.store.create_typed(BACKUP, &key(instance, &name), &b) {
            Ok(rev) => b.revision = rev,
            Err(StoreError::AlreadyExists { .. }) => {
                return Err(ServerError::AlreadyExists(format!(
                    "backup {instance}@{name} already exists; choose another --name"
                )))
            }
            Err(e) => return Err(e.into()),
        }
        self.event(
            "backup_requested",
            "instance",
            instance,
            format!("backup {name}"),
        );
        Ok(b)
    }

    /// Names of the pending backups of an instance (for its node's assignments).
    pub fn pending_backups(&self, all: &[Backup], instance: &str) -> Vec<String> {
        all.iter()
            .filter(|b| b.instance == instance && b.state == BackupState::Pending)
            .map(|b| b.name.clone())
            .collect()
    }

    /// Records what a node reports about a backup it made.
    pub fn complete_backup(
        &self,
        instance: &str,
        name: &str,
        node: &str,
        r: BackupResult,
    ) -> Result<Backup> {
        let mut b = self.get_backup(instance, name)?;
        if b.state != BackupState::Pending {
            return Ok(b);
        }
        if r.ok
            && self
                .chunks
                .get(&ManifestName::backup(instance, name))
                .is_err()
        {
            return Err(ServerError::InvalidState(format!(
                "backup {instance}@{name}: its manifest has not arrived"
            )));
        }
        b.state = if r.ok {
            BackupState::Done
        } else {
            BackupState::Failed
        };
        b.reason = r.reason;
        b.node = Some(node.to_string());
        b.size = r.size;
        b.new_bytes = r.new_bytes;
        b.new_chunks = r.new_chunks;
        b.consistency = r.consistency;
        b.completed_at_ms = Some(now_ms());
        b.revision = self
            .store
            .update_typed(BACKUP, &key(instance, name), &b, b.revision)?;
        let msg = match b.state {
            BackupState::Done => format!(
                "backup {name}: {} bytes, {} new chunks ({} bytes stored)",
                b.size, b.new_chunks, b.new_bytes
            ),
            _ => format!(
                "backup {name} failed: {}",
                b.reason.clone().unwrap_or_default()
            ),
        };
        let kind = if b.state == BackupState::Done {
            "backup_completed"
        } else {
            "backup_failed"
        };
        self.event(kind, "instance", instance, msg);
        Ok(b)
    }

    /// Keeps the newest `keep` completed backups of an instance; deletes the rest.
    pub fn prune_backups(&self, instance: &str, keep: usize) -> Result<Vec<Backup>> {
        self.prune_backups_where(instance, keep, |_| true)
    }

    /// Like [`Cluster::prune_backups`], among the backups `which` selects.
    pub fn prune_backups_where(
        &self,
        instance: &str,
        keep: usize,
        which: impl Fn(&Backup) -> bool,
    ) -> Result<Vec<Backup>> {
        let done: Vec<Backup> = self
            .list_backups(Some(instance))?
            .into_iter()
            .filter(|b| b.state != BackupState::Pending && which(b))
            .collect();
        let remove = done.len().saturating_sub(keep);
        let mut removed = Vec::new();
        for b in done.into_iter().take(remove) {
            let _ = self.chunks.delete(&ManifestName::backup(instance, &b.name));
            self.store
                .delete(BACKUP, &key(instance, &b.name), b.revision)?;
            self.event(
                "backup_deleted",
                "instance",
                instance,
                format!("backup {} pruned", b.name),
            );
            removed.push(b);
        }
        Ok(removed)
    }

    /// Creates instance `as_name` from a backup, optionally on a given node.
    pub fn restore_backup(
        &self,
        reference: &str,
        as_name: &str,
        node: Option<String>,
    ) -> Result<nimbus_api::Instance> {
        let (instance, name) = parse_reference(reference)?;
        validate_name("instance", as_name).map_err(ServerError::InvalidRequest)?;
        if self.get_instance(as_name).is_ok() {
            return Err(ServerError::AlreadyExists(format!(
                "instance {as_name:?} exists: restore under another name (--as), or delete it first"
            )));
        }
        if let Some(n) = &node {
            self.get_node(n)?;
        }
        let image_name = format!("{as_name}-restored");
        let mut spec = self.image_from_backup(&instance, &name, &image_name)?;
        self.start_from_image(&mut spec, &image_name);
        if let Some(n) = node {
            spec.node_selector
                .insert(crate::reconcile::NODE_LABEL.to_string(), n);
        }
        // Host ports stay with the original; the restored copy gets its own.
        for p in &mut spec.ports {
            p.host = None;
        }
        let (inst, _) = self.create_instance(CreateInstance {
            name: as_name.to_string(),
            spec,
        })?;
        self.event(
            "backup_restored",
            "instance",
            as_name,
            format!("from backup {reference}"),
        );
        Ok(inst)
    }

    /// Makes image `image_name` from a completed backup (it shares the backup's chunks;
    /// nothing is copied) unless it exists already, after checking every chunk, so
    /// damaged data is refused instead of booted. Returns the spec the backup recorded.
    pub fn image_from_backup(
        &self,
        instance: &str,
        name: &str,
        image_name: &str,
    ) -> Result<InstanceSpec> {
        let reference = format!("{instance}@{name}");
        let b = self.get_backup(instance, name)?;
        if b.state != BackupState::Done {
            return Err(ServerError::InvalidState(format!(
                "backup {reference} is {:?}, not done",
                b.state
            )));
        }
        let manifest = self
            .chunks
            .get(&ManifestName::backup(instance, name))
            .map_err(image_error)?;
        self.chunks
            .verify_manifest(&manifest.id())
            .map_err(image_error)?;
        let spec: InstanceSpec = manifest
            .meta
            .clone()
            .and_then(|m| serde_json::from_value(m).ok())
            .ok_or_else(|| {
                ServerError::InvalidState(format!(
                    "backup {reference} does not record its instance spec"
                ))
            })?;
        validate_name("image", image_name).map_err(ServerError::InvalidRequest)?;
        if self.get_image(image_name).is_err() {
            let archive = spec.kind == InstanceKind::Process;
            let mut im = manifest.clone();
            im.kind = Kind::Image;
            im.name = image_name.to_string();
            im.instance = None;
            im.meta = None;
            self.chunks.put_manifest(&im).map_err(image_error)?;
            let img = Image {
                name: image_name.to_string(),
                kind: if archive {
                    ImageKind::Archive
                } else {
                    ImageKind::Disk
                },
                format: Some(if archive { "tar" } else { "raw" }.into()),
                virtual_size: Some(manifest.size),
                cmdline: None,
                files: vec![],
                origin: Some(format!("backup {reference}")),
                created_at_ms: now_ms(),
                revision: 0,
            };
            match self.store.create_typed(IMAGE, image_name, &img) {
                Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(spec)
    }

    /// Points `spec` at a restored image: a VM that boots a kernel image keeps booting
    /// it with the restored disk, a disk-image VM boots the restored disk, a process
    /// unpacks it into its data directory.
    pub fn start_from_image(&self, spec: &mut InstanceSpec, image_name: &str) {
        let boots_kernel = spec
            .image
            .as_deref()
            .and_then(|i| self.get_image(i).ok())
            .is_some_and(|i| i.kind == ImageKind::Kernel);
        if boots_kernel || spec.kind == InstanceKind::Process {
            spec.disk_image = Some(image_name.to_string());
        } else {
            spec.image = Some(image_name.to_string());
            spec.disk_image = None;
        }
    }

    /// Asks a node to hold a copy of a disk image (it copies only missing chunks).
    pub fn request_replica(&self, image: &str, node: &str) -> Result<()> {
        let img = self.get_image(image)?;
        if !img.kind.in_chunk_store() {
            return Err(ServerError::InvalidState(format!(
                "image {image:?} is a kernel image; only disk and archive images live in the \
                 chunk store"
            )));
        }
        self.get_node(node)?;
        let k = format!("{node}/{image}");
        match self.store.create(REPLICA, &k, "{}") {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.event(
            "image_replication_requested",
            "image",
            image,
            format!("to node {node}"),
        );
        Ok(())
    }

    /// Disk images a node was asked to hold.
    pub fn replicas_for(&self, node: &str) -> Result<Vec<Image>> {
        let prefix = format!("{node}/");
        Ok(self
            .store
            .list(REPLICA, None, usize::MAX >> 1)?
            .into_iter()
            .filter_map(|r| r.key.strip_prefix(&prefix).map(String::from))
            .filter_map(|image| self.get_image(&image).ok())
            .collect())
    }

    /// Ends a replication request once the node reports the copy.
    pub fn replica_done(&self, node: &str, image: &str, copied_chunks: u64, copied_bytes: u64) {
        let k = format!("{node}/{image}");
        if let Ok(Some(r)) = self.store.get(REPLICA, &k) {
            let _ = self.store.delete(REPLICA, &k, r.revision);
            self.event(
                "image_replicated",
                "image",
                image,
                format!("to node {node}: {copied_chunks} chunks, {copied_bytes} bytes sent"),
            );
        }
    }
}
