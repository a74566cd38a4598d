//! Runtime instruction-set dispatch for the plain-Rust kernels of the fused training ops: the
//! same code compiled again with AVX-512 or AVX2 + FMA enabled (so the compiler vectorises it
//! for them), picked by what the CPU reports, with no intrinsics. On other CPUs (aarch64...)
//! the portable build of the code runs.
//!
//! The choice can be capped below what the CPU has, to test every build on one machine:
//! `FLORA_KERNELS=avx2` or `FLORA_KERNELS=portable` in the environment
//! (`FLORA_PORTABLE_KERNELS=1` is the same as the latter), read once per process. On the portable level
//! matrix products also leave the `gemm` crate's SIMD kernels for a plain loop.

use std::sync::OnceLock;

/// The builds of the kernels, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kernels {
    /// No x86 vector extensions assumed: what other CPUs run.
    Portable = 0,
    /// AVX2 + FMA.
    Avx2 = 1,
    /// AVX-512F (with AVX2 and FMA).
    Avx512 = 2,
}

impl Kernels {
    /// The build's name, as `flora --version` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Portable => "portable",
            Kernels::Avx2 => "AVX2",
            Kernels::Avx512 => "AVX-512",
        }
    }
}

/// The widest build the environment allows: `FLORA_KERNELS` (`portable`, `avx2`) or
/// `FLORA_PORTABLE_KERNELS=1`.
fn env_cap() -> Kernels {
    static ENV: OnceLock<Kernels> = OnceLock::new();
    *ENV.get_or_init(|| {
        if std::env::var("FLORA_PORTABLE_KERNELS").is_ok_and(|v| v == "1") {
            return Kernels::Portable;
        }
        match std::env::var("FLORA_KERNELS").as_deref() {
            Ok("portable") => Kernels::Portable,
            Ok("avx2") => Kernels::Avx2,
            _ => Kernels::Avx512,
        }
    })
}

/// The widest build this CPU runs (before the environment's cap).
pub fn cpu_kernels() -> Kernels {
    #[cfg(target_arch = "x86_64")]
    {
        static CPU: OnceLock<Kernels> = OnceLock::new();
        *CPU.get_or_init(|| {
            if std::arch::is_x86_feature_detected!("avx512f") {
                Kernels::Avx512
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                Kernels::Avx2
            } else {
                Kernels::Portable
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    Kernels::Portable
}

/// The build the kernels run: the CPU's widest, within the environment's cap.
pub fn kernels() -> Kernels {
    cpu_kernels().min(env_cap())
}

/// Whether the portable path runs (on this CPU, or forced).
pub fn portable() -> bool {
    kernels() == Kernels::Portable
}

/// Runs `f`, compiled for the widest vector instructions allowed ([`kernels`]). `f` and what
/// it calls should be `#[inline(always)]` for the dispatch to reach the loops.
#[inline(always)]
pub(crate) fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match kernels() {
        // SAFETY: `kernels` picks Avx512 only where the CPU reported AVX-512F (which implies
        // AVX2 and FMA).
        Kernels::Avx512 => return unsafe { avx512(f) },
        // SAFETY: `kernels` picks Avx2 only where the CPU reported AVX2 and FMA.
        Kernels::Avx2 => return unsafe { avx2(f) },
        Kernels::Portable => {}
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
