//! Model architectures behind one [`Classifier`] type: the reference CNN and MobileNetV2.
//!
//! Model code never names a backend: the device (see [`crate::util::device`]) decides where it runs.

pub mod bundle;
pub mod cnn;
pub mod fused;
mod fused_conv;
pub mod fused_kernels;
pub mod fused_mobilenet;
mod fused_unit;
pub mod infer;
pub mod layers;
pub mod mobilenet;
pub mod onnx;
pub mod pretrained;
pub mod unknown;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

pub use cnn::Cnn;
pub use fused::FusedCnn;
pub use fused_mobilenet::FusedMobileNet;
pub use mobilenet::MobileNetV2;

use crate::data::imaging::Normalization;

/// One class with its probability: what a model answers, best first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Scored {
    pub class: String,
    pub confidence: f32,
}

/// The architectures flora can train.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// 4 × [conv3x3 → BatchNorm → ReLU → MaxPool2] (32/64/128/256), GAP, dropout, linear.
    /// Default dropout 0.3 (the PyTorch reference's).
    Cnn,
    /// MobileNetV2 in torchvision's layout at a width multiplier (`train.width`), from scratch
    /// or from ImageNet weights (`train.pretrained`). Default dropout 0.2 (torchvision's).
    MobilenetV2,
}

impl Arch {
    /// The name used in the config, the bundle and the run parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Cnn => "cnn",
            Arch::MobilenetV2 => "mobilenet_v2",
        }
    }

    /// The smallest input side the architecture can take: the `cnn`'s four 2×2 pools leave
    /// nothing below 16 pixels.
    pub fn min_image_size(self) -> u32 {
        match self {
            Arch::Cnn => 16,
            Arch::MobilenetV2 => 8,
        }
    }

    /// The dropout before the classifier when `train.dropout` is not set.
    pub fn default_dropout(self) -> f64 {
        match self {
            Arch::Cnn => 0.3,
            Arch::MobilenetV2 => 0.2,
        }
    }
}

/// The fast inference form of a [`Classifier`] (BatchNorm folded, channels-last).
#[derive(Debug, Clone)]
pub enum Fused {
    Cnn(FusedCnn),
    MobileNetV2(FusedMobileNet),
}

impl Fused {
    /// Class logits of each image (RGB8, `side`×`side`, row-major), normalised with `norm`.
    /// Images run in parallel; a lone image splits its work across the threads instead.
    pub fn logits(&self, images: &[&[u8]], norm: &Normalization, side: usize) -> Vec<Vec<f32>> {
        match self {
            Fused::Cnn(m) => m.logits(images, norm, side),
            Fused::MobileNetV2(m) => m.logits(images, norm, side),
        }
    }
}

/// An image classifier: NCHW float images in, class logits out.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // one model per process: boxing buys nothing
pub enum Classifier {
    Cnn(Cnn),
    MobileNetV2(MobileNetV2),
}

impl Classifier {
    /// A freshly initialised model of `arch` for `num_classes` classes (MobileNetV2 at width 1).
    pub fn new(arch: Arch, num_classes: usize, dropout: f64, device: &Device) -> Self {
        Self::with_width(arch, 1.0, num_classes, dropout, device)
    }

    /// A freshly initialised model of `arch`; `width` is MobileNetV2's width multiplier (the
    /// `cnn` has none and ignores it).
    pub fn with_width(
        arch: Arch,
        width: f64,
        num_classes: usize,
        dropout: f64,
        device: &Device,
    ) -> Self {
        match arch {
            Arch::Cnn => Classifier::Cnn(Cnn::new(num_classes, dropout, device)),
            Arch::MobilenetV2 => {
                Classifier::MobileNetV2(MobileNetV2::new(width, num_classes, dropout, device))
            }
        }
    }

    /// The fused inference form of the model.
    pub fn fused(&self) -> Option<Fused> {
        Some(match self {
            Classifier::Cnn(m) => Fused::Cnn(m.fused()),
            Classifier::MobileNetV2(m) => Fused::MobileNetV2(m.fused()),
        })
    }

    /// The model as plain inference layers (BatchNorm folded, NCHW), for export.
    pub fn layers(&self) -> Vec<layers::Layer> {
        match self {
            Classifier::Cnn(m) => m.layers(),
            Classifier::MobileNetV2(m) => m.layers(),
        }
    }

    /// Initialises every parameter not yet initialised, now, in the order a first forward pass
    /// does (Burn initialises lazily, on first use, drawing from the device's random stream).
    pub fn initialized(self) -> Self {
        struct Touch;
        impl burn::module::ModuleVisitor for Touch {
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
                let _ = param.val();
            }
        }
        self.visit(&mut Touch);
        self
    }

    /// Logits `[batch, classes]` for images `[batch, 3, size, size]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_with(images, crate::ops::TrainEngine::from_env())
    }

    /// [`Self::forward`] with the training engine given (benchmarks compare the two).
    /// Off the CPU, Burn's ops run whatever the engine: the fused kernels are CPU-only.
    pub fn forward_with(&self, images: Tensor<4>, engine: crate::ops::TrainEngine) -> Tensor<2> {
        let engine = match crate::ops::fused_supported(&images.device()) {
            true => engine,
            false => crate::ops::TrainEngine::Burn,
        };
        match self {
            Classifier::Cnn(m) => m.forward_with(images, engine),
            Classifier::MobileNetV2(m) => m.forward_with(images, engine),
        }
    }
}

/// A tensor's values in row-major order.
pub(crate) fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec()
        .expect("float weights convert to f32")
}

/// The linear classifier as a plain layer (weight `[cin][classes]`, as Burn stores it).
pub(crate) fn head_layer(head: &burn::nn::Linear) -> layers::Layer {
    let classes = head.weight.dims()[1];
    layers::Layer::Linear {
        weight: values(head.weight.val()),
        bias: match &head.bias {
            Some(b) => values(b.val()),
            None => vec![0.0; classes],
        },
    }
}

/// The trained weights of a conv + BatchNorm pair, read out for folding into a fused form.
pub(crate) fn conv_bn_weights(
    conv: &burn::nn::conv::Conv2d,
    norm: &burn::nn::BatchNorm,
) -> fused::ConvBnWeights {
    fused::ConvBnWeights {
        conv_weight: values(conv.weight.val()),
        conv_bias: conv.bias.as_ref().map(|b| values(b.val())),
        gamma: values(norm.gamma.val()),
        beta: values(norm.beta.val()),
        running_mean: values(norm.running_mean.value()),
        running_var: values(norm.running_var.value()),
        epsilon: norm.epsilon,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::device;

    /// The values of the trainable parameters, in visiting order.
    fn trainable(model: &Classifier) -> Vec<Vec<f32>> {
        struct Collect(Vec<Vec<f32>>);
        impl burn::module::ModuleVisitor for Collect {
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
                let t = param.val();
                if t.is_require_grad() {
                    self.0.push(values(t));
                }
            }
        }
        let mut c = Collect(Vec::new());
        model.visit(&mut c);
        c.0
    }

    /// A model initialised by [`Classifier::initialized`] holds the weights that a first
    /// training pass initialises lazily (with dropout 0, which draws nothing), from the same
    /// seed: what a GPU run (initialised on the CPU, then moved) relies on.
    /// Runs in a child process of its own: the Flex device's random stream is process-wide,
    /// and tests running beside it in this process draw from it between a seed and an init.
    #[test]
    fn initialized_matches_a_first_training_pass() {
        const CHILD: &str = "FLORA_TEST_INIT_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let name = "model::tests::initialized_matches_a_first_training_pass";
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([name, "--exact", "--test-threads=1"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{text}");
            assert!(text.contains("1 passed"), "{text}");
            return;
        }
        let device = device::cpu_training();
        for (arch, width, size) in [(Arch::Cnn, 1.0, 32), (Arch::MobilenetV2, 0.35, 32)] {
            device.seed(11);
            let eager = Classifier::with_width(arch, width, 3, 0.0, &device).initialized();
            device.seed(11);
            let lazy = Classifier::with_width(arch, width, 3, 0.0, &device);
            let x = Tensor::<4>::ones([2, 3, size, size], &device);
            let _ = lazy.forward(x);
            let (a, b) = (trainable(&eager), trainable(&lazy));
            assert!(!a.is_empty());
            assert_eq!(a, b, "{}", arch.as_str());
        }
    }
}
