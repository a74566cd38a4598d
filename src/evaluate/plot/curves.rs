//! Line charts against the epoch: a run's `curves.png` (loss and accuracy, train and val) and
//! the `flora runs compare` overlay (one colour per run).

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::{Canvas, PALETTE, bold, draw_err, font, render_png, shorten};
use crate::track::epochs::EpochStats;
use crate::track::store::Run;

/// One line: (epoch, value) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
}

/// One chart of a figure.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub y_label: String,
    /// Values are shares in [0, 1], drawn as percentages on a 0–100 % axis.
    pub percent: bool,
    pub series: Vec<Series>,
}

const PANEL_W: u32 = 620;
const PANEL_H: u32 = 460;
const TITLE_H: u32 = 48;

/// Writes panels side by side under `title`, as PNG.
pub fn panels_png(path: &Path, title: &str, panels: &[Panel]) -> Result<()> {
    let size = (PANEL_W * panels.len().max(1) as u32, PANEL_H + TITLE_H);
    render_png(path, size, |root| {
        let (top, body) = root.split_vertically(TITLE_H);
        top.draw(&Text::new(
            shorten(title, 110),
            (size.0 as i32 / 2, TITLE_H as i32 / 2),
            bold(22.0).into_text_style(&top).pos(centered()),
        ))
        .map_err(draw_err)?;
        let areas = body.split_evenly((1, panels.len().max(1)));
        for (panel, area) in panels.iter().zip(&areas) {
            draw_panel(area, panel)?;
        }
        Ok(())
    })
}

fn centered() -> plotters::style::text_anchor::Pos {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    Pos::new(HPos::Center, VPos::Center)
}

fn draw_panel(area: &Canvas, panel: &Panel) -> Result<()> {
    let points = || panel.series.iter().flat_map(|s| s.points.iter());
    let max_epoch = points().map(|p| p.0).fold(1.0, f64::max);
    let x_range = 0.5..max_epoch + 0.5;
    let scale = if panel.percent { 100.0 } else { 1.0 };
    let y_range = if panel.percent {
        0.0..100.0
    } else {
        let finite = || points().map(|p| p.1).filter(|v| v.is_finite());
        let hi = finite().fold(f64::MIN, f64::max);
        let lo = finite().fold(f64::MAX, f64::min);
        if hi < lo {
            0.0..1.0
        } else {
            let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.05).max(1e-3);
            (lo - pad).max(0.0)..hi + pad
        }
    };
    let y_span = (y_range.start, y_range.end);
    let mut chart = ChartBuilder::on(area)
        .margin(14)
        .caption(&panel.title, bold(17.0))
        .x_label_area_size(46)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range, y_range)
        .map_err(draw_err)?;
    let epochs = max_epoch as usize;
    let x_fmt = |x: &f64| {
        if (x - x.round()).abs() < 1e-6 && *x >= 1.0 {
            format!("{}", x.round() as i64)
        } else {
            String::new()
        }
    };
    // Enough decimals to tell the ticks (about 8 over the range) apart.
    let step = (y_span.1 - y_span.0) / 8.0;
    let decimals = (-step.log10()).ceil().clamp(0.0, 5.0) as usize;
    let y_fmt = move |y: &f64| {
        if panel.percent {
            format!("{y:.0}%")
        } else {
            format!("{y:.decimals$}")
        }
    };
    chart
        .configure_mesh()
        .x_labels(epochs.clamp(2, 12) + 1)
        .y_labels(8)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .x_desc("epoch")
        .y_desc(panel.y_label.as_str())
        .label_style(font(13.0))
        .axis_desc_style(font(15.0))
        .light_line_style(RGBColor(238, 238, 238))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(draw_err)?;
    for s in &panel.series {
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, y)| (x, y * scale))
            .collect();
        let color = s.color;
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(draw_err)?
            .label(shorten(&s.label, 40))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(draw_err)?;
    }
    chart
        .configure_series_labels()
        .position(if panel.percent {
            SeriesLabelPosition::LowerRight
        } else {
            SeriesLabelPosition::UpperRight
        })
        .label_font(font(13.0))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(190, 190, 190))
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

/// The two panels of a run's training curves: loss and accuracy, train and val.
pub fn training_panels(history: &[EpochStats]) -> Vec<Panel> {
    let line = |label: &str, color: usize, f: fn(&EpochStats) -> f64| Series {
        label: label.into(),
        points: history.iter().map(|s| (s.epoch as f64, f(s))).collect(),
        color: PALETTE[color],
    };
    vec![
        Panel {
            title: "Loss".into(),
            y_label: "cross-entropy loss".into(),
            percent: false,
            series: vec![
                line("train", 0, |s| s.train_loss),
                line("val", 1, |s| s.val_loss),
            ],
        },
        Panel {
            title: "Accuracy".into(),
            y_label: "accuracy".into(),
            percent: true,
            series: vec![
                line("train", 0, |s| s.train_accuracy),
                line("val", 1, |s| s.val_accuracy),
            ],
        },
    ]
}

/// The title of a run's curves: its name and best val accuracy.
pub fn training_title(run_name: &str, history: &[EpochStats]) -> String {
    let best = history
        .iter()
        .max_by(|a, b| a.val_accuracy.total_cmp(&b.val_accuracy));
    match best {
        Some(b) => format!(
            "{run_name}: best val accuracy {:.1}% at epoch {}",
            100.0 * b.val_accuracy,
            b.epoch
        ),
        None => run_name.to_string(),
    }
}

/// Writes `curves.png` into the run's artifacts after an epoch. A plot that cannot be drawn
/// is reported on stderr and never stops training.
pub fn save_for_run(run: &Run, history: &[EpochStats]) {
    let path = run.artifacts().join("curves.png");
    let title = training_title(&run.info.run_name, history);
    if let Err(e) = panels_png(&path, &title, &training_panels(history)) {
        eprintln!("warning: could not write {}: {e:#}", path.display());
    }
}
