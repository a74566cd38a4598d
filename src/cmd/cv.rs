//! `flora cv --folds K`: cross-validation with a label-error audit; Ctrl-C exits 130.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::CvArgs;
use flora::config::Settings;
use flora::train::cv;

/// Runs the folds with the config plus the train flags and prints the summary.
pub fn run(settings: &Settings, args: &CvArgs) -> Result<ExitCode> {
    let settings = super::train::apply(settings, &args.train)?;
    let stop = super::train::stop_on_signals()?;
    if let Some(index) = args.fold {
        let index = super::train::job_index(index, "--fold")?;
        let name = args.train.name.as_deref().unwrap_or_default();
        return match cv::run_fold(&settings, args.folds, index, name, &stop) {
            Ok(out) => super::train::indexed_exit(
                Ok(flora::track::store::RunStatus::Finished),
                &out.parent,
                (out.ended, out.total, "folds"),
                out.summary.as_ref().map(cv::summary),
            ),
            Err(e) if e.is::<cv::Interrupted>() => {
                eprintln!("{e}: the fold's run is marked KILLED");
                Ok(ExitCode::from(super::EXIT_INTERRUPTED))
            }
            Err(e) => Err(e),
        };
    }
    match cv::cross_validate(&settings, args.folds, args.train.name.as_deref(), &stop) {
        Ok(outcome) => {
            println!("{}", cv::summary(&outcome));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is::<cv::Interrupted>() => {
            eprintln!("{e}: the runs are marked KILLED");
            Ok(ExitCode::from(super::EXIT_INTERRUPTED))
        }
        Err(e) => Err(e),
    }
}
