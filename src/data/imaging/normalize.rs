//! Per-channel normalisation of RGB8 pixels into the model's float layouts.

use serde::{Deserialize, Serialize};

/// Per-channel normalisation applied to pixels scaled to [0, 1]; recorded in the model bundle.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Normalization {
    /// The usual ImageNet statistics (the same as the PyTorch reference).
    fn default() -> Self {
        Self {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

impl Normalization {
    /// The per-channel `(scale, shift)` with `pixel * scale - shift` = `(pixel / 255 - mean) /
    /// std`: the one f32 arithmetic every normalisation uses (and an exported graph repeats).
    pub fn affine(&self) -> ([f32; 3], [f32; 3]) {
        (
            std::array::from_fn(|c| 1.0 / (255.0 * self.std[c])),
            std::array::from_fn(|c| self.mean[c] / self.std[c]),
        )
    }

    /// Writes `pixels` (RGB8, `side`×`side`, row-major) into `out` as normalised CHW floats,
    /// mirrored left-right when `flip` is set. `out` holds `3 * side * side` values.
    pub fn write_chw(&self, pixels: &[u8], side: usize, flip: bool, out: &mut [f32]) {
        let plane = side * side;
        debug_assert_eq!(pixels.len(), 3 * plane);
        debug_assert_eq!(out.len(), 3 * plane);
        let (scale, shift) = self.affine();
        for y in 0..side {
            for x in 0..side {
                let sx = if flip { side - 1 - x } else { x };
                let p = &pixels[3 * (y * side + sx)..3 * (y * side + sx) + 3];
                let o = y * side + x;
                for c in 0..3 {
                    out[c * plane + o] = p[c] as f32 * scale[c] - shift[c];
                }
            }
        }
    }

    /// Writes `pixels` (RGB8) into `out` as normalised floats in the same channels-last order.
    pub fn write_hwc(&self, pixels: &[u8], out: &mut [f32]) {
        debug_assert_eq!(pixels.len(), out.len());
        let (scale, shift) = self.affine();
        for (p, o) in pixels.chunks_exact(3).zip(out.chunks_exact_mut(3)) {
            for c in 0..3 {
                o[c] = p[c] as f32 * scale[c] - shift[c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_flips() {
        let n = Normalization {
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let px = [255, 255, 255];
        let mut out = [0f32; 3];
        n.write_chw(&px, 1, false, &mut out);
        assert_eq!(out[0], 1.0);
        let px2 = [0u8, 0, 0, 255, 255, 255, 0, 0, 0, 0, 0, 0];
        let mut out2 = [0f32; 12];
        n.write_chw(&px2, 2, true, &mut out2);
        assert_eq!(out2[0], 1.0);
        assert_eq!(out2[1], 0.0);
    }
}
