//! `flora runs show RUN`: everything about one run: params, the last and best value of each
//! metric, tags, artifacts and the per-epoch results.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use super::table::{self, left, right};
use crate::cli::RunsShowArgs;
use flora::track::store::RunStore;
use flora::track::summary::{RunSummary, format_duration, format_time};

/// Prints the run (a deleted one too, marked as such), or one JSON object with `--json`.
pub fn run(store: &RunStore, args: &RunsShowArgs) -> Result<ExitCode> {
    let s = RunSummary::load(store.find_any(&args.run)?)?;
    let artifacts = artifacts(&s);
    let (keys, epochs) = s.epochs()?;
    if args.json {
        let metrics: serde_json::Map<String, serde_json::Value> = s
            .metrics
            .iter()
            .map(|(k, m)| {
                let v = json!({
                    "last": m.last.0, "last_step": m.last.1, "count": m.count,
                    "best": m.best.map(|b| b.0), "best_step": m.best.map(|b| b.1),
                });
                (k.clone(), v)
            })
            .collect();
        let epochs: Vec<serde_json::Value> = epochs
            .iter()
            .map(|(step, values)| {
                let mut row = serde_json::Map::new();
                row.insert("epoch".into(), json!(step));
                for (k, v) in keys.iter().zip(values) {
                    row.insert(k.to_string(), json!(v));
                }
                serde_json::Value::Object(row)
            })
            .collect();
        let files: Vec<serde_json::Value> = artifacts
            .iter()
            .map(|(p, n)| json!({"path": p, "bytes": n}))
            .collect();
        let out = json!({
            "run": s.to_json(), "params": s.params, "tags": s.tags, "metrics": metrics,
            "artifacts": files, "epochs": epochs, "artifact_dir": s.info.artifacts(),
        });
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    let width = table::screen_width();
    let i = &s.info;
    println!("run         {} ({})", i.run_name, i.run_id);
    println!("experiment  {}", i.experiment_id);
    match i.deleted_time {
        Some(t) if i.is_deleted() => println!(
            "status      {} (DELETED {}: `flora runs restore {}` brings it back)",
            s.status,
            format_time(t),
            flora::track::store::short_id(&i.run_id)
        ),
        _ if i.is_deleted() => println!("status      {} (DELETED)", s.status),
        _ => println!("status      {}", s.status),
    }
    let took = s
        .duration_ms()
        .map_or(String::new(), |d| format!(", took {}", format_duration(d)));
    println!("started     {} UTC{took}", format_time(i.start_time));
    if let Some(fp) = s.data_fingerprint() {
        println!("data        {fp}");
    }
    println!("folder      {}", i.dir.display());

    println!("\nparams");
    print!("{}", key_values(&s.params, width));

    println!("\nmetrics");
    let rows: Vec<Vec<String>> = s
        .metrics
        .iter()
        .map(|(k, m)| {
            vec![
                format!("  {k}"),
                value(m.last.0),
                m.last.1.to_string(),
                m.best.map_or("-".into(), |b| value(b.0)),
                m.best.map_or("-".into(), |b| b.1.to_string()),
            ]
        })
        .collect();
    let cols = [
        left(""),
        right("last"),
        right("step"),
        right("best"),
        right("step"),
    ];
    print!("{}", table::render(&cols, &rows, None, 0, width));

    println!("\ntags");
    print!("{}", key_values(&s.tags, width));

    println!("\nartifacts ({})", i.artifacts().display());
    let rows: Vec<Vec<String>> = artifacts
        .iter()
        .map(|(p, n)| vec![format!("  {p}"), bytes(*n)])
        .collect();
    print!(
        "{}",
        table::render(&[left(""), right("")], &rows, Some(0), 20, width)
    );

    if !epochs.is_empty() {
        println!("\nepochs");
        let mut cols = vec![right("epoch")];
        cols.extend(keys.iter().map(|k| right(short_key(k))));
        let rows: Vec<Vec<String>> = epochs
            .iter()
            .map(|(step, values)| {
                let mut row = vec![step.to_string()];
                row.extend(keys.iter().zip(values).map(|(k, v)| match v {
                    None => "-".into(),
                    Some(v) if k.ends_with("accuracy") => format!("{:.2}%", 100.0 * v),
                    Some(v) => value(*v),
                }));
                row
            })
            .collect();
        print!("{}", table::render(&cols, &rows, None, 0, width));
    }
    Ok(ExitCode::SUCCESS)
}

/// A column header for a per-epoch metric.
/// A two-column table of `key value` lines (params, tags), values trimmed.
fn key_values(map: &std::collections::BTreeMap<String, String>, width: usize) -> String {
    let rows: Vec<Vec<String>> = map
        .iter()
        .map(|(k, v)| vec![format!("  {k}"), v.trim().to_string()])
        .collect();
    table::render(&[left(""), left("")], &rows, Some(1), 20, width)
}

fn short_key(key: &str) -> &'static str {
    match key {
        "train_loss" => "train_loss",
        "train_accuracy" => "train_acc",
        "val_loss" => "val_loss",
        "val_accuracy" => "val_acc",
        "learning_rate" => "lr",
        "epoch_seconds" => "secs",
        "images_per_second" => "img/s",
        _ => "?",
    }
}

/// A metric value: whole numbers as such, tiny ones in scientific form, others to 4 decimals.
pub fn value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.2e}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}

/// `1.2 kB`, `3.4 MB`.
pub fn bytes(n: u64) -> String {
    match n {
        n if n < 1000 => format!("{n} B"),
        n if n < 1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n => format!("{:.2} GB", n as f64 / 1e9),
    }
}

/// The run's artifact files (relative paths, sizes), sorted; links are not followed.
fn artifacts(s: &RunSummary) -> Vec<(String, u64)> {
    let root = s.info.artifacts();
    let mut files: Vec<(String, u64)> = walkdir::WalkDir::new(&root)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter(|e| !e.file_name().to_string_lossy().starts_with(".tmp-"))
        .filter_map(|e| {
            let rel = e
                .path()
                .strip_prefix(&root)
                .ok()?
                .to_string_lossy()
                .into_owned();
            Some((rel, e.metadata().ok()?.len()))
        })
        .collect();
    files.sort();
    files
}
