//! `flora runs`: the run store's runs, newest first.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{RunsArgs, RunsCommand};
use crate::config::Settings;
use crate::store::{self, RunStore};

/// Prints one row (or JSON line) per run: id, name, status, best val accuracy. A RUNNING run
/// whose process is gone shows as CRASHED.
pub fn run(settings: &Settings, args: &RunsArgs) -> Result<ExitCode> {
    if let Some(RunsCommand::Push(push)) = &args.command {
        return crate::push::run(settings, push);
    }
    let store = RunStore::new(settings.runs_dir());
    let runs = store.runs()?;
    if !args.json {
        println!(
            "{:<10} {:<28} {:<9} {:>8}  started",
            "run", "name", "status", "val_acc"
        );
    }
    for r in &runs {
        let acc = store::read_metric(r, "best_val_accuracy")?
            .last()
            .map(|m| m.1);
        let started = jiff::Timestamp::from_millisecond(r.start_time as i64)
            .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default();
        if args.json {
            let line = serde_json::json!({
                "run_id": r.run_id, "run_name": r.run_name, "status": r.status_label(),
                "val_accuracy": acc, "start_time": r.start_time, "experiment_id": r.experiment_id,
            });
            println!("{line}");
        } else {
            let acc = acc.map_or("-".into(), |a| format!("{:.2}%", 100.0 * a));
            println!(
                "{:<10} {:<28} {:<9} {:>8}  {started}",
                store::short_id(&r.run_id),
                r.run_name,
                r.status_label(),
                acc
            );
        }
    }
    if runs.is_empty() && !args.json {
        eprintln!(
            "no runs yet in {}: run `flora train`",
            store.root().display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
