//! Small pieces every layer uses: crash-safe file writes and locks, progress bars, the device
//! choice (and the GPU adapters, with the `gpu` feature), data fingerprints, exact float
//! serialisation, checked resumable downloads.

pub mod device;
pub mod download;
pub mod exact_f64;
pub mod fingerprint;
pub mod fsutil;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod progress;
