//! Channels-last kernels of the fused MobileNetV2's inference, each compiled for the widest
//! vector instructions the CPU has ([`dispatch`], as the training ops are): the depthwise 3×3
//! with its bias and ReLU6 in one pass, and the bias, residual and ReLU6 after a matrix product
//! in one pass.
//!
//! The depthwise kernel walks a row's interior pixels one block of [`LANES`] channels at a
//! time, with the block's nine weight vectors and its accumulator in registers (fixed-size
//! arrays the compiler maps onto them), so each tap is one load of the input, a multiply and an
//! add. A tap row outside the image reads the centre row with zero weights rather than being
//! tested for; the edge columns and leftover channels go tap by tap over precomputed ranges.

use crate::ops::simd::dispatch;

/// Channels per register block: one AVX2 register, so that the block's nine weights, its
/// accumulator and an input fit in AVX2's sixteen registers.
const LANES: usize = 8;

/// The valid taps (0..3) along one axis for output coordinate `o` (padding 1): those whose
/// input coordinate `o * stride + t - 1` lies in `0..n`.
#[inline(always)]
fn taps(o: usize, stride: usize, n: usize) -> std::ops::Range<usize> {
    let first = usize::from(o * stride == 0);
    let last = (n + 1 - o * stride).min(3);
    first..last
}

/// Output row `oy` of a depthwise 3×3 conv (padding 1) on an `h`×`w`×`c` channels-last input,
/// of which `x` holds the rows from `first` on (the rows that `oy` reads, at least): `bias` plus
/// the taps of `weight` (`[ky * 3 + kx][ws]`, of which the first `c` of each tap are used: a
/// group of channels can pass the whole layer's weights from its first channel on), clamped to
/// 0..=6 when `relu6`, written over `dst` (`ow`×`c`).
// max/min rather than clamp: clamp keeps NaN, which costs a blend per register.
#[allow(clippy::too_many_arguments, clippy::manual_clamp)]
pub(crate) fn depthwise_row(
    x: &[f32],
    first: usize,
    (h, w): (usize, usize),
    c: usize,
    stride: usize,
    (weight, ws): (&[f32], usize),
    bias: &[f32],
    relu6: bool,
    oy: usize,
    dst: &mut [f32],
) {
    assert!(ws >= c && weight.len() >= 8 * ws + c && bias.len() >= c);
    let ky = taps(oy, stride, h);
    assert!(
        oy * stride + ky.start > first && (oy * stride + ky.end - 1 - first) * w * c <= x.len(),
        "depthwise row {oy}: its input rows are not all in `x`"
    );
    let (oh_row, s) = (oy * stride, stride);
    // Interior columns: all three taps of a row inside the image.
    let interior = 1..if w >= 2 { (w - 2) / s + 1 } else { 1 };
    // Offset in `x` of input row `t` (0..3) of this output row; a tap row outside the image
    // reads the centre row (always inside) and gets zero weights in the fast path.
    let row = |t: usize| {
        (if ky.contains(&t) {
            oh_row + t - 1
        } else {
            oh_row
        } - first)
            * w
            * c
    };
    let rows = [row(0), row(1), row(2)];
    dispatch(
        #[inline(always)]
        || {
            // Fast path: interior columns in blocks of LANES channels, the block's nine weight
            // vectors held in registers across the row, no tap tests.
            let mut c0 = 0;
            while c0 + LANES <= c {
                let mut wt = [[0f32; LANES]; 9];
                for (t, wt) in wt.iter_mut().enumerate() {
                    if ky.contains(&(t / 3)) {
                        wt.copy_from_slice(&weight[t * ws + c0..][..LANES]);
                    }
                }
                let mut b = [0f32; LANES];
                b.copy_from_slice(&bias[c0..c0 + LANES]);
                for ox in interior.clone() {
                    let mut acc = b;
                    let left = (ox * s - 1) * c + c0;
                    for (ty, &row) in rows.iter().enumerate() {
                        // The row's three taps in one bounds check.
                        let seg = &x[row + left..][..2 * c + LANES];
                        for tx in 0..3 {
                            let (src, wt) = (&seg[tx * c..][..LANES], &wt[ty * 3 + tx]);
                            for l in 0..LANES {
                                acc[l] += src[l] * wt[l];
                            }
                        }
                    }
                    if relu6 {
                        for a in &mut acc {
                            *a = a.max(0.0).min(6.0);
                        }
                    }
                    dst[ox * c + c0..][..LANES].copy_from_slice(&acc);
                }
                c0 += LANES;
            }
            // Everything else, tap by tap over the valid ranges: the edge columns (all
            // channels) and the interior columns' channels past the last full block.
            let fast_end = c0;
            for (ox, out) in dst.chunks_exact_mut(c).enumerate() {
                let mut ch = if interior.contains(&ox) { fast_end } else { 0 };
                let kx = taps(ox, s, w);
                let at = |ty: usize, tx: usize| rows[ty] + (ox * s + tx - 1) * c;
                while ch + LANES <= c {
                    let mut acc = [0f32; LANES];
                    acc.copy_from_slice(&bias[ch..ch + LANES]);
                    for ty in ky.clone() {
                        for tx in kx.clone() {
                            let src = &x[at(ty, tx) + ch..][..LANES];
                            let wt = &weight[(ty * 3 + tx) * ws + ch..][..LANES];
                            for l in 0..LANES {
                                acc[l] += src[l] * wt[l];
                            }
                        }
                    }
                    if relu6 {
                        for a in &mut acc {
                            *a = a.max(0.0).min(6.0);
                        }
                    }
                    out[ch..ch + LANES].copy_from_slice(&acc);
                    ch += LANES;
                }
                for ch in ch..c {
                    let mut acc = bias[ch];
                    for ty in ky.clone() {
                        for tx in kx.clone() {
                            acc += x[at(ty, tx) + ch] * weight[(ty * 3 + tx) * ws + ch];
                        }
                    }
                    out[ch] = if relu6 { acc.max(0.0).min(6.0) } else { acc };
                }
            }
        },
    )
}

/// The end of a 1×1 or dense conv, after its matrix product into `out` (pixels of
/// `bias.len()` channels): adds the bias (and `residual`, of the same shape), then clamps to
/// 0..=6 when `relu6`. One pass, so the product's output is read once while still in cache.
#[allow(clippy::manual_clamp)] // max/min: see depthwise_row
pub(crate) fn epilogue(out: &mut [f32], bias: &[f32], residual: Option<&[f32]>, relu6: bool) {
    let c = bias.len();
    assert!(
        residual.is_none_or(|r| r.len() == out.len()),
        "residual shape"
    );
    dispatch(
        #[inline(always)]
        || match residual {
            Some(r) => {
                for (px, rp) in out.chunks_exact_mut(c).zip(r.chunks_exact(c)) {
                    for ((o, b), r) in px.iter_mut().zip(bias).zip(rp) {
                        let v = *o + b + r;
                        *o = if relu6 { v.max(0.0).min(6.0) } else { v };
                    }
                }
            }
            None => {
                for px in out.chunks_exact_mut(c) {
                    for (o, b) in px.iter_mut().zip(bias) {
                        let v = *o + b;
                        *o = if relu6 { v.max(0.0).min(6.0) } else { v };
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain definition, tap by tap with bounds checks.
    fn reference(x: &[f32], (h, w): (usize, usize), c: usize, s: usize, wt: &[f32]) -> Vec<f32> {
        let (oh, ow) = ((h - 1) / s + 1, (w - 1) / s + 1);
        let mut out = vec![0f32; oh * ow * c];
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..c {
                    let mut acc = 0.5 * ch as f32;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = ((oy * s + ky) as isize - 1, (ox * s + kx) as isize - 1);
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                let i = (iy as usize * w + ix as usize) * c + ch;
                                acc += x[i] * wt[(ky * 3 + kx) * c + ch];
                            }
                        }
                    }
                    out[(oy * ow + ox) * c + ch] = acc;
                }
            }
        }
        out
    }

    #[test]
    fn depthwise_rows_match_the_definition_at_every_edge() {
        // Channel counts below, at and past a register block; odd and even sides; both strides;
        // 1×1 and 2×2 maps (every pixel on an edge).
        for (h, w, c) in [(1, 1, 16), (2, 2, 8), (5, 7, 24), (6, 6, 48), (3, 4, 35)] {
            for stride in [1, 2] {
                let x: Vec<f32> = (0..h * w * c)
                    .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                    .collect();
                let wt: Vec<f32> = (0..9 * c)
                    .map(|i| ((i * 53) % 89) as f32 / 44.0 - 1.0)
                    .collect();
                let bias: Vec<f32> = (0..c).map(|ch| 0.5 * ch as f32).collect();
                let want = reference(&x, (h, w), c, stride, &wt);
                let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
                let mut got = vec![f32::NAN; oh * ow * c];
                for (oy, row) in got.chunks_mut(ow * c).enumerate() {
                    depthwise_row(&x, 0, (h, w), c, stride, (&wt, c), &bias, false, oy, row);
                }
                for (g, r) in got.iter().zip(&want) {
                    assert!(
                        (g - r).abs() < 1e-5,
                        "{h}x{w}x{c} stride {stride}: {g} vs {r}"
                    );
                }
                let mut clamped = vec![f32::NAN; oh * ow * c];
                for (oy, row) in clamped.chunks_mut(ow * c).enumerate() {
                    depthwise_row(&x, 0, (h, w), c, stride, (&wt, c), &bias, true, oy, row);
                }
                for (g, r) in clamped.iter().zip(&want) {
                    assert!((g - r.clamp(0.0, 6.0)).abs() < 1e-5, "relu6 {h}x{w}x{c}");
                }
            }
        }
    }
}
