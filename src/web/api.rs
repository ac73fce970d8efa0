//! JSON REST handlers under `/api`.

use super::error::{ApiError, AppError};
use super::AppState;
use crate::config::RunConfig;
use crate::live::wire::CheckpointView;
use crate::store::{Run, RunStatus};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

type ApiResult<T> = Result<T, ApiError>;

/// Turns the `{id}` path segment into a run id with a clear 4xx.
pub fn parse_run_id(raw: &str) -> Result<i64, AppError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        AppError::bad_request(
            "invalid_id",
            format!("run id must be a positive integer, got {raw:?}"),
        )
    })
}

/// Keeps the framework's status for a refused JSON body (413 too large,
/// 415 not JSON, 400/422 malformed) in our error shape.
fn json_rejection(e: JsonRejection) -> AppError {
    let status = e.status();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "invalid_json",
    };
    AppError::Rejected {
        status,
        code,
        message: e.body_text(),
    }
}

pub async fn method_not_allowed() -> ApiError {
    ApiError(AppError::Rejected {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: "this route does not accept that HTTP method".into(),
    })
}

pub async fn load_run(state: &AppState, raw_id: &str) -> Result<Run, AppError> {
    let id = parse_run_id(raw_id)?;
    state
        .store
        .get_run(id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("run {id}")))
}

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

pub async fn create_run(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    let Json(body) = body.map_err(json_rejection)?;
    let mut config = RunConfig::from_json(body)?;
    if let Ok(cwd) = std::env::current_dir() {
        config.resolve_paths(&cwd);
    }
    let run = state.store.create_run(&config).await?;
    state.executor.wake();
    Ok((StatusCode::CREATED, Json(run)))
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
}

pub async fn list_runs(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let runs = state.store.list_runs(limit).await?;
    Ok(Json(json!({ "runs": runs })))
}

pub async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Run>> {
    Ok(Json(load_run(&state, &id).await?))
}

/// Cancels a queued run at once; a running one stops within one step (the
/// response then still says `running`; watch the run for `cancelled`).
pub async fn cancel_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    let run = load_run(&state, &id).await?;
    match run.status {
        RunStatus::Queued if state.store.cancel_if_queued(run.id).await? => {
            let run = load_run(&state, &id).await?;
            state
                .hub
                .publish(run.id, &crate::live::wire::Msg::Status { run: &run });
            Ok((StatusCode::OK, Json(run)))
        }
        RunStatus::Queued | RunStatus::Running => {
            // Either it is running or the queue claimed it a moment ago: the
            // flag is picked up when its training thread starts or steps.
            state.executor.cancel_running(run.id);
            Ok((StatusCode::ACCEPTED, Json(load_run(&state, &id).await?)))
        }
        status => {
            Err(AppError::Conflict(format!("run {} is already {}", run.id, status.as_str())).into())
        }
    }
}

#[derive(Deserialize)]
pub struct MetricsQuery {
    keys: Option<String>,
    max_points: Option<String>,
}

pub async fn metrics(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<MetricsQuery>,
) -> ApiResult<Json<Value>> {
    let run = load_run(&state, &id).await?;
    let max_points = match q.max_points.as_deref() {
        None => None,
        Some(raw) => Some(
            raw.parse::<usize>()
                .ok()
                .filter(|n| *n >= 2)
                .ok_or_else(|| {
                    AppError::bad_request(
                        "invalid_query",
                        format!("max_points must be an integer >= 2, got {raw:?}"),
                    )
                })?,
        ),
    };
    let keys: Option<Vec<String>> = q.keys.as_deref().map(|k| {
        k.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    });
    let metrics = state
        .cache
        .read_many(&state.store, run.id, keys.as_deref(), max_points)
        .await?;
    Ok(Json(json!({ "run_id": run.id, "metrics": metrics })))
}

pub async fn list_checkpoints(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let run = load_run(&state, &id).await?;
    let list: Vec<CheckpointView> = state
        .store
        .list_checkpoints(run.id)
        .await?
        .iter()
        .map(Into::into)
        .collect();
    Ok(Json(json!({ "checkpoints": list })))
}
