//! MLflow's own client reads a flora run (the run store's layout is MLflow's file store).
//! Needs a Python with mlflow (or mlflow-skinny) 3.x: FLORA_MLFLOW_PYTHON, else
//! /tmp/flora-mlflow/bin/python (`.ci/run` creates it). Without one the test says it was skipped,
//! except under `CI=true`, where it fails.

mod common;

use common::*;

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
assert {"model", "results.csv", "split.csv", "config.toml"} <= set(arts), arts
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
