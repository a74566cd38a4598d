//! The training kernels of the reference CNN's block, conv3x3 (padding 1) → BatchNorm (batch
//! statistics) → ReLU → MaxPool2, on plain channels-last (NHWC) f32 slices.
//!
//! Forward: per image, one im2col copy ([`super::patches`], shared with the inference path) and
//! one matrix product give the conv output `y`, saved with its per-channel sums; then one pass
//! normalises, applies ReLU and pools, and records which of the 4 window cells won (or that the
//! output was clipped by ReLU, so no gradient flows) and the winner's `y`.
//!
//! Backward: one pass over the pooled positions gives the BatchNorm parameter gradients; a
//! second pass, per image, rebuilds the gradient of `y` (pool, ReLU and BatchNorm backward in
//! one expression), then takes the weight gradient as `patchesᵀ · dy` and the input gradient as
//! `dy · Wᵀ` scattered back by col2im. Images run in parallel; reductions are summed in a fixed
//! order, so the results do not depend on scheduling. The per-element passes are branch-free
//! loops over channels, compiled for the CPU's vector width ([`dispatch`]).

use std::cell::RefCell;

use rayon::prelude::*;

mod passes;

use super::matmul::{View, matmul};
use super::patches::{col2im3x3, im2col3x3_into};
use super::phases::{Phase, timed};
use super::simd::dispatch;
use passes::{add_bias_and_sum, dy_image, pool_image};

/// Shape of one block call: `n` images of `h`×`w`×`cin` in, `cout` channels out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockShape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub cout: usize,
}

impl BlockShape {
    /// Pooled output height and width (a trailing odd row or column is dropped).
    pub fn pooled(&self) -> (usize, usize) {
        (self.h / 2, self.w / 2)
    }

    /// Images per matrix product: enough for about [`PRODUCT_ROWS`] rows (small images
    /// otherwise spend their time packing the weights), but no fewer chunks than threads.
    fn chunk_images(&self) -> usize {
        let by_rows = PRODUCT_ROWS.div_ceil(self.h * self.w);
        let by_threads = self.n.div_ceil(rayon::current_num_threads());
        by_rows.min(by_threads).max(1)
    }

    fn conv_len(&self) -> usize {
        self.h * self.w * self.cout
    }

    fn in_len(&self) -> usize {
        self.h * self.w * self.cin
    }

    fn out_len(&self) -> usize {
        let (ph, pw) = self.pooled();
        ph * pw * self.cout
    }
}

/// Target rows (conv output positions) per matrix product.
const PRODUCT_ROWS: usize = 512;

/// The im2col patches of consecutive images `xc` (each `h`×`w`×`cin`), stacked.
fn im2col_images(s: BlockShape, xc: &[f32], patches: &mut Vec<f32>) {
    let per = s.h * s.w * 9 * s.cin;
    let imgs = xc.len() / s.in_len();
    // Every value is overwritten: only growth needs filling.
    patches.resize(imgs * per, 0.0);
    for (xi, pi) in xc
        .chunks_exact(s.in_len())
        .zip(patches.chunks_exact_mut(per))
    {
        im2col3x3_into(xi, s.h, s.w, s.cin, 0, s.h, s.w, pi);
    }
}

/// Marks a pooled output that ReLU clipped to 0: no gradient flows back from it.
const CLIPPED: u8 = u8::MAX;

/// What the forward pass leaves for the backward pass (besides the input and weights).
pub struct Saved {
    /// The conv output (bias included), `[n][h][w][cout]`.
    pub y: Vec<f32>,
    /// For each pooled output, the winning cell of its 2×2 window (`dy * 2 + dx`) or
    /// [`CLIPPED`].
    pub argmax: Vec<u8>,
    /// For each pooled output, the conv output `y` of the winning cell.
    pub ywin: Vec<f32>,
    pub mean: Vec<f32>,
    pub inv_std: Vec<f32>,
}

/// Forward results: the pooled output `[n][h/2][w/2][cout]`, the batch mean and biased
/// variance (what BatchNorm's running statistics are fed), and the state for the backward.
pub struct Forward {
    pub out: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub saved: Saved,
}

/// Gradients of one block.
pub struct Grads {
    /// `[n][h][w][cin]`, when asked for.
    pub x: Option<Vec<f32>>,
    /// `[(ky * 3 + kx) * cin + c][cout]` (the im2col weight layout).
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

thread_local! {
    /// Per-thread im2col and gradient buffers, reused from call to call.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The forward pass. `x` is `[n][h][w][cin]`, `wmat` `[9 * cin][cout]`.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    s: BlockShape,
    x: &[f32],
    wmat: &[f32],
    bias: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
) -> Forward {
    let BlockShape { n, h, w, cin, cout } = s;
    assert_eq!(x.len(), n * s.in_len(), "conv block input size");
    assert_eq!(wmat.len(), 9 * cin * cout, "conv block weight size");
    assert!(
        h >= 2 && w >= 2 && n > 0,
        "conv block needs a 2×2 image or larger"
    );
    let mut y = vec![0f32; n * s.conv_len()];
    let imgs = s.chunk_images();
    // Conv + bias per chunk of images, with per-channel sums and sums of squares (in f64).
    let sums: Vec<(Vec<f64>, Vec<f64>)> = y
        .par_chunks_mut(imgs * s.conv_len())
        .zip(x.par_chunks(imgs * s.in_len()))
        .map(|(yc, xc)| {
            timed(Phase::FwdConv, || {
                SCRATCH.with(|sc| {
                    let mut sc = sc.borrow_mut();
                    let patches = &mut sc.0;
                    im2col_images(s, xc, patches);
                    let k = 9 * cin;
                    matmul(
                        yc.len() / cout,
                        cout,
                        k,
                        yc,
                        false,
                        View::rows(patches, k),
                        View::rows(wmat, cout),
                    );
                })
            });
            // The bias is added here, in the pass that sums the conv output for the statistics.
            timed(Phase::FwdStats, || {
                dispatch(
                    #[inline(always)]
                    || {
                        let (mut sum, mut sq) = (vec![0f64; cout], vec![0f64; cout]);
                        for row in yc.chunks_exact_mut(cout) {
                            add_bias_and_sum(row, bias, &mut sum, &mut sq);
                        }
                        (sum, sq)
                    },
                )
            })
        })
        .collect();
    let count = (n * h * w) as f64;
    let (mut mean, mut var) = (vec![0f32; cout], vec![0f32; cout]);
    let mut inv_std = vec![0f32; cout];
    for c in 0..cout {
        let sum: f64 = sums.iter().map(|(a, _)| a[c]).sum();
        let sq: f64 = sums.iter().map(|(_, b)| b[c]).sum();
        let m = sum / count;
        let v = (sq / count - m * m).max(0.0);
        mean[c] = m as f32;
        var[c] = v as f32;
        inv_std[c] = (1.0 / (v + epsilon).sqrt()) as f32;
    }
    // Normalise, ReLU and pool: z = y * scale + shift.
    let scale: Vec<f32> = (0..cout).map(|c| gamma[c] * inv_std[c]).collect();
    let shift: Vec<f32> = (0..cout).map(|c| beta[c] - mean[c] * scale[c]).collect();
    let mut out = vec![0f32; n * s.out_len()];
    let mut argmax = vec![0u8; n * s.out_len()];
    let mut ywin = vec![0f32; n * s.out_len()];
    out.par_chunks_mut(s.out_len())
        .zip(argmax.par_chunks_mut(s.out_len()))
        .zip(ywin.par_chunks_mut(s.out_len()))
        .zip(y.par_chunks(s.conv_len()))
        .for_each(|(((oi, ai), wi), yi)| {
            timed(Phase::FwdPool, || {
                pool_image(s, yi, &scale, &shift, oi, ai, wi)
            })
        });
    let saved = Saved {
        y,
        argmax,
        ywin,
        mean: mean.clone(),
        inv_std,
    };
    Forward {
        out,
        mean,
        var,
        saved,
    }
}

/// The backward pass given the output gradient `dout` (`[n][h/2][w/2][cout]`). The input
/// gradient is computed only when `need_x` (the first block's images need none).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    s: BlockShape,
    x: &[f32],
    wmat: &[f32],
    gamma: &[f32],
    saved: &Saved,
    dout: &[f32],
    need_x: bool,
) -> Grads {
    let BlockShape { n, h, w, cin, cout } = s;
    assert_eq!(
        dout.len(),
        n * s.out_len(),
        "conv block output gradient size"
    );
    let Saved {
        y,
        argmax,
        ywin,
        mean,
        inv_std,
    } = saved;
    // Pass 1: BatchNorm's parameter gradients, from the positions the pool let through.
    let partial: Vec<(Vec<f64>, Vec<f64>)> = dout
        .par_chunks(s.out_len())
        .zip(argmax.par_chunks(s.out_len()))
        .zip(ywin.par_chunks(s.out_len()))
        .map(|((gi, ai), wi)| {
            timed(Phase::BwdParams, || {
                dispatch(
                    #[inline(always)]
                    || {
                        let (mut db, mut dg) = (vec![0f64; cout], vec![0f64; cout]);
                        // Slices of exactly `cout` values: no bounds checks in the loop.
                        let (mean, inv_std) = (&mean[..cout], &inv_std[..cout]);
                        let (dbs, dgs) = (&mut db[..cout], &mut dg[..cout]);
                        let rows = gi.chunks_exact(cout).zip(ai.chunks_exact(cout));
                        for ((gr, ar), wr) in rows.zip(wi.chunks_exact(cout)) {
                            let (gr, ar, wr) = (&gr[..cout], &ar[..cout], &wr[..cout]);
                            for c in 0..cout {
                                let g = if ar[c] != CLIPPED { gr[c] } else { 0.0 };
                                let xhat = (wr[c] - mean[c]) * inv_std[c];
                                dbs[c] += g as f64;
                                dgs[c] += g as f64 * xhat as f64;
                            }
                        }
                        (db, dg)
                    },
                )
            })
        })
        .collect();
    let mut dbeta = vec![0f64; cout];
    let mut dgamma = vec![0f64; cout];
    for (db, dg) in &partial {
        for c in 0..cout {
            dbeta[c] += db[c];
            dgamma[c] += dg[c];
        }
    }
    // dy = k1 * dz - k1 * (dbeta + xhat * dgamma) / M, written as a * y + b + k1 * dz.
    let count = (n * h * w) as f64;
    let mut k1 = vec![0f32; cout];
    let mut a = vec![0f32; cout];
    let mut b = vec![0f32; cout];
    for c in 0..cout {
        let k = gamma[c] as f64 * inv_std[c] as f64;
        let k3 = k * dgamma[c] / count * inv_std[c] as f64;
        k1[c] = k as f32;
        a[c] = -k3 as f32;
        b[c] = (k3 * mean[c] as f64 - k * dbeta[c] / count) as f32;
    }
    // Pass 2: dy per image, then the weight, bias and input gradients. Images are split into
    // fixed contiguous groups, each with its own weight-gradient sum.
    let groups = rayon::current_num_threads().clamp(1, n);
    let per = n.div_ceil(groups);
    let groups = n.div_ceil(per);
    let k = 9 * cin;
    let mut dx = if need_x {
        vec![0f32; n * s.in_len()]
    } else {
        Vec::new()
    };
    let dx_chunk = (per * s.in_len()).max(1);
    let mut dx_parts: Vec<Option<&mut [f32]>> = if need_x {
        dx.chunks_mut(dx_chunk).map(Some).collect()
    } else {
        (0..groups).map(|_| None).collect()
    };
    let parts: Vec<(Vec<f32>, Vec<f64>)> = dx_parts
        .par_iter_mut()
        .enumerate()
        .map(|(g, dxg)| {
            let mut dw = vec![0f32; k * cout];
            let mut dbias = vec![0f64; cout];
            SCRATCH.with(|sc| {
                let mut sc = sc.borrow_mut();
                let (patches, dy) = &mut *sc;
                let (first, end) = (g * per, ((g + 1) * per).min(n));
                let imgs = s.chunk_images().min(per);
                for i0 in (first..end).step_by(imgs) {
                    let i1 = (i0 + imgs).min(end);
                    let rows = (i1 - i0) * h * w;
                    timed(Phase::BwdDy, || {
                        // Every value is overwritten: only growth needs filling.
                        dy.resize((i1 - i0) * s.conv_len(), 0.0);
                        for (i, dyi) in (i0..i1).zip(dy.chunks_exact_mut(s.conv_len())) {
                            let pooled = i * s.out_len()..(i + 1) * s.out_len();
                            let yi = &y[i * s.conv_len()..(i + 1) * s.conv_len()];
                            let (gi, ai) = (&dout[pooled.clone()], &argmax[pooled]);
                            dy_image(s, yi, gi, ai, (&a, &b, &k1), dyi, &mut dbias);
                        }
                    });
                    let xs = &x[i0 * s.in_len()..i1 * s.in_len()];
                    timed(Phase::BwdWeight, || {
                        im2col_images(s, xs, patches);
                        matmul(
                            k,
                            cout,
                            rows,
                            &mut dw,
                            true,
                            View::transposed(patches, k),
                            View::rows(dy, cout),
                        );
                    });
                    if let Some(dxg) = dxg.as_deref_mut() {
                        timed(Phase::BwdInput, || {
                            // Reuse the patch buffer for dy · Wᵀ, then scatter it back.
                            matmul(
                                rows,
                                k,
                                cout,
                                patches,
                                false,
                                View::rows(dy, cout),
                                View::transposed(wmat, cout),
                            );
                            let per_img = h * w * k;
                            for (i, dp) in (i0..i1).zip(patches.chunks_exact(per_img)) {
                                let j = i - first;
                                let dxi = &mut dxg[j * s.in_len()..(j + 1) * s.in_len()];
                                col2im3x3(dp, h, w, cin, dxi);
                            }
                        });
                    }
                }
            });
            (dw, dbias)
        })
        .collect();
    drop(dx_parts);
    let mut weight = vec![0f32; k * cout];
    let mut bias = vec![0f64; cout];
    for (dw, db) in &parts {
        for (t, v) in weight.iter_mut().zip(dw) {
            *t += v;
        }
        for (t, v) in bias.iter_mut().zip(db) {
            *t += v;
        }
    }
    Grads {
        x: need_x.then_some(dx),
        weight,
        bias: bias.iter().map(|&v| v as f32).collect(),
        gamma: dgamma.iter().map(|&v| v as f32).collect(),
        beta: dbeta.iter().map(|&v| v as f32).collect(),
    }
}

/// Burn's conv weight `[cout][cin][3][3]` as the im2col right-hand side `[9 * cin][cout]`.
pub fn weight_to_im2col(weight: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    assert_eq!(weight.len(), cout * cin * 9, "conv weight shape");
    let mut m = vec![0f32; weight.len()];
    for o in 0..cout {
        for c in 0..cin {
            for t in 0..9 {
                m[(t * cin + c) * cout + o] = weight[(o * cin + c) * 9 + t];
            }
        }
    }
    m
}

/// The inverse of [`weight_to_im2col`].
pub fn weight_from_im2col(m: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    let mut weight = vec![0f32; m.len()];
    for o in 0..cout {
        for c in 0..cin {
            for t in 0..9 {
                weight[(o * cin + c) * 9 + t] = m[(t * cin + c) * cout + o];
            }
        }
    }
    weight
}
