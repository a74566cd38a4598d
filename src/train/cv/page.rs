//! The HTML report page of a cross-validation: the out-of-fold confusion matrix, accuracy
//! against coverage, per-fold figures and the suspected label errors (see
//! [`crate::evaluate::html_report`]).

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::Result;

use super::CvOutcome;
use crate::data::cache::ImageCache;
use crate::evaluate::label_audit::Issue;
use crate::evaluate::{coverage, html_report, scores};
use crate::track::store;

pub(super) fn write_page(
    parent: &store::Run,
    cache: &ImageCache,
    probs: &[Vec<f32>],
    o: &CvOutcome,
    issues: Vec<(Issue, usize)>,
) -> Result<PathBuf> {
    let images: Vec<html_report::Image> = cache
        .samples
        .iter()
        .zip(probs)
        .enumerate()
        .map(|(i, (s, p))| {
            let pred = scores::argmax(p);
            html_report::Image {
                rel: s.rel.clone(),
                truth: s.class,
                predicted: pred,
                confidence: p[pred],
                pixels: cache.pixels(i),
                side: cache.size,
            }
        })
        .collect();
    let outcomes: Vec<coverage::Outcome> = images
        .iter()
        .map(|i| (i.confidence, i.truth == i.predicted))
        .collect();
    let fold_rows = o
        .folds
        .iter()
        .map(|f| {
            vec![
                f.fold.to_string(),
                format!("{} ({})", f.run_name, f.run_id),
                f.images.to_string(),
                format!("{:.4}", f.accuracy),
                format!("{:.4}", f.macro_f1),
            ]
        })
        .chain(std::iter::once(vec![
            "mean ± std".into(),
            String::new(),
            cache.len().to_string(),
            o.accuracy.show(),
            o.macro_f1.show(),
        ]))
        .collect();
    let class_rows = o
        .class_f1
        .iter()
        .map(|(c, m)| vec![c.clone(), m.show()])
        .collect();
    let params = store::read_params(&parent.info)?;
    let unique: HashSet<&[u8; 32]> = cache.content_hashes.iter().collect();
    let page = html_report::Page {
        title: format!("flora cv: {}", o.parent_run_name),
        report: &o.pooled,
        images,
        coverage: coverage::curve(&outcomes, &coverage::THRESHOLDS),
        facts: vec![
            (
                "run".into(),
                format!("{} ({})", o.parent_run_name, o.parent_run_id),
            ),
            ("data fingerprint".into(), cache.fingerprint.clone()),
            (
                "images".into(),
                format!("{} ({} distinct contents)", cache.len(), unique.len()),
            ),
            (
                "predictions".into(),
                "out of fold: each image by the model that never saw it".into(),
            ),
        ],
        params,
        tables: vec![
            (
                "Folds".into(),
                ["fold", "run", "images", "accuracy", "macro F1"]
                    .map(String::from)
                    .to_vec(),
                fold_rows,
            ),
            (
                "Per-class F1 across folds".into(),
                ["class", "F1 mean ± std"].map(String::from).to_vec(),
                class_rows,
            ),
        ],
        issues: Some(issues),
    };
    html_report::write(&o.dir, &page)
}
