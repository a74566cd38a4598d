//! `flora train`: applies the flag overrides, trains (one run, a sweep, or a resumed run),
//! prints the summary; Ctrl-C exits 130.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::cli::TrainArgs;
use flora::config::Settings;
use flora::model::Arch;
use flora::model::pretrained::catalog::{self, Weights};
use flora::track::store::RunStatus;
use flora::train::Start;
use flora::train::checkpoint::Resume;
use flora::train::sweep::Plan;

/// Trains with the config plus the flags; exit 0 when FINISHED, 130 when interrupted.
pub fn run(settings: &Settings, args: &TrainArgs) -> Result<ExitCode> {
    // Everything is checked before anything trains: the flags, the config, every sweep trial,
    // the run to resume.
    let settings = &super::cache::unless_off(settings, args.no_cache);
    let resume = match &args.resume {
        Some(key) => Some(Resume::prepare(settings, key, args.force)?),
        None => None,
    };
    let settings = apply(settings, args)?;
    let device = match &resume {
        Some(r) => args.device.unwrap_or(r.settings.config.train.device),
        None => settings.config.train.device,
    };
    super::select_device(device, true)?;
    let plan = match &args.sweep {
        Some(spec) => Some(Plan::new(&settings.config, spec, args.trials)?),
        None => None,
    };
    let stop = stop_on_signals()?;
    if let (Some(plan), Some(index)) = (&plan, args.trial_index) {
        let index = job_index(index, "--trial-index")?;
        let name = args.name.as_deref().unwrap_or_default();
        let out = flora::train::sweep::run_trial(&settings, plan, name, index, &stop)?;
        return indexed_exit(
            out.trial.map(|t| t.status),
            &out.parent,
            (out.ended, out.total, "trials"),
            out.summary.map(|s| s.table),
        );
    }
    if let Some(plan) = &plan {
        let outcome = flora::train::sweep::run(&settings, plan, args.name.as_deref(), &stop)?;
        println!(
            "\nsweep {} ({}) {}\n{}",
            outcome.parent.run_name,
            outcome.parent.run_id,
            outcome.status.as_str(),
            outcome.table
        );
        return Ok(match outcome.status {
            RunStatus::Killed => ExitCode::from(super::EXIT_INTERRUPTED),
            RunStatus::Finished => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        });
    }
    let outcome = match &resume {
        Some(r) => flora::train::train(&r.settings, Start::Resume(r), &stop)?,
        None => flora::train::train(
            &settings,
            Start::New {
                name: args.name.as_deref(),
                tags: Vec::new(),
            },
            &stop,
        )?,
    };
    println!("{}", flora::train::summary(&outcome));
    Ok(match outcome.status {
        RunStatus::Killed => ExitCode::from(super::EXIT_INTERRUPTED),
        _ => ExitCode::SUCCESS,
    })
}

/// The index a worker runs: the flag's value, else `JOB_COMPLETION_INDEX` (set in each pod of a
/// Kubernetes Indexed Job).
pub fn job_index(flag: Option<usize>, what: &str) -> Result<usize> {
    if let Some(i) = flag {
        return Ok(i);
    }
    match std::env::var("JOB_COMPLETION_INDEX") {
        Ok(v) => v.trim().parse().map_err(|_| {
            anyhow::anyhow!("JOB_COMPLETION_INDEX is {v:?}, not an index: give {what} I")
        }),
        Err(_) => bail!(
            "{what} without a value reads JOB_COMPLETION_INDEX, which is not set (Kubernetes \
             sets it in an Indexed Job's pods): give {what} I"
        ),
    }
}

/// One worker's ending: its run's outcome, how far the job is, the parent's summary when this
/// worker wrote it. Exit 0 when its run finished, 130 when interrupted, 1 when it failed (so
/// that Kubernetes runs the index again).
pub fn indexed_exit(
    status: Result<RunStatus>,
    parent: &flora::track::store::RunInfo,
    (ended, total, what): (usize, usize, &str),
    summary: Option<String>,
) -> Result<ExitCode> {
    match summary {
        Some(s) => println!(
            "\n{} ({}) {}: every one of its {total} {what} has ended\n{s}",
            parent.run_name,
            parent.run_id,
            parent.status.as_str()
        ),
        None => eprintln!(
            "{} ({}): {ended} of {total} {what} have ended; the last to end writes the parent's \
             summary",
            parent.run_name, parent.run_id
        ),
    }
    Ok(match status? {
        RunStatus::Killed => ExitCode::from(super::EXIT_INTERRUPTED),
        RunStatus::Finished => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// The settings with the `[data]`/`[train]` flags applied, validated.
pub fn apply(settings: &Settings, args: &TrainArgs) -> Result<Settings> {
    let mut settings = settings.clone();
    let pretrained = args
        .pretrained
        .as_ref()
        .map(|p| pretrained_arg(&settings, p))
        .transpose()?;
    let (d, t) = (&mut settings.config.data, &mut settings.config.train);
    if let Some(p) = &args.data {
        // A flag path is relative to the current folder, not to the config file.
        d.dir = std::path::absolute(p)?;
    }
    if let Some(v) = args.image_size {
        d.image_size = v;
    }
    if let Some(v) = args.seed {
        d.seed = v;
    }
    if args.no_augment {
        d.augment = false;
    }
    if args.no_cache {
        settings.config.cache.enabled = false;
    }
    if let Some(v) = args.epochs {
        t.epochs = v;
    }
    if let Some(v) = args.batch_size {
        t.batch_size = v;
    }
    if let Some(v) = args.lr {
        t.learning_rate = v;
    }
    if let Some(v) = args.arch {
        t.arch = v.into();
    }
    if let Some(v) = args.patience {
        t.patience = v;
    }
    if let Some(v) = args.width {
        t.width = v;
    }
    if let Some(w) = &args.class_weights {
        t.class_weights = w.clone();
    }
    if let Some(v) = args.sampler {
        t.sampler = v.into();
    }
    if let Some(v) = args.device {
        t.device = v;
    }
    if let Some((value, weights)) = pretrained {
        if let Some(w) = weights {
            // Named weights are for one architecture and width: the flags may still say
            // otherwise (and validation then names the clash).
            let (arch, width) = (
                args.arch.map_or(Arch::MobilenetV2, Arch::from),
                args.width.unwrap_or(w.width),
            );
            if (arch, width) != (t.arch, t.width) {
                eprintln!(
                    "--pretrained {}: train.arch = {}, train.width = {width}",
                    w.name,
                    arch.as_str()
                );
            }
            (t.arch, t.width) = (arch, width);
        }
        t.pretrained = Some(value);
    }
    settings.config.validate()?;
    if let Some(name) = &args.name {
        flora::track::store::checked_name("run", name)?;
    }
    Ok(settings)
}

/// `--pretrained`'s value: a weights name as it is (with its catalog entry), or a file made
/// absolute (relative to the current folder, like --data). Neither is an error listing the
/// names.
fn pretrained_arg(settings: &Settings, p: &Path) -> Result<(PathBuf, Option<Weights>)> {
    if let Some(name) = p.to_str().filter(|s| catalog::is_name_like(s))
        && let Some(w) = settings.config.named_weights(name)
    {
        return Ok((p.to_path_buf(), Some(w)));
    }
    let file = std::path::absolute(p)?;
    if !file.exists() {
        bail!(
            "--pretrained {}: no such file, and not a name of weights flora downloads: {}",
            p.display(),
            settings.config.weight_names().join(", ")
        );
    }
    Ok((file, None))
}

/// A flag set by Ctrl-C, SIGTERM or SIGHUP: the first stops after the batch; a second quits at
/// once, with the run (and a sweep's parent) marked KILLED rather than left RUNNING.
pub fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            let ids: Vec<String> = [
                flora::train::abandon_active_run(),
                flora::train::sweep::abandon_parent(),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !ids.is_empty() {
                eprintln!(
                    "\ninterrupted again: run {} marked KILLED, quitting",
                    ids.join(" and run ")
                );
            }
            std::process::exit(super::EXIT_INTERRUPTED as i32);
        }
        eprintln!("\ninterrupt: stopping after this batch (Ctrl-C again to quit at once)");
    })?;
    Ok(stop)
}
