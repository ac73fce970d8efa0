//! BYOL (Grill et al. 2020): online network with a predictor regresses an EMA target network's projections.

use super::heads::{simclr_projection, ProjectionHead};
use super::losses::normalized_mse;
use super::{SslMethod, StepOutput, StepProgress, Views};
use crate::config::ByolConfig;
use crate::train::augment::AugmentParams;
use crate::train::resnet::{ResNet, ResNetConfig};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use std::collections::VecDeque;

/// The target network: backbone + projector, same architecture as the online
/// ones, every tensor `no_grad`. Its parameters have their own ids, so the
/// optimiser never sees a gradient for them; they move only by EMA.
#[derive(Module, Debug)]
pub struct ByolTarget<B: Backend> {
    pub backbone: ResNet<B>,
    pub projection: ProjectionHead<B>,
}

impl<B: Backend> ByolTarget<B> {
    /// Target projection of a batch of images, without gradients.
    ///
    /// # Shapes
    /// `[batch, 3, h, w]` -> `[batch, projection_dim]`
    pub fn project(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.projection
            .forward(self.backbone.forward(images))
            .detach()
    }
}

/// Online network (backbone, projector, predictor) and target network.
#[derive(Module, Debug)]
pub struct Byol<B: Backend> {
    pub backbone: ResNet<B>,
    pub projection: ProjectionHead<B>,
    pub prediction: ProjectionHead<B>,
    pub target: ByolTarget<B>,
    /// `tau_base` of the cosine EMA schedule.
    pub tau_base: f64,
    /// EMA rate used by the latest target update (`tau_base` before any).
    pub tau: f64,
}

/// BYOL's EMA rate at `progress` (Grill et al. 2020, section 3.3):
/// `tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2`, from `tau_base` at
/// step 0 up to 1 at the last step.
pub fn cosine_tau(tau_base: f64, progress: StepProgress) -> f64 {
    let k = progress.step as f64 / progress.total_steps.max(1) as f64;
    1.0 - (1.0 - tau_base) * ((std::f64::consts::PI * k.min(1.0)).cos() + 1.0) / 2.0
}

/// Collects every float tensor of a module, in visiting order, flattened.
struct Collect<B: Backend> {
    tensors: VecDeque<Tensor<B, 1>>,
}

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val().detach();
        let n = t.shape().num_elements();
        self.tensors.push_back(t.reshape([n]));
    }
}

/// `target <- tau * target + (1 - tau) * online`, tensor by tensor in
/// visiting order (the two modules have the same architecture). BatchNorm
/// running statistics are float tensors of the module too and move the same
/// way.
struct Ema<B: Backend> {
    online: VecDeque<Tensor<B, 1>>,
    tau: f64,
}

impl<B: Backend> ModuleMapper<B> for Ema<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, target, mapper) = param.consume();
        let online = self
            .online
            .pop_front()
            .expect("target and online networks must have the same tensors");
        let dims = target.dims();
        assert_eq!(
            online.dims()[0],
            dims.iter().product::<usize>(),
            "target and online tensors must have the same shape"
        );
        let updated = (target.detach().mul_scalar(self.tau)
            + online.reshape(dims).mul_scalar(1.0 - self.tau))
        .set_require_grad(false);
        Param::from_mapped_value(id, updated, mapper)
    }
}

impl<B: Backend> Byol<B> {
    pub fn new(config: &ByolConfig, backbone: &ResNetConfig, device: &B::Device) -> Self {
        let feat = backbone.feat_dim();
        // BYOL's projector and predictor are both Linear -> BN -> ReLU ->
        // Linear (Grill et al. 2020, section 3.3), SimCLR's head shape.
        let head = |input, hidden| {
            ProjectionHead::new(
                &simclr_projection(input, hidden, config.projection_dim),
                device,
            )
        };
        let online_backbone = backbone.init(device);
        let online_projection = head(feat, config.projection_hidden_dim);
        // A freshly initialised network (its own parameter ids), then set to
        // the online weights: an EMA step with tau = 0.
        let target = ByolTarget {
            backbone: backbone.init(device),
            projection: head(feat, config.projection_hidden_dim),
        }
        .no_grad();
        let mut model = Self {
            backbone: online_backbone,
            projection: online_projection,
            prediction: head(config.projection_dim, config.prediction_hidden_dim),
            target,
            tau_base: config.tau_base,
            tau: config.tau_base,
        };
        model.target = model.ema_target(0.0);
        model
    }

    /// The target network moved towards the online one by one EMA step.
    pub fn ema_target(&self, tau: f64) -> ByolTarget<B> {
        let mut collect = Collect {
            tensors: VecDeque::new(),
        };
        self.backbone.visit(&mut collect);
        self.projection.visit(&mut collect);
        let mut ema = Ema {
            online: collect.tensors,
            tau,
        };
        let target = self.target.clone().map(&mut ema);
        assert!(ema.online.is_empty(), "online network has extra tensors");
        target
    }

    /// Online projection and prediction of a batch of images.
    ///
    /// # Shapes
    /// `[batch, 3, h, w]` -> (`[batch, projection_dim]`, `[batch, projection_dim]`)
    pub fn online(&self, images: Tensor<B, 4>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let z = self.projection.forward(self.backbone.forward(images));
        let p = self.prediction.forward(z.clone());
        (z, p)
    }
}

impl<B: AutodiffBackend> SslMethod<B> for Byol<B> {
    fn name(&self) -> &'static str {
        "byol"
    }

    /// The SimCLR CIFAR-10 recipe for both views, as lightly's CIFAR-10 BYOL
    /// benchmark does (the paper's asymmetric blur/solarise recipe is an
    /// ImageNet one).
    fn view_recipes(&self) -> Vec<AugmentParams> {
        vec![AugmentParams::simclr_cifar10(); 2]
    }

    fn step(&self, views: Views<B>) -> StepOutput<B> {
        let [a, b]: [Tensor<B, 4>; 2] = views
            .views
            .try_into()
            .unwrap_or_else(|v: Vec<_>| panic!("BYOL takes 2 views, got {}", v.len()));
        let (z1, p1) = self.online(a.clone());
        let (_, p2) = self.online(b.clone());
        // The target branch reads the TARGET weights.
        let t1 = self.target.project(a);
        let t2 = self.target.project(b);
        // Symmetrised loss (Grill et al. 2020, eq. 2 and the L + L~ sum),
        // averaged over the two directions as lightly and solo-learn log it.
        let loss = (normalized_mse(p1, t2) + normalized_mse(p2, t1)) / 2.0;
        let device = loss.device();
        StepOutput {
            loss,
            embedding: z1.detach(),
            scalars: vec![(
                "train/byol/tau",
                Tensor::from_floats([self.tau as f32], &device),
            )],
        }
    }

    fn after_optimizer_step(mut self, progress: StepProgress) -> Self {
        self.tau = cosine_tau(self.tau_base, progress);
        self.target = self.ema_target(self.tau);
        self
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

    fn tiny() -> (ByolConfig, ResNetConfig) {
        let cfg = ByolConfig {
            projection_hidden_dim: 32,
            projection_dim: 16,
            prediction_hidden_dim: 32,
            tau_base: 0.9,
        };
        (cfg, ResNetConfig::new(vec![8, 16], vec![1, 1]))
    }

    fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
    }

    fn images(n: usize) -> Tensor<B, 4> {
        Tensor::random(
            [n, 3, 16, 16],
            Distribution::Normal(0.0, 1.0),
            &Default::default(),
        )
    }

    /// Some parameters of the online network shifted by `delta`.
    fn perturb_online(mut m: Byol<B>, delta: f32) -> Byol<B> {
        m.backbone.stem.conv.weight = m
            .backbone
            .stem
            .conv
            .weight
            .map(|w| w.add_scalar(delta).detach().require_grad());
        let block = &mut m.projection.blocks[1].linear;
        block.weight = block
            .weight
            .clone()
            .map(|w| w.add_scalar(delta).detach().require_grad());
        m
    }

    #[test]
    fn cosine_schedule_goes_from_tau_base_to_one() {
        let at = |step| {
            cosine_tau(
                0.99,
                StepProgress {
                    step,
                    total_steps: 100,
                },
            )
        };
        assert!((at(0) - 0.99).abs() < 1e-12);
        assert!((at(50) - 0.995).abs() < 1e-12);
        assert!((at(100) - 1.0).abs() < 1e-12);
        assert!(at(30) < at(60));
    }

    #[test]
    fn target_starts_equal_to_online_with_its_own_ids_and_no_grad() {
        let (cfg, net) = tiny();
        let m = Byol::<B>::new(&cfg, &net, &Default::default());
        assert_eq!(
            values(m.target.backbone.stem.conv.weight.val()),
            values(m.backbone.stem.conv.weight.val())
        );
        assert_ne!(
            m.target.backbone.stem.conv.weight.id,
            m.backbone.stem.conv.weight.id
        );
        assert!(!m.target.projection.blocks[0]
            .linear
            .weight
            .val()
            .is_require_grad());
        assert!(m.projection.blocks[0].linear.weight.val().is_require_grad());
    }

    #[test]
    fn ema_step_moves_each_target_tensor_by_tau() {
        let (cfg, net) = tiny();
        let m = Byol::<B>::new(&cfg, &net, &Default::default());
        // Make online and target differ, as after some training.
        let m = perturb_online(m, 0.5);
        let old_t = (
            values(m.target.backbone.stem.conv.weight.val()),
            values(m.target.projection.blocks[1].linear.weight.val()),
            values(
                m.target.projection.blocks[0]
                    .bn
                    .as_ref()
                    .unwrap()
                    .gamma
                    .val(),
            ),
        );
        let online = (
            values(m.backbone.stem.conv.weight.val()),
            values(m.projection.blocks[1].linear.weight.val()),
            values(m.projection.blocks[0].bn.as_ref().unwrap().gamma.val()),
        );
        let progress = StepProgress {
            step: 3,
            total_steps: 10,
        };
        let tau = cosine_tau(cfg.tau_base, progress);
        let m = m.after_optimizer_step(progress);
        assert_eq!(m.tau, tau);
        let new_t = (
            values(m.target.backbone.stem.conv.weight.val()),
            values(m.target.projection.blocks[1].linear.weight.val()),
            values(
                m.target.projection.blocks[0]
                    .bn
                    .as_ref()
                    .unwrap()
                    .gamma
                    .val(),
            ),
        );
        let check = |name: &str, old: &[f32], on: &[f32], new: &[f32]| {
            assert_eq!(old.len(), new.len());
            let mut moved = false;
            for ((&o, &x), &n) in old.iter().zip(on).zip(new) {
                let want = tau * f64::from(o) + (1.0 - tau) * f64::from(x);
                assert!((f64::from(n) - want).abs() < 1e-5, "{name}: {n} vs {want}");
                moved |= (n - o).abs() > 1e-4;
            }
            assert!(moved, "{name} did not move");
        };
        check("stem", &old_t.0, &online.0, &new_t.0);
        check("projection", &old_t.1, &online.1, &new_t.1);
        // gamma was not perturbed: online and target agree and stay so.
        check_unchanged(&old_t.2, &new_t.2);
        assert!(!m.target.backbone.stem.conv.weight.val().is_require_grad());
    }

    fn check_unchanged(a: &[f32], b: &[f32]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }

    #[test]
    fn target_branch_reads_the_target_weights() {
        let (cfg, net) = tiny();
        let m = Byol::<B>::new(&cfg, &net, &Default::default());
        let x = images(4);
        let before = values(m.target.project(x.clone()));
        let online_before = values(m.online(x.clone()).0);
        let m = perturb_online(m, 0.5);
        // The online projection changes, the target one does not.
        let online_after = values(m.online(x.clone()).0);
        assert!(
            online_before
                .iter()
                .zip(&online_after)
                .any(|(a, b)| (a - b).abs() > 1e-3),
            "perturbation had no effect"
        );
        check_unchanged(&before, &values(m.target.project(x.clone())));
        // step() regresses the online predictions onto the TARGET projections
        // of the other view.
        let (a, b) = (images(4), images(4));
        let got: f64 = m
            .step(Views {
                views: vec![a.clone(), b.clone()],
            })
            .loss
            .into_scalar()
            .elem();
        let (_, p1) = m.online(a.clone());
        let (_, p2) = m.online(b.clone());
        let want: f64 = ((normalized_mse(p1, m.target.project(b))
            + normalized_mse(p2, m.target.project(a)))
            / 2.0)
            .into_scalar()
            .elem();
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // And the loss's target inputs have no gradient path.
        let out = m.step(Views {
            views: vec![x.clone(), x],
        });
        let grads = out.loss.backward();
        assert!(m.target.backbone.stem.conv.weight.grad(&grads).is_none());
        assert!(m.backbone.stem.conv.weight.grad(&grads).is_some());
    }

    #[test]
    fn step_logs_tau_and_the_online_projection() {
        let (cfg, net) = tiny();
        let m = Byol::<B>::new(&cfg, &net, &Default::default());
        let out = m.step(Views {
            views: vec![images(4), images(4)],
        });
        assert_eq!(out.embedding.dims(), [4, 16]);
        let loss: f64 = out.loss.into_scalar().elem();
        assert!((0.0..=4.0).contains(&loss), "{loss}");
        assert_eq!(out.scalars.len(), 1);
        assert_eq!(out.scalars[0].0, "train/byol/tau");
        let tau: f64 = out.scalars[0].1.clone().into_scalar().elem();
        assert!((tau - 0.9).abs() < 1e-6, "{tau}");
    }

    #[test]
    fn loss_decreases_on_a_fixed_batch() {
        let (cfg, net) = tiny();
        let losses = losses_on_a_fixed_batch(Byol::<B>::new(&cfg, &net, &Default::default()), 12);
        let last = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
        assert!(last < losses[0] - 0.2, "loss did not decrease: {losses:?}");
    }
}
