//! The node's chunk store: disk images copied from the server (only the chunks the
//! node lacks, each verified by hash on arrival) and backups made here (only the
//! chunks the server lacks are sent).

use std::path::{Path, PathBuf};
use std::process::Command;

use nimbus_image::{ExportFormat, ImageStore, ImportRequest, Manifest, ManifestName};

use crate::client::ServerClient;

/// The node store with what it needs to reach the server (async client, driven from
/// blocking code through the runtime handle).
pub struct NodeStore {
    pub chunks: ImageStore,
    pub client: std::sync::Arc<ServerClient>,
    pub rt: tokio::runtime::Handle,
}

/// Pause and resume around a disk copy.
pub type Bracket<'a> = (
    &'a dyn Fn() -> Result<(), String>,
    &'a dyn Fn() -> Result<(), String>,
);

/// What a copy or a backup moved over the network.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transfer {
    pub chunks: u64,
    pub bytes: u64,
}

impl NodeStore {
    /// Brings image `name` into the node store, copying only missing chunks.
    pub fn fetch_image(&self, name: &str) -> Result<(Manifest, Transfer), String> {
        let (chunks, client, rt) = (&self.chunks, &*self.client, &self.rt);
        let m = rt
            .block_on(client.image_manifest(name))
            .map_err(|e| format!("fetching the manifest of image {name}: {e}"))?;
        let _lease = chunks.lease().map_err(|e| e.to_string())?;
        let mut t = Transfer::default();
        for id in chunks.missing_chunks(&m).map_err(|e| e.to_string())? {
            let bytes = rt
                .block_on(client.get_chunk(&id.to_string()))
                .map_err(|e| format!("fetching chunk {id} of image {name}: {e}"))?;
            t.bytes += bytes.len() as u64;
            t.chunks += 1;
            chunks
                .put_chunk_compressed(&id, &bytes)
                .map_err(|e| format!("image {name}: {e}"))?;
        }
        if chunks.get(&m.id()).is_err() {
            chunks
                .put_manifest(&m)
                .map_err(|e| format!("image {name}: {e}"))?;
        }
        Ok((m, t))
    }

    /// The image as a raw file for QEMU, exported from the node store once and cached.
    pub fn image_file(&self, name: &str, cache_dir: &Path) -> Result<PathBuf, String> {
        let chunks = &self.chunks;
        let path = cache_dir.join("disk.raw");
        if path.exists() {
            return Ok(path);
        }
        self.fetch_image(name)?;
        std::fs::create_dir_all(cache_dir).map_err(|e| e.to_string())?;
        let tmp = cache_dir.join(format!("disk.raw.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        chunks
            .export(
                &ManifestName::image(name),
                &tmp,
                ExportFormat::Raw,
                &mut |_| {},
            )
            .map_err(|e| format!("image {name}: {e}"))?;
        std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
        Ok(path)
    }

    /// Archives a process instance's data directory (tar) into a backup and sends the
    /// server the chunks it lacks. `freeze`/`thaw` bracket the archiving of a running
    /// process, so no file changes while it is read.
    pub fn backup_dir(
        &self,
        instance: &str,
        name: &str,
        data: &Path,
        meta: serde_json::Value,
        freeze: Option<Bracket<'_>>,
    ) -> Result<(Manifest, Transfer), String> {
        if !data.is_dir() {
            return Err(format!(
                "instance {instance} has no data directory on this node"
            ));
        }
        let tmp = data.with_file_name(format!("backup-{name}.tar"));
        let _ = std::fs::remove_file(&tmp);
        if let Some((f, t)) = &freeze {
            if let Err(e) = f() {
                // Freezing may have half happened: never leave the process frozen.
                let _ = t();
                return Err(e);
            }
        }
        let archived = write_tar(data, &tmp);
        if let Some((_, t)) = &freeze {
            t()?;
        }
        if let Err(e) = archived {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("archiving {}: {e}", data.display()));
        }
        let req = ImportRequest::backup(instance, name).with_meta(meta);
        let res = std::fs::File::open(&tmp)
            .map_err(|e| e.to_string())
            .and_then(|mut f| {
                self.chunks
                    .import_reader(&req, &mut f, &mut |_| {})
                    .map_err(|e| e.to_string())
            });
        let _ = std::fs::remove_file(&tmp);
        self.send_backup(instance, name, res?)
    }

    /// Replaces `data` with the content of archive image `image` (a restored backup of
    /// a process instance), copying the chunks this node lacks first. Corrupt chunks
    /// fail the restore before anything in `data` is touched.
    pub fn restore_dir(&self, image: &str, data: &Path) -> Result<(), String> {
        self.fetch_image(image)?;
        let parent = data.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        let tar = parent.join(format!("restore-{image}.tar"));
        let _ = std::fs::remove_file(&tar);
        self.chunks
            .export(
                &ManifestName::image(image),
                &tar,
                ExportFormat::Raw,
                &mut |_| {},
            )
            .map_err(|e| format!("image {image}: {e}"))?;
        let staging = parent.join(format!("restore-{image}.d"));
        let _ = std::fs::remove_dir_all(&staging);
        let unpacked = std::fs::File::open(&tar).and_then(|f| {
            let mut a = tar::Archive::new(f);
            a.set_preserve_permissions(true);
            a.set_preserve_mtime(true);
            a.set_overwrite(true);
            a.unpack(&staging)
        });
        let _ = std::fs::remove_file(&tar);
        if let Err(e) = unpacked {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(format!("unpacking image {image}: {e}"));
        }
        let _ = std::fs::remove_dir_all(data);
        std::fs::rename(&staging, data)
            .map_err(|e| format!("moving the restored data into {}: {e}", data.display()))
    }

    /// Copies a VM's disk into a backup and sends the server the chunks it lacks.
    /// `pause`/`resume` bracket the copy of a running VM (QMP stop flushes its writes).
    pub fn backup_disk(
        &self,
        instance: &str,
        name: &str,
        disk: &Path,
        meta: serde_json::Value,
        pause: Option<Bracket<'_>>,
    ) -> Result<(Manifest, Transfer), String> {
        let chunks = &self.chunks;
        if !disk.exists() {
            return Err(format!("instance {instance} has no disk on this node"));
        }
        let tmp = disk.with_file_name(format!("backup-{name}.raw"));
        let _ = std::fs::remove_file(&tmp);
        if let Some((p, r)) = &pause {
            if let Err(e) = p() {
                let _ = r();
                return Err(e);
            }
        }
        // -U: QEMU holds the image; it is paused (or stopped), so the content is stable.
        let out = Command::new("qemu-img")
            .args(["convert", "-U", "-O", "raw"])
            .arg(disk)
            .arg(&tmp)
            .output();
        if let Some((_, r)) = &pause {
            r()?;
        }
        let out = out.map_err(|e| format!("running qemu-img: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!(
                "copying the disk failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let req = ImportRequest::backup(instance, name).with_meta(meta);
        let res = chunks.import_file(&req, &tmp, &mut |_| {});
        let _ = std::fs::remove_file(&tmp);
        self.send_backup(instance, name, res.map_err(|e| e.to_string())?)
    }

    /// Sends the server the chunks of backup `m` it lacks, then the manifest.
    fn send_backup(
        &self,
        instance: &str,
        name: &str,
        m: Manifest,
    ) -> Result<(Manifest, Transfer), String> {
        let (chunks, client, rt) = (&self.chunks, &*self.client, &self.rt);
        let ids: Vec<String> = m.chunk_ids().iter().map(|i| i.to_string()).collect();
        let missing = rt
            .block_on(client.missing_chunks(ids))
            .map_err(|e| format!("asking the server which chunks it lacks: {e}"))?;
        let mut t = Transfer::default();
        for id in missing {
            let parsed = id.parse().map_err(|_| format!("bad chunk id {id}"))?;
            let bytes = chunks
                .read_chunk_compressed(&parsed)
                .map_err(|e| e.to_string())?;
            t.chunks += 1;
            t.bytes += bytes.len() as u64;
            rt.block_on(client.put_chunk(&id, bytes))
                .map_err(|e| format!("sending chunk {id}: {e}"))?;
        }
        rt.block_on(client.put_backup_manifest(&m, instance, name))
            .map_err(|e| format!("sending the backup manifest: {e}"))?;
        Ok((m, t))
    }
}

/// Writes the tree under `dir` as a tar archive to `dest`: entries in name order,
/// symlinks kept as links, owners, modes and times recorded.
fn write_tar(dir: &Path, dest: &Path) -> std::io::Result<()> {
    let out = std::fs::File::create(dest)?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(out));
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    b.append_dir_all(".", dir)?;
    let out = b.into_inner()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}
