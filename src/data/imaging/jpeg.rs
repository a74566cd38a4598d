//! JPEG through libjpeg-turbo (the `mozjpeg` crate), decoded at a reduced DCT scale when a
//! smaller image is all that is needed (libjpeg's `scale_num/scale_denom`, as Pillow's
//! `draft()`), with the EXIF orientation read from its APP1 segment.

use std::panic::{AssertUnwindSafe, catch_unwind};

use anyhow::{Result, anyhow};
use image::RgbImage;
use image::metadata::Orientation;
use mozjpeg::{ColorSpace, Decompress, Marker};

use super::limits::DecodeLimits;

/// A JPEG decoded to RGB as stored (not yet turned upright), and its EXIF orientation.
pub(super) struct Decoded {
    pub rgb: RgbImage,
    pub orientation: Orientation,
}

/// The numerator over 8 of the scale to decode at: the smallest of 1/8, 1/4, 1/2 and 1 whose
/// shorter side still has twice `min_side` pixels (these four have libjpeg-turbo's fast
/// paths; at 1/8 only each block's mean is computed). The DCT reduction averages each block
/// (an area filter); the margin of 2 leaves the last step, the antialiased resize to
/// `min_side`, enough pixels that the result stays within about one level of a full decode
/// resized the same way (`tests.rs` measures it on real photos).
pub(super) fn scale_for(short_side: u32, min_side: u32) -> u8 {
    let want = 2 * min_side as u64;
    [1u8, 2, 4]
        .into_iter()
        .find(|&num| (short_side as u64 * num as u64).div_ceil(8) >= want)
        .unwrap_or(8)
}

/// Decodes a JPEG at the smallest scale whose shorter side keeps `min_side` pixels
/// (`u32::MAX`: full size). `None` for colour spaces libjpeg cannot turn into RGB (CMYK,
/// YCCK), which take the general path.
pub(super) fn decode(
    bytes: &[u8],
    min_side: u32,
    limits: &DecodeLimits,
) -> Result<Option<Decoded>> {
    // libjpeg's fatal errors unwind out of its error handler with the message as payload.
    match catch_unwind(AssertUnwindSafe(|| decode_inner(bytes, min_side, limits))) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown libjpeg error".into());
            let msg = msg
                .strip_prefix("libjpeg fatal error: ")
                .unwrap_or(&msg)
                .to_string();
            Err(anyhow!("cannot decode JPEG image: {msg}"))
        }
    }
}

fn decode_inner(bytes: &[u8], min_side: u32, limits: &DecodeLimits) -> Result<Option<Decoded>> {
    let io = |e: std::io::Error| anyhow!("cannot decode JPEG image: {e}");
    let mut d = Decompress::with_markers(&[Marker::APP(1)])
        .from_mem(bytes)
        .map_err(io)?;
    let (w, h) = (d.width() as u32, d.height() as u32);
    limits.check_pixels(w, h)?;
    if matches!(d.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK) {
        return Ok(None);
    }
    let orientation = d
        .markers()
        .find_map(|m| {
            m.data
                .strip_prefix(b"Exif\0\0")
                .and_then(Orientation::from_exif_chunk)
        })
        .unwrap_or(Orientation::NoTransforms);
    d.scale(scale_for(w.min(h), min_side));
    let mut started = d.rgb().map_err(io)?;
    let (ow, oh) = (started.width() as u32, started.height() as u32);
    limits.check_alloc(ow, oh, ow as u64 * oh as u64 * 3)?;
    let pixels: Vec<u8> = started.read_scanlines().map_err(io)?;
    // The pixels are all read; what follows the last scan (padding, other data) is not ours
    // to judge. Truncation is caught before (the file must end with its end marker).
    let _ = started.finish();
    let rgb = RgbImage::from_raw(ow, oh, pixels)
        .ok_or_else(|| anyhow!("cannot decode JPEG image: fewer rows than its header says"))?;
    Ok(Some(Decoded { rgb, orientation }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_keeps_the_shorter_side() {
        // A 12-MP phone photo (3024 px short side).
        assert_eq!(scale_for(3024, 64), 1);
        assert_eq!(scale_for(3024, 189), 1);
        assert_eq!(scale_for(3024, 190), 2);
        assert_eq!(scale_for(3024, 224), 2);
        assert_eq!(scale_for(3024, 512), 4);
        assert_eq!(scale_for(3024, 1000), 8);
        assert_eq!(scale_for(3024, u32::MAX), 8);
        // Small images are never scaled below what is asked.
        assert_eq!(scale_for(128, 64), 8);
        assert_eq!(scale_for(63, 64), 8);
    }
}
