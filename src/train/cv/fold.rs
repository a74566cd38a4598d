//! One fold of a cross-validation: train on the other folds, predict the held-out one, and keep
//! that fold's figures and predictions in the parent's `folds/fold-<f>.json`, from which the
//! parent's summary is pooled (at once on one machine; by the last worker of an indexed job).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{CvData, FOLD_TAG, FoldResult, Interrupted};
use crate::evaluate::scores;
use crate::model::bundle::ModelBundle;
use crate::model::infer;
use crate::track::store::{self, RunStatus};
use crate::train;
use crate::util::fingerprint::hex;
use crate::util::fsutil;

/// A trained and predicted fold.
pub(crate) struct FoldDone {
    pub result: FoldResult,
    /// The fold's images (indexes into the data) and their predicted probabilities.
    pub members: Vec<usize>,
    pub probs: Vec<Vec<f32>>,
}

/// What `folds/fold-<f>.json` holds: the figures, and each held-out image's probabilities by
/// content hash (copies of an image share a fold and a prediction).
#[derive(Serialize, Deserialize)]
struct FoldFile {
    result: FoldResult,
    probs: BTreeMap<String, Vec<f32>>,
}

/// The parent's file for fold `f` (0-based).
fn fold_file(parent: &store::RunInfo, f: usize) -> PathBuf {
    parent
        .artifacts()
        .join("folds")
        .join(format!("fold-{}.json", f + 1))
}

/// Trains fold `f` (0-based) as a child of `parent`, predicts its held-out images, logs its
/// figures on the parent and writes its fold file.
pub(crate) fn train_fold(
    settings: &crate::config::Settings,
    parent: &store::Run,
    data: &CvData,
    f: usize,
    stop: &AtomicBool,
) -> Result<FoldDone> {
    let (cache, k) = (&data.cache, data.k);
    let members: Vec<usize> = (0..cache.len()).filter(|&i| data.folds[i] == f).collect();
    let plan = train::Plan {
        held_out: members.iter().map(|&i| cache.content_hashes[i]).collect(),
        tags: vec![
            (
                store::PARENT_RUN_TAG.to_string(),
                parent.info.run_id.clone(),
            ),
            (FOLD_TAG.into(), format!("{}/{k}", f + 1)),
        ],
        ..Default::default()
    };
    eprintln!("fold {}/{k}: {} held-out images", f + 1, members.len());
    let child_name = format!("{}-fold{}", parent.info.run_name, f + 1);
    let out = train::train_planned(
        settings,
        train::Start::New {
            name: Some(&child_name),
            tags: Vec::new(),
        },
        stop,
        &plan,
    )?;
    if out.status == RunStatus::Killed || stop.load(Ordering::SeqCst) {
        return Err(Interrupted { fold: f + 1 }.into());
    }
    let dir = out.bundle_dir.context("the fold's run saved no model")?;
    let bundle = ModelBundle::load(&dir)?;
    let mut probs = Vec::with_capacity(members.len());
    for chunk in members.chunks(infer::BATCH) {
        let px: Vec<&[u8]> = chunk.iter().map(|&i| cache.pixels(i)).collect();
        probs.extend(bundle.predict_pixels(&px));
    }
    let truth: Vec<usize> = members.iter().map(|&i| cache.samples[i].class).collect();
    let r = scores::report(&data.classes, &truth, &probs);
    let f1 = r
        .per_class
        .iter()
        .filter(|(_, m)| m.support > 0)
        .map(|(c, m)| (c.clone(), m.f1))
        .collect();
    parent.log_metric("fold_accuracy", r.accuracy, f as u64 + 1)?;
    parent.log_metric("fold_macro_f1", r.macro_f1, f as u64 + 1)?;
    eprintln!(
        "fold {}/{k}: accuracy {:.2}% on {} held-out images",
        f + 1,
        100.0 * r.accuracy,
        members.len()
    );
    let result = FoldResult {
        fold: f + 1,
        run_id: out.run_id,
        run_name: out.run_name,
        images: members.len(),
        accuracy: r.accuracy,
        macro_f1: r.macro_f1,
        f1,
    };
    let file = FoldFile {
        result: result.clone(),
        probs: members
            .iter()
            .zip(&probs)
            .map(|(&i, p)| (hex(&cache.content_hashes[i]), p.clone()))
            .collect(),
    };
    fsutil::write_atomic(
        &fold_file(&parent.info, f),
        &serde_json::to_vec(&file).context("encoding the fold file")?,
    )?;
    Ok(FoldDone {
        result,
        members,
        probs,
    })
}

/// Fold `f`'s file, if its run is still one of `parent`'s children (an index run again
/// replaces the child, and with it the file's claim). None when the fold has not ended.
pub(crate) fn read_fold(
    parent: &store::RunInfo,
    data: &CvData,
    f: usize,
    children: &HashMap<String, RunStatus>,
) -> Result<Option<FoldDone>> {
    let path = fold_file(parent, f);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let file: FoldFile = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a fold file", path.display()))?;
    if children.get(&file.result.run_id) != Some(&RunStatus::Finished) {
        return Ok(None);
    }
    let members: Vec<usize> = (0..data.cache.len())
        .filter(|&i| data.folds[i] == f)
        .collect();
    let probs = members
        .iter()
        .map(|&i| {
            let key = hex(&data.cache.content_hashes[i]);
            match file.probs.get(&key) {
                Some(p) if p.len() == data.classes.len() => Ok(p.clone()),
                _ => bail!(
                    "{} has no prediction for {}: the dataset changed since fold {} ran; run \
                     that fold again",
                    path.display(),
                    data.cache.samples[i].rel,
                    f + 1
                ),
            }
        })
        .collect::<Result<_>>()?;
    Ok(Some(FoldDone {
        result: file.result,
        members,
        probs,
    }))
}
