//! `flora cv` on real images: one parent run with K child runs, folds disjoint and covering,
//! stable across runs (and for old images when images are added), an out-of-fold prediction
//! for every image, and flipped labels found by the label-error audit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support::common::*;
use flora::track::store::{RunInfo, RunStore, read_params, read_tags};

/// (parent, children) of the newest cross-validation in `p`'s store.
fn cv_runs(p: &Path) -> (RunInfo, Vec<RunInfo>) {
    let runs = RunStore::new(p.join("runs")).runs().unwrap();
    let parent = runs
        .iter()
        .find(|r| read_tags(r).unwrap().get("flora.cv").map(String::as_str) == Some("parent"))
        .unwrap()
        .clone();
    let children = runs
        .into_iter()
        .filter(|r| read_tags(r).unwrap().get("mlflow.parentRunId") == Some(&parent.run_id))
        .collect();
    (parent, children)
}

/// Path → fold, from the parent's `oof_predictions.csv`.
fn oof_folds(parent: &RunInfo) -> BTreeMap<String, String> {
    let mut r = csv::Reader::from_path(parent.artifacts().join("oof_predictions.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let (pi, fi) = (
        h.iter().position(|c| c == "path").unwrap(),
        h.iter().position(|c| c == "fold").unwrap(),
    );
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            (rec[pi].to_string(), rec[fi].to_string())
        })
        .collect()
}

/// The held-out paths of a child run, from its `split.csv`.
fn held_out(child: &RunInfo) -> BTreeSet<String> {
    flora::data::split::read_csv(&child.artifacts().join("split.csv"))
        .unwrap()
        .into_iter()
        .filter(|r| r.subset == "held_out")
        .map(|r| r.path)
        .collect()
}

#[test]
fn folds_are_disjoint_cover_every_image_and_stay_put() {
    let dir = project(24, 1);
    let p = dir.path();
    let out = ok(p, &["cv", "--folds", "3", "--name", "first"]);
    assert!(out.contains("accuracy") && out.contains("±"), "{out}");
    let (parent, children) = cv_runs(p);
    assert_eq!(parent.run_name, "first");
    assert_eq!(parent.status.as_str(), "FINISHED");
    assert_eq!(children.len(), 3);
    let params = read_params(&parent).unwrap();
    assert_eq!(params["cv.folds"], "3");
    assert_eq!(params["num_images"], (24 * CLASSES.len()).to_string());

    // Every image is held out by exactly one child, and predicted out of fold.
    let folds = oof_folds(&parent);
    assert_eq!(folds.len(), 24 * CLASSES.len());
    let mut seen = BTreeSet::new();
    for c in &children {
        assert_eq!(c.status.as_str(), "FINISHED");
        let held = held_out(c);
        assert!(!held.is_empty());
        let fold = read_tags(c).unwrap()["flora.cv_fold"].clone();
        let n = fold.split('/').next().unwrap().to_string();
        for path in &held {
            assert!(seen.insert(path.clone()), "{path} held out twice");
            assert_eq!(folds[path], n, "{path}");
        }
        // The child trained and validated only on the other folds.
        let rows = flora::data::split::read_csv(&c.artifacts().join("split.csv")).unwrap();
        assert!(rows.iter().any(|r| r.subset == "val"));
        assert!(rows.iter().any(|r| r.subset == "train"));
    }
    assert_eq!(seen.len(), folds.len());
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(parent.artifacts().join("cv_summary.json")).unwrap(),
    )
    .unwrap();
    let accs: Vec<f64> = summary["folds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["accuracy"].as_f64().unwrap())
        .collect();
    let mean = accs.iter().sum::<f64>() / 3.0;
    assert!((summary["accuracy"]["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
    assert!(summary["class_f1"]["bag"]["mean"].is_number());

    // A second run after adding images: every old image keeps its fold.
    let (train, _) = fashion_mnist();
    let more = tempfile::tempdir().unwrap();
    copy_classes(&train, more.path(), &CLASSES, 30);
    for c in CLASSES {
        for e in std::fs::read_dir(more.path().join(c)).unwrap() {
            let e = e.unwrap().path();
            let to = p.join("dataset").join(c).join(name_of(&e));
            if !to.exists() {
                std::fs::copy(&e, to).unwrap();
            }
        }
    }
    ok(p, &["cv", "--folds", "3", "--name", "second"]);
    let store = RunStore::new(p.join("runs"));
    let second = oof_folds(&store.find("second").unwrap());
    assert_eq!(second.len(), 30 * CLASSES.len());
    for (path, fold) in &folds {
        assert_eq!(&second[path], fold, "{path} moved");
    }
    let err = fails(p, &["cv", "--folds", "1"]);
    assert!(err.contains("--folds 1"), "{err}");
}

#[test]
fn flipped_labels_rank_near_the_top_of_the_audit() {
    let (train, _) = fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let data = p.join("dataset");
    copy_classes(&train, &data, &CLASSES, 100);
    write_config(p, 10, "");
    // Move 8 images into a wrong class folder: (from, to), two each.
    let moves = [
        ("trouser", "bag"),
        ("bag", "sneaker"),
        ("sneaker", "t-shirt_top"),
        ("t-shirt_top", "trouser"),
    ];
    let mut flipped: BTreeMap<String, (String, String)> = BTreeMap::new();
    // Chosen before any move, so that no image moves twice.
    let chosen: Vec<(PathBuf, &str, &str)> = moves
        .iter()
        .flat_map(|&(from, to)| {
            let mut files: Vec<PathBuf> = std::fs::read_dir(data.join(from))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            files.truncate(2);
            files.into_iter().map(move |f| (f, from, to))
        })
        .collect();
    for (f, from, to) in chosen {
        let name = format!("flipped-{}", name_of(&f));
        std::fs::rename(&f, data.join(to).join(&name)).unwrap();
        flipped.insert(format!("{to}/{name}"), (to.to_string(), from.to_string()));
    }
    let out = ok(p, &["cv", "--folds", "4", "--name", "audit"]);
    assert!(out.contains("suspected label error"), "{out}");
    let parent = RunStore::new(p.join("runs")).find("audit").unwrap();
    let path = parent.artifacts().join("label_issues.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("path,given,suggested,p_given,p_suggested,score\n"),
        "{text}"
    );
    let mut r = csv::Reader::from_path(&path).unwrap();
    let rows: Vec<flora::evaluate::label_audit::Issue> =
        r.deserialize().map(|x| x.unwrap()).collect();
    assert!(!rows.is_empty());
    for w in rows.windows(2) {
        assert!(w[0].score >= w[1].score, "ranked by score");
    }
    for row in &rows {
        assert!(
            data.join(&row.path).is_file(),
            "{} is relative to the dataset",
            row.path
        );
        assert!((row.score - (row.p_suggested - row.p_given)).abs() < 1e-5);
    }
    // Most flipped images are among the first 2×8 suspects, with their true class suggested.
    let top: Vec<&flora::evaluate::label_audit::Issue> =
        rows.iter().take(2 * flipped.len()).collect();
    let found: Vec<&&flora::evaluate::label_audit::Issue> = top
        .iter()
        .filter(|i| flipped.contains_key(&i.path))
        .collect();
    assert!(
        found.len() >= 6,
        "only {} of {} flipped images in the top {}: {top:#?}",
        found.len(),
        flipped.len(),
        top.len()
    );
    for i in &found {
        assert_eq!(i.given, flipped[&i.path].0);
    }
    let right = found
        .iter()
        .filter(|i| i.suggested == flipped[&i.path].1)
        .count();
    assert!(
        right >= 5,
        "true class suggested for only {right}: {found:#?}"
    );
    let html = std::fs::read_to_string(parent.artifacts().join("report.html")).unwrap();
    assert!(html.contains("Suspected label errors"));
    assert!(html.contains(&found[0].path.replace('&', "&amp;")));
}
