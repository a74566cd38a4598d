//! `flora train --sweep`: a parent run with one child run per trial, a ranked table, bad specs
//! refused before anything trains, and Ctrl-C stopping the sweep cleanly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::common::*;

/// Every run folder: name → folder.
fn runs(dir: &Path) -> BTreeMap<String, PathBuf> {
    walkdir::WalkDir::new(dir.join("runs"))
        .min_depth(2)
        .max_depth(2)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            // A run being created may not have its name tag yet.
            let name = std::fs::read_to_string(e.path().join("tags/mlflow.runName")).ok()?;
            Some((name, e.into_path()))
        })
        .collect()
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn id_of(run: &Path) -> String {
    name_of(run)
}

#[test]
fn a_grid_sweep_runs_each_trial_as_a_child_and_ranks_them() {
    let dir = project(12, 1);
    let p = dir.path();
    let out = ok(
        p,
        &[
            "train",
            "--name",
            "grid",
            "--image-size",
            "16",
            "--sweep",
            "learning_rate=0.003,0.001 train.batch_size=8,16",
        ],
    );
    let all = runs(p);
    assert_eq!(all.len(), 5, "{:?}", all.keys());
    let parent = &all["grid"];
    let parent_id = id_of(parent);
    assert_eq!(yaml(&parent.join("meta.yaml"))["status"], "3", "FINISHED");
    assert_eq!(
        read(parent.join("params/sweep.spec")),
        "learning_rate=0.003,0.001 train.batch_size=8,16"
    );
    assert_eq!(read(parent.join("params/sweep.trials")), "4");
    let mut seen = Vec::new();
    for i in 1..=4 {
        let child = &all[&format!("grid-{i}")];
        assert_eq!(read(child.join("tags/mlflow.parentRunId")), parent_id);
        assert_eq!(yaml(&child.join("meta.yaml"))["status"], "3");
        assert_eq!(read(child.join("params/data.image_size")), "16");
        seen.push((
            read(child.join("params/train.learning_rate")),
            read(child.join("params/train.batch_size")),
        ));
        assert_eq!(
            read(child.join("tags/flora.sweep.overrides")),
            format!(
                "train.learning_rate={} train.batch_size={}",
                seen[i - 1].0,
                seen[i - 1].1
            )
        );
    }
    let want = [
        ("0.003", "8"),
        ("0.003", "16"),
        ("0.001", "8"),
        ("0.001", "16"),
    ];
    assert_eq!(
        seen,
        want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec()
    );

    // The ranked table: best first, saved with the parent, the best run named.
    let table = read(parent.join("artifacts/sweep.txt"));
    assert!(out.contains(&table), "{out}");
    let accs: Vec<f64> = read(parent.join("artifacts/sweep.csv"))
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(5).unwrap().parse().unwrap())
        .collect();
    assert_eq!(accs.len(), 4);
    assert!(accs.windows(2).all(|w| w[0] >= w[1]), "{accs:?}");
    let best_id = read(parent.join("tags/flora.sweep.best_run_id"));
    let best_name = read(parent.join("tags/flora.sweep.best_run_name"));
    assert_eq!(id_of(&all[&best_name]), best_id);
    assert!(
        table.contains(&format!("best run: {best_name} ({best_id})")),
        "{table}"
    );
    let best_acc: f64 = read(all[&best_name].join("metrics/best_val_accuracy"))
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(best_acc, accs[0]);
    // `flora runs` still lists every run.
    let listed = ok(p, &["runs", "--json"]);
    assert_eq!(listed.lines().count(), 5, "{listed}");
}

#[test]
fn random_trials_sample_within_their_ranges() {
    let dir = project(8, 1);
    let p = dir.path();
    ok(
        p,
        &[
            "train",
            "--name",
            "rnd",
            "--image-size",
            "16",
            "--sweep",
            "learning_rate=1e-4..1e-2:log batch_size=4..16 augment=true,false",
            "--trials",
            "3",
        ],
    );
    let all = runs(p);
    assert_eq!(all.len(), 4);
    assert_eq!(read(all["rnd"].join("params/sweep.mode")), "random");
    for i in 1..=3 {
        let c = &all[&format!("rnd-{i}")];
        let lr: f64 = read(c.join("params/train.learning_rate")).parse().unwrap();
        let bs: usize = read(c.join("params/train.batch_size")).parse().unwrap();
        assert!((1e-4..=1e-2).contains(&lr), "{lr}");
        assert!((4..=16).contains(&bs), "{bs}");
    }
}

#[test]
fn bad_sweeps_are_refused_before_anything_trains() {
    let dir = project(8, 1);
    let p = dir.path();
    for (spec, want) in [
        ("learnin_rate=0.1", "did you mean train.learning_rate"),
        ("serve.port=1,2", "not a [data] or [train] key"),
        ("batch_size=16,0", "train.batch_size must be at least 1"),
        ("batch_size=16,2.5", "takes an integer"),
        (
            "learning_rate=0.01,-1",
            "train.learning_rate = -1 must be a positive number",
        ),
        ("arch=cnn,resnet", "resnet"),
        ("image_size=16,4", "data.image_size = 4 is out of range"),
        ("learning_rate=1e-4..1e-2", "--trials"),
        ("epochs", "not key=values"),
    ] {
        let err = fails(p, &["train", "--sweep", spec]);
        assert!(err.contains(want), "{spec}: {err}");
    }
    assert!(!p.join("runs").exists(), "nothing was logged");
}

#[test]
fn ctrl_c_stops_the_sweep_after_the_current_trial() {
    let dir = project(30, 200);
    let p = dir.path();
    let mut child = flora(p)
        .args([
            "train",
            "--name",
            "stopme",
            "--image-size",
            "16",
            "--sweep",
            "learning_rate=0.003,0.002,0.001",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !runs(p)
        .get("stopme-1")
        .is_some_and(|r| r.join("metrics/val_accuracy").exists())
    {
        assert!(Instant::now() < deadline, "the first trial did not start");
        assert!(child.try_wait().unwrap().is_none(), "the sweep ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = runs(p);
    assert_eq!(all.len(), 2, "no trial after the stop: {:?}", all.keys());
    assert_eq!(
        yaml(&all["stopme"].join("meta.yaml"))["status"],
        "5",
        "parent KILLED"
    );
    assert_eq!(
        yaml(&all["stopme-1"].join("meta.yaml"))["status"],
        "5",
        "trial KILLED"
    );
    assert!(
        stdout.contains("stopped: 1 of 3 trials ran, 2 not started"),
        "{stdout}"
    );
    assert!(stdout.contains("stopme-1"), "{stdout}");
    assert!(all["stopme"].join("artifacts/sweep.csv").exists());
}
