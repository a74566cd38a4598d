//! `flora runs delete`, `restore` and `gc`: MLflow's soft delete, its undo, and the purge of
//! deleted runs (see [`flora::track::soft_delete`]).

use std::process::ExitCode;

use anyhow::Result;

use super::show::bytes;
use crate::cli::{RunsDeleteArgs, RunsGcArgs, RunsRestoreArgs};
use flora::config::Settings;
use flora::track::slots::Registry;
use flora::track::soft_delete;
use flora::track::store::{RunInfo, RunStore, short_id};

/// Soft-deletes the runs, after checking every one (nothing changes if one is refused).
pub fn delete(settings: &Settings, store: &RunStore, args: &RunsDeleteArgs) -> Result<ExitCode> {
    let registry = Registry::new(settings.models_dir());
    let mut todo: Vec<RunInfo> = Vec::new();
    for key in &args.runs {
        let run = match store.find(key) {
            Ok(run) => run,
            Err(e) => match store.find_deleted(key) {
                Ok(run) => {
                    println!(
                        "run {} ({}) is already deleted",
                        run.run_name,
                        short_id(&run.run_id)
                    );
                    continue;
                }
                Err(_) => return Err(e),
            },
        };
        soft_delete::refuse_delete(&registry, &run, args.force)?;
        if !todo.iter().any(|r| r.run_id == run.run_id) {
            todo.push(run);
        }
    }
    for run in &todo {
        let held = soft_delete::slots_holding(&registry, &run.run_id)?;
        soft_delete::delete(run)?;
        println!(
            "deleted run {} ({}): hidden from lists and model choice; `flora runs restore {}` \
             brings it back, `flora runs gc` removes it for good",
            run.run_name,
            short_id(&run.run_id),
            short_id(&run.run_id)
        );
        for slot in held {
            eprintln!(
                "warning: slot {slot} holds this run's model and keeps serving its own copy; \
                 `flora runs gc` keeps the run while it does"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Restores soft-deleted runs.
pub fn restore(store: &RunStore, args: &RunsRestoreArgs) -> Result<ExitCode> {
    let mut todo: Vec<RunInfo> = Vec::new();
    for key in &args.runs {
        let run = store.find_deleted(key)?;
        if !todo.iter().any(|r| r.run_id == run.run_id) {
            todo.push(run);
        }
    }
    for run in &todo {
        soft_delete::restore(run)?;
        println!("restored run {} ({})", run.run_name, short_id(&run.run_id));
    }
    Ok(ExitCode::SUCCESS)
}

/// Purges deleted runs (older than `--older-than`), or says what it would purge.
pub fn gc(settings: &Settings, store: &RunStore, args: &RunsGcArgs) -> Result<ExitCode> {
    let older_than = match &args.older_than {
        Some(age) => soft_delete::parse_age(age)?,
        None => 0,
    };
    let registry = Registry::new(settings.models_dir());
    let report = soft_delete::gc(store, &registry, older_than, args.dry_run)?;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut total = 0;
    for (run, n) in &report.purged {
        total += n;
        println!(
            "{verb} run {} ({}), {}",
            run.run_name,
            short_id(&run.run_id),
            bytes(*n)
        );
    }
    for (run, why) in &report.kept {
        println!(
            "kept deleted run {} ({}): {why}",
            run.run_name,
            short_id(&run.run_id)
        );
    }
    for path in &report.leftovers {
        println!(
            "removed the leftover {} of an interrupted gc",
            path.display()
        );
    }
    if report.purged.is_empty() {
        println!("no deleted run to remove in {}", store.root().display());
    } else {
        println!(
            "{verb} {} run(s), {} in all",
            report.purged.len(),
            bytes(total)
        );
    }
    Ok(ExitCode::SUCCESS)
}
