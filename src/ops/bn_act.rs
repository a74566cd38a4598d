//! BatchNorm in training mode (batch statistics) followed by an optional ReLU6, on NCHW f32
//! slices, forward and backward.
//!
//! Each channel is one parallel task that goes over its planes (one per image) twice, the second
//! time while they are still in cache. Forward: the sums for the statistics (f32 lanes, summed
//! in f64 per block), then `clamp(x · a + b, 0, 6)` with `a = γ / σ`, `b = β - μ a`. Backward:
//! Σ g and Σ g·x̂ (the parameter gradients; the ReLU6 mask is recomputed from `x` with the
//! forward's own expression, so it is the forward's bit for bit), then the input gradient. The
//! loops are branch-free over blocks of [`LANES`] values so that they vectorise, and every sum
//! has a fixed order, so results do not depend on the thread count.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::planes::{FLUSH_BLOCKS, LANES, by_channel, flush, written};
use super::simd::dispatch;

/// Shape of one call: `n` images of `c` planes of `hw` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BnShape {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl BnShape {
    /// Values per channel (the batch statistics' count).
    fn count(&self) -> usize {
        self.n * self.hw
    }

    /// The `hw` values of channel `ch` in image `img`.
    fn plane<'a>(&self, t: &'a [f32], img: usize, ch: usize) -> &'a [f32] {
        &t[(img * self.c + ch) * self.hw..][..self.hw]
    }
}

/// Values per channel from which the input gradient is computed in f32 (see [`backward`]).
const F32_MIN_COUNT: usize = 64;

/// Forward results: the output, the batch mean and biased variance per channel, and `1/σ`.
pub struct BnForward {
    pub out: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub inv_std: Vec<f32>,
}

/// Gradients of one call.
pub struct BnGrads {
    pub x: Option<Vec<f32>>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

/// The per-channel scale and shift of the normalisation: `y = x · a + b`.
#[inline(always)]
fn affine(gamma: f32, beta: f32, mean: f32, inv_std: f32) -> (f32, f32) {
    let a = gamma * inv_std;
    (a, beta - mean * a)
}

/// The output gradient `g` through the ReLU6 at input `v` (when `RELU6`), without a branch.
#[inline(always)]
fn masked<const RELU6: bool>(v: f32, g: f32, a: f32, b: f32) -> f32 {
    if !RELU6 {
        return g;
    }
    let y = v * a + b;
    if (y > 0.0) & (y < 6.0) { g } else { 0.0 }
}

/// The forward pass: `x` `[n][c][hw]`, `gamma` and `beta` `[c]`.
pub fn forward(
    s: BnShape,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
    relu6: bool,
) -> BnForward {
    assert_eq!(x.len(), s.n * s.c * s.hw, "batch norm input size");
    assert!(
        gamma.len() == s.c && beta.len() == s.c,
        "batch norm parameter size"
    );
    assert!(
        s.count() > 0,
        "batch norm needs at least one value per channel"
    );
    let mut stats = vec![(0f32, 0f32, 0f32); s.c];
    // SAFETY: every plane of every channel is handed to a task, which writes all of it.
    let out = unsafe {
        written(x.len(), |out| {
            by_channel(out, s.c, s.hw)
                .into_par_iter()
                .zip(stats.par_iter_mut())
                .enumerate()
                .for_each(|(ch, (planes, st))| {
                    *st = dispatch(
                        #[inline(always)]
                        || channel_forward(s, x, ch, (gamma[ch], beta[ch]), epsilon, relu6, planes),
                    )
                })
        })
    };
    BnForward {
        out,
        mean: stats.iter().map(|t| t.0).collect(),
        var: stats.iter().map(|t| t.1).collect(),
        inv_std: stats.iter().map(|t| t.2).collect(),
    }
}

/// One channel of the forward pass: its statistics (mean, variance, `1/σ`), and its output
/// planes written.
#[inline(always)]
fn channel_forward(
    s: BnShape,
    x: &[f32],
    ch: usize,
    (gamma, beta): (f32, f32),
    epsilon: f64,
    relu6: bool,
    out: Vec<&mut [MaybeUninit<f32>]>,
) -> (f32, f32, f32) {
    // Sums of x - k, k being the channel's first value: E[x²] - E[x]² would lose a variance
    // that is small beside the mean to cancellation.
    let k = x[ch * s.hw];
    let (mut sum, mut sq) = (0f64, 0f64);
    let (mut ls, mut lq) = ([0f32; LANES], [0f32; LANES]);
    let mut pending = 0;
    for img in 0..s.n {
        pending += plane_sums(s.plane(x, img, ch), k, &mut ls, &mut lq);
        if pending >= FLUSH_BLOCKS || img + 1 == s.n {
            flush(&mut ls, &mut sum);
            flush(&mut lq, &mut sq);
            pending = 0;
        }
    }
    let m = s.count() as f64;
    let shift = sum / m;
    let mean = k as f64 + shift;
    let var = (sq / m - shift * shift).max(0.0);
    let inv_std = 1.0 / (var + epsilon).sqrt();
    let (mean, var, inv_std) = (mean as f32, var as f32, inv_std as f32);
    let (a, b) = affine(gamma, beta, mean, inv_std);
    for (img, op) in out.into_iter().enumerate() {
        let xp = s.plane(x, img, ch);
        if relu6 {
            map_values(
                op,
                xp,
                xp,
                #[inline(always)]
                |v, _| (v * a + b).clamp(0.0, 6.0),
            );
        } else {
            map_values(
                op,
                xp,
                xp,
                #[inline(always)]
                |v, _| v * a + b,
            );
        }
    }
    (mean, var, inv_std)
}

/// Adds `x - k` and its square over a plane to the lanes `ls` and `lq`; returns the blocks
/// added. The last block is padded with `k` (adding nothing). Two loops over the (cached)
/// plane, one per sum, so that each vectorises as a plain lane-wise sum.
#[inline(always)]
fn plane_sums(p: &[f32], k: f32, ls: &mut [f32; LANES], lq: &mut [f32; LANES]) -> usize {
    let (chunks, rest) = p.as_chunks::<LANES>();
    let last = padded(rest, k);
    let tail: &[[f32; LANES]] = if rest.is_empty() { &[] } else { &[last] };
    for blocks in [chunks, tail] {
        for c in blocks {
            for l in 0..LANES {
                ls[l] += c[l] - k;
            }
        }
        for c in blocks {
            for l in 0..LANES {
                let d = c[l] - k;
                lq[l] += d * d;
            }
        }
    }
    chunks.len() + tail.len()
}

/// The (fewer than [`LANES`]) values of `rest` in a block padded with `pad`.
#[inline(always)]
fn padded(rest: &[f32], pad: f32) -> [f32; LANES] {
    let mut b = [pad; LANES];
    b[..rest.len()].copy_from_slice(rest);
    b
}

/// `out[i] = f(a[i], b[i])` (`a`, `b` and `out` of the same length).
#[inline(always)]
fn map_values(
    out: &mut [MaybeUninit<f32>],
    a: &[f32],
    b: &[f32],
    f: impl Fn(f32, f32) -> f32 + Copy,
) {
    for ((o, &av), &bv) in out.iter_mut().zip(a).zip(b) {
        o.write(f(av, bv));
    }
}

/// The backward pass from the forward's input `x`, parameters and statistics, and the output
/// gradient `dout`. The input gradient is computed only when `want_x`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    s: BnShape,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    dout: &[f32],
    relu6: bool,
    want_x: bool,
) -> BnGrads {
    assert_eq!(x.len(), s.n * s.c * s.hw, "batch norm input size");
    assert_eq!(dout.len(), x.len(), "batch norm output gradient size");
    // Σ g and Σ g·x̂ per channel, g being the gradient through the ReLU6.
    let mut sums = vec![(0f64, 0f64); s.c];
    let p = BwdParams {
        s,
        x,
        dout,
        gamma,
        beta,
        mean,
        inv_std,
    };
    let run = |ch: usize, dx: Option<Vec<&mut [MaybeUninit<f32>]>>| {
        dispatch(
            #[inline(always)]
            || {
                if relu6 {
                    channel_backward::<true>(&p, ch, dx)
                } else {
                    channel_backward::<false>(&p, ch, dx)
                }
            },
        )
    };
    let dx = if want_x {
        // SAFETY: every plane of every channel is handed to a task, which writes all of it.
        Some(unsafe {
            written(x.len(), |out| {
                by_channel(out, s.c, s.hw)
                    .into_par_iter()
                    .zip(sums.par_iter_mut())
                    .enumerate()
                    .for_each(|(ch, (planes, sm))| *sm = run(ch, Some(planes)))
            })
        })
    } else {
        sums.par_iter_mut()
            .enumerate()
            .for_each(|(ch, sm)| *sm = run(ch, None));
        None
    };
    BnGrads {
        x: dx,
        gamma: sums.iter().map(|t| t.1 as f32).collect(),
        beta: sums.iter().map(|t| t.0 as f32).collect(),
    }
}

/// Adds `g` and `g · x̂` of one block to the lanes `lg` and `lgx`, `g` being `gv` through the
/// ReLU6 (`a`, `b`: the affine map; `m`, `is`: mean and `1/σ`).
#[inline(always)]
fn grad_lanes<const RELU6: bool>(
    xv: &[f32; LANES],
    gv: &[f32; LANES],
    [a, b, m, is]: [f32; 4],
    lg: &mut [f32; LANES],
    lgx: &mut [f32; LANES],
) {
    for l in 0..LANES {
        let v = xv[l];
        let g = masked::<RELU6>(v, gv[l], a, b);
        lg[l] += g;
        lgx[l] += g * ((v - m) * is);
    }
}

/// The inputs of [`backward`].
struct BwdParams<'a> {
    s: BnShape,
    x: &'a [f32],
    dout: &'a [f32],
    gamma: &'a [f32],
    beta: &'a [f32],
    mean: &'a [f32],
    inv_std: &'a [f32],
}

/// One channel of the backward pass: Σ g and Σ g·x̂, and its input-gradient planes written
/// into `dx` when given.
#[inline(always)]
fn channel_backward<const RELU6: bool>(
    p: &BwdParams,
    ch: usize,
    dx: Option<Vec<&mut [MaybeUninit<f32>]>>,
) -> (f64, f64) {
    let s = p.s;
    let (m, is) = (p.mean[ch], p.inv_std[ch]);
    let (a, b) = affine(p.gamma[ch], p.beta[ch], m, is);
    let (mut sg, mut sgx) = (0f64, 0f64);
    let (mut lg, mut lgx) = ([0f32; LANES], [0f32; LANES]);
    let mut pending = 0;
    for img in 0..s.n {
        let (xp, gp) = (s.plane(p.x, img, ch), s.plane(p.dout, img, ch));
        let ((xc, xr), (gc, gr)) = (xp.as_chunks::<LANES>(), gp.as_chunks::<LANES>());
        for (xv, gv) in xc.iter().zip(gc) {
            grad_lanes::<RELU6>(xv, gv, [a, b, m, is], &mut lg, &mut lgx);
        }
        if !xr.is_empty() {
            // Padded with zero gradients, which add nothing.
            let (xv, gv) = (padded(xr, 0.0), padded(gr, 0.0));
            grad_lanes::<RELU6>(&xv, &gv, [a, b, m, is], &mut lg, &mut lgx);
        }
        pending += xp.len().div_ceil(LANES);
        if pending >= FLUSH_BLOCKS || img + 1 == s.n {
            flush(&mut lg, &mut sg);
            flush(&mut lgx, &mut sgx);
            pending = 0;
        }
    }
    let Some(dx) = dx else {
        return (sg, sgx);
    };
    let inv_m = 1.0 / s.count() as f64;
    let (mg, mgx) = (sg * inv_m, sgx * inv_m);
    // The bracket cancels to a small fraction of its terms when a channel has few values (the
    // 1×1 maps of the last blocks): there it runs in f64, elsewhere in f32.
    let wide = s.count() < F32_MIN_COUNT;
    for (img, dp) in dx.into_iter().enumerate() {
        let (xp, gp) = (s.plane(p.x, img, ch), s.plane(p.dout, img, ch));
        if wide {
            let (m, is) = (m as f64, is as f64);
            let scale = p.gamma[ch] as f64 * is;
            for ((d, &v), &g) in dp.iter_mut().zip(xp).zip(gp) {
                let g = masked::<RELU6>(v, g, a, b) as f64;
                d.write((scale * (g - mg - (v as f64 - m) * is * mgx)) as f32);
            }
        } else {
            let (mg, mgx) = (mg as f32, mgx as f32);
            let scale = p.gamma[ch] * is;
            map_values(
                dp,
                xp,
                gp,
                #[inline(always)]
                |v, g| {
                    let g = masked::<RELU6>(v, g, a, b);
                    scale * (g - mg - (v - m) * is * mgx)
                },
            );
        }
    }
    (sg, sgx)
}
