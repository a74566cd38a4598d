//! Sweeps and cross-validations as Kubernetes Indexed Jobs: workers started at once with their
//! indexes (`--trial-index I`, `--fold I`, or JOB_COMPLETION_INDEX) on one run store share one
//! parent and give the same children, metrics and parent artifacts as the one-machine run with
//! the same seed; an index run again replaces its child; a parent whose last worker died is
//! summarised by `flora runs show`.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::common::*;
use flora::track::store::{RunInfo, RunStore, read_metric, read_tags};

/// The active run called `name`, and its active children by name.
fn family(p: &Path, name: &str) -> (RunInfo, Vec<RunInfo>) {
    let runs = RunStore::new(p.join("runs")).runs().unwrap();
    let parents: Vec<&RunInfo> = runs.iter().filter(|r| r.run_name == name).collect();
    assert_eq!(parents.len(), 1, "one parent called {name}");
    let parent = parents[0].clone();
    let mut children: Vec<RunInfo> = runs
        .into_iter()
        .filter(|r| read_tags(r).unwrap().get("mlflow.parentRunId") == Some(&parent.run_id))
        .collect();
    children.sort_by(|a, b| a.run_name.cmp(&b.run_name));
    (parent, children)
}

/// A metric's values by step (no timestamps).
fn values(run: &RunInfo, key: &str) -> Vec<(u64, f64)> {
    read_metric(run, key)
        .unwrap()
        .into_iter()
        .map(|(_, v, s)| (s, v))
        .collect()
}

/// Starts `flora` in `p` with `args`, and JOB_COMPLETION_INDEX when given.
fn start(p: &Path, args: &[&str], job_index: Option<&str>) -> std::process::Child {
    let mut cmd: Command = flora(p);
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env_remove("JOB_COMPLETION_INDEX");
    if let Some(i) = job_index {
        cmd.env("JOB_COMPLETION_INDEX", i);
    }
    cmd.spawn().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A CSV's rows with the named columns left out.
fn csv_without(path: &Path, drop: &[&str]) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let h = r.headers().unwrap().clone();
    let keep: Vec<usize> = (0..h.len()).filter(|&i| !drop.contains(&&h[i])).collect();
    let mut rows = vec![keep.iter().map(|&i| h[i].to_string()).collect()];
    for rec in r.records() {
        let rec = rec.unwrap();
        rows.push(keep.iter().map(|&i| rec[i].to_string()).collect());
    }
    rows
}

const SWEEP: &str = "learning_rate=0.003,0.001";

#[test]
fn sweep_trials_as_indexed_workers_match_the_one_machine_sweep() {
    let dir = project(12, 2);
    let p = dir.path();
    let base = ["train", "--image-size", "16", "--sweep", SWEEP];
    ok(p, &[&base[..], &["--name", "one"]].concat());

    // Both workers at once, one with the flag's value, one from JOB_COMPLETION_INDEX.
    let a = start(
        p,
        &[&base[..], &["--name", "idx", "--trial-index", "0"]].concat(),
        None,
    );
    let b = start(
        p,
        &[&base[..], &["--name", "idx", "--trial-index"]].concat(),
        Some("1"),
    );
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    let summarised = [&a, &b]
        .iter()
        .filter(|o| text(o).contains("every one of its 2 trials has ended"))
        .count();
    assert_eq!(
        summarised,
        1,
        "exactly one worker ranks the sweep:\n{}\n{}",
        text(&a),
        text(&b)
    );

    let (one, one_children) = family(p, "one");
    let (idx, idx_children) = family(p, "idx");
    assert_eq!(idx.status.as_str(), "FINISHED");
    let names: Vec<&str> = idx_children.iter().map(|r| r.run_name.as_str()).collect();
    assert_eq!(names, ["idx-1", "idx-2"]);
    for (o, i) in one_children.iter().zip(&idx_children) {
        let (ot, it) = (read_tags(o).unwrap(), read_tags(i).unwrap());
        assert_eq!(ot["flora.sweep.trial"], it["flora.sweep.trial"]);
        assert_eq!(ot["flora.sweep.overrides"], it["flora.sweep.overrides"]);
        for key in ["val_accuracy", "val_loss", "train_loss"] {
            assert_eq!(values(o, key), values(i, key), "{key} of {}", i.run_name);
        }
    }
    let drop = ["run_name", "run_id"];
    assert_eq!(
        csv_without(&one.artifacts().join("sweep.csv"), &drop),
        csv_without(&idx.artifacts().join("sweep.csv"), &drop)
    );
    assert_eq!(
        values(&one, "best_val_accuracy"),
        values(&idx, "best_val_accuracy")
    );
    assert!(!read_tags(&idx).unwrap().contains_key("flora.owner.pid"));

    // Kubernetes replaces a failed pod with the same index: its trial's run is replaced.
    let old = idx_children[1].run_id.clone();
    let out = ok(
        p,
        &[&base[..], &["--name", "idx", "--trial-index", "1"]].concat(),
    );
    assert!(out.contains("every one of its 2 trials has ended"), "{out}");
    let (idx, again) = family(p, "idx");
    assert_eq!(again.len(), 2);
    assert_eq!(again[0].run_id, idx_children[0].run_id);
    assert_ne!(again[1].run_id, old);
    assert_eq!(idx.status.as_str(), "FINISHED");
    let ranked = std::fs::read_to_string(idx.artifacts().join("sweep.csv")).unwrap();
    assert!(
        ranked.contains(&again[1].run_id) && !ranked.contains(&old),
        "{ranked}"
    );
    let store = RunStore::new(p.join("runs"));
    assert!(store.find_any(&old).unwrap().is_deleted());

    // Mistakes are named.
    let err = fails(
        p,
        &[&base[..], &["--name", "idx", "--trial-index", "2"]].concat(),
    );
    assert!(
        err.contains("out of range") && err.contains("completions: 2"),
        "{err}"
    );
    let err = fails(p, &[&base[..], &["--trial-index", "0"]].concat());
    assert!(err.contains("--name"), "{err}");
    let out = start(
        p,
        &[&base[..], &["--name", "idx", "--trial-index"]].concat(),
        None,
    )
    .wait_with_output()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("JOB_COMPLETION_INDEX"),
        "{}",
        text(&out)
    );
    let err = fails(
        p,
        &[
            "train",
            "--image-size",
            "16",
            "--sweep",
            "learning_rate=0.01,0.02",
            "--name",
            "idx",
            "--trial-index",
            "0",
        ],
    );
    assert!(err.contains("another --name"), "{err}");
}

#[test]
fn cv_folds_as_indexed_workers_match_the_one_machine_cv() {
    let dir = project(12, 2);
    let p = dir.path();
    let base = ["cv", "--folds", "2", "--image-size", "16"];
    ok(p, &[&base[..], &["--name", "one"]].concat());

    let a = start(
        p,
        &[&base[..], &["--name", "idx", "--fold"]].concat(),
        Some("0"),
    );
    let b = start(
        p,
        &[&base[..], &["--name", "idx", "--fold", "1"]].concat(),
        None,
    );
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    let summarised = [&a, &b]
        .iter()
        .filter(|o| text(o).contains("every one of its 2 folds has ended"))
        .count();
    assert_eq!(summarised, 1, "{}\n{}", text(&a), text(&b));

    let (one, one_children) = family(p, "one");
    let (idx, idx_children) = family(p, "idx");
    assert_eq!(idx.status.as_str(), "FINISHED");
    assert_eq!(idx_children.len(), 2);
    for (o, i) in one_children.iter().zip(&idx_children) {
        assert_eq!(
            read_tags(o).unwrap()["flora.cv_fold"],
            read_tags(i).unwrap()["flora.cv_fold"]
        );
        assert_eq!(values(o, "val_loss"), values(i, "val_loss"));
    }
    for file in ["oof_predictions.csv", "label_issues.csv"] {
        assert_eq!(
            std::fs::read(one.artifacts().join(file)).unwrap(),
            std::fs::read(idx.artifacts().join(file)).unwrap(),
            "{file}"
        );
    }
    let summary = |r: &RunInfo| -> serde_json::Value {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(r.artifacts().join("cv_summary.json")).unwrap())
                .unwrap();
        for f in v["folds"].as_array_mut().unwrap() {
            f.as_object_mut().unwrap().remove("run_id");
            f.as_object_mut().unwrap().remove("run_name");
        }
        v
    };
    assert_eq!(summary(&one), summary(&idx));
    for key in ["fold_accuracy", "cv_accuracy_mean", "cv_oof_accuracy"] {
        let (mut o, mut i) = (values(&one, key), values(&idx, key));
        o.sort_by_key(|v| v.0);
        i.sort_by_key(|v| v.0);
        assert_eq!(o, i, "{key}");
    }
    assert!(idx.artifacts().join("report.html").is_file());

    // The last worker died before pooling: `flora runs show` pools the folds.
    std::fs::remove_file(idx.artifacts().join("cv_summary.json")).unwrap();
    flora::track::store::update_run_meta(&idx.dir, |m| {
        m.insert("status".into(), "1".into());
        m.insert("end_time".into(), "null".into());
    })
    .unwrap();
    let out = ok(p, &["runs", "show", "idx"]);
    assert!(out.contains("FINISHED"), "{out}");
    assert_eq!(summary(&one), summary(&idx));
}
