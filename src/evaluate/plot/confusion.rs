//! `confusion_matrix.png`: rows the true class, columns the predicted one, each cell shaded by
//! its share of the true class's images (recall on the diagonal) on matplotlib's "Blues" scale
//! with a colour bar, counts written in the cells, column labels rotated. The image stays
//! bounded for any class count: past [`MAX_SHOWN`] classes only the most confused ones are
//! drawn (the title says so; `confusion_matrix.csv` keeps the full matrix).

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{Canvas, bold, draw_err, font, render_png, shorten, text_width};

/// Most classes drawn; past this, the most confused ones.
pub const MAX_SHOWN: usize = 40;
/// Longest class label drawn, in characters (cut in the middle past it).
const MAX_LABEL: usize = 22;

/// matplotlib's "Blues" colour map, light to dark.
const BLUES: [(u8, u8, u8); 9] = [
    (247, 251, 255),
    (222, 235, 247),
    (198, 219, 239),
    (158, 202, 225),
    (107, 174, 214),
    (66, 146, 198),
    (33, 113, 181),
    (8, 81, 156),
    (8, 48, 107),
];

/// The "Blues" colour of a share in [0, 1].
pub fn blues(share: f64) -> RGBColor {
    let t = share.clamp(0.0, 1.0) * (BLUES.len() - 1) as f64;
    let i = (t.floor() as usize).min(BLUES.len() - 2);
    let f = t - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (BLUES[i], BLUES[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// The classes to draw, in index order: all of them, or [`MAX_SHOWN`] picked from the largest
/// confusions: the two classes of each most frequent (true, predicted) mistake, largest first,
/// so the cells that matter are on the image; classes with no mistakes fill any room left.
pub fn shown_classes(matrix: &[Vec<usize>]) -> Vec<usize> {
    let n = matrix.len();
    if n <= MAX_SHOWN {
        return (0..n).collect();
    }
    let mut cells: Vec<(usize, usize, usize)> = Vec::new();
    for (i, row) in matrix.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            if i != j && v > 0 {
                cells.push((v, i, j));
            }
        }
    }
    cells.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut picked = vec![false; n];
    let mut shown = Vec::with_capacity(MAX_SHOWN);
    let candidates = cells.iter().flat_map(|&(_, i, j)| [i, j]).chain(0..n);
    for c in candidates {
        if shown.len() == MAX_SHOWN {
            break;
        }
        if !picked[c] {
            picked[c] = true;
            shown.push(c);
        }
    }
    shown.sort_unstable();
    shown
}

/// Draws the matrix under `title` and writes it atomically as PNG.
pub fn confusion_png(
    path: &Path,
    title: &str,
    classes: &[String],
    matrix: &[Vec<usize>],
) -> Result<()> {
    let shown = shown_classes(matrix);
    let m = shown.len().max(1) as i32;
    let cell = (760 / m).clamp(18, 72);
    let label_size = (cell as f64 * 0.55).clamp(10.0, 15.0);
    let count_size = (cell as f64 * 0.4).clamp(7.0, 16.0);
    let labels: Vec<String> = shown
        .iter()
        .map(|&i| shorten(&classes[i], MAX_LABEL))
        .collect();
    let label_w = labels
        .iter()
        .map(|l| text_width(&font(label_size), l))
        .max()
        .unwrap_or(0)
        + 10;
    let subtitle = (shown.len() < classes.len()).then(|| {
        format!(
            "{} of {} classes: those of the most frequent mistakes; all in confusion_matrix.csv",
            shown.len(),
            classes.len()
        )
    });
    let top = if subtitle.is_some() { 84 } else { 64 };
    let left = 40 + label_w;
    let grid = cell * m;
    let bar_x = left + grid + 28;
    let title_w = text_width(&bold(20.0), title).max(
        subtitle
            .as_deref()
            .map_or(0, |s| text_width(&font(14.0), s)),
    );
    let width = (bar_x + 22 + 70).max(title_w + 40);
    let height = top + grid + label_w + 48;
    render_png(path, (width as u32, height as u32), |root| {
        let centre = Pos::new(HPos::Center, VPos::Center);
        root.draw(&Text::new(
            title.to_string(),
            (width / 2, 26),
            bold(20.0).into_text_style(root).pos(centre),
        ))
        .map_err(draw_err)?;
        if let Some(sub) = &subtitle {
            root.draw(&Text::new(
                sub.clone(),
                (width / 2, 52),
                font(14.0).into_text_style(root).pos(centre),
            ))
            .map_err(draw_err)?;
        }
        draw_cells(root, matrix, &shown, (left, top), cell, count_size)?;
        draw_labels(root, &labels, (left, top), cell, label_size)?;
        // Axis titles: "True label" rotated on the left, "Predicted label" under the columns.
        root.draw(&Text::new(
            "True label",
            (14, top + grid / 2),
            font(15.0)
                .transform(FontTransform::Rotate270)
                .into_text_style(root)
                .pos(centre),
        ))
        .map_err(draw_err)?;
        root.draw(&Text::new(
            "Predicted label",
            (left + grid / 2, top + grid + label_w + 26),
            font(15.0).into_text_style(root).pos(centre),
        ))
        .map_err(draw_err)?;
        draw_colour_bar(root, (bar_x, top), grid)
    })
}

fn draw_cells(
    root: &Canvas,
    matrix: &[Vec<usize>],
    shown: &[usize],
    (left, top): (i32, i32),
    cell: i32,
    count_size: f64,
) -> Result<()> {
    let gap = if cell >= 24 { 1 } else { 0 };
    for (r, &i) in shown.iter().enumerate() {
        let row = &matrix[i];
        let total: usize = row.iter().sum();
        for (c, &j) in shown.iter().enumerate() {
            let v = row[j];
            let share = if total > 0 {
                v as f64 / total as f64
            } else {
                0.0
            };
            let (x0, y0) = (left + c as i32 * cell, top + r as i32 * cell);
            root.draw(&Rectangle::new(
                [(x0 + gap, y0 + gap), (x0 + cell - gap, y0 + cell - gap)],
                blues(share).filled(),
            ))
            .map_err(draw_err)?;
            let text = v.to_string();
            // Counts only where they fit (digits are about 0.64 em wide).
            if (text.len() as f64 * count_size * 0.64) < (cell - 4) as f64 {
                let fg = if share > 0.5 {
                    WHITE
                } else {
                    RGBColor(30, 30, 30)
                };
                root.draw(&Text::new(
                    text,
                    (x0 + cell / 2, y0 + cell / 2),
                    font(count_size)
                        .color(&fg)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                ))
                .map_err(draw_err)?;
            }
        }
    }
    Ok(())
}

fn draw_labels(
    root: &Canvas,
    labels: &[String],
    (left, top): (i32, i32),
    cell: i32,
    size: f64,
) -> Result<()> {
    let grid = cell * labels.len() as i32;
    for (k, label) in labels.iter().enumerate() {
        let mid = k as i32 * cell + cell / 2;
        // Row label, right-aligned against the grid.
        root.draw(&Text::new(
            label.clone(),
            (left - 6, top + mid),
            font(size)
                .into_text_style(root)
                .pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(draw_err)?;
        // Column label, rotated to read bottom to top, its end just under the grid.
        root.draw(&Text::new(
            label.clone(),
            (left + mid, top + grid + 6),
            font(size)
                .transform(FontTransform::Rotate270)
                .into_text_style(root)
                .pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(draw_err)?;
    }
    Ok(())
}

/// A vertical colour bar from 0 % (bottom) to 100 % (top) with ticks and a caption.
fn draw_colour_bar(root: &Canvas, (x, top): (i32, i32), height: i32) -> Result<()> {
    let w = 18;
    for y in 0..height {
        let share = 1.0 - y as f64 / (height - 1).max(1) as f64;
        root.draw(&Rectangle::new(
            [(x, top + y), (x + w, top + y + 1)],
            blues(share).filled(),
        ))
        .map_err(draw_err)?;
    }
    root.draw(&Rectangle::new(
        [(x, top), (x + w, top + height)],
        RGBColor(120, 120, 120),
    ))
    .map_err(draw_err)?;
    for k in 0..=4 {
        let y = top + height - (height * k) / 4;
        root.draw(&PathElement::new(
            vec![(x + w, y), (x + w + 4, y)],
            RGBColor(90, 90, 90),
        ))
        .map_err(draw_err)?;
        root.draw(&Text::new(
            format!("{}%", k * 25),
            (x + w + 7, y),
            font(12.0)
                .into_text_style(root)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(draw_err)?;
    }
    root.draw(&Text::new(
        "share of the true class",
        (x + w + 52, top + height / 2),
        font(13.0)
            .transform(FontTransform::Rotate90)
            .into_text_style(root)
            .pos(Pos::new(HPos::Center, VPos::Center)),
    ))
    .map_err(draw_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A matrix of `n` classes where class i is confused with class i+1 `conf(i)` times.
    fn matrix(n: usize, conf: impl Fn(usize) -> usize) -> (Vec<String>, Vec<Vec<usize>>) {
        let classes = (0..n).map(|i| format!("class-{i:04}")).collect();
        let mut m = vec![vec![0; n]; n];
        for (i, row) in m.iter_mut().enumerate() {
            row[i] = 20;
            row[(i + 1) % n] = conf(i);
        }
        (classes, m)
    }

    #[test]
    fn many_classes_draw_the_most_confused_in_a_bounded_image() {
        let dir = tempfile::tempdir().unwrap();
        for n in [3, 50, 1000] {
            let (classes, m) = matrix(n, |i| if i % 7 == 0 { 9 } else { i % 3 });
            let path = dir.path().join(format!("cm{n}.png"));
            confusion_png(
                &path,
                &format!("run t: accuracy 80.0% ({n} classes)"),
                &classes,
                &m,
            )
            .unwrap();
            // FLORA_KEEP_PLOTS=DIR keeps a copy to look at.
            if let Ok(keep) = std::env::var("FLORA_KEEP_PLOTS") {
                std::fs::copy(
                    &path,
                    std::path::Path::new(&keep).join(format!("cm{n}.png")),
                )
                .unwrap();
            }
            let img = image::open(&path).unwrap();
            assert!(img.width() <= 1600 && img.height() <= 1600, "{n}: {img:?}");
            assert!(img.width() >= 300 && img.height() >= 250, "{n}: {img:?}");
        }
        let (_, m) = matrix(1000, |i| if i % 7 == 0 { 9 } else { 0 });
        let shown = shown_classes(&m);
        assert_eq!(shown.len(), MAX_SHOWN);
        // Class 0 is confused with class 1 (9 times): both are among the most confused, and
        // so are the two classes of every other drawn mistake.
        assert!(shown.contains(&0) && shown.contains(&1));
        assert!(shown.contains(&7) && shown.contains(&8));
        assert!(shown.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn blues_run_from_light_to_dark() {
        assert_eq!(blues(0.0), RGBColor(247, 251, 255));
        assert_eq!(blues(1.0), RGBColor(8, 48, 107));
        let mid = blues(0.5);
        assert!(mid.0 < 247 && mid.2 > 107);
    }
}
