//! The library's enums as clap parses them (`--arch`, `--sampler`, `--to`, `--slot`): the
//! library takes its own types and does not depend on clap.

use clap::ValueEnum;

use flora::data::class_weights::Sampler;
use flora::model::Arch;
use flora::track::slots::Slot;

/// `--arch`: [`Arch`] as clap parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArchArg {
    /// 4 × [conv3x3 → BatchNorm → ReLU → MaxPool2] (32/64/128/256), GAP, dropout, linear.
    /// Default dropout 0.3 (the PyTorch reference's).
    Cnn,
    /// MobileNetV2 in torchvision's layout at a width multiplier (`train.width`), from scratch
    /// or from ImageNet weights (`train.pretrained`). Default dropout 0.2 (torchvision's).
    #[value(name = "mobilenet_v2")]
    MobilenetV2,
}

impl From<ArchArg> for Arch {
    fn from(a: ArchArg) -> Arch {
        match a {
            ArchArg::Cnn => Arch::Cnn,
            ArchArg::MobilenetV2 => Arch::MobilenetV2,
        }
    }
}

/// `--sampler`: [`Sampler`] as clap parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SamplerArg {
    /// Every training image once per epoch, shuffled.
    Shuffle,
    /// As many draws as training images, each from a class picked uniformly (with
    /// replacement): small classes are seen as often as large ones.
    Balanced,
}

impl From<SamplerArg> for Sampler {
    fn from(s: SamplerArg) -> Sampler {
        match s {
            SamplerArg::Shuffle => Sampler::Shuffle,
            SamplerArg::Balanced => Sampler::Balanced,
        }
    }
}

/// `--to`, `--live`: a [`Slot`] as clap parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlotArg {
    Blue,
    Green,
}

impl From<SlotArg> for Slot {
    fn from(s: SlotArg) -> Slot {
        match s {
            SlotArg::Blue => Slot::Blue,
            SlotArg::Green => Slot::Green,
        }
    }
}

/// `--slot`: a slot or the live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlotChoiceArg {
    Blue,
    Green,
    Live,
}

/// `flora export --format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormatArg {
    /// ONNX, opset 17, dynamic batch axis.
    Onnx,
}
