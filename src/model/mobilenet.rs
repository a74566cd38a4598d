//! MobileNetV2 (Sandler et al. 2018) in torchvision's layout: inverted residual blocks with
//! ReLU6, depthwise 3×3 convolutions as grouped convs, BatchNorm, dropout before the classifier,
//! and channel counts scaled by a width multiplier and rounded as torchvision's
//! `_make_divisible` does, so torchvision's and timm's weights map onto it one tensor for one
//! (see [`super::pretrained`]).
//!
//! Module paths: `stem.{conv,norm}`, `blocks.<i>.layers.<j>.{conv,norm}` (17 blocks; `j` runs
//! over expand, depthwise, project, without the expand when the expansion is 1),
//! `last.{conv,norm}`, `head`. Bundles written before widths existed have the same paths.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::prelude::*;
use burn::tensor::activation::relu6;

use super::fused_mobilenet::{FusedConv, FusedMobileNet, FusedUnit};
use super::layers::{Act, Layer};
use super::{conv_bn_weights, values};
use crate::ops::{self, TrainEngine};

/// The width multipliers flora offers (torchvision and timm publish weights for some of them).
pub const WIDTHS: [f64; 4] = [0.35, 0.5, 0.75, 1.0];

/// (expansion t, output channels c, repeats n, first stride s), as in the paper.
pub const SETTINGS: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// Number of inverted residual blocks (the sum of the repeats in [`SETTINGS`]).
pub const NUM_BLOCKS: usize = 17;

/// torchvision's `_make_divisible(v, divisor)`: `v` rounded to the nearest multiple of
/// `divisor`, at least `divisor`, and never more than 10% below `v`.
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let new = (((v + d / 2.0) / d).floor() * d).max(d);
    (if new < 0.9 * v { new + d } else { new }) as usize
}

/// One inverted residual block's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPlan {
    pub cin: usize,
    pub cout: usize,
    pub stride: usize,
    pub expand: usize,
}

impl BlockPlan {
    /// Channels of the expanded (depthwise) part.
    pub fn hidden(&self) -> usize {
        self.cin * self.expand
    }
}

/// Every channel count of a MobileNetV2 at one width, as torchvision computes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Output channels of the 3×3 stride-2 stem.
    pub stem: usize,
    pub blocks: Vec<BlockPlan>,
    /// Output channels of the final 1×1 conv (the classifier's input).
    pub last: usize,
}

impl Plan {
    /// The channel plan at `width`.
    pub fn new(width: f64) -> Self {
        let stem = make_divisible(32.0 * width, 8);
        let mut blocks = Vec::with_capacity(NUM_BLOCKS);
        let mut cin = stem;
        for (t, c, n, s) in SETTINGS {
            let cout = make_divisible(c as f64 * width, 8);
            for i in 0..n {
                blocks.push(BlockPlan {
                    cin,
                    cout,
                    stride: if i == 0 { s } else { 1 },
                    expand: t,
                });
                cin = cout;
            }
        }
        Self {
            stem,
            blocks,
            last: make_divisible(1280.0 * width.max(1.0), 8),
        }
    }
}

/// conv → BatchNorm → optional ReLU6.
#[derive(Module, Debug)]
pub struct ConvBn {
    conv: Conv2d,
    norm: BatchNorm,
    act: bool,
}

impl ConvBn {
    fn new(
        [cin, cout]: [usize; 2],
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

    /// Burn's modules as declared: what inference and [`TrainEngine::Burn`] run.
    fn forward_burn(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.norm.forward(self.conv.forward(x));
        if self.act { relu6(y) } else { y }
    }

    /// A training pass (autodiff device) with [`TrainEngine::Fused`] runs the depthwise and
    /// pointwise convs and, when the norm trains (not frozen), BatchNorm + ReLU6 through the
    /// fused ops of [`crate::ops::mobile`] (which fall back to Burn's ops off Flex); the stem's
    /// dense 3×3 conv stays Burn's. Running statistics are updated as [`BatchNorm`] does.
    fn forward_with(&self, x: Tensor<4>, engine: TrainEngine) -> Tensor<4> {
        let device = x.device();
        if engine == TrainEngine::Burn || !device.is_autodiff() {
            return self.forward_burn(x);
        }
        // The weight before the norm's parameters: parameters are initialised lazily, on first
        // use, in the order Burn's modules use them, so both engines start from the same weights.
        let weight = self.conv.weight.val();
        let [cout, per_group, k, _] = weight.dims();
        let (stride, groups) = (self.conv.stride[0], self.conv.groups);
        let y = if k == 1 && groups == 1 && stride == 1 {
            ops::pointwise_train(x, weight, engine)
        } else if k == 3 && per_group == 1 && groups == cout && stride <= 2 {
            ops::depthwise3x3_train(x, weight, stride, engine)
        } else {
            self.conv.forward(x)
        };
        if !self.norm.training.is_enabled() {
            let y = self.norm.forward(y);
            return if self.act { relu6(y) } else { y };
        }
        let n = &self.norm;
        let r = ops::bn_act_train(y, n.gamma.val(), n.beta.val(), n.epsilon, self.act, engine);
        let m = n.momentum;
        let update = |state: &burn::module::RunningState<Tensor<1>>, batch: Tensor<1>| {
            let running = state
                .value_sync()
                .to_device(&device)
                .mul_scalar(1.0 - m)
                .add(batch.detach().mul_scalar(m));
            state.update(running.detach());
        };
        update(&n.running_mean, r.mean);
        update(&n.running_var, r.var);
        r.output
    }

    /// This conv + norm folded into one plain layer, for export.
    fn layer(&self) -> Layer {
        let [cout, per_group, k, _] = self.conv.weight.dims();
        let w = conv_bn_weights(&self.conv, &self.norm);
        let groups = self.conv.groups;
        let act = if self.act { Act::Relu6 } else { Act::None };
        Layer::conv(
            &w,
            [per_group * groups, cout],
            (k, self.conv.stride[0], groups),
            act,
        )
    }

    /// The folded inference form of this conv + norm.
    fn fused(&self) -> FusedConv {
        let [cout, per_group, k, _] = self.conv.weight.dims();
        let w = conv_bn_weights(&self.conv, &self.norm);
        let cin = per_group * self.conv.groups;
        FusedConv::fold(
            &w,
            [cin, cout],
            k,
            self.conv.stride[0],
            self.conv.groups,
            self.act,
        )
    }
}

/// Expand (1×1) → depthwise 3×3 → project (1×1), with a residual when shapes match.
#[derive(Module, Debug)]
pub struct InvertedResidual {
    layers: Vec<ConvBn>,
    residual: bool,
}

impl InvertedResidual {
    fn new(p: BlockPlan, device: &Device) -> Self {
        let hidden = p.hidden();
        let mut layers = Vec::new();
        if p.expand != 1 {
            layers.push(ConvBn::new([p.cin, hidden], 1, 1, 1, true, device));
        }
        layers.push(ConvBn::new(
            [hidden, hidden],
            3,
            p.stride,
            hidden,
            true,
            device,
        ));
        layers.push(ConvBn::new([hidden, p.cout], 1, 1, 1, false, device));
        Self {
            layers,
            residual: p.stride == 1 && p.cin == p.cout,
        }
    }

    fn forward_with(&self, x: Tensor<4>, engine: TrainEngine) -> Tensor<4> {
        let mut y = x.clone();
        for l in &self.layers {
            y = l.forward_with(y, engine);
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
    /// A new MobileNetV2 at `width` (one of [`WIDTHS`]) with random weights.
    pub fn new(width: f64, num_classes: usize, dropout: f64, device: &Device) -> Self {
        let plan = Plan::new(width);
        Self {
            stem: ConvBn::new([3, plan.stem], 3, 2, 1, true, device),
            blocks: plan
                .blocks
                .iter()
                .map(|&b| InvertedResidual::new(b, device))
                .collect(),
            last: ConvBn::new(
                [plan.blocks[NUM_BLOCKS - 1].cout, plan.last],
                1,
                1,
                1,
                true,
                device,
            ),
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            dropout: DropoutConfig::new(dropout).init(),
            head: LinearConfig::new(plan.last, num_classes).init(device),
        }
    }

    /// Logits `[batch, classes]`, with the training engine chosen by
    /// [`TrainEngine::from_env`].
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_with(x, TrainEngine::from_env())
    }

    /// Logits `[batch, classes]`. A training pass (autodiff device) with
    /// [`TrainEngine::Fused`] runs the convs and BatchNorms through the fused training ops;
    /// otherwise Burn's modules run as declared.
    pub fn forward_with(&self, x: Tensor<4>, engine: TrainEngine) -> Tensor<2> {
        let mut x = self.stem.forward_with(x, engine);
        for b in &self.blocks {
            x = b.forward_with(x, engine);
        }
        let x: Tensor<2> = self
            .pool
            .forward(self.last.forward_with(x, engine))
            .flatten(1, 3);
        self.head.forward(self.dropout.forward(x))
    }

    /// Number of classifier outputs.
    pub fn num_classes(&self) -> usize {
        self.head.weight.dims()[1]
    }

    /// Freezes the stem and the first `units - trainable` of the backbone's units (the 17
    /// blocks, then the final 1×1 conv: [`Self::BACKBONE_UNITS`] in all) and unfreezes the last
    /// `trainable` ones; the head always trains. A frozen unit gets no gradient and its
    /// BatchNorm keeps its running statistics (Burn's `Module::freeze`).
    pub fn with_trainable_tail(self, trainable: usize) -> Self {
        let frozen = Self::BACKBONE_UNITS.saturating_sub(trainable);
        let set = |m: ConvBn, freeze: bool| if freeze { m.freeze() } else { m.unfreeze() };
        Self {
            stem: set(self.stem, frozen > 0),
            blocks: self
                .blocks
                .into_iter()
                .enumerate()
                .map(|(i, b)| if i < frozen { b.freeze() } else { b.unfreeze() })
                .collect(),
            last: set(self.last, frozen == Self::BACKBONE_UNITS),
            ..self
        }
    }

    /// Backbone units counted by [`Self::with_trainable_tail`]: 17 blocks and the last conv.
    pub const BACKBONE_UNITS: usize = NUM_BLOCKS + 1;

    /// The network as plain inference layers (BatchNorm folded, NCHW), for export.
    pub fn layers(&self) -> Vec<Layer> {
        let mut layers = vec![self.stem.layer()];
        layers.extend(self.blocks.iter().map(|b| Layer::Block {
            inner: b.layers.iter().map(ConvBn::layer).collect(),
            residual: b.residual,
        }));
        layers.push(self.last.layer());
        layers.push(Layer::GlobalAvgPool);
        layers.push(super::head_layer(&self.head));
        layers
    }

    /// The fast inference form (BatchNorm folded, channels-last).
    pub fn fused(&self) -> FusedMobileNet {
        let units = self
            .blocks
            .iter()
            .map(|b| FusedUnit::new(b.layers.iter().map(ConvBn::fused).collect(), b.residual))
            .collect();
        let head_bias = match &self.head.bias {
            Some(b) => values(b.val()),
            None => vec![0.0; self.num_classes()],
        };
        FusedMobileNet::new(
            self.stem.fused(),
            units,
            self.last.fused(),
            values(self.head.weight.val()),
            head_bias,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_plan_matches_torchvision() {
        // torchvision.models.mobilenet_v2(width_mult=w): features[0] out, each block's out,
        // features[18] out.
        let outs = |p: &Plan| p.blocks.iter().map(|b| b.cout).collect::<Vec<_>>();
        let p = Plan::new(1.0);
        assert_eq!((p.stem, p.last), (32, 1280));
        assert_eq!(
            outs(&p),
            [
                16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320
            ]
        );
        let p = Plan::new(0.5);
        assert_eq!((p.stem, p.last), (16, 1280));
        assert_eq!(
            outs(&p),
            [
                8, 16, 16, 16, 16, 16, 32, 32, 32, 32, 48, 48, 48, 80, 80, 80, 160
            ]
        );
        let p = Plan::new(0.35);
        assert_eq!((p.stem, p.last), (16, 1280));
        assert_eq!(
            outs(&p),
            [
                8, 8, 8, 16, 16, 16, 24, 24, 24, 24, 32, 32, 32, 56, 56, 56, 112
            ]
        );
        let p = Plan::new(0.75);
        assert_eq!((p.stem, p.last), (24, 1280));
        assert_eq!(
            outs(&p),
            [
                16, 24, 24, 24, 24, 24, 48, 48, 48, 48, 72, 72, 72, 120, 120, 120, 240
            ]
        );
        assert_eq!(p.blocks[1].hidden(), 96);
    }
}
