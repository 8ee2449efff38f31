//! `/v1/nodes`: registration, listing, and the agent protocol (heartbeat, assignments).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::Json;
use nimbus_api::{Assignments, ErrorBody, Heartbeat, Node, NodeList, RegisterNode};
use serde::Deserialize;
use utoipa::IntoParams;

use super::instances::{DEFAULT_LIMIT, MAX_LIMIT};
use super::{blocking, ApiJson, ApiQuery, AppState};
use crate::error::{Result, ServerError};

/// Longest an assignments long-poll may wait.
const MAX_WAIT_SECS: u64 = 60;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DrainQuery {
    /// Move running VMs offline (stop, back up, restore) instead of live-migrating them.
    #[serde(default)]
    pub offline: bool,
}

/// Drain a node: it takes no new instances and its instances move to other nodes
/// (running VMs: live-migrated, or with `offline` stopped, backed up and restored there;
/// processes: backed up and restored).
#[utoipa::path(post, path = "/v1/nodes/{name}/drain", tag = "nodes",
    params(("name" = String, Path, description = "Node name"), DrainQuery),
    responses((status = 200, body = Node), (status = 404, body = ErrorBody),
        (status = 409, description = "The node is down", body = ErrorBody)))]
pub async fn drain_node(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<DrainQuery>,
) -> Result<Json<Node>> {
    let c = app.cluster.clone();
    Ok(Json(
        blocking(move || c.drain_node(&name, q.offline)).await?,
    ))
}

/// Stop draining a node: it takes new instances again.
#[utoipa::path(post, path = "/v1/nodes/{name}/undrain", tag = "nodes",
    params(("name" = String, Path, description = "Node name")),
    responses((status = 200, body = Node), (status = 404, body = ErrorBody),
        (status = 409, description = "The node is not draining", body = ErrorBody)))]
pub async fn undrain_node(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Node>> {
    let c = app.cluster.clone();
    Ok(Json(blocking(move || c.undrain_node(&name)).await?))
}

/// Register a node (agents call this when they start; idempotent).
#[utoipa::path(post, path = "/v1/nodes", tag = "nodes", request_body = RegisterNode,
    responses((status = 200, body = Node), (status = 400, body = ErrorBody)))]
pub async fn register_node(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<RegisterNode>,
) -> Result<Json<Node>> {
    let c = app.cluster.clone();
    Ok(Json(blocking(move || c.register_node(req)).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NodeListQuery {
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Cursor: the `next` of the previous page.
    pub after: Option<String>,
}

/// List nodes with capacity, allocation, state and labels.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", params(NodeListQuery),
    responses((status = 200, body = NodeList), (status = 400, body = ErrorBody)))]
pub async fn list_nodes(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<NodeListQuery>,
) -> Result<Json<NodeList>> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ServerError::InvalidRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let c = app.cluster.clone();
    let list = blocking(move || {
        let instances = c.all_instances()?;
        let nodes = c.all_nodes_with(&instances)?;
        let items: Vec<Node> = nodes
            .into_iter()
            .filter(|n| {
                q.after
                    .as_ref()
                    .is_none_or(|a| n.name.as_str() > a.as_str())
            })
            .take(limit + 1)
            .collect();
        Ok(page(items, limit))
    })
    .await?;
    Ok(Json(list))
}

fn page(mut items: Vec<Node>, limit: usize) -> NodeList {
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|n| n.name.clone())
    } else {
        None
    };
    NodeList { items, next }
}

/// Get one node.
#[utoipa::path(get, path = "/v1/nodes/{name}", tag = "nodes",
    params(("name" = String, Path, description = "Node name")),
    responses((status = 200, body = Node), (status = 404, body = ErrorBody)))]
pub async fn get_node(State(app): State<AppState>, Path(name): Path<String>) -> Result<Json<Node>> {
    let c = app.cluster.clone();
    let node = blocking(move || {
        let instances = c.all_instances()?;
        c.all_nodes_with(&instances)?
            .into_iter()
            .find(|n| n.name == name)
            .ok_or(ServerError::NotFound { kind: "node", name })
    })
    .await?;
    Ok(Json(node))
}

/// Agent heartbeat: proves the node is alive and reports each instance's observed state.
#[utoipa::path(post, path = "/v1/nodes/{name}/heartbeat", tag = "nodes",
    params(("name" = String, Path, description = "Node name")),
    request_body = Heartbeat,
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn heartbeat(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiJson(hb): ApiJson<Heartbeat>,
) -> Result<axum::http::StatusCode> {
    let c = app.cluster.clone();
    blocking(move || c.heartbeat(&name, hb)).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AssignmentsQuery {
    /// Answer only once the store revision is above this index (long-poll).
    pub index: Option<u64>,
    /// How long to wait for a change, in seconds (default 30, at most 60).
    pub wait_secs: Option<u64>,
}

/// The full set of instances a node must run or stop. With `index`, waits until the
/// cluster changes past that index (or the wait ends) before answering.
#[utoipa::path(get, path = "/v1/nodes/{name}/assignments", tag = "nodes",
    params(("name" = String, Path, description = "Node name"), AssignmentsQuery),
    responses((status = 200, body = Assignments), (status = 404, body = ErrorBody)))]
pub async fn assignments(
    State(app): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<AssignmentsQuery>,
) -> Result<Json<Assignments>> {
    let wait = Duration::from_secs(q.wait_secs.unwrap_or(30).min(MAX_WAIT_SECS));
    let mut rx = app.cluster.store.subscribe();
    if let Some(index) = q.index {
        let _ = tokio::time::timeout(wait, rx.wait_for(|rev| *rev > index)).await;
    }
    let c = app.cluster.clone();
    let out = blocking(move || {
        c.get_node(&name)?;
        // Read the revision first: a change that lands during the read is seen next time.
        let index = c.store.revision()?;
        let (assignments, standbys) = c.assignments(&name)?;
        let images = c.replicas_for(&name)?;
        Ok(Assignments {
            index,
            assignments,
            images,
            standbys,
        })
    })
    .await?;
    Ok(Json(out))
}
