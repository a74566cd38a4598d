//! Fused training operations, written as Burn backend extensions: Burn keeps the autodiff graph,
//! the optimizer, the records and the module tree; these replace the chains of generic ops in
//! the hot part of the train step.
//!
//! [`conv_block_train`] is the reference CNN's block (conv3x3 → BatchNorm → ReLU → MaxPool2) in
//! training mode, channels-last. On a Flex device (with or without autodiff) it runs the fused
//! kernels of [`conv_block`]; anywhere else, or with [`TrainEngine::Burn`], it runs Burn's own ops
//! ([`conv_block_reference`]), so the same model code works on every backend.
//!
//! [`mobile`] holds MobileNetV2's ops (depthwise 3×3, pointwise, BatchNorm + ReLU6, NCHW) in the
//! same way.

mod bn_act;
pub mod conv_block;
mod depthwise;
pub mod extension;
pub mod heap;
mod matmul;
pub mod mobile;
pub mod mobile_ext;
pub(crate) mod patches;
pub mod phases;
mod planes;
mod pointwise;
pub mod simd;

use burn::backend::Dispatch;
use burn::tensor::activation::relu;
use burn::tensor::module::{batch_norm_train, conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{DType, Device, Tensor};

use extension::ConvBlockBackend;
pub use mobile::{
    BnActOutput, bn_act_reference, bn_act_train, depthwise3x3_reference, depthwise3x3_train,
    pointwise_reference, pointwise_train,
};

/// Which implementation the training forward pass uses for the ops of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainEngine {
    /// The fused kernels where the backend supports them (Flex), Burn's ops elsewhere. The
    /// default.
    Fused,
    /// Burn's generic ops everywhere (to compare the two).
    Burn,
}

impl TrainEngine {
    /// `FLORA_TRAIN_ENGINE=burn` selects [`TrainEngine::Burn`]; anything else, or nothing,
    /// [`TrainEngine::Fused`].
    pub fn from_env() -> Self {
        match std::env::var("FLORA_TRAIN_ENGINE").as_deref() {
            Ok("burn") => TrainEngine::Burn,
            _ => TrainEngine::Fused,
        }
    }
}

/// Whether the fused kernels run on `device` (the Flex CPU backend, with or without autodiff).
pub fn fused_supported(device: &Device) -> bool {
    crate::util::device::on_cpu(device)
}

/// The result of [`conv_block_train`].
pub struct BlockOutput {
    /// `[n, h/2, w/2, cout]`, channels-last.
    pub output: Tensor<4>,
    /// Batch mean of the conv output per channel (detached).
    pub mean: Tensor<1>,
    /// Biased batch variance of the conv output per channel (detached).
    pub var: Tensor<1>,
}

/// The parameters of one conv block: conv `weight` `[cout, cin, 3, 3]` and `bias`, BatchNorm
/// `gamma`, `beta` and `epsilon`.
#[derive(Clone)]
pub struct BlockParams {
    pub weight: Tensor<4>,
    pub bias: Tensor<1>,
    pub gamma: Tensor<1>,
    pub beta: Tensor<1>,
    pub epsilon: f64,
}

/// conv3x3 (padding 1) → BatchNorm with batch statistics → ReLU → MaxPool2 on a channels-last
/// batch `x` (`[n, h, w, cin]`), differentiable in `x` and every parameter.
pub fn conv_block_train(x: Tensor<4>, p: BlockParams, engine: TrainEngine) -> BlockOutput {
    let fused = engine == TrainEngine::Fused
        && fused_supported(&x.device())
        && x.dtype() == DType::F32
        && p.weight.dtype() == DType::F32;
    if !fused {
        return conv_block_reference(x, p);
    }
    let (out, mean, var) = <Dispatch as ConvBlockBackend>::conv_block_train(
        x.into_dispatch(),
        p.weight.into_dispatch(),
        p.bias.into_dispatch(),
        p.gamma.into_dispatch(),
        p.beta.into_dispatch(),
        p.epsilon,
    );
    BlockOutput {
        output: Tensor::from_dispatch(out),
        mean: Tensor::from_dispatch(mean),
        var: Tensor::from_dispatch(var),
    }
}

/// [`conv_block_train`] composed of Burn's own ops (NCHW inside): the generic fallback, and the
/// reference the fused op is tested against.
pub fn conv_block_reference(x: Tensor<4>, p: BlockParams) -> BlockOutput {
    let x = x.permute([0, 3, 1, 2]);
    let conv = conv2d(
        x,
        p.weight,
        Some(p.bias),
        ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
    );
    let bn = batch_norm_train(conv, p.gamma, p.beta, p.epsilon);
    let out = max_pool2d(relu(bn.output), MaxPoolOptions::new([2, 2]));
    BlockOutput {
        output: out.permute([0, 2, 3, 1]),
        mean: bn.mean,
        var: bn.variance,
    }
}
