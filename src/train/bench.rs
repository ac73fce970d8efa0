//! Throughput benchmark of real SimCLR training steps (loader, augmentation and optimiser included).

use super::data::ImageSet;
use super::device::{self, BackendTask};
use super::resnet::ResNetConfig;
use super::trainer::time_steps;
use super::{DeviceRequest, TrainError};
use crate::config::{
    BackboneConfig, BackbonePreset, DataConfig, EvalConfig, MethodConfig, RunConfig, SimclrConfig,
    TrainConfig,
};
use crate::methods::simclr::SimClr;
use burn::tensor::backend::AutodiffBackend;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::sync::Arc;

/// Untimed steps before measuring: the first steps pay allocation and (on
/// CUDA) kernel compilation and autotuning.
const WARMUP_STEPS: usize = 2;

/// Measured throughput of SimCLR training steps.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// `"cpu"` or `"cuda:0"`.
    pub device: String,
    pub preset: BackbonePreset,
    pub batch_size: usize,
    /// Timed steps (warm-up excluded).
    pub steps: usize,
    /// Images (each seen as two views) per second of step time.
    pub images_per_sec: f64,
    /// Share of step time the training thread waited for augmented batches.
    pub data_wait_frac: f64,
    /// Mean wall time of one step, milliseconds.
    pub step_ms: f64,
}

/// Runs `steps` SimCLR optimiser steps (after 2 untimed warm-up steps) on
/// synthetic 32x32 RGB images with the default SimCLR config (projection
/// 512-128), the CIFAR-10 augmentations on `workers = 0` (one per core), SGD
/// with momentum and weight decay, and reports throughput.
pub fn bench_simclr_step(
    preset: BackbonePreset,
    batch_size: usize,
    steps: usize,
    device: DeviceRequest,
) -> Result<BenchReport, TrainError> {
    if batch_size < 2 || steps == 0 {
        return Err(TrainError::Other(
            "bench needs batch_size >= 2 and steps >= 1".into(),
        ));
    }
    let chosen = device::resolve(device)?;
    let config = RunConfig {
        name: "bench".into(),
        // Informational: the model below is built from `Bench::simclr`.
        method: MethodConfig::Simclr(SimclrConfig::default()),
        backbone: BackboneConfig { preset },
        data: DataConfig {
            path: "synthetic".into(),
            train_split: "train".into(),
            test_split: "test".into(),
            max_train_images: None,
            max_test_images: None,
            image_size: 32,
            workers: 0,
        },
        train: TrainConfig {
            batch_size,
            ..TrainConfig::default()
        },
        eval: EvalConfig::default(),
    };
    // Four batches of random pixels: augmentation cost does not depend on content.
    let (n, size) = (batch_size * 4, 32);
    let mut pixels = vec![0u8; n * size * size * 3];
    SmallRng::seed_from_u64(0).fill_bytes(&mut pixels);
    let images = Arc::new(ImageSet {
        size,
        pixels,
        labels: vec![0; n],
        classes: vec!["synthetic".into()],
    });
    let interval = device::dispatch(
        chosen,
        Bench {
            simclr: SimclrConfig::default(),
            config: &config,
            images,
            steps,
        },
    )?;
    Ok(BenchReport {
        device: chosen.name().to_string(),
        preset,
        batch_size,
        steps,
        images_per_sec: interval.images_per_sec(),
        data_wait_frac: interval.data_wait_frac(),
        step_ms: interval.busy.as_secs_f64() * 1000.0 / interval.steps.max(1) as f64,
    })
}

struct Bench<'a> {
    simclr: SimclrConfig,
    config: &'a RunConfig,
    images: Arc<ImageSet>,
    steps: usize,
}

impl BackendTask for Bench<'_> {
    type Output = Result<super::monitor::Interval, TrainError>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let model = SimClr::<B>::new(
            &self.simclr,
            &ResNetConfig::preset(self.config.backbone.preset),
            &device,
        );
        time_steps(
            model,
            self.images,
            self.config,
            WARMUP_STEPS,
            self.steps,
            &device,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_reports_positive_throughput() {
        let r = bench_simclr_step(BackbonePreset::Small, 8, 2, DeviceRequest::Cpu).unwrap();
        assert_eq!((r.device.as_str(), r.steps, r.batch_size), ("cpu", 2, 8));
        assert!(r.images_per_sec > 0.0 && r.step_ms > 0.0);
        assert!((0.0..=1.0).contains(&r.data_wait_frac));
    }
}
