//! `flora runs list` (and bare `flora runs`): one row per run, newest first, filtered and
//! sorted as asked; `--json` gives one object per line.

use std::cmp::Ordering;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::table::{self, left, right};
use crate::cli::{RunsListArgs, RunsSort, RunsStatus};
use flora::model::Arch;
use flora::track::store::RunStore;
use flora::track::summary::{RunSummary, format_duration, percent};

/// Prints the table (or JSON lines). A RUNNING run whose process is gone shows as CRASHED, a
/// deleted one (`--all`, `--deleted`) as DELETED.
pub fn run(store: &RunStore, args: &RunsListArgs) -> Result<ExitCode> {
    let all = store.all_runs()?;
    let total = all.len();
    let pattern = args
        .name
        .as_deref()
        .map(|p| glob::Pattern::new(p).with_context(|| format!("--name '{p}' is not a valid glob")))
        .transpose()?;
    let mut runs = Vec::new();
    for info in all {
        let wanted = if args.deleted {
            info.is_deleted()
        } else {
            args.all || !info.is_deleted()
        };
        if !wanted || pattern.as_ref().is_some_and(|p| !p.matches(&info.run_name)) {
            continue;
        }
        let s = RunSummary::load(info)?;
        if !args.status.is_empty() && !args.status.iter().any(|&st| status_is(&s, st)) {
            continue;
        }
        if args
            .arch
            .is_some_and(|a| s.arch() != Some(Arch::from(a).as_str()))
        {
            continue;
        }
        runs.push(s);
    }
    sort(&mut runs, args.sort);
    if args.reverse {
        runs.reverse();
    }
    if let Some(n) = args.limit {
        runs.truncate(n);
    }
    if args.json {
        for s in &runs {
            println!("{}", s.to_json());
        }
    } else if runs.is_empty() {
        if total == 0 {
            eprintln!(
                "no runs yet in {}: run `flora train`",
                store.root().display()
            );
        } else {
            eprintln!("no run matches ({total} in {})", store.root().display());
        }
    } else {
        print!("{}", table(&runs));
    }
    Ok(ExitCode::SUCCESS)
}

fn status_is(s: &RunSummary, want: RunsStatus) -> bool {
    let name = match want {
        RunsStatus::Running => "RUNNING",
        RunsStatus::Scheduled => "SCHEDULED",
        RunsStatus::Finished => "FINISHED",
        RunsStatus::Failed => "FAILED",
        RunsStatus::Killed => "KILLED",
        RunsStatus::Crashed => "CRASHED",
    };
    s.status == name
}

/// Sorts in the key's natural order (names A to Z, figures best or largest first); runs
/// without the figure go last; ties stay newest first.
fn sort(runs: &mut [RunSummary], key: RunsSort) {
    fn desc(a: Option<f64>, b: Option<f64>) -> Ordering {
        match (a, b) {
            (Some(a), Some(b)) => b.total_cmp(&a),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    }
    match key {
        RunsSort::StartTime => {}
        RunsSort::ValAccuracy => runs.sort_by(|a, b| {
            desc(
                a.best_val_accuracy().map(|x| x.0),
                b.best_val_accuracy().map(|x| x.0),
            )
        }),
        RunsSort::EvalAccuracy => runs.sort_by(|a, b| desc(a.eval_accuracy(), b.eval_accuracy())),
        RunsSort::Name => runs.sort_by(|a, b| a.info.run_name.cmp(&b.info.run_name)),
        RunsSort::Status => runs.sort_by(|a, b| a.shown_status().cmp(b.shown_status())),
        RunsSort::Arch => runs.sort_by_key(|s| s.arch_short()),
        RunsSort::Epochs => runs.sort_by_key(|s| std::cmp::Reverse(s.epochs_run())),
        RunsSort::Duration => runs.sort_by(|a, b| {
            desc(
                a.duration_ms().map(|d| d as f64),
                b.duration_ms().map(|d| d as f64),
            )
        }),
    }
}

/// The table: name (cut in the middle to fit the screen), short id, status, arch, epochs,
/// best val and eval accuracy in %, data fingerprint, duration, start time.
fn table(runs: &[RunSummary]) -> String {
    let cols = [
        left("name"),
        left("id"),
        left("status"),
        left("arch"),
        right("ep"),
        right("val%"),
        right("eval%"),
        left("data"),
        right("time"),
        left("started"),
    ];
    let this_year = jiff::Timestamp::now().strftime("%Y").to_string();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|s| {
            let started = jiff::Timestamp::from_millisecond(s.info.start_time as i64)
                .map(|t| {
                    if t.strftime("%Y").to_string() == this_year {
                        t.strftime("%m-%d %H:%M").to_string()
                    } else {
                        t.strftime("%Y-%m-%d").to_string()
                    }
                })
                .unwrap_or_default();
            vec![
                s.info.run_name.clone(),
                flora::track::store::short_id(&s.info.run_id).to_string(),
                s.shown_status().to_string(),
                s.arch_short(),
                s.epochs_run().to_string(),
                percent(s.best_val_accuracy().map(|b| b.0)),
                percent(s.eval_accuracy()),
                s.data_short(),
                s.duration_ms().map_or("-".into(), format_duration),
                started,
            ]
        })
        .collect();
    table::render(&cols, &rows, Some(0), 10, table::screen_width())
}
