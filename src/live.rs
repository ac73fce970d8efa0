//! Live fan-out: one bounded broadcast channel per run carrying pre-rendered
//! JSON messages to every WebSocket watcher.
//!
//! Publishing never waits: a watcher that falls more than [`CAPACITY`]
//! messages behind loses the oldest ones and is told it lagged (then it
//! resynchronises from a snapshot), so no watcher can slow training or the
//! other watchers.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Messages buffered per run before a slow watcher starts losing them.
pub const CAPACITY: usize = 4096;

/// A message as sent on the wire; rendered once, shared by all watchers.
pub type LiveMsg = Arc<str>;

#[derive(Default)]
pub struct Hub {
    runs: Mutex<HashMap<i64, broadcast::Sender<LiveMsg>>>,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribe before reading the snapshot so that nothing published in
    /// between is missed (at worst it is seen twice; clients upsert by step).
    pub fn subscribe(&self, run_id: i64) -> broadcast::Receiver<LiveMsg> {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.entry(run_id)
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .subscribe()
    }

    /// Sends `msg` (serialised once) to the run's watchers, if any.
    pub fn publish<T: Serialize>(&self, run_id: i64, msg: &T) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = runs.get(&run_id) else { return };
        if tx.receiver_count() == 0 {
            runs.remove(&run_id);
            return;
        }
        match serde_json::to_string(msg) {
            Ok(json) => {
                let _ = tx.send(json.into());
            }
            Err(e) => tracing::error!(run_id, "live message not serialisable: {e}"),
        }
    }

    pub fn watchers(&self, run_id: i64) -> usize {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.get(&run_id).map_or(0, |tx| tx.receiver_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stuck_watcher_lags_without_blocking_others() {
        let hub = Hub::new();
        let mut slow = hub.subscribe(1);
        let mut fast = hub.subscribe(1);
        for i in 0..(CAPACITY + 10) {
            hub.publish(1, &i);
            assert_eq!(&*fast.recv().await.unwrap(), i.to_string());
        }
        match slow.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, 10),
            other => panic!("expected lag, got {other:?}"),
        }
    }

    #[test]
    fn publishing_without_watchers_is_a_no_op() {
        let hub = Hub::new();
        hub.publish(7, &"x");
        assert_eq!(hub.watchers(7), 0);
    }
}

/// The JSON messages of `GET /api/runs/{id}/live`, tagged by `type`.
pub mod wire {
    use crate::store::{Checkpoint, Progress, Run, Series};
    use crate::train::MetricPoint;
    use serde::Serialize;
    use std::collections::BTreeMap;

    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub enum Msg<'a> {
        /// First message on connect, and again after a lag: replace all state.
        Snapshot {
            run: &'a Run,
            metrics: &'a BTreeMap<String, Series>,
            checkpoints: Vec<CheckpointView>,
        },
        /// New points: append (upsert by step).
        Points {
            points: Vec<Point<'a>>,
        },
        Progress(Progress),
        Status {
            run: &'a Run,
        },
        Checkpoint {
            checkpoint: CheckpointView,
        },
        /// The watcher fell behind and missed `skipped` messages; a snapshot follows.
        Lagged {
            skipped: u64,
        },
    }

    #[derive(Serialize)]
    pub struct Point<'a> {
        pub key: &'a str,
        pub step: i64,
        pub epoch: i64,
        pub value: f64,
        pub wall_time: f64,
    }

    impl<'a> From<&'a MetricPoint> for Point<'a> {
        fn from(p: &'a MetricPoint) -> Self {
            Self {
                key: &p.key,
                step: p.step,
                epoch: p.epoch,
                value: p.value,
                wall_time: p.wall_time,
            }
        }
    }

    /// A checkpoint as the API shows it, with its download URL.
    #[derive(Serialize, Clone, Debug)]
    pub struct CheckpointView {
        pub name: String,
        pub bytes: i64,
        pub sha256: String,
        pub created_at: String,
        pub url: String,
    }

    impl From<&Checkpoint> for CheckpointView {
        fn from(c: &Checkpoint) -> Self {
            Self {
                name: c.name.clone(),
                bytes: c.bytes,
                sha256: c.sha256.clone(),
                created_at: c.created_at.clone(),
                url: format!("/api/runs/{}/checkpoints/{}", c.run_id, c.name),
            }
        }
    }
}
