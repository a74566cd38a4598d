//! Image decoding and preprocessing, the one place where pixels come from files: decode by
//! content, turn upright by the EXIF orientation, decode JPEGs at a reduced DCT scale when the
//! target is small, RGB, square resize, augmentation, normalisation.
//!
//! Every path (train, cv, eval, predict, serve, merge, label, explain) goes through
//! [`decode_rgb`] or [`decode`], so they all see the same upright pixels.

mod format;
mod jpeg;
mod limits;
mod normalize;
mod resize;

use std::io::Cursor;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

pub use format::{require_supported, sniff_format};
pub use limits::{DEFAULT_MAX_MEGAPIXELS, DecodeLimits};
pub use normalize::Normalization;
pub use resize::{random_resized_crop, resize_window, square};

/// The square input sizes flora accepts, in pixels (config and model bundles alike).
pub const IMAGE_SIZES: std::ops::RangeInclusive<u32> = 8..=1024;

/// Version of the decode → orient → resize pipeline. Anything that stores pixels made by it
/// (the disk pixel cache) keys on this, so a change to how pixels come out must bump it.
pub const PIPELINE_VERSION: u32 = 2;

/// Decodes an in-memory image by its content, whole and upright (its EXIF orientation
/// applied), within `limits`. An image whose data ends early (a truncated download or copy)
/// is an error, not a picture with made-up rows.
pub fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<DynamicImage> {
    decode_upright(bytes, u32::MAX, &limits)
}

/// Decodes an in-memory image to upright RGB8 whose shorter side keeps at least `min_side`
/// pixels (twice that where it can): a JPEG much larger is decoded at 1/2, 1/4 or 1/8 of its
/// size (libjpeg's DCT scaling, as Pillow's `draft`), other formats whole. Alpha is
/// composited over white.
pub fn decode_rgb(bytes: &[u8], min_side: u32, limits: DecodeLimits) -> Result<RgbImage> {
    Ok(match decode_upright(bytes, min_side, &limits)? {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => to_rgb(&other),
    })
}

/// The one decoding path: libjpeg-turbo for complete JPEGs (at a reduced scale when
/// `min_side` allows), the `image` crate for the rest; upright either way.
fn decode_upright(bytes: &[u8], min_side: u32, limits: &DecodeLimits) -> Result<DynamicImage> {
    let format = require_supported(bytes)?;
    if format == ImageFormat::Jpeg
        && ends_with_eoi(bytes)
        && let Some(j) = jpeg::decode(bytes, min_side, limits)?
    {
        return Ok(upright(DynamicImage::ImageRgb8(j.rgb), j.orientation));
    }
    decode_general(bytes, format, limits)
}

/// Decodes `bytes` and applies the eval preprocessing, giving `size`×`size` upright RGB8.
pub fn prepare(bytes: &[u8], size: u32, limits: DecodeLimits) -> Result<RgbImage> {
    Ok(square(&decode_rgb(bytes, size, limits)?, size))
}

/// Reads an image file and decodes it whole and upright.
pub fn load(path: &Path, limits: DecodeLimits) -> Result<DynamicImage> {
    let bytes = read(path)?;
    decode(&bytes, limits).with_context(|| format!("decoding {}", path.display()))
}

/// Reads an image file into upright RGB8 whose shorter side keeps `min_side` pixels (see
/// [`decode_rgb`]).
pub fn load_rgb(path: &Path, min_side: u32, limits: DecodeLimits) -> Result<RgbImage> {
    let bytes = read(path)?;
    decode_rgb(&bytes, min_side, limits).with_context(|| format!("decoding {}", path.display()))
}

/// Reads a file and applies the eval preprocessing.
pub fn prepare_file(path: &Path, size: u32, limits: DecodeLimits) -> Result<RgbImage> {
    let bytes = read(path)?;
    prepare(&bytes, size, limits).with_context(|| format!("decoding {}", path.display()))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
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

/// The image as a viewer shows it: turned and mirrored by its EXIF orientation.
fn upright(mut img: DynamicImage, orientation: Orientation) -> DynamicImage {
    img.apply_orientation(orientation);
    img
}

/// Every format but libjpeg's JPEGs: the `image` crate's decoders, upright. A JPEG without an
/// end marker is told complete or cut off first.
fn decode_general(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> Result<DynamicImage> {
    if format == ImageFormat::Jpeg && !ends_with_eoi(bytes) {
        return decode_unterminated_jpeg(bytes, limits);
    }
    decode_as(bytes, format, limits)
}

fn decode_as(bytes: &[u8], format: ImageFormat, limits: &DecodeLimits) -> Result<DynamicImage> {
    let failed = |e: ImageError| match e {
        ImageError::Limits(_) => anyhow!(
            "cannot decode {format:?} image: it needs more memory than the limit of {} MB \
             allows (raise {})",
            limits.max_alloc >> 20,
            limits.alloc_key.unwrap_or(limits.pixels_key)
        ),
        e => anyhow!("cannot decode {format:?} image: {e}"),
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut l = Limits::default();
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l);
    let mut decoder = reader.into_decoder().map_err(failed)?;
    let (w, h) = decoder.dimensions();
    limits.check_pixels(w, h)?;
    limits.check_alloc(w, h, decoder.total_bytes())?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(failed)?;
    Ok(upright(img, orientation))
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
fn decode_unterminated_jpeg(bytes: &[u8], limits: &DecodeLimits) -> Result<DynamicImage> {
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

#[cfg(test)]
mod tests;
