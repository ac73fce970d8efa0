//! SimCLR (Chen et al. 2020): backbone + projection MLP trained with NT-Xent between two views.

use super::heads::{simclr_projection, ProjectionHead};
use super::losses::nt_xent;
use super::{SslMethod, StepOutput, Views};
use crate::config::SimclrConfig;
use crate::train::augment::AugmentParams;
use crate::train::resnet::{ResNet, ResNetConfig};
use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

/// Backbone and projection head; the head is discarded after pre-training.
#[derive(Module, Debug)]
pub struct SimClr<B: Backend> {
    pub backbone: ResNet<B>,
    pub projection: ProjectionHead<B>,
    /// NT-Xent temperature.
    pub temperature: f64,
}

impl<B: Backend> SimClr<B> {
    pub fn new(config: &SimclrConfig, backbone: &ResNetConfig, device: &B::Device) -> Self {
        let projection = ProjectionHead::new(
            &simclr_projection(
                backbone.feat_dim(),
                config.projection_hidden_dim,
                config.projection_dim,
            ),
            device,
        );
        Self {
            backbone: backbone.init(device),
            projection,
            temperature: config.temperature,
        }
    }

    /// Projections of a batch of images.
    ///
    /// # Shapes
    /// `[batch, 3, h, w]` -> `[batch, projection_dim]`
    pub fn project(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.projection.forward(self.backbone.forward(images))
    }
}

impl<B: AutodiffBackend> SslMethod<B> for SimClr<B> {
    fn name(&self) -> &'static str {
        "simclr"
    }

    fn view_recipes(&self) -> Vec<AugmentParams> {
        vec![AugmentParams::simclr_cifar10(); 2]
    }

    fn step(&self, views: Views<B>) -> StepOutput<B> {
        let [a, b]: [Tensor<B, 4>; 2] = views
            .views
            .try_into()
            .unwrap_or_else(|v: Vec<_>| panic!("SimCLR takes 2 views, got {}", v.len()));
        let n = a.dims()[0];
        // Both views go through the network as one batch of 2n, as SimCLR's
        // reference TF code does (`tf.concat(tf.split(...), 0)`): one pass,
        // and BatchNorm statistics over both views.
        let z = self.project(Tensor::cat(vec![a, b], 0)); // [2n, p]
        let z_a = z.clone().narrow(0, 0, n); // [n, p]
        let z_b = z.narrow(0, n, n); // [n, p]
        let loss = nt_xent(z_a.clone(), z_b, self.temperature);
        StepOutput {
            loss,
            embedding: z_a.detach(),
            scalars: Vec::new(),
        }
    }

    fn backbone(&self) -> &ResNet<B> {
        &self.backbone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::optim::momentum::MomentumConfig;
    use burn::optim::{GradientsParams, Optimizer, SgdConfig};
    use burn::tensor::{Distribution, ElementConversion};

    type B = Autodiff<Flex>;

    fn tiny() -> (SimclrConfig, ResNetConfig) {
        let cfg = SimclrConfig {
            temperature: 0.5,
            projection_hidden_dim: 32,
            projection_dim: 16,
        };
        (cfg, ResNetConfig::new(vec![8, 16], vec![1, 1]))
    }

    #[test]
    fn step_gives_a_finite_scalar_loss_and_embeddings() {
        let device = Default::default();
        let (cfg, net) = tiny();
        let model = SimClr::<B>::new(&cfg, &net, &device);
        let views = Views {
            views: (0..2)
                .map(|_| Tensor::random([4, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device))
                .collect(),
        };
        let out = model.step(views);
        assert_eq!(out.loss.dims(), [1]);
        assert_eq!(out.embedding.dims(), [4, 16]);
        let loss: f64 = out.loss.into_scalar().elem();
        // Random init: close to log(2n - 1) = log(7) for near-uniform similarities.
        assert!(loss.is_finite() && loss > 0.5 && loss < 4.0, "{loss}");
    }

    /// Overfitting check: on one fixed batch the loss must fall.
    #[test]
    fn loss_decreases_on_a_fixed_batch() {
        let device = Default::default();
        let (cfg, net) = tiny();
        let mut model = SimClr::<B>::new(&cfg, &net, &device);
        let a = Tensor::<B, 4>::random([8, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        // The second view is a noisy copy, so positives are learnable.
        let b = a.clone() + Tensor::random([8, 3, 16, 16], Distribution::Normal(0.0, 0.3), &device);
        let mut optim = SgdConfig::new()
            .with_momentum(Some(
                MomentumConfig::new().with_momentum(0.9).with_dampening(0.0),
            ))
            .init::<B, SimClr<B>>();
        let mut losses = Vec::new();
        for _ in 0..15 {
            let out = model.step(Views {
                views: vec![a.clone(), b.clone()],
            });
            let loss: f64 = out.loss.clone().into_scalar().elem();
            losses.push(loss);
            let grads = GradientsParams::from_grads(out.loss.backward(), &model);
            model = optim.step(0.05, model, grads);
        }
        let first = losses[0];
        let last = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
        assert!(last < first - 0.3, "loss did not decrease: {losses:?}");
        // Evaluation mode works on the trained backbone.
        let feats = model.backbone().valid().forward(a.inner());
        assert_eq!(feats.dims(), [8, 16]);
    }
}
