//! `/v1/images`: upload, register, list, download and delete VM images.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use futures_util::StreamExt;
use nimbus_api::{validate_name, ErrorBody, Image, ImageList, RegisterImage};
use tokio::io::AsyncWriteExt;

use super::{blocking, ApiJson, AppState};
use crate::error::{Result, ServerError};

/// Upload one file of an image (`vmlinuz`, `initrd.img` or `disk`), streamed as the raw
/// request body. Register the image with `POST /v1/images` afterwards.
#[utoipa::path(put, path = "/v1/images/{name}/files/{file}", tag = "images",
    params(("name" = String, Path, description = "Image name"),
           ("file" = String, Path, description = "vmlinuz, initrd.img or disk")),
    request_body(content = String, content_type = "application/octet-stream"),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn upload_file(
    State(app): State<AppState>,
    Path((name, file)): Path<(String, String)>,
    body: Body,
) -> Result<StatusCode> {
    validate_name("image", &name).map_err(ServerError::InvalidRequest)?;
    if app.cluster.get_image(&name).is_ok() {
        return Err(ServerError::AlreadyExists(format!(
            "image {name:?} already exists; delete it first to replace it"
        )));
    }
    let (f, path) = app.cluster.images.begin_upload(&name, &file)?;
    let mut f = tokio::fs::File::from_std(f);
    let mut stream = body.into_data_stream();
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                app.cluster.images.discard_upload(&name);
                return Err(ServerError::InvalidRequest(format!(
                    "upload interrupted: {e}"
                )));
            }
        };
        written += chunk.len() as u64;
        if written > crate::images::MAX_FILE_BYTES {
            app.cluster.images.discard_upload(&name);
            return Err(ServerError::InvalidRequest("image file too large".into()));
        }
        if let Err(e) = f.write_all(&chunk).await {
            app.cluster.images.discard_upload(&name);
            return Err(ServerError::Internal(format!(
                "writing {}: {e}",
                path.display()
            )));
        }
    }
    f.sync_all()
        .await
        .map_err(|e| ServerError::Internal(format!("syncing {}: {e}", path.display())))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Register an image from its uploaded files. The files are checked (kernel header,
/// initramfs format, qcow2 consistency, raw disk contents); a bad file is a 400 and
/// leaves nothing behind.
#[utoipa::path(post, path = "/v1/images", tag = "images", request_body = RegisterImage,
    responses((status = 201, body = Image), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn register_image(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<RegisterImage>,
) -> Result<(StatusCode, Json<Image>)> {
    let c = app.cluster.clone();
    let img = blocking(move || c.register_image(req)).await?;
    Ok((StatusCode::CREATED, Json(img)))
}

/// List images.
#[utoipa::path(get, path = "/v1/images", tag = "images",
    responses((status = 200, body = ImageList)))]
pub async fn list_images(State(app): State<AppState>) -> Result<Json<ImageList>> {
    let c = app.cluster.clone();
    let items = blocking(move || c.all_images()).await?;
    Ok(Json(ImageList { items }))
}

/// Get one image.
#[utoipa::path(get, path = "/v1/images/{name}", tag = "images",
    params(("name" = String, Path, description = "Image name")),
    responses((status = 200, body = Image), (status = 404, body = ErrorBody)))]
pub async fn get_image(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Image>> {
    let c = app.cluster.clone();
    Ok(Json(blocking(move || c.get_image(&name)).await?))
}

/// Delete an image; refused while an instance that is not stopped uses it.
#[utoipa::path(delete, path = "/v1/images/{name}", tag = "images",
    params(("name" = String, Path, description = "Image name")),
    responses((status = 200, body = Image), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn delete_image(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Image>> {
    let c = app.cluster.clone();
    Ok(Json(blocking(move || c.delete_image(&name)).await?))
}

/// Download one file of a registered image (nodes fetch images this way).
#[utoipa::path(get, path = "/v1/images/{name}/files/{file}", tag = "images",
    params(("name" = String, Path, description = "Image name"),
           ("file" = String, Path, description = "vmlinuz, initrd.img or disk")),
    responses((status = 200, content_type = "application/octet-stream", body = String),
        (status = 404, body = ErrorBody)))]
pub async fn download_file(
    State(app): State<AppState>,
    Path((name, file)): Path<(String, String)>,
) -> Result<Response> {
    let c = app.cluster.clone();
    let n2 = name.clone();
    blocking(move || c.get_image(&n2)).await?;
    let path = app.cluster.images.file_path(&name, &file)?;
    let f = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ServerError::NotFound {
            kind: "image file",
            name: format!("{name}/{file}"),
        })?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    Ok(super::file_response(f, len))
}
