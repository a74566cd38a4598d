//! Runtime instruction-set dispatch for the plain-Rust kernels of the fused training ops: the
//! same code compiled again with AVX-512 or AVX2 + FMA enabled (so the compiler vectorises it
//! for them), picked by what the CPU reports, with no intrinsics. On other CPUs (aarch64...) or
//! with [`force_portable`] / `FLORA_PORTABLE_KERNELS=1`, the portable build of the code runs,
//! and matrix products use a plain loop instead of the `gemm` crate's kernels.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static FORCED: AtomicBool = AtomicBool::new(false);

/// Makes every later kernel call take the portable path (tests compare it with the fast one).
pub fn force_portable() {
    FORCED.store(true, Ordering::Relaxed);
}

/// Whether the portable path is forced (by [`force_portable`] or `FLORA_PORTABLE_KERNELS=1`).
pub fn portable() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    FORCED.load(Ordering::Relaxed)
        || *ENV.get_or_init(|| std::env::var("FLORA_PORTABLE_KERNELS").is_ok_and(|v| v == "1"))
}

/// Runs `f`, compiled for the widest vector instructions the CPU has. `f` and what it calls
/// should be `#[inline(always)]` for the dispatch to reach the loops.
#[inline(always)]
pub(crate) fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if !portable() {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has just reported AVX-512F (which implies AVX2 and FMA).
            return unsafe { avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has just reported AVX2 and FMA.
            return unsafe { avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
