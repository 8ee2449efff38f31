//! The nimbus control plane: the HTTP API, the durable store behind it, and the
//! reconcilers that turn desired state into placements on nodes.
//!
//! # Layout
//! - [`cluster`]: domain operations; every state change is checked and stored here.
//! - [`backups`]: backups, restore and replication requests over the chunk store.
//! - [`http`]: the `/v1` API, `/metrics`, the OpenAPI document.
//! - [`reconcile`]: scheduler loop and node liveness loop.
//! - [`metrics`]: Prometheus metrics.
//! - [`logs`]: instance output shipped by agents.
//! - [`images`]: VM image files: upload checks and storage.
//! - [`error`]: the server's error type and its one mapping to HTTP.

pub mod backups;
pub mod cluster;
pub mod error;
pub mod http;
pub mod images;
pub mod logs;
pub mod metrics;
pub mod migration;
pub mod reconcile;
pub mod recovery;
pub mod standby;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use nimbus_sched::SchedulerConfig;
use nimbus_store::SqliteStore;

pub use cluster::Cluster;
pub use error::ServerError;

/// How to run a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Holds `state.db` (the store) and `logs/`.
    pub data_dir: PathBuf,
    pub scheduler: SchedulerConfig,
    /// When silent nodes become suspect and down, and how long a returning node waits.
    pub liveness: recovery::LivenessConfig,
}

/// A started server.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub cluster: Arc<Cluster>,
    pub serve: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("creating data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening the store: {0}")]
    Store(#[from] nimbus_store::StoreError),
    #[error("opening the chunk store: {0}")]
    ChunkStore(String),
    #[error("listening on {addr}: {source} (is another nimbus running? use --listen to pick another address)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Opens the store, starts the reconcilers and serves the API until the process ends.
pub async fn start(cfg: ServerConfig) -> Result<RunningServer, StartError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| StartError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let store = Arc::new(SqliteStore::open(&cfg.data_dir.join("state.db"))?);
    let logs = logs::LogStore::new(cfg.data_dir.join("logs"));
    let images = images::ImageFiles::new(cfg.data_dir.join("images"));
    let chunks = nimbus_image::ImageStore::open(
        cfg.data_dir.join("store"),
        nimbus_image::StoreOptions::default(),
    )
    .map_err(|e| StartError::ChunkStore(e.to_string()))?;
    let metrics = Arc::new(metrics::Metrics::new());
    let cluster = Arc::new(Cluster::new(
        store,
        logs,
        images,
        Arc::new(chunks),
        metrics.clone(),
        recovery::Liveness::new(cfg.liveness),
    ));

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: cfg.listen,
        source,
    })?;

    tokio::spawn(reconcile::scheduler_loop(
        cluster.clone(),
        cfg.scheduler.clone(),
        metrics.clone(),
    ));
    tokio::spawn(recovery::liveness_loop(cluster.clone()));
    tokio::spawn(recovery::backup_loop(cluster.clone()));
    tokio::spawn(recovery::drain_loop(cluster.clone()));

    let app = http::router(http::AppState {
        cluster: cluster.clone(),
        metrics,
    });
    let serve = tokio::spawn(async move { axum::serve(listener, app).await });
    tracing::info!(%addr, data_dir = %cfg.data_dir.display(), "nimbus server listening");
    Ok(RunningServer {
        addr,
        cluster,
        serve,
    })
}
