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
        Some(RunsCommand::Show(a)) => show::run(&store, a),
        Some(RunsCommand::Compare(a)) => compare::run(&store, a),
        Some(RunsCommand::Delete(a)) => soft_delete::delete(settings, &store, a),
        Some(RunsCommand::Restore(a)) => soft_delete::restore(&store, a),
        Some(RunsCommand::Gc(a)) => soft_delete::gc(settings, &store, a),
        Some(RunsCommand::Push(a)) => push::run(settings, a),
    }
}
