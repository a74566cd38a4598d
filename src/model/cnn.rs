//! The reference CNN, kept exactly as the PyTorch reference defines it (flora is benchmarked on it).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d, Relu,
};
use burn::prelude::*;

use super::fused::{FusedBlock, FusedCnn};
use super::layers::{Act, Layer};
use super::{conv_bn_weights, head_layer, values};
use crate::ops::{self, BlockParams, TrainEngine};

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
        let w = conv_bn_weights(&self.conv, &self.norm);
        FusedBlock::fold(cin, cout, &w)
    }

    /// The folded conv (ReLU after it) and the pool, for export.
    fn layers(&self, cin: usize, cout: usize) -> [Layer; 2] {
        let w = conv_bn_weights(&self.conv, &self.norm);
        [
            Layer::conv(&w, [cin, cout], (3, 1, 1), Act::Relu),
            Layer::MaxPool2,
        ]
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.pool
            .forward(self.relu.forward(self.norm.forward(self.conv.forward(x))))
    }

    /// The training forward pass on a channels-last batch through [`ops::conv_block_train`]
    /// (batch statistics), updating the running statistics as [`BatchNorm`] does.
    fn forward_train_nhwc(&self, x: Tensor<4>, engine: TrainEngine) -> Tensor<4> {
        let device = x.device();
        // The weight first, then the bias: parameters are initialised lazily, on first use, in
        // the order Burn's Conv2d uses them, so both engines start from the same weights.
        let weight = self.conv.weight.val();
        let bias = match &self.conv.bias {
            Some(b) => b.val(),
            None => Tensor::zeros(self.norm.gamma.val().dims(), &device),
        };
        let params = BlockParams {
            weight,
            bias,
            gamma: self.norm.gamma.val(),
            beta: self.norm.beta.val(),
            epsilon: self.norm.epsilon,
        };
        let r = ops::conv_block_train(x, params, engine);
        let m = self.norm.momentum;
        let update = |state: &burn::module::RunningState<Tensor<1>>, batch: Tensor<1>| {
            let running = state
                .value_sync()
                .to_device(&device)
                .mul_scalar(1.0 - m)
                .add(batch.detach().mul_scalar(m));
            state.update(running.detach());
        };
        update(&self.norm.running_mean, r.mean);
        update(&self.norm.running_var, r.var);
        r.output
    }

    /// Whether a forward pass on `device` trains this block (as [`BatchNorm`] decides).
    fn trains_on(&self, device: &Device) -> bool {
        device.is_autodiff() && self.norm.training.is_enabled()
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

    /// Logits `[batch, classes]` for NCHW images, with the training engine chosen by
    /// [`TrainEngine::from_env`].
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_with(x, TrainEngine::from_env())
    }

    /// Logits `[batch, classes]` for NCHW images. A training pass (autodiff device) with
    /// [`TrainEngine::Fused`] runs the blocks channels-last through the fused training op;
    /// otherwise Burn's modules run as declared.
    pub fn forward_with(&self, mut x: Tensor<4>, engine: TrainEngine) -> Tensor<2> {
        let device = x.device();
        let fused =
            engine == TrainEngine::Fused && self.blocks.iter().all(|b| b.trains_on(&device));
        let x: Tensor<2> = if fused {
            x = x.permute([0, 2, 3, 1]);
            for b in &self.blocks {
                x = b.forward_train_nhwc(x, engine);
            }
            let [n, _, _, c] = x.dims();
            x.mean_dim(1).mean_dim(2).reshape([n, c])
        } else {
            for b in &self.blocks {
                x = b.forward(x);
            }
            self.pool.forward(x).flatten(1, 3)
        };
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

    /// The network as plain inference layers (BatchNorm folded, NCHW), for export.
    pub fn layers(&self) -> Vec<Layer> {
        let mut cin = 3;
        let mut layers = Vec::new();
        for (b, cout) in self.blocks.iter().zip(WIDTHS) {
            layers.extend(b.layers(cin, cout));
            cin = cout;
        }
        layers.push(Layer::GlobalAvgPool);
        layers.push(head_layer(&self.head));
        layers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Gradients};

    fn close<const D: usize>(what: &str, got: Tensor<D>, want: Tensor<D>) {
        let got = got.into_data().try_to_vec::<f32>().unwrap();
        let want = want.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(got.len(), want.len(), "{what}");
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4 + 1e-3 * w.abs(), "{what}: {g} vs {w}");
        }
    }

    /// The whole network trains the same through the fused op and through Burn's modules:
    /// logits, every parameter's gradient and the updated running statistics.
    #[test]
    fn fused_training_forward_matches_burns_modules() {
        let device = Device::flex().autodiff();
        for (n, side) in [(2, 16), (1, 28), (3, 20)] {
            device.seed(9);
            let x =
                Tensor::<4>::random([n, 3, side, side], Distribution::Normal(0.0, 1.0), &device);
            let r = Tensor::<2>::random([n, 5], Distribution::Normal(0.0, 1.0), &device);
            // Two copies of one model (parameters are initialised lazily: copy the record).
            let fused = Cnn::new(5, 0.0, &device);
            let burn = Cnn::new(5, 0.0, &device).load_record(fused.clone().into_record());
            let lf = fused.forward_with(x.clone(), TrainEngine::Fused);
            let lb = burn.forward_with(x, TrainEngine::Burn);
            close("logits", lf.clone(), lb.clone());
            let gf = (lf * r.clone()).sum().backward();
            let gb = (lb * r).sum().backward();
            for (i, (bf, bb)) in fused.blocks.iter().zip(&burn.blocks).enumerate() {
                let what = |p: &str| format!("{n}×{side}px block {i} {p}");
                let g4 = |m: &ConvBlock, g: &Gradients| m.conv.weight.val().grad(g).unwrap();
                close(&what("conv weight"), g4(bf, &gf), g4(bb, &gb));
                let g1 = |t: Tensor<1>, g: &Gradients| t.grad(g).unwrap();
                let bias = |m: &ConvBlock| m.conv.bias.as_ref().unwrap().val();
                close(&what("conv bias"), g1(bias(bf), &gf), g1(bias(bb), &gb));
                close(
                    &what("gamma"),
                    g1(bf.norm.gamma.val(), &gf),
                    g1(bb.norm.gamma.val(), &gb),
                );
                close(
                    &what("beta"),
                    g1(bf.norm.beta.val(), &gf),
                    g1(bb.norm.beta.val(), &gb),
                );
                let rm = |m: &ConvBlock| m.norm.running_mean.value();
                let rv = |m: &ConvBlock| m.norm.running_var.value();
                close(&what("running mean"), rm(bf), rm(bb));
                close(&what("running var"), rv(bf), rv(bb));
            }
            let hw = |m: &Cnn, g: &Gradients| m.head.weight.val().grad(g).unwrap();
            close("head weight", hw(&fused, &gf), hw(&burn, &gb));
        }
    }
}
