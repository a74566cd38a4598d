//! Evaluating a model bundle on labelled images: metrics, confusion matrix, misclassified files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::data::cache::ImageCache;
use crate::data::dataset::{DatasetIndex, Sample};
use crate::data::imaging::DecodeLimits;
use crate::data::pixel_store::PixelStore;
use crate::data::split;
use crate::evaluate::plot;
use crate::evaluate::scores::{self, Report};
use crate::model::bundle::ModelBundle;
use crate::model::infer;
use crate::track::store::{self, Run, RunInfo};
use crate::util::fsutil;

/// One wrongly classified image (a place where label errors show up).
#[derive(Debug, Clone, Serialize)]
pub struct Miss {
    pub path: String,
    #[serde(rename = "true")]
    pub truth: String,
    pub predicted: String,
    pub confidence: f32,
}

/// The outcome of an evaluation.
pub struct Evaluation {
    pub report: Report,
    /// Most confident first.
    pub misclassified: Vec<Miss>,
    /// Files that could not be read.
    pub skipped: Vec<(PathBuf, String)>,
    /// Fingerprint of the evaluated images.
    pub fingerprint: String,
    /// The model's name for plot titles: its run name, else `model`.
    pub model: String,
    /// Class probabilities of each decoded image, in the order of `cache.samples`.
    pub probs: Vec<Vec<f32>>,
    /// The decoded images (for the HTML report's thumbnails).
    pub cache: ImageCache,
}

/// Labelled samples from a folder-per-class set, with class indices in the model's order.
/// A class folder the model does not know is an error.
pub fn samples_from_dir(dir: &Path, classes: &[String]) -> Result<Vec<Sample>> {
    if !dir.is_dir() {
        bail!("evaluation folder {} does not exist", dir.display());
    }
    let index = DatasetIndex::read(dir)?;
    if let Some(unknown) = index.classes.iter().find(|c| !classes.contains(c)) {
        bail!(
            "class folder '{unknown}' in {} is not one of the model's classes ({})",
            dir.display(),
            classes.join(", ")
        );
    }
    Ok(index
        .samples
        .into_iter()
        .map(|s| {
            let class = classes
                .iter()
                .position(|c| *c == index.classes[s.class])
                .expect("checked above");
            Sample { class, ..s }
        })
        .collect())
}

/// What `flora eval` and the promote gate evaluate when no folder is given: the `test/` folder
/// of the run's dataset when it has one, else the run's own validation split. Returns the
/// samples and a description for the user ("dataset/test", "the validation split of run X").
pub fn default_samples(run: &RunInfo, classes: &[String]) -> Result<(Vec<Sample>, String)> {
    let root = run_data_dir(run)?;
    let test = root.join("test");
    if test.is_dir() {
        let samples = samples_from_dir(&test, classes)?;
        return Ok((samples, format!("the held-out set {}", test.display())));
    }
    let samples = split_samples(run, &root, classes, "val")?;
    Ok((
        samples,
        format!("the validation split of run {}", run.run_name),
    ))
}

/// The dataset folder a run trained on (its `data.dir` parameter).
fn run_data_dir(run: &RunInfo) -> Result<PathBuf> {
    let params = store::read_params(run)?;
    Ok(PathBuf::from(
        params
            .get("data.dir")
            .context("the run has no data.dir parameter")?,
    ))
}

/// The images a run trained on (the `train` rows of its `split.csv`), e.g. to calibrate an
/// INT8 export.
pub fn train_split_samples(run: &RunInfo, classes: &[String]) -> Result<Vec<Sample>> {
    split_samples(run, &run_data_dir(run)?, classes, "train")
}

/// The `subset` samples (`train` or `val`) of a run's own split (`split.csv`), under its data
/// folder `root`. Every row's path and class are checked, since the file is read back from disk.
fn split_samples(
    run: &RunInfo,
    root: &Path,
    classes: &[String],
    subset: &str,
) -> Result<Vec<Sample>> {
    let csv = run.artifacts().join("split.csv");
    let rows = split::read_csv(&csv)?;
    let mut out = Vec::new();
    for r in rows.into_iter().filter(|r| r.subset == subset) {
        let rel = fsutil::check_relative(&r.path)
            .with_context(|| format!("{} has a bad row", csv.display()))?;
        let path = root.join(rel);
        let class = classes
            .iter()
            .position(|c| *c == r.class)
            .with_context(|| {
                format!(
                    "split.csv names class '{}', which the model does not have",
                    r.class
                )
            })?;
        out.push(Sample {
            path,
            rel: r.path,
            class,
        });
    }
    if out.is_empty() {
        bail!("run {} has no {subset} images in split.csv", run.run_id);
    }
    Ok(out)
}

/// Runs `bundle` over `samples` (decoded in parallel, or taken from `store`; inferred in
/// batches).
pub fn evaluate(
    bundle: &ModelBundle,
    samples: &[Sample],
    limits: DecodeLimits,
    store: Option<&PixelStore>,
) -> Result<Evaluation> {
    let cache = ImageCache::build(samples, bundle.meta.image_size, limits, "decoding", store);
    if cache.is_empty() {
        bail!(
            "none of the {} evaluation images could be read",
            samples.len()
        );
    }
    let bar = crate::util::progress::count_bar(cache.len() as u64, "evaluating");
    let mut probs = Vec::with_capacity(cache.len());
    let idx: Vec<usize> = (0..cache.len()).collect();
    for chunk in idx.chunks(infer::BATCH) {
        let pixels: Vec<&[u8]> = chunk.iter().map(|&i| cache.pixels(i)).collect();
        probs.extend(bundle.predict_pixels(&pixels));
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let truth: Vec<usize> = cache.samples.iter().map(|s| s.class).collect();
    let classes = &bundle.meta.classes;
    let report = scores::report(classes, &truth, &probs);
    let mut misclassified: Vec<Miss> = cache
        .samples
        .iter()
        .zip(&probs)
        .filter_map(|(s, p)| {
            let pred = scores::argmax(p);
            (pred != s.class).then(|| Miss {
                path: s.path.display().to_string(),
                truth: classes[s.class].clone(),
                predicted: classes[pred].clone(),
                confidence: p[pred],
            })
        })
        .collect();
    misclassified.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    Ok(Evaluation {
        report,
        misclassified,
        skipped: cache.skipped.clone(),
        fingerprint: cache.fingerprint.clone(),
        model: bundle
            .meta
            .run_name
            .clone()
            .unwrap_or_else(|| "model".into()),
        probs,
        cache,
    })
}

impl Evaluation {
    /// Each image's top confidence and whether its top class was right.
    pub fn outcomes(&self) -> Vec<crate::evaluate::coverage::Outcome> {
        self.cache
            .samples
            .iter()
            .zip(&self.probs)
            .map(|(s, p)| {
                let pred = scores::argmax(p);
                (p[pred], pred == s.class)
            })
            .collect()
    }

    /// Share answered and accuracy on the answered images under `thresholds`
    /// (the others are answered "unknown").
    pub fn under(&self, thresholds: &crate::model::unknown::Thresholds) -> (f64, f64) {
        let (mut answered, mut right) = (0usize, 0usize);
        for (s, p) in self.cache.samples.iter().zip(&self.probs) {
            let pred = scores::argmax(p);
            let top = crate::model::Scored {
                class: self.report.classes[pred].clone(),
                confidence: p[pred],
            };
            if !thresholds.is_unknown(&top) {
                answered += 1;
                right += usize::from(pred == s.class);
            }
        }
        let n = self.probs.len().max(1) as f64;
        let acc = if answered == 0 {
            1.0
        } else {
            right as f64 / answered as f64
        };
        (answered as f64 / n, acc)
    }

    /// The images for the HTML report.
    pub fn images(&self) -> Vec<crate::evaluate::html_report::Image<'_>> {
        self.cache
            .samples
            .iter()
            .zip(&self.probs)
            .enumerate()
            .map(|(i, (s, p))| {
                let pred = scores::argmax(p);
                crate::evaluate::html_report::Image {
                    rel: s.rel.clone(),
                    truth: s.class,
                    predicted: pred,
                    confidence: p[pred],
                    pixels: self.cache.pixels(i),
                    side: self.cache.size,
                }
            })
            .collect()
    }

    /// Writes `confusion_matrix.csv`, `confusion_matrix.png` and `misclassified.csv` into `dir`.
    pub fn write_files(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fsutil::write_atomic(
            &dir.join("confusion_matrix.csv"),
            self.report.confusion_csv().as_bytes(),
        )?;
        let title = format!(
            "Confusion matrix: {}, accuracy {:.1}% ({} images)",
            plot::shorten(&self.model, 40),
            100.0 * self.report.accuracy,
            self.report.num_images
        );
        plot::confusion_png(
            &dir.join("confusion_matrix.png"),
            &title,
            &self.report.classes,
            &self.report.confusion_matrix,
        )?;
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["path", "true", "predicted", "confidence"])?;
        for m in &self.misclassified {
            w.write_record([
                m.path.as_str(),
                &m.truth,
                &m.predicted,
                &format!("{:.6}", m.confidence),
            ])?;
        }
        fsutil::write_atomic(&dir.join("misclassified.csv"), &w.into_inner()?)
    }

    /// Logs `eval_*` metrics and the eval data's fingerprint into `run`.
    pub fn log_to(&self, run: &Run) -> Result<()> {
        let step = store::read_metric(&run.info, "eval_accuracy")?.len() as u64;
        let r = &self.report;
        for (k, v) in [
            ("eval_accuracy", r.accuracy),
            ("eval_top_k_accuracy", r.top_k_accuracy),
            ("eval_macro_f1", r.macro_f1),
            ("eval_weighted_f1", r.weighted_f1),
            ("eval_macro_precision", r.macro_precision),
            ("eval_macro_recall", r.macro_recall),
            ("eval_num_images", r.num_images as f64),
        ] {
            run.log_metric(k, v, step)?;
        }
        run.set_tag("flora.eval_data_fingerprint", &self.fingerprint)
    }
}
