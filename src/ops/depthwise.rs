//! Depthwise 3×3 convolution (padding 1, stride 1 or 2, one filter per channel, no bias) on
//! NCHW f32 slices, forward and backward, computed directly on each image plane.
//!
//! Each plane is first copied into a zero-bordered buffer (at stride 2 with each row's even and
//! odd columns apart), so the inner loops run over contiguous runs without edge tests and
//! vectorise at both strides. The input gradient scatters into a bordered buffer the same way
//! and copies its interior out; the weight gradient accumulates nine taps element-wise over
//! every row of the batch, per channel. Planes run in parallel; reductions
//! are summed in a fixed order, so results do not depend on scheduling.

use std::cell::RefCell;

use rayon::prelude::*;

use super::simd::dispatch;

/// Shape of one depthwise call: `n` images of `c` planes of `h`×`w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DwShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub stride: usize,
}

impl DwShape {
    /// Output height and width (as a 3×3 conv with padding 1 gives them).
    pub fn out_hw(&self) -> (usize, usize) {
        (
            (self.h - 1) / self.stride + 1,
            (self.w - 1) / self.stride + 1,
        )
    }

    fn check(&self) {
        assert!(
            self.stride == 1 || self.stride == 2,
            "depthwise stride must be 1 or 2"
        );
        assert!(
            self.h > 0 && self.w > 0,
            "depthwise input must not be empty"
        );
    }

    /// Planes per parallel task: enough work (about [`TASK_ELEMS`] input elements) to cover a
    /// task's overhead on the small planes of the last blocks.
    fn planes_per_task(&self) -> usize {
        TASK_ELEMS.div_ceil(self.h * self.w).max(1)
    }
}

const TASK_ELEMS: usize = 8192;

thread_local! {
    /// The bordered plane of the current thread, reused from call to call.
    static BORDERED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Bordered planes have rows of `w + 2` values. At stride 2 each row is stored split: its even
/// columns first, then its odd ones, so that every tap of a stride-2 output row is a contiguous
/// run and all the loops below are the stride-1 loops.
impl DwShape {
    fn row_len(&self) -> usize {
        self.w + 2
    }

    /// Where the even columns of a split row end.
    fn evens(&self) -> usize {
        self.row_len().div_ceil(2)
    }

    /// The run of a bordered row that tap `kx` (0, 1, 2) of the `wo` outputs of a row reads.
    fn tap(&self, kx: usize) -> std::ops::Range<usize> {
        let wo = self.out_hw().1;
        let start = match (self.stride, kx) {
            (1, _) => kx,
            (_, 0) => 0,
            (_, 1) => self.evens(),
            _ => 1,
        };
        start..start + wo
    }
}

/// `plane` (`h`×`w`) into `buf` with a zero border of one on every side, in the row layout of
/// the stride (see [`DwShape::tap`]).
#[inline(always)]
fn border_into(s: DwShape, plane: &[f32], buf: &mut Vec<f32>) {
    let bw = s.row_len();
    buf.clear();
    buf.resize((s.h + 2) * bw, 0.0);
    for (src, dst) in plane.chunks_exact(s.w).zip(buf[bw..].chunks_exact_mut(bw)) {
        if s.stride == 1 {
            dst[1..=s.w].copy_from_slice(src);
        } else {
            // Column c + 1 of the bordered row: odd columns hold even c, even columns odd c.
            let (even, odd) = dst.split_at_mut(s.evens());
            for (o, &v) in odd.iter_mut().zip(src.iter().step_by(2)) {
                *o = v;
            }
            for (e, &v) in even[1..].iter_mut().zip(src.iter().skip(1).step_by(2)) {
                *e = v;
            }
        }
    }
}

/// The interior of a bordered plane `buf` back into `plane` (`h`×`w`).
#[inline(always)]
fn unborder(s: DwShape, buf: &[f32], plane: &mut [f32]) {
    let bw = s.row_len();
    for (dst, src) in plane.chunks_exact_mut(s.w).zip(buf[bw..].chunks_exact(bw)) {
        if s.stride == 1 {
            dst.copy_from_slice(&src[1..=s.w]);
        } else {
            let (even, odd) = src.split_at(s.evens());
            for (c, d) in dst.iter_mut().enumerate() {
                *d = if c % 2 == 0 {
                    odd[c / 2]
                } else {
                    even[c.div_ceil(2)]
                };
            }
        }
    }
}

/// One output plane from a bordered input plane `xb` and 9 weights.
#[inline(always)]
fn plane_forward(s: DwShape, xb: &[f32], k: &[f32], y: &mut [f32]) {
    let bw = s.row_len();
    let wo = s.out_hw().1;
    let taps = [s.tap(0), s.tap(1), s.tap(2)];
    for (i, row) in y.chunks_exact_mut(wo).enumerate() {
        row.fill(0.0);
        for ky in 0..3 {
            let src = &xb[(i * s.stride + ky) * bw..][..bw];
            let (k0, k1, k2) = (k[ky * 3], k[ky * 3 + 1], k[ky * 3 + 2]);
            let (a, b, c) = (
                &src[taps[0].clone()],
                &src[taps[1].clone()],
                &src[taps[2].clone()],
            );
            for j in 0..wo {
                row[j] += k0 * a[j] + k1 * b[j] + k2 * c[j];
            }
        }
    }
}

/// The forward pass: `x` `[n][c][h][w]`, `weight` `[c][3][3]`; returns `[n][c][ho][wo]`.
pub fn forward(s: DwShape, x: &[f32], weight: &[f32]) -> Vec<f32> {
    s.check();
    assert_eq!(x.len(), s.n * s.c * s.h * s.w, "depthwise input size");
    assert_eq!(weight.len(), s.c * 9, "depthwise weight size");
    let (ho, wo) = s.out_hw();
    let (hw, ohw, per) = (s.h * s.w, ho * wo, s.planes_per_task());
    let mut y = vec![0f32; s.n * s.c * ohw];
    y.par_chunks_mut(per * ohw)
        .zip(x.par_chunks(per * hw))
        .enumerate()
        .for_each(|(t, (yc, xc))| {
            BORDERED.with(|buf| {
                let buf = &mut buf.borrow_mut();
                dispatch(
                    #[inline(always)]
                    || {
                        for (p, (yp, xp)) in yc
                            .chunks_exact_mut(ohw)
                            .zip(xc.chunks_exact(hw))
                            .enumerate()
                        {
                            let ch = (t * per + p) % s.c;
                            border_into(s, xp, buf);
                            plane_forward(s, buf, &weight[ch * 9..][..9], yp);
                        }
                    },
                )
            })
        });
    y
}

/// The input gradient: `dy` `[n][c][ho][wo]`, `weight` `[c][3][3]`; returns `[n][c][h][w]`.
pub fn backward_input(s: DwShape, dy: &[f32], weight: &[f32]) -> Vec<f32> {
    s.check();
    let (ho, wo) = s.out_hw();
    assert_eq!(
        dy.len(),
        s.n * s.c * ho * wo,
        "depthwise output gradient size"
    );
    assert_eq!(weight.len(), s.c * 9, "depthwise weight size");
    let (hw, ohw, per) = (s.h * s.w, ho * wo, s.planes_per_task());
    let bw = s.row_len();
    let taps = [s.tap(0), s.tap(1), s.tap(2)];
    let mut dx = vec![0f32; s.n * s.c * hw];
    dx.par_chunks_mut(per * hw)
        .zip(dy.par_chunks(per * ohw))
        .enumerate()
        .for_each(|(t, (dxc, dyc))| {
            BORDERED.with(|buf| {
                let buf = &mut buf.borrow_mut();
                dispatch(
                    #[inline(always)]
                    || {
                        for (p, (dxp, dyp)) in dxc
                            .chunks_exact_mut(hw)
                            .zip(dyc.chunks_exact(ohw))
                            .enumerate()
                        {
                            let k = &weight[((t * per + p) % s.c) * 9..][..9];
                            buf.clear();
                            buf.resize((s.h + 2) * bw, 0.0);
                            for (i, g) in dyp.chunks_exact(wo).enumerate() {
                                for ky in 0..3 {
                                    let dst = &mut buf[(i * s.stride + ky) * bw..][..bw];
                                    for (kx, tap) in taps.iter().enumerate() {
                                        let kv = k[ky * 3 + kx];
                                        for (d, &v) in dst[tap.clone()].iter_mut().zip(g) {
                                            *d += kv * v;
                                        }
                                    }
                                }
                            }
                            unborder(s, buf, dxp);
                        }
                    },
                )
            })
        });
    dx
}

/// The weight gradient: `x` `[n][c][h][w]`, `dy` `[n][c][ho][wo]`; returns `[c][3][3]`.
///
/// Per channel, each of the 9 taps accumulates `dy · x` element-wise into a row of `wo` lanes
/// over every output row of every image (so the loops vectorise), and the lanes are summed at
/// the end.
pub fn backward_weight(s: DwShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
    s.check();
    let (ho, wo) = s.out_hw();
    let (hw, ohw) = (s.h * s.w, ho * wo);
    assert_eq!(x.len(), s.n * s.c * hw, "depthwise input size");
    assert_eq!(dy.len(), s.n * s.c * ohw, "depthwise output gradient size");
    let bw = s.row_len();
    let taps = [s.tap(0), s.tap(1), s.tap(2)];
    let per_channel: Vec<[f32; 9]> = (0..s.c)
        .into_par_iter()
        .map(|ch| {
            BORDERED.with(|buf| {
                let buf = &mut buf.borrow_mut();
                dispatch(
                    #[inline(always)]
                    || {
                        let mut lanes = vec![0f32; 9 * wo];
                        for img in 0..s.n {
                            let plane = (img * s.c + ch) * hw;
                            border_into(s, &x[plane..plane + hw], buf);
                            let g = &dy[(img * s.c + ch) * ohw..][..ohw];
                            for (i, gr) in g.chunks_exact(wo).enumerate() {
                                for ky in 0..3 {
                                    let src = &buf[(i * s.stride + ky) * bw..][..bw];
                                    for (kx, tap) in taps.iter().enumerate() {
                                        let acc = &mut lanes[(ky * 3 + kx) * wo..][..wo];
                                        for ((a, &v), &xv) in
                                            acc.iter_mut().zip(gr).zip(&src[tap.clone()])
                                        {
                                            *a += v * xv;
                                        }
                                    }
                                }
                            }
                        }
                        let mut out = [0f32; 9];
                        for (o, l) in out.iter_mut().zip(lanes.chunks_exact(wo)) {
                            *o = l.iter().map(|&v| v as f64).sum::<f64>() as f32;
                        }
                        out
                    },
                )
            })
        })
        .collect();
    per_channel.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one output at a time.
    fn naive(s: DwShape, x: &[f32], k: &[f32]) -> Vec<f32> {
        let (ho, wo) = s.out_hw();
        let mut y = Vec::new();
        for p in 0..s.n * s.c {
            for i in 0..ho {
                for j in 0..wo {
                    let mut v = 0.0;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (r, c) = (
                                (i * s.stride + ky) as isize - 1,
                                (j * s.stride + kx) as isize - 1,
                            );
                            if r >= 0 && c >= 0 && (r as usize) < s.h && (c as usize) < s.w {
                                v += k[(p % s.c) * 9 + ky * 3 + kx]
                                    * x[p * s.h * s.w + r as usize * s.w + c as usize];
                            }
                        }
                    }
                    y.push(v);
                }
            }
        }
        y
    }

    #[test]
    fn forward_matches_the_definition() {
        for (h, w, stride) in [(5, 7, 1), (5, 7, 2), (1, 1, 2), (6, 4, 2), (2, 3, 1)] {
            let s = DwShape {
                n: 2,
                c: 3,
                h,
                w,
                stride,
            };
            let x: Vec<f32> = (0..s.n * s.c * h * w)
                .map(|i| (i % 7) as f32 - 3.0)
                .collect();
            let k: Vec<f32> = (0..27).map(|i| (i % 5) as f32 * 0.5 - 1.0).collect();
            let got = forward(s, &x, &k);
            let want = naive(s, &x, &k);
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "{s:?}: {g} vs {w}");
            }
        }
    }
}
