//! One convolution of the fused MobileNetV2 with its BatchNorm folded in: the weights laid out
//! for its kernel (pointwise, depthwise 3×3 or dense 3×3), and the pointwise and dense ones'
//! run (a matrix product over pixels, then one pass for the bias and ReLU6). The blocks'
//! depthwise convs run inside [`super::fused_unit`].

use super::fused::{ConvBnWeights, matmul};
use super::fused_kernels as kernels;

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
    pub(super) fn run(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        threads: usize,
    ) -> (Vec<f32>, usize, usize) {
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
