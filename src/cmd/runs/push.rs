//! `flora runs push`: copy runs to an MLflow tracking server.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::PushArgs;
use flora::config::Settings;
use flora::track::push::{self, Pushed};
use flora::track::store::{self, RunStore};

/// Pushes the runs named in `args` to the server, parents before their children.
pub fn run(settings: &Settings, args: &PushArgs) -> Result<ExitCode> {
    let url = push::tracking_url(args.to.as_deref())?;
    let store = RunStore::new(settings.runs_dir());
    push::push_runs(
        &store,
        &url,
        &args.runs,
        args.experiment.as_deref(),
        |info, pushed, base| match pushed {
            Pushed::New { remote, notes } => {
                println!(
                    "pushed run {} ({}) to {base} as run {remote}",
                    info.run_name,
                    store::short_id(&info.run_id),
                );
                for n in notes {
                    println!("  note: {n}");
                }
            }
            Pushed::Already { remote } => println!(
                "run {} ({}) is already on {base} as run {remote}: nothing sent",
                info.run_name,
                store::short_id(&info.run_id),
            ),
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
