//! The one training loop every SSL method runs through: steps, schedule, metrics, kNN, checkpoints.

use super::checkpoint::{self, BACKBONE_FILE};
use super::data::{Datasets, ImageSet};
use super::knn::{extract_features, knn_top1, KnnParams};
use super::loader::{HostBatch, Loader, LoaderConfig};
use super::monitor::{collapse_level, embedding_std, keys, Interval, PointBatch};
use super::resnet::ResNetConfig;
use super::schedule::LrSchedule;
use super::{EventSink, Halt, Outcome, TrainError, TrainEvent};
use crate::config::RunConfig;
use crate::methods::{SslMethod, StepProgress, Views};
use burn::module::AutodiffModule;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What the loop needs besides the model and data.
pub struct RunContext<'a> {
    pub config: &'a RunConfig,
    /// Architecture of the method's backbone (stored in the export).
    pub backbone: ResNetConfig,
    /// Checkpoints go to `checkpoint_dir`.
    pub checkpoint_dir: &'a Path,
    pub cancel: &'a AtomicBool,
    pub events: &'a EventSink,
}

/// SGD with momentum and weight decay as PyTorch's `torch.optim.SGD` applies
/// them (decay added to the gradient, on every parameter). Burn's momentum
/// defaults to dampening 0.1, PyTorch's to 0: set it explicitly.
pub fn sgd<B: AutodiffBackend, M: SslMethod<B>>(config: &RunConfig) -> impl Optimizer<M, B> {
    let weight_decay = (config.train.weight_decay > 0.0)
        .then(|| WeightDecayConfig::new(config.train.weight_decay as f32));
    let momentum = (config.train.momentum > 0.0).then(|| {
        MomentumConfig::new()
            .with_momentum(config.train.momentum)
            .with_dampening(0.0)
    });
    SgdConfig::new()
        .with_weight_decay(weight_decay)
        .with_momentum(momentum)
        .init::<B, M>()
}

/// Result of one optimiser step.
pub struct StepResult<M> {
    pub model: M,
    pub loss: f64,
    /// Std of the L2-normalised embedding, only when asked for.
    pub embedding_std: Option<f64>,
    /// lightly's collapse level of the same embedding, only when asked for.
    pub collapse: Option<f64>,
    /// The method's extra scalars, only when asked for.
    pub scalars: Vec<(&'static str, f64)>,
}

/// One optimiser step on a host batch: upload, forward, backward, update,
/// then the method's post-step hook. `progress.step` counts this step
/// (1-based) and labels a non-finite loss. With `observe`, the monitoring
/// outputs are read back too (a device sync each, so only on logging steps).
pub fn train_step<B: AutodiffBackend, M: SslMethod<B>, O: Optimizer<M, B>>(
    model: M,
    optim: &mut O,
    batch: HostBatch,
    lr: f64,
    progress: StepProgress,
    observe: bool,
    device: &B::Device,
) -> Result<StepResult<M>, TrainError> {
    let shape = [batch.batch, 3, batch.size, batch.size];
    let views = batch
        .views
        .into_iter()
        .map(|v| Tensor::<B, 4>::from_data(TensorData::new(v, shape), device))
        .collect();
    let out = model.step(Views { views });
    let grads = GradientsParams::from_grads(out.loss.backward(), &model);
    let model = optim.step(lr, model, grads);
    // Read the loss after queueing backward and update, so an asynchronous
    // device stays busy while we wait for the number.
    let loss: f64 = out
        .loss
        .try_into_scalar()
        .map_err(|e| TrainError::Device(format!("reading the loss: {e:?}")))?
        .elem();
    if !loss.is_finite() {
        return Err(TrainError::NonFiniteLoss {
            step: progress.step as i64,
            value: loss,
        });
    }
    let model = model.after_optimizer_step(progress);
    let (embedding_std, collapse, scalars) = if observe {
        let [rows, dim] = out.embedding.dims();
        let values = out
            .embedding
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| TrainError::Other(format!("reading embeddings: {e:?}")))?;
        let scalars = out
            .scalars
            .into_iter()
            .map(|(k, t)| (k, t.into_scalar().elem::<f64>()))
            .collect();
        let std = embedding_std(&values, rows, dim);
        (Some(std), Some(collapse_level(std, dim)), scalars)
    } else {
        (None, None, Vec::new())
    };
    Ok(StepResult {
        model,
        loss,
        embedding_std,
        collapse,
        scalars,
    })
}

/// Trains `model` for `config.train.epochs` epochs and reports through `ctx.events`.
///
/// Order of events: `knn/top1` at step 0; after every step a `Progress`;
/// every `log_every_steps` steps the step metrics; at every epoch end a
/// checkpoint, then `knn/top1` every `eval.every_epochs` epochs and after the
/// last; finally `backbone.safetensors`.
pub fn fit<B: AutodiffBackend, M: SslMethod<B>>(
    mut model: M,
    data: Datasets,
    device: &B::Device,
    ctx: &RunContext,
) -> Result<Outcome, Halt> {
    let cfg = ctx.config;
    let batch_size = cfg.train.batch_size;
    let epochs = cfg.train.epochs;
    let train = Arc::new(data.train);
    let test = data.test;

    let loader = Loader::spawn(
        train.clone(),
        LoaderConfig {
            batch_size,
            start_epoch: 0,
            end_epoch: epochs,
            seed: cfg.train.seed,
            workers: cfg.data.workers,
            recipes: model.view_recipes(),
        },
    )?;
    let steps_per_epoch = loader.batches_per_epoch;
    let total_steps = steps_per_epoch * epochs;
    let schedule = LrSchedule::new(
        cfg.train.lr,
        batch_size,
        steps_per_epoch * cfg.train.warmup_epochs,
        total_steps,
    );
    let mut optim = sgd::<B, M>(cfg);
    let emit = |ev: TrainEvent| (ctx.events)(ev);

    // Random-init baseline, before any update.
    emit_knn(&model, &train, &test, 0, 0, device, ctx)?;

    let mut step = 0usize;
    let mut interval = Interval::default();
    for epoch in 0..epochs {
        for _ in 0..steps_per_epoch {
            if ctx.cancel.load(Ordering::Relaxed) {
                return Err(Halt::Cancelled);
            }
            let started = Instant::now();
            let batch = loader
                .next()
                .ok_or_else(|| TrainError::Other("the data loader stopped early".into()))?;
            let waited = started.elapsed();
            let progress = StepProgress {
                step: step + 1,
                total_steps,
            };
            let observe = progress.step.is_multiple_of(cfg.train.log_every_steps);
            let lr = schedule.lr(step);
            let result = train_step(model, &mut optim, batch, lr, progress, observe, device)?;
            model = result.model;
            step += 1;
            interval.add(batch_size, result.loss, waited, started.elapsed());
            let epochs_done = step / steps_per_epoch;
            emit(TrainEvent::Progress {
                step: step as i64,
                total_steps: total_steps as i64,
                epoch: epochs_done as i64,
                epochs: epochs as i64,
            });
            if observe {
                let mut points = PointBatch::new(step, epochs_done);
                points.push(keys::LOSS, interval.mean_loss());
                points.push(keys::LR, lr);
                points.push(keys::IMAGES_PER_SEC, interval.images_per_sec());
                points.push(keys::EMBEDDING_STD, result.embedding_std.unwrap_or(0.0));
                points.push(keys::COLLAPSE, result.collapse.unwrap_or(0.0));
                points.push(keys::DATA_WAIT_FRAC, interval.data_wait_frac());
                for (key, value) in result.scalars {
                    points.push(key, value);
                }
                emit(TrainEvent::Metrics(points.points));
                interval = Interval::default();
            }
        }

        let record = checkpoint::model_record_bytes(&model)?;
        emit(checkpoint::write_atomic(
            ctx.checkpoint_dir,
            &checkpoint::epoch_file(epoch + 1),
            &record,
        )?);
        let last = epoch + 1 == epochs;
        if last || (epoch + 1).is_multiple_of(cfg.eval.every_epochs) {
            emit_knn(&model, &train, &test, step, epoch + 1, device, ctx)?;
        }
    }
    drop(loader);

    let backbone = model.backbone().valid();
    let bytes = checkpoint::backbone_safetensors_bytes(&backbone, &ctx.backbone)?;
    emit(checkpoint::write_atomic(
        ctx.checkpoint_dir,
        BACKBONE_FILE,
        &bytes,
    )?);
    Ok(Outcome::Completed)
}

/// kNN top-1 of the current backbone in evaluation mode, sent as a metric.
fn emit_knn<B: AutodiffBackend, M: SslMethod<B>>(
    model: &M,
    train: &ImageSet,
    test: &ImageSet,
    step: usize,
    epoch: usize,
    device: &B::Device,
    ctx: &RunContext,
) -> Result<(), Halt> {
    let top1 = knn_eval::<B, M>(model, train, test, ctx.config, device, ctx.cancel)?;
    let mut points = PointBatch::new(step, epoch);
    points.push(keys::KNN_TOP1, top1);
    (ctx.events)(TrainEvent::Metrics(points.points));
    Ok(())
}

/// Weighted kNN top-1 with the train split as the bank and the test split as queries.
pub fn knn_eval<B: AutodiffBackend, M: SslMethod<B>>(
    model: &M,
    train: &ImageSet,
    test: &ImageSet,
    config: &RunConfig,
    device: &B::Device,
    cancel: &AtomicBool,
) -> Result<f64, Halt> {
    let backbone = model.backbone().valid(); // BatchNorm on running statistics
    let batch = config.train.batch_size;
    let bank = extract_features(&backbone, train, batch, device, cancel)?;
    let queries = extract_features(&backbone, test, batch, device, cancel)?;
    knn_top1(
        bank,
        &train.labels,
        queries,
        &test.labels,
        KnnParams {
            k: config.eval.knn_k,
            temperature: config.eval.knn_temperature,
            num_classes: train.classes.len(),
        },
        cancel,
    )
}

/// Times `steps` optimiser steps after `warmup` untimed ones; returns the
/// throughput interval. Used by the benchmark entry point.
pub fn time_steps<B: AutodiffBackend, M: SslMethod<B>>(
    mut model: M,
    images: Arc<ImageSet>,
    config: &RunConfig,
    warmup: usize,
    steps: usize,
    device: &B::Device,
) -> Result<Interval, TrainError> {
    let batch_size = config.train.batch_size;
    let per_epoch = images.len() / batch_size.max(1);
    let needed = warmup + steps;
    let loader = Loader::spawn(
        images,
        LoaderConfig {
            batch_size,
            start_epoch: 0,
            end_epoch: needed.div_ceil(per_epoch.max(1)),
            seed: config.train.seed,
            workers: config.data.workers,
            recipes: model.view_recipes(),
        },
    )?;
    let mut optim = sgd::<B, M>(config);
    let mut interval = Interval::default();
    for step in 0..needed {
        let started = Instant::now();
        let batch = loader
            .next()
            .ok_or_else(|| TrainError::Other("the data loader stopped early".into()))?;
        let waited = started.elapsed();
        let progress = StepProgress {
            step: step + 1,
            total_steps: needed,
        };
        let result = train_step(
            model,
            &mut optim,
            batch,
            config.train.lr,
            progress,
            false,
            device,
        )?;
        model = result.model;
        // Warm-up steps pay one-off costs (allocator, kernel selection).
        if step >= warmup {
            interval.add(batch_size, result.loss, waited, started.elapsed());
        }
    }
    Ok(interval)
}
