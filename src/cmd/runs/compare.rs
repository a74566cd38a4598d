//! `flora runs compare RUN RUN...`: the params that differ, the metrics side by side, and a PNG
//! overlaying the runs' validation accuracy and loss curves, one colour per run.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};

use super::show::value;
use super::table::{self, Col, left};
use crate::cli::RunsCompareArgs;
use flora::evaluate::plot::PALETTE;
use flora::evaluate::plot::curves::{Panel, Series, panels_png};
use flora::track::store::{RunStore, short_id};
use flora::track::summary::{RunSummary, format_duration, percent};

/// Prints both tables and writes the overlay PNG (to `--out`, else `compare-<ids>.png` in the
/// current folder), saying where.
pub fn run(store: &RunStore, args: &RunsCompareArgs) -> Result<ExitCode> {
    let mut runs = Vec::new();
    for key in &args.runs {
        let s = RunSummary::load(store.find_any(key)?)?;
        if runs
            .iter()
            .any(|r: &RunSummary| r.info.run_id == s.info.run_id)
        {
            bail!(
                "run {} ({}) is named twice: compare different runs",
                s.info.run_name,
                s.info.run_id
            );
        }
        runs.push(s);
    }
    let labels = labels(&runs);
    let width = table::screen_width();
    let mut cols = vec![left("")];
    cols.extend(labels.iter().map(|_| Col {
        header: "",
        right: false,
    }));
    // Headers are run labels (owned strings): the first row carries them.
    let header: Vec<String> = std::iter::once(String::new())
        .chain(labels.iter().cloned())
        .collect();

    let keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.params.keys()).collect();
    let differing: Vec<Vec<String>> = keys
        .into_iter()
        .filter_map(|k| {
            let values: Vec<String> = runs
                .iter()
                .map(|r| r.params.get(k).map_or("-".into(), |v| v.trim().to_string()))
                .collect();
            let same = values.iter().all(|v| *v == values[0]);
            (!same).then(|| std::iter::once(format!("  {k}")).chain(values).collect())
        })
        .collect();
    if differing.is_empty() {
        println!("params: all the same");
    } else {
        println!("params that differ");
        let rows: Vec<Vec<String>> = std::iter::once(header.clone()).chain(differing).collect();
        print!("{}", fit(&cols, &rows, width));
    }

    println!("\nmetrics");
    let metric = |f: &dyn Fn(&RunSummary) -> String, name: &str| -> Vec<String> {
        std::iter::once(format!("  {name}"))
            .chain(runs.iter().map(f))
            .collect()
    };
    let last = |key: &'static str| {
        move |r: &RunSummary| r.metrics.get(key).map_or("-".into(), |m| value(m.last.0))
    };
    let rows = vec![
        header,
        metric(&|r| r.shown_status().into(), "status"),
        metric(&|r| r.epochs_run().to_string(), "epochs"),
        metric(
            &|r| match r.best_val_accuracy() {
                Some((a, e)) => format!("{}% (ep {e})", percent(Some(a))),
                None => "-".into(),
            },
            "best val accuracy",
        ),
        metric(&last("val_loss"), "last val_loss"),
        metric(&last("train_loss"), "last train_loss"),
        metric(
            &|r| {
                let m = r.metrics.get("train_accuracy");
                m.map_or("-".into(), |m| format!("{}%", percent(Some(m.last.0))))
            },
            "last train accuracy",
        ),
        metric(
            &|r| {
                r.eval_accuracy()
                    .map_or("-".into(), |a| format!("{}%", percent(Some(a))))
            },
            "eval accuracy",
        ),
        metric(&last("eval_macro_f1"), "eval macro F1"),
        metric(
            &|r| r.duration_ms().map_or("-".into(), format_duration),
            "duration",
        ),
        metric(&|r| r.data_short(), "data"),
    ];
    print!("{}", fit(&cols, &rows, width));
    let fingerprints: BTreeSet<Option<&str>> = runs.iter().map(|r| r.data_fingerprint()).collect();
    if fingerprints.len() == 1 {
        println!("all trained on the same data");
    } else {
        println!(
            "trained on different data (the data row differs): accuracies are not comparable one to one"
        );
    }

    let out = args.out.clone().unwrap_or_else(|| default_out(&runs));
    let mut acc = Vec::new();
    let mut loss = Vec::new();
    for (k, (r, label)) in runs.iter().zip(&labels).enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        acc.push(Series {
            label: label.clone(),
            points: r.series("val_accuracy")?,
            color,
        });
        loss.push(Series {
            label: label.clone(),
            points: r.series("val_loss")?,
            color,
        });
    }
    if acc.iter().all(|s| s.points.is_empty()) {
        eprintln!("no per-epoch validation results in these runs: no plot written");
        return Ok(ExitCode::SUCCESS);
    }
    let panels = [
        Panel {
            title: "Validation accuracy".into(),
            y_label: "val accuracy".into(),
            percent: true,
            series: acc,
        },
        Panel {
            title: "Validation loss".into(),
            y_label: "val loss".into(),
            percent: false,
            series: loss,
        },
    ];
    let title = format!("Compare: {}", labels.join(" vs "));
    panels_png(&out, &title, &panels)?;
    println!(
        "wrote the curves of {} runs to {}",
        runs.len(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Run names, with the short id added where two runs share a name.
fn labels(runs: &[RunSummary]) -> Vec<String> {
    runs.iter()
        .map(|r| {
            let twins = runs
                .iter()
                .filter(|o| o.info.run_name == r.info.run_name)
                .count();
            if twins > 1 {
                format!("{} ({})", r.info.run_name, short_id(&r.info.run_id))
            } else {
                r.info.run_name.clone()
            }
        })
        .collect()
}

/// `compare-<id>-<id>….png` in the current folder (at most four ids, then the count).
fn default_out(runs: &[RunSummary]) -> PathBuf {
    let mut name = String::from("compare");
    for r in runs.iter().take(4) {
        name.push('-');
        name.extend(
            short_id(&r.info.run_id)
                .chars()
                .filter(char::is_ascii_alphanumeric),
        );
    }
    if runs.len() > 4 {
        name.push_str(&format!("-and-{}-more", runs.len() - 4));
    }
    PathBuf::from(format!("{name}.png"))
}

/// A table whose first row holds the headers, every value column cut to fit `width`.
fn fit(cols: &[Col], rows: &[Vec<String>], width: usize) -> String {
    let key_w = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
    let n = cols.len() - 1;
    let per = (width.saturating_sub(key_w + n) / n.max(1)).max(8);
    let cut: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == 0 {
                        c.clone()
                    } else {
                        flora::evaluate::plot::shorten(c, per)
                    }
                })
                .collect()
        })
        .collect();
    table::render(cols, &cut, None, 0, width)
}
