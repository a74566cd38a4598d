//! One trial per process: `flora train --sweep SPEC --trial-index I --name NAME`, as a pod of a
//! Kubernetes Indexed Job (`JOB_COMPLETION_INDEX`) or any launcher. Every worker computes the
//! same plan, joins the one parent run called NAME ([`RunStore::shared_parent`]) and trains
//! trial `I + 1` as its child, replacing the child of an earlier attempt at that index. The
//! worker that ends the last trial writes the parent's ranking exactly as a one-machine sweep
//! does; `flora runs show` does it too when that worker died before it could.

use std::sync::atomic::AtomicBool;

use anyhow::{Result, bail};

use super::{Plan, Ranking, SweepOutcome, TRIAL_TAG, finish, parent_params, train_trial};
use crate::config::Settings;
use crate::track::store::group::{self, TAG_INDEXED};
use crate::track::store::{self, Run, RunInfo, RunStatus, RunStore};
use crate::train::TrainOutcome;

/// What one worker did.
pub struct TrialOutcome {
    pub parent: RunInfo,
    /// The trial's run, or the error that ended it.
    pub trial: Result<TrainOutcome>,
    /// Trials whose run has ended, of all of them.
    pub ended: usize,
    pub total: usize,
    /// The sweep's ranking, when this worker ended the last trial.
    pub summary: Option<SweepOutcome>,
}

/// Trains trial `index + 1` of `plan` as a child of the shared parent `name`.
pub fn run_trial(
    settings: &Settings,
    plan: &Plan,
    name: &str,
    index: usize,
    stop: &AtomicBool,
) -> Result<TrialOutcome> {
    let n = plan.trials.len();
    if index >= n {
        bail!(
            "--trial-index {index} is out of range: the sweep has {n} trials (indexes 0 to {}); \
             an Indexed Job for it has `completions: {n}`",
            n - 1
        );
    }
    let store = RunStore::new(settings.runs_dir());
    let exp = store.experiment(&settings.config.project.name)?;
    let parent = store.shared_parent(
        &exp,
        name,
        super::PARENT_TAG,
        &parent_params(plan),
        &[(TAG_INDEXED, n.to_string())],
    )?;
    eprintln!(
        "sweep {} ({}): index {index} of {n}: trial {}",
        parent.info.run_name,
        parent.info.run_id,
        index + 1
    );
    store.replace_child(&parent.info, TRIAL_TAG, &(index + 1).to_string())?;
    let trial = train_trial(settings, plan, &parent, index, stop);
    let (ended, summary) = summarise_if_complete(&store, plan, &parent.info)?;
    Ok(TrialOutcome {
        parent: group::reread(&parent.info)?,
        trial,
        ended,
        total: n,
        summary,
    })
}

/// Writes the ranking and ends the parent when every trial has a child that has ended (under
/// the parent's lock: workers ending together summarise once). Returns how many have ended.
fn summarise_if_complete(
    store: &RunStore,
    plan: &Plan,
    parent: &RunInfo,
) -> Result<(usize, Option<SweepOutcome>)> {
    let _lock = group::lock_parent(parent)?;
    let n = plan.trials.len();
    let ended: std::collections::BTreeSet<usize> = store
        .children_by(parent, TRIAL_TAG)?
        .into_iter()
        .filter(|(_, r)| r.status != RunStatus::Running)
        .filter_map(|(t, _)| t.parse().ok())
        .filter(|t| (1..=n).contains(t))
        .collect();
    if ended.len() < n {
        return Ok((ended.len(), None));
    }
    let mut run = Run::open(group::reread(parent)?);
    let trials: Vec<usize> = (0..n).collect();
    let Ranking {
        table,
        best,
        finished,
    } = finish(store, plan, &run, &trials)?;
    let status = if finished > 0 {
        RunStatus::Finished
    } else {
        RunStatus::Failed
    };
    run.end(status)?;
    Ok((
        n,
        Some(SweepOutcome {
            parent: run.info.clone(),
            status,
            table,
            best,
        }),
    ))
}

/// For `flora runs show`: summarises an indexed sweep's parent that is still RUNNING though
/// every trial has ended (its last worker died first). None when `parent` is not such a run.
pub fn refresh(settings: &Settings, parent: &RunInfo) -> Result<Option<SweepOutcome>> {
    let tags = store::read_tags(parent)?;
    if parent.status != RunStatus::Running
        || tags.get(super::PARENT_TAG).map(String::as_str) != Some("parent")
        || !tags.contains_key(TAG_INDEXED)
    {
        return Ok(None);
    }
    let params = store::read_params(parent)?;
    let (Some(spec), Some(mode), Some(trials)) = (
        params.get("sweep.spec"),
        params.get("sweep.mode"),
        params.get("sweep.trials").and_then(|t| t.parse().ok()),
    ) else {
        return Ok(None);
    };
    let plan = Plan::new(&settings.config, spec, (mode == "random").then_some(trials))?;
    if parent_params(&plan)
        .iter()
        .any(|(k, v)| params.get(*k) != Some(v))
    {
        bail!(
            "flora.toml changed since sweep {} started: its trials can no longer be ranked here",
            parent.run_name
        );
    }
    let store = RunStore::new(settings.runs_dir());
    Ok(summarise_if_complete(&store, &plan, parent)?.1)
}
