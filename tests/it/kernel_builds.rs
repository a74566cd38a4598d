//! Real `flora train` runs on each build of the SIMD kernels (`FLORA_KERNELS=avx2`, `portable`,
//! each its own process) learn as well as the default build, and record the build they used.

use std::path::Path;

use crate::support::common::{self, ok, project};
use flora::ops::simd::{Kernels, cpu_kernels};

/// Largest val-accuracy difference allowed between a narrower build and the default one (48 val
/// images: one image is 2 points). The builds round differently, so the runs drift apart over
/// the epochs; measured on an AVX2 machine (default = AVX2): 0.958 on all three, identical.
const TOLERANCE: f64 = 0.1;

fn train(dir: &Path, name: &str, kernels: Option<&str>) {
    let mut cmd = common::flora(dir);
    cmd.env_remove("FLORA_KERNELS")
        .env_remove("FLORA_PORTABLE_KERNELS");
    if let Some(k) = kernels {
        cmd.env("FLORA_KERNELS", k);
    }
    let out = cmd.args(["train", "--name", name]).output().unwrap();
    assert!(
        out.status.success(),
        "train {kernels:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn narrower_kernel_builds_train_as_well_and_say_which_build_ran() {
    let dir = project(60, 4);
    let p = dir.path();
    let mut builds = vec![(None, "default", cpu_kernels())];
    if cpu_kernels() >= Kernels::Avx2 {
        builds.push((Some("avx2"), "avx2", Kernels::Avx2));
    }
    builds.push((Some("portable"), "portable", Kernels::Portable));
    for (env, name, _) in &builds {
        train(p, name, *env);
    }
    let runs: Vec<serde_json::Value> = ok(p, &["runs", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let run = |name: &str| {
        runs.iter()
            .find(|r| r["run_name"] == name)
            .unwrap_or_else(|| panic!("run {name} in {runs:?}"))
    };
    let acc = |name: &str| run(name)["val_accuracy"].as_f64().unwrap();
    let param = |name: &str, key: &str| {
        let r = run(name);
        let file = p
            .join("runs")
            .join(r["experiment_id"].as_str().unwrap())
            .join(r["run_id"].as_str().unwrap())
            .join("params")
            .join(key);
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    };
    let default = acc("default");
    // Measured 0.958 on every build (AVX2 machine).
    assert!(default >= 0.875, "default build: {default}");
    for (_, name, want) in &builds {
        assert_eq!(param(name, "kernels"), want.name(), "{name} run's kernels");
        let a = acc(name);
        eprintln!("measured {name}: val_accuracy {a} (default {default})");
        assert!(
            (a - default).abs() <= TOLERANCE,
            "{name} build: {a} vs default {default}"
        );
    }
}
