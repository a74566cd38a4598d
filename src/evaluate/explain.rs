//! Why the model decided: occlusion maps. Each square patch of the model's input is covered in
//! turn with the image's mean colour, and the drop in the predicted class's probability is the
//! heat of the pixels under it. It needs nothing but forward passes, so it works the same for
//! every architecture and engine; it costs about (4 · side / patch)² extra images per
//! explanation, run in batches.

use image::imageops::{self, FilterType};
use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage};

use crate::model::bundle::ModelBundle;

/// Images per forward pass while occluding.
const BATCH: usize = 64;

/// An occlusion map in the model's input coordinates.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The class explained (index into the bundle's classes).
    pub class: usize,
    /// Its probability on the whole image.
    pub confidence: f32,
    /// `side`×`side` heat values in [0, 1], row-major; 1 is the patch whose covering costs the
    /// class most.
    pub heat: Vec<f32>,
    pub side: usize,
}

/// Explains the model's answer `class` for `pixels` (the preprocessed `side`×`side` RGB8 input).
pub fn occlusion(bundle: &ModelBundle, pixels: &[u8], class: usize) -> Explanation {
    let side = bundle.meta.image_size as usize;
    assert_eq!(
        pixels.len(),
        3 * side * side,
        "pixels of the model's input size"
    );
    let patch = (side / 4).max(2);
    let stride = (patch / 2).max(1);
    let mut starts: Vec<usize> = (0..=side - patch).step_by(stride).collect();
    if *starts.last().expect("one start") != side - patch {
        starts.push(side - patch);
    }
    let mean: [u8; 3] = std::array::from_fn(|c| {
        let sum: u64 = pixels
            .iter()
            .skip(c)
            .step_by(3)
            .map(|&v| u64::from(v))
            .sum();
        (sum / (side * side) as u64) as u8
    });
    let positions: Vec<(usize, usize)> = starts
        .iter()
        .flat_map(|&y| starts.iter().map(move |&x| (y, x)))
        .collect();
    let confidence = bundle.predict_pixels(&[pixels])[0][class];
    let mut sum = vec![0f32; side * side];
    let mut count = vec![0u32; side * side];
    for chunk in positions.chunks(BATCH) {
        let covered: Vec<Vec<u8>> = chunk
            .iter()
            .map(|&(y0, x0)| {
                let mut img = pixels.to_vec();
                for y in y0..y0 + patch {
                    for x in x0..x0 + patch {
                        img[3 * (y * side + x)..3 * (y * side + x) + 3].copy_from_slice(&mean);
                    }
                }
                img
            })
            .collect();
        let refs: Vec<&[u8]> = covered.iter().map(Vec::as_slice).collect();
        for (&(y0, x0), probs) in chunk.iter().zip(bundle.predict_pixels(&refs)) {
            let drop = (confidence - probs[class]).max(0.0);
            for y in y0..y0 + patch {
                for x in x0..x0 + patch {
                    sum[y * side + x] += drop;
                    count[y * side + x] += 1;
                }
            }
        }
    }
    let mut heat: Vec<f32> = sum
        .iter()
        .zip(&count)
        .map(|(s, &n)| if n > 0 { s / n as f32 } else { 0.0 })
        .collect();
    let max = heat.iter().copied().fold(0f32, f32::max);
    if max > 0.0 {
        heat.iter_mut().for_each(|h| *h /= max);
    }
    Explanation {
        class,
        confidence,
        heat,
        side,
    }
}

impl Explanation {
    /// The heat map as an 8-bit grayscale image at the model's input size.
    pub fn heat_image(&self) -> GrayImage {
        let s = self.side as u32;
        GrayImage::from_fn(s, s, |x, y| {
            Luma([(self.heat[(y * s + x) as usize] * 255.0).round() as u8])
        })
    }

    /// `image` (the centre square the model saw, at any size) with the heat map laid over it:
    /// hot areas in yellow-red, cold ones left nearly as they are.
    pub fn overlay(&self, image: &RgbImage) -> RgbImage {
        let (w, h) = image.dimensions();
        let s = self.side as u32;
        let small: ImageBuffer<Luma<f32>, Vec<f32>> =
            ImageBuffer::from_fn(s, s, |x, y| Luma([self.heat[(y * s + x) as usize]]));
        let big = imageops::resize(&small, w, h, FilterType::Triangle);
        RgbImage::from_fn(w, h, |x, y| {
            let t = big.get_pixel(x, y)[0].clamp(0.0, 1.0);
            let color = heat_color(t);
            let a = 0.15 + 0.6 * t;
            let p = image.get_pixel(x, y);
            Rgb(std::array::from_fn(|c| {
                (f32::from(p[c]) * (1.0 - a) + color[c] * a).round() as u8
            }))
        })
    }
}

/// `image` (any size) as the model sees it, with the heat map of the model's top class laid
/// over its centre square, shown at 256 to 512 px (never below the model's input), as PNG.
pub fn top_class_overlay_png(bundle: &ModelBundle, image: &RgbImage) -> anyhow::Result<Vec<u8>> {
    let side = bundle.meta.image_size;
    let input = crate::data::imaging::square(image, side);
    let probs = bundle.predict_pixels(&[input.as_raw()]).remove(0);
    let class = (0..probs.len())
        .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
        .ok_or_else(|| anyhow::anyhow!("the model has no classes"))?;
    let exp = occlusion(bundle, input.as_raw(), class);
    let shown = image.width().min(image.height()).clamp(256, 512).max(side);
    let overlay = exp.overlay(&crate::data::imaging::square(image, shown));
    let mut out = std::io::Cursor::new(Vec::new());
    overlay.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

/// The side an explanation is shown at, at most: 512 px, never below the model's input.
pub fn shown_side(input: u32) -> u32 {
    input.max(512)
}

/// [`top_class_overlay_png`] of an image file, decoded upright at the size it is shown at.
pub fn overlay_png(
    bundle: &ModelBundle,
    path: &std::path::Path,
    limits: crate::data::imaging::DecodeLimits,
) -> anyhow::Result<Vec<u8>> {
    let shown = shown_side(bundle.meta.image_size);
    let rgb = crate::data::imaging::load_rgb(path, shown, limits)?;
    top_class_overlay_png(bundle, &rgb)
}

/// A perceptual dark-to-bright colour ramp (close to matplotlib's "inferno").
fn heat_color(t: f32) -> [f32; 3] {
    const STOPS: [[f32; 3]; 5] = [
        [0.0, 0.0, 4.0],
        [87.0, 16.0, 110.0],
        [188.0, 55.0, 84.0],
        [249.0, 142.0, 9.0],
        [252.0, 255.0, 164.0],
    ];
    let x = t * (STOPS.len() - 1) as f32;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f32;
    std::array::from_fn(|c| STOPS[i][c] + (STOPS[i + 1][c] - STOPS[i][c]) * f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_colour_ramp_runs_dark_to_bright() {
        let lum = |c: [f32; 3]| c[0] + c[1] + c[2];
        let samples: Vec<f32> = (0..=10).map(|i| lum(heat_color(i as f32 / 10.0))).collect();
        assert!(samples.windows(2).all(|w| w[1] > w[0]), "{samples:?}");
    }
}
