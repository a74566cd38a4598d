//! `flora train --resume`: a run killed mid-training (SIGKILL or Ctrl-C) and resumed ends with
//! exactly the weights, metrics, results.csv and model metrics of the same run never
//! interrupted (a cross-validation fold too, with its fold still held out); what cannot be
//! resumed is refused with the reason, and a run whose trainer is alive is never resumed a
//! second time, purged by gc, or recreated after its folder was removed.

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

use crate::support::common::*;

/// A fast config (deterministic: fixed seed, 2 threads).
fn config(dir: &Path, size: u32, epochs: usize, extra: &str) {
    let text = format!(
        "[project]\nname = \"test\"\n[data]\nimage_size = {size}\nseed = 11\n[train]\n\
         epochs = {epochs}\nbatch_size = 16\nlearning_rate = 0.003\nthreads = 2\n{extra}"
    );
    std::fs::write(dir.join("flora.toml"), text).unwrap();
}

fn flora2(dir: &Path, args: &[&str]) -> std::process::Command {
    let mut c = flora(dir);
    c.args(args).env("RAYON_NUM_THREADS", "2");
    c
}

fn ok2(dir: &Path, args: &[&str]) -> String {
    let out = flora2(dir, args).output().unwrap();
    assert!(
        out.status.success(),
        "flora {args:?}: {:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails2(dir: &Path, args: &[&str]) -> String {
    let out = flora2(dir, args).output().unwrap();
    assert!(!out.status.success(), "flora {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

/// The epoch of the run's last checkpoint (0 without one).
fn last_checkpoint(run: &Path) -> usize {
    std::fs::read_to_string(run.join("artifacts/checkpoints/last"))
        .ok()
        .and_then(|s| s.trim().strip_prefix("epoch-").map(|n| n.parse().unwrap()))
        .unwrap_or(0)
}

/// Runs `flora ARGS` until run `name` has a checkpoint of epoch `epoch` or later, then sends
/// `signal` and waits for the process to end.
fn stop_after_epoch(
    dir: &Path,
    args: &[&str],
    name: &str,
    epoch: usize,
    signal: i32,
) -> ExitStatus {
    let mut child = flora2(dir, args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if run_dir(dir, name).is_some_and(|r| last_checkpoint(&r) >= epoch) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "epoch {epoch} of {name} not reached in time"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "{name} ended before epoch {epoch}'s checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    child.wait().unwrap()
}

/// results.csv without the timing columns (epoch_seconds, images_per_second).
fn results(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("artifacts/results.csv"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            [&f[..6], &f[8..]].concat().join(",")
        })
        .collect()
}

/// (value, step) of every logged value of `key`.
fn metric(run: &Path, key: &str) -> Vec<(String, u64)> {
    std::fs::read_to_string(run.join("metrics").join(key))
        .unwrap_or_else(|e| panic!("{key}: {e}"))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[1].to_string(), f[2].parse().unwrap())
        })
        .collect()
}

fn status(run: &Path) -> String {
    yaml(&run.join("meta.yaml"))["status"].clone()
}

/// The resumed run `b` ended exactly as the uninterrupted run `a`.
fn assert_same_run(a: &Path, b: &Path, epochs: usize) {
    assert_eq!(results(a), results(b), "results.csv differs");
    assert_eq!(results(a).len(), epochs + 1);
    for key in [
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "learning_rate",
        "best_val_accuracy",
    ] {
        assert_eq!(metric(a, key), metric(b, key), "metric {key} differs");
    }
    for key in ["val_accuracy", "epoch_seconds", "images_per_second"] {
        let steps: Vec<u64> = metric(b, key).iter().map(|m| m.1).collect();
        assert_eq!(
            steps,
            (1..=epochs as u64).collect::<Vec<_>>(),
            "steps of {key}"
        );
    }
    let meta = |r: &Path| -> serde_json::Value {
        let text = std::fs::read_to_string(r.join("artifacts/model/bundle.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["metrics"].clone()
    };
    assert_eq!(meta(a), meta(b));
    // The weights themselves, bit for bit (decoded: `model.bpk` also holds each parameter's
    // random id, which differs between any two runs).
    let (wa, wb) = (weights(a), weights(b));
    assert!(
        !wa.is_empty() && wa.len() == wb.len(),
        "{} tensors",
        wa.len()
    );
    for (i, (ta, tb)) in wa.iter().zip(&wb).enumerate() {
        assert!(
            ta == tb,
            "tensor {i} ({:?}) of the resumed run's model differs from the uninterrupted run's",
            ta.0
        );
    }
    assert_eq!(status(b), "3", "FINISHED");
}

/// Every float tensor of a module (parameters and running statistics), as (shape, bits).
struct Tensors(Vec<(Vec<usize>, Vec<u32>)>);

impl ModuleVisitor for Tensors {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let values: Vec<f32> = param.val().into_data().try_to_vec().unwrap();
        self.0.push((
            param.val().dims().to_vec(),
            values.iter().map(|v| v.to_bits()).collect(),
        ));
    }
}

/// The tensors of run `run`'s model bundle, decoded.
fn weights(run: &Path) -> Vec<(Vec<usize>, Vec<u32>)> {
    let bundle = flora::model::bundle::ModelBundle::load(&run.join("artifacts/model")).unwrap();
    let mut t = Tensors(Vec::new());
    bundle.model.visit(&mut t);
    t.0
}

/// Spawns `flora ARGS` with its stderr going to `dir/<log>` (read with [`log`]).
fn spawn_logged(dir: &Path, args: &[&str], log: &str) -> std::process::Child {
    flora2(dir, args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join(log)).unwrap())
        .spawn()
        .unwrap()
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

/// Waits until run `name`'s last checkpoint is epoch `epoch` or later, while `child` runs.
fn wait_for_epoch(dir: &Path, name: &str, epoch: usize, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while run_dir(dir, name).is_none_or(|r| last_checkpoint(&r) < epoch) {
        assert!(
            Instant::now() < deadline,
            "epoch {epoch} of {name} not reached in time"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "{name} ended before epoch {epoch}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kill(child: &mut std::process::Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
}

#[test]
fn a_killed_cnn_run_resumes_to_the_same_end_and_bad_resumes_are_refused() {
    let dir = project(20, 8);
    let p = dir.path();
    config(p, 16, 12, "lr_schedule = \"plateau\"\npatience = 2\n");
    ok2(p, &["train", "--name", "whole"]);
    // Early stopping ends it before its 12 epochs (the resumed run must stop at the same one).
    let whole_epochs = results(&run_dir(p, "whole").unwrap()).len() - 1;
    assert!(
        (3..12).contains(&whole_epochs),
        "early stopping did not fire: {whole_epochs} epochs"
    );

    let killed = stop_after_epoch(p, &["train", "--name", "cut"], "cut", 2, libc::SIGKILL);
    assert!(!killed.success());
    let cut = run_dir(p, "cut").unwrap();
    assert_eq!(status(&cut), "1", "left RUNNING by SIGKILL");

    // The data changed: refused, and the run is left as it was.
    let (train, _) = fashion_mnist();
    let extra = p.join("dataset/bag/extra.png");
    let spare = std::fs::read_dir(train.join("bag"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    std::fs::copy(spare, &extra).unwrap();
    let meta_before = std::fs::read_to_string(cut.join("meta.yaml")).unwrap();
    let err = fails2(p, &["train", "--resume", "cut"]);
    assert!(err.contains("changed") && err.contains("--force"), "{err}");
    assert_eq!(
        std::fs::read_to_string(cut.join("meta.yaml")).unwrap(),
        meta_before
    );
    std::fs::remove_file(&extra).unwrap();
    // Flags that would change the run are refused with --resume.
    let err = fails2(p, &["train", "--resume", "cut", "--epochs", "3"]);
    assert!(err.contains("--epochs"), "{err}");

    let out = ok2(p, &["train", "--resume", "cut"]);
    assert!(out.contains("FINISHED"), "{out}");
    assert_same_run(&run_dir(p, "whole").unwrap(), &cut, whole_epochs);
    assert_eq!(
        std::fs::read_to_string(cut.join("tags/flora.resumes")).unwrap(),
        "1"
    );
    // Last and best checkpoints only.
    let kept = std::fs::read_dir(cut.join("artifacts/checkpoints"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("epoch-")
        })
        .count();
    assert!((1..=2).contains(&kept), "{kept} checkpoints kept");

    // A FINISHED run is not resumed without --force; without a checkpoint, not at all.
    let err = fails2(p, &["train", "--resume", "cut"]);
    assert!(err.contains("FINISHED") && err.contains("--force"), "{err}");
    std::fs::remove_file(cut.join("artifacts/checkpoints/last")).unwrap();
    let err = fails2(p, &["train", "--resume", "cut", "--force"]);
    assert!(err.contains("no checkpoint"), "{err}");
    let err = fails2(p, &["train", "--resume", "nosuchrun"]);
    assert!(err.contains("no run"), "{err}");
}

#[test]
fn mobilenet_phases_and_plateau_survive_a_ctrl_c_and_a_kill() {
    let dir = project(12, 6);
    let p = dir.path();
    let weights =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mobilenet/torchvision_w050.pth");
    config(
        p,
        16,
        6,
        &format!(
            "arch = \"mobilenet_v2\"\nwidth = 0.5\nfreeze_epochs = 2\nunfreeze_fraction = 0.5\n\
             lr_schedule = \"plateau\"\npatience = 0\npretrained = {:?}\n",
            weights.display().to_string()
        ),
    );
    ok2(p, &["train", "--name", "whole"]);

    // Ctrl-C in phase 1 (head): ends KILLED with a model saved.
    let stopped = stop_after_epoch(p, &["train", "--name", "cut"], "cut", 1, libc::SIGINT);
    assert_eq!(stopped.code(), Some(130));
    let cut = run_dir(p, "cut").unwrap();
    assert_eq!(status(&cut), "5", "KILLED");
    assert!(cut.join("artifacts/model/bundle.json").exists());
    // Resumed, then killed in phase 2 (finetune), then resumed again.
    let killed = stop_after_epoch(p, &["train", "--resume", "cut"], "cut", 3, libc::SIGKILL);
    assert!(!killed.success());
    let out = ok2(p, &["train", "--resume", "cut"]);
    assert!(out.contains("head 1-2, finetune 3-6"), "{out}");
    assert_same_run(&run_dir(p, "whole").unwrap(), &cut, 6);
    assert_eq!(
        std::fs::read_to_string(cut.join("tags/flora.resumes")).unwrap(),
        "2"
    );
}

#[test]
fn a_run_with_a_live_trainer_is_not_resumed_twice_purged_or_recreated() {
    let dir = project(20, 200);
    let p = dir.path();
    config(p, 16, 200, "patience = 0\n");
    let mut first = spawn_logged(p, &["train", "--name", "live"], "first.log");
    wait_for_epoch(p, "live", 1, &mut first);
    let live = run_dir(p, "live").unwrap();

    // Its trainer is alive: a resume is refused by name and pid.
    let err = fails2(p, &["train", "--resume", "live"]);
    let pid = format!("pid {}", first.id());
    assert!(
        err.contains("run live is being trained by another live process") && err.contains(&pid),
        "{err}"
    );
    // Deleted while it trains (as MLflow's UI may): gc keeps it, and says why.
    let meta = std::fs::read_to_string(live.join("meta.yaml")).unwrap();
    std::fs::write(
        live.join("meta.yaml"),
        meta.replace("lifecycle_stage: active", "lifecycle_stage: deleted"),
    )
    .unwrap();
    let out = ok2(p, &["runs", "gc"]);
    assert!(
        out.contains("kept deleted run live")
            && out.contains("still being trained")
            && out.contains(&pid),
        "{out}"
    );
    assert!(live.join("meta.yaml").exists() && live.join("metrics").exists());
    ok2(p, &["runs", "restore", "live"]);
    kill(&mut first);

    // Two resumes at once: one continues, the other is refused naming the first's pid.
    let mut a = spawn_logged(p, &["train", "--resume", "live"], "a.log");
    let mut b = spawn_logged(p, &["train", "--resume", "live"], "b.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut winner, loser, loser_log) = loop {
        if let Some(s) = a.try_wait().unwrap() {
            break (b, s, "a.log");
        }
        if let Some(s) = b.try_wait().unwrap() {
            break (a, s, "b.log");
        }
        assert!(
            Instant::now() < deadline,
            "both resumes of one run went on training"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = log(p, loser_log);
    assert!(!loser.success(), "{err}");
    assert!(
        err.contains("run live is being trained by another live process")
            && err.contains(&format!("pid {}", winner.id())),
        "{err}"
    );
    assert!(
        winner.try_wait().unwrap().is_none(),
        "the other resume went on"
    );

    // Its folder removed under it: the trainer stops, and recreates nothing.
    let at = last_checkpoint(&live);
    wait_for_epoch(p, "live", at + 1, &mut winner);
    let away = p.join("removed-run");
    std::fs::rename(&live, &away).unwrap();
    let status = winner.wait().unwrap();
    let winner_log = if loser_log == "a.log" {
        "b.log"
    } else {
        "a.log"
    };
    let err = log(p, winner_log);
    assert!(!status.success(), "{err}");
    assert!(err.contains("run live") && err.contains("is gone"), "{err}");
    assert!(
        !live.exists(),
        "the run folder was recreated: {:?}",
        std::fs::read_dir(&live).map(|d| d.count())
    );
}

#[test]
fn a_cross_validation_fold_resumes_with_its_fold_still_held_out() {
    let dir = project(20, 4);
    let p = dir.path();
    config(p, 16, 4, "patience = 0\n");
    ok2(p, &["cv", "--folds", "2", "--name", "whole"]);
    let killed = stop_after_epoch(
        p,
        &["cv", "--folds", "2", "--name", "cut"],
        "cut-fold1",
        2,
        libc::SIGKILL,
    );
    assert!(!killed.success());
    let cut = run_dir(p, "cut-fold1").unwrap();
    let out = flora2(p, &["train", "--resume", "cut-fold1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("held-out images (split.csv) stay out of training"),
        "{err}"
    );
    // Trained on the same images as the uninterrupted fold: the same run, the same weights.
    assert_same_run(&run_dir(p, "whole-fold1").unwrap(), &cut, 4);

    // A fold whose held-out images cannot be read back is refused, with what to do instead.
    std::fs::remove_file(cut.join("artifacts/split.csv")).unwrap();
    let err = fails2(p, &["train", "--resume", "cut-fold1", "--force"]);
    assert!(
        err.contains("fold 1/2 of a cross-validation") && err.contains("run `flora cv` again"),
        "{err}"
    );
}
