//! `/v1/store`: the cluster's chunk store. Nodes fetch image chunks and send backup
//! chunks here (only those missing, verified by hash on arrival); operators read
//! statistics, verify every chunk and collect garbage.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_api::ErrorBody;
use nimbus_image::{ChunkId, Manifest, ManifestName};
use serde::{Deserialize, Serialize};

use super::{blocking, ApiJson, ApiQuery, AppState};
use crate::error::{image_error, Result, ServerError};

fn chunk_id(s: &str) -> Result<ChunkId> {
    s.parse().map_err(|_| {
        ServerError::InvalidRequest(format!("{s:?} is not a chunk id (64 hex digits)"))
    })
}

/// Statistics of the chunk store: logical vs stored bytes, dedup and compression.
#[utoipa::path(get, path = "/v1/store/stats", tag = "store",
    responses((status = 200, description = "nimbus_image::StoreStats as JSON", body = serde_json::Value)))]
pub async fn stats(State(app): State<AppState>) -> Result<Json<serde_json::Value>> {
    let c = app.cluster.clone();
    let s = blocking(move || c.chunks.stats().map_err(image_error)).await?;
    Ok(Json(serde_json::to_value(s).unwrap_or_default()))
}

/// Re-hashes every chunk; names the images and backups hit by corruption.
#[utoipa::path(post, path = "/v1/store/verify", tag = "store",
    responses((status = 200, description = "nimbus_image::VerifyReport as JSON", body = serde_json::Value)))]
pub async fn verify(State(app): State<AppState>) -> Result<Json<serde_json::Value>> {
    let c = app.cluster.clone();
    let r = blocking(move || c.chunks.verify(&mut |_| {}).map_err(image_error)).await?;
    Ok(Json(serde_json::to_value(r).unwrap_or_default()))
}

/// Removes chunks that no image or backup references.
#[utoipa::path(post, path = "/v1/store/gc", tag = "store",
    responses((status = 200, description = "nimbus_image::GcReport as JSON", body = serde_json::Value)))]
pub async fn gc(State(app): State<AppState>) -> Result<Json<serde_json::Value>> {
    let c = app.cluster.clone();
    let r = blocking(move || c.chunks.gc().map_err(image_error)).await?;
    Ok(Json(serde_json::to_value(r).unwrap_or_default()))
}

/// The manifest of a disk image.
#[utoipa::path(get, path = "/v1/store/images/{name}", tag = "store",
    params(("name" = String, Path, description = "Image name")),
    responses((status = 200, body = serde_json::Value), (status = 404, body = ErrorBody)))]
pub async fn image_manifest(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Manifest>> {
    let c = app.cluster.clone();
    Ok(Json(
        blocking(move || {
            c.chunks
                .get(&ManifestName::image(name))
                .map_err(image_error)
        })
        .await?,
    ))
}

/// One chunk as stored (header byte + raw or zstd payload).
#[utoipa::path(get, path = "/v1/store/chunks/{id}", tag = "store",
    params(("id" = String, Path, description = "BLAKE3 id, hex")),
    responses((status = 200, content_type = "application/octet-stream", body = String),
        (status = 404, body = ErrorBody)))]
pub async fn get_chunk(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    let id = chunk_id(&id)?;
    let c = app.cluster.clone();
    let bytes = blocking(move || c.chunks.read_chunk_compressed(&id).map_err(image_error)).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        Body::from(bytes),
    )
        .into_response())
}

/// Stores a chunk sent by a node after checking its hash.
#[utoipa::path(put, path = "/v1/store/chunks/{id}", tag = "store",
    params(("id" = String, Path, description = "BLAKE3 id, hex")),
    request_body(content = String, content_type = "application/octet-stream"),
    responses((status = 204), (status = 409, description = "Content does not match the id", body = ErrorBody)))]
pub async fn put_chunk(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode> {
    let id = chunk_id(&id)?;
    let c = app.cluster.clone();
    blocking(move || {
        c.chunks
            .put_chunk_compressed(&id, &body)
            .map_err(image_error)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChunkIds {
    pub ids: Vec<String>,
}

/// Of the given chunk ids, the ones this store lacks.
#[utoipa::path(post, path = "/v1/store/chunks/missing", tag = "store", request_body = ChunkIds,
    responses((status = 200, body = ChunkIds)))]
pub async fn missing(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<ChunkIds>,
) -> Result<Json<ChunkIds>> {
    let c = app.cluster.clone();
    let ids = blocking(move || {
        let mut out = Vec::new();
        for s in req.ids {
            let id = chunk_id(&s)?;
            if !c.chunks.has_chunk(&id).map_err(image_error)? {
                out.push(s);
            }
        }
        Ok(out)
    })
    .await?;
    Ok(Json(ChunkIds { ids }))
}

/// Stores a backup manifest sent by a node; refused while any chunk is missing.
#[utoipa::path(put, path = "/v1/store/backups/{instance}/{name}", tag = "store",
    params(("instance" = String, Path, description = "Instance"), ("name" = String, Path, description = "Backup")),
    request_body = serde_json::Value,
    responses((status = 204), (status = 409, body = ErrorBody)))]
pub async fn put_backup_manifest(
    State(app): State<AppState>,
    Path((instance, name)): Path<(String, String)>,
    ApiJson(m): ApiJson<Manifest>,
) -> Result<StatusCode> {
    if m.id() != ManifestName::backup(&instance, &name) {
        return Err(ServerError::InvalidRequest(
            "manifest does not match the path".into(),
        ));
    }
    let c = app.cluster.clone();
    blocking(move || c.chunks.put_manifest(&m).map_err(image_error)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `raw` (default) or `qcow2`.
    pub format: Option<String>,
}

/// A disk image's content as a file (every chunk verified on the way out).
#[utoipa::path(get, path = "/v1/images/{name}/export", tag = "images",
    params(("name" = String, Path, description = "Image name"), ExportQuery),
    responses((status = 200, content_type = "application/octet-stream", body = String),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn export_image(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Response> {
    let format = match q.format.as_deref().unwrap_or("raw") {
        "raw" => nimbus_image::ExportFormat::Raw,
        "qcow2" => nimbus_image::ExportFormat::Qcow2,
        other => {
            return Err(ServerError::InvalidRequest(format!(
                "export format {other:?}: use raw or qcow2"
            )))
        }
    };
    let c = app.cluster.clone();
    let (tmp, path) = blocking(move || {
        let img = c.get_image(&name)?;
        if !img.kind.in_chunk_store() {
            return Err(ServerError::InvalidState(format!(
                "image {name:?} is a kernel image; only disk and archive images can be exported"
            )));
        }
        let tmp = tempfile::tempdir()
            .map_err(|e| ServerError::Internal(format!("temporary directory: {e}")))?;
        let path = tmp.path().join("export");
        c.chunks
            .export(&ManifestName::image(&name), &path, format, &mut |_| {})
            .map_err(image_error)?;
        Ok((tmp, path))
    })
    .await?;
    let f = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ServerError::Internal(format!("opening export: {e}")))?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    // The file stays readable through the open handle after the directory goes.
    drop(tmp);
    Ok(super::file_response(f, len))
}
