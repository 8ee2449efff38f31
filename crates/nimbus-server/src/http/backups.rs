//! Backup endpoints: create, list, prune, restore; the completion report of nodes;
//! image replication requests.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nimbus_api::backup::BackupResult;
use nimbus_api::{
    Backup, BackupList, CreateBackup, ErrorBody, Instance, PruneBackups, ReplicateImage,
    RestoreBackup,
};

use super::{blocking, ApiJson, AppState};
use crate::error::Result;

/// Back up an instance's disk. A running VM is paused while its disk is copied
/// (consistent), then resumed. The backup is `pending` until its node reports.
#[utoipa::path(post, path = "/v1/instances/{name}/backups", tag = "backups",
    params(("name" = String, Path, description = "Instance name")),
    request_body = CreateBackup,
    responses((status = 201, body = Backup), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn create_backup(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<CreateBackup>,
) -> Result<(StatusCode, Json<Backup>)> {
    let c = app.cluster.clone();
    let b = blocking(move || c.create_backup(&name, req.name)).await?;
    Ok((StatusCode::CREATED, Json(b)))
}

/// List an instance's backups, oldest first (deleted instances keep their backups).
#[utoipa::path(get, path = "/v1/instances/{name}/backups", tag = "backups",
    params(("name" = String, Path, description = "Instance name")),
    responses((status = 200, body = BackupList)))]
pub async fn list_backups(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<BackupList>> {
    let c = app.cluster.clone();
    let items = blocking(move || c.list_backups(Some(&name))).await?;
    Ok(Json(BackupList { items }))
}

/// Keep the newest N backups of an instance; delete the others.
#[utoipa::path(post, path = "/v1/instances/{name}/backups/prune", tag = "backups",
    params(("name" = String, Path, description = "Instance name")),
    request_body = PruneBackups,
    responses((status = 200, description = "The deleted backups", body = BackupList)))]
pub async fn prune_backups(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<PruneBackups>,
) -> Result<Json<BackupList>> {
    let c = app.cluster.clone();
    let items = blocking(move || c.prune_backups(&name, req.keep_last)).await?;
    Ok(Json(BackupList { items }))
}

/// Nodes report a finished backup here.
#[utoipa::path(post, path = "/v1/nodes/{node}/backups/{instance}/{name}", tag = "backups",
    params(("node" = String, Path, description = "Node"), ("instance" = String, Path, description = "Instance"),
        ("name" = String, Path, description = "Backup")),
    request_body = BackupResult,
    responses((status = 200, body = Backup), (status = 409, body = ErrorBody)))]
pub async fn complete_backup(
    State(app): State<AppState>,
    Path((node, instance, name)): Path<(String, String, String)>,
    ApiJson(r): ApiJson<BackupResult>,
) -> Result<Json<Backup>> {
    let c = app.cluster.clone();
    Ok(Json(
        blocking(move || c.complete_backup(&instance, &name, &node, r)).await?,
    ))
}

/// Create a new instance from a backup, on any node (`node` to choose one).
#[utoipa::path(post, path = "/v1/backups/restore", tag = "backups", request_body = RestoreBackup,
    responses((status = 201, body = Instance), (status = 404, body = ErrorBody),
        (status = 409, description = "Name taken, backup not done, or data corrupted", body = ErrorBody)))]
pub async fn restore_backup(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<RestoreBackup>,
) -> Result<(StatusCode, Json<Instance>)> {
    let c = app.cluster.clone();
    let inst =
        blocking(move || c.restore_backup(&req.backup, &req.as_name, req.node.clone())).await?;
    Ok((StatusCode::CREATED, Json(inst)))
}

/// Ask a node to hold a copy of a disk image; it copies only the chunks it lacks.
#[utoipa::path(post, path = "/v1/images/{name}/replicate", tag = "images",
    params(("name" = String, Path, description = "Image name")),
    request_body = ReplicateImage,
    responses((status = 202), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn replicate_image(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ReplicateImage>,
) -> Result<StatusCode> {
    let c = app.cluster.clone();
    blocking(move || c.request_replica(&name, &req.node)).await?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct ReplicaDone {
    pub copied_chunks: u64,
    pub copied_bytes: u64,
}

/// Nodes report a finished image copy here.
#[utoipa::path(post, path = "/v1/nodes/{node}/replicas/{image}", tag = "images",
    params(("node" = String, Path, description = "Node"), ("image" = String, Path, description = "Image")),
    request_body = ReplicaDone, responses((status = 204)))]
pub async fn replica_done(
    State(app): State<AppState>,
    Path((node, image)): Path<(String, String)>,
    ApiJson(r): ApiJson<ReplicaDone>,
) -> Result<StatusCode> {
    let c = app.cluster.clone();
    blocking(move || {
        c.replica_done(&node, &image, r.copied_chunks, r.copied_bytes);
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
