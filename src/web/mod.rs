//! The HTTP layer: one router for pages, the JSON API and the WebSocket.
//! It never touches tensors; training happens behind [`Executor`].

pub mod api;
pub mod download;
pub mod error;
pub mod pages;
pub mod watch;

use crate::executor::Executor;
use crate::live::Hub;
use crate::metrics::MetricCache;
use crate::store::Store;
use axum::routing::{get, post};
use axum::Router;
use std::path::PathBuf;
use std::sync::Arc;
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

/// Shared state of every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub hub: Arc<Hub>,
    pub cache: Arc<MetricCache>,
    pub executor: Executor,
    pub data_dir: PathBuf,
    pub static_dir: PathBuf,
    /// Dataset path pre-filled in the new-run form.
    pub default_dataset: String,
}

/// The whole application router.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/health", get(api::health))
        .route("/runs", get(api::list_runs).post(api::create_run))
        .route("/runs/{id}", get(api::get_run))
        .route("/runs/{id}/cancel", post(api::cancel_run))
        .route("/runs/{id}/metrics", get(api::metrics))
        .route("/runs/{id}/checkpoints", get(api::list_checkpoints))
        .route("/runs/{id}/checkpoints/{name}", get(download::checkpoint))
        .route("/runs/{id}/live", get(watch::live))
        .fallback(|| async { error::ApiError(error::AppError::NotFound("route".into())) })
        .method_not_allowed_fallback(api::method_not_allowed);
    Router::new()
        .route("/", get(pages::index))
        .route("/runs/new", get(pages::new_run))
        .route("/runs/{id}", get(pages::show_run))
        .nest("/api", api)
        .nest_service("/static", ServeDir::new(&state.static_dir))
        .fallback(pages::not_found)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
