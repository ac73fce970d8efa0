//! `GET /api/runs/{id}/live`: a WebSocket that sends the run's snapshot, then
//! every new point, progress, checkpoint and status change.

use super::api::load_run;
use super::error::ApiError;
use super::AppState;
use crate::live::wire::Msg;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Points per metric in a snapshot; the chart needs no more to draw its shape.
const SNAPSHOT_POINTS: usize = 5000;
/// A watcher whose socket accepts nothing for this long is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn live(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let run = load_run(&state, &id).await?;
    Ok(ws.on_upgrade(move |socket| watch(socket, state, run.id)))
}

async fn send(socket: &mut WebSocket, text: &str) -> Result<(), ()> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

async fn send_snapshot(socket: &mut WebSocket, state: &AppState, run_id: i64) -> Result<(), ()> {
    let Ok(Some(run)) = state.store.get_run(run_id).await else {
        return Err(());
    };
    let Ok(metrics) = state
        .cache
        .read_many(&state.store, run_id, None, Some(SNAPSHOT_POINTS))
        .await
    else {
        return Err(());
    };
    let Ok(checkpoints) = state.store.list_checkpoints(run_id).await else {
        return Err(());
    };
    let checkpoints = checkpoints.iter().map(Into::into).collect();
    let json = serde_json::to_string(&Msg::Snapshot {
        run: &run,
        metrics: &metrics,
        checkpoints,
    })
    .map_err(|_| ())?;
    send(socket, &json).await
}

async fn watch(mut socket: WebSocket, state: AppState, run_id: i64) {
    // Subscribe first: anything published while the snapshot is read is
    // then delivered after it rather than lost.
    let mut rx = state.hub.subscribe(run_id);
    if send_snapshot(&mut socket, &state, run_id).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Ok(json) => {
                    if send(&mut socket, &json).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(skipped)) => {
                    let lag = serde_json::to_string(&Msg::Lagged { skipped }).unwrap_or_default();
                    if send(&mut socket, &lag).await.is_err() || send_snapshot(&mut socket, &state, run_id).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Closed) => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {} // pings are answered by axum; other input is ignored
            },
        }
    }
}
