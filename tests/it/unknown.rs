//! The "unknown" answer on real images: `[thresholds]` (global and per class) through predict,
//! the model bundle, serve (its /metrics counter) and merge (unknown images stay in the inbox's
//! own folder), and eval's accuracy-against-coverage table with a suggested threshold.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::support::common::*;
use crate::support::serve::*;
use flora::feedback::merge::{Action, Row};
use serde_json::Value;

const INBOX: &str = "dataset/_UNLABELED_SORT_ME";

/// `flora predict --json` over `files` with `extra` args: file name → JSON line.
fn predict(dir: &Path, extra: &[&str], files: &[PathBuf]) -> BTreeMap<String, Value> {
    let mut args: Vec<String> = vec![
        "predict".into(),
        "--json".into(),
        "--top-k".into(),
        "2".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(dir, &args)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (name_of(Path::new(v["path"].as_str().unwrap())), v)
        })
        .collect()
}

fn test_files(per_class: usize) -> Vec<PathBuf> {
    let (_, test) = fashion_mnist();
    let mut out = Vec::new();
    for c in CLASSES {
        let mut f: Vec<PathBuf> = std::fs::read_dir(test.join(c))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        f.sort();
        out.extend(f.into_iter().take(per_class));
    }
    out
}

/// The median of the top confidences (a threshold that leaves some answers on each side).
fn median_confidence(preds: &BTreeMap<String, Value>) -> f64 {
    let mut c: Vec<f64> = preds
        .values()
        .map(|v| v["confidence"].as_f64().unwrap())
        .collect();
    c.sort_by(f64::total_cmp);
    let m = (c[c.len() / 2 - 1] + c[c.len() / 2]) / 2.0;
    assert!(
        c[0] < m && m < c[c.len() - 1],
        "confidences all equal: {c:?}"
    );
    m
}

#[test]
fn predict_answers_unknown_below_the_global_and_per_class_thresholds() {
    let dir = project(30, 3);
    let p = dir.path();
    ok(p, &["train", "--name", "plain"]);
    let files = test_files(6);
    let plain = predict(p, &[], &files);
    assert!(
        plain.values().all(|v| v["unknown"] == false),
        "no thresholds: always a class"
    );
    let t = median_confidence(&plain);

    // A global threshold in the config: the low half answers unknown, top-k still shown.
    write_config(p, 3, &format!("[thresholds]\nmin_confidence = {t}\n"));
    let gated = predict(p, &[], &files);
    let mut unknown = 0;
    for (name, v) in &gated {
        let before = &plain[name];
        assert_eq!(v["top_k"], before["top_k"], "{name}: top-k unchanged");
        assert_eq!(v["confidence"], before["confidence"]);
        if before["confidence"].as_f64().unwrap() < t {
            unknown += 1;
            assert_eq!(v["class"], "unknown", "{v}");
            assert_eq!(v["unknown"], true);
            assert!(v.get("info").is_none());
        } else {
            assert_eq!(v["class"], before["class"], "{v}");
            assert_eq!(v["unknown"], false);
        }
    }
    assert!(unknown > 0 && unknown < files.len(), "{unknown}");
    let table = ok(p, &["predict", files[0].to_str().unwrap()]);
    assert!(table.contains("class"), "{table}");

    // Per class: only answers of that class below its own threshold become unknown.
    let class = plain.values().next().unwrap()["class"]
        .as_str()
        .unwrap()
        .to_string();
    write_config(p, 3, &format!("[thresholds]\n\"{class}\" = 0.999999\n"));
    let per_class = predict(p, &[], &files);
    for (name, v) in &per_class {
        let before = &plain[name];
        let below =
            before["class"] == class.as_str() && before["confidence"].as_f64().unwrap() < 0.999999;
        assert_eq!(v["unknown"], below, "{name}: {v}");
    }

    // Thresholds set at train time travel in the bundle: without a [thresholds] table in the
    // config in use, the bundle's apply.
    write_config(p, 3, &format!("[thresholds]\nmin_confidence = {t}\n"));
    ok(p, &["train", "--name", "gated"]);
    write_config(p, 3, "");
    let store = flora::track::store::RunStore::new(p.join("runs"));
    let bundle = store.find("gated").unwrap().artifacts().join("model");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("bundle.json")).unwrap())
            .unwrap();
    assert!(
        (meta["thresholds"]["min_confidence"].as_f64().unwrap() - t).abs() < 1e-6,
        "{meta}"
    );
    let from_bundle = predict(p, &["--model", bundle.to_str().unwrap()], &files);
    let unknown = from_bundle
        .values()
        .filter(|v| v["unknown"] == true)
        .count();
    let low = from_bundle
        .values()
        .filter(|v| v["confidence"].as_f64().unwrap() < t)
        .count();
    assert_eq!(unknown, low);
    // The plain run's bundle has none: every answer names a class.
    let plain_bundle = store.find("plain").unwrap().artifacts().join("model");
    let again = predict(p, &["--model", plain_bundle.to_str().unwrap()], &files);
    assert!(again.values().all(|v| v["unknown"] == false));

    // A threshold out of range, or for a class the dataset lacks, is a clear error.
    write_config(p, 3, "[thresholds]\nmin_confidence = 1.5\n");
    let err = fails(p, &["predict", files[0].to_str().unwrap()]);
    assert!(err.contains("thresholds.min_confidence = 1.5"), "{err}");
    write_config(p, 3, "[thresholds]\nhat = 0.5\n");
    let err = fails(p, &["train"]);
    assert!(err.contains("'hat'"), "{err}");
}

#[test]
fn eval_reports_accuracy_against_coverage_and_suggests_a_threshold() {
    let dir = project(30, 3);
    let p = dir.path();
    ok(p, &["train"]);
    let (_, test) = fashion_mnist();
    let data = tempfile::tempdir().unwrap();
    copy_classes(&test, data.path(), &CLASSES, 10);
    let d = data.path().to_str().unwrap();
    let j: Value = serde_json::from_str(&ok(
        p,
        &["eval", "--data", d, "--json", "--target-accuracy", "0.9"],
    ))
    .unwrap();
    let curve = j["coverage"].as_array().unwrap();
    assert_eq!(curve[0]["threshold"], 0.0);
    assert_eq!(curve[0]["coverage"], 1.0);
    assert!(
        (curve[0]["accuracy"].as_f64().unwrap() - j["accuracy"].as_f64().unwrap()).abs() < 1e-9
    );
    for w in curve.windows(2) {
        assert!(
            w[1]["coverage"].as_f64() <= w[0]["coverage"].as_f64(),
            "{w:?}"
        );
    }
    let s = &j["suggested_threshold"];
    assert!(s["accuracy"].as_f64().unwrap() >= 0.9, "{s}");
    // Setting the suggestion gives that accuracy on the answered images.
    let t = s["threshold"].as_f64().unwrap();
    write_config(p, 3, &format!("[thresholds]\nmin_confidence = {t}\n"));
    let j2: Value = serde_json::from_str(&ok(p, &["eval", "--data", d, "--json"])).unwrap();
    let under = &j2["thresholds"];
    assert!((under["coverage"].as_f64().unwrap() - s["coverage"].as_f64().unwrap()).abs() < 1e-9);
    assert!(under["accuracy"].as_f64().unwrap() >= 0.9, "{under}");
    let text = ok(p, &["eval", "--data", d, "--target-accuracy", "0.9"]);
    assert!(text.contains("accuracy against coverage"), "{text}");
    assert!(text.contains("min_confidence ="), "{text}");
}

#[test]
fn serve_answers_unknown_and_counts_it_in_metrics() {
    // The live model's confidence for the test image, without thresholds.
    let plain = slotted_project("");
    let server = Server::start(plain.path(), None, &["--no-collect"]);
    let (status, j) = server.predict_multipart(&bag_png(), "x.png", "");
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["prediction"]["unknown"], false);
    let class = j["prediction"]["class"].as_str().unwrap().to_string();
    let conf = j["prediction"]["confidence"].as_f64().unwrap();
    assert!(conf < 1.0, "the image is not saturated: {conf}");
    drop(server);

    let t = (conf + 1.0) / 2.0;
    let dir = slotted_project(&format!("[thresholds]\nmin_confidence = {t}\n"));
    let server = Server::start(dir.path(), None, &["--no-collect"]);
    for _ in 0..2 {
        let (status, j) = server.predict_multipart(&bag_png(), "x.png", "?top_k=3");
        assert_eq!(status, 200, "{j}");
        assert_eq!(j["prediction"]["class"], "unknown", "{j}");
        assert_eq!(j["prediction"]["unknown"], true);
        assert_eq!(j["top_k"].as_array().unwrap().len(), 3);
        assert_eq!(j["top_k"][0]["class"], class.as_str());
    }
    let samples = scrape(&server);
    assert_eq!(
        value(
            &samples,
            "flora_unknown_answers_total",
            &[("slot", "blue"), ("class", &class)]
        ),
        2.0
    );
    assert_eq!(
        value(&samples, "flora_predictions_total", &[("class", "unknown")]),
        2.0
    );
}

#[test]
fn merge_leaves_unknown_images_in_the_inbox_itself() {
    let dir = project(30, 3);
    let p = dir.path();
    ok(p, &["train", "--name", "base"]);
    ok(p, &["promote", "base", "--live"]);
    let files = test_files(5);
    let plain = predict(p, &[], &files);
    let t = median_confidence(&plain);
    write_config(p, 3, &format!("[thresholds]\nmin_confidence = {t}\n"));
    let day = p.join("collected_data/2026-11-23");
    std::fs::create_dir_all(&day).unwrap();
    for f in &files {
        std::fs::copy(f, day.join(name_of(f))).unwrap();
    }
    let out = ok(p, &["merge"]);
    assert!(out.contains("unknown left unsorted"), "{out}");
    let rows: Vec<Row> = csv::Reader::from_path(p.join(INBOX).join("merge.csv"))
        .unwrap()
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), files.len());
    let mut unknown = 0;
    for r in &rows {
        let name = name_of(Path::new(&r.source));
        let before = &plain[&name];
        assert_eq!(r.action, Action::Inbox);
        assert_eq!(r.predicted_class, before["class"].as_str().unwrap());
        if before["confidence"].as_f64().unwrap() < t {
            unknown += 1;
            assert_eq!(r.destination, format!("{INBOX}/{name}"), "{r:?}");
            assert!(r.reason.starts_with("unknown"), "{r:?}");
        } else {
            assert_eq!(
                r.destination,
                format!("{INBOX}/{}/{name}", r.predicted_class),
                "{r:?}"
            );
        }
        assert!(p.join(&r.destination).is_file());
    }
    assert!(unknown > 0 && unknown < rows.len());
}
