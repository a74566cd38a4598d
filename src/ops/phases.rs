//! Optional timers of the fused kernels' phases (`FLORA_PHASES=1`): what the train-speed and
//! MobileNetV2 benches print to say where the time goes. The conv block's phases are summed
//! over threads; MobileNetV2's ops (`dw_*`, `pw_*`, `bn_*`) are timed around each whole
//! (parallel) call, in wall time.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A phase of the fused conv block.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Phase {
    /// im2col + product + bias.
    FwdConv,
    /// Per-channel sums for the batch statistics.
    FwdStats,
    /// Normalise, ReLU, pool.
    FwdPool,
    /// BatchNorm parameter gradients.
    BwdParams,
    /// The gradient of the conv output (pool, ReLU and BatchNorm backward) and the bias sum.
    BwdDy,
    /// im2col + weight-gradient product.
    BwdWeight,
    /// Input-gradient product + col2im.
    BwdInput,
    /// Depthwise 3×3 forward.
    DwFwd,
    /// Depthwise 3×3 input and weight gradients.
    DwBwd,
    /// Pointwise forward.
    PwFwd,
    /// Pointwise input and weight gradients.
    PwBwd,
    /// BatchNorm + ReLU6 forward.
    BnFwd,
    /// BatchNorm + ReLU6 backward.
    BnBwd,
}

const NAMES: [&str; 13] = [
    "fwd_conv",
    "fwd_stats",
    "fwd_pool",
    "bwd_params",
    "bwd_dy",
    "bwd_weight",
    "bwd_input",
    "dw_fwd",
    "dw_bwd",
    "pw_fwd",
    "pw_bwd",
    "bn_fwd",
    "bn_bwd",
];

static NANOS: [AtomicU64; 13] = [const { AtomicU64::new(0) }; 13];

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("FLORA_PHASES").is_ok_and(|v| v == "1"))
}

/// Runs `f`, adding its time to `phase` when timing is on.
pub(crate) fn timed<T>(phase: Phase, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let t = Instant::now();
    let r = f();
    NANOS[phase as usize].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    r
}

/// The time of each phase since the last report, in milliseconds summed over threads (empty
/// when `FLORA_PHASES=1` is not set), and resets the timers.
pub fn report() -> String {
    if !enabled() {
        return String::new();
    }
    NAMES
        .iter()
        .zip(&NANOS)
        .filter(|(_, n)| n.load(Ordering::Relaxed) > 0)
        .map(|(name, n)| format!("{name}={:.1}", n.swap(0, Ordering::Relaxed) as f64 / 1e6))
        .collect::<Vec<_>>()
        .join(" ")
}
