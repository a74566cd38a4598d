//! Output buffers of the MobileNetV2 kernels: written once without being zeroed first, and split
//! into the planes of each channel so that a channel's planes (one per image, strided in NCHW)
//! can be handed to one parallel task.

use std::mem::MaybeUninit;

/// Values per lane block of the kernels' vector loops (one AVX-512 register, two AVX2 ones).
pub(super) const LANES: usize = 16;

/// Lane blocks summed in f32 before the lanes go to an f64 total: small planes are pooled
/// (over images) so that the f64 reduction does not cost more than the sums themselves.
pub(super) const FLUSH_BLOCKS: usize = 16;

/// Adds `lanes` to `total` in f64, in lane order, and clears them.
#[inline(always)]
pub(super) fn flush(lanes: &mut [f32; LANES], total: &mut f64) {
    *total += lanes.iter().map(|&v| v as f64).sum::<f64>();
    *lanes = [0.0; LANES];
}

/// A vector of `len` values filled by `fill`, without zeroing it first.
///
/// # Safety
/// `fill` must write every one of the `len` values it is given (or panic).
pub(super) unsafe fn written(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the caller guarantees that `fill` initialised the first `len` values.
    unsafe { v.set_len(len) };
    v
}

/// The `hw`-value planes of `t` (`[n][c][hw]`) grouped by channel: entry `ch` holds the plane of
/// channel `ch` of every image, in image order.
pub(super) fn by_channel<T>(t: &mut [T], c: usize, hw: usize) -> Vec<Vec<&mut [T]>> {
    let mut groups: Vec<Vec<&mut [T]>> = (0..c)
        .map(|_| Vec::with_capacity(t.len() / (c * hw).max(1)))
        .collect();
    if hw > 0 {
        for (i, p) in t.chunks_exact_mut(hw).enumerate() {
            groups[i % c].push(p);
        }
    }
    groups
}
