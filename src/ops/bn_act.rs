//! BatchNorm in training mode (batch statistics) followed by an optional ReLU6, on NCHW f32
//! slices, forward and backward.
//!
//! Forward: one pass per channel for the sums (f32 lanes summed in f64), one pass per plane for
//! `clamp(x · a + b, 0, 6)` with `a = γ / σ`, `b = β - μ a`. Backward: one pass per channel
//! gives the parameter gradients (the ReLU6 mask is recomputed from `x` with the forward's own
//! expression, so it is the forward's bit for bit), and one pass per plane the input gradient.
//! Channels and planes run in parallel; every sum has a fixed order.

use rayon::prelude::*;

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

    fn planes_per_task(&self) -> usize {
        TASK_ELEMS.div_ceil(self.hw).max(1)
    }
}

const TASK_ELEMS: usize = 8192;

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

/// Whether the ReLU6 after the normalisation passes a gradient at pre-activation `v`.
#[inline(always)]
fn passes(v: f32, relu6: bool) -> bool {
    !relu6 || (v > 0.0 && v < 6.0)
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
    let stats: Vec<(f32, f32, f32)> = (0..s.c)
        .into_par_iter()
        .map(|ch| {
            dispatch(
                #[inline(always)]
                || {
                    // Sums of x - k, k being the channel's first value: E[x²] - E[x]² would
                    // lose a variance that is small beside the mean to cancellation.
                    let k = x[ch * s.hw];
                    let (mut sum, mut sq) = (0f64, 0f64);
                    for img in 0..s.n {
                        let (ps, pq) = plane_sums(s.plane(x, img, ch), k);
                        sum += ps;
                        sq += pq;
                    }
                    let m = s.count() as f64;
                    let shift = sum / m;
                    let mean = k as f64 + shift;
                    let var = (sq / m - shift * shift).max(0.0);
                    let inv_std = 1.0 / (var + epsilon).sqrt();
                    (mean as f32, var as f32, inv_std as f32)
                },
            )
        })
        .collect();
    let mean: Vec<f32> = stats.iter().map(|t| t.0).collect();
    let var: Vec<f32> = stats.iter().map(|t| t.1).collect();
    let inv_std: Vec<f32> = stats.iter().map(|t| t.2).collect();
    let per = s.planes_per_task();
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(per * s.hw)
        .zip(x.par_chunks(per * s.hw))
        .enumerate()
        .for_each(|(t, (oc, xc))| {
            dispatch(
                #[inline(always)]
                || {
                    for (p, (op, xp)) in oc
                        .chunks_exact_mut(s.hw)
                        .zip(xc.chunks_exact(s.hw))
                        .enumerate()
                    {
                        let ch = (t * per + p) % s.c;
                        let (a, b) = affine(gamma[ch], beta[ch], mean[ch], inv_std[ch]);
                        if relu6 {
                            for (o, &v) in op.iter_mut().zip(xp) {
                                *o = (v * a + b).clamp(0.0, 6.0);
                            }
                        } else {
                            for (o, &v) in op.iter_mut().zip(xp) {
                                *o = v * a + b;
                            }
                        }
                    }
                },
            )
        });
    BnForward {
        out,
        mean,
        var,
        inv_std,
    }
}

/// Sum and sum of squares of `x - k` over a plane, in f32 over 8 lanes per block of 256, then
/// f64.
#[inline(always)]
fn plane_sums(p: &[f32], k: f32) -> (f64, f64) {
    let (mut sum, mut sq) = (0f64, 0f64);
    for block in p.chunks(256) {
        let (mut ls, mut lq) = ([0f32; 8], [0f32; 8]);
        let chunks = block.chunks_exact(8);
        for &v in chunks.remainder() {
            let d = (v - k) as f64;
            sum += d;
            sq += d * d;
        }
        for c in chunks {
            for l in 0..8 {
                let d = c[l] - k;
                ls[l] += d;
                lq[l] += d * d;
            }
        }
        sum += ls.iter().map(|&v| v as f64).sum::<f64>();
        sq += lq.iter().map(|&v| v as f64).sum::<f64>();
    }
    (sum, sq)
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
    let sums: Vec<(f64, f64)> = (0..s.c)
        .into_par_iter()
        .map(|ch| {
            dispatch(
                #[inline(always)]
                || {
                    let (a, b) = affine(gamma[ch], beta[ch], mean[ch], inv_std[ch]);
                    let (m, is) = (mean[ch], inv_std[ch]);
                    let (mut sg, mut sgx) = (0f64, 0f64);
                    for img in 0..s.n {
                        let (xp, gp) = (s.plane(x, img, ch), s.plane(dout, img, ch));
                        // 8 lanes, so the loop vectorises.
                        let (mut lg, mut lgx) = ([0f32; 8], [0f32; 8]);
                        let (xc, gc) = (xp.chunks_exact(8), gp.chunks_exact(8));
                        for (&v, &g) in xc.remainder().iter().zip(gc.remainder()) {
                            let g = if passes(v * a + b, relu6) { g } else { 0.0 };
                            sg += g as f64;
                            sgx += (g * ((v - m) * is)) as f64;
                        }
                        for (xv, gv) in xc.zip(gc) {
                            for l in 0..8 {
                                let v = xv[l];
                                let g = if passes(v * a + b, relu6) { gv[l] } else { 0.0 };
                                lg[l] += g;
                                lgx[l] += g * ((v - m) * is);
                            }
                        }
                        sg += lg.iter().map(|&v| v as f64).sum::<f64>();
                        sgx += lgx.iter().map(|&v| v as f64).sum::<f64>();
                    }
                    (sg, sgx)
                },
            )
        })
        .collect();
    let dbeta: Vec<f32> = sums.iter().map(|t| t.0 as f32).collect();
    let dgamma: Vec<f32> = sums.iter().map(|t| t.1 as f32).collect();
    let dx = want_x.then(|| {
        // The bracket cancels to a small fraction of its terms when a channel has few values
        // (the 1×1 maps of the last blocks): there it runs in f64, elsewhere in f32.
        let wide = s.count() < F32_MIN_COUNT;
        let inv_m = 1.0 / s.count() as f64;
        let per = s.planes_per_task();
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(per * s.hw)
            .zip(x.par_chunks(per * s.hw).zip(dout.par_chunks(per * s.hw)))
            .enumerate()
            .for_each(|(t, (dc, (xc, gc)))| {
                dispatch(
                    #[inline(always)]
                    || {
                        let planes = dc
                            .chunks_exact_mut(s.hw)
                            .zip(xc.chunks_exact(s.hw).zip(gc.chunks_exact(s.hw)));
                        for (p, (dp, (xp, gp))) in planes.enumerate() {
                            let ch = (t * per + p) % s.c;
                            let (a, b) = affine(gamma[ch], beta[ch], mean[ch], inv_std[ch]);
                            let (mg, mgx) = (sums[ch].0 * inv_m, sums[ch].1 * inv_m);
                            if wide {
                                let (m, is) = (mean[ch] as f64, inv_std[ch] as f64);
                                let scale = gamma[ch] as f64 * is;
                                for ((d, &v), &g) in dp.iter_mut().zip(xp).zip(gp) {
                                    let g = if passes(v * a + b, relu6) {
                                        g as f64
                                    } else {
                                        0.0
                                    };
                                    *d = (scale * (g - mg - (v as f64 - m) * is * mgx)) as f32;
                                }
                            } else {
                                let (m, is) = (mean[ch], inv_std[ch]);
                                let (mg, mgx) = (mg as f32, mgx as f32);
                                let scale = gamma[ch] * is;
                                for ((d, &v), &g) in dp.iter_mut().zip(xp).zip(gp) {
                                    let g = if passes(v * a + b, relu6) { g } else { 0.0 };
                                    *d = scale * (g - mg - (v - m) * is * mgx);
                                }
                            }
                        }
                    },
                )
            });
        dx
    });
    BnGrads {
        x: dx,
        gamma: dgamma,
        beta: dbeta,
    }
}
