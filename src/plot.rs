//! `confusion_matrix.png`: a heatmap with class labels and counts, shaded by the row-normalised
//! value (recall per true class). Drawn on an `image` bitmap with the font8x8 glyphs, so it needs
//! no system fonts.

use std::path::Path;

use anyhow::Result;
use image::{Rgb, RgbImage};

const SCALE: u32 = 2;
const GLYPH: u32 = 8 * SCALE;

/// Draws the matrix (rows: true class, columns: predicted) and writes it atomically as PNG.
pub fn confusion_png(path: &Path, classes: &[String], matrix: &[Vec<usize>]) -> Result<()> {
    let n = classes.len() as u32;
    let labels: Vec<String> = classes
        .iter()
        .map(|c| c.chars().take(14).collect())
        .collect();
    let label_w = labels.iter().map(|l| l.len() as u32).max().unwrap_or(1) * GLYPH + 16;
    let max_count = matrix.iter().flatten().max().copied().unwrap_or(0).max(1);
    let cell = (max_count.to_string().len() as u32 * GLYPH + 12).max(40);
    let top = 3 * GLYPH + label_w; // title + rotated-free column labels written vertically
    let (w, h) = (label_w + n * cell + 16, top + n * cell + 16);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    text(&mut img, 8, 8, "true \\ predicted", Rgb([0, 0, 0]));
    for (j, l) in labels.iter().enumerate() {
        // Column labels, one character per line, left-aligned under the title.
        for (k, ch) in l.chars().enumerate() {
            let x = label_w + j as u32 * cell + (cell - GLYPH) / 2;
            text(
                &mut img,
                x,
                3 * GLYPH + k as u32 * GLYPH,
                &ch.to_string(),
                Rgb([0, 0, 0]),
            );
        }
    }
    for (i, row) in matrix.iter().enumerate() {
        let y0 = top + i as u32 * cell;
        text(
            &mut img,
            8,
            y0 + (cell - GLYPH) / 2,
            &labels[i],
            Rgb([0, 0, 0]),
        );
        let total: usize = row.iter().sum();
        for (j, &v) in row.iter().enumerate() {
            let share = if total > 0 {
                v as f64 / total as f64
            } else {
                0.0
            };
            let shade = |lo: f64, hi: f64| (hi + (lo - hi) * share) as u8;
            let color = Rgb([shade(8.0, 247.0), shade(48.0, 251.0), shade(107.0, 255.0)]);
            let x0 = label_w + j as u32 * cell;
            for y in y0 + 1..y0 + cell {
                for x in x0 + 1..x0 + cell {
                    img.put_pixel(x, y, color);
                }
            }
            let s = v.to_string();
            let fg = if share > 0.5 {
                Rgb([255, 255, 255])
            } else {
                Rgb([0, 0, 0])
            };
            let tx = x0 + (cell - s.len() as u32 * GLYPH) / 2;
            text(&mut img, tx, y0 + (cell - GLYPH) / 2, &s, fg);
        }
    }
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    crate::fsutil::write_atomic(path, &bytes)
}

fn text(img: &mut RgbImage, x: u32, y: u32, s: &str, color: Rgb<u8>) {
    use font8x8::UnicodeFonts;
    for (k, ch) in s.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS.get(ch).unwrap_or([0; 8]);
        for (gy, bits) in glyph.iter().enumerate() {
            for gx in 0..8 {
                if bits >> gx & 1 == 1 {
                    for dy in 0..SCALE {
                        for dx in 0..SCALE {
                            let px = x + k as u32 * GLYPH + gx * SCALE + dx;
                            let py = y + gy as u32 * SCALE + dy;
                            if px < img.width() && py < img.height() {
                                img.put_pixel(px, py, color);
                            }
                        }
                    }
                }
            }
        }
    }
}
