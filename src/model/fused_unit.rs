//! One inverted residual block of the fused MobileNetV2 (1×1 expand → depthwise 3×3 → 1×1
//! project), run band by band of output rows, so its expanded map (six times the block's
//! channels) only ever lives in a buffer small enough to stay in cache.
//!
//! A band expands just the input rows its depthwise taps read (rows it shares with the band
//! before are kept, not recomputed), runs its depthwise rows into a second small buffer, and
//! projects those straight into the block's output, then adds the bias and the residual. A lone
//! image splits its output rows across threads, each part with its own buffers, or on the last
//! blocks' small maps its hidden channels.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::fused::{matmul, matmul_strided};
use super::fused_conv::{FusedConv, Kind};
use super::fused_kernels as kernels;

/// Bytes of expanded rows one band aims for: well inside a core's L2 cache.
const BAND_BYTES: usize = 96 * 1024;

/// Below this many output rows per thread, a block splits its hidden channels across threads
/// rather than its rows (measured on MobileNetV2 at 96 and 224 px, batch 1, 2 threads).
const ROWS_PER_THREAD: usize = 8;

/// Hidden channels per group of a split block are a multiple of this: one AVX2 register.
const GROUP_ALIGN: usize = 8;

thread_local! {
    /// Each thread's buffers for a band's expanded rows and depthwise output.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// One inverted residual block: an optional 1×1 expansion, the depthwise 3×3, the 1×1
/// projection, and whether the block's input is added at the end.
#[derive(Debug, Clone)]
pub struct FusedUnit {
    expand: Option<FusedConv>,
    depthwise: FusedConv,
    project: FusedConv,
    residual: bool,
}

impl FusedUnit {
    /// The block from its convs in order: `[depthwise, project]` or `[expand, depthwise,
    /// project]`. A residual block keeps its shape (stride 1, as many channels out as in).
    pub fn new(convs: Vec<FusedConv>, residual: bool) -> Self {
        let mut convs = convs.into_iter();
        let (expand, depthwise, project) = match (convs.next(), convs.next(), convs.next()) {
            (Some(d), Some(p), None) => (None, d, p),
            (Some(e), Some(d), Some(p)) if convs.next().is_none() => (Some(e), d, p),
            _ => panic!("an inverted residual block has 2 or 3 convs"),
        };
        let hidden = depthwise.cin;
        assert!(
            expand
                .as_ref()
                .is_none_or(|e| e.kind == Kind::Pointwise && e.cout == hidden)
                && depthwise.kind == Kind::Depthwise
                && project.kind == Kind::Pointwise
                && project.cin == hidden,
            "an inverted residual block is [1×1] → depthwise 3×3 → 1×1"
        );
        let cin = expand.as_ref().map_or(hidden, |e| e.cin);
        assert!(
            !residual || (depthwise.stride == 1 && cin == project.cout),
            "a residual block keeps its shape"
        );
        Self {
            expand,
            depthwise,
            project,
            residual,
        }
    }

    /// The block on an `h`×`w` channels-last input: its output and the output's height and
    /// width. `threads` > 1 splits the work over that many threads: the output rows, or the
    /// hidden channels where there are few rows.
    pub(super) fn run(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        threads: usize,
    ) -> (Vec<f32>, usize, usize) {
        // Output rows per band, so that the expanded rows a band reads come near BAND_BYTES.
        let band = BAND_BYTES / (4 * w * self.depthwise.cin * self.depthwise.stride);
        let by_channels = self.depthwise.out_side(h) < ROWS_PER_THREAD * threads;
        self.run_in_bands(x, (h, w), threads, band.max(1), by_channels)
    }

    /// [`Self::run`] with `band` output rows per band. Threads split the output rows, or with
    /// `by_channels` (for a block with an expansion) the hidden channels, one group per thread:
    /// a group's expansion and depthwise conv need no other group, and the projection is the
    /// sum of the groups' partial products. A split by rows has each part expand again the
    /// rows it shares with its neighbours, and leaves threads idle on the last blocks' few
    /// rows; a split by channels makes smaller products and adds a pass that sums them.
    fn run_in_bands(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        threads: usize,
        band: usize,
        by_channels: bool,
    ) -> (Vec<f32>, usize, usize) {
        let (oh, ow) = (self.depthwise.out_side(h), self.depthwise.out_side(w));
        let hidden = self.depthwise.cin;
        let row = ow * self.project.cout;
        let groups = threads.min(hidden / GROUP_ALIGN);
        if by_channels && self.expand.is_some() && groups > 1 {
            // Group edges on multiples of GROUP_ALIGN, so each group's depthwise runs in
            // whole register blocks.
            let edge = |g: usize| {
                (g * hidden / groups)
                    .next_multiple_of(GROUP_ALIGN)
                    .min(hidden)
            };
            let mut partials: Vec<Vec<f32>> = (0..groups)
                .into_par_iter()
                .map(|g| {
                    let mut part = vec![0f32; oh * row];
                    self.rows(x, (h, w), 0..oh, edge(g)..edge(g + 1), band, &mut part);
                    part
                })
                .collect();
            let mut out = partials.swap_remove(0);
            for part in &partials {
                for (o, p) in out.iter_mut().zip(part) {
                    *o += p;
                }
            }
            let residual = self.residual.then_some(x);
            kernels::epilogue(&mut out, &self.project.bias, residual, self.project.relu6);
            return (out, oh, ow);
        }
        let mut out = vec![0f32; oh * row];
        let per_part = oh.div_ceil(threads.max(1));
        let part = |(i, dst): (usize, &mut [f32])| {
            let first = i * per_part;
            self.rows(
                x,
                (h, w),
                first..first + dst.len() / row,
                0..hidden,
                band,
                dst,
            );
        };
        if threads > 1 && oh > 1 {
            out.par_chunks_mut(per_part * row)
                .enumerate()
                .for_each(part);
        } else {
            part((0, &mut out));
        }
        (out, oh, ow)
    }

    /// Output rows `rows` of the block into `dst`, `band` rows at a time, from hidden channels
    /// `group`: all of them, or for an expanded block a group of them, which gives the
    /// projection's partial product alone (no bias, residual or ReLU6).
    fn rows(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        rows: Range<usize>,
        group: Range<usize>,
        band: usize,
        dst: &mut [f32],
    ) {
        let dw = &self.depthwise;
        let (c, stride) = (group.len(), dw.stride);
        let (ow, hidden_row) = (dw.out_side(w), w * c);
        let band = band.clamp(1, rows.len().max(1));
        // This thread's buffers, grown (never shrunk) to the largest band so far: every value a
        // band reads is written first, so old contents do no harm and nothing is zeroed twice.
        SCRATCH.with_borrow_mut(|(expanded, mid)| {
            let most = (band * stride + 2).min(h) * hidden_row;
            if expanded.len() < most {
                expanded.resize(most, 0.0);
            }
            if mid.len() < band * ow * c {
                mid.resize(band * ow * c, 0.0);
            }
            self.bands(x, (h, w), rows, group, band, expanded, mid, dst);
        });
    }

    /// [`Self::rows`] with this thread's buffers for the expanded rows (as many as a band reads)
    /// and the depthwise output (`band` rows).
    #[allow(clippy::too_many_arguments)]
    fn bands(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        rows: Range<usize>,
        group: Range<usize>,
        band: usize,
        expanded: &mut [f32],
        mid: &mut [f32],
        dst: &mut [f32],
    ) {
        let (dw, project) = (&self.depthwise, &self.project);
        let (hidden, stride, cout) = (dw.cin, dw.stride, project.cout);
        let c = group.len();
        assert!(
            c == hidden || self.expand.is_some(),
            "only an expanded block splits its channels"
        );
        let ow = dw.out_side(w);
        // The input rows that output rows a..b read (padding 1).
        let reads =
            |a: usize, b: usize| (a * stride).saturating_sub(1)..((b - 1) * stride + 2).min(h);
        let hidden_row = w * c;
        // Expanded rows `held` of the input, in order, from the start of `expanded`.
        let mut held = 0..0;
        let mut a = rows.start;
        while a < rows.end {
            let b = (a + band).min(rows.end);
            let need = reads(a, b);
            let input: &[f32] = match &self.expand {
                None => &x[need.start * hidden_row..need.end * hidden_row],
                Some(e) => {
                    // Keep the rows this band shares with the last, then expand the new ones.
                    let (from, kept) = if held.contains(&need.start) {
                        (
                            (need.start - held.start) * hidden_row,
                            held.end - need.start,
                        )
                    } else {
                        (0, 0)
                    };
                    expanded.copy_within(from..from + kept * hidden_row, 0);
                    let fresh = need.start + kept..need.end;
                    let out = &mut expanded[kept * hidden_row..need.len() * hidden_row];
                    let src = &x[fresh.start * w * e.cin..fresh.end * w * e.cin];
                    // The group's columns of the expansion's weights (`[cin][hidden]`).
                    let weight = (&e.weight[group.start..], hidden);
                    matmul_strided(fresh.len() * w, c, e.cin, src, weight, out, false, 1);
                    kernels::epilogue(out, &e.bias[group.clone()], None, e.relu6);
                    held = need.clone();
                    &expanded[..need.len() * hidden_row]
                }
            };
            let mid = &mut mid[..(b - a) * ow * c];
            for (oy, out) in (a..b).zip(mid.chunks_exact_mut(ow * c)) {
                let weight = (&dw.weight[group.start..], hidden);
                let (bias, first) = (&dw.bias[group.clone()], need.start);
                let (dims, relu6) = ((h, w), dw.relu6);
                kernels::depthwise_row(input, first, dims, c, stride, weight, bias, relu6, oy, out);
            }
            let out = &mut dst[(a - rows.start) * ow * cout..(b - rows.start) * ow * cout];
            // The group's rows of the projection's weights (`[hidden][cout]`).
            let weight = &project.weight[group.start * cout..group.end * cout];
            matmul((b - a) * ow, cout, c, mid, weight, out, false, 1);
            if c == hidden {
                // All channels: end the projection while its output is in cache.
                let residual = self.residual.then(|| &x[a * ow * cout..b * ow * cout]);
                kernels::epilogue(out, &project.bias, residual, project.relu6);
            }
            a = b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fused::ConvBnWeights;

    /// Values in -1..1 from a seed, the same on every run.
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0)
            .collect()
    }

    /// A conv + BatchNorm with made-up weights and statistics, folded.
    fn conv(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        groups: usize,
        seed: usize,
    ) -> FusedConv {
        let w = ConvBnWeights {
            // Scaled to the fan-in, so that ReLU6 leaves most values unclamped.
            conv_weight: values(cout * cin / groups * k * k, seed)
                .iter()
                .map(|v| v / ((cin / groups * k * k) as f32).sqrt())
                .collect(),
            conv_bias: None,
            gamma: values(cout, seed + 1)
                .iter()
                .map(|v| 1.0 + 0.5 * v)
                .collect(),
            beta: values(cout, seed + 2),
            running_mean: values(cout, seed + 3),
            running_var: values(cout, seed + 4).iter().map(|v| 1.5 + v).collect(),
            epsilon: 1e-5,
        };
        FusedConv::fold(&w, [cin, cout], k, stride, groups, true)
    }

    /// The block by its definition: each conv over the whole map, tap by tap.
    fn reference(unit: &FusedUnit, x: &[f32], (h, w): (usize, usize)) -> Vec<f32> {
        let pointwise = |c: &FusedConv, x: &[f32], act: bool| -> Vec<f32> {
            let mut out = Vec::new();
            for px in x.chunks_exact(c.cin) {
                for o in 0..c.cout {
                    let v = c.bias[o]
                        + (0..c.cin)
                            .map(|i| px[i] * c.weight[i * c.cout + o])
                            .sum::<f32>();
                    out.push(if act { v.clamp(0.0, 6.0) } else { v });
                }
            }
            out
        };
        let hidden = match &unit.expand {
            Some(e) => pointwise(e, x, e.relu6),
            None => x.to_vec(),
        };
        let d = &unit.depthwise;
        let (oh, ow) = (d.out_side(h), d.out_side(w));
        let mut mid = vec![0f32; oh * ow * d.cout];
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..d.cout {
                    let mut acc = d.bias[ch];
                    for t in 0..9 {
                        let (iy, ix) = (
                            (oy * d.stride + t / 3) as isize - 1,
                            (ox * d.stride + t % 3) as isize - 1,
                        );
                        if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                            let i = (iy as usize * w + ix as usize) * d.cout + ch;
                            acc += hidden[i] * d.weight[t * d.cout + ch];
                        }
                    }
                    mid[(oy * ow + ox) * d.cout + ch] =
                        if d.relu6 { acc.clamp(0.0, 6.0) } else { acc };
                }
            }
        }
        let mut out = pointwise(&unit.project, &mid, false);
        if unit.residual {
            for (o, r) in out.iter_mut().zip(x) {
                *o += r;
            }
        }
        out
    }

    #[test]
    fn every_band_size_and_split_gives_the_definition() {
        // (cin, expansion, cout, stride, residual, side): a block without expansion, residual
        // blocks, stride-2 blocks on odd and even sides, channels past a register block.
        let cases = [
            (16, 1, 8, 1, false, 9),
            (8, 6, 8, 1, true, 7),
            (8, 6, 16, 2, false, 9),
            (16, 6, 16, 2, false, 8),
            (24, 6, 24, 1, true, 5),
        ];
        for (seed, &(cin, t, cout, stride, residual, side)) in cases.iter().enumerate() {
            let hidden = cin * t;
            let mut convs = Vec::new();
            if t > 1 {
                convs.push(conv(cin, hidden, 1, 1, 1, 10 * seed));
            }
            convs.push(conv(hidden, hidden, 3, stride, hidden, 10 * seed + 5));
            let mut project = conv(hidden, cout, 1, 1, 1, 10 * seed + 7);
            project.relu6 = false;
            convs.push(project);
            let unit = FusedUnit::new(convs, residual);
            let x = values(side * side * cin, seed);
            let want = reference(&unit, &x, (side, side));
            for (band, by_channels) in [1, 2, 3, 100]
                .into_iter()
                .flat_map(|b| [(b, false), (b, true)])
            {
                for threads in [1, 2, 3] {
                    let (got, oh, ow) =
                        unit.run_in_bands(&x, (side, side), threads, band, by_channels);
                    assert_eq!((oh, ow), ((side - 1) / stride + 1, (side - 1) / stride + 1));
                    let max = |v: &mut dyn Iterator<Item = f32>| v.fold(0f32, f32::max);
                    let scale = max(&mut want.iter().map(|r| r.abs()));
                    let worst = max(&mut got.iter().zip(&want).map(|(g, r)| (g - r).abs()));
                    assert!(
                        got.len() == want.len() && worst < 1e-5 * scale,
                        "case {seed}, band {band}, {threads} threads, by channels {by_channels}: \
                         off by {worst}"
                    );
                }
            }
        }
    }
}
