//! Image decoding and preprocessing: decode by content, RGB, square resize, augmentation,
//! normalisation into the model's CHW float layout.

use std::io::Cursor;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageFormat, ImageReader, Limits, RgbImage};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The square input sizes flora accepts, in pixels (config and model bundles alike).
pub const IMAGE_SIZES: std::ops::RangeInclusive<u32> = 8..=1024;

/// Version of the decode → orient → resize pipeline. Anything that stores pixels made by it
/// (the disk pixel cache) keys on this, so a change to how pixels come out must bump it.
pub const PIPELINE_VERSION: u32 = 2;

/// Decoder limits: the largest image side and decoder allocation accepted.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_side: u32,
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_side: 12_000,
            max_alloc: 512 * 1024 * 1024,
        }
    }
}

/// The image format of `bytes`, sniffed from its content (never from a file name).
pub fn sniff_format(bytes: &[u8]) -> Option<ImageFormat> {
    image::guess_format(bytes).ok().filter(|f| {
        matches!(
            f,
            ImageFormat::Png
                | ImageFormat::Jpeg
                | ImageFormat::Bmp
                | ImageFormat::Gif
                | ImageFormat::WebP
                | ImageFormat::Tiff
        )
    })
}

/// Decodes an in-memory image by its content, within `limits`. An image whose pixel data ends
/// early (a truncated download or copy) is an error, not a picture with made-up rows.
pub fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<DynamicImage> {
    let format = sniff_format(bytes).ok_or_else(|| {
        anyhow!("not a supported image (expected JPEG, PNG, BMP, GIF, WebP or TIFF content)")
    })?;
    if format == ImageFormat::Jpeg && !ends_with_eoi(bytes) {
        return decode_unterminated_jpeg(bytes, limits);
    }
    decode_as(bytes, format, limits)
}

fn decode_as(bytes: &[u8], format: ImageFormat, limits: DecodeLimits) -> Result<DynamicImage> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut l = Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l);
    reader
        .decode()
        .map_err(|e| anyhow!("cannot decode {format:?} image: {e}"))
}

/// True when a JPEG ends with its end-of-image marker (trailing zero padding allowed).
fn ends_with_eoi(bytes: &[u8]) -> bool {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes[..end].ends_with(&[0xFF, 0xD9])
}

/// A JPEG without an end marker is either complete but unterminated (some cameras write
/// these) or cut off. JPEG decoders fill a cut-off scan with invented data without an error,
/// so this tells the two apart by what follows the data: decoded once with the end marker
/// appended and once with filler bytes before it, a complete image comes out the same (the
/// filler lies after its last block), a cut-off one differs (the filler is read as image data).
fn decode_unterminated_jpeg(bytes: &[u8], limits: DecodeLimits) -> Result<DynamicImage> {
    const EOI: [u8; 2] = [0xFF, 0xD9];
    let terminated = [bytes, &EOI[..]].concat();
    let image = decode_as(&terminated, ImageFormat::Jpeg, limits)?;
    let filled = [bytes, &[0x5A; 256][..], &EOI[..]].concat();
    let same = decode_as(&filled, ImageFormat::Jpeg, limits)
        .is_ok_and(|other| other.as_bytes() == image.as_bytes());
    if !same {
        bail!(
            "truncated JPEG: the file ends before its image data does (an incomplete download \
             or copy); copy or export it again"
        );
    }
    Ok(image)
}

/// Reads and decodes an image file by its content.
pub fn load(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    decode(&bytes, DecodeLimits::default()).with_context(|| format!("decoding {}", path.display()))
}

/// Converts to RGB8, compositing any alpha channel over a white background.
pub fn to_rgb(img: &DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = p[3] as u32;
        for c in 0..3 {
            o[c] = ((p[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

/// Eval preprocessing: resize the shorter side to `size` and centre-crop to `size`×`size`.
pub fn square(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let side = w.min(h);
    let (x, y) = ((w - side) / 2, (h - side) / 2);
    let view = imageops::crop_imm(img, x, y, side, side);
    if side == size {
        return view.to_image();
    }
    imageops::resize(&*view, size, size, FilterType::Triangle)
}

/// Decodes `bytes` and applies the eval preprocessing, giving `size`×`size` RGB8 pixels.
pub fn prepare(bytes: &[u8], size: u32, limits: DecodeLimits) -> Result<RgbImage> {
    Ok(square(&to_rgb(&decode(bytes, limits)?), size))
}

/// Reads a file and applies the eval preprocessing.
pub fn prepare_file(path: &Path, size: u32) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    prepare(&bytes, size, DecodeLimits::default())
        .with_context(|| format!("decoding {}", path.display()))
}

/// Train augmentation: a random resized crop (area share in `[scale_min, 1]`, aspect ratio in
/// `[3/4, 4/3]`) of a square image, resized back to its side.
pub fn random_resized_crop(img: &RgbImage, scale_min: f64, rng: &mut impl Rng) -> RgbImage {
    let (w, h) = img.dimensions();
    let area = (w * h) as f64;
    for _ in 0..10 {
        let target = area * rng.random_range(scale_min..=1.0);
        let log_ratio = rng.random_range((3.0f64 / 4.0).ln()..=(4.0f64 / 3.0).ln());
        let ratio = log_ratio.exp();
        let cw = (target * ratio).sqrt().round() as u32;
        let ch = (target / ratio).sqrt().round() as u32;
        if cw >= 1 && ch >= 1 && cw <= w && ch <= h {
            let x = rng.random_range(0..=w - cw);
            let y = rng.random_range(0..=h - ch);
            let view = imageops::crop_imm(img, x, y, cw, ch);
            return imageops::resize(&*view, w, h, FilterType::Triangle);
        }
    }
    img.clone()
}

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
    /// Writes `pixels` (RGB8, `side`×`side`, row-major) into `out` as normalised CHW floats,
    /// mirrored left-right when `flip` is set. `out` holds `3 * side * side` values.
    pub fn write_chw(&self, pixels: &[u8], side: usize, flip: bool, out: &mut [f32]) {
        let plane = side * side;
        debug_assert_eq!(pixels.len(), 3 * plane);
        debug_assert_eq!(out.len(), 3 * plane);
        let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * self.std[c]));
        let shift: [f32; 3] = std::array::from_fn(|c| self.mean[c] / self.std[c]);
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
        let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * self.std[c]));
        let shift: [f32; 3] = std::array::from_fn(|c| self.mean[c] / self.std[c]);
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
    fn square_crops_the_centre() {
        let mut img = RgbImage::new(6, 4);
        img.put_pixel(1, 0, image::Rgb([255, 0, 0]));
        let sq = square(&img, 4);
        assert_eq!(sq.dimensions(), (4, 4));
        assert_eq!(sq.get_pixel(0, 0)[0], 255);
    }

    #[test]
    fn alpha_is_composited_on_white() {
        let img = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            1,
            1,
            image::Rgba([0, 0, 0, 0]),
        ));
        assert_eq!(to_rgb(&img).get_pixel(0, 0).0, [255, 255, 255]);
    }

    /// A real test image (a Fashion-MNIST bag), scaled up so that every format spreads its
    /// pixel data over many rows and blocks.
    fn sample() -> DynamicImage {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/fashion-mnist/train/bag"
        );
        let first = std::fs::read_dir(path)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let img = load(&first).unwrap().to_rgb8();
        DynamicImage::ImageRgb8(imageops::resize(&img, 96, 80, FilterType::Triangle))
    }

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn truncated_images_are_refused_in_every_format() {
        let img = sample();
        for format in [
            ImageFormat::Jpeg,
            ImageFormat::Png,
            ImageFormat::Bmp,
            ImageFormat::Gif,
            ImageFormat::WebP,
            ImageFormat::Tiff,
        ] {
            let bytes = encode(&img, format);
            assert!(
                decode(&bytes, DecodeLimits::default()).is_ok(),
                "{format:?}"
            );
            for share in [0.6, 0.9] {
                let cut = &bytes[..(bytes.len() as f64 * share) as usize];
                assert!(
                    decode(cut, DecodeLimits::default()).is_err(),
                    "{format:?} cut at {share} decoded"
                );
            }
        }
    }

    #[test]
    fn a_jpeg_missing_only_its_end_marker_is_accepted() {
        let bytes = encode(&sample(), ImageFormat::Jpeg);
        assert!(bytes.ends_with(&[0xFF, 0xD9]));
        let whole = decode(&bytes, DecodeLimits::default()).unwrap();
        let unterminated = decode(&bytes[..bytes.len() - 2], DecodeLimits::default()).unwrap();
        assert_eq!(whole.as_bytes(), unterminated.as_bytes());
        // Cut a few bytes into the last blocks: refused, though the decoder alone takes it.
        let cut = &bytes[..bytes.len() - 40];
        assert!(decode_as(cut, ImageFormat::Jpeg, DecodeLimits::default()).is_ok());
        assert!(decode(cut, DecodeLimits::default()).is_err());
    }

    #[test]
    fn garbage_is_not_an_image() {
        assert!(decode(b"hello world", DecodeLimits::default()).is_err());
    }

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
