//! All SQL lives here: runs, metric points and checkpoints in SQLite.
//!
//! Queries use sqlx's runtime API (no compile-time database needed) and plain
//! SQL that a PostgreSQL implementation of the same methods can mirror.

use crate::config::RunConfig;
use crate::train::MetricPoint;
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Lifecycle of a run; mirrors the `check` constraint on `run.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

impl FromStr for RunStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "completed" => RunStatus::Completed,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            other => return Err(StoreError::Corrupt(format!("unknown run status {other:?}"))),
        })
    }
}

/// Position in the training schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Progress {
    pub step: i64,
    pub total_steps: i64,
    pub epoch: i64,
    pub epochs: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: i64,
    pub name: String,
    pub method: String,
    pub config: serde_json::Value,
    pub status: RunStatus,
    pub device: Option<String>,
    pub error: Option<String>,
    pub progress: Progress,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Checkpoint {
    pub run_id: i64,
    pub name: String,
    /// Relative to the data dir.
    #[serde(skip)]
    pub path: String,
    pub bytes: i64,
    pub sha256: String,
    pub created_at: String,
}

/// One metric's points in step order, as parallel columns.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Series {
    pub steps: Vec<i64>,
    pub values: Vec<f64>,
    pub wall_times: Vec<f64>,
    pub epochs: Vec<i64>,
}

impl Series {
    pub fn len(&self) -> usize {
        self.steps.len()
    }
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// RFC 3339 UTC timestamp for now.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

const RUN_COLUMNS: &str = "id, name, method, config, status, device, error, step, total_steps, \
     epoch, epochs, created_at, started_at, finished_at";

fn run_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Run> {
    let config: String = row.try_get("config")?;
    let status: String = row.try_get("status")?;
    Ok(Run {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        method: row.try_get("method")?,
        config: serde_json::from_str(&config)
            .map_err(|e| StoreError::Corrupt(format!("run config: {e}")))?,
        status: status.parse()?,
        device: row.try_get("device")?,
        error: row.try_get("error")?,
        progress: Progress {
            step: row.try_get("step")?,
            total_steps: row.try_get("total_steps")?,
            epoch: row.try_get("epoch")?,
            epochs: row.try_get("epochs")?,
        },
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn checkpoint_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Checkpoint> {
    Ok(Checkpoint {
        run_id: row.try_get("run_id")?,
        name: row.try_get("name")?,
        path: row.try_get("path")?,
        bytes: row.try_get("bytes")?,
        sha256: row.try_get("sha256")?,
        created_at: row.try_get("created_at")?,
    })
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database file, in WAL mode, and applies
    /// the embedded migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across application crashes in WAL mode; only an
            // OS crash can lose the last transactions (SQLite docs, "WAL").
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    pub async fn create_run(&self, config: &RunConfig) -> Result<Run> {
        let json = serde_json::to_string(config).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let row = sqlx::query(&format!(
            "insert into run (name, method, config, status, epochs, created_at) \
             values (?, ?, ?, 'queued', ?, ?) returning {RUN_COLUMNS}"
        ))
        .bind(&config.name)
        .bind(config.method.kind())
        .bind(json)
        .bind(config.train.epochs as i64)
        .bind(now_rfc3339())
        .fetch_one(&self.pool)
        .await?;
        run_from_row(&row)
    }

    pub async fn get_run(&self, id: i64) -> Result<Option<Run>> {
        let row = sqlx::query(&format!("select {RUN_COLUMNS} from run where id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// Newest first.
    pub async fn list_runs(&self, limit: i64) -> Result<Vec<Run>> {
        let rows = sqlx::query(&format!(
            "select {RUN_COLUMNS} from run order by id desc limit ?"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    /// Atomically moves the oldest queued run to `running` and returns it.
    pub async fn claim_next_run(&self) -> Result<Option<Run>> {
        let row = sqlx::query(&format!(
            "update run set status = 'running', started_at = ? \
             where id = (select id from run where status = 'queued' order by id limit 1) \
             returning {RUN_COLUMNS}"
        ))
        .bind(now_rfc3339())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    pub async fn set_device(&self, id: i64, device: &str) -> Result<()> {
        sqlx::query("update run set device = ? where id = ?")
            .bind(device)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_progress(&self, id: i64, p: Progress) -> Result<()> {
        sqlx::query("update run set step = ?, total_steps = ?, epoch = ?, epochs = ? where id = ?")
            .bind(p.step)
            .bind(p.total_steps)
            .bind(p.epoch)
            .bind(p.epochs)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Moves a run that is not yet terminal to a terminal status.
    pub async fn finish_run(&self, id: i64, status: RunStatus, error: Option<&str>) -> Result<()> {
        debug_assert!(status.is_terminal());
        sqlx::query(
            "update run set status = ?, error = ?, finished_at = ? \
             where id = ? and status in ('queued', 'running')",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(now_rfc3339())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Cancels a run only if it has not started; true when it did.
    pub async fn cancel_if_queued(&self, id: i64) -> Result<bool> {
        let done = sqlx::query(
            "update run set status = 'cancelled', finished_at = ? where id = ? and status = 'queued'",
        )
        .bind(now_rfc3339())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// At start-up: runs a previous process left `running` can no longer
    /// progress, so they fail with `reason` instead of hanging forever.
    pub async fn fail_orphaned_runs(&self, reason: &str) -> Result<u64> {
        let done = sqlx::query(
            "update run set status = 'failed', error = ?, finished_at = ? where status = 'running'",
        )
        .bind(reason)
        .bind(now_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Inserts points in one transaction; a repeated (run, key, step) replaces
    /// the old value so a replayed batch never duplicates a step.
    pub async fn insert_points(&self, run_id: i64, points: &[MetricPoint]) -> Result<()> {
        // Full chunks share one SQL text, so SQLite parses it once and sqlx
        // reuses the prepared statement; only the tail is prepared anew.
        const ROWS: usize = 500;
        let mut tx = self.pool.begin().await?;
        for chunk in points.chunks(ROWS) {
            let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "insert or replace into scalar (run_id, key, step, epoch, value, wall_time) ",
            );
            qb.push_values(chunk, |mut b, p| {
                b.push_bind(run_id)
                    .push_bind(&p.key)
                    .push_bind(p.step)
                    .push_bind(p.epoch)
                    .push_bind(p.value)
                    .push_bind(p.wall_time);
            });
            qb.build()
                .persistent(chunk.len() == ROWS)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Points stored for a run, over all keys.
    pub async fn count_points(&self, run_id: i64) -> Result<i64> {
        let row = sqlx::query("select count(*) from scalar where run_id = ?")
            .bind(run_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    pub async fn metric_keys(&self, run_id: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("select distinct key from scalar where run_id = ? order by key")
            .bind(run_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get("key").map_err(Into::into))
            .collect()
    }

    /// Every point of one metric, in step order.
    pub async fn read_series(&self, run_id: i64, key: &str) -> Result<Series> {
        let rows: Vec<(i64, i64, f64, f64)> = sqlx::query_as(
            "select step, epoch, value, wall_time from scalar where run_id = ? and key = ? order by step",
        )
        .bind(run_id)
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        let mut s = Series::default();
        s.steps.reserve(rows.len());
        s.values.reserve(rows.len());
        s.wall_times.reserve(rows.len());
        s.epochs.reserve(rows.len());
        for (step, epoch, value, wall_time) in rows {
            s.steps.push(step);
            s.epochs.push(epoch);
            s.values.push(value);
            s.wall_times.push(wall_time);
        }
        Ok(s)
    }

    /// The value at the highest step of `key` for each of `run_ids`.
    pub async fn latest_values(&self, key: &str) -> Result<std::collections::HashMap<i64, f64>> {
        let rows = sqlx::query(
            "select s.run_id, s.value from scalar s \
             join (select run_id, max(step) as step from scalar where key = ? group by run_id) m \
               on s.run_id = m.run_id and s.step = m.step \
             where s.key = ?",
        )
        .bind(key)
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<f64, _>(1)?)))
            .collect()
    }

    pub async fn add_checkpoint(&self, c: &Checkpoint) -> Result<()> {
        sqlx::query(
            "insert or replace into checkpoint (run_id, name, path, bytes, sha256, created_at) \
             values (?, ?, ?, ?, ?, ?)",
        )
        .bind(c.run_id)
        .bind(&c.name)
        .bind(&c.path)
        .bind(c.bytes)
        .bind(&c.sha256)
        .bind(&c.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn list_checkpoints(&self, run_id: i64) -> Result<Vec<Checkpoint>> {
        let rows = sqlx::query(
            "select run_id, name, path, bytes, sha256, created_at from checkpoint \
             where run_id = ? order by created_at, name",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(checkpoint_from_row).collect()
    }

    pub async fn get_checkpoint(&self, run_id: i64, name: &str) -> Result<Option<Checkpoint>> {
        let row = sqlx::query(
            "select run_id, name, path, bytes, sha256, created_at from checkpoint \
             where run_id = ? and name = ?",
        )
        .bind(run_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(checkpoint_from_row).transpose()
    }
}
