//! CIFAR-variant ResNet backbone (He et al. 2016): 3x3 stride-1 stem, no max-pool, basic blocks.
//!
//! Parameter paths (what `backbone.safetensors` holds after the PyTorch
//! adapter renames BatchNorm `gamma`/`beta` to `weight`/`bias`):
//!
//! ```text
//! stem.conv.weight                      [w0, 3, 3, 3]
//! stem.bn.{weight,bias,running_mean,running_var}
//! layers.<s>.<b>.conv1.weight           stage s (0-3), block b
//! layers.<s>.<b>.bn1.{weight,bias,running_mean,running_var}
//! layers.<s>.<b>.conv2.weight
//! layers.<s>.<b>.bn2.{...}
//! layers.<s>.0.shortcut.conv.weight     1x1 projection, only where the
//! layers.<s>.0.shortcut.bn.{...}        stage changes width or stride
//! ```
//!
//! Convolutions carry no bias (each is followed by BatchNorm), as in torchvision.

use super::batchnorm::batch_norm;
use crate::config::BackbonePreset;
use burn::config::Config;
use burn::module::{Initializer, Module};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Architecture of a [`ResNet`].
#[derive(Config, Debug)]
pub struct ResNetConfig {
    /// Channels of each stage; the stem outputs `widths[0]`.
    pub widths: Vec<usize>,
    /// Basic blocks per stage (same length as `widths`).
    pub blocks: Vec<usize>,
    /// Input channels (3 for RGB).
    #[config(default = 3)]
    pub in_channels: usize,
}

impl ResNetConfig {
    /// The two presets of [`BackbonePreset`].
    pub fn preset(preset: BackbonePreset) -> Self {
        match preset {
            // He et al. 2016, Table 1 (ResNet-18): 64-128-256-512, [2, 2, 2, 2].
            BackbonePreset::Resnet18 => Self::new(vec![64, 128, 256, 512], vec![2, 2, 2, 2]),
            // A quarter of the width and one block per stage: ~0.3 M parameters.
            BackbonePreset::Small => Self::new(vec![16, 32, 64, 128], vec![1, 1, 1, 1]),
        }
    }

    /// Width of the pooled feature vector.
    pub fn feat_dim(&self) -> usize {
        self.widths.last().copied().unwrap_or(self.in_channels)
    }

    /// Builds the network with torchvision's initialisation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResNet<B> {
        assert_eq!(
            self.widths.len(),
            self.blocks.len(),
            "one block count per stage"
        );
        assert!(!self.widths.is_empty(), "at least one stage");
        let stem = ConvBn::new(self.in_channels, self.widths[0], 3, 1, device);
        let mut layers = Vec::with_capacity(self.widths.len());
        let mut in_ch = self.widths[0];
        for (stage, (&width, &count)) in self.widths.iter().zip(&self.blocks).enumerate() {
            // Stages after the first halve the resolution in their first block.
            let stride = if stage == 0 { 1 } else { 2 };
            let blocks = (0..count.max(1))
                .map(|b| {
                    let block =
                        BasicBlock::new(in_ch, width, if b == 0 { stride } else { 1 }, device);
                    in_ch = width;
                    block
                })
                .collect();
            layers.push(blocks);
        }
        ResNet { stem, layers }
    }
}

/// Convolution followed by BatchNorm (no activation).
#[derive(Module, Debug)]
pub struct ConvBn<B: Backend> {
    pub conv: Conv2d<B>,
    pub bn: BatchNorm<B>,
}

impl<B: Backend> ConvBn<B> {
    fn new(in_ch: usize, out_ch: usize, kernel: usize, stride: usize, device: &B::Device) -> Self {
        let pad = kernel / 2;
        let conv = Conv2dConfig::new([in_ch, out_ch], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_bias(false)
            // torchvision ResNet: kaiming_normal_(mode="fan_out", nonlinearity="relu"),
            // i.e. std = sqrt(2 / fan_out).
            .with_initializer(Initializer::KaimingNormal {
                gain: std::f64::consts::SQRT_2,
                fan_out_only: true,
            })
            .init(device);
        // BatchNorm defaults (eps 1e-5, momentum 0.1) are PyTorch's.
        let bn = BatchNormConfig::new(out_ch).init(device);
        Self { conv, bn }
    }

    /// `[b, in, h, w]` -> `[b, out, h / stride, w / stride]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        batch_norm(&self.bn, self.conv.forward(x))
    }
}

/// Two 3x3 conv-BN layers with an identity or 1x1 projection shortcut.
#[derive(Module, Debug)]
pub struct BasicBlock<B: Backend> {
    pub conv1: Conv2d<B>,
    pub bn1: BatchNorm<B>,
    pub conv2: Conv2d<B>,
    pub bn2: BatchNorm<B>,
    /// Present when the block changes width or resolution (option B of He et al.).
    pub shortcut: Option<ConvBn<B>>,
}

impl<B: Backend> BasicBlock<B> {
    fn new(in_ch: usize, out_ch: usize, stride: usize, device: &B::Device) -> Self {
        let first = ConvBn::new(in_ch, out_ch, 3, stride, device);
        let second = ConvBn::new(out_ch, out_ch, 3, 1, device);
        let shortcut =
            (stride != 1 || in_ch != out_ch).then(|| ConvBn::new(in_ch, out_ch, 1, stride, device));
        Self {
            conv1: first.conv,
            bn1: first.bn,
            conv2: second.conv,
            bn2: second.bn,
            shortcut,
        }
    }

    /// `[b, in, h, w]` -> `[b, out, h / stride, w / stride]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let out = relu(batch_norm(&self.bn1, self.conv1.forward(x.clone())));
        let out = batch_norm(&self.bn2, self.conv2.forward(out));
        let identity = match &self.shortcut {
            Some(proj) => proj.forward(x),
            None => x,
        };
        relu(out + identity)
    }
}

/// CIFAR ResNet: stem, stages of basic blocks, global average pool.
///
/// # Shapes
/// - input: `[batch, 3, h, w]`, normalised images
/// - output: `[batch, feat_dim]` with `feat_dim` the last stage's width
///
/// BatchNorm uses batch statistics when the backend records gradients
/// (training) and running statistics otherwise (`module.valid()`: evaluation).
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    pub stem: ConvBn<B>,
    /// `layers[stage][block]`.
    pub layers: Vec<Vec<BasicBlock<B>>>,
}

impl<B: Backend> ResNet<B> {
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = relu(self.stem.forward(images)); // [b, w0, h, w]
        for stage in &self.layers {
            for block in stage {
                x = block.forward(x);
            }
        }
        let [b, c, h, w] = x.dims();
        x.reshape([b, c, h * w]).mean_dim(2).reshape([b, c]) // [b, feat_dim]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn::backend::Flex;
    use burn::module::AutodiffModule;
    use burn::tensor::Distribution;

    type B = Autodiff<Flex>;

    #[test]
    fn small_preset_shapes_and_eval_mode() {
        let device = Default::default();
        let cfg = ResNetConfig::preset(BackbonePreset::Small);
        assert_eq!(cfg.feat_dim(), 128);
        let net = cfg.init::<B>(&device);
        let x = Tensor::<B, 4>::random([3, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let y = net.forward(x.clone());
        assert_eq!(y.dims(), [3, 128]);
        // Eval mode (inner backend) uses running stats and still works on a batch of 1.
        let eval = net.valid();
        let y1 = eval.forward(x.inner().narrow(0, 0, 1));
        assert_eq!(y1.dims(), [1, 128]);
        assert!(y1
            .into_data()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite()));
        // Stage 0 keeps width 16 (no shortcut); stages 1-3 project.
        assert!(net.layers[0][0].shortcut.is_none());
        assert!(net.layers[1][0].shortcut.is_some());
    }

    #[test]
    fn resnet18_preset_shapes() {
        let device = Default::default();
        let cfg = ResNetConfig::preset(BackbonePreset::Resnet18);
        let net = cfg.init::<Flex>(&device);
        assert_eq!(
            net.layers.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![2, 2, 2, 2]
        );
        // 11.17 M parameters for ResNet-18 without the fc layer (torchvision: 11.69 M
        // with its 0.51 M-parameter fc; the CIFAR stem is 3x3 not 7x7: -0.009 M).
        let params = net.num_params();
        assert!((11_100_000..11_200_000).contains(&params), "{params}");
        let x = Tensor::<Flex, 4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        assert_eq!(net.forward(x).dims(), [2, 512]);
    }
}
