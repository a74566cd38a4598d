//! `deploy/retrain.sh` end to end on real images: merge → train → eval gate → promote gate →
//! live, and the same cycle refused at each gate with the live slot left as it was.

use std::path::Path;
use std::process::Output;

use crate::support::common::*;

/// Runs deploy/retrain.sh in `dir` with the flora under test.
fn retrain(dir: &Path, args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/retrain.sh");
    std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .current_dir(dir)
        .env("FLORA", flora_bin())
        .output()
        .expect("running deploy/retrain.sh")
}

fn live(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("models/LIVE"))
        .unwrap()
        .trim()
        .to_string()
}

/// The run a slot holds, as `flora status --json` says.
fn slot_run(dir: &Path, slot: &str) -> String {
    let status: serde_json::Value = serde_json::from_str(&ok(dir, &["status", "--json"])).unwrap();
    let slots = status["slots"].as_array().expect("slots");
    let s = slots
        .iter()
        .find(|s| s["slot"] == slot)
        .unwrap_or_else(|| panic!("no slot {slot}: {status}"));
    s["run_name"].as_str().unwrap_or_default().to_string()
}

#[test]
fn retrain_promotes_a_better_model_and_every_gate_can_refuse() {
    let dir = project(30, 1);
    let p = dir.path();
    // A weak live model: one epoch at a tiny learning rate.
    ok(p, &["train", "--name", "weak", "--lr", "0.00001"]);
    ok(p, &["promote", "weak", "--live"]);
    assert_eq!(live(p), "blue");
    // Uploads waiting in collected_data/, as serve saves them.
    let (_, test) = fashion_mnist();
    copy_classes(
        &test,
        &p.join("collected_data/2026-11-23"),
        &["bag", "trouser"],
        3,
    );

    // 1. Every gate passes: merged, trained, evaluated, promoted into green and made live.
    let out = retrain(
        p,
        &[
            "--min-accuracy",
            "0.5",
            "--live",
            "--name",
            "better",
            "--",
            "--epochs",
            "6",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("4/4 promote"), "{stderr}");
    assert_eq!(live(p), "green");
    assert_eq!(slot_run(p, "green"), "better");
    let left: Vec<_> = walkdir::WalkDir::new(p.join("collected_data/2026-11-23"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .collect();
    assert!(left.is_empty(), "the uploads were merged: {left:?}");

    // 2. Below --min-accuracy: stops at the eval gate (exit 3), nothing promoted.
    let out = retrain(p, &["--min-accuracy", "1.01", "--live", "--name", "strict"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("below --min-accuracy"), "{stderr}");
    assert!(!stderr.contains("4/4 promote"), "{stderr}");
    assert_eq!(live(p), "green");
    assert_eq!(slot_run(p, "blue"), "weak");

    // 3. Worse than the live model: the promote gate refuses (exit 4), the slots stay.
    let out = retrain(
        p,
        &[
            "--min-accuracy",
            "0",
            "--live",
            "--name",
            "worse",
            "--",
            "--lr",
            "0.00001",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert_eq!(live(p), "green");
    assert_eq!(slot_run(p, "green"), "better");
    assert_eq!(slot_run(p, "blue"), "weak");
}
