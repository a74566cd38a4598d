//! Telling an image's format from its first bytes, and naming the formats flora cannot read.

use anyhow::{Result, anyhow};
use image::ImageFormat;

/// The formats flora decodes, told by content (never by file name).
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

/// The format of `bytes`, or an error that names a known unsupported format (HEIC, AVIF, …)
/// and says how to convert it.
pub fn require_supported(bytes: &[u8]) -> Result<ImageFormat> {
    if let Some(f) = sniff_format(bytes) {
        return Ok(f);
    }
    Err(match unsupported(bytes) {
        Some((name, fix)) => anyhow!("{name} images are not supported: {fix}"),
        None => {
            anyhow!("not a supported image (expected JPEG, PNG, BMP, GIF, WebP or TIFF content)")
        }
    })
}

/// A format flora recognises but does not decode: its name and how to convert it.
fn unsupported(bytes: &[u8]) -> Option<(&'static str, &'static str)> {
    const HEIC_FIX: &str = "convert it to JPEG first (on an iPhone: Settings > Camera > \
        Formats > Most Compatible; on Linux: heif-convert photo.heic photo.jpg from \
        libheif-examples; on macOS: sips -s format jpeg photo.heic --out photo.jpg)";
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        // ISO base media file: the major brand, then the compatible brands of the `ftyp` box.
        let size = u32::from_be_bytes(bytes[0..4].try_into().unwrap()) as usize;
        let end = size.clamp(12, bytes.len().min(256));
        let brands: Vec<&[u8]> = std::iter::once(&bytes[8..12])
            .chain(bytes[16.min(end)..end].chunks_exact(4))
            .collect();
        let has = |names: &[&[u8]]| brands.iter().any(|b| names.contains(b));
        if has(&[b"avif", b"avis"]) {
            return Some((
                "AVIF",
                "convert it to JPEG or PNG first (e.g. avifdec photo.avif photo.png from \
                 libavif-bin, or any image editor's export)",
            ));
        }
        if has(&[
            b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1",
        ]) {
            return Some(("HEIC/HEIF (the default format of iPhone cameras)", HEIC_FIX));
        }
    }
    if bytes.starts_with(&[0xFF, 0x0A]) || bytes.starts_with(b"\0\0\0\x0cJXL \r\n\x87\n") {
        return Some((
            "JPEG XL",
            "convert it to JPEG or PNG first (djxl photo.jxl photo.png)",
        ));
    }
    if bytes.starts_with(b"%PDF") {
        return Some(("PDF", "export the page or picture as a JPEG or PNG image"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ftyp(major: &[u8; 4], compat: &[&[u8; 4]]) -> Vec<u8> {
        let size = 16 + 4 * compat.len();
        let mut b = (size as u32).to_be_bytes().to_vec();
        b.extend_from_slice(b"ftyp");
        b.extend_from_slice(major);
        b.extend_from_slice(&[0, 0, 0, 0]);
        for c in compat {
            b.extend_from_slice(*c);
        }
        b.extend_from_slice(&[0; 32]);
        b
    }

    #[test]
    fn heic_and_avif_are_named_with_a_fix() {
        let heic = require_supported(&ftyp(b"heic", &[b"mif1", b"heic"])).unwrap_err();
        assert!(heic.to_string().contains("HEIC"), "{heic}");
        assert!(heic.to_string().contains("convert it to JPEG"), "{heic}");
        let mif = require_supported(&ftyp(b"mif1", &[b"heic"])).unwrap_err();
        assert!(mif.to_string().contains("HEIC"), "{mif}");
        let avif = require_supported(&ftyp(b"avif", &[b"mif1", b"miaf"])).unwrap_err();
        assert!(avif.to_string().starts_with("AVIF"), "{avif}");
        // An MP4 video is a ftyp file too, but not an image format we name.
        let mp4 = require_supported(&ftyp(b"isom", &[b"mp41"])).unwrap_err();
        assert!(
            mp4.to_string().starts_with("not a supported image"),
            "{mp4}"
        );
    }
}
