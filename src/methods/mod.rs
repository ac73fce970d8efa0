//! Self-supervised methods: one small trait ([`SslMethod`]) that the single training loop drives.
//!
//! A method is a composition of a backbone, heads, a loss and the view
//! recipe that feeds it. Adding one (MoCo, BYOL, SimSiam, an autoencoder)
//! means a config variant, a module implementing [`SslMethod`], and one arm
//! in [`build`]; the loop in `train::trainer` stays untouched.

pub mod byol;
pub mod heads;
pub mod losses;
pub mod simclr;
pub mod simsiam;

use crate::config::{MethodConfig, RunConfig};
use crate::train::augment::AugmentParams;
use crate::train::resnet::{ResNet, ResNetConfig};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

/// Augmented views of one batch of images, on the training device.
#[derive(Debug, Clone)]
pub struct Views<B: Backend> {
    /// `views[v]` is view `v` (made with `view_recipes()[v]`) of every image,
    /// `[batch, 3, h, w]`, normalised; row `i` of every view is the same image.
    pub views: Vec<Tensor<B, 4>>,
}

/// What one forward pass of a method produces.
#[derive(Debug, Clone)]
pub struct StepOutput<B: Backend> {
    /// Scalar loss to minimise, `[1]`, attached to the autodiff graph.
    pub loss: Tensor<B, 1>,
    /// Detached `[batch, d]` output whose spread reveals collapse (SimCLR:
    /// the projections); the loop logs the std of its L2-normalised rows.
    pub embedding: Tensor<B, 2>,
    /// Extra detached `[1]` scalars, logged under their key (e.g.
    /// `"train/byol/tau"`); read only on logging steps so they cost no sync.
    pub scalars: Vec<(&'static str, Tensor<B, 1>)>,
}

/// Where the schedule stands after an optimiser step (for EMA schedules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepProgress {
    /// Optimiser steps done, including the one just taken.
    pub step: usize,
    pub total_steps: usize,
}

/// A self-supervised method, as the generic training loop sees it.
///
/// The implementing type is the whole trainable model (a Burn module), so the
/// optimiser updates and the checkpoint holds everything it contains.
/// Target networks that must not receive gradients (BYOL, MoCo) live in the
/// module with `no_grad()` parameters and move in [`after_optimizer_step`].
///
/// [`after_optimizer_step`]: SslMethod::after_optimizer_step
pub trait SslMethod<B: AutodiffBackend>: AutodiffModule<B> {
    /// Short identifier, e.g. `"simclr"`.
    fn name(&self) -> &'static str;

    /// One augmentation recipe per view the loader must produce per image.
    fn view_recipes(&self) -> Vec<AugmentParams>;

    /// Forward pass on a batch of views: loss plus monitoring outputs.
    fn step(&self, views: Views<B>) -> StepOutput<B>;

    /// Called after every optimiser step with the updated model; EMA targets
    /// move here. The default does nothing.
    fn after_optimizer_step(self, _progress: StepProgress) -> Self {
        self
    }

    /// The backbone whose features the kNN monitor evaluates and that is
    /// exported at the end of the run.
    fn backbone(&self) -> &ResNet<B>;
}

/// Receives the concrete method [`build`] made, so generic code runs on it
/// without boxing (Rust has no generic closures).
pub trait MethodVisitor<B: AutodiffBackend> {
    type Output;
    fn visit<M: SslMethod<B>>(self, method: M) -> Self::Output;
}

/// Builds the method named in the config on `device` and hands it to `visitor`.
pub fn build<B: AutodiffBackend, V: MethodVisitor<B>>(
    config: &RunConfig,
    device: &B::Device,
    visitor: V,
) -> V::Output {
    let backbone = ResNetConfig::preset(config.backbone.preset);
    match &config.method {
        MethodConfig::Simclr(c) => visitor.visit(simclr::SimClr::<B>::new(c, &backbone, device)),
        MethodConfig::Simsiam(c) => visitor.visit(simsiam::SimSiam::<B>::new(c, &backbone, device)),
        MethodConfig::Byol(c) => visitor.visit(byol::Byol::<B>::new(c, &backbone, device)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::train::loader::HostBatch;
    use crate::train::trainer::train_step;
    use burn::backend::{Autodiff, Flex};
    use burn::optim::momentum::MomentumConfig;
    use burn::optim::SgdConfig;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    type B = Autodiff<Flex>;

    /// Runs `steps` real optimiser steps (SGD, momentum 0.9, lr 0.05) of the
    /// generic `train_step` on one fixed tiny batch (8 images of 16x16, the
    /// second view a noisy copy of the first) and returns every step's loss.
    pub(crate) fn losses_on_a_fixed_batch<M: SslMethod<B>>(mut model: M, steps: usize) -> Vec<f64> {
        let (batch, size) = (8, 16);
        let mut rng = SmallRng::seed_from_u64(7);
        let a: Vec<f32> = (0..batch * 3 * size * size)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect();
        let b: Vec<f32> = a
            .iter()
            .map(|&x| x + 0.3 * (rng.random::<f32>() - 0.5))
            .collect();
        let mut optim = SgdConfig::new()
            .with_momentum(Some(
                MomentumConfig::new().with_momentum(0.9).with_dampening(0.0),
            ))
            .init::<B, M>();
        let device = Default::default();
        let mut losses = Vec::new();
        for step in 1..=steps {
            let host = HostBatch {
                batch,
                size,
                views: vec![a.clone(), b.clone()],
                epoch: 0,
                index: step - 1,
            };
            let progress = StepProgress {
                step,
                total_steps: steps,
            };
            let result = train_step(model, &mut optim, host, 0.05, progress, true, &device)
                .expect("train step");
            model = result.model;
            losses.push(result.loss);
        }
        losses
    }
}
