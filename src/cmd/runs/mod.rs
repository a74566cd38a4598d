//! `flora runs`: list, show, compare, delete, restore, gc and push the runs of the run store.

mod compare;
mod list;
mod push;
mod show;
mod soft_delete;
pub mod table;

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{RunsArgs, RunsCommand};
use flora::config::Settings;
use flora::track::store::RunStore;

/// Runs the `flora runs` subcommand (`list` when none is given).
pub fn run(settings: &Settings, args: &RunsArgs) -> Result<ExitCode> {
    let store = RunStore::new(settings.runs_dir());
    match &args.command {
        None => list::run(&store, &args.list),
        Some(RunsCommand::List(a)) => list::run(&store, a),
        Some(RunsCommand::Show(a)) => {
            summarise_indexed(settings, &store, &a.run);
            show::run(&store, a)
        }
        Some(RunsCommand::Compare(a)) => compare::run(&store, a),
        Some(RunsCommand::Delete(a)) => soft_delete::delete(settings, &store, a),
        Some(RunsCommand::Restore(a)) => soft_delete::restore(&store, a),
        Some(RunsCommand::Gc(a)) => soft_delete::gc(settings, &store, a),
        Some(RunsCommand::Push(a)) => push::run(settings, a),
    }
}

/// Before showing an indexed sweep's or cross-validation's parent that is still RUNNING though
/// every index has ended (its last worker died before summarising), writes its summary. A
/// failure is a warning: the run is shown as it is.
fn summarise_indexed(settings: &Settings, store: &RunStore, key: &str) {
    let Ok(parent) = store.find(key) else {
        return;
    };
    let done = flora::train::sweep::refresh(settings, &parent)
        .map(|s| s.map(|s| s.table))
        .and_then(|s| match s {
            Some(s) => Ok(Some(s)),
            None => flora::train::cv::refresh(settings, &parent)
                .map(|o| o.as_ref().map(flora::train::cv::summary)),
        });
    match done {
        Ok(Some(_)) => eprintln!(
            "every index of {} has ended: its summary is written now",
            parent.run_name
        ),
        Ok(None) => {}
        Err(e) => eprintln!(
            "warning: {} could not be summarised: {e:#}",
            parent.run_name
        ),
    }
}
