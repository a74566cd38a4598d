//! MobileNetV2 (Sandler et al. 2018), width 1.0: inverted residual blocks with depthwise convs.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::prelude::*;
use burn::tensor::activation::relu6;

/// (expansion t, output channels c, repeats n, first stride s), as in the paper.
const SETTINGS: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// conv → BatchNorm → optional ReLU6.
#[derive(Module, Debug)]
pub struct ConvBn {
    conv: Conv2d,
    norm: BatchNorm,
    act: bool,
}

impl ConvBn {
    fn new(
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        act: bool,
        device: &Device,
    ) -> Self {
        let p = kernel / 2;
        Self {
            conv: Conv2dConfig::new([cin, cout], [kernel, kernel])
                .with_stride([stride, stride])
                .with_groups(groups)
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_bias(false)
                .init(device),
            norm: BatchNormConfig::new(cout).init(device),
            act,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.norm.forward(self.conv.forward(x));
        if self.act { relu6(y) } else { y }
    }
}

/// Expand (1×1) → depthwise 3×3 → project (1×1), with a residual when shapes match.
#[derive(Module, Debug)]
pub struct InvertedResidual {
    layers: Vec<ConvBn>,
    residual: bool,
}

impl InvertedResidual {
    fn new(cin: usize, cout: usize, stride: usize, expand: usize, device: &Device) -> Self {
        let hidden = cin * expand;
        let mut layers = Vec::new();
        if expand != 1 {
            layers.push(ConvBn::new(cin, hidden, 1, 1, 1, true, device));
        }
        layers.push(ConvBn::new(hidden, hidden, 3, stride, hidden, true, device));
        layers.push(ConvBn::new(hidden, cout, 1, 1, 1, false, device));
        Self {
            layers,
            residual: stride == 1 && cin == cout,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = x.clone();
        for l in &self.layers {
            y = l.forward(y);
        }
        if self.residual { x + y } else { y }
    }
}

/// MobileNetV2 feature extractor, global average pooling, dropout, linear.
#[derive(Module, Debug)]
pub struct MobileNetV2 {
    stem: ConvBn,
    blocks: Vec<InvertedResidual>,
    last: ConvBn,
    pool: AdaptiveAvgPool2d,
    dropout: Dropout,
    head: Linear,
}

impl MobileNetV2 {
    /// A new MobileNetV2 with random weights.
    pub fn new(num_classes: usize, dropout: f64, device: &Device) -> Self {
        let stem = ConvBn::new(3, 32, 3, 2, 1, true, device);
        let mut blocks = Vec::new();
        let mut cin = 32;
        for (t, c, n, s) in SETTINGS {
            for i in 0..n {
                blocks.push(InvertedResidual::new(
                    cin,
                    c,
                    if i == 0 { s } else { 1 },
                    t,
                    device,
                ));
                cin = c;
            }
        }
        Self {
            stem,
            blocks,
            last: ConvBn::new(cin, 1280, 1, 1, 1, true, device),
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            dropout: DropoutConfig::new(dropout).init(),
            head: LinearConfig::new(1280, num_classes).init(device),
        }
    }

    /// Logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.stem.forward(x);
        for b in &self.blocks {
            x = b.forward(x);
        }
        let x: Tensor<2> = self.pool.forward(self.last.forward(x)).flatten(1, 3);
        self.head.forward(self.dropout.forward(x))
    }
}
