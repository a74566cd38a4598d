//! `flora cv`: k-fold cross-validation. Each image's fold comes from a hash of `data.seed` and
//! its content (as the train/val split, [`crate::data::split`]): folds are disjoint, the same on
//! every run, unchanged for old images when images are added, and copies of one image share a
//! fold. Fold `f`'s model trains on the other folds (split by content into train and val for
//! early stopping and best-epoch choice) and never sees fold `f`, which it then predicts: every
//! image gets an out-of-fold prediction. The K training runs are children of one parent run
//! (`mlflow.parentRunId`), which holds the summary, `oof_predictions.csv`,
//! `label_issues.csv` ([`crate::evaluate::label_audit`]) and `report.html`.

mod fold;
mod indexed;
mod page;

pub use indexed::{FoldOutcome, refresh, run_fold};

/// The tag marking a cross-validation's parent run (`parent`).
pub const PARENT_TAG: &str = "flora.cv";
/// The tag holding a fold run's `<fold>/<folds>`.
pub const FOLD_TAG: &str = crate::train::checkpoint::CV_FOLD_TAG;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::config::Settings;
use crate::data::cache::ImageCache;
use crate::data::split;
use crate::evaluate::html_report;
use crate::evaluate::label_audit::{self, Issue};
use crate::evaluate::scores::{self, Report};
use crate::track::store::{self, RunStatus, RunStore};
use crate::util::fsutil;

/// Folds `flora cv` accepts.
pub const FOLDS: std::ops::RangeInclusive<usize> = 2..=20;

/// The error of a cross-validation stopped by Ctrl-C or SIGTERM (its parent run is KILLED).
#[derive(Debug)]
pub struct Interrupted {
    /// The fold that was training.
    pub fold: usize,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cross-validation interrupted during fold {}", self.fold)
    }
}

impl std::error::Error for Interrupted {}

/// One fold's figures.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct FoldResult {
    pub fold: usize,
    pub run_id: String,
    pub run_name: String,
    pub images: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// F1 of each class present in the fold.
    pub f1: BTreeMap<String, f64>,
}

/// Mean and sample standard deviation.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
}

impl MeanStd {
    /// Of `values` (std 0 for fewer than two).
    pub fn of(values: &[f64]) -> Self {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n.max(1.0);
        let var = if values.len() < 2 {
            0.0
        } else {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
        };
        Self {
            mean,
            std: var.sqrt(),
        }
    }

    fn show(&self) -> String {
        format!("{:.4} ± {:.4}", self.mean, self.std)
    }
}

/// The outcome of a cross-validation.
pub struct CvOutcome {
    pub parent_run_id: String,
    pub parent_run_name: String,
    pub status: RunStatus,
    pub folds: Vec<FoldResult>,
    pub accuracy: MeanStd,
    pub macro_f1: MeanStd,
    pub class_f1: BTreeMap<String, MeanStd>,
    /// Metrics of all out-of-fold predictions pooled.
    pub pooled: Report,
    pub issues: Vec<Issue>,
    /// The parent run's artifacts folder (CSVs, report.html).
    pub dir: PathBuf,
}

/// The dataset of a cross-validation: decoded once, each image's fold assigned.
pub(crate) struct CvData {
    pub classes: Vec<String>,
    pub cache: ImageCache,
    /// Each image's fold (0-based).
    pub folds: Vec<usize>,
    pub k: usize,
}

impl CvData {
    /// Decodes the dataset and assigns the `k` folds; a fold with no image is an error.
    pub fn prepare(settings: &Settings, k: usize) -> Result<Self> {
        if !FOLDS.contains(&k) {
            bail!(
                "--folds {k} is out of range: use {} to {}",
                FOLDS.start(),
                FOLDS.end()
            );
        }
        let cfg = &settings.config;
        crate::util::device::set_threads(cfg.train.threads);
        let (index, cache) = crate::train::data::decode_dataset(settings)?;
        let folds: Vec<usize> = cache
            .content_hashes
            .iter()
            .map(|h| split::fold_of(h, cfg.data.seed, k))
            .collect();
        for f in 0..k {
            if !folds.contains(&f) {
                bail!(
                    "fold {} of {k} has no image ({} images in all): use fewer folds",
                    f + 1,
                    cache.len()
                );
            }
        }
        Ok(Self {
            classes: index.classes,
            cache,
            folds,
            k,
        })
    }

    /// The parent run's params (the same for every worker of an indexed cross-validation).
    pub fn parent_params(&self, settings: &Settings) -> Vec<(&'static str, String)> {
        let cfg = &settings.config;
        vec![
            ("cv.folds", self.k.to_string()),
            ("data.dir", settings.data_dir().display().to_string()),
            ("data.image_size", cfg.data.image_size.to_string()),
            ("data.seed", cfg.data.seed.to_string()),
            ("train.arch", cfg.train.arch.as_str().into()),
            ("train.epochs", cfg.train.epochs.to_string()),
            ("train.class_weights", cfg.train.class_weights.to_string()),
            ("train.sampler", cfg.train.sampler.as_str().into()),
            ("num_images", self.cache.len().to_string()),
            ("classes", self.classes.join(",")),
        ]
    }
}

/// The parent's default name.
pub(crate) fn default_name() -> String {
    format!("cv-{}", jiff::Zoned::now().strftime("%Y%m%d-%H%M%S"))
}

/// Runs a K-fold cross-validation as `settings` says (the train settings of `flora train`).
pub fn cross_validate(
    settings: &Settings,
    k: usize,
    name: Option<&str>,
    stop: &AtomicBool,
) -> Result<CvOutcome> {
    let data = CvData::prepare(settings, k)?;
    let store = RunStore::new(settings.runs_dir());
    let exp = store.experiment(&settings.config.project.name)?;
    let name = name.map_or_else(default_name, str::to_string);
    let mut parent = store.create_run(&exp, &name)?;
    eprintln!(
        "cross-validation {} ({}): {k} folds of {} images",
        name,
        parent.info.run_id,
        data.cache.len()
    );
    let result = (|| -> Result<CvOutcome> {
        for (key, v) in &data.parent_params(settings) {
            parent.log_param(key, v)?;
        }
        parent.set_tag("flora.data_fingerprint", &data.cache.fingerprint)?;
        parent.set_tag(PARENT_TAG, "parent")?;
        let mut done = Vec::with_capacity(k);
        for f in 0..k {
            let fold = fold::train_fold(settings, &parent, &data, f, stop)?;
            done.push(fold);
        }
        summarise(&parent, &data, done)
    })();
    match result {
        Ok(outcome) => {
            parent.end(outcome.status)?;
            Ok(outcome)
        }
        Err(e) if e.is::<Interrupted>() => {
            parent.end(RunStatus::Killed)?;
            Err(e)
        }
        Err(e) => {
            let _ = parent.end(RunStatus::Failed);
            Err(e.context(format!(
                "cross-validation run {} failed",
                parent.info.run_id
            )))
        }
    }
}

/// Pools the folds (in fold order): mean ± std, OOF metrics, the audit, the files and the page.
pub(crate) fn summarise(
    parent: &store::Run,
    data: &CvData,
    done: Vec<fold::FoldDone>,
) -> Result<CvOutcome> {
    let (cache, classes, folds) = (&data.cache, &data.classes[..], &data.folds[..]);
    let mut oof: Vec<Option<Vec<f32>>> = vec![None; cache.len()];
    let mut results = Vec::with_capacity(done.len());
    for d in done {
        for (i, p) in d.members.into_iter().zip(d.probs) {
            oof[i] = Some(p);
        }
        results.push(d.result);
    }
    let probs: Vec<Vec<f32>> = oof
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            p.with_context(|| format!("{} has no out-of-fold prediction", cache.samples[i].rel))
        })
        .collect::<Result<_>>()?;
    let accs: Vec<f64> = results.iter().map(|r| r.accuracy).collect();
    let f1s: Vec<f64> = results.iter().map(|r| r.macro_f1).collect();
    let (accuracy, macro_f1) = (MeanStd::of(&accs), MeanStd::of(&f1s));
    let class_f1: BTreeMap<String, MeanStd> = classes
        .iter()
        .map(|c| {
            let v: Vec<f64> = results
                .iter()
                .filter_map(|r| r.f1.get(c).copied())
                .collect();
            (c.clone(), MeanStd::of(&v))
        })
        .collect();
    let truth: Vec<usize> = cache.samples.iter().map(|s| s.class).collect();
    let pooled = scores::report(classes, &truth, &probs);
    let paths: Vec<String> = cache.samples.iter().map(|s| s.rel.clone()).collect();
    let found = label_audit::find(classes, &paths, &truth, &probs);
    let dir = parent.artifacts();
    write_oof(
        &dir.join("oof_predictions.csv"),
        cache,
        classes,
        folds,
        &probs,
    )?;
    let issues: Vec<Issue> = found.iter().map(|(i, _)| i.clone()).collect();
    label_audit::write_csv(&dir.join(label_audit::FILE), &issues)?;
    for (key, m) in [("cv_accuracy", accuracy), ("cv_macro_f1", macro_f1)] {
        parent.log_metric(&format!("{key}_mean"), m.mean, 0)?;
        parent.log_metric(&format!("{key}_std"), m.std, 0)?;
    }
    for (c, m) in &class_f1 {
        let key: String = c
            .chars()
            .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
            .collect();
        parent.log_metric(&format!("cv_f1_mean.{key}"), m.mean, 0)?;
    }
    parent.log_metric("cv_oof_accuracy", pooled.accuracy, 0)?;
    parent.log_metric("cv_label_issues", issues.len() as f64, 0)?;
    let summary = serde_json::json!({
        "folds": results, "accuracy": accuracy, "macro_f1": macro_f1,
        "class_f1": class_f1, "oof_accuracy": pooled.accuracy, "label_issues": issues.len(),
    });
    fsutil::write_atomic(
        &dir.join("cv_summary.json"),
        &serde_json::to_vec_pretty(&summary)?,
    )?;
    let outcome = CvOutcome {
        parent_run_id: parent.info.run_id.clone(),
        parent_run_name: parent.info.run_name.clone(),
        status: RunStatus::Finished,
        folds: results,
        accuracy,
        macro_f1,
        class_f1,
        pooled,
        issues,
        dir: dir.clone(),
    };
    page::write_page(parent, cache, &probs, &outcome, found)?;
    Ok(outcome)
}

/// `oof_predictions.csv`: path, given, predicted, confidence, fold, then `p_<class>` columns.
fn write_oof(
    path: &std::path::Path,
    cache: &ImageCache,
    classes: &[String],
    folds: &[usize],
    probs: &[Vec<f32>],
) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = ["path", "given", "predicted", "confidence", "fold"]
        .map(String::from)
        .to_vec();
    header.extend(classes.iter().map(|c| format!("p_{c}")));
    w.write_record(&header)?;
    for ((s, p), f) in cache.samples.iter().zip(probs).zip(folds) {
        let pred = scores::argmax(p);
        let mut rec = vec![
            s.rel.clone(),
            classes[s.class].clone(),
            classes[pred].clone(),
            format!("{:.6}", p[pred]),
            (f + 1).to_string(),
        ];
        rec.extend(p.iter().map(|v| format!("{v:.6}")));
        w.write_record(&rec)?;
    }
    fsutil::write_atomic(
        path,
        &w.into_inner().context("writing oof_predictions.csv")?,
    )
}

/// The summary printed at the end.
pub fn summary(o: &CvOutcome) -> String {
    let mut s = format!(
        "\ncross-validation {} ({}), {} folds\n",
        o.parent_run_name,
        o.parent_run_id,
        o.folds.len()
    );
    for f in &o.folds {
        s += &format!(
            "  fold {:<3} accuracy {:.4}  macro F1 {:.4}  ({} images, run {})\n",
            f.fold, f.accuracy, f.macro_f1, f.images, f.run_name
        );
    }
    s += &format!(
        "  accuracy  {}\n  macro F1  {}\n  per-class F1:\n",
        o.accuracy.show(),
        o.macro_f1.show()
    );
    for (c, m) in &o.class_f1 {
        s += &format!("    {c:<20} {}\n", m.show());
    }
    s += &format!(
        "  out-of-fold accuracy {:.4}; {} suspected label error(s)\n",
        o.pooled.accuracy,
        o.issues.len()
    );
    for (n, i) in o.issues.iter().take(10).enumerate() {
        s += &format!(
            "    {:>2}. {}  given {} -> {}  (p {:.2} vs {:.2})\n",
            n + 1,
            i.path,
            i.given,
            i.suggested,
            i.p_given,
            i.p_suggested
        );
    }
    s += &format!(
        "  wrote oof_predictions.csv, {}, cv_summary.json, {} to {}\n",
        label_audit::FILE,
        html_report::PAGE,
        o.dir.display()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        let m = MeanStd::of(&[0.8, 0.9, 1.0]);
        assert!((m.mean - 0.9).abs() < 1e-12 && (m.std - 0.1).abs() < 1e-12);
        assert_eq!(MeanStd::of(&[0.5]).std, 0.0);
    }
}
