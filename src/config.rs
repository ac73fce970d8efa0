//! Run configuration: what a user submits, validated before it is queued.
//!
//! Plain data shared by the web layer (which validates and stores it) and the
//! training layer (which reads it). Every default cites where it comes from.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A validation failure that names the offending field by its JSON path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// A whole training run as submitted to `POST /api/runs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Human-readable name shown in the runs list.
    #[serde(default = "default_name")]
    pub name: String,
    pub method: MethodConfig,
    #[serde(default)]
    pub backbone: BackboneConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: EvalConfig,
}

fn default_name() -> String {
    "untitled".to_string()
}

/// The SSL method and its hyper-parameters; one variant per method.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MethodConfig {
    Simclr(SimclrConfig),
    Simsiam(SimsiamConfig),
    Byol(ByolConfig),
}

impl MethodConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            MethodConfig::Simclr(_) => "simclr",
            MethodConfig::Simsiam(_) => "simsiam",
            MethodConfig::Byol(_) => "byol",
        }
    }

    /// Width of the method's monitored embedding (`StepOutput::embedding`,
    /// the projector output): the chart's `1 / sqrt(d)` reference needs it.
    pub fn embedding_dim(&self) -> usize {
        match self {
            MethodConfig::Simclr(c) => c.projection_dim,
            MethodConfig::Simsiam(c) => c.projection_dim,
            MethodConfig::Byol(c) => c.projection_dim,
        }
    }
}

/// SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of
/// Visual Representations").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SimclrConfig {
    /// NT-Xent temperature. 0.5 is the SimCLR paper's CIFAR-10 value
    /// (Appendix B.9) and lightly's `NTXentLoss` CIFAR-10 benchmark default.
    pub temperature: f64,
    /// Hidden width of the 2-layer projection MLP; SimCLR uses the backbone
    /// width (512 for ResNet-18), lightly's CIFAR benchmark too.
    pub projection_hidden_dim: usize,
    /// Output width of the projection head: 128 in the SimCLR paper.
    pub projection_dim: usize,
}

impl Default for SimclrConfig {
    fn default() -> Self {
        Self {
            temperature: 0.5,
            projection_hidden_dim: 512,
            projection_dim: 128,
        }
    }
}

/// SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation
/// Learning").
///
/// The paper's CIFAR-10 setup (its CIFAR experiments appendix) on ResNet-18 (512-d features) uses
/// a 3-layer projector of width 2048 with BN on every layer and a predictor
/// with a 512-d bottleneck; solo-learn's `cifar/simsiam.yaml` uses the same
/// (2048, 2048, 512). The defaults here are sized for the default `small`
/// backbone (128-d features, a quarter of ResNet-18's 512) by scaling those
/// widths by the same 1/4, keeping the paper's ratios (projector 4x the
/// feature width, predictor bottleneck 1/4 of the projector); lightly's
/// CIFAR-10 benchmark likewise shrinks the heads for its ResNet-18 (512-512-128
/// projector, 64-d predictor bottleneck). For `resnet18` set 2048/2048/512.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SimsiamConfig {
    /// Hidden width of the 3-layer projector: paper 2048 on ResNet-18,
    /// 512 here for the 128-d `small` backbone (scaled by 1/4, see above).
    pub projection_hidden_dim: usize,
    /// Output width of the projector (= the predictor's input and output):
    /// paper 2048 on ResNet-18, 512 here (scaled by 1/4).
    pub projection_dim: usize,
    /// Bottleneck of the 2-layer predictor: paper 512 with a 2048-d output
    /// (section 3, baseline settings), 128 here (scaled by 1/4).
    pub prediction_hidden_dim: usize,
}

impl Default for SimsiamConfig {
    fn default() -> Self {
        Self {
            projection_hidden_dim: 512,
            projection_dim: 512,
            prediction_hidden_dim: 128,
        }
    }
}

/// BYOL (Grill et al. 2020, "Bootstrap Your Own Latent").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ByolConfig {
    /// Hidden width of the projector MLP: 4096 (Grill et al. 2020, section
    /// 3.3; solo-learn's `cifar/byol.yaml` `proj_hidden_dim`).
    pub projection_hidden_dim: usize,
    /// Output width of the projector: 256 (section 3.3; solo-learn
    /// `proj_output_dim`).
    pub projection_dim: usize,
    /// Hidden width of the predictor MLP, same architecture as the projector:
    /// 4096 (section 3.3; solo-learn `pred_hidden_dim`).
    pub prediction_hidden_dim: usize,
    /// Base EMA rate of the target network, raised to 1 with a cosine
    /// schedule over training (section 3.3). 0.99 for CIFAR, as in
    /// solo-learn's `cifar/byol.yaml` (`base_tau`); the paper's ImageNet value
    /// is 0.996.
    pub tau_base: f64,
}

impl Default for ByolConfig {
    fn default() -> Self {
        Self {
            projection_hidden_dim: 4096,
            projection_dim: 256,
            prediction_hidden_dim: 4096,
            tau_base: 0.99,
        }
    }
}

/// Backbone architecture: CIFAR-style ResNet (3x3 stride-1 stem, no max-pool).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackbonePreset {
    /// ResNet-18 as in He et al. 2016, CIFAR variant: widths 64-128-256-512,
    /// two basic blocks per stage; 512-d features.
    Resnet18,
    /// A narrow, shallow ResNet (widths 16-32-64-128, one basic block per
    /// stage; 128-d features) that trains in minutes on two CPU cores.
    #[default]
    Small,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BackboneConfig {
    pub preset: BackbonePreset,
}

/// Where images come from. `path` is an image-folder root (`<split>/<class>/*.jpg`)
/// or a `.tar.gz` of one, unpacked once into the server's cache.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub path: PathBuf,
    /// Sub-folder holding the training split (labels unused for training).
    #[serde(default = "default_train_split")]
    pub train_split: String,
    /// Sub-folder holding the evaluation split (kNN queries).
    #[serde(default = "default_test_split")]
    pub test_split: String,
    /// Cap on training images (taken evenly across classes); `None` = all.
    #[serde(default)]
    pub max_train_images: Option<usize>,
    /// Cap on evaluation images; `None` = all.
    #[serde(default)]
    pub max_test_images: Option<usize>,
    /// Square side images are resized to; 32 for CIFAR-10.
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    /// CPU threads producing augmented views; 0 = one per core.
    #[serde(default)]
    pub workers: usize,
}

fn default_train_split() -> String {
    "train".into()
}
fn default_test_split() -> String {
    "test".into()
}
fn default_image_size() -> usize {
    32
}

/// Optimisation schedule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Base learning rate for SGD at batch size 256; scaled linearly with the
    /// batch (Goyal et al. 2017). 0.06 per 128 images is lightly's CIFAR-10
    /// benchmark value for SimCLR with SGD, i.e. 0.12 per 256.
    pub lr: f64,
    /// SGD momentum; 0.9 in lightly's and solo-learn's CIFAR-10 configs.
    pub momentum: f64,
    /// Weight decay; 5e-4 in lightly's CIFAR-10 benchmark.
    pub weight_decay: f64,
    /// Linear warm-up before the cosine decay (SimCLR paper: 10 of 100+ epochs).
    pub warmup_epochs: usize,
    /// Emit step metrics every this many optimiser steps.
    pub log_every_steps: usize,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 128,
            lr: 0.12,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup_epochs: 1,
            log_every_steps: 5,
            seed: 0,
        }
    }
}

/// kNN monitor settings; defaults from Wu et al. 2018 (InstDisc) as used by
/// lightly's and solo-learn's kNN callbacks: k 200, temperature 0.1.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    pub knn_k: usize,
    pub knn_temperature: f64,
    /// Run the kNN monitor every this many epochs (and always after the last).
    pub every_epochs: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            knn_k: 200,
            knn_temperature: 0.1,
            every_epochs: 1,
        }
    }
}

impl RunConfig {
    /// Parse a JSON body, naming the offending field on failure.
    pub fn from_json(value: serde_json::Value) -> Result<Self, ConfigError> {
        let config: RunConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "config".to_string()
            } else {
                path
            };
            ConfigError::new(&field, e.inner().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Makes a relative `data.path` absolute against `base` (the server's
    /// working directory), so a stored run means the same after a restart
    /// from another directory.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        if self.data.path.is_relative() {
            self.data.path = base.join(&self.data.path);
        }
    }

    /// Semantic checks serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(ConfigError::new("name", "must be 1 to 200 characters"));
        }
        match &self.method {
            MethodConfig::Simclr(c) => {
                positive_finite("method.temperature", c.temperature)?;
                width("method.projection_dim", c.projection_dim)?;
                width("method.projection_hidden_dim", c.projection_hidden_dim)?;
            }
            MethodConfig::Simsiam(c) => {
                width("method.projection_dim", c.projection_dim)?;
                width("method.projection_hidden_dim", c.projection_hidden_dim)?;
                width("method.prediction_hidden_dim", c.prediction_hidden_dim)?;
            }
            MethodConfig::Byol(c) => {
                width("method.projection_dim", c.projection_dim)?;
                width("method.projection_hidden_dim", c.projection_hidden_dim)?;
                width("method.prediction_hidden_dim", c.prediction_hidden_dim)?;
                if !(0.0..1.0).contains(&c.tau_base) {
                    return Err(ConfigError::new(
                        "method.tau_base",
                        format!("must be in [0, 1), got {}", c.tau_base),
                    ));
                }
            }
        }
        if self.data.path.as_os_str().is_empty() {
            return Err(ConfigError::new("data.path", "must not be empty"));
        }
        if self.data.train_split.is_empty() {
            return Err(ConfigError::new("data.train_split", "must not be empty"));
        }
        if self.data.test_split.is_empty() {
            return Err(ConfigError::new("data.test_split", "must not be empty"));
        }
        if let Some(n) = self.data.max_train_images {
            range("data.max_train_images", n, 2, usize::MAX)?;
        }
        if let Some(n) = self.data.max_test_images {
            range("data.max_test_images", n, 1, usize::MAX)?;
        }
        range("data.image_size", self.data.image_size, 8, 512)?;
        range("data.workers", self.data.workers, 0, 64)?;
        range("train.epochs", self.train.epochs, 1, 100_000)?;
        range("train.batch_size", self.train.batch_size, 2, 65_536)?;
        if let Some(n) = self.data.max_train_images {
            if n < self.train.batch_size {
                return Err(ConfigError::new(
                    "train.batch_size",
                    format!("is larger than data.max_train_images ({n})"),
                ));
            }
        }
        positive_finite("train.lr", self.train.lr)?;
        if !(0.0..1.0).contains(&self.train.momentum) {
            return Err(ConfigError::new("train.momentum", "must be in [0, 1)"));
        }
        if !(self.train.weight_decay >= 0.0 && self.train.weight_decay.is_finite()) {
            return Err(ConfigError::new(
                "train.weight_decay",
                "must be a finite number >= 0",
            ));
        }
        if self.train.warmup_epochs > self.train.epochs {
            return Err(ConfigError::new(
                "train.warmup_epochs",
                "must not exceed train.epochs",
            ));
        }
        range(
            "train.log_every_steps",
            self.train.log_every_steps,
            1,
            1_000_000,
        )?;
        range("eval.knn_k", self.eval.knn_k, 1, 100_000)?;
        positive_finite("eval.knn_temperature", self.eval.knn_temperature)?;
        range("eval.every_epochs", self.eval.every_epochs, 1, 100_000)?;
        Ok(())
    }
}

/// A layer width: at least 1, at most 65,536 (a sanity bound, not a paper's).
fn width(field: &str, v: usize) -> Result<(), ConfigError> {
    range(field, v, 1, 65_536)
}

fn range(field: &str, v: usize, lo: usize, hi: usize) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        let msg = if hi == usize::MAX {
            format!("must be at least {lo}, got {v}")
        } else {
            format!("must be between {lo} and {hi}, got {v}")
        };
        return Err(ConfigError::new(field, msg));
    }
    Ok(())
}

fn positive_finite(field: &str, v: f64) -> Result<(), ConfigError> {
    if !(v.is_finite() && v > 0.0) {
        return Err(ConfigError::new(
            field,
            format!("must be a finite number > 0, got {v}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> serde_json::Value {
        json!({"method": {"kind": "simclr"}, "data": {"path": "/tmp/x"}})
    }

    #[test]
    fn minimal_config_takes_literature_defaults() {
        let c = RunConfig::from_json(minimal()).unwrap();
        assert_eq!(c.eval.knn_k, 200);
        assert_eq!(c.method, MethodConfig::Simclr(SimclrConfig::default()));
        assert_eq!(c.backbone.preset, BackbonePreset::Small);
    }

    #[test]
    fn wrong_type_names_the_field() {
        let mut v = minimal();
        v["train"] = json!({"batch_size": "big"});
        let e = RunConfig::from_json(v).unwrap_err();
        assert_eq!(e.field, "train.batch_size");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let mut v = minimal();
        v["train"] = json!({"batchsize": 3});
        let e = RunConfig::from_json(v).unwrap_err();
        assert!(e.to_string().contains("batchsize"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let mut v = minimal();
        v["method"]["temperature"] = json!(0.0);
        assert_eq!(
            RunConfig::from_json(v).unwrap_err().field,
            "method.temperature"
        );
        let mut v = minimal();
        v["data"]["max_train_images"] = json!(10);
        v["train"] = json!({"batch_size": 64});
        assert_eq!(
            RunConfig::from_json(v).unwrap_err().field,
            "train.batch_size"
        );
    }

    #[test]
    fn simsiam_and_byol_parse_with_their_defaults() {
        let mut v = minimal();
        v["method"] = json!({"kind": "simsiam"});
        let c = RunConfig::from_json(v).unwrap();
        assert_eq!(c.method, MethodConfig::Simsiam(SimsiamConfig::default()));
        assert_eq!(c.method.kind(), "simsiam");
        assert_eq!(c.method.embedding_dim(), 512);

        let mut v = minimal();
        v["method"] = json!({"kind": "byol"});
        let c = RunConfig::from_json(v).unwrap();
        assert_eq!(c.method, MethodConfig::Byol(ByolConfig::default()));
        assert_eq!(c.method.kind(), "byol");
        assert_eq!(c.method.embedding_dim(), 256);
        let MethodConfig::Byol(b) = &c.method else {
            panic!("parsed as {c:?}")
        };
        assert_eq!((b.tau_base, b.projection_hidden_dim), (0.99, 4096));
    }

    #[test]
    fn byol_and_simsiam_fields_are_validated_by_name() {
        for tau in [1.0, -0.1] {
            let mut v = minimal();
            v["method"] = json!({"kind": "byol", "tau_base": tau});
            assert_eq!(
                RunConfig::from_json(v).unwrap_err().field,
                "method.tau_base",
                "{tau}"
            );
        }
        let mut v = minimal();
        v["method"] = json!({"kind": "simsiam", "prediction_hidden_dim": 0});
        assert_eq!(
            RunConfig::from_json(v).unwrap_err().field,
            "method.prediction_hidden_dim"
        );
        let mut v = minimal();
        v["method"] = json!({"kind": "byol", "temperature": 0.5});
        assert!(RunConfig::from_json(v).is_err(), "unknown BYOL field");
    }

    #[test]
    fn unknown_method_is_rejected() {
        let mut v = minimal();
        v["method"] = json!({"kind": "dino"});
        let e = RunConfig::from_json(v).unwrap_err();
        assert_eq!(e.field, "method.kind");
    }
}
