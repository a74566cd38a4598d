//! What `flora label` shows: the images waiting in the inbox (with what merge and serve said
//! about them, from merge's manifest) or the rows of a queue file, each with the model's
//! suggestion when there is a model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::data::dataset::check_class_name;
use crate::feedback::merge::manifest::read_manifest;
use crate::feedback::merge::{Action, Layout, Row};
use crate::model::Scored;
use crate::model::bundle::ModelBundle;
use crate::util::fsutil;

/// What serve predicted when the image was uploaded.
#[derive(Debug, Clone, Serialize)]
pub struct ServeGuess {
    pub class: String,
    pub confidence: Option<f32>,
    pub slot: String,
}

/// One image to decide on.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// The image's path relative to the dataset folder, `/`-separated: its id on the page.
    pub path: String,
    #[serde(skip)]
    pub abs: PathBuf,
    /// The suggested class (empty when there is none).
    pub suggested: String,
    pub confidence: Option<f32>,
    /// Every class with its probability, best first (empty without a model).
    pub top_k: Vec<Scored>,
    /// Top-1 minus top-2 probability (the model's doubt: low first).
    pub margin: Option<f32>,
    /// Where the suggestion came from: `model`, `merge` (the inbox subfolder or merge's
    /// prediction), `queue` (a queue file), or empty.
    pub suggested_by: String,
    /// The sort key of "most uncertain first": ascending.
    pub rank: f32,
    /// `YYYY-MM-DD` the image was collected (else the file's date).
    pub date: String,
    pub serve: Option<ServeGuess>,
    /// Queue files: the class folder the image is in now.
    pub given: Option<String>,
    /// Queue files: the audit's score (higher: more likely mislabelled).
    pub score: Option<f32>,
    /// Why the model could not look at it, if it could not.
    pub problem: Option<String>,
    /// merge's manifest row for the image, when it came through `flora merge`.
    #[serde(skip)]
    pub merged: Option<Row>,
}

/// The model that suggests, with what names it in the manifest.
pub struct Suggester<'a> {
    pub bundle: &'a ModelBundle,
    pub slot: String,
    pub run_id: String,
    /// Limits of decoding the queued images.
    pub limits: crate::data::imaging::DecodeLimits,
}

/// A row of a queue file (issue 16's label-error audit).
#[derive(Debug, Deserialize)]
struct QueueRow {
    path: String,
    given: String,
    suggested: String,
    #[serde(default)]
    p_given: Option<f32>,
    #[serde(default)]
    p_suggested: Option<f32>,
    #[serde(default)]
    score: Option<f32>,
}

/// The inbox's images, with merge's record of each.
pub fn inbox(layout: &Layout) -> Result<Vec<Item>> {
    let rows = read_manifest(&layout.manifest())?;
    let merged: HashMap<PathBuf, Row> = rows
        .into_iter()
        .filter(|r| r.action == Action::Inbox)
        .map(|r| (layout.abs(&r.destination), r))
        .collect();
    let mut items = Vec::new();
    for (path, folder) in layout.inbox_files()? {
        let sub = folder.filter(|c| check_class_name(c).is_ok());
        let row = merged.get(&path).cloned();
        let (suggested, confidence) = match (&sub, &row) {
            (Some(c), Some(r)) if *c == r.predicted_class || r.predicted_class.is_empty() => {
                (c.clone(), r.confidence)
            }
            (Some(c), _) => (c.clone(), None),
            (None, Some(r)) if check_class_name(&r.predicted_class).is_ok() => {
                (r.predicted_class.clone(), r.confidence)
            }
            _ => (String::new(), None),
        };
        let serve = row
            .as_ref()
            .filter(|r| !r.serve_class.is_empty())
            .map(|r| ServeGuess {
                class: r.serve_class.clone(),
                confidence: r.serve_confidence,
                slot: r.serve_slot.clone(),
            });
        let date = row
            .as_ref()
            .map(|r| r.collected_date.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| file_date(&path));
        items.push(Item {
            path: dataset_rel(layout, &path),
            abs: path,
            suggested_by: if suggested.is_empty() { "" } else { "merge" }.into(),
            rank: confidence.unwrap_or(1.0),
            suggested,
            confidence,
            top_k: Vec::new(),
            margin: None,
            date,
            serve,
            given: None,
            score: None,
            problem: None,
            merged: row,
        });
    }
    Ok(items)
}

/// The images a queue file names (columns `path` relative to the dataset folder, `given`,
/// `suggested`, `p_given`, `p_suggested`, `score`): each must be in its `given` class folder.
pub fn from_file(layout: &Layout, file: &Path) -> Result<Vec<Item>> {
    let mut r = csv::Reader::from_path(file)
        .with_context(|| format!("opening the queue file {}", file.display()))?;
    let mut items = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, row) in r.deserialize::<QueueRow>().enumerate() {
        let line = i + 2;
        let q = row.with_context(|| {
            format!(
                "{} line {line}: expected the columns path,given,suggested,p_given,p_suggested,score",
                file.display()
            )
        })?;
        let bad = |why: String| anyhow::anyhow!("{} line {line}: {why}", file.display());
        let rel = fsutil::check_relative(&q.path).map_err(|e| bad(format!("{e:#}")))?;
        check_class_name(&q.given).map_err(|e| bad(format!("given: {e:#}")))?;
        check_class_name(&q.suggested).map_err(|e| bad(format!("suggested: {e:#}")))?;
        let folder = rel
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned());
        if folder.as_deref() != Some(q.given.as_str()) {
            return Err(bad(format!(
                "{:?} is not in the folder of its given class {:?}",
                q.path, q.given
            )));
        }
        let abs = layout.dataset.join(rel);
        layout
            .checked(&layout.rel(&abs))
            .map_err(|why| bad(format!("refused: {why}")))?;
        if abs.starts_with(&layout.inbox) {
            return Err(bad(format!(
                "{:?} is in the inbox, not a class folder",
                q.path
            )));
        }
        if !abs.is_file() {
            return Err(bad(format!(
                "{} does not exist (moved since the queue was written?)",
                abs.display()
            )));
        }
        if !seen.insert(abs.clone()) {
            continue;
        }
        items.push(Item {
            path: q.path.clone(),
            date: file_date(&abs),
            abs,
            suggested: q.suggested.clone(),
            confidence: q.p_suggested,
            top_k: Vec::new(),
            margin: None,
            suggested_by: "queue".into(),
            rank: -q.score.unwrap_or(0.0),
            serve: None,
            given: Some(q.given.clone()),
            score: q.score,
            problem: None,
            merged: None,
        });
        let _ = q.p_given;
    }
    if items.is_empty() {
        bail!("the queue file {} lists no image", file.display());
    }
    Ok(items)
}

/// Runs the model over every item: its top-k, margin and (for inbox items) its suggestion.
/// Decodes in parallel and infers in batches, as `flora predict` does
/// ([`crate::model::infer::predict_files`]).
pub fn suggest(items: &mut [Item], model: &Suggester) {
    let paths: Vec<PathBuf> = items.iter().map(|it| it.abs.clone()).collect();
    let results =
        crate::model::infer::predict_files(model.bundle, &paths, model.limits, "suggesting");
    for (it, r) in items.iter_mut().zip(results) {
        let p = match r {
            Ok(p) => p,
            Err(e) => {
                it.problem = Some(e);
                continue;
            }
        };
        let top = model.bundle.top_k(&p, p.len());
        let margin = top[0].confidence - top.get(1).map_or(0.0, |s| s.confidence);
        it.margin = Some(margin);
        if it.given.is_none() {
            it.suggested = top[0].class.clone();
            it.confidence = Some(top[0].confidence);
            it.suggested_by = "model".into();
            it.rank = margin;
        }
        it.top_k = top;
    }
}

/// `p` relative to the dataset folder, `/`-separated.
pub fn dataset_rel(layout: &Layout, p: &Path) -> String {
    crate::data::dataset::rel_path(&layout.dataset, p)
}

/// The file's modification date, `YYYY-MM-DD` (local time), or empty.
fn file_date(p: &Path) -> String {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| jiff::Timestamp::try_from(t).ok())
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d")
                .to_string()
        })
        .unwrap_or_default()
}
