//! `flora eval`: metrics of a model on its run's validation split or on `--data DIR`.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::cli::EvalArgs;
use crate::config::Settings;
use crate::eval;
use crate::select;
use crate::store::Run;

/// Exit code when accuracy is below `--min-accuracy`.
pub const EXIT_BELOW_GATE: u8 = 3;

/// Prints the report (or JSON), saves the files, logs into the run; exits 3 below the gate.
pub fn run(settings: &Settings, args: &EvalArgs) -> Result<ExitCode> {
    let chosen = select::choose(settings, &args.model)?;
    eprintln!("model: {}", chosen.describe());
    let bundle = chosen.load()?;
    let samples = match (&args.data, chosen.run()) {
        (Some(dir), _) => eval::samples_from_dir(&std::path::absolute(dir)?, &bundle.meta.classes)?,
        (None, Some(run)) => {
            let (samples, what) = eval::default_samples(run, &bundle.meta.classes)?;
            eprintln!("data: {what} ({} images)", samples.len());
            samples
        }
        (None, None) => {
            bail!("this model has no run to take a validation split from: pass --data DIR")
        }
    };
    let result = eval::evaluate(&bundle, &samples)?;
    if !result.skipped.is_empty() {
        eprintln!(
            "warning: skipped {} unreadable file(s), e.g. {}",
            result.skipped.len(),
            result.skipped[0].0.display()
        );
    }
    let out_dir = match (&args.out, chosen.run()) {
        (Some(dir), _) => Some(dir.clone()),
        (None, Some(run)) => Some(run.artifacts().join("eval")),
        (None, None) => None,
    };
    if let Some(dir) = &out_dir {
        result.write_files(dir)?;
    }
    if let Some(run) = chosen.run() {
        result.log_to(&Run::open(run.clone()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&result.report)?);
    } else {
        println!("{}", result.report.table());
        println!(
            "confusion matrix (rows: true class, columns: predicted)\n{}",
            result.report.confusion_table()
        );
        if let Some(dir) = &out_dir {
            println!(
                "wrote confusion_matrix.csv, confusion_matrix.png, misclassified.csv to {}",
                dir.display()
            );
        } else {
            eprintln!("(pass --out DIR to save the confusion matrix and misclassified.csv)");
        }
    }
    if let Some(min) = args.min_accuracy
        && result.report.accuracy < min
    {
        eprintln!(
            "accuracy {:.4} is below --min-accuracy {min}",
            result.report.accuracy
        );
        return Ok(ExitCode::from(EXIT_BELOW_GATE));
    }
    Ok(ExitCode::SUCCESS)
}
