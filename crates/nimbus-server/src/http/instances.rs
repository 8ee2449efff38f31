//! `/v1/instances`: create, list, get, stop, start, restart, delete, logs.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_api::{CreateInstance, ErrorBody, Instance, InstanceList, InstanceState};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{blocking, ApiJson, ApiQuery, AppState};
use crate::error::{Result, ServerError};

/// Default and largest page size of list endpoints.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// Create an instance. Idempotent: creating the same name with the same spec again
/// returns the existing instance with 200; a different spec is a 409.
#[utoipa::path(post, path = "/v1/instances", tag = "instances",
    request_body = CreateInstance,
    responses(
        (status = 201, description = "Created", body = Instance),
        (status = 200, description = "Already exists with the same spec", body = Instance),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 409, description = "Exists with a different spec", body = ErrorBody),
        (status = 422, description = "No node could ever hold it", body = ErrorBody),
    ))]
pub async fn create_instance(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<CreateInstance>,
) -> Result<Response> {
    let c = app.cluster.clone();
    let (inst, created) = blocking(move || c.create_instance(req)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(inst)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only instances in this state.
    pub state: Option<String>,
    /// Only instances on this node.
    pub node: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Cursor: the `next` of the previous page.
    pub after: Option<String>,
}

/// List instances in name order, with optional filters and pagination.
#[utoipa::path(get, path = "/v1/instances", tag = "instances", params(ListQuery),
    responses(
        (status = 200, body = InstanceList),
        (status = 400, body = ErrorBody),
    ))]
pub async fn list_instances(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<InstanceList>> {
    let state: Option<InstanceState> = q
        .state
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(ServerError::InvalidRequest)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ServerError::InvalidRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let c = app.cluster.clone();
    let list = blocking(move || {
        let mut items: Vec<Instance> = Vec::new();
        let mut cursor = q.after.clone();
        loop {
            let page = c.instance_page(cursor.as_deref(), MAX_LIMIT)?;
            let exhausted = page.len() < MAX_LIMIT;
            cursor = page.last().map(|i| i.name.clone());
            for inst in page {
                let keep = state.is_none_or(|s| inst.state == s)
                    && q.node
                        .as_ref()
                        .is_none_or(|n| inst.node.as_ref() == Some(n));
                if keep {
                    items.push(inst);
                    if items.len() == limit {
                        let next = Some(items[limit - 1].name.clone());
                        return Ok(InstanceList { items, next });
                    }
                }
            }
            if exhausted {
                return Ok(InstanceList { items, next: None });
            }
        }
    })
    .await?;
    Ok(Json(list))
}

/// Get one instance with its spec and observed status.
#[utoipa::path(get, path = "/v1/instances/{name}", tag = "instances",
    params(("name" = String, Path, description = "Instance name")),
    responses((status = 200, body = Instance), (status = 404, body = ErrorBody)))]
pub async fn get_instance(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Instance>> {
    let c = app.cluster.clone();
    Ok(Json(blocking(move || c.get_instance(&name)).await?))
}

/// Stop an instance (its node sends SIGTERM, then SIGKILL after a grace period).
#[utoipa::path(post, path = "/v1/instances/{name}/stop", tag = "instances",
    params(("name" = String, Path, description = "Instance name")),
    responses((status = 200, body = Instance), (status = 404, body = ErrorBody),
        (status = 409, description = "Not valid in the current state", body = ErrorBody)))]
pub async fn stop_instance(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Instance>> {
    let c = app.cluster.clone();
    Ok(Json(blocking(move || c.stop_instance(&name)).await?))
}

/// Start a stopped or failed instance: it is queued and placed again.
#[utoipa::path(post, path = "/v1/instances/{name}/start", tag = "instances",
    params(("name" = String, Path, description = "Instance name")),
    responses((status = 200, body = Instance), (status = 404, body = ErrorBody),
        (status = 409, description = "Not valid in the current state", body = ErrorBody)))]
pub async fn start_instance(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Instance>> {
    let c = app.cluster.clone();
    Ok(Json(blocking(move || c.start_instance(&name)).await?))
}

/// Restart an instance in place, or start it when it is stopped.
#[utoipa::path(post, path = "/v1/instances/{name}/restart", tag = "instances",
    params(("name" = String, Path, description = "Instance name")),
    responses((status = 200, body = Instance), (status = 404, body = ErrorBody),
        (status = 409, description = "Not valid in the current state", body = ErrorBody)))]
pub async fn restart_instance(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Instance>> {
    let c = app.cluster.clone();
    Ok(Json(blocking(move || c.restart_instance(&name)).await?))
}

/// Pause a running VM (QMP `stop`): the guest freezes; state becomes `paused`.
#[utoipa::path(post, path = "/v1/instances/{name}/pause", tag = "instances",
    params(("name" = String, Path, description = "Instance name")),
    responses((status = 200, body = Instance), (status = 404, body = ErrorBody),
        (status = 409, description = "Not a running VM", body = ErrorBody)))]
pub async fn pause_instance(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Instance>> {
    let c = app.cluster.clone();
    Ok(Json(blocking(move || c.pause_instance(&name)).await?))
}

/// Resume a paused VM (QMP `cont`).
#[utoipa::path(post, path = "/v1/instances/{name}/resume", tag = "instances",
    params(("name" = String, Path, description = "Instance name")),
    responses((status = 200, body = Instance), (status = 404, body = ErrorBody),
        (status = 409, description = "Not a paused VM", body = ErrorBody)))]
pub async fn resume_instance(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Instance>> {
    let c = app.cluster.clone();
    Ok(Json(blocking(move || c.resume_instance(&name)).await?))
}

/// Delete an instance. A running one is stopped by its node first (state `stopping`,
/// desired `deleted`) and disappears when the node confirms.
#[utoipa::path(delete, path = "/v1/instances/{name}", tag = "instances",
    params(("name" = String, Path, description = "Instance name")),
    responses((status = 200, body = Instance), (status = 404, body = ErrorBody)))]
pub async fn delete_instance(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Instance>> {
    let c = app.cluster.clone();
    Ok(Json(blocking(move || c.delete_instance(&name)).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Return at most this many bytes from the end (default 1 MiB).
    pub tail_bytes: Option<u64>,
}

/// The instance's combined stdout and stderr (current placement), as shipped by its node.
#[utoipa::path(get, path = "/v1/instances/{name}/logs", tag = "instances",
    params(("name" = String, Path, description = "Instance name"), LogsQuery),
    responses((status = 200, content_type = "text/plain", body = String),
        (status = 404, body = ErrorBody)))]
pub async fn get_logs(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Response> {
    let c = app.cluster.clone();
    let bytes = blocking(move || {
        let inst = c.get_instance(&name)?;
        c.logs
            .read(&name, inst.generation, q.tail_bytes.unwrap_or(1 << 20))
    })
    .await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        bytes,
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ShipQuery {
    /// Generation of the placement the output belongs to.
    pub generation: u64,
    /// Byte offset of the body in the node's log file.
    pub offset: u64,
}

/// Agents ship instance output here (raw bytes in the body).
#[utoipa::path(post, path = "/v1/instances/{name}/logs", tag = "instances",
    params(("name" = String, Path, description = "Instance name"), ShipQuery),
    request_body(content = String, content_type = "application/octet-stream"),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn post_logs(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ShipQuery>,
    body: Bytes,
) -> Result<StatusCode> {
    if body.len() > crate::logs::MAX_CHUNK {
        return Err(ServerError::InvalidRequest(format!(
            "log chunk of {} bytes is larger than {} bytes",
            body.len(),
            crate::logs::MAX_CHUNK
        )));
    }
    let c = app.cluster.clone();
    blocking(move || {
        let inst = c.get_instance(&name)?;
        // The current placement, or the target of a live migration (the guest's
        // output there may arrive before the switch).
        let migrating = inst.migration.as_ref().map(|m| m.generation);
        if inst.generation != q.generation && migrating != Some(q.generation) {
            return Ok(());
        }
        c.logs.append(&name, q.generation, q.offset, &body)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
