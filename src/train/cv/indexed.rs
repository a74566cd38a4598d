//! One fold per process: `flora cv --folds K --fold I --name NAME`, as a pod of a Kubernetes
//! Indexed Job (`JOB_COMPLETION_INDEX`) or any launcher. Every worker decodes the dataset and
//! assigns the same folds, joins the one parent run called NAME and trains fold `I + 1` as its
//! child (replacing an earlier attempt's). The worker that ends the last fold pools the folds
//! into the parent's summary, out-of-fold predictions, label-error list and page, exactly as a
//! one-machine `flora cv` writes them; `flora runs show` does it when that worker died first.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use anyhow::{Result, bail};

use super::fold::{self, FoldDone};
use super::{CvData, CvOutcome, FOLD_TAG, PARENT_TAG, summarise};
use crate::config::Settings;
use crate::track::store::group::{self, TAG_INDEXED};
use crate::track::store::{self, Run, RunInfo, RunStatus, RunStore};

const FINGERPRINT_TAG: &str = "flora.data_fingerprint";

/// What one worker did.
pub struct FoldOutcome {
    pub parent: RunInfo,
    pub fold: super::FoldResult,
    /// Folds that have ended, of all of them.
    pub ended: usize,
    pub total: usize,
    /// The cross-validation's summary, when this worker ended the last fold.
    pub summary: Option<CvOutcome>,
}

/// Trains fold `index + 1` of `k` as a child of the shared parent `name`.
pub fn run_fold(
    settings: &Settings,
    k: usize,
    index: usize,
    name: &str,
    stop: &AtomicBool,
) -> Result<FoldOutcome> {
    if index >= k {
        bail!(
            "--fold {index} is out of range: {k} folds have indexes 0 to {}; an Indexed Job \
             for them has `completions: {k}`",
            k - 1
        );
    }
    let data = CvData::prepare(settings, k)?;
    let store = RunStore::new(settings.runs_dir());
    let exp = store.experiment(&settings.config.project.name)?;
    let parent = store.shared_parent(
        &exp,
        name,
        PARENT_TAG,
        &data.parent_params(settings),
        &[
            (TAG_INDEXED, k.to_string()),
            (FINGERPRINT_TAG, data.cache.fingerprint.clone()),
        ],
    )?;
    let theirs = store::read_tags(&parent.info)?
        .get(FINGERPRINT_TAG)
        .cloned()
        .unwrap_or_default();
    if theirs != data.cache.fingerprint {
        bail!(
            "the dataset differs from the one cross-validation {} started on (data fingerprint \
             {} here, {theirs} there): every worker must see the same dataset/",
            parent.info.run_name,
            data.cache.fingerprint
        );
    }
    eprintln!(
        "cross-validation {} ({}): index {index}: fold {}/{k} of {} images",
        parent.info.run_name,
        parent.info.run_id,
        index + 1,
        data.cache.len()
    );
    store.replace_child(&parent.info, FOLD_TAG, &format!("{}/{k}", index + 1))?;
    let done = fold::train_fold(settings, &parent, &data, index, stop)?;
    let (ended, summary) = summarise_if_complete(&store, &parent.info, &data)?;
    Ok(FoldOutcome {
        parent: group::reread(&parent.info)?,
        fold: done.result,
        ended,
        total: k,
        summary,
    })
}

/// Pools the folds and ends the parent when every fold has a finished run and its file (under
/// the parent's lock). Returns how many folds have ended.
fn summarise_if_complete(
    store: &RunStore,
    parent: &RunInfo,
    data: &CvData,
) -> Result<(usize, Option<CvOutcome>)> {
    let _lock = group::lock_parent(parent)?;
    let children: HashMap<String, RunStatus> = store
        .children_by(parent, FOLD_TAG)?
        .into_iter()
        .map(|(_, r)| (r.run_id, r.status))
        .collect();
    let mut done: Vec<FoldDone> = Vec::with_capacity(data.k);
    for f in 0..data.k {
        if let Some(d) = fold::read_fold(parent, data, f, &children)? {
            done.push(d);
        }
    }
    if done.len() < data.k {
        return Ok((done.len(), None));
    }
    let mut run = Run::open(group::reread(parent)?);
    let outcome = summarise(&run, data, done)?;
    run.end(outcome.status)?;
    Ok((data.k, Some(outcome)))
}

/// For `flora runs show`: pools an indexed cross-validation whose folds have all ended but
/// whose parent is still RUNNING (its last worker died first). None when `parent` is not such a
/// run or a fold is missing. The dataset is decoded again, with the parent's image size and
/// seed.
pub fn refresh(settings: &Settings, parent: &RunInfo) -> Result<Option<CvOutcome>> {
    let tags = store::read_tags(parent)?;
    if parent.status != RunStatus::Running
        || tags.get(PARENT_TAG).map(String::as_str) != Some("parent")
        || !tags.contains_key(TAG_INDEXED)
    {
        return Ok(None);
    }
    let params = store::read_params(parent)?;
    let num = |k: &str| params.get(k).and_then(|v| v.parse::<u64>().ok());
    let (Some(k), Some(size), Some(seed), Some(dir)) = (
        num("cv.folds"),
        num("data.image_size"),
        num("data.seed"),
        params.get("data.dir"),
    ) else {
        return Ok(None);
    };
    let mut settings = settings.clone();
    settings.config.data.dir = dir.into();
    settings.config.data.image_size = size as _;
    settings.config.data.seed = seed as _;
    let store = RunStore::new(settings.runs_dir());
    let children = store.children_by(parent, FOLD_TAG)?;
    if children
        .iter()
        .filter(|(_, r)| r.status == RunStatus::Finished)
        .count()
        < k as usize
    {
        return Ok(None);
    }
    let data = CvData::prepare(&settings, k as usize)?;
    if tags.get(FINGERPRINT_TAG) != Some(&data.cache.fingerprint) {
        bail!(
            "dataset/ changed since cross-validation {} ran: its folds can no longer be pooled",
            parent.run_name
        );
    }
    Ok(summarise_if_complete(&store, parent, &data)?.1)
}
