//! An inference-only form of [`MobileNetV2`](super::MobileNetV2), built from its trained weights,
//! in the manner of [`FusedCnn`](super::FusedCnn).
//!
//! BatchNorm is folded into each convolution; activations are channels-last (HWC). A 1×1
//! (pointwise) convolution is one matrix product over pixels (the `gemm` crate), followed by
//! one pass for its bias, residual and ReLU6; a depthwise 3×3 is a direct kernel whose inner
//! loop runs over the contiguous channels; the dense 3×3 stem is one im2col copy and one
//! product. The inverted residual blocks run band by band of rows ([`super::fused_unit`]).
//! Images of a batch run in parallel; a lone image splits its rows and products across threads.
//! Training always uses the Burn model.

use super::fused::{ConvBnWeights, matmul, per_image, pool_and_classify};
use super::fused_kernels as kernels;
pub use super::fused_unit::FusedUnit;
use crate::data::imaging::Normalization;

/// Which kernel a [`FusedConv`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// 1×1, stride 1: weight `[cin][cout]`.
    Pointwise,
    /// 3×3, one group per channel: weight `[tap][channel]`.
    Depthwise,
    /// 3×3, one group: weight `[(ky * 3 + kx) * cin + c][cout]`.
    Dense,
}

/// One conv (padding `k / 2`) with its BatchNorm folded in and an optional ReLU6.
#[derive(Debug, Clone)]
pub struct FusedConv {
    pub(super) kind: Kind,
    pub(super) cin: usize,
    pub(super) cout: usize,
    pub(super) stride: usize,
    pub(super) weight: Vec<f32>,
    pub(super) bias: Vec<f32>,
    pub(super) relu6: bool,
}

/// A MobileNetV2 as plain arrays, ready for [`FusedMobileNet::logits`].
#[derive(Debug, Clone)]
pub struct FusedMobileNet {
    stem: FusedConv,
    units: Vec<FusedUnit>,
    last: FusedConv,
    /// `[cin][classes]`, row-major.
    head_weight: Vec<f32>,
    head_bias: Vec<f32>,
}

impl FusedConv {
    /// Folds `w` (a `k`×`k` conv from `cin` to `cout` channels in `groups` groups, then its
    /// BatchNorm). MobileNetV2 has three kinds: 1×1 stride 1, depthwise 3×3, dense 3×3.
    pub fn fold(
        w: &ConvBnWeights,
        [cin, cout]: [usize; 2],
        k: usize,
        stride: usize,
        groups: usize,
        relu6: bool,
    ) -> Self {
        assert_eq!(
            w.conv_weight.len(),
            cout * cin / groups * k * k,
            "conv weight shape"
        );
        let (folded, bias) = w.fold();
        let (kind, weight) = match (k, groups) {
            (1, 1) if stride == 1 => (Kind::Pointwise, transpose(&folded, cout, cin)),
            (3, g) if g == cin && g == cout => (Kind::Depthwise, transpose(&folded, cout, 9)),
            (3, 1) => {
                let mut weight = vec![0f32; 9 * cin * cout];
                for o in 0..cout {
                    for c in 0..cin {
                        for t in 0..9 {
                            weight[(t * cin + c) * cout + o] = folded[(o * cin + c) * 9 + t];
                        }
                    }
                }
                (Kind::Dense, weight)
            }
            _ => panic!("no fused kernel for a {k}x{k} conv with {groups} groups, stride {stride}"),
        };
        Self {
            kind,
            cin,
            cout,
            stride,
            weight,
            bias,
            relu6,
        }
    }

    /// Output side for an input side `n` (padding 1 for 3×3 kernels).
    pub(super) fn out_side(&self, n: usize) -> usize {
        match self.kind {
            Kind::Pointwise => n,
            Kind::Depthwise | Kind::Dense => (n - 1) / self.stride + 1,
        }
    }

    /// This conv (pointwise or dense; the blocks' depthwise convs run inside
    /// [`FusedUnit::run`]) on an `h`×`w`×`cin` input: the output and its height and width.
    /// `threads` > 1 splits the product.
    fn run(&self, x: &[f32], (h, w): (usize, usize), threads: usize) -> (Vec<f32>, usize, usize) {
        debug_assert_eq!(x.len(), h * w * self.cin);
        let (oh, ow) = (self.out_side(h), self.out_side(w));
        let m = oh * ow;
        // The product first (not read back), then bias and ReLU6 in one pass.
        let mut out = vec![0f32; m * self.cout];
        match self.kind {
            Kind::Pointwise => matmul(
                m,
                self.cout,
                self.cin,
                x,
                &self.weight,
                &mut out,
                false,
                threads,
            ),
            Kind::Dense => {
                let patches = im2col3x3(x, (h, w), self.cin, self.stride, (oh, ow));
                let k = 9 * self.cin;
                matmul(
                    m,
                    self.cout,
                    k,
                    &patches,
                    &self.weight,
                    &mut out,
                    false,
                    threads,
                );
            }
            Kind::Depthwise => panic!("a depthwise conv runs inside its block"),
        }
        kernels::epilogue(&mut out, &self.bias, None, self.relu6);
        (out, oh, ow)
    }
}

/// `[rows][cols]` → `[cols][rows]`.
fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

/// The 3×3 (padding 1) patches of an `h`×`w`×`cin` input at `stride`: one row of `9 * cin`
/// values per output position.
fn im2col3x3(
    x: &[f32],
    (h, w): (usize, usize),
    cin: usize,
    stride: usize,
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    let k = 9 * cin;
    let mut patches = vec![0f32; oh * ow * k];
    for (p, row) in patches.chunks_exact_mut(k).enumerate() {
        let (oy, ox) = (p / ow, p % ow);
        for ky in 0..3 {
            let Some(iy) = (oy * stride + ky).checked_sub(1).filter(|&y| y < h) else {
                continue;
            };
            for kx in 0..3 {
                let Some(ix) = (ox * stride + kx).checked_sub(1).filter(|&v| v < w) else {
                    continue;
                };
                let (src, dst) = ((iy * w + ix) * cin, (ky * 3 + kx) * cin);
                if cin == 3 {
                    // RGB, the stem's input: a copy of known length, not a call to memcpy.
                    row[dst..dst + 3].copy_from_slice(&x[src..src + 3]);
                } else {
                    row[dst..dst + cin].copy_from_slice(&x[src..src + cin]);
                }
            }
        }
    }
    patches
}

impl FusedMobileNet {
    /// Assembles the network from its folded parts and the linear head (`[cin][classes]`).
    pub fn new(
        stem: FusedConv,
        units: Vec<FusedUnit>,
        last: FusedConv,
        head_weight: Vec<f32>,
        head_bias: Vec<f32>,
    ) -> Self {
        assert_eq!(
            head_weight.len(),
            last.cout * head_bias.len(),
            "head weight shape"
        );
        Self {
            stem,
            units,
            last,
            head_weight,
            head_bias,
        }
    }

    /// Class logits of each image (RGB8, `side`×`side`, row-major), normalised with `norm`.
    pub fn logits(&self, images: &[&[u8]], norm: &Normalization, side: usize) -> Vec<Vec<f32>> {
        per_image(images, norm, side, |x, threads| {
            self.forward_one(&x, side, threads)
        })
    }

    /// Logits of one normalised HWC image.
    fn forward_one(&self, x: &[f32], side: usize, threads: usize) -> Vec<f32> {
        let (mut x, mut h, mut w) = self.stem.run(x, (side, side), threads);
        for unit in &self.units {
            (x, h, w) = unit.run(&x, (h, w), threads);
        }
        let (x, h, w) = self.last.run(&x, (h, w), threads);
        pool_and_classify(&x, h * w, &self.head_weight, &self.head_bias)
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::tensor::{Tensor, TensorData};

    use crate::data::imaging::Normalization;
    use crate::model::MobileNetV2;

    /// A MobileNetV2 with random weights and non-trivial BatchNorm statistics (two forward
    /// passes in training mode on random input).
    fn trained_like(width: f64, classes: usize, side: usize) -> MobileNetV2 {
        let device = crate::util::device::training();
        device.seed(7);
        let model = MobileNetV2::new(width, classes, 0.2, &device);
        for seed in 0..2u32 {
            let x: Vec<f32> = (0..4 * 3 * side * side)
                .map(|i| {
                    ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32
                        / 500.0
                        - 1.0
                })
                .collect();
            let _ = model.forward(Tensor::<4>::from_data(
                TensorData::new(x, [4, 3, side, side]),
                &device,
            ));
        }
        model.valid()
    }

    #[test]
    fn fused_mobilenet_matches_burn_forward() {
        let norm = Normalization::default();
        for (width, side) in [(0.35, 32), (0.5, 37), (1.0, 33), (0.75, 96), (0.35, 224)] {
            let model = trained_like(width, 5, side.min(64));
            let fused = model.fused();
            let images: Vec<Vec<u8>> = (0..2)
                .map(|k| {
                    (0..3 * side * side)
                        .map(|i| ((i * 37 + k * 101) % 256) as u8)
                        .collect()
                })
                .collect();
            let refs: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
            let mut input = vec![0f32; 2 * 3 * side * side];
            for (img, out) in images.iter().zip(input.chunks_mut(3 * side * side)) {
                norm.write_chw(img, side, false, out);
            }
            let device = crate::util::device::inference();
            let x = Tensor::<4>::from_data(TensorData::new(input, [2, 3, side, side]), &device);
            let want = model.forward(x).into_data().try_to_vec::<f32>().unwrap();
            // A batch (images in parallel) and a lone image (split across threads).
            let got: Vec<f32> = fused.logits(&refs, &norm, side).concat();
            let lone = fused.logits(&refs[..1], &norm, side).concat();
            let diff = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max)
            };
            assert_eq!(got.len(), want.len());
            assert!(
                diff(&got, &want) < 1e-4,
                "w{width} {side}px: {}",
                diff(&got, &want)
            );
            assert!(diff(&lone, &want[..5]) < 1e-4, "w{width} {side}px lone");
        }
    }
}
