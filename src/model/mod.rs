//! Model architectures behind one [`Classifier`] type: the reference CNN and MobileNetV2.
//!
//! Model code never names a backend: the device (see [`crate::device`]) decides where it runs.

pub mod cnn;
pub mod fused;
pub mod mobilenet;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

pub use cnn::Cnn;
pub use fused::FusedCnn;
pub use mobilenet::MobileNetV2;

/// The architectures flora can train.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// 4 × [conv3x3 → BatchNorm → ReLU → MaxPool2] (32/64/128/256), GAP, dropout, linear.
    Cnn,
    /// MobileNetV2 (width 1.0), trained from scratch.
    #[value(name = "mobilenet_v2")]
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
}

/// An image classifier: NCHW float images in, class logits out.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // one model per process: boxing buys nothing
pub enum Classifier {
    Cnn(Cnn),
    MobileNetV2(MobileNetV2),
}

impl Classifier {
    /// A freshly initialised model of `arch` for `num_classes` classes.
    pub fn new(arch: Arch, num_classes: usize, dropout: f64, device: &Device) -> Self {
        match arch {
            Arch::Cnn => Classifier::Cnn(Cnn::new(num_classes, dropout, device)),
            Arch::MobilenetV2 => {
                Classifier::MobileNetV2(MobileNetV2::new(num_classes, dropout, device))
            }
        }
    }

    /// The fused inference form ([`FusedCnn`]) of a `cnn`; `None` for other architectures.
    pub fn fused(&self) -> Option<FusedCnn> {
        match self {
            Classifier::Cnn(m) => Some(m.fused()),
            Classifier::MobileNetV2(_) => None,
        }
    }

    /// Logits `[batch, classes]` for images `[batch, 3, size, size]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Classifier::Cnn(m) => m.forward(images),
            Classifier::MobileNetV2(m) => m.forward(images),
        }
    }
}
