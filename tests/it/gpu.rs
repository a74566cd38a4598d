//! The device choice (`--device`, `train.device`) and GPU training through Burn's wgpu backend.
//!
//! The default binary (`CARGO_BIN_EXE_flora`, no `gpu` feature): `auto` picks the CPU and says
//! so, a GPU device is a clear error, bad values are refused with the valid list.
//!
//! The `gpu` binary comes from `FLORA_GPU_BIN` (built with `--features gpu`; `.ci/run` builds
//! it in the cheap `ci-gpu` profile) and runs on wgpu's software adapter, Mesa's lavapipe (`--device wgpu-cpu`): the GPU code path
//! (WGSL kernels, Burn's ops with fusion) on this machine's CPU. It trains the cnn and a small
//! MobileNetV2 for a few steps from the weights the CPU run starts from (initialised on the
//! CPU, then moved); its losses stay within [`LOSS_TOLERANCE`] of the CPU run's, and its bundle
//! predicts the same classes on the CPU as on wgpu-cpu. Without `FLORA_GPU_BIN` or lavapipe
//! these tests skip with a visible note; under CI either one missing fails them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::common::*;
use flora::track::store::{RunStore, read_params};

/// Largest difference allowed between a wgpu-cpu run's per-epoch losses and the CPU run's, from
/// the same initial weights and batches (f32 in different orders: Burn's WGSL kernels against
/// flora's fused CPU kernels). Measured on lavapipe (Mesa 22.3, llvmpipe LLVM 15), 2 epochs of
/// 4 steps: cnn train_loss gap 4.4e-3, val_loss 8.4e-4; MobileNetV2 0.35 val_loss 2.2e-3. Its
/// train_loss is not compared: wgpu-cpu's follows the CPU's Burn engine (1.696 against 1.697),
/// 0.12 from the fused engine's, as Burn's own ops give MobileNetV2 gradients up to 10% off
/// (`whole_step::one_mobilenet_step_matches_the_composition_through_the_burn_engine`).
const LOSS_TOLERANCE: f64 = 1e-2;

/// The `gpu` binary, or None (skipped) when `FLORA_GPU_BIN` is unset or lavapipe is missing;
/// under CI (which builds it) a missing one fails the test.
fn gpu_bin() -> Option<PathBuf> {
    let how = "build it with `cargo build --profile ci-gpu --features gpu --bin flora` and set \
               FLORA_GPU_BIN to target/ci-gpu/flora (.ci/run does)";
    let Some(bin) = std::env::var_os("FLORA_GPU_BIN").filter(|v| !v.is_empty()) else {
        skip(&format!("FLORA_GPU_BIN is not set: {how}"));
        return None;
    };
    let bin = outside_program(Path::new(&bin), "the gpu build of flora", how)?;
    lavapipe()?;
    Some(bin)
}

/// Mesa's lavapipe (its Vulkan ICD file), or None (skipped).
fn lavapipe() -> Option<PathBuf> {
    let found = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| name_of(p).starts_with("lvp_icd"));
    if found.is_none() {
        skip(
            "Mesa's lavapipe (Vulkan ICD lvp_icd*.json) not found; install it: apt-get install \
             mesa-vulkan-drivers",
        );
    }
    found
}

/// Runs `bin args...` in `dir`, with autotuning at its least (a no-op where the build has
/// none) and asserts success.
fn ok_with(bin: &Path, dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(bin)
        .current_dir(dir)
        .env("CUBECL_AUTOTUNE_LEVEL", "minimal")
        .args(args)
        .output()
        .expect("running flora");
    assert!(
        out.status.success(),
        "{} {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        bin.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn params(p: &Path, name: &str) -> std::collections::BTreeMap<String, String> {
    read_params(&RunStore::new(p.join("runs")).find(name).unwrap()).unwrap()
}

/// A metric's value per epoch.
fn history(p: &Path, name: &str, metric: &str) -> Vec<f64> {
    let run = RunStore::new(p.join("runs")).find(name).unwrap();
    std::fs::read_to_string(run.dir.join("metrics").join(metric))
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect()
}

/// The class each image under `dir` is predicted as, by `bin` on `device`, in path order.
fn classes(bin: &Path, p: &Path, run: &str, device: &str, dir: &Path) -> Vec<(String, String)> {
    let out = ok_with(
        bin,
        p,
        &[
            "predict",
            dir.to_str().unwrap(),
            "--run",
            run,
            "--json",
            "--device",
            device,
        ],
    );
    let mut rows: Vec<(String, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["path"].as_str().unwrap().to_string(),
                v["class"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Trains `arch_flags` on the CPU (default binary) and on wgpu-cpu (`gpu` binary) and compares.
fn cpu_and_wgpu_agree(gpu: &Path, extra: &str, metrics: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let (train, test) = fashion_mnist();
    copy_classes(&train, &p.join("dataset"), &CLASSES, 8);
    copy_classes(&test, &p.join("holdout"), &CLASSES, 3);
    // Dropout 0: its masks come from each device's own random stream.
    write_config(p, 2, &format!("dropout = 0.0\n{extra}"));
    let cpu = flora_bin();
    ok_with(
        &cpu,
        p,
        &[
            "train",
            "--no-augment",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--name",
            "cpu",
        ],
    );
    let out = ok_with(
        gpu,
        p,
        &[
            "train",
            "--no-augment",
            "--batch-size",
            "8",
            "--device",
            "wgpu-cpu",
            "--name",
            "wgpu",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("device: wgpu-cpu ("), "{stderr}");
    let params = params(p, "wgpu");
    assert!(params["device"].starts_with("wgpu-cpu ("), "{params:?}");
    assert_eq!(params["train.device"], "wgpu-cpu");
    for &metric in metrics {
        let (a, b) = (history(p, "cpu", metric), history(p, "wgpu", metric));
        assert_eq!(a.len(), 2, "{metric}: {a:?}");
        assert_eq!(a.len(), b.len(), "{metric}: {a:?} {b:?}");
        let gap = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        eprintln!("{extra:?} {metric}: cpu {a:?} wgpu-cpu {b:?} largest gap {gap:.2e}");
        assert!(gap <= LOSS_TOLERANCE, "{metric}: cpu {a:?} wgpu-cpu {b:?}");
    }
    // The wgpu-trained bundle on the CPU, and on wgpu-cpu.
    let holdout = p.join("holdout");
    let on_cpu = classes(&cpu, p, "wgpu", "cpu", &holdout);
    let on_wgpu = classes(gpu, p, "wgpu", "wgpu-cpu", &holdout);
    assert_eq!(on_cpu.len(), CLASSES.len() * 3);
    assert_eq!(on_cpu, on_wgpu);
}

#[test]
fn cnn_trains_on_wgpu_cpu_as_on_the_cpu() {
    let Some(gpu) = gpu_bin() else { return };
    cpu_and_wgpu_agree(&gpu, "arch = \"cnn\"\n", &["train_loss", "val_loss"]);
}

#[test]
fn mobilenet_trains_on_wgpu_cpu_as_on_the_cpu() {
    let Some(gpu) = gpu_bin() else { return };
    cpu_and_wgpu_agree(
        &gpu,
        "arch = \"mobilenet_v2\"\nwidth = 0.35\n",
        &["val_loss"],
    );
}

#[test]
fn the_gpu_build_lists_its_feature() {
    let Some(gpu) = gpu_bin() else { return };
    let out = ok_with(&gpu, Path::new("."), &["--version"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("features: gpu"), "{text}");
    let text = ok(Path::new("."), &["--version"]);
    assert!(text.contains("features: none"), "{text}");
}

#[test]
fn a_gpu_device_needs_the_gpu_feature() {
    let dir = project(4, 1);
    for device in ["gpu", "gpu:1", "wgpu-cpu"] {
        let err = fails(dir.path(), &["train", "--device", device]);
        assert!(
            err.contains("built without the `gpu` feature") && err.contains("--features gpu"),
            "{device}: {err}"
        );
    }
    let (_, test) = fashion_mnist();
    let err = fails(
        dir.path(),
        &["predict", test.to_str().unwrap(), "--device", "gpu"],
    );
    assert!(err.contains("--features gpu"), "{err}");
    // Nothing was created: the device is checked before a run starts.
    assert!(!dir.path().join("runs").exists());
}

#[test]
fn auto_picks_the_cpu_and_says_so() {
    let dir = project(4, 1);
    let p = dir.path();
    let out = run(p, &["train", "--name", "auto"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("device: cpu (auto: this flora was built without the `gpu` feature)"),
        "{stderr}"
    );
    let params = params(p, "auto");
    assert_eq!(params["train.device"], "auto");
    assert_eq!(params["device"], "cpu");
}

#[test]
fn bad_device_values_are_refused_with_the_valid_list() {
    let dir = project(4, 1);
    let p = dir.path();
    write_config(p, 1, "device = \"tpu\"\n");
    let err = fails(p, &["train"]);
    assert!(
        err.contains("\"tpu\"") && err.contains(flora::util::device::CHOICES),
        "{err}"
    );
    write_config(p, 1, "");
    let err = fails(p, &["train", "--device", "gpu:x"]);
    assert!(err.contains(flora::util::device::CHOICES), "{err}");
}
