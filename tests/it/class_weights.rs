//! Class weighting on real, imbalanced images: `train.class_weights` / `--class-weights`,
//! `class_weight_power` and `train.sampler` are recorded in the run's params and change the
//! training loss; bad settings are clear errors.

use std::path::{Path, PathBuf};

use crate::support::common::*;
use flora::track::store::{RunStore, read_params};

/// A project with 40 trousers and 4 bags (10:1), augmentation off.
fn imbalanced() -> tempfile::TempDir {
    let (train, _) = fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    copy_classes(&train, &dir.path().join("dataset"), &["trouser"], 40);
    copy_classes(&train, &dir.path().join("dataset"), &["bag"], 4);
    write_config(dir.path(), 1, "");
    dir
}

fn run_dir(p: &Path, name: &str) -> PathBuf {
    RunStore::new(p.join("runs")).find(name).unwrap().dir
}

fn params(p: &Path, name: &str) -> std::collections::BTreeMap<String, String> {
    read_params(&RunStore::new(p.join("runs")).find(name).unwrap()).unwrap()
}

/// The first epoch's training loss.
fn train_loss(p: &Path, name: &str) -> f64 {
    let text = std::fs::read_to_string(run_dir(p, name).join("metrics/train_loss")).unwrap();
    text.lines()
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn weights_are_recorded_and_change_the_loss() {
    let dir = imbalanced();
    let p = dir.path();
    ok(p, &["train", "--no-augment", "--name", "none"]);
    ok(
        p,
        &[
            "train",
            "--no-augment",
            "--name",
            "bal",
            "--class-weights",
            "balanced",
        ],
    );
    ok(
        p,
        &[
            "train",
            "--no-augment",
            "--name",
            "table",
            "--class-weights",
            "bag=3",
        ],
    );

    let none = params(p, "none");
    assert_eq!(none["train.class_weights"], "none");
    assert_eq!(none["train.sampler"], "shuffle");
    assert!(!none.contains_key("train.class_weight_values"));

    let bal = params(p, "bal");
    assert_eq!(bal["train.class_weights"], "balanced");
    assert_eq!(bal["train.class_weight_power"], "1");
    // Weights from the training split's counts: trouser 1, bag = n_trouser / n_bag.
    let values = &bal["train.class_weight_values"];
    let bag: f64 = values
        .split(',')
        .find_map(|kv| kv.strip_prefix("bag="))
        .unwrap()
        .parse()
        .unwrap();
    assert!((5.0..=20.0).contains(&bag), "{values}");
    assert!(values.contains("trouser=1.0000"), "{values}");
    let table = params(p, "table");
    assert_eq!(table["train.class_weights"], "bag=3");
    assert_eq!(
        table["train.class_weight_values"],
        "bag=3.0000,trouser=1.0000"
    );
    // Same data, seed and init: only the loss weights differ, and so does the loss.
    let (l_none, l_bal, l_table) = (
        train_loss(p, "none"),
        train_loss(p, "bal"),
        train_loss(p, "table"),
    );
    assert!((l_none - l_bal).abs() > 1e-4, "{l_none} vs {l_bal}");
    assert!((l_none - l_table).abs() > 1e-4 && (l_bal - l_table).abs() > 1e-4);

    // A milder power from the config is recorded and gives smaller weights.
    write_config(
        p,
        1,
        "class_weights = \"balanced\"\nclass_weight_power = 0.5\n",
    );
    ok(p, &["train", "--no-augment", "--name", "half"]);
    let half = params(p, "half");
    assert_eq!(half["train.class_weight_power"], "0.5");
    let bag_half: f64 = half["train.class_weight_values"]
        .split(',')
        .find_map(|kv| kv.strip_prefix("bag="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (bag_half - bag.sqrt()).abs() < 1e-3,
        "{bag_half} vs sqrt({bag})"
    );
}

#[test]
fn the_balanced_sampler_is_recorded_and_changes_the_loss() {
    let dir = imbalanced();
    let p = dir.path();
    ok(p, &["train", "--no-augment", "--name", "plain"]);
    ok(
        p,
        &[
            "train",
            "--no-augment",
            "--name",
            "sampled",
            "--sampler",
            "balanced",
        ],
    );
    let sampled = params(p, "sampled");
    assert_eq!(sampled["train.sampler"], "balanced");
    assert_eq!(sampled["train.class_weights"], "none");
    assert!((train_loss(p, "plain") - train_loss(p, "sampled")).abs() > 1e-4);
}

#[test]
fn bad_weight_settings_are_clear_errors() {
    let dir = imbalanced();
    let p = dir.path();
    let err = fails(p, &["train", "--class-weights", "hat=2"]);
    assert!(
        err.contains("'hat'") && err.contains("bag, trouser"),
        "{err}"
    );
    let err = fails(p, &["train", "--class-weights", "bag"]);
    assert!(err.contains("class=weight"), "{err}");
    write_config(p, 1, "class_weights = { bag = -1.0 }\n");
    let err = fails(p, &["train"]);
    assert!(err.contains("train.class_weights.bag = -1"), "{err}");
    // Valid f64 but not usable as the loss's f32 weights: 1e-50 rounds to 0 (a panic inside
    // Burn), 1e39 to infinity (a diverged run).
    for w in ["1e-50", "1e39"] {
        let err = fails(p, &["train", "--class-weights", &format!("bag={w}")]);
        assert!(
            err.contains(&format!(
                "train.class_weights.bag = {}",
                w.parse::<f64>().unwrap()
            )) && err.contains("out of range"),
            "{err}"
        );
    }
    write_config(
        p,
        1,
        "class_weights = \"balanced\"\nsampler = \"balanced\"\n",
    );
    let err = fails(p, &["train"]);
    assert!(err.contains("train.sampler"), "{err}");
    write_config(p, 1, "class_weight_power = 9\n");
    let err = fails(p, &["train"]);
    assert!(err.contains("class_weight_power"), "{err}");
    write_config(p, 1, "class_weights = \"heavy\"\n");
    let err = fails(p, &["train"]);
    assert!(err.contains("heavy"), "{err}");
    // None of these left a run behind.
    assert!(!p.join("runs").exists() || RunStore::new(p.join("runs")).runs().unwrap().is_empty());
}
