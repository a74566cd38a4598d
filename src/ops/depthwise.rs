//! Depthwise 3×3 convolution (padding 1, stride 1 or 2, one filter per channel, no bias) on
//! NCHW f32 slices, forward and backward, computed directly on each image plane.
//!
//! Each plane is first copied into a zero-bordered buffer, so the inner loops run over whole
//! rows without edge tests (and vectorise at stride 1). The input gradient scatters into a
//! bordered buffer the same way and copies its interior out; the weight gradient is nine dot
//! products per plane, summed over the batch per channel. Planes run in parallel; reductions
//! are summed in a fixed order, so results do not depend on scheduling.

use std::cell::RefCell;

use rayon::prelude::*;

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

/// `plane` (`h`×`w`) into `buf` with a zero border of one on every side.
fn border_into(plane: &[f32], h: usize, w: usize, buf: &mut Vec<f32>) {
    let bw = w + 2;
    buf.clear();
    buf.resize((h + 2) * bw, 0.0);
    for (src, dst) in plane.chunks_exact(w).zip(buf[bw..].chunks_exact_mut(bw)) {
        dst[1..=w].copy_from_slice(src);
    }
}

/// One output plane from a bordered input plane `xb` (row length `bw`) and 9 weights.
fn plane_forward(s: DwShape, xb: &[f32], k: &[f32], y: &mut [f32]) {
    let bw = s.w + 2;
    let (ho, wo) = s.out_hw();
    for (i, row) in y.chunks_exact_mut(wo).enumerate().take(ho) {
        row.fill(0.0);
        for ky in 0..3 {
            let src = &xb[(i * s.stride + ky) * bw..][..bw];
            let (k0, k1, k2) = (k[ky * 3], k[ky * 3 + 1], k[ky * 3 + 2]);
            if s.stride == 1 {
                let (a, b, c) = (&src[..wo], &src[1..wo + 1], &src[2..wo + 2]);
                for j in 0..wo {
                    row[j] += k0 * a[j] + k1 * b[j] + k2 * c[j];
                }
            } else {
                for (j, r) in row.iter_mut().enumerate() {
                    let t = &src[2 * j..2 * j + 3];
                    *r += k0 * t[0] + k1 * t[1] + k2 * t[2];
                }
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
                for (p, (yp, xp)) in yc
                    .chunks_exact_mut(ohw)
                    .zip(xc.chunks_exact(hw))
                    .enumerate()
                {
                    let ch = (t * per + p) % s.c;
                    border_into(xp, s.h, s.w, buf);
                    plane_forward(s, buf, &weight[ch * 9..][..9], yp);
                }
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
    let bw = s.w + 2;
    let mut dx = vec![0f32; s.n * s.c * hw];
    dx.par_chunks_mut(per * hw)
        .zip(dy.par_chunks(per * ohw))
        .enumerate()
        .for_each(|(t, (dxc, dyc))| {
            BORDERED.with(|buf| {
                let buf = &mut buf.borrow_mut();
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
                            let (k0, k1, k2) = (k[ky * 3], k[ky * 3 + 1], k[ky * 3 + 2]);
                            if s.stride == 1 {
                                for (d, &v) in dst[..wo].iter_mut().zip(g) {
                                    *d += k0 * v;
                                }
                                for (d, &v) in dst[1..wo + 1].iter_mut().zip(g) {
                                    *d += k1 * v;
                                }
                                for (d, &v) in dst[2..wo + 2].iter_mut().zip(g) {
                                    *d += k2 * v;
                                }
                            } else {
                                for (j, &v) in g.iter().enumerate() {
                                    let d = &mut dst[2 * j..2 * j + 3];
                                    d[0] += k0 * v;
                                    d[1] += k1 * v;
                                    d[2] += k2 * v;
                                }
                            }
                        }
                    }
                    for (dst, src) in dxp.chunks_exact_mut(s.w).zip(buf[bw..].chunks_exact(bw)) {
                        dst.copy_from_slice(&src[1..=s.w]);
                    }
                }
            })
        });
    dx
}

/// The weight gradient: `x` `[n][c][h][w]`, `dy` `[n][c][ho][wo]`; returns `[c][3][3]`.
pub fn backward_weight(s: DwShape, x: &[f32], dy: &[f32]) -> Vec<f32> {
    s.check();
    let (ho, wo) = s.out_hw();
    let (hw, ohw) = (s.h * s.w, ho * wo);
    assert_eq!(x.len(), s.n * s.c * hw, "depthwise input size");
    assert_eq!(dy.len(), s.n * s.c * ohw, "depthwise output gradient size");
    let bw = s.w + 2;
    let per_channel: Vec<[f32; 9]> = (0..s.c)
        .into_par_iter()
        .map(|ch| {
            BORDERED.with(|buf| {
                let buf = &mut buf.borrow_mut();
                let mut acc = [0f64; 9];
                for img in 0..s.n {
                    let plane = (img * s.c + ch) * hw;
                    border_into(&x[plane..plane + hw], s.h, s.w, buf);
                    let g = &dy[(img * s.c + ch) * ohw..][..ohw];
                    let mut sums = [0f32; 9];
                    for (i, gr) in g.chunks_exact(wo).enumerate() {
                        for ky in 0..3 {
                            let src = &buf[(i * s.stride + ky) * bw..][..bw];
                            for kx in 0..3 {
                                sums[ky * 3 + kx] += if s.stride == 1 {
                                    dot(gr, &src[kx..kx + wo])
                                } else {
                                    gr.iter()
                                        .enumerate()
                                        .map(|(j, &v)| v * src[2 * j + kx])
                                        .sum::<f32>()
                                };
                            }
                        }
                    }
                    for (a, v) in acc.iter_mut().zip(sums) {
                        *a += v as f64;
                    }
                }
                acc.map(|v| v as f32)
            })
        })
        .collect();
    per_channel.concat()
}

/// `a · b` over 8 lanes (so it vectorises), then the lanes summed.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
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
