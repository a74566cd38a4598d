//! The per-element passes of the conv block around its matrix products: the bias and the
//! batch sums, normalise + ReLU + pool forward, and the conv output's gradient backward. Each
//! is a branch-free loop over the channels of one position, on slices cut to exactly `cout`
//! values so the compiler drops the bounds checks and vectorises it for the width
//! [`dispatch`] picks.

use super::super::simd::dispatch;
use super::{BlockShape, CLIPPED};

/// Adds `bias` to one row of conv outputs and each value and its square to the channel sums.
#[inline(always)]
pub(super) fn add_bias_and_sum(row: &mut [f32], bias: &[f32], sum: &mut [f64], sq: &mut [f64]) {
    let n = row.len();
    let (bias, sum, sq) = (&bias[..n], &mut sum[..n], &mut sq[..n]);
    for c in 0..n {
        let v = row[c] + bias[c];
        row[c] = v;
        let v = v as f64;
        sum[c] += v;
        sq[c] += v * v;
    }
}

/// Normalises (`y * scale + shift`), applies ReLU and max-pools one image's conv output `yi`,
/// writing the pooled output `oi`, each window's winning cell `ai` and the winner's `y` `wi`.
/// The first of equal values wins, as in Burn's max-pool.
#[allow(clippy::too_many_arguments)]
pub(super) fn pool_image(
    s: BlockShape,
    yi: &[f32],
    scale: &[f32],
    shift: &[f32],
    oi: &mut [f32],
    ai: &mut [u8],
    wi: &mut [f32],
) {
    let (cout, w) = (s.cout, s.w);
    let (ph, pw) = s.pooled();
    // Slices of exactly `cout` values, so the channel loops need no bounds checks.
    let (scale, shift) = (&scale[..cout], &shift[..cout]);
    dispatch(
        #[inline(always)]
        || {
            for py in 0..ph {
                for px in 0..pw {
                    let o = (py * pw + px) * cout;
                    let cell =
                        |d: usize| &yi[((2 * py + d / 2) * w + 2 * px + d % 2) * cout..][..cout];
                    let cells = [cell(0), cell(1), cell(2), cell(3)];
                    let (oo, aa, ww) = (
                        &mut oi[o..][..cout],
                        &mut ai[o..][..cout],
                        &mut wi[o..][..cout],
                    );
                    pool_window(cells, scale, shift, oo, aa, ww);
                }
            }
        },
    )
}

/// One 2×2 window of [`pool_image`] over all channels. (A function of its own so that the
/// slices are known not to overlap and the loop vectorises.)
#[inline(always)]
fn pool_window(
    cells: [&[f32]; 4],
    scale: &[f32],
    shift: &[f32],
    oo: &mut [f32],
    aa: &mut [u8],
    ww: &mut [f32],
) {
    let n = oo.len();
    let [c0, c1, c2, c3] = cells.map(|c| &c[..n]);
    let (scale, shift, aa, ww) = (&scale[..n], &shift[..n], &mut aa[..n], &mut ww[..n]);
    for c in 0..n {
        let (sc, sh) = (scale[c], shift[c]);
        let (mut best, mut yb, mut at) = (c0[c] * sc + sh, c0[c], 0u8);
        for (d, v) in [(1u8, c1[c]), (2, c2[c]), (3, c3[c])] {
            let z = v * sc + sh;
            let take = z > best;
            best = if take { z } else { best };
            yb = if take { v } else { yb };
            at = if take { d } else { at };
        }
        let keep = best > 0.0;
        oo[c] = if keep { best } else { 0.0 };
        aa[c] = if keep { at } else { CLIPPED };
        ww[c] = yb;
    }
}

/// One cell `d` of a 2×2 window in [`dy_image`]: `dr = a * yr + b (+ k1 * go where d won)`,
/// each value also added to `part`.
#[inline(always)]
fn dy_cell(
    d: u8,
    (yr, go, ao): (&[f32], &[f32], &[u8]),
    (a, b, k1): (&[f32], &[f32], &[f32]),
    dr: &mut [f32],
    part: &mut [f32],
) {
    let n = dr.len();
    let (yr, go, ao, a, b, k1, part) = (
        &yr[..n],
        &go[..n],
        &ao[..n],
        &a[..n],
        &b[..n],
        &k1[..n],
        &mut part[..n],
    );
    for c in 0..n {
        let base = a[c] * yr[c] + b[c];
        dr[c] = if ao[c] == d {
            base + k1[c] * go[c]
        } else {
            base
        };
        part[c] += dr[c];
    }
}

/// The gradient `dy` of one image's conv output: `a * y + b` everywhere, plus `k1 * g` at each
/// window's winner (BatchNorm, ReLU and pool backward in one expression). Adds each channel's
/// sum of `dy` (the bias gradient) to `dbias`, through f32 partial sums per pair of rows.
#[allow(clippy::too_many_arguments)]
pub(super) fn dy_image(
    s: BlockShape,
    yi: &[f32],
    gi: &[f32],
    ai: &[u8],
    (a, b, k1): (&[f32], &[f32], &[f32]),
    dyi: &mut [f32],
    dbias: &mut [f64],
) {
    let (cout, h, w) = (s.cout, s.h, s.w);
    let (ph, pw) = s.pooled();
    // Slices of exactly `cout` values, so the channel loops need no bounds checks.
    let (a, b, k1) = (&a[..cout], &b[..cout], &k1[..cout]);
    let dbias = &mut dbias[..cout];
    let mut part = vec![0f32; cout];
    dispatch(
        #[inline(always)]
        || {
            // A cell outside every window (an odd last row or column): cell 4 never wins, so
            // its output gradient (given as `a`) is never read.
            let no_win = vec![0u8; cout];
            let plain = |at: usize, dyi: &mut [f32], part: &mut [f32]| {
                let cell = (&yi[at..][..cout], a, &no_win[..]);
                dy_cell(4, cell, (a, b, k1), &mut dyi[at..][..cout], part);
            };
            let flush = |part: &mut [f32], dbias: &mut [f64]| {
                for (acc, p) in dbias.iter_mut().zip(part.iter_mut()) {
                    *acc += *p as f64;
                    *p = 0.0;
                }
            };
            for py in 0..ph {
                for px in 0..pw {
                    let o = (py * pw + px) * cout;
                    let (go, ao) = (&gi[o..][..cout], &ai[o..][..cout]);
                    for d in 0..4u8 {
                        let at = ((2 * py + d as usize / 2) * w + 2 * px + d as usize % 2) * cout;
                        let cell = (&yi[at..][..cout], go, ao);
                        dy_cell(d, cell, (a, b, k1), &mut dyi[at..][..cout], &mut part);
                    }
                }
                if w % 2 == 1 {
                    for dyr in 0..2 {
                        plain(((2 * py + dyr) * w + w - 1) * cout, dyi, &mut part);
                    }
                }
                flush(&mut part, dbias);
            }
            if h % 2 == 1 {
                for x in 0..w {
                    plain(((h - 1) * w + x) * cout, dyi, &mut part);
                }
                flush(&mut part, dbias);
            }
        },
    )
}
