//! The one place that picks where tensors live. flora runs on Burn's pure-Rust Flex CPU backend;
//! a GPU backend (wgpu/cuda behind a cargo feature) would be chosen here and nowhere else.

use burn::tensor::Device;

/// The device for inference (no autodiff).
pub fn inference() -> Device {
    Device::flex()
}

/// The device for training: the inference device with autodiff on.
pub fn training() -> Device {
    inference().autodiff()
}

/// Sizes the shared CPU thread pool (decoding and the backend); 0 means one thread per core.
/// Only the first call has an effect.
pub fn set_threads(threads: usize) {
    if threads > 0 {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
    }
}
