//! Boots the service: opens the store, recovers from a previous crash,
//! starts the executor, and serves the router on a listener.

use crate::executor::{Executor, Services};
use crate::live::Hub;
use crate::metrics::MetricCache;
use crate::store::Store;
use crate::train::DeviceRequest;
use crate::web::{app, AppState};
use std::path::PathBuf;
use std::sync::Arc;

/// Points kept in the metric cache (about 28 bytes each: ~220 MB).
const CACHE_POINTS: usize = 8_000_000;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub static_dir: PathBuf,
    pub device: DeviceRequest,
    pub default_dataset: String,
}

impl ServerConfig {
    /// Defaults for a data dir: static files from this source tree, the
    /// device from `PRETEXT_DEVICE`, and the CIFAR-10 archive next to the
    /// checkout (if present) pre-filled in the new-run form.
    pub fn new(data_dir: PathBuf) -> Result<Self, String> {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let cwd = std::env::current_dir().unwrap_or_default();
        // `PRETEXT_DEFAULT_DATASET`, else the CIFAR-10 archive beside the
        // working directory or beside the source tree.
        let default_dataset = std::env::var("PRETEXT_DEFAULT_DATASET")
            .ok()
            .unwrap_or_else(|| {
                [&cwd, &manifest]
                    .iter()
                    .find_map(|base| {
                        std::fs::canonicalize(base.join("../shared/data/cifar10-jpg.tar.gz")).ok()
                    })
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "/path/to/image-folder-or.tar.gz".into())
            });
        let static_dir = [cwd.join("static"), manifest.join("static")]
            .into_iter()
            .find(|d| d.join("vendor").is_dir())
            .unwrap_or_else(|| manifest.join("static"));
        Ok(Self {
            data_dir,
            static_dir,
            default_dataset,
            device: DeviceRequest::from_env()?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Opens everything and returns the state behind the router.
pub async fn start(config: ServerConfig) -> Result<AppState, BootError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| BootError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let data_dir =
        std::fs::canonicalize(&config.data_dir).map_err(|source| BootError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
    let store = Store::open(&data_dir.join("pretext.sqlite")).await?;
    let orphans = store
        .fail_orphaned_runs(
            "the server stopped while this run was running (resuming runs is not supported yet)",
        )
        .await?;
    if orphans > 0 {
        tracing::warn!("marked {orphans} run(s) left running by a previous process as failed");
    }
    let hub = Arc::new(Hub::new());
    let cache = Arc::new(MetricCache::new(CACHE_POINTS));
    let services = Services {
        store: store.clone(),
        hub: hub.clone(),
        cache: cache.clone(),
        data_dir: data_dir.clone(),
    };
    let executor = Executor::start(services, config.device);
    Ok(AppState {
        store,
        hub,
        cache,
        executor,
        data_dir,
        static_dir: config.static_dir,
        default_dataset: config.default_dataset,
    })
}

/// Serves until the future `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
