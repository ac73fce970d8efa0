//! Projection / prediction heads built from a list of Linear-BN-ReLU blocks (lightly's `ProjectionHead`).

use crate::train::batchnorm::batch_norm;
use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// One layer of a head: `Linear(in, out)`, optionally BatchNorm1d, optionally ReLU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpec {
    pub input: usize,
    pub output: usize,
    pub batch_norm: bool,
    pub relu: bool,
}

/// A built block. The Linear has no bias when BatchNorm follows (the BN shift
/// makes it redundant), as lightly's heads do (`bias=not batch_norm`).
#[derive(Module, Debug)]
pub struct HeadBlock<B: Backend> {
    pub linear: Linear<B>,
    pub bn: Option<BatchNorm<B>>,
    pub relu: bool,
}

/// A multi-layer head.
///
/// # Shapes
/// `[batch, blocks[0].input]` -> `[batch, blocks.last().output]`
#[derive(Module, Debug)]
pub struct ProjectionHead<B: Backend> {
    pub blocks: Vec<HeadBlock<B>>,
}

impl<B: Backend> ProjectionHead<B> {
    /// Builds the blocks in order; consecutive specs must chain (`output` of
    /// one equals `input` of the next).
    pub fn new(specs: &[BlockSpec], device: &B::Device) -> Self {
        assert!(!specs.is_empty(), "a head needs at least one block");
        for pair in specs.windows(2) {
            assert_eq!(pair[0].output, pair[1].input, "head blocks must chain");
        }
        let blocks = specs
            .iter()
            .map(|s| HeadBlock {
                // PyTorch's default Linear init (burn's default is the same
                // Kaiming-uniform with a = sqrt(5)).
                linear: LinearConfig::new(s.input, s.output)
                    .with_bias(!s.batch_norm)
                    .init(device),
                bn: s
                    .batch_norm
                    .then(|| BatchNormConfig::new(s.output).init(device)),
                relu: s.relu,
            })
            .collect();
        Self { blocks }
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.blocks.iter().fold(x, |x, block| {
            let mut x = block.linear.forward(x);
            if let Some(bn) = &block.bn {
                x = batch_norm(bn, x);
            }
            if block.relu {
                x = relu(x);
            }
            x
        })
    }
}

/// SimCLR's 2-layer projection head (Chen et al. 2020, section 2.1; lightly
/// `SimCLRProjectionHead`): `Linear -> BN -> ReLU -> Linear`.
pub fn simclr_projection(input: usize, hidden: usize, output: usize) -> Vec<BlockSpec> {
    vec![
        BlockSpec {
            input,
            output: hidden,
            batch_norm: true,
            relu: true,
        },
        BlockSpec {
            input: hidden,
            output,
            batch_norm: false,
            relu: false,
        },
    ]
}

/// SimSiam's 3-layer projector (Chen & He 2021, section 3 baseline
/// settings; lightly `SimSiamProjectionHead`): `Linear -> BN -> ReLU ->
/// Linear -> BN -> ReLU -> Linear -> BN`, BN on every layer including the
/// output. The paper's output BN has no affine parameters; this one keeps
/// Burn's (learnable scale and shift, initialised to the identity).
pub fn simsiam_projection(input: usize, hidden: usize, output: usize) -> Vec<BlockSpec> {
    vec![
        BlockSpec {
            input,
            output: hidden,
            batch_norm: true,
            relu: true,
        },
        BlockSpec {
            input: hidden,
            output: hidden,
            batch_norm: true,
            relu: true,
        },
        BlockSpec {
            input: hidden,
            output,
            batch_norm: true,
            relu: false,
        },
    ]
}

/// SimSiam's bottleneck predictor (Chen & He 2021, section 3; lightly
/// `SimSiamPredictionHead`): `Linear(dim, hidden) -> BN -> ReLU ->
/// Linear(hidden, dim)`, no BN on the output.
pub fn simsiam_prediction(dim: usize, hidden: usize) -> Vec<BlockSpec> {
    simclr_projection(dim, hidden, dim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    #[test]
    fn simclr_head_shapes_and_biases() {
        let device = Default::default();
        let head = ProjectionHead::<Flex>::new(&simclr_projection(8, 6, 4), &device);
        assert!(head.blocks[0].linear.bias.is_none() && head.blocks[0].bn.is_some());
        assert!(head.blocks[1].linear.bias.is_some() && head.blocks[1].bn.is_none());
        let x = Tensor::<Flex, 2>::random([5, 8], Distribution::Normal(0.0, 1.0), &device);
        assert_eq!(head.forward(x).dims(), [5, 4]);
    }

    #[test]
    fn simsiam_heads_shapes_and_batch_norms() {
        let device = Default::default();
        let proj = ProjectionHead::<Flex>::new(&simsiam_projection(8, 6, 4), &device);
        assert_eq!(proj.blocks.len(), 3);
        assert!(proj.blocks.iter().all(|b| b.bn.is_some()));
        assert!(!proj.blocks[2].relu && proj.blocks[1].relu);
        let pred = ProjectionHead::<Flex>::new(&simsiam_prediction(4, 2), &device);
        assert!(pred.blocks[1].bn.is_none() && pred.blocks[1].linear.bias.is_some());
        let x = Tensor::<Flex, 2>::random([5, 8], Distribution::Normal(0.0, 1.0), &device);
        assert_eq!(pred.forward(proj.forward(x)).dims(), [5, 4]);
    }
}
