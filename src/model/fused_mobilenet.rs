//! An inference-only form of [`MobileNetV2`](super::MobileNetV2), built from its trained weights,
//! in the manner of [`FusedCnn`](super::FusedCnn).
//!
//! BatchNorm is folded into each convolution; activations are channels-last (HWC). A 1×1
//! (pointwise) convolution is one matrix product over pixels (the `gemm` crate), followed by
//! one pass for its bias, residual and ReLU6; a depthwise 3×3 is a direct kernel whose inner
//! loop runs over the contiguous channels; the dense 3×3 stem is one im2col copy and one
//! product. The inverted residual blocks run band by band of rows ([`super::fused_unit`]).
//! Images of a batch run in parallel; a lone image splits its rows and products across threads.
//! Training always uses the Burn model.

use super::fused::{per_image, pool_and_classify};
pub use super::fused_conv::FusedConv;
pub use super::fused_unit::FusedUnit;
use crate::data::imaging::Normalization;

/// A MobileNetV2 as plain arrays, ready for [`FusedMobileNet::logits`].
#[derive(Debug, Clone)]
pub struct FusedMobileNet {
    stem: FusedConv,
    units: Vec<FusedUnit>,
    last: FusedConv,
    /// `[cin][classes]`, row-major.
    head_weight: Vec<f32>,
    head_bias: Vec<f32>,
}

impl FusedMobileNet {
    /// Assembles the network from its folded parts and the linear head (`[cin][classes]`).
    pub fn new(
        stem: FusedConv,
        units: Vec<FusedUnit>,
        last: FusedConv,
        head_weight: Vec<f32>,
        head_bias: Vec<f32>,
    ) -> Self {
        assert_eq!(
            head_weight.len(),
            last.cout * head_bias.len(),
            "head weight shape"
        );
        Self {
            stem,
            units,
            last,
            head_weight,
            head_bias,
        }
    }

    /// Class logits of each image (RGB8, `side`×`side`, row-major), normalised with `norm`.
    pub fn logits(&self, images: &[&[u8]], norm: &Normalization, side: usize) -> Vec<Vec<f32>> {
        per_image(images, norm, side, |x, threads| {
            self.forward_one(&x, side, threads)
        })
    }

    /// Logits of one normalised HWC image.
    fn forward_one(&self, x: &[f32], side: usize, threads: usize) -> Vec<f32> {
        let (mut x, mut h, mut w) = self.stem.run(x, (side, side), threads);
        for unit in &self.units {
            (x, h, w) = unit.run(&x, (h, w), threads);
        }
        let (x, h, w) = self.last.run(&x, (h, w), threads);
        pool_and_classify(&x, h * w, &self.head_weight, &self.head_bias)
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::tensor::{Tensor, TensorData};

    use crate::data::imaging::Normalization;
    use crate::model::MobileNetV2;

    /// A MobileNetV2 with random weights and non-trivial BatchNorm statistics (two forward
    /// passes in training mode on random input).
    fn trained_like(width: f64, classes: usize, side: usize) -> MobileNetV2 {
        let device = crate::util::device::training();
        device.seed(7);
        let model = MobileNetV2::new(width, classes, 0.2, &device);
        for seed in 0..2u32 {
            let x: Vec<f32> = (0..4 * 3 * side * side)
                .map(|i| {
                    ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32
                        / 500.0
                        - 1.0
                })
                .collect();
            let _ = model.forward(Tensor::<4>::from_data(
                TensorData::new(x, [4, 3, side, side]),
                &device,
            ));
        }
        model.valid()
    }

    #[test]
    fn fused_mobilenet_matches_burn_forward() {
        let norm = Normalization::default();
        for (width, side) in [(0.35, 32), (0.5, 37), (1.0, 33), (0.75, 96), (0.35, 224)] {
            let model = trained_like(width, 5, side.min(64));
            let fused = model.fused();
            let images: Vec<Vec<u8>> = (0..2)
                .map(|k| {
                    (0..3 * side * side)
                        .map(|i| ((i * 37 + k * 101) % 256) as u8)
                        .collect()
                })
                .collect();
            let refs: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
            let mut input = vec![0f32; 2 * 3 * side * side];
            for (img, out) in images.iter().zip(input.chunks_mut(3 * side * side)) {
                norm.write_chw(img, side, false, out);
            }
            let device = crate::util::device::inference();
            let x = Tensor::<4>::from_data(TensorData::new(input, [2, 3, side, side]), &device);
            let want = model.forward(x).into_data().try_to_vec::<f32>().unwrap();
            // A batch (images in parallel) and a lone image (split across threads).
            let got: Vec<f32> = fused.logits(&refs, &norm, side).concat();
            let lone = fused.logits(&refs[..1], &norm, side).concat();
            let diff = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max)
            };
            assert_eq!(got.len(), want.len());
            assert!(
                diff(&got, &want) < 1e-4,
                "w{width} {side}px: {}",
                diff(&got, &want)
            );
            assert!(diff(&lone, &want[..5]) < 1e-4, "w{width} {side}px lone");
        }
    }
}
