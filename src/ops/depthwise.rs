//! Depthwise 3×3 convolution (padding 1, stride 1 or 2, one filter per channel, no bias) on
//! NCHW f32 slices, forward and backward, computed directly on each image plane.
//!
//! Each plane is first copied into a zeroed scratch buffer with a border of one: at stride 1 as
//! rows of `w + 2`, at stride 2 split into its four (row, column) parity phases, rows of
//! `wo + 1`. Either way output `(i, j)` sits at flat index `q = i·e + j` (`e` the buffer's row
//! length, the last columns of each row being discarded), and tap `t` of the kernel reads the
//! buffer at `taps[t] + q`: every loop runs over one long contiguous range whatever the plane's
//! width, so it vectorises on the 3×3 and 6×6 maps of the last blocks as well as on the big
//! ones. The output gradient is laid out the same way (zeros in the discarded columns), so the
//! weight gradient is nine dot products over that range and the input gradient a conv of it with
//! the flipped kernel (stride 1) or nine shifted adds into the phases (stride 2).
//!
//! The forward runs over groups of planes in parallel, the backward over channels (each one
//! going over its images in order), so every sum has a fixed order whatever the thread count.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::planes::{FLUSH_BLOCKS, LANES, by_channel, flush, written};
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

    /// Where a plane and its taps lie in the scratch buffers.
    fn layout(&self) -> Layout {
        let (ho, wo) = self.out_hw();
        let (e, phases, rows) = if self.stride == 1 {
            (self.w + 2, 1, self.h + 2)
        } else {
            (wo + 1, 4, ho + 1)
        };
        let phase = rows * e;
        let taps = std::array::from_fn(|t| {
            let (ky, kx) = (t / 3, t % 3);
            if self.stride == 1 {
                ky * e + kx
            } else {
                ((ky % 2) * 2 + kx % 2) * phase + (ky / 2) * e + kx / 2
            }
        });
        let flat = (ho * e).next_multiple_of(LANES);
        Layout {
            e,
            phase,
            taps,
            flat,
            len: (phases * phase).max(taps.iter().max().copied().unwrap_or(0) + flat),
            dy_len: 2 * e + 2 + flat,
        }
    }
}

const TASK_ELEMS: usize = 8192;

/// The scratch layout of one shape (see the module's doc).
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Row length of the bordered plane (stride 1) or of each phase (stride 2).
    e: usize,
    /// Values per phase (stride 2).
    phase: usize,
    /// Where tap `ky·3 + kx` reads, for output 0.
    taps: [usize; 9],
    /// The flat output range `ho · e`, rounded up to whole lane blocks.
    flat: usize,
    /// Length of the input buffer (every tap can read `flat` values).
    len: usize,
    /// Length of the output-gradient buffer: `dy[i][j]` at `(i + 1)·e + j + 1`, so that a
    /// stride-1 conv can read it like an input and `[e + 1..][..flat]` is the flat range.
    dy_len: usize,
}

/// A thread's scratch buffers, reused from call to call.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    dy: Vec<f32>,
    out: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `buf` cleared to `len` zeros.
#[inline(always)]
fn zeroed(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.clear();
    buf.resize(len, 0.0);
    buf
}

/// `plane` (`h`×`w`) into `buf` (`l.len` long, zero outside the plane's places) in the layout
/// of the stride. Only the plane's places are written, so a buffer zeroed once serves every
/// plane of a call.
#[inline(always)]
fn border_into(s: DwShape, l: &Layout, plane: &[f32], buf: &mut [f32]) {
    for (r, row) in plane.chunks_exact(s.w).enumerate() {
        if s.stride == 1 {
            buf[(r + 1) * l.e + 1..][..s.w].copy_from_slice(row);
        } else {
            let (even, odd) = phase_rows(l, r, buf);
            let (pairs, rest) = row.as_chunks::<2>();
            for ((o, e), p) in odd.iter_mut().zip(even.iter_mut()).zip(pairs) {
                *o = p[0];
                *e = p[1];
            }
            if let [last] = rest {
                odd[pairs.len()] = *last;
            }
        }
    }
}

/// Where input row `r` starts in the column phase `px` (stride 2): bordered row `r + 1`,
/// column `c + 1`, so even `c` go to the odd-column phase at `c / 2`, odd `c` to the
/// even-column phase at `(c + 1) / 2`.
#[inline(always)]
fn phase_row(l: &Layout, r: usize, px: usize) -> usize {
    let br = r + 1;
    (br % 2 * 2 + px) * l.phase + br / 2 * l.e + (1 - px)
}

/// The even-column and odd-column phase rows of input row `r` (see [`phase_row`]).
#[inline(always)]
fn phase_rows<'a>(l: &Layout, r: usize, buf: &'a mut [f32]) -> (&'a mut [f32], &'a mut [f32]) {
    let (even, odd) = (phase_row(l, r, 0), phase_row(l, r, 1));
    let (lo, hi) = buf.split_at_mut(odd);
    (&mut lo[even..], hi)
}

/// The inverse of [`border_into`]: the plane's values from `buf` into `plane`.
#[inline(always)]
fn unborder(s: DwShape, l: &Layout, buf: &[f32], plane: &mut [MaybeUninit<f32>]) {
    for (r, row) in plane.chunks_exact_mut(s.w).enumerate() {
        if s.stride == 1 {
            row.write_copy_of_slice(&buf[(r + 1) * l.e + 1..][..s.w]);
        } else {
            let (pairs, rest) = row.as_chunks_mut::<2>();
            let (even, odd) = (&buf[phase_row(l, r, 0)..], &buf[phase_row(l, r, 1)..]);
            for ((p, &o), &e) in pairs.iter_mut().zip(odd).zip(even) {
                p[0].write(o);
                p[1].write(e);
            }
            if let [last] = rest {
                last.write(odd[pairs.len()]);
            }
        }
    }
}

/// `out[q] = Σ k[t] · buf[taps[t] + q]` over the whole of `out`.
#[inline(always)]
fn gather(buf: &[f32], taps: &[usize; 9], k: &[f32; 9], out: &mut [f32]) {
    let n = out.len();
    let t: [&[f32]; 9] = std::array::from_fn(|i| &buf[taps[i]..][..n]);
    for q in 0..n {
        out[q] = k[0] * t[0][q]
            + k[1] * t[1][q]
            + k[2] * t[2][q]
            + k[3] * t[3][q]
            + k[4] * t[4][q]
            + k[5] * t[5][q]
            + k[6] * t[6][q]
            + k[7] * t[7][q]
            + k[8] * t[8][q];
    }
}

/// The `wo` first values of each `e`-long row of `flat` into the `ho`×`wo` plane `dst`.
#[inline(always)]
fn compact(flat: &[f32], e: usize, wo: usize, dst: &mut [MaybeUninit<f32>]) {
    for (d, src) in dst.chunks_exact_mut(wo).zip(flat.chunks(e)) {
        d.write_copy_of_slice(&src[..wo]);
    }
}

/// The 9 weights of channel `ch`.
#[inline(always)]
fn kernel(weight: &[f32], ch: usize) -> [f32; 9] {
    weight[ch * 9..][..9].try_into().expect("9 weights")
}

/// The forward pass: `x` `[n][c][h][w]`, `weight` `[c][3][3]`; returns `[n][c][ho][wo]`.
pub fn forward(s: DwShape, x: &[f32], weight: &[f32]) -> Vec<f32> {
    s.check();
    assert_eq!(x.len(), s.n * s.c * s.h * s.w, "depthwise input size");
    assert_eq!(weight.len(), s.c * 9, "depthwise weight size");
    let (ho, wo) = s.out_hw();
    let (hw, ohw, per) = (s.h * s.w, ho * wo, s.planes_per_task());
    let l = s.layout();
    let fill = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(per * ohw)
            .zip(x.par_chunks(per * hw))
            .enumerate()
            .for_each(|(t, (yc, xc))| {
                SCRATCH.with(|sc| {
                    let sc = &mut *sc.borrow_mut();
                    dispatch(
                        #[inline(always)]
                        || {
                            // Zeroed once: each plane overwrites the same interior.
                            let out = zeroed(&mut sc.out, l.flat);
                            let buf = zeroed(&mut sc.x, l.len);
                            for (p, (yp, xp)) in yc
                                .chunks_exact_mut(ohw)
                                .zip(xc.chunks_exact(hw))
                                .enumerate()
                            {
                                border_into(s, &l, xp, buf);
                                gather(buf, &l.taps, &kernel(weight, (t * per + p) % s.c), out);
                                compact(out, l.e, wo, yp);
                            }
                        },
                    )
                })
            })
    };
    // SAFETY: the chunks cover `y`, and every plane of each is written by `compact`.
    unsafe { written(s.n * s.c * ohw, fill) }
}

/// The gradients of the input (`[n][c][h][w]`, when `want_x`) and of the weight (`[c][3][3]`,
/// when `want_w`) from the input `x` `[n][c][h][w]`, the weight and the output gradient `dy`
/// `[n][c][ho][wo]`.
pub fn backward(
    s: DwShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    want_x: bool,
    want_w: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    s.check();
    let (ho, wo) = s.out_hw();
    let (hw, ohw) = (s.h * s.w, ho * wo);
    assert_eq!(x.len(), s.n * s.c * hw, "depthwise input size");
    assert_eq!(weight.len(), s.c * 9, "depthwise weight size");
    assert_eq!(dy.len(), s.n * s.c * ohw, "depthwise output gradient size");
    let l = s.layout();
    let mut dw = vec![[0f32; 9]; s.c];
    let run = |ch: usize, dx: Option<Vec<&mut [MaybeUninit<f32>]>>| {
        SCRATCH.with(|sc| {
            let sc = &mut *sc.borrow_mut();
            dispatch(
                #[inline(always)]
                || channel_backward(s, &l, ch, x, weight, dy, want_w, dx, sc),
            )
        })
    };
    let dx = if want_x {
        let fill = |out: &mut [MaybeUninit<f32>]| {
            by_channel(out, s.c, hw)
                .into_par_iter()
                .zip(dw.par_iter_mut())
                .enumerate()
                .for_each(|(ch, (planes, dw))| *dw = run(ch, Some(planes)))
        };
        // SAFETY: every plane of every channel is handed to a task, which writes all of it.
        Some(unsafe { written(x.len(), fill) })
    } else {
        dw.par_iter_mut()
            .enumerate()
            .for_each(|(ch, dw)| *dw = run(ch, None));
        None
    };
    (dx, want_w.then(|| dw.concat()))
}

/// One channel of [`backward`]: its weight gradient (zeros unless `want_w`), and its
/// input-gradient planes written into `dx` when given.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn channel_backward(
    s: DwShape,
    l: &Layout,
    ch: usize,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    want_w: bool,
    mut dx: Option<Vec<&mut [MaybeUninit<f32>]>>,
    sc: &mut Scratch,
) -> [f32; 9] {
    let (ho, wo) = s.out_hw();
    let (hw, ohw) = (s.h * s.w, ho * wo);
    let k = kernel(weight, ch);
    let flipped: [f32; 9] = std::array::from_fn(|t| k[8 - t]);
    let mut dw = [0f64; 9];
    let (mut acc, mut pending) = ([[0f32; LANES]; 9], 0);
    // Zeroed once: each image overwrites the same places (but for the stride-2 sums).
    let dyb = zeroed(&mut sc.dy, l.dy_len);
    let xb = zeroed(&mut sc.x, if want_w { l.len } else { 0 });
    let out = zeroed(&mut sc.out, if s.stride == 1 { l.flat } else { l.len });
    for img in 0..s.n {
        let plane = img * s.c + ch;
        for (i, row) in dy[plane * ohw..][..ohw].chunks_exact(wo).enumerate() {
            dyb[(i + 1) * l.e + 1..][..wo].copy_from_slice(row);
        }
        let (dc, _) = dyb[l.e + 1..][..l.flat].as_chunks::<LANES>();
        if want_w {
            border_into(s, l, &x[plane * hw..][..hw], xb);
            for (a, &tap) in acc.iter_mut().zip(&l.taps) {
                let (xc, _) = xb[tap..][..l.flat].as_chunks::<LANES>();
                for (d, xv) in dc.iter().zip(xc) {
                    for lane in 0..LANES {
                        a[lane] += d[lane] * xv[lane];
                    }
                }
            }
            pending += dc.len();
            if pending >= FLUSH_BLOCKS || img + 1 == s.n {
                for (a, w) in acc.iter_mut().zip(&mut dw) {
                    flush(a, w);
                }
                pending = 0;
            }
        }
        let Some(dx) = dx.as_mut() else { continue };
        let dxp = &mut *dx[img];
        if s.stride == 1 {
            // The transposed conv at stride 1 is the conv of dy with the flipped kernel.
            gather(dyb, &l.taps, &flipped, out);
            compact(out, l.e, s.w, dxp);
        } else {
            // Each output gradient goes to the 9 inputs it was computed from.
            out.fill(0.0);
            let dflat = &dyb[l.e + 1..][..l.flat];
            for (t, &kv) in k.iter().enumerate() {
                for (o, &g) in out[l.taps[t]..][..l.flat].iter_mut().zip(dflat) {
                    *o += kv * g;
                }
            }
            unborder(s, l, out, dxp);
        }
    }
    dw.map(|v| v as f32)
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

    /// The gradients by the definition: every output gradient times each of its 9 taps.
    fn naive_backward(s: DwShape, x: &[f32], k: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (ho, wo) = s.out_hw();
        let (mut dx, mut dw) = (vec![0f32; x.len()], vec![0f32; s.c * 9]);
        for p in 0..s.n * s.c {
            for i in 0..ho {
                for j in 0..wo {
                    let g = dy[(p * ho + i) * wo + j];
                    for t in 0..9 {
                        let (r, c) = (
                            (i * s.stride + t / 3) as isize - 1,
                            (j * s.stride + t % 3) as isize - 1,
                        );
                        if r >= 0 && c >= 0 && (r as usize) < s.h && (c as usize) < s.w {
                            let xi = (p * s.h + r as usize) * s.w + c as usize;
                            dx[xi] += k[(p % s.c) * 9 + t] * g;
                            dw[(p % s.c) * 9 + t] += x[xi] * g;
                        }
                    }
                }
            }
        }
        (dx, dw)
    }

    #[test]
    fn backward_matches_the_definition() {
        for (h, w, stride) in [
            (5, 7, 1),
            (5, 7, 2),
            (1, 1, 2),
            (6, 4, 2),
            (2, 3, 1),
            (9, 8, 2),
        ] {
            let s = DwShape {
                n: 2,
                c: 3,
                h,
                w,
                stride,
            };
            let (ho, wo) = s.out_hw();
            let x: Vec<f32> = (0..s.n * s.c * h * w)
                .map(|i| (i % 7) as f32 - 3.0)
                .collect();
            let k: Vec<f32> = (0..27).map(|i| (i % 5) as f32 * 0.5 - 1.0).collect();
            let dy: Vec<f32> = (0..s.n * s.c * ho * wo)
                .map(|i| (i % 3) as f32 - 0.75)
                .collect();
            let (dx, dw) = backward(s, &x, &k, &dy, true, true);
            let (want_dx, want_dw) = naive_backward(s, &x, &k, &dy);
            for (got, want) in [(dx.unwrap(), want_dx), (dw.unwrap(), want_dw)] {
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-4, "{s:?}: {g} vs {w}");
                }
            }
            let (dx, dw) = backward(s, &x, &k, &dy, false, true);
            assert!(dx.is_none() && dw.is_some());
        }
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
