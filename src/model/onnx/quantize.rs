//! Static INT8 quantization in ONNX's QDQ form, as ONNX Runtime's `quantize_static` writes it
//! with its defaults (MinMax calibration, uint8 asymmetric activations, int8 symmetric
//! per-channel weights, int32 biases): every activation passes a QuantizeLinear →
//! DequantizeLinear pair whose scale comes from the range seen on calibration images, and
//! weights are stored as int8 behind a DequantizeLinear. ONNX Runtime fuses the pairs into its
//! integer kernels (QLinearConv, QGemm, ...); any runtime that reads QDQ does the same.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::prelude::*;
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use rayon::prelude::*;

use super::graph::{Attr, Graph};
use super::proto::tensor_proto::DataType;
use crate::data::imaging::{self, DecodeLimits};
use crate::model::bundle::ModelBundle;
use crate::model::layers::{Act, Layer};

/// The (min, max) of every quantized activation, in the order the exporter meets them: the
/// network's input, then each layer's output (a block's after its residual add), up to the
/// pooled features before the classifier.
#[derive(Debug, Clone, Default)]
pub struct Ranges(pub Vec<(f32, f32)>);

/// Most calibration images used (spread evenly over the ones given), as ONNX Runtime's
/// examples use a few hundred.
pub const MAX_CALIBRATION_IMAGES: usize = 256;

/// Calibrates `bundle`'s model on image files (decoded and resized as `flora predict` does),
/// at most [`MAX_CALIBRATION_IMAGES`] of them, spread evenly. A file that cannot be read is
/// an error naming it.
pub fn calibrate_files(
    bundle: &ModelBundle,
    files: &[PathBuf],
    limits: DecodeLimits,
) -> Result<Ranges> {
    let chosen = calibration_subset(files);
    let side = bundle.meta.image_size as usize;
    let norm = &bundle.meta.normalization;
    let device = crate::util::device::inference();
    let mut batches = Vec::new();
    for chunk in chosen.chunks(32) {
        let pixels: Vec<image::RgbImage> = chunk
            .par_iter()
            .map(|p| imaging::prepare_file(p, side as u32, limits))
            .collect::<Result<_>>()?;
        let per = 3 * side * side;
        let mut x = vec![0f32; pixels.len() * per];
        for (img, out) in pixels.iter().zip(x.chunks_mut(per)) {
            norm.write_chw(img.as_raw(), side, false, out);
        }
        let n = pixels.len();
        batches.push(Tensor::<4>::from_data(
            TensorData::new(x, [n, 3, side, side]),
            &device,
        ));
    }
    calibrate(&bundle.model.layers(), batches)
}

/// The files [`calibrate_files`] uses: at most [`MAX_CALIBRATION_IMAGES`], spread evenly.
pub fn calibration_subset(files: &[PathBuf]) -> Vec<&PathBuf> {
    let step = files.len().div_ceil(MAX_CALIBRATION_IMAGES).max(1);
    files.iter().step_by(step).collect()
}

/// Runs `layers` over `batches` (normalised NCHW) with Burn's ops and records each
/// activation's range.
pub fn calibrate(layers: &[Layer], batches: impl IntoIterator<Item = Tensor<4>>) -> Result<Ranges> {
    let mut ranges: Vec<(f32, f32)> = Vec::new();
    let mut seen = 0;
    for x in batches {
        let mut i = 0;
        let mut note = |t: &Tensor<4>| {
            let lo = t.clone().min().into_scalar::<f32>();
            let hi = t.clone().max().into_scalar::<f32>();
            if i == ranges.len() {
                ranges.push((lo, hi));
            } else {
                let r = &mut ranges[i];
                *r = (r.0.min(lo), r.1.max(hi));
            }
            i += 1;
        };
        note(&x);
        run(layers, x, &mut note);
        seen += 1;
    }
    if seen == 0 {
        bail!("no calibration images: INT8 needs images of the training split");
    }
    Ok(Ranges(ranges))
}

/// The forward pass of `layers` on `x`, calling `note` on each quantized activation.
fn run(layers: &[Layer], mut x: Tensor<4>, note: &mut impl FnMut(&Tensor<4>)) -> Tensor<4> {
    for l in layers {
        x = match l {
            Layer::Conv {
                weight,
                bias,
                cin,
                cout,
                k,
                stride,
                groups,
                act,
            } => {
                let device = x.device();
                let w = Tensor::<4>::from_data(
                    TensorData::new(weight.clone(), [*cout, cin / groups, *k, *k]),
                    &device,
                );
                let b = Tensor::<1>::from_data(TensorData::new(bias.clone(), [*cout]), &device);
                let p = k / 2;
                let y = conv2d(
                    x,
                    w,
                    Some(b),
                    ConvOptions::new([*stride; 2], [p; 2], [1, 1], *groups),
                );
                let y = match act {
                    Act::None => y,
                    Act::Relu => y.clamp_min(0.0),
                    Act::Relu6 => y.clamp(0.0, 6.0),
                };
                note(&y);
                y
            }
            Layer::MaxPool2 => {
                let y = max_pool2d(x, MaxPoolOptions::new([2, 2]));
                note(&y);
                y
            }
            Layer::Block { inner, residual } => {
                let y = run(inner, x.clone(), note);
                if *residual {
                    let y = x + y;
                    note(&y);
                    y
                } else {
                    y
                }
            }
            Layer::GlobalAvgPool => {
                let y = x.mean_dim(2).mean_dim(3);
                note(&y);
                y
            }
            Layer::Linear { .. } => return x,
        };
    }
    x
}

/// uint8 asymmetric parameters for a range (widened to hold 0, as ONNX Runtime does).
pub fn uint8_params((lo, hi): (f32, f32)) -> (f32, u8) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    let zero = (-lo / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zero)
}

/// Inserts QuantizeLinear → DequantizeLinear on `x` for `range`; returns the dequantized value
/// and its scale.
pub fn qdq(g: &mut Graph, x: &str, range: (f32, f32)) -> (String, f32) {
    let (scale, zero) = uint8_params(range);
    let s = g.constant("act_scale", &[], &[scale]);
    let z = g.constant_raw("act_zero", &[], DataType::Uint8, vec![zero]);
    let q = g.node("QuantizeLinear", &[x, &s, &z], &[]);
    (g.node("DequantizeLinear", &[&q, &s, &z], &[]), scale)
}

/// int8 symmetric per-channel weights behind a DequantizeLinear (channel axis `axis` of
/// `dims`); returns the dequantized value and the per-channel scales.
pub fn int8_weights(g: &mut Graph, w: &[f32], dims: &[usize], axis: usize) -> (String, Vec<f32>) {
    let channels = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let channel = |i: usize| (i / inner) % channels;
    let mut max = vec![0f32; channels];
    for (i, v) in w.iter().enumerate() {
        max[channel(i)] = max[channel(i)].max(v.abs());
    }
    let scales: Vec<f32> = max
        .iter()
        .map(|m| if *m > 0.0 { m / 127.0 } else { 1.0 })
        .collect();
    let q: Vec<u8> = w
        .iter()
        .enumerate()
        .map(|(i, v)| (v / scales[channel(i)]).round().clamp(-127.0, 127.0) as i8 as u8)
        .collect();
    let data = g.constant_raw("w_int8", dims, DataType::Int8, q);
    let s = g.constant("w_scale", &[channels], &scales);
    let z = g.constant_raw("w_zero", &[channels], DataType::Int8, vec![0; channels]);
    let dq = g.node(
        "DequantizeLinear",
        &[&data, &s, &z],
        &[("axis", Attr::Int(axis as i64))],
    );
    (dq, scales)
}

/// A bias as int32 at scale `input_scale × weight_scale[c]` behind a DequantizeLinear.
pub fn int32_bias(g: &mut Graph, bias: &[f32], input_scale: f32, weight_scales: &[f32]) -> String {
    let scales: Vec<f32> = weight_scales.iter().map(|w| input_scale * w).collect();
    let raw: Vec<u8> = bias
        .iter()
        .zip(&scales)
        .flat_map(|(b, s)| {
            ((b / s).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32).to_le_bytes()
        })
        .collect();
    let data = g.constant_raw("b_int32", &[bias.len()], DataType::Int32, raw);
    let s = g.constant("b_scale", &[bias.len()], &scales);
    g.node("DequantizeLinear", &[&data, &s], &[("axis", Attr::Int(0))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint8_parameters_hold_zero_exactly_and_span_the_range() {
        let (s, z) = uint8_params((-1.0, 3.0));
        assert!((s - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(z, 64);
        // A ReLU output: zero point 0, the whole range above it.
        assert_eq!(uint8_params((0.0, 6.0)), (6.0 / 255.0, 0));
        // Positive-only ranges still hold 0; an empty range gets scale 1.
        assert_eq!(uint8_params((2.0, 2.0)).1, 0);
        assert_eq!(uint8_params((0.0, 0.0)), (1.0, 0));
    }
}
