//! The training layer: turns a validated [`RunConfig`] into a trained model.
//!
//! It runs on a dedicated OS thread, never on the async runtime, and knows
//! nothing of HTTP or SQL: it reports through [`TrainEvent`]s handed to a
//! callback, and stops when the cancel flag is raised.

use crate::config::RunConfig;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Which device a run should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// CUDA when a GPU is present, else the Flex CPU backend.
    Auto,
    Cpu,
    Cuda,
}

impl DeviceRequest {
    /// Reads `PRETEXT_DEVICE` (`cpu`, `cuda`, `auto`; unset = auto).
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("PRETEXT_DEVICE")
            .ok()
            .as_deref()
            .map(str::trim)
        {
            None | Some("") | Some("auto") => Ok(Self::Auto),
            Some("cpu") => Ok(Self::Cpu),
            Some("cuda") => Ok(Self::Cuda),
            Some(other) => Err(format!(
                "PRETEXT_DEVICE must be cpu, cuda or auto, got {other:?}"
            )),
        }
    }
}

/// Everything one training job needs.
pub struct TrainJob {
    pub run_id: i64,
    pub config: RunConfig,
    /// Checkpoints and exports are written under `run_dir/checkpoints/`.
    pub run_dir: PathBuf,
    /// Archives named in `data.path` are unpacked once under here.
    pub cache_dir: PathBuf,
    pub device: DeviceRequest,
    /// Raised by the server to cancel; checked at least once per step.
    pub cancel: Arc<AtomicBool>,
}

/// One scalar observation. `wall_time` is seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    pub key: String,
    pub step: i64,
    pub epoch: i64,
    pub value: f64,
    pub wall_time: f64,
}

/// What the training thread reports, in order.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// The device actually used, e.g. `"cpu"` or `"cuda:0"`; sent once, first.
    DeviceChosen { device: String },
    /// A batch of new scalar points.
    Metrics(Vec<MetricPoint>),
    /// Position in the schedule, sent after every optimiser step.
    Progress {
        step: i64,
        total_steps: i64,
        epoch: i64,
        epochs: i64,
    },
    /// A file fully written (temp name, fsync, rename) and ready to serve.
    Checkpoint {
        name: String,
        path: PathBuf,
        bytes: u64,
        sha256: String,
    },
}

/// How a job ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Cancelled,
}

/// Why a job failed; the message is shown to the user as the run's error.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("dataset: {0}")]
    Data(String),
    #[error("device: {0}")]
    Device(String),
    #[error("loss became {value} at step {step}")]
    NonFiniteLoss { step: i64, value: f64 },
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("{0}")]
    Other(String),
}

/// Event callback; must not block (the server forwards into a channel).
pub type EventSink = Box<dyn Fn(TrainEvent) + Send + Sync>;

pub mod archive;
pub mod augment;
pub mod batchnorm;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod knn;
pub mod loader;
pub mod monitor;
pub mod resnet;
pub mod schedule;
pub mod trainer;

pub use bench::{bench_simclr_step, BenchReport};

use crate::methods::{self, MethodVisitor, SslMethod};
use burn::tensor::backend::{AutodiffBackend, Backend};
use data::Datasets;
use device::BackendTask;
use resnet::ResNetConfig;
use trainer::RunContext;

/// Why work inside the training layer stopped early: a cancel request (not
/// an error) or a failure.
#[derive(Debug)]
pub enum Halt {
    Cancelled,
    Error(TrainError),
}

impl From<TrainError> for Halt {
    fn from(e: TrainError) -> Self {
        Halt::Error(e)
    }
}

/// Runs one training job to the end, on the calling thread (a dedicated OS
/// thread: this blocks for the whole run).
///
/// Events, in order: `DeviceChosen`; `Metrics` with `knn/top1` at step 0;
/// per step a `Progress` and every `train.log_every_steps` steps the step
/// metrics (`train/loss`, `train/lr`, `train/images_per_sec`,
/// `train/embedding_std`, `train/collapse`, `train/data_wait_frac`; loss, throughput and wait
/// are over the steps since the previous log, the others at the log step);
/// per epoch a `Checkpoint` (`epoch-NNNN.mpk`) and, every `eval.every_epochs`
/// epochs and after the last, `knn/top1`; finally a `Checkpoint` for
/// `backbone.safetensors`. All files go to `run_dir/checkpoints/`.
///
/// Returns `Ok(Outcome::Cancelled)` soon after `job.cancel` is raised (it is
/// checked every step, between feature batches of the kNN monitor and while
/// unpacking and decoding the dataset).
pub fn run(job: TrainJob, events: EventSink) -> Result<Outcome, TrainError> {
    job.config
        .validate()
        .map_err(|e| TrainError::Other(format!("invalid config: {e}")))?;
    let chosen = device::resolve(job.device)?;
    events(TrainEvent::DeviceChosen {
        device: chosen.name().to_string(),
    });
    let result = data::load(
        &job.config.data,
        job.config.train.seed,
        &job.cache_dir,
        &job.cancel,
    )
    .and_then(|data| {
        device::dispatch(
            chosen,
            FitTask {
                job: &job,
                events: &events,
                data,
            },
        )
    });
    match result {
        Ok(outcome) => Ok(outcome),
        Err(Halt::Cancelled) => Ok(Outcome::Cancelled),
        Err(Halt::Error(e)) => Err(e),
    }
}

/// Builds the configured method on the chosen backend and trains it.
struct FitTask<'a> {
    job: &'a TrainJob,
    events: &'a EventSink,
    data: Datasets,
}

impl BackendTask for FitTask<'_> {
    type Output = Result<Outcome, Halt>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let config = &self.job.config;
        B::seed(&device, config.train.seed);
        let checkpoint_dir = self.job.run_dir.join("checkpoints");
        // Fail now rather than after the first epoch if the folder is unusable.
        std::fs::create_dir_all(&checkpoint_dir).map_err(|e| {
            TrainError::Checkpoint(format!("cannot create {}: {e}", checkpoint_dir.display()))
        })?;
        let ctx = RunContext {
            config,
            backbone: ResNetConfig::preset(config.backbone.preset),
            checkpoint_dir: &checkpoint_dir,
            cancel: &self.job.cancel,
            events: self.events,
        };
        methods::build::<B, _>(
            config,
            &device,
            Fit {
                data: self.data,
                device: &device,
                ctx: &ctx,
            },
        )
    }
}

struct Fit<'a, B: Backend> {
    data: Datasets,
    device: &'a B::Device,
    ctx: &'a RunContext<'a>,
}

impl<B: AutodiffBackend> MethodVisitor<B> for Fit<'_, B> {
    type Output = Result<Outcome, Halt>;

    fn visit<M: SslMethod<B>>(self, method: M) -> Self::Output {
        trainer::fit(method, self.data, self.device, self.ctx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{
        BackboneConfig, BackbonePreset, DataConfig, EvalConfig, MethodConfig, SimclrConfig,
        TrainConfig,
    };
    use crate::methods::simclr::SimClr;
    use burn::backend::{Autodiff, Flex};
    use burn::module::Module;
    use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    /// Cache folder shared by test runs, so the CIFAR archive is unpacked once
    /// per machine rather than once per test.
    pub(crate) fn shared_test_cache() -> PathBuf {
        std::env::temp_dir().join("pretext-test-cache")
    }

    /// A tiny two-epoch SimCLR run on a generated 4-class dataset.
    /// Small SimCLR heads so the smoke runs take milliseconds per step.
    const TINY_SIMCLR: SimclrConfig = SimclrConfig {
        temperature: 0.5,
        projection_hidden_dim: 32,
        projection_dim: 16,
    };

    fn tiny_config(root: &std::path::Path) -> RunConfig {
        RunConfig {
            name: "smoke".into(),
            method: MethodConfig::Simclr(TINY_SIMCLR),
            backbone: BackboneConfig {
                preset: BackbonePreset::Small,
            },
            data: DataConfig {
                path: root.to_path_buf(),
                train_split: "train".into(),
                test_split: "test".into(),
                max_train_images: None,
                max_test_images: None,
                image_size: 16,
                workers: 2,
            },
            train: TrainConfig {
                epochs: 2,
                batch_size: 8,
                warmup_epochs: 1,
                log_every_steps: 2,
                ..TrainConfig::default()
            },
            eval: EvalConfig {
                knn_k: 5,
                knn_temperature: 0.1,
                every_epochs: 1,
            },
        }
    }

    fn job(config: RunConfig, dir: &std::path::Path) -> TrainJob {
        TrainJob {
            run_id: 1,
            config,
            run_dir: dir.join("run"),
            cache_dir: dir.join("cache"),
            device: DeviceRequest::Cpu,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    fn recording_sink() -> (EventSink, Arc<Mutex<Vec<TrainEvent>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink_events = events.clone();
        (
            Box::new(move |e| sink_events.lock().unwrap().push(e)),
            events,
        )
    }

    fn dataset(dir: &std::path::Path) -> PathBuf {
        let root = dir.join("data");
        data::tests::write_folder(&root, "train", &["a", "b", "c", "d"], 12, 16);
        data::tests::write_folder(&root, "test", &["a", "b", "c", "d"], 3, 16);
        root
    }

    #[test]
    fn smoke_simclr_run_emits_everything() {
        let tmp = tempfile::tempdir().unwrap();
        let config = tiny_config(&dataset(tmp.path()));
        let (sink, events) = recording_sink();
        let outcome = run(job(config.clone(), tmp.path()), sink).unwrap();
        assert_eq!(outcome, Outcome::Completed);
        let events = events.lock().unwrap();

        assert!(matches!(&events[0], TrainEvent::DeviceChosen { device } if device == "cpu"));
        // 48 images / batch 8 = 6 steps per epoch, 2 epochs.
        let progress: Vec<i64> = events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::Progress {
                    step,
                    total_steps,
                    epochs,
                    ..
                } => {
                    assert_eq!((*total_steps, *epochs), (12, 2));
                    Some(*step)
                }
                _ => None,
            })
            .collect();
        assert_eq!(progress, (1..=12).collect::<Vec<_>>());

        let points: Vec<&MetricPoint> = events
            .iter()
            .filter_map(|e| {
                if let TrainEvent::Metrics(p) = e {
                    Some(p)
                } else {
                    None
                }
            })
            .flatten()
            .collect();
        for key in [
            "train/loss",
            "train/lr",
            "train/images_per_sec",
            "train/embedding_std",
            "train/collapse",
            "train/data_wait_frac",
        ] {
            let values: Vec<&MetricPoint> =
                points.iter().copied().filter(|p| p.key == key).collect();
            // Logged at steps 2, 4, ..., 12.
            assert_eq!(
                values.iter().map(|p| p.step).collect::<Vec<_>>(),
                vec![2, 4, 6, 8, 10, 12],
                "{key}"
            );
            assert!(
                values
                    .iter()
                    .all(|p| p.value.is_finite() && p.wall_time > 1.6e9),
                "{key}"
            );
        }
        let loss: Vec<f64> = points
            .iter()
            .filter(|p| p.key == "train/loss")
            .map(|p| p.value)
            .collect();
        assert!(loss.iter().all(|&l| l > 0.0), "{loss:?}");
        let std = points
            .iter()
            .find(|p| p.key == "train/embedding_std")
            .unwrap()
            .value;
        assert!(std > 0.0 && std <= 1.0, "{std}");
        let epoch_of_last = points.iter().rfind(|p| p.key == "train/lr").unwrap().epoch;
        assert_eq!(epoch_of_last, 2);

        let knn: Vec<(i64, i64, f64)> = points
            .iter()
            .filter(|p| p.key == "knn/top1")
            .map(|p| (p.step, p.epoch, p.value))
            .collect();
        assert_eq!(
            knn.iter().map(|k| (k.0, k.1)).collect::<Vec<_>>(),
            vec![(0, 0), (6, 1), (12, 2)]
        );
        assert!(knn.iter().all(|k| (0.0..=1.0).contains(&k.2)));
        // The step-0 baseline comes before any training step.
        let first_knn = events
            .iter()
            .position(|e| matches!(e, TrainEvent::Metrics(p) if p[0].key == "knn/top1"));
        let first_progress = events
            .iter()
            .position(|e| matches!(e, TrainEvent::Progress { .. }));
        assert!(first_knn < first_progress);

        let checkpoints: Vec<(&String, &PathBuf, u64, &String)> = events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::Checkpoint {
                    name,
                    path,
                    bytes,
                    sha256,
                } => Some((name, path, *bytes, sha256)),
                _ => None,
            })
            .collect();
        let names: Vec<&str> = checkpoints.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            names,
            vec!["epoch-0001.mpk", "epoch-0002.mpk", "backbone.safetensors"]
        );
        for (name, path, bytes, sha) in &checkpoints {
            let content = std::fs::read(path).unwrap();
            assert_eq!(content.len() as u64, *bytes, "{name}");
            assert_eq!(
                **sha,
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&content)),
                "{name}"
            );
            assert!(path.starts_with(tmp.path().join("run/checkpoints")));
        }
        assert!(
            matches!(events.last(), Some(TrainEvent::Checkpoint { name, .. }) if name == "backbone.safetensors")
        );

        let st_bytes = std::fs::read(checkpoints[2].1).unwrap();
        let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
        assert_eq!(
            st.tensor("stem.conv.weight").unwrap().shape(),
            &[16, 3, 3, 3]
        );
        assert!(
            st.names().iter().all(|n| !n.starts_with("projection")),
            "backbone only"
        );

        // The epoch checkpoint loads back into the full model.
        let device = Default::default();
        let simclr = &TINY_SIMCLR;
        let fresh = SimClr::<Autodiff<Flex>>::new(
            simclr,
            &ResNetConfig::preset(BackbonePreset::Small),
            &device,
        );
        let record = NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
            .load(std::fs::read(checkpoints[1].1).unwrap(), &device)
            .unwrap();
        let loaded = fresh.load_record(record);
        // The last epoch checkpoint and the export hold the same trained
        // weights (conv weights need no transposition).
        let from_record = loaded
            .backbone
            .stem
            .conv
            .weight
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let from_export: Vec<f32> = st
            .tensor("stem.conv.weight")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(from_record, from_export);
    }

    #[test]
    fn cancel_during_training_returns_cancelled() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = tiny_config(&dataset(tmp.path()));
        config.train.epochs = 50;
        let job = job(config, tmp.path());
        let cancel = job.cancel.clone();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink_events = events.clone();
        let sink: EventSink = Box::new(move |e| {
            if matches!(e, TrainEvent::Progress { step: 3, .. }) {
                cancel.store(true, Ordering::Relaxed);
            }
            sink_events.lock().unwrap().push(e);
        });
        assert_eq!(run(job, sink).unwrap(), Outcome::Cancelled);
        let steps = events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, TrainEvent::Progress { .. }))
            .count();
        assert_eq!(steps, 3, "must stop at the next step check");
    }

    #[test]
    fn exploding_lr_reports_a_non_finite_loss() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = tiny_config(&dataset(tmp.path()));
        config.train.epochs = 1;
        config.train.warmup_epochs = 0;
        config.train.lr = 1e30;
        let (sink, _) = recording_sink();
        match run(job(config, tmp.path()), sink) {
            Err(TrainError::NonFiniteLoss { step, value }) => {
                assert!(step >= 1 && !value.is_finite())
            }
            other => panic!("expected NonFiniteLoss, got {other:?}"),
        }
    }

    #[test]
    fn missing_dataset_is_a_data_error_after_device_choice() {
        let tmp = tempfile::tempdir().unwrap();
        let config = tiny_config(&tmp.path().join("absent"));
        let (sink, events) = recording_sink();
        let err = run(job(config, tmp.path()), sink).unwrap_err();
        assert!(
            matches!(&err, TrainError::Data(m) if m.contains("absent")),
            "{err}"
        );
        assert_eq!(events.lock().unwrap().len(), 1);
    }

    /// End-to-end learning check on real data: a few epochs of SimCLR on a
    /// CIFAR-10 subset must lift kNN top-1 above the random-init baseline.
    /// `cargo test --lib train::tests::cifar -- --ignored --nocapture`
    #[test]
    #[ignore = "trains for ~9 minutes on 2 CPU cores"]
    fn cifar_subset_simclr_beats_random_init() {
        let archive = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data/cifar10-jpg.tar.gz");
        if !archive.exists() {
            eprintln!("SKIPPED: {} is absent", archive.display());
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut config = tiny_config(&archive);
        config.method = MethodConfig::Simclr(SimclrConfig::default());
        config.data.image_size = 32;
        config.data.max_train_images = Some(5000);
        config.data.max_test_images = Some(1000);
        config.data.workers = 0;
        config.train = TrainConfig {
            epochs: 4,
            batch_size: 128,
            log_every_steps: 10,
            ..TrainConfig::default()
        };
        config.eval = EvalConfig {
            knn_k: 20,
            knn_temperature: 0.1,
            every_epochs: 1,
        };
        let mut job = job(config, tmp.path());
        job.cache_dir = shared_test_cache();
        let (sink, events) = recording_sink();
        let started = std::time::Instant::now();
        assert_eq!(run(job, sink).unwrap(), Outcome::Completed);
        let events = events.lock().unwrap();
        let points: Vec<&MetricPoint> = events
            .iter()
            .filter_map(|e| {
                if let TrainEvent::Metrics(p) = e {
                    Some(p)
                } else {
                    None
                }
            })
            .flatten()
            .collect();
        for p in &points {
            eprintln!("{:>4} {:<24} {:.4}", p.step, p.key, p.value);
        }
        eprintln!("total {:?}", started.elapsed());
        let knn: Vec<f64> = points
            .iter()
            .filter(|p| p.key == "knn/top1")
            .map(|p| p.value)
            .collect();
        let (first, last) = (knn[0], knn[knn.len() - 1]);
        assert!(last > first + 0.02, "kNN top-1 {first:.3} -> {last:.3}");
    }
}
