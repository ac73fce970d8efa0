//! SimSiam (Chen & He 2021): backbone + projector + predictor, symmetric negative cosine with a stop-gradient.

use super::heads::{simsiam_prediction, simsiam_projection, ProjectionHead};
use super::losses::negative_cosine;
use super::{SslMethod, StepOutput, Views};
use crate::config::SimsiamConfig;
use crate::train::augment::AugmentParams;
use crate::train::resnet::{ResNet, ResNetConfig};
use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

/// Encoder `f` (backbone + projector) and predictor `h`; both heads are
/// discarded after pre-training.
#[derive(Module, Debug)]
pub struct SimSiam<B: Backend> {
    pub backbone: ResNet<B>,
    pub projection: ProjectionHead<B>,
    pub prediction: ProjectionHead<B>,
}

impl<B: Backend> SimSiam<B> {
    pub fn new(config: &SimsiamConfig, backbone: &ResNetConfig, device: &B::Device) -> Self {
        Self {
            backbone: backbone.init(device),
            projection: ProjectionHead::new(
                &simsiam_projection(
                    backbone.feat_dim(),
                    config.projection_hidden_dim,
                    config.projection_dim,
                ),
                device,
            ),
            prediction: ProjectionHead::new(
                &simsiam_prediction(config.projection_dim, config.prediction_hidden_dim),
                device,
            ),
        }
    }

    /// Projection `z = f(x)` of a batch of images.
    ///
    /// # Shapes
    /// `[batch, 3, h, w]` -> `[batch, projection_dim]`
    pub fn project(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.projection.forward(self.backbone.forward(images))
    }
}

/// `L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2` (Chen & He 2021,
/// eq. 4 and Algorithm 1): gradients reach the encoder only through `p`.
///
/// # Shapes
/// all `[n, d]` -> `[1]`
pub fn simsiam_loss<B: Backend>(
    p1: Tensor<B, 2>,
    p2: Tensor<B, 2>,
    z1: Tensor<B, 2>,
    z2: Tensor<B, 2>,
) -> Tensor<B, 1> {
    (negative_cosine(p1, z2.detach()) + negative_cosine(p2, z1.detach())) / 2.0
}

impl<B: AutodiffBackend> SslMethod<B> for SimSiam<B> {
    fn name(&self) -> &'static str {
        "simsiam"
    }

    /// The SimCLR CIFAR-10 recipe for both views, as lightly's and
    /// solo-learn's CIFAR SimSiam configs use.
    fn view_recipes(&self) -> Vec<AugmentParams> {
        vec![AugmentParams::simclr_cifar10(); 2]
    }

    fn step(&self, views: Views<B>) -> StepOutput<B> {
        let [a, b]: [Tensor<B, 4>; 2] = views
            .views
            .try_into()
            .unwrap_or_else(|v: Vec<_>| panic!("SimSiam takes 2 views, got {}", v.len()));
        // One pass per view, as the paper's Algorithm 1 (BatchNorm statistics
        // per view).
        let z1 = self.project(a); // [n, d]
        let z2 = self.project(b); // [n, d]
        let p1 = self.prediction.forward(z1.clone());
        let p2 = self.prediction.forward(z2.clone());
        let embedding = z1.clone().detach();
        StepOutput {
            loss: simsiam_loss(p1, p2, z1, z2),
            embedding,
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
    use crate::methods::tests::losses_on_a_fixed_batch;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, ElementConversion};

    type B = Autodiff<Flex>;

    fn tiny() -> (SimsiamConfig, ResNetConfig) {
        let cfg = SimsiamConfig {
            projection_hidden_dim: 32,
            projection_dim: 16,
            prediction_hidden_dim: 8,
        };
        (cfg, ResNetConfig::new(vec![8, 16], vec![1, 1]))
    }

    #[test]
    fn gradient_flows_only_through_the_predictions() {
        let device = Default::default();
        let t = || {
            Tensor::<B, 2>::random([4, 6], Distribution::Normal(0.0, 1.0), &device).require_grad()
        };
        let (p1, p2, z1, z2) = (t(), t(), t(), t());
        let grads = simsiam_loss(p1.clone(), p2.clone(), z1.clone(), z2.clone()).backward();
        for (name, z) in [("z1", &z1), ("z2", &z2)] {
            let g = z.grad(&grads);
            let max = g.map_or(0.0, |g| f64::from(g.abs().max().into_scalar()));
            assert_eq!(max, 0.0, "{name} got a gradient");
        }
        for (name, p) in [("p1", &p1), ("p2", &p2)] {
            let g = p
                .grad(&grads)
                .unwrap_or_else(|| panic!("{name} has no gradient"));
            let max = f64::from(g.abs().max().into_scalar());
            assert!(max > 1e-4, "{name}: {max}");
        }
    }

    #[test]
    fn step_gives_a_loss_in_range_and_the_projection_as_embedding() {
        let device = Default::default();
        let (cfg, net) = tiny();
        let model = SimSiam::<B>::new(&cfg, &net, &device);
        let views = Views {
            views: (0..2)
                .map(|_| Tensor::random([4, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device))
                .collect(),
        };
        let out = model.step(views);
        assert_eq!(out.embedding.dims(), [4, 16]);
        let loss: f64 = out.loss.into_scalar().elem();
        assert!((-1.0..=1.0).contains(&loss), "{loss}");
    }

    #[test]
    fn loss_decreases_on_a_fixed_batch() {
        let device = Default::default();
        let (cfg, net) = tiny();
        let losses = losses_on_a_fixed_batch(SimSiam::<B>::new(&cfg, &net, &device), 12);
        let last = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
        assert!(last < losses[0] - 0.2, "loss did not decrease: {losses:?}");
    }
}
