//! The HTTP API under `/v1`: router, extractors that turn every rejection into the one
//! error shape, request-latency middleware, `/metrics` and the OpenAPI document.

pub mod backups;
pub mod events;
pub mod images;
pub mod instances;
pub mod nodes;
pub mod store;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use crate::cluster::Cluster;
use crate::error::ServerError;
use crate::metrics::{Metrics, RouteLabel};

/// State shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    pub cluster: Arc<Cluster>,
    pub metrics: Arc<Metrics>,
}

/// JSON body extractor whose rejections are 400s in the API's error shape.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ServerError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(ServerError::InvalidRequest(rej.body_text())),
        }
    }
}

/// Query-string extractor with API-shaped rejections.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ServerError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rej) => Err(ServerError::InvalidRequest(rej.body_text())),
        }
    }
}

/// The OpenAPI document of the API, generated from the handlers and wire types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "nimbus",
        description = "A private cloud in one binary: instances, nodes, placement, events."
    ),
    paths(
        instances::create_instance,
        instances::list_instances,
        instances::get_instance,
        instances::stop_instance,
        instances::start_instance,
        instances::restart_instance,
        instances::pause_instance,
        instances::resume_instance,
        instances::delete_instance,
        instances::get_logs,
        instances::post_logs,
        nodes::register_node,
        nodes::list_nodes,
        nodes::get_node,
        nodes::heartbeat,
        nodes::drain_node,
        nodes::undrain_node,
        nodes::assignments,
        events::list_events,
        images::upload_file,
        images::register_image,
        images::list_images,
        images::get_image,
        images::delete_image,
        images::download_file,
        store::stats,
        store::verify,
        store::gc,
        store::image_manifest,
        store::get_chunk,
        store::put_chunk,
        store::missing,
        store::put_backup_manifest,
        store::export_image,
        backups::create_backup,
        backups::list_backups,
        backups::prune_backups,
        backups::complete_backup,
        backups::restore_backup,
        backups::replicate_image,
        backups::replica_done,
    ),
    tags(
        (name = "instances", description = "Workloads: create, inspect, control"),
        (name = "nodes", description = "Hosts and the agent protocol"),
        (name = "events", description = "The event log"),
        (name = "images", description = "VM images"),
        (name = "backups", description = "Backups of instance disks"),
        (name = "store", description = "The chunk store (deduplicated images and backups)"),
    )
)]
pub struct ApiDoc;

/// The OpenAPI document as pretty JSON (what `docs/openapi.json` holds).
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

async fn metrics_handler(State(app): State<AppState>) -> Response {
    let cluster = app.cluster.clone();
    let metrics = app.metrics.clone();
    let res = tokio::task::spawn_blocking(move || {
        let instances = cluster.all_instances()?;
        let nodes = cluster.all_nodes_with(&instances)?;
        metrics.refresh(&instances, &nodes);
        Ok::<_, ServerError>(metrics.encode())
    })
    .await;
    match res {
        Ok(Ok(text)) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => ServerError::Internal(e.to_string()).into_response(),
    }
}

async fn openapi_handler() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi_json(),
    )
        .into_response()
}

async fn not_found(req: Request) -> ServerError {
    ServerError::NotFound {
        kind: "endpoint",
        name: format!("{} {}", req.method(), req.uri().path()),
    }
}

async fn record_latency(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    app.metrics
        .api_latency
        .get_or_create(&RouteLabel {
            method,
            route,
            status: resp.status().as_u16().to_string(),
        })
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Builds the whole router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/instances",
            post(instances::create_instance).get(instances::list_instances),
        )
        .route(
            "/v1/instances/{name}",
            get(instances::get_instance).delete(instances::delete_instance),
        )
        .route("/v1/instances/{name}/stop", post(instances::stop_instance))
        .route(
            "/v1/instances/{name}/start",
            post(instances::start_instance),
        )
        .route(
            "/v1/instances/{name}/restart",
            post(instances::restart_instance),
        )
        .route(
            "/v1/instances/{name}/logs",
            get(instances::get_logs).post(instances::post_logs),
        )
        .route(
            "/v1/nodes",
            post(nodes::register_node).get(nodes::list_nodes),
        )
        .route("/v1/nodes/{name}", get(nodes::get_node))
        .route("/v1/nodes/{name}/heartbeat", post(nodes::heartbeat))
        .route("/v1/nodes/{name}/drain", post(nodes::drain_node))
        .route("/v1/nodes/{name}/undrain", post(nodes::undrain_node))
        .route("/v1/nodes/{name}/assignments", get(nodes::assignments))
        .route(
            "/v1/instances/{name}/pause",
            post(instances::pause_instance),
        )
        .route(
            "/v1/instances/{name}/resume",
            post(instances::resume_instance),
        )
        .route(
            "/v1/images",
            post(images::register_image).get(images::list_images),
        )
        .route(
            "/v1/images/{name}",
            get(images::get_image).delete(images::delete_image),
        )
        .route(
            "/v1/images/{name}/files/{file}",
            axum::routing::put(images::upload_file)
                .get(images::download_file)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/v1/images/{name}/export", get(store::export_image))
        .route(
            "/v1/images/{name}/replicate",
            post(backups::replicate_image),
        )
        .route("/v1/store/stats", get(store::stats))
        .route("/v1/store/verify", post(store::verify))
        .route("/v1/store/gc", post(store::gc))
        .route("/v1/store/images/{name}", get(store::image_manifest))
        .route("/v1/store/chunks/missing", post(store::missing))
        .route(
            "/v1/store/chunks/{id}",
            get(store::get_chunk)
                .put(store::put_chunk)
                .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024)),
        )
        .route(
            "/v1/store/backups/{instance}/{name}",
            axum::routing::put(store::put_backup_manifest)
                .layer(axum::extract::DefaultBodyLimit::max(256 * 1024 * 1024)),
        )
        .route(
            "/v1/instances/{name}/backups",
            post(backups::create_backup).get(backups::list_backups),
        )
        .route(
            "/v1/instances/{name}/backups/prune",
            post(backups::prune_backups),
        )
        .route(
            "/v1/nodes/{node}/backups/{instance}/{name}",
            post(backups::complete_backup),
        )
        .route(
            "/v1/nodes/{node}/replicas/{image}",
            post(backups::replica_done),
        )
        .route("/v1/backups/restore", post(backups::restore_backup))
        .route("/v1/events", get(events::list_events))
        .route("/v1/openapi.json", get(openapi_handler))
        .route("/metrics", get(metrics_handler))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            record_latency,
        ))
        .with_state(state)
}

/// Runs a blocking store operation off the async runtime.
/// Streams an open file as `application/octet-stream` of `len` bytes (1 MiB reads).
pub fn file_response(f: tokio::fs::File, len: u64) -> Response {
    let body =
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20));
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_string(),
            ),
            (axum::http::header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response()
}

pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServerError::Internal(format!("worker failed: {e}")))?
}
