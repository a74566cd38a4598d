//! The validation split stays put as the dataset grows, and a `test/` folder is the held-out set
//! that `flora eval` and the promote gate use by default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::support::common::*;

/// The run folder of the run named `name`.
fn run_named(dir: &Path, name: &str) -> PathBuf {
    for exp in std::fs::read_dir(dir.join("runs")).unwrap().flatten() {
        for run in std::fs::read_dir(exp.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let tag = run.path().join("tags/mlflow.runName");
            if std::fs::read_to_string(&tag).is_ok_and(|n| n == name) {
                return run.path();
            }
        }
    }
    panic!("no run named {name} in {}", dir.display());
}

/// path → subset, from a run's split.csv.
fn split_of(run: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(run.join("artifacts/split.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let mut parts = l.rsplitn(3, ',');
            let subset = parts.next().unwrap().to_string();
            let _class = parts.next().unwrap();
            (parts.next().unwrap().to_string(), subset)
        })
        .collect()
}

#[test]
fn adding_images_never_moves_old_ones_between_train_and_val() {
    let dir = project(20, 1);
    ok(dir.path(), &["train", "--name", "before"]);
    // The dataset grows (as after a merge): 20 more images per class.
    let (train, _) = fashion_mnist();
    for class in CLASSES {
        let mut files: Vec<PathBuf> = std::fs::read_dir(train.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in &files[20..40] {
            let to = dir.path().join("dataset").join(class).join(name_of(f));
            std::fs::copy(f, to).unwrap();
        }
    }
    ok(dir.path(), &["train", "--name", "after"]);
    let before = split_of(&run_named(dir.path(), "before"));
    let after = split_of(&run_named(dir.path(), "after"));
    assert_eq!(before.len(), 80);
    assert_eq!(after.len(), 160);
    for (path, subset) in &before {
        assert_eq!(after.get(path), Some(subset), "{path} moved");
    }
    let new_val = after
        .iter()
        .filter(|(p, s)| !before.contains_key(*p) && *s == "val")
        .count();
    assert!(new_val > 0, "some new images go to val");
}

#[test]
fn a_test_folder_is_held_out_and_evaluated_by_default() {
    let dir = project(20, 2);
    let (_, test) = fashion_mnist();
    copy_classes(&test, &dir.path().join("dataset/test"), &CLASSES, 5);
    let out = run(dir.path(), &["train", "--name", "t"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("4 classes"),
        "test/ is not a class: {stderr}"
    );
    assert!(stderr.contains("held-out test set"), "{stderr}");
    let split = split_of(&run_named(dir.path(), "t"));
    assert_eq!(split.len(), 80, "only the class folders are split");
    assert!(split.keys().all(|p| !p.starts_with("test/")));

    let out = run(dir.path(), &["eval", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("held-out set"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["num_images"], 20);

    let out = run(dir.path(), &["promote", "t"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("on 20 images of the held-out set"),
        "{stderr}"
    );
}

#[test]
fn train_val_and_test_folders_are_used_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), 1, "");
    let ds = dir.path().join("dataset");
    let (train, test) = fashion_mnist();
    copy_classes(&train, &ds.join("train"), &["bag", "trouser"], 12);
    copy_classes(&test, &ds.join("val"), &["bag", "trouser"], 4);
    copy_classes(&test, &ds.join("test"), &["bag", "trouser"], 6);
    ok(dir.path(), &["train", "--name", "tv"]);
    let split = split_of(&run_named(dir.path(), "tv"));
    assert_eq!(split.len(), 32);
    assert!(split.iter().all(|(p, s)| p.starts_with(&format!("{s}/"))));
    let report: serde_json::Value =
        serde_json::from_str(&ok(dir.path(), &["eval", "--json"])).unwrap();
    assert_eq!(report["num_images"], 12, "the test/ folder");
}
