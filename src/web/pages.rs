//! HTML pages (askama templates under `templates/`, mirroring the URL tree).

use super::api::load_run;
use super::error::{Page, PageError};
use super::AppState;
use crate::config::RunConfig;
use crate::live::wire::CheckpointView;
use askama::Template;
use axum::extract::{Path, State};
use serde_json::json;

pub struct RunRow {
    pub id: i64,
    pub name: String,
    pub method: String,
    pub status: String,
    pub device: String,
    pub created_at: String,
    pub progress_pct: u32,
    pub knn_top1: String,
    pub loss: String,
}

#[derive(Template)]
#[template(path = "runs/index.html")]
pub struct RunsIndexPage {
    pub runs: Vec<RunRow>,
}

#[derive(Template)]
#[template(path = "runs/new.html")]
pub struct NewRunPage {
    pub default_config: String,
}

pub struct CheckpointRow {
    pub name: String,
    pub bytes: u64,
    pub size: String,
    pub sha256: String,
    pub created_at: String,
    pub url: String,
}

#[derive(Template)]
#[template(path = "runs/show.html")]
pub struct RunPage {
    pub id: i64,
    pub name: String,
    pub method: String,
    pub status: String,
    pub device: String,
    pub error: String,
    pub config_json: String,
    pub projection_dim: usize,
    pub checkpoints: Vec<CheckpointRow>,
}

/// "1.2 MB"-style sizes (decimal units, as browsers show downloads).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub async fn index(State(state): State<AppState>) -> Result<Page<RunsIndexPage>, PageError> {
    let runs = state.store.list_runs(200).await?;
    let knn = state.store.latest_values("knn/top1").await?;
    let loss = state.store.latest_values("train/loss").await?;
    let rows = runs
        .into_iter()
        .map(|r| {
            let p = r.progress;
            let pct = if r.status == crate::store::RunStatus::Completed {
                100
            } else if p.total_steps > 0 {
                ((p.step * 100) / p.total_steps).clamp(0, 100) as u32
            } else {
                0
            };
            RunRow {
                id: r.id,
                progress_pct: pct,
                knn_top1: knn
                    .get(&r.id)
                    .map_or("—".into(), |v| format!("{:.1}%", v * 100.0)),
                loss: loss.get(&r.id).map_or("—".into(), |v| format!("{v:.4}")),
                name: r.name,
                method: r.method,
                status: r.status.as_str().to_string(),
                device: r.device.unwrap_or_else(|| "—".into()),
                created_at: r.created_at,
            }
        })
        .collect();
    Ok(Page(RunsIndexPage { runs: rows }))
}

/// The quickstart configuration the form starts from: a small SimCLR run on
/// a CIFAR-10 subset that finishes in minutes on two CPU cores.
pub fn quickstart_config(data_path: &str) -> serde_json::Value {
    json!({
        "name": "simclr-cifar10-quick",
        "method": {"kind": "simclr", "temperature": 0.5, "projection_hidden_dim": 512, "projection_dim": 128},
        "backbone": {"preset": "small"},
        "data": {"path": data_path, "train_split": "train", "test_split": "test",
                 "max_train_images": 2560, "max_test_images": 1000, "image_size": 32, "workers": 0},
        "train": {"epochs": 3, "batch_size": 128, "lr": 0.12, "momentum": 0.9,
                  "weight_decay": 0.0005, "warmup_epochs": 1, "log_every_steps": 2, "seed": 0},
        "eval": {"knn_k": 200, "knn_temperature": 0.1, "every_epochs": 1}
    })
}

pub async fn new_run(State(state): State<AppState>) -> Result<Page<NewRunPage>, PageError> {
    let config = quickstart_config(&state.default_dataset);
    let default_config = serde_json::to_string_pretty(&config)
        .map_err(|e| crate::web::error::AppError::Internal(e.to_string()))?;
    Ok(Page(NewRunPage { default_config }))
}

pub async fn show_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Page<RunPage>, PageError> {
    let run = load_run(&state, &id).await?;
    let checkpoints = state
        .store
        .list_checkpoints(run.id)
        .await?
        .iter()
        .map(|c| {
            let v = CheckpointView::from(c);
            CheckpointRow {
                bytes: v.bytes.max(0) as u64,
                size: human_bytes(v.bytes.max(0) as u64),
                name: v.name,
                sha256: v.sha256,
                created_at: v.created_at,
                url: v.url,
            }
        })
        .collect();
    let projection_dim = serde_json::from_value::<RunConfig>(run.config.clone())
        .map_or(0, |c| c.method.embedding_dim());
    Ok(Page(RunPage {
        id: run.id,
        name: run.name,
        method: run.method,
        status: run.status.as_str().to_string(),
        device: run.device.unwrap_or_else(|| "—".into()),
        error: run.error.unwrap_or_default(),
        config_json: serde_json::to_string_pretty(&run.config).unwrap_or_default(),
        projection_dim,
        checkpoints,
    }))
}

pub async fn not_found() -> PageError {
    PageError(crate::web::error::AppError::NotFound("page".into()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes() {
        assert_eq!(super::human_bytes(999), "999 B");
        assert_eq!(super::human_bytes(1_234_000), "1.2 MB");
    }

    #[test]
    fn quickstart_config_is_valid() {
        crate::config::RunConfig::from_json(super::quickstart_config("/data/cifar")).unwrap();
    }
}
