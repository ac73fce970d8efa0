//! The job queue's consumer and the metric writer.
//!
//! The executor claims queued runs in submission order and trains each on a
//! dedicated OS thread. The training thread reports through a non-blocking
//! channel to one writer task, which batches points into SQLite, updates the
//! cache and fans them out to live watchers — in that order, so a point a
//! watcher sees is already readable over REST.

use crate::config::RunConfig;
use crate::live::{wire, Hub};
use crate::metrics::MetricCache;
use crate::store::{now_rfc3339, Checkpoint, Progress, RunStatus, Store};
use crate::train::{self, DeviceRequest, MetricPoint, Outcome, TrainEvent, TrainJob};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};

/// Most events the writer folds into one transaction.
const WRITER_BATCH: usize = 50_000;

/// What flows from training threads to the writer.
pub enum WriterMsg {
    Event(i64, TrainEvent),
    /// Sent after the job's last event; `Err` carries the failure reason.
    Finished(i64, Result<Outcome, String>),
}

/// Shared services the executor and the writer need.
#[derive(Clone)]
pub struct Services {
    pub store: Store,
    pub hub: Arc<Hub>,
    pub cache: Arc<MetricCache>,
    pub data_dir: PathBuf,
}

/// Handle the web layer uses to wake the queue and cancel runs.
#[derive(Clone)]
pub struct Executor {
    wake: Arc<Notify>,
    /// Cancel flags of runs that are (about to be) running, by run id.
    cancels: Arc<Mutex<HashMap<i64, Arc<AtomicBool>>>>,
    writer: mpsc::UnboundedSender<WriterMsg>,
}

impl Executor {
    /// Starts the writer and one executor slot.
    pub fn start(services: Services, device: DeviceRequest) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer_loop(services.clone(), rx));
        let exec = Executor {
            wake: Arc::new(Notify::new()),
            cancels: Arc::new(Mutex::new(HashMap::new())),
            writer: tx,
        };
        tokio::spawn(exec.clone().queue_loop(services, device));
        exec
    }

    /// A sender a training thread (or a benchmark) can report through.
    pub fn writer(&self) -> mpsc::UnboundedSender<WriterMsg> {
        self.writer.clone()
    }

    /// Tells the queue a run was submitted.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Raises the cancel flag of a running run; the training thread stops
    /// within one step and the writer marks it cancelled.
    pub fn cancel_running(&self, run_id: i64) {
        self.flag(run_id).store(true, Ordering::SeqCst);
    }

    fn flag(&self, run_id: i64) -> Arc<AtomicBool> {
        let mut map = self.cancels.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(run_id).or_default().clone()
    }

    async fn queue_loop(self, services: Services, device: DeviceRequest) {
        loop {
            match services.store.claim_next_run().await {
                Ok(Some(run)) => {
                    let id = run.id;
                    self.run_job(&services, run.id, run.config, device).await;
                    self.cancels
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                }
                Ok(None) => {
                    // Polling as well as waking keeps the queue moving even if
                    // a wake-up is lost (e.g. a run inserted by another process).
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), self.wake.notified()).await;
                }
                Err(e) => {
                    tracing::error!("claiming the next run failed: {e}");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    async fn run_job(
        &self,
        services: &Services,
        run_id: i64,
        config: serde_json::Value,
        device: DeviceRequest,
    ) {
        publish_status(services, run_id).await;
        let config: RunConfig = match serde_json::from_value(config) {
            Ok(c) => c,
            Err(e) => {
                let _ = self.writer.send(WriterMsg::Finished(
                    run_id,
                    Err(format!("stored config: {e}")),
                ));
                return;
            }
        };
        let job = TrainJob {
            run_id,
            config,
            run_dir: run_dir(&services.data_dir, run_id),
            cache_dir: services.data_dir.join("cache"),
            device,
            cancel: self.flag(run_id),
        };
        tracing::info!(run_id, name = %job.config.name, "run started");
        let (done_tx, done_rx) = oneshot::channel();
        let writer = self.writer.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("train-run-{run_id}"))
            .spawn(move || {
                let sink_writer = writer.clone();
                let sink: train::EventSink = Box::new(move |ev| {
                    let _ = sink_writer.send(WriterMsg::Event(run_id, ev));
                });
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    train::run(job, sink)
                }));
                let result = match result {
                    Ok(Ok(outcome)) => Ok(outcome),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(panic) => Err(format!("training panicked: {}", panic_message(&panic))),
                };
                let _ = writer.send(WriterMsg::Finished(run_id, result));
                let _ = done_tx.send(());
            });
        match spawned {
            Ok(_) => {
                let _ = done_rx.await;
            }
            Err(e) => {
                let _ = self.writer.send(WriterMsg::Finished(
                    run_id,
                    Err(format!("could not start a training thread: {e}")),
                ));
            }
        }
    }
}

/// Where a run's files live.
pub fn run_dir(data_dir: &Path, run_id: i64) -> PathBuf {
    data_dir.join("runs").join(run_id.to_string())
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

async fn writer_loop(services: Services, mut rx: mpsc::UnboundedReceiver<WriterMsg>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, WRITER_BATCH).await > 0 {
        apply_batch(&services, std::mem::take(&mut batch)).await;
    }
}

/// Applies one batch of events: device, points, progress, checkpoints, then
/// terminal statuses. Events of a run arrive in order and `Finished` is its
/// last, so applying kinds in this order keeps each run's history consistent.
async fn apply_batch(s: &Services, batch: Vec<WriterMsg>) {
    let mut devices = Vec::new();
    let mut points: BTreeMap<i64, Vec<MetricPoint>> = BTreeMap::new();
    let mut progress: BTreeMap<i64, Progress> = BTreeMap::new();
    let mut checkpoints = Vec::new();
    let mut finished = Vec::new();
    for msg in batch {
        match msg {
            WriterMsg::Event(id, TrainEvent::DeviceChosen { device }) => devices.push((id, device)),
            WriterMsg::Event(id, TrainEvent::Metrics(p)) => points.entry(id).or_default().extend(p),
            WriterMsg::Event(
                id,
                TrainEvent::Progress {
                    step,
                    total_steps,
                    epoch,
                    epochs,
                },
            ) => {
                progress.insert(
                    id,
                    Progress {
                        step,
                        total_steps,
                        epoch,
                        epochs,
                    },
                );
            }
            WriterMsg::Event(
                id,
                TrainEvent::Checkpoint {
                    name,
                    path,
                    bytes,
                    sha256,
                },
            ) => {
                let rel = path
                    .strip_prefix(&s.data_dir)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                checkpoints.push(Checkpoint {
                    run_id: id,
                    name,
                    path: rel,
                    bytes: bytes as i64,
                    sha256,
                    created_at: now_rfc3339(),
                });
            }
            WriterMsg::Finished(id, result) => finished.push((id, result)),
        }
    }
    // Each part logs and carries on: a failed write must not strand the
    // terminal status of a run behind it.
    let log = |what: &str, id: i64, e: crate::store::StoreError| {
        tracing::error!(run_id = id, "writing {what}: {e}")
    };
    for (id, device) in devices {
        match s.store.set_device(id, &device).await {
            Ok(()) => publish_status(s, id).await,
            Err(e) => log("device", id, e),
        }
    }
    for (id, pts) in points {
        match s.store.insert_points(id, &pts).await {
            Ok(()) => {
                s.cache.append(id, &pts).await;
                s.hub.publish(
                    id,
                    &wire::Msg::Points {
                        points: pts.iter().map(Into::into).collect(),
                    },
                );
            }
            Err(e) => log("metric points", id, e),
        }
    }
    for (id, p) in progress {
        match s.store.set_progress(id, p).await {
            Ok(()) => s.hub.publish(id, &wire::Msg::Progress(p)),
            Err(e) => log("progress", id, e),
        }
    }
    for c in checkpoints {
        match s.store.add_checkpoint(&c).await {
            Ok(()) => s.hub.publish(
                c.run_id,
                &wire::Msg::Checkpoint {
                    checkpoint: (&c).into(),
                },
            ),
            Err(e) => log("checkpoint", c.run_id, e),
        }
    }
    for (id, result) in finished {
        let (status, error) = match result {
            Ok(Outcome::Completed) => (RunStatus::Completed, None),
            Ok(Outcome::Cancelled) => (RunStatus::Cancelled, None),
            Err(e) => (RunStatus::Failed, Some(e)),
        };
        match &error {
            Some(e) => tracing::warn!(run_id = id, "run failed: {e}"),
            None => tracing::info!(run_id = id, "run {}", status.as_str()),
        }
        match s.store.finish_run(id, status, error.as_deref()).await {
            Ok(()) => publish_status(s, id).await,
            Err(e) => log("final status", id, e),
        }
    }
}

async fn publish_status(s: &Services, id: i64) {
    if let Ok(Some(run)) = s.store.get_run(id).await {
        s.hub.publish(id, &wire::Msg::Status { run: &run });
    }
}
