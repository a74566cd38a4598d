//! Hyperparameter sweeps: `flora train --sweep "learning_rate=1e-3,3e-4 batch_size=32,64"`.
//!
//! A sweep varies `[data]` and `[train]` keys of `flora.toml`, named as in the file
//! (`train.learning_rate`, or `learning_rate` where only one section has it). Each key takes a
//! list of values (`a,b,c`) or, with `--trials N`, a range to sample from (`lo..hi`, uniform;
//! `lo..hi:log`, log-uniform; integers for integer keys). Without `--trials` the sweep is the
//! grid of every combination of the lists. Every trial's config is built and validated (as
//! `flora.toml` is) before anything trains. The trials run one after another as child runs of
//! a parent run (MLflow's `mlflow.parentRunId` tag), which gets the ranked results. With
//! `--trial-index I` a process runs trial `I + 1` only, as one pod of a Kubernetes Indexed Job
//! ([`run_trial`]).

mod indexed;
mod plan;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};

use crate::config::Settings;
use crate::track::store::{self, Run, RunInfo, RunStatus, RunStore};
use crate::train::{self, Start};
use crate::util::fsutil;

pub use indexed::{TrialOutcome, refresh, run_trial};
pub use plan::Plan;

/// The tag marking a sweep's parent run (`parent`).
pub const PARENT_TAG: &str = "flora.sweep";
/// The tag holding a child's trial number (1-based).
pub const TRIAL_TAG: &str = "flora.sweep.trial";
use plan::overrides_text;

/// What a sweep did.
pub struct SweepOutcome {
    pub parent: RunInfo,
    pub status: RunStatus,
    /// The ranked table.
    pub table: String,
    /// The trial with the best val accuracy.
    pub best: Option<BestRun>,
}

/// The best trial of a sweep.
#[derive(Debug, Clone)]
pub struct BestRun {
    pub run_name: String,
    pub run_id: String,
    pub val_accuracy: f64,
}

/// The ranked trials: the table, the best one, how many FINISHED.
struct Ranking {
    table: String,
    best: Option<BestRun>,
    finished: usize,
}

/// The sweep's parent run, for [`abandon_parent`].
static PARENT: std::sync::Mutex<Option<Run>> = std::sync::Mutex::new(None);

/// Marks the running sweep's parent run (if any) KILLED: for a second Ctrl-C, which ends the
/// process at once.
pub fn abandon_parent() -> Option<String> {
    let mut parent = PARENT.lock().unwrap_or_else(|e| e.into_inner());
    let mut run = parent.take()?;
    let _ = run.end(RunStatus::Killed);
    Some(run.info.run_id)
}

/// Runs every trial of `plan` as a child of a new parent run called `name`; `stop` (Ctrl-C)
/// ends the current trial KILLED and starts no other.
pub fn run(
    settings: &Settings,
    plan: &Plan,
    name: Option<&str>,
    stop: &AtomicBool,
) -> Result<SweepOutcome> {
    let store = RunStore::new(settings.runs_dir());
    let exp = store.experiment(&settings.config.project.name)?;
    let name = name
        .map(str::to_string)
        .unwrap_or_else(|| format!("sweep-{}", jiff::Zoned::now().strftime("%Y%m%d-%H%M%S")));
    let parent = store.create_run(&exp, &name)?;
    *PARENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(parent.clone());
    let result = run_trials(settings, plan, &parent, stop);
    let mut slot = PARENT.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut parent) = slot.take() else {
        bail!("the sweep was abandoned");
    };
    match result.and_then(|children| finish(&store, plan, &parent, &children)) {
        Ok(Ranking {
            table,
            best,
            finished,
        }) => {
            let status = if stop.load(Ordering::SeqCst) {
                RunStatus::Killed
            } else if finished > 0 {
                RunStatus::Finished
            } else {
                RunStatus::Failed
            };
            parent.end(status)?;
            Ok(SweepOutcome {
                parent: parent.info.clone(),
                status,
                table,
                best,
            })
        }
        Err(e) => {
            let _ = parent.end(RunStatus::Failed);
            Err(e.context(format!("sweep {} failed", parent.info.run_id)))
        }
    }
}

/// Logs the sweep's params on the parent and trains each trial; returns the trials started.
fn run_trials(
    settings: &Settings,
    plan: &Plan,
    parent: &Run,
    stop: &AtomicBool,
) -> Result<Vec<usize>> {
    for (k, v) in parent_params(plan) {
        parent.log_param(k, &v)?;
    }
    parent.set_tag(PARENT_TAG, "parent")?;
    eprintln!(
        "sweep {} ({}): {} trials ({}) of {}",
        parent.info.run_name,
        parent.info.run_id,
        plan.trials.len(),
        plan.mode,
        plan.keys.join(", ")
    );
    let mut children = Vec::new();
    let n = plan.trials.len();
    for i in 0..n {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if let Err(e) = train_trial(settings, plan, parent, i, stop) {
            eprintln!("trial {} failed: {e:#}", i + 1);
        }
        children.push(i);
    }
    Ok(children)
}

/// Trains trial `i` (0-based) of `plan` as a child of `parent`, named `<parent>-<i + 1>`.
fn train_trial(
    settings: &Settings,
    plan: &Plan,
    parent: &Run,
    i: usize,
    stop: &AtomicBool,
) -> Result<train::TrainOutcome> {
    let (overrides, config) = &plan.trials[i];
    eprintln!(
        "\ntrial {}/{}: {}",
        i + 1,
        plan.trials.len(),
        overrides_text(overrides)
    );
    let trial = Settings {
        config: config.clone(),
        ..settings.clone()
    };
    let child_name = format!("{}-{}", parent.info.run_name, i + 1);
    let start = Start::New {
        name: Some(&child_name),
        tags: vec![
            ("mlflow.parentRunId".into(), parent.info.run_id.clone()),
            (TRIAL_TAG.into(), (i + 1).to_string()),
            ("flora.sweep.overrides".into(), overrides_text(overrides)),
        ],
    };
    train::train(&trial, start, stop)
}

/// The parent's params: the same for every worker of an indexed sweep.
fn parent_params(plan: &Plan) -> [(&'static str, String); 4] {
    [
        ("sweep.spec", plan.spec.clone()),
        ("sweep.mode", plan.mode.to_string()),
        ("sweep.keys", plan.keys.join(",")),
        ("sweep.trials", plan.trials.len().to_string()),
    ]
}

/// The ranked table (best val accuracy first), written to the parent's artifacts.
fn finish(store: &RunStore, plan: &Plan, parent: &Run, children: &[usize]) -> Result<Ranking> {
    // trial number → its run, from the children's tags.
    let mut by_trial: BTreeMap<usize, RunInfo> = BTreeMap::new();
    for r in store.runs()? {
        let tags = store::read_tags(&r)?;
        if tags.get("mlflow.parentRunId") != Some(&parent.info.run_id) {
            continue;
        }
        if let Some(t) = tags.get(TRIAL_TAG).and_then(|t| t.parse().ok()) {
            by_trial.insert(t, r);
        }
    }
    struct Row {
        trial: usize,
        name: String,
        id: String,
        status: String,
        acc: Option<f64>,
        loss: Option<f64>,
        epoch: Option<f64>,
    }
    let mut rows = Vec::new();
    let mut finished = 0;
    for trial in children {
        let info = by_trial.get(&(trial + 1));
        let best = match info {
            Some(r) => store::read_metric(r, "best_val_accuracy")?.last().copied(),
            None => None,
        };
        let loss = match (info, best) {
            (Some(r), Some((_, _, step))) => store::read_metric(r, "val_loss")?
                .iter()
                .rfind(|m| m.2 == step)
                .map(|m| m.1),
            _ => None,
        };
        if info.is_some_and(|r| r.status == RunStatus::Finished) {
            finished += 1;
        }
        rows.push(Row {
            trial: trial + 1,
            name: info.map_or("-".into(), |r| r.run_name.clone()),
            id: info.map_or("-".into(), |r| r.run_id.clone()),
            status: info.map_or("FAILED".into(), |r| r.status.as_str().to_string()),
            acc: best.map(|b| b.1),
            loss,
            epoch: best.map(|b| b.2 as f64),
        });
    }
    rows.sort_by(|a, b| {
        b.acc
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&a.acc.unwrap_or(f64::NEG_INFINITY))
            .then(a.trial.cmp(&b.trial))
    });
    let mut table = String::new();
    let _ = write!(
        table,
        "{:<4} {:<5} {:<28} {:<10} {:<9} {:>8} {:>8} {:>5}",
        "rank", "trial", "run", "id", "status", "val_acc", "val_loss", "epoch"
    );
    for k in &plan.keys {
        let _ = write!(table, "  {k}");
    }
    table.push('\n');
    let mut csv = csv::Writer::from_writer(Vec::new());
    let mut header = vec![
        "rank",
        "trial",
        "run_name",
        "run_id",
        "status",
        "val_accuracy",
        "val_loss",
        "best_epoch",
    ];
    header.extend(plan.keys.iter().map(String::as_str));
    csv.write_record(&header)?;
    for (rank, r) in rows.iter().enumerate() {
        let values: Vec<String> = plan.trials[r.trial - 1]
            .0
            .iter()
            .map(|(_, v)| v.clone())
            .collect();
        let _ = write!(
            table,
            "{:<4} {:<5} {:<28} {:<10} {:<9} {:>8} {:>8} {:>5}",
            rank + 1,
            r.trial,
            r.name,
            store::short_id(&r.id),
            r.status,
            r.acc.map_or("-".into(), |a| format!("{:.2}%", 100.0 * a)),
            r.loss.map_or("-".into(), |l| format!("{l:.4}")),
            r.epoch.map_or("-".into(), |e| e.to_string()),
        );
        for (k, v) in plan.keys.iter().zip(&values) {
            let _ = write!(table, "  {v:<width$}", width = k.len());
        }
        table.push('\n');
        let mut record = vec![
            (rank + 1).to_string(),
            r.trial.to_string(),
            r.name.clone(),
            r.id.clone(),
            r.status.clone(),
            r.acc.map_or(String::new(), |a| a.to_string()),
            r.loss.map_or(String::new(), |l| l.to_string()),
            r.epoch.map_or(String::new(), |e| e.to_string()),
        ];
        record.extend(values);
        csv.write_record(&record)?;
    }
    let best = rows.first().and_then(|r| {
        r.acc.map(|a| BestRun {
            run_name: r.name.clone(),
            run_id: r.id.clone(),
            val_accuracy: a,
        })
    });
    if let Some(b) = &best {
        let _ = writeln!(
            table,
            "\nbest run: {} ({}), val accuracy {:.2}%",
            b.run_name,
            b.run_id,
            100.0 * b.val_accuracy
        );
        parent.set_tag("flora.sweep.best_run_id", &b.run_id)?;
        parent.set_tag("flora.sweep.best_run_name", &b.run_name)?;
        parent.log_metric("best_val_accuracy", b.val_accuracy, 0)?;
    }
    let ran = children.len();
    if ran < plan.trials.len() {
        let _ = writeln!(
            table,
            "stopped: {ran} of {} trials ran, {} not started",
            plan.trials.len(),
            plan.trials.len() - ran
        );
    }
    fsutil::write_atomic(&parent.artifacts().join("sweep.txt"), table.as_bytes())?;
    fsutil::write_atomic(
        &parent.artifacts().join("sweep.csv"),
        &csv.into_inner().context("writing sweep.csv")?,
    )?;
    Ok(Ranking {
        table,
        best,
        finished,
    })
}
