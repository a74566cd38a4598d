//! MLflow's own client reads a flora run (the run store's layout is MLflow's file store).
//! Needs a Python with mlflow (or mlflow-skinny) 3.x: FLORA_MLFLOW_PYTHON, else
//! /tmp/flora-mlflow/bin/python (`.ci/run` creates it). Without one the test notes a visible skip,
//! except under CI (`CI=1`, `CI=true`), where it fails.

use crate::support::common::*;

const CHECK: &str = r#"
import os, sys
os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
from mlflow.tracking import MlflowClient
c = MlflowClient(tracking_uri="file://" + sys.argv[1])
exps = [e for e in c.search_experiments() if e.name == "test"]
assert len(exps) == 1, exps
runs = c.search_runs([exps[0].experiment_id])
assert len(runs) == 1, runs
r = runs[0]
assert r.info.status == "FINISHED", r.info.status
assert r.info.run_name == "mlflow-check", r.info.run_name
assert r.data.params["train.epochs"] == "2", r.data.params
assert r.data.tags["flora.data_fingerprint"].startswith("sha256:"), r.data.tags
hist = c.get_metric_history(r.info.run_id, "val_accuracy")
assert [m.step for m in hist] == [1, 2], hist
arts = sorted(a.path for a in c.list_artifacts(r.info.run_id))
assert {"model", "results.csv", "split.csv", "config.toml", "curves.png"} <= set(arts), arts
print("MLFLOW_OK", r.info.run_id)
"#;

#[test]
fn mlflow_client_reads_a_flora_run() {
    let python = std::env::var("FLORA_MLFLOW_PYTHON")
        .unwrap_or_else(|_| "/tmp/flora-mlflow/bin/python".into());
    let Some(python) = outside_program(
        std::path::Path::new(&python),
        "a Python with mlflow",
        "run .ci/run, or set FLORA_MLFLOW_PYTHON to one",
    ) else {
        return;
    };
    let dir = project(10, 2);
    ok(dir.path(), &["train", "--name", "mlflow-check"]);
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(CHECK)
        .arg(dir.path().join("runs"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("MLFLOW_OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Phases of the interop check, run by MLflow's own client on flora's store (argv[1]): `find`
/// checks the experiment, a search filtered on a metric and a param, a metric history and the
/// artifacts; `state RUN_ID` prints the run's lifecycle stage and whether the active/deleted
/// searches see it; `delete RUN_ID` soft-deletes it with MLflow itself.
const INTEROP: &str = r#"
import os, sys, json
os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
from mlflow.tracking import MlflowClient
from mlflow.entities import ViewType
c = MlflowClient(tracking_uri="file://" + sys.argv[1])
exp = [e for e in c.search_experiments() if e.name == "test"]
assert len(exp) == 1, exp
exp = exp[0].experiment_id
phase = sys.argv[2]
if phase == "find":
    every = c.search_runs([exp])
    assert sorted(r.info.run_name for r in every) == ["fast", "slow"], every
    hits = c.search_runs([exp], "metrics.val_accuracy >= 0 and params.`train.learning_rate` = '0.01'")
    assert [r.info.run_name for r in hits] == ["fast"], hits
    hits = c.search_runs([exp], "params.`train.epochs` = '2' and attributes.status = 'FINISHED'")
    assert [r.info.run_name for r in hits] == ["slow"], hits
    slow = hits[0]
    hist = c.get_metric_history(slow.info.run_id, "val_loss")
    assert [m.step for m in hist] == [1, 2], hist
    assert hist[-1].value == float(open(os.path.join(slow.info.artifact_uri[len("file://"):], "results.csv")).read().splitlines()[-1].split(",")[3]), hist
    arts = {a.path for a in c.list_artifacts(slow.info.run_id)}
    assert {"curves.png", "model", "results.csv", "split.csv", "config.toml"} <= arts, arts
    print("FIND_OK")
elif phase == "state":
    run_id = sys.argv[3]
    r = c.get_run(run_id)
    active = {x.info.run_id for x in c.search_runs([exp])}
    deleted = {x.info.run_id for x in c.search_runs([exp], run_view_type=ViewType.DELETED_ONLY)}
    print("STATE", json.dumps({"stage": r.info.lifecycle_stage, "active": run_id in active, "deleted": run_id in deleted}))
elif phase == "delete":
    c.delete_run(sys.argv[3])
    print("DELETE_OK")
"#;

fn mlflow(python: &std::path::Path, runs: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(INTEROP)
        .arg(runs)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mlflow {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn mlflow_searches_reads_and_sees_flora_deletes_and_flora_sees_mlflow_deletes() {
    let python = std::env::var("FLORA_MLFLOW_PYTHON")
        .unwrap_or_else(|_| "/tmp/flora-mlflow/bin/python".into());
    let Some(python) = outside_program(
        std::path::Path::new(&python),
        "a Python with mlflow",
        "run .ci/run, or set FLORA_MLFLOW_PYTHON to one",
    ) else {
        return;
    };
    let dir = project(10, 2);
    let p = dir.path();
    ok(p, &["train", "--name", "slow"]);
    ok(
        p,
        &["train", "--name", "fast", "--lr", "0.01", "--epochs", "1"],
    );
    let runs = p.join("runs");
    assert!(mlflow(&python, &runs, &["find"]).contains("FIND_OK"));
    let id = |name: &str| {
        ok(p, &["runs", "--json", "--all"])
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|r| r["run_name"] == name)
            .unwrap()["run_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let state = |run_id: &str| -> serde_json::Value {
        let out = mlflow(&python, &runs, &["state", run_id]);
        serde_json::from_str(out.trim().strip_prefix("STATE ").unwrap()).unwrap()
    };
    let fast = id("fast");
    let active = serde_json::json!({"stage": "active", "active": true, "deleted": false});
    let deleted = serde_json::json!({"stage": "deleted", "active": false, "deleted": true});
    assert_eq!(state(&fast), active);
    // flora deletes: MLflow sees a deleted run; flora restores: active again.
    ok(p, &["runs", "delete", "fast"]);
    assert_eq!(state(&fast), deleted);
    ok(p, &["runs", "restore", "fast"]);
    assert_eq!(state(&fast), active);
    // MLflow deletes: flora's list and model choice leave it out, and flora restores it.
    let slow = id("slow");
    assert!(mlflow(&python, &runs, &["delete", &slow]).contains("DELETE_OK"));
    let listed = ok(p, &["runs", "--json"]);
    assert!(
        !listed.contains(&slow) && listed.contains(&fast),
        "{listed}"
    );
    ok(p, &["runs", "restore", &slow[..8]]);
    assert_eq!(state(&slow), active);
    // gc after a delete: MLflow no longer finds the run at all.
    ok(p, &["runs", "delete", "fast"]);
    ok(p, &["runs", "gc"]);
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(INTEROP)
        .arg(&runs)
        .args(["state", &fast])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the purged run is gone for MLflow too"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

const SWEEP_CHECK: &str = r#"
import os, sys
os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
from mlflow.tracking import MlflowClient
c = MlflowClient(tracking_uri="file://" + sys.argv[1])
exp = c.get_experiment_by_name("test")
parents = c.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'sw'")
assert len(parents) == 1, parents
parent = parents[0]
assert parent.data.params["sweep.mode"] == "grid", parent.data.params
kids = c.search_runs([exp.experiment_id],
                     filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
assert sorted(k.info.run_name for k in kids) == ["sw-1", "sw-2"], kids
assert sorted(k.data.params["train.batch_size"] for k in kids) == ["16", "8"], kids
best = parent.data.tags["flora.sweep.best_run_id"]
assert best in [k.info.run_id for k in kids], best
assert "sweep.csv" in [a.path for a in c.list_artifacts(parent.info.run_id)]
print("SWEEP_OK")
"#;

#[test]
fn mlflow_client_sees_a_sweeps_parent_and_children() {
    let python = std::env::var("FLORA_MLFLOW_PYTHON")
        .unwrap_or_else(|_| "/tmp/flora-mlflow/bin/python".into());
    let Some(python) = outside_program(
        std::path::Path::new(&python),
        "a Python with mlflow",
        "run .ci/run, or set FLORA_MLFLOW_PYTHON to one",
    ) else {
        return;
    };
    let dir = project(8, 1);
    ok(
        dir.path(),
        &[
            "train",
            "--name",
            "sw",
            "--image-size",
            "16",
            "--sweep",
            "batch_size=8,16",
        ],
    );
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(SWEEP_CHECK)
        .arg(dir.path().join("runs"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("SWEEP_OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
