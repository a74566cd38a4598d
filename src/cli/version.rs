//! `flora --version`: the version, the commit and cargo features it was built from (build.rs),
//! and the kernel build this CPU runs.

use std::sync::OnceLock;

use flora::ops::simd::{cpu_kernels, kernels};

/// The long version text (after "flora "), computed once per process.
pub fn long_version() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let (used, cpu) = (kernels(), cpu_kernels());
        let capped = if used == cpu {
            String::new()
        } else {
            format!(" (capped by FLORA_KERNELS; this CPU runs {})", cpu.name())
        };
        format!(
            "{}\ncommit: {}\nfeatures: {}\nkernels: {}{capped}",
            env!("CARGO_PKG_VERSION"),
            env!("FLORA_GIT_COMMIT"),
            env!("FLORA_FEATURES"),
            used.name(),
        )
    })
}
