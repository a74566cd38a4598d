//! A trained model as a plain list of inference layers (BatchNorm folded, NCHW, PyTorch's
//! weight layouts): what [`crate::model::onnx`] writes out, independent of Burn's modules.

/// The activation after a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

/// One inference layer on an NCHW batch.
#[derive(Debug, Clone)]
pub enum Layer {
    /// A `k`×`k` convolution (padding `k / 2`) with its BatchNorm folded in, then `act`.
    Conv {
        /// `[cout][cin / groups][k][k]` (OIHW).
        weight: Vec<f32>,
        bias: Vec<f32>,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        groups: usize,
        act: Act,
    },
    /// 2×2 max pooling, stride 2 (a trailing odd row or column is dropped).
    MaxPool2,
    /// `x + inner(x)`: an inverted residual block (or, with `residual` false, just `inner`).
    Block { inner: Vec<Layer>, residual: bool },
    /// Mean over each channel's pixels: `[n, c, h, w]` to `[n, c]`.
    GlobalAvgPool,
    /// `x · weight + bias`, weight `[cin][classes]`.
    Linear { weight: Vec<f32>, bias: Vec<f32> },
}

impl Layer {
    /// A folded conv + BatchNorm pair, as the fused forms fold it.
    pub(crate) fn conv(
        w: &super::fused::ConvBnWeights,
        [cin, cout]: [usize; 2],
        (k, stride, groups): (usize, usize, usize),
        act: Act,
    ) -> Self {
        let (weight, bias) = w.fold();
        assert_eq!(
            weight.len(),
            cout * cin / groups * k * k,
            "conv weight shape"
        );
        Layer::Conv {
            weight,
            bias,
            cin,
            cout,
            k,
            stride,
            groups,
            act,
        }
    }

    /// Parameters in this layer (weights and biases).
    pub fn parameters(&self) -> usize {
        match self {
            Layer::Conv { weight, bias, .. } | Layer::Linear { weight, bias } => {
                weight.len() + bias.len()
            }
            Layer::Block { inner, .. } => inner.iter().map(Layer::parameters).sum(),
            Layer::MaxPool2 | Layer::GlobalAvgPool => 0,
        }
    }
}

/// Direct (slow, obviously correct) evaluation of a layer list on one CHW image, for tests.
#[cfg(test)]
pub(crate) fn reference_logits(layers: &[Layer], x: Vec<f32>, side: usize) -> Vec<f32> {
    fn run(
        layers: &[Layer],
        mut x: Vec<f32>,
        mut c: usize,
        mut h: usize,
        mut w: usize,
    ) -> (Vec<f32>, usize, usize, usize) {
        for l in layers {
            match l {
                Layer::Conv {
                    weight,
                    bias,
                    cout,
                    k,
                    stride,
                    groups,
                    act,
                    ..
                } => {
                    let (oh, ow) = (
                        (h + 2 * (k / 2) - k) / stride + 1,
                        (w + 2 * (k / 2) - k) / stride + 1,
                    );
                    let (per_in, per_out) = (c / groups, cout / groups);
                    let mut y = vec![0f32; cout * oh * ow];
                    for o in 0..*cout {
                        let g = o / per_out;
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let mut acc = bias[o] as f64;
                                for ci in 0..per_in {
                                    for ky in 0..*k {
                                        for kx in 0..*k {
                                            let iy = (oy * stride + ky) as isize - (k / 2) as isize;
                                            let ix = (ox * stride + kx) as isize - (k / 2) as isize;
                                            if iy < 0
                                                || ix < 0
                                                || iy >= h as isize
                                                || ix >= w as isize
                                            {
                                                continue;
                                            }
                                            let v = x[((g * per_in + ci) * h + iy as usize) * w
                                                + ix as usize];
                                            acc += (weight[((o * per_in + ci) * k + ky) * k + kx]
                                                * v)
                                                as f64;
                                        }
                                    }
                                }
                                let v = acc as f32;
                                y[(o * oh + oy) * ow + ox] = match act {
                                    Act::None => v,
                                    Act::Relu => v.max(0.0),
                                    Act::Relu6 => v.clamp(0.0, 6.0),
                                };
                            }
                        }
                    }
                    (x, c, h, w) = (y, *cout, oh, ow);
                }
                Layer::MaxPool2 => {
                    let (oh, ow) = (h / 2, w / 2);
                    let mut y = vec![0f32; c * oh * ow];
                    for ch in 0..c {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let at = |dy: usize, dx: usize| {
                                    x[(ch * h + 2 * oy + dy) * w + 2 * ox + dx]
                                };
                                y[(ch * oh + oy) * ow + ox] =
                                    at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
                            }
                        }
                    }
                    (x, h, w) = (y, oh, ow);
                }
                Layer::Block { inner, residual } => {
                    let (y, yc, yh, yw) = run(inner, x.clone(), c, h, w);
                    x = if *residual {
                        x.iter().zip(&y).map(|(a, b)| a + b).collect()
                    } else {
                        y
                    };
                    (c, h, w) = (yc, yh, yw);
                }
                Layer::GlobalAvgPool => {
                    x = x
                        .chunks(h * w)
                        .map(|p| p.iter().sum::<f32>() / (h * w) as f32)
                        .collect();
                    (h, w) = (1, 1);
                }
                Layer::Linear { weight, bias } => {
                    let classes = bias.len();
                    let mut y = bias.clone();
                    for (i, v) in x.iter().enumerate() {
                        for (j, o) in y.iter_mut().enumerate() {
                            *o += v * weight[i * classes + j];
                        }
                    }
                    (x, c) = (y, classes);
                }
            }
        }
        (x, c, h, w)
    }
    run(layers, x, 3, side, side).0
}

#[cfg(test)]
mod tests {
    use burn::prelude::*;

    use super::*;
    use crate::data::imaging::Normalization;
    use crate::model::{Arch, Classifier};

    /// The layer list computes what the fused forward pass computes (which tests of its own
    /// tie to Burn's modules): the cnn, and MobileNetV2 at two widths with an odd side.
    #[test]
    fn layers_give_the_fused_logits() {
        let device = Device::flex();
        for (arch, width, side) in [
            (Arch::Cnn, 1.0, 20),
            (Arch::MobilenetV2, 0.35, 17),
            (Arch::MobilenetV2, 0.5, 12),
        ] {
            device.seed(3);
            let model = Classifier::with_width(arch, width, 4, 0.0, &device);
            let norm = Normalization::default();
            let pixels: Vec<u8> = (0..3 * side * side)
                .map(|i| (i * 7919 % 256) as u8)
                .collect();
            let want = model
                .fused()
                .unwrap()
                .logits(&[&pixels], &norm, side)
                .remove(0);
            let mut chw = vec![0f32; pixels.len()];
            norm.write_chw(&pixels, side, false, &mut chw);
            let got = reference_logits(&model.layers(), chw, side);
            assert_eq!(got.len(), 4);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() < 1e-4 + 1e-4 * w.abs(),
                    "{arch:?} {width}: {got:?} vs {want:?}"
                );
            }
        }
    }
}
