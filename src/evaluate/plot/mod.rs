//! PNG plots: a run's training curves, the `flora runs compare` overlay and eval's confusion
//! matrix. Drawn with plotters on an RGB buffer and encoded with `image`; text uses the DejaVu
//! Sans subset compiled into the binary (`assets/fonts/`), so no system font is ever read.

pub mod confusion;
pub mod curves;

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

pub use confusion::confusion_png;

/// The font family name the plots use (the embedded DejaVu Sans subset).
pub const FONT: &str = "flora-sans";

static REGULAR: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans-subset.ttf");
static BOLD: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans-Bold-subset.ttf");

/// Registers the embedded fonts with plotters (once per process).
pub(crate) fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The files are part of the binary: a failure here is a build defect, caught by tests.
        let _ = register_font(FONT, FontStyle::Normal, REGULAR);
        let _ = register_font(FONT, FontStyle::Bold, BOLD);
    });
}

/// A text style in the embedded font.
pub fn font(size: f64) -> FontDesc<'static> {
    FontDesc::new(FontFamily::Name(FONT), size, FontStyle::Normal)
}

/// A bold text style in the embedded font.
pub fn bold(size: f64) -> FontDesc<'static> {
    FontDesc::new(FontFamily::Name(FONT), size, FontStyle::Bold)
}

/// The width in pixels of `text` drawn in `style` (a rough estimate if the font cannot say).
pub fn text_width(style: &FontDesc, text: &str) -> i32 {
    register_fonts();
    style.box_size(text).map_or(
        (text.chars().count() as f64 * style.get_size() * 0.6) as i32,
        |(w, _)| w as i32,
    )
}

/// matplotlib's "tab10" colours, for one series (or run) each.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The drawing area plots draw on.
pub type Canvas<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Turns a plotters error into an anyhow one.
pub fn draw_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

/// Draws a `width`×`height` white canvas with `draw` and writes it to `path` as PNG,
/// atomically (temp file + rename).
pub fn render_png(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&Canvas) -> Result<()>,
) -> Result<()> {
    register_fonts();
    let mut pixels = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    let img = image::RgbImage::from_raw(width, height, pixels)
        .context("the plot buffer has the canvas's size")?;
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .context("encoding the plot as PNG")?;
    crate::util::fsutil::write_atomic(path, &bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// `text` cut to at most `max` characters, with `…` in the middle when cut (the start and the
/// end of a run name tell runs apart best).
pub fn shorten(text: &str, max: usize) -> String {
    let n = text.chars().count();
    if n <= max || max < 3 {
        return text.to_string();
    }
    let head = (max - 1).div_ceil(2);
    let tail = max - 1 - head;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(n - tail).collect();
    format!("{start}…{end}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortening_keeps_both_ends() {
        assert_eq!(shorten("cnn-20261123-201400", 11), "cnn-2…01400");
        assert_eq!(shorten("short", 11), "short");
        assert_eq!(shorten("ééééééééééé", 5), "éé…éé");
    }

    #[test]
    fn the_embedded_fonts_load() {
        register_fonts();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.png");
        render_png(&path, (200, 60), |c| {
            c.draw(&Text::new("Ag", (10, 10), font(30.0)))
                .map_err(draw_err)?;
            Ok(())
        })
        .unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        // Text was drawn: some pixels are dark.
        assert!(img.pixels().any(|p| p.0[0] < 100), "no text drawn");
    }
}
