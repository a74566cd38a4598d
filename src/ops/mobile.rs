//! MobileNetV2's fused training ops on Burn tensors (NCHW): each runs the kernels of
//! [`super::mobile_ext`] on a Flex device (with or without autodiff) and Burn's own ops
//! anywhere else or with [`TrainEngine::Burn`]; the `_reference` forms are those Burn
//! compositions, the fallback and what the fused ops are tested against.

use burn::backend::Dispatch;
use burn::tensor::activation::relu6;
use burn::tensor::module::{batch_norm_train, conv2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};

use super::mobile_ext::MobileNetBackend;
use super::{TrainEngine, fused_supported};

/// Whether the fused kernels take tensors `ts` under `engine`.
fn fused(engine: TrainEngine, ts: &[&Tensor<4>]) -> bool {
    engine == TrainEngine::Fused
        && fused_supported(&ts[0].device())
        && ts.iter().all(|t| t.dtype() == DType::F32)
}

/// Depthwise 3×3 conv (padding 1, stride 1 or 2, no bias): `x` `[n, c, h, w]`, `weight`
/// `[c, 1, 3, 3]`.
pub fn depthwise3x3_train(
    x: Tensor<4>,
    weight: Tensor<4>,
    stride: usize,
    engine: TrainEngine,
) -> Tensor<4> {
    if !fused(engine, &[&x, &weight]) {
        return depthwise3x3_reference(x, weight, stride);
    }
    Tensor::from_dispatch(<Dispatch as MobileNetBackend>::depthwise3x3(
        x.into_dispatch(),
        weight.into_dispatch(),
        stride,
    ))
}

/// [`depthwise3x3_train`] as Burn's grouped conv2d.
pub fn depthwise3x3_reference(x: Tensor<4>, weight: Tensor<4>, stride: usize) -> Tensor<4> {
    let c = weight.dims()[0];
    conv2d(
        x,
        weight,
        None,
        ConvOptions::new([stride, stride], [1, 1], [1, 1], c),
    )
}

/// 1×1 conv (no bias): `x` `[n, cin, h, w]`, `weight` `[cout, cin, 1, 1]`.
pub fn pointwise_train(x: Tensor<4>, weight: Tensor<4>, engine: TrainEngine) -> Tensor<4> {
    if !fused(engine, &[&x, &weight]) {
        return pointwise_reference(x, weight);
    }
    Tensor::from_dispatch(<Dispatch as MobileNetBackend>::pointwise(
        x.into_dispatch(),
        weight.into_dispatch(),
    ))
}

/// [`pointwise_train`] as Burn's conv2d.
pub fn pointwise_reference(x: Tensor<4>, weight: Tensor<4>) -> Tensor<4> {
    conv2d(x, weight, None, ConvOptions::new([1, 1], [0, 0], [1, 1], 1))
}

/// The result of [`bn_act_train`].
pub struct BnActOutput {
    pub output: Tensor<4>,
    /// Batch mean per channel (detached).
    pub mean: Tensor<1>,
    /// Biased batch variance per channel (detached).
    pub var: Tensor<1>,
}

/// BatchNorm with batch statistics, then ReLU6 when `relu6`, on `x` `[n, c, h, w]`.
pub fn bn_act_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    relu6: bool,
    engine: TrainEngine,
) -> BnActOutput {
    let params_f32 = gamma.dtype() == DType::F32 && beta.dtype() == DType::F32;
    if !(params_f32 && fused(engine, &[&x])) {
        return bn_act_reference(x, gamma, beta, epsilon, relu6);
    }
    let (out, mean, var) = <Dispatch as MobileNetBackend>::bn_act(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
        relu6,
    );
    BnActOutput {
        output: Tensor::from_dispatch(out),
        mean: Tensor::from_dispatch(mean),
        var: Tensor::from_dispatch(var),
    }
}

/// [`bn_act_train`] as Burn's `batch_norm_train` and `relu6`.
pub fn bn_act_reference(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    act: bool,
) -> BnActOutput {
    let bn = batch_norm_train(x, gamma, beta, epsilon);
    BnActOutput {
        output: if act { relu6(bn.output) } else { bn.output },
        mean: bn.mean,
        var: bn.variance,
    }
}
