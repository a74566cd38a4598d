//! An inference-only form of the reference [`Cnn`](super::Cnn), built from its trained weights.
//!
//! BatchNorm is folded into each convolution's weights and bias; activations are channels-last
//! (HWC), so a 3×3 convolution is one im2col copy and one matrix product (the `gemm` crate,
//! which Burn's Flex backend also uses); bias, ReLU and the 2×2 max-pool are one pass over the
//! product. Images of a batch run in parallel, and a lone image splits its rows across threads.
//! The result matches the Burn forward pass to float rounding (a test checks it). Training has
//! its own fused op ([`crate::ops`]), which shares [`im2col3x3`] with this path.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::data::imaging::Normalization;

/// One conv3x3 (padding 1) → BatchNorm → ReLU → MaxPool2 block with the norm folded in.
#[derive(Debug, Clone)]
pub struct FusedBlock {
    cin: usize,
    cout: usize,
    /// `[(ky * 3 + kx) * cin + c][cout]`, row-major: the right-hand side of the im2col product.
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// The reference CNN as plain arrays, ready for [`FusedCnn::logits`].
#[derive(Debug, Clone)]
pub struct FusedCnn {
    blocks: Vec<FusedBlock>,
    /// `[cin][classes]`, row-major.
    head_weight: Vec<f32>,
    head_bias: Vec<f32>,
}

/// The weights of one trained conv + BatchNorm pair, as Burn stores them.
pub struct ConvBnWeights {
    /// `[cout][cin / groups][k][k]`.
    pub conv_weight: Vec<f32>,
    pub conv_bias: Option<Vec<f32>>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub epsilon: f64,
}

impl ConvBnWeights {
    /// The BatchNorm folded into the conv: the weights scaled per output channel (same layout
    /// as [`Self::conv_weight`]) and one bias per output channel.
    pub fn fold(&self) -> (Vec<f32>, Vec<f32>) {
        let cout = self.gamma.len();
        let per_out = self.conv_weight.len() / cout;
        let mut weight = vec![0f32; self.conv_weight.len()];
        let mut bias = vec![0f32; cout];
        for o in 0..cout {
            let scale = self.gamma[o] as f64 / (self.running_var[o] as f64 + self.epsilon).sqrt();
            let b = self.conv_bias.as_ref().map_or(0.0, |b| b[o] as f64);
            bias[o] = ((b - self.running_mean[o] as f64) * scale + self.beta[o] as f64) as f32;
            for (d, v) in weight[o * per_out..(o + 1) * per_out]
                .iter_mut()
                .zip(&self.conv_weight[o * per_out..(o + 1) * per_out])
            {
                *d = (*v as f64 * scale) as f32;
            }
        }
        (weight, bias)
    }
}

impl FusedBlock {
    /// Folds `w` (a conv with `cin` inputs and `cout` outputs, then its BatchNorm) into one conv.
    pub fn fold(cin: usize, cout: usize, w: &ConvBnWeights) -> Self {
        assert_eq!(w.conv_weight.len(), cout * cin * 9, "conv weight shape");
        let (folded, bias) = w.fold();
        let mut weight = vec![0f32; 9 * cin * cout];
        for o in 0..cout {
            for c in 0..cin {
                for k in 0..9 {
                    weight[(k * cin + c) * cout + o] = folded[(o * cin + c) * 9 + k];
                }
            }
        }
        Self {
            cin,
            cout,
            weight,
            bias,
        }
    }

    /// Computes pooled output rows `p0..p0 + n` (n = `out.len() / (pw * cout)`) of this block
    /// for an `h`×`w`×`cin` input, into `out` (`n`×`pw`×`cout`).
    fn pooled_rows(&self, input: &[f32], h: usize, w: usize, p0: usize, out: &mut [f32]) {
        let (cin, cout) = (self.cin, self.cout);
        let pw = w / 2;
        let n = out.len() / (pw * cout);
        // Conv output rows 2*p0 .. 2*(p0+n), columns 0 .. 2*pw (a trailing odd row/column is
        // dropped by the pool, as in Burn and PyTorch).
        let (rows, cols) = (2 * n, 2 * pw);
        let m = rows * cols;
        let k = 9 * cin;
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let (patches, conv) = &mut *s;
            im2col3x3(input, h, w, cin, 2 * p0, rows, cols, patches);
            conv.resize(m * cout, 0.0);
            matmul(m, cout, k, patches, &self.weight, conv, false, 1);
            // max(relu(v + b)) over the 2×2 window == relu(max(v) + b).
            for py in 0..n {
                for px in 0..pw {
                    let at = |dy: usize, dx: usize| ((2 * py + dy) * cols + 2 * px + dx) * cout;
                    let (a, b, c, d) = (at(0, 0), at(0, 1), at(1, 0), at(1, 1));
                    let o = &mut out[(py * pw + px) * cout..(py * pw + px + 1) * cout];
                    for ch in 0..cout {
                        let v = conv[a + ch]
                            .max(conv[b + ch])
                            .max(conv[c + ch])
                            .max(conv[d + ch]);
                        o[ch] = (v + self.bias[ch]).max(0.0);
                    }
                }
            }
        });
    }

    /// The whole block on an `h`×`w`×`cin` input: an `h/2`×`w/2`×`cout` output. `split` > 1
    /// spreads the rows over that many parallel tasks. Each product covers at most
    /// [`MAX_PRODUCT_ROWS`] conv outputs, which bounds the scratch memory for large images.
    fn forward(&self, input: &[f32], h: usize, w: usize, split: usize) -> Vec<f32> {
        let (ph, pw) = (h / 2, w / 2);
        let mut out = vec![0f32; ph * pw * self.cout];
        if out.is_empty() {
            return out;
        }
        let cap = (MAX_PRODUCT_ROWS / (4 * pw)).max(1);
        let per = if split > 1 {
            ph.div_ceil(split).min(cap)
        } else {
            cap
        };
        let chunk = per * pw * self.cout;
        let rows = |(i, part): (usize, &mut [f32])| self.pooled_rows(input, h, w, i * per, part);
        if split > 1 && ph > 1 {
            out.par_chunks_mut(chunk).enumerate().for_each(rows);
        } else {
            out.chunks_mut(chunk).enumerate().for_each(rows);
        }
        out
    }
}

/// Writes the 3×3 (padding 1) patches of conv output rows `y0..y0 + rows`, columns
/// `0..cols`, of an `h`×`w`×`cin` channels-last input into `patches`: one row of `9 * cin`
/// values (`(ky * 3 + kx) * cin + c`) per output position, zeros where the window leaves the
/// image (see [`crate::ops::patches`], shared with the fused training op).
#[allow(clippy::too_many_arguments)]
pub(crate) fn im2col3x3(
    input: &[f32],
    h: usize,
    w: usize,
    cin: usize,
    y0: usize,
    rows: usize,
    cols: usize,
    patches: &mut Vec<f32>,
) {
    // Every value is overwritten: only growth needs filling.
    patches.resize(rows * cols * 9 * cin, 0.0);
    crate::ops::patches::im2col3x3_into(input, h, w, cin, y0, rows, cols, patches);
}

/// Most conv output positions per im2col product (8192 rows: 64 px images take one product for
/// the first layer; the scratch stays under ~50 MB per thread for any image size).
const MAX_PRODUCT_ROWS: usize = 8192;

thread_local! {
    /// Per-thread im2col and conv-output buffers, reused from call to call.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

impl FusedCnn {
    /// Assembles the network from folded blocks and the linear head (`[cin][classes]`).
    pub fn new(blocks: Vec<FusedBlock>, head_weight: Vec<f32>, head_bias: Vec<f32>) -> Self {
        let cin = blocks.last().map_or(3, |b| b.cout);
        assert_eq!(
            head_weight.len(),
            cin * head_bias.len(),
            "head weight shape"
        );
        Self {
            blocks,
            head_weight,
            head_bias,
        }
    }

    /// Class logits of each image (RGB8, `side`×`side`, row-major), normalised with `norm`.
    /// Images run in parallel; a lone image splits its rows across the threads instead.
    pub fn logits(&self, images: &[&[u8]], norm: &Normalization, side: usize) -> Vec<Vec<f32>> {
        per_image(images, norm, side, |x, split| {
            self.forward_one(x, side, split)
        })
    }

    /// Logits of one normalised HWC image.
    fn forward_one(&self, mut x: Vec<f32>, side: usize, split: usize) -> Vec<f32> {
        let (mut h, mut w) = (side, side);
        for b in &self.blocks {
            x = b.forward(&x, h, w, split);
            (h, w) = (h / 2, w / 2);
        }
        pool_and_classify(&x, (h * w).max(1), &self.head_weight, &self.head_bias)
    }
}

/// Runs `forward` (a normalised HWC image and a thread count to split it over, to its logits)
/// on each RGB8 `side`×`side` image: images in parallel, or a lone image split across the
/// threads.
pub(crate) fn per_image<F>(
    images: &[&[u8]],
    norm: &Normalization,
    side: usize,
    forward: F,
) -> Vec<Vec<f32>>
where
    F: Fn(Vec<f32>, usize) -> Vec<f32> + Sync,
{
    let one = |pixels: &[u8], split: usize| {
        assert_eq!(pixels.len(), 3 * side * side, "image size");
        let mut x = vec![0f32; pixels.len()];
        norm.write_hwc(pixels, &mut x);
        forward(x, split)
    };
    match images {
        [image] => vec![one(image, rayon::current_num_threads())],
        _ => images.par_iter().map(|image| one(image, 1)).collect(),
    }
}

/// Global average pooling of `cells` channels-last cells, then the linear head
/// (`head_weight` `[cin][classes]`, row-major).
pub(crate) fn pool_and_classify(
    x: &[f32],
    cells: usize,
    head_weight: &[f32],
    head_bias: &[f32],
) -> Vec<f32> {
    let classes = head_bias.len();
    let cin = head_weight.len() / classes;
    let mut pooled = vec![0f32; cin];
    for cell in x.chunks_exact(cin) {
        for (p, v) in pooled.iter_mut().zip(cell) {
            *p += v;
        }
    }
    let cells = cells as f32;
    let mut logits = head_bias.to_vec();
    for (p, row) in pooled.iter().zip(head_weight.chunks_exact(classes)) {
        for (l, wv) in logits.iter_mut().zip(row) {
            *l += p / cells * wv;
        }
    }
    logits
}

/// `dst (m×n) = lhs (m×k) · rhs (k×n)`, plus the old `dst` when `read_dst`; all row-major.
/// `threads` > 1 lets the `gemm` crate split the product over that many rayon threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    rhs: &[f32],
    dst: &mut [f32],
    read_dst: bool,
    threads: usize,
) {
    matmul_strided(m, n, k, lhs, (rhs, n), dst, read_dst, threads);
}

/// [`matmul`] with the rows of `rhs` `rhs_row` values apart (≥ `n`): the product with some
/// consecutive columns of a wider matrix.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_strided(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    (rhs, rhs_row): (&[f32], usize),
    dst: &mut [f32],
    read_dst: bool,
    threads: usize,
) {
    assert!(lhs.len() >= m * k && dst.len() >= m * n && rhs_row >= n);
    assert!(k == 0 || rhs.len() >= (k - 1) * rhs_row + n);
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above make the slices hold an m×k and an m×n row-major matrix and a
    // k×n one with rows `rhs_row` apart, as described by the sizes and strides passed; `dst`
    // is only read when `read_dst` is set.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            read_dst,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            rhs_row as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct (slow, obviously correct) conv3x3 + BN + ReLU + pool on HWC input.
    fn reference(w: &ConvBnWeights, cin: usize, cout: usize, x: &[f32], s: usize) -> Vec<f32> {
        let mut conv = vec![0f32; s * s * cout];
        for y in 0..s {
            for xx in 0..s {
                for o in 0..cout {
                    let mut acc = w.conv_bias.as_ref().map_or(0.0, |b| b[o]);
                    for c in 0..cin {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (y + ky, xx + kx);
                                if iy < 1 || ix < 1 || iy > s || ix > s {
                                    continue;
                                }
                                acc += w.conv_weight[((o * cin + c) * 3 + ky) * 3 + kx]
                                    * x[((iy - 1) * s + ix - 1) * cin + c];
                            }
                        }
                    }
                    let norm = (acc - w.running_mean[o])
                        / (w.running_var[o] + w.epsilon as f32).sqrt()
                        * w.gamma[o]
                        + w.beta[o];
                    conv[(y * s + xx) * cout + o] = norm.max(0.0);
                }
            }
        }
        let p = s / 2;
        let mut out = vec![0f32; p * p * cout];
        for y in 0..p {
            for xx in 0..p {
                for o in 0..cout {
                    let at =
                        |dy: usize, dx: usize| conv[((2 * y + dy) * s + 2 * xx + dx) * cout + o];
                    out[(y * p + xx) * cout + o] =
                        at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
                }
            }
        }
        out
    }

    #[test]
    fn folded_block_matches_a_direct_convolution() {
        // An odd side (the pool drops the last row and column), and a side large enough to
        // need several products per image.
        for (cin, cout, s) in [(3, 5, 7), (3, 2, 130)] {
            check_block(cin, cout, s);
        }
    }

    fn check_block(cin: usize, cout: usize, s: usize) {
        let f = |i: usize, scale: f32| ((i * 7919 % 101) as f32 / 101.0 - 0.5) * scale;
        let w = ConvBnWeights {
            conv_weight: (0..cout * cin * 9).map(|i| f(i, 1.0)).collect(),
            conv_bias: Some((0..cout).map(|i| f(i + 3, 0.2)).collect()),
            gamma: (0..cout).map(|i| 0.5 + f(i + 11, 1.0)).collect(),
            beta: (0..cout).map(|i| f(i + 5, 0.4)).collect(),
            running_mean: (0..cout).map(|i| f(i + 9, 0.3)).collect(),
            running_var: (0..cout).map(|i| 0.2 + f(i + 13, 0.2).abs()).collect(),
            epsilon: 1e-5,
        };
        let x: Vec<f32> = (0..s * s * cin).map(|i| f(i + 17, 3.0)).collect();
        let block = FusedBlock::fold(cin, cout, &w);
        let want = reference(&w, cin, cout, &x, s);
        for split in [1, 2, 3] {
            let got = block.forward(&x, s, s, split);
            assert_eq!(got.len(), want.len());
            for (g, r) in got.iter().zip(&want) {
                assert!((g - r).abs() < 1e-4, "split {split}: {g} vs {r}");
            }
        }
    }
}
