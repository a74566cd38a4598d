//! The reference CNN, kept exactly as the PyTorch reference defines it (flora is benchmarked on it).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d, Relu,
};
use burn::prelude::*;

use super::fused::{ConvBnWeights, FusedBlock, FusedCnn};

/// Channel widths of the four blocks.
pub const WIDTHS: [usize; 4] = [32, 64, 128, 256];

/// conv3x3 (padding 1) → BatchNorm → ReLU → MaxPool2.
#[derive(Module, Debug)]
pub struct ConvBlock {
    conv: Conv2d,
    norm: BatchNorm,
    relu: Relu,
    pool: MaxPool2d,
}

impl ConvBlock {
    fn new(cin: usize, cout: usize, device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([cin, cout], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            norm: BatchNormConfig::new(cout).init(device),
            relu: Relu::new(),
            pool: MaxPool2dConfig::new([2, 2]).init(),
        }
    }

    fn fused(&self, cin: usize, cout: usize) -> FusedBlock {
        let w = ConvBnWeights {
            conv_weight: values(self.conv.weight.val()),
            conv_bias: self.conv.bias.as_ref().map(|b| values(b.val())),
            gamma: values(self.norm.gamma.val()),
            beta: values(self.norm.beta.val()),
            running_mean: values(self.norm.running_mean.value()),
            running_var: values(self.norm.running_var.value()),
            epsilon: self.norm.epsilon,
        };
        FusedBlock::fold(cin, cout, &w)
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.pool
            .forward(self.relu.forward(self.norm.forward(self.conv.forward(x))))
    }
}

/// 4 conv blocks, global average pooling, dropout, linear.
#[derive(Module, Debug)]
pub struct Cnn {
    blocks: Vec<ConvBlock>,
    pool: AdaptiveAvgPool2d,
    dropout: Dropout,
    head: Linear,
}

impl Cnn {
    /// A new CNN with random weights.
    pub fn new(num_classes: usize, dropout: f64, device: &Device) -> Self {
        let mut cin = 3;
        let blocks = WIDTHS
            .iter()
            .map(|&cout| {
                let b = ConvBlock::new(cin, cout, device);
                cin = cout;
                b
            })
            .collect();
        Self {
            blocks,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            dropout: DropoutConfig::new(dropout).init(),
            head: LinearConfig::new(cin, num_classes).init(device),
        }
    }

    /// Logits `[batch, classes]`.
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<2> {
        for b in &self.blocks {
            x = b.forward(x);
        }
        let x: Tensor<2> = self.pool.forward(x).flatten(1, 3);
        self.head.forward(self.dropout.forward(x))
    }

    /// The inference-only form of this network (BatchNorm folded in, channels-last).
    pub fn fused(&self) -> FusedCnn {
        let mut cin = 3;
        let blocks = self
            .blocks
            .iter()
            .zip(WIDTHS)
            .map(|(b, cout)| {
                let f = b.fused(cin, cout);
                cin = cout;
                f
            })
            .collect();
        let head_bias = match &self.head.bias {
            Some(b) => values(b.val()),
            None => vec![0.0; self.head.weight.dims()[1]],
        };
        FusedCnn::new(blocks, values(self.head.weight.val()), head_bias)
    }
}

/// A tensor's values in row-major order.
fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec()
        .expect("float weights convert to f32")
}
