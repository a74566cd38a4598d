//! How large an image flora agrees to decode, and the refusals that name the setting to change.

use anyhow::{Result, bail};

/// Decoder limits: the most pixels an image may have, the most bytes one decode may allocate,
/// and the config keys that raise each (named in every refusal).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeLimits {
    /// Most pixels (width × height) of the stored image.
    pub max_pixels: u64,
    /// Most bytes of pixels one decode may hold at once (after any reduced-scale decoding).
    pub max_alloc: u64,
    /// The config key of `max_pixels`, e.g. `data.max_image_megapixels`.
    pub pixels_key: &'static str,
    /// The config key of `max_alloc`, if the user can set it.
    pub alloc_key: Option<&'static str>,
}

/// The default of `data.max_image_megapixels` and `serve.max_image_megapixels`: today's
/// largest phone modes (200 MP) fit; JPEGs that large decode at a reduced scale.
pub const DEFAULT_MAX_MEGAPIXELS: f64 = 200.0;

impl Default for DecodeLimits {
    fn default() -> Self {
        Self::for_data(DEFAULT_MAX_MEGAPIXELS)
    }
}

impl DecodeLimits {
    /// The limits of reading dataset and other local files (`data.max_image_megapixels`):
    /// a decode may hold up to 8 bytes per allowed pixel (16-bit RGBA), so the pixel limit is
    /// the only one.
    pub fn for_data(megapixels: f64) -> Self {
        let max_pixels = (megapixels * 1e6) as u64;
        Self {
            max_pixels,
            max_alloc: max_pixels.saturating_mul(8),
            pixels_key: "data.max_image_megapixels",
            alloc_key: None,
        }
    }

    /// The limits of `flora serve` (`serve.max_image_megapixels`, `serve.max_decode_bytes`).
    pub fn for_serve(megapixels: f64, max_decode_bytes: u64) -> Self {
        Self {
            max_pixels: (megapixels * 1e6) as u64,
            max_alloc: max_decode_bytes,
            pixels_key: "serve.max_image_megapixels",
            alloc_key: Some("serve.max_decode_bytes"),
        }
    }

    /// Refuses an image of `width`×`height` stored pixels above the pixel limit.
    pub fn check_pixels(&self, width: u32, height: u32) -> Result<()> {
        let pixels = width as u64 * height as u64;
        if pixels > self.max_pixels {
            bail!(
                "image is {width}×{height} ({:.1} MP), over the limit of {} MP: raise {} in \
                 flora.toml to accept it",
                pixels as f64 / 1e6,
                trim(self.max_pixels as f64 / 1e6),
                self.pixels_key
            );
        }
        Ok(())
    }

    /// Refuses a decode that would hold more than `max_alloc` bytes of pixels.
    pub fn check_alloc(&self, width: u32, height: u32, bytes: u64) -> Result<()> {
        if bytes > self.max_alloc {
            let fix = match self.alloc_key {
                Some(key) => format!("raise {key} in flora.toml"),
                None => format!("raise {}", self.pixels_key),
            };
            bail!(
                "decoding this {width}×{height} image needs {} MB, over the limit of {} MB: {fix}, \
                 or send a JPEG (decoded at a reduced scale) or a smaller image",
                bytes.div_ceil(1 << 20),
                self.max_alloc >> 20
            );
        }
        Ok(())
    }
}

/// `200` rather than `200.0`, `12.5` as is.
fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_key() {
        let data = DecodeLimits::for_data(19.0);
        let err = data.check_pixels(13000, 1500).unwrap_err().to_string();
        assert!(err.contains("13000×1500 (19.5 MP)"), "{err}");
        assert!(err.contains("limit of 19 MP"), "{err}");
        assert!(err.contains("data.max_image_megapixels"), "{err}");
        assert!(data.check_pixels(8160, 2000).is_ok());
        let serve = DecodeLimits::for_serve(200.0, 64 << 20);
        let err = serve
            .check_alloc(8000, 8000, 192_000_000)
            .unwrap_err()
            .to_string();
        assert!(err.contains("serve.max_decode_bytes"), "{err}");
    }

    #[test]
    fn defaults_take_a_200_mp_photo() {
        let d = DecodeLimits::default();
        assert!(d.check_pixels(16320, 12240).is_ok());
        assert!(d.check_pixels(20000, 12000).is_err());
    }
}
