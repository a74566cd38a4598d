//! `flora train` end to end: the real binary on real Fashion-MNIST images.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::common::{self, *};

fn metric_lines(run: &Path, key: &str) -> Vec<Vec<String>> {
    std::fs::read_to_string(run.join("metrics").join(key))
        .unwrap_or_else(|e| panic!("metric {key}: {e}"))
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect()
}

#[test]
fn train_writes_an_mlflow_run_and_a_loadable_bundle() {
    let dir = project(40, 3);
    let stdout = ok(dir.path(), &["train", "--name", "first"]);
    assert!(stdout.contains("FINISHED"), "{stdout}");
    // Not a terminal: one plain line per epoch.
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("epoch ")).count(),
        3,
        "{stdout}"
    );

    let (exp, run) = only_run(dir.path());
    let em = yaml(&exp.join("meta.yaml"));
    let exp_id = exp.file_name().unwrap().to_str().unwrap();
    assert_eq!(em["experiment_id"], format!("'{exp_id}'"));
    assert_eq!(em["name"], "'test'");
    assert_eq!(em["lifecycle_stage"], "active");
    assert!(em["artifact_location"].contains("file://"));
    for k in ["creation_time", "last_update_time"] {
        assert!(em[k].parse::<u64>().is_ok(), "{k}");
    }

    let rm = yaml(&run.join("meta.yaml"));
    let run_id = run.file_name().unwrap().to_str().unwrap();
    assert_eq!(run_id.len(), 32);
    assert!(run_id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(rm["run_id"], run_id);
    assert_eq!(rm["status"], "3", "FINISHED");
    assert_eq!(rm["source_type"], "4");
    assert_eq!(rm["entry_point_name"], "''");
    assert_eq!(rm["source_name"], "''");
    assert_eq!(rm["source_version"], "''");
    assert_eq!(rm["tags"], "[]");
    assert_eq!(rm["lifecycle_stage"], "active");
    assert_eq!(rm["run_name"], "'first'");
    assert_eq!(rm["experiment_id"], format!("'{exp_id}'"));
    assert!(rm["artifact_uri"].ends_with("/artifacts'"));
    let (start, end): (u64, u64) = (
        rm["start_time"].parse().unwrap(),
        rm["end_time"].parse().unwrap(),
    );
    assert!(end >= start);

    let epochs = std::fs::read_to_string(run.join("params/train.epochs")).unwrap();
    assert_eq!(epochs, "3", "raw value, no newline");
    assert_eq!(
        std::fs::read_to_string(run.join("params/data.image_size")).unwrap(),
        "28"
    );
    for key in [
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "learning_rate",
        "epoch_seconds",
        "images_per_second",
    ] {
        let lines = metric_lines(&run, key);
        assert_eq!(lines.len(), 3, "{key}");
        for (i, f) in lines.iter().enumerate() {
            assert_eq!(f.len(), 3, "{key}: 3 fields");
            f[0].parse::<u64>().unwrap();
            f[1].parse::<f64>().unwrap();
            assert_eq!(f[2], (i + 1).to_string(), "{key}: step");
        }
    }
    for tag in [
        "mlflow.runName",
        "mlflow.user",
        "mlflow.source.name",
        "flora.version",
    ] {
        assert!(run.join("tags").join(tag).is_file(), "tag {tag}");
    }
    let fp = std::fs::read_to_string(run.join("tags/flora.data_fingerprint")).unwrap();
    assert!(fp.starts_with("sha256:"), "{fp}");

    let art = run.join("artifacts");
    let results = std::fs::read_to_string(art.join("results.csv")).unwrap();
    assert_eq!(results.lines().count(), 4, "header + 3 epochs:\n{results}");
    assert!(results.starts_with("epoch,train_loss,train_accuracy,val_loss,val_accuracy"));
    let split = std::fs::read_to_string(art.join("split.csv")).unwrap();
    assert!(split.starts_with("path,class,subset"));
    assert_eq!(split.lines().count(), 1 + 4 * 40);
    // The split is by content hash: about 20% per class, at least one image each side.
    let val = split.lines().filter(|l| l.ends_with(",val")).count();
    assert!((16..=48).contains(&val), "{val} of 160 in val");
    assert_eq!(
        std::fs::read_to_string(run.join("params/num_val")).unwrap(),
        val.to_string()
    );
    for class in CLASSES {
        assert!(
            split.lines().any(|l| l.ends_with(&format!("{class},val"))),
            "{class} has no val image"
        );
    }
    let cfg = std::fs::read_to_string(art.join("config.toml")).unwrap();
    assert!(cfg.contains("epochs = 3"), "{cfg}");

    let bundle = flora::model::bundle::ModelBundle::load(&art.join("model")).expect("bundle loads");
    assert_eq!(
        bundle.meta.classes,
        vec!["bag", "sneaker", "t-shirt_top", "trouser"]
    );
    assert_eq!(bundle.meta.run_id.as_deref(), Some(run_id));
    assert_eq!(bundle.meta.data_fingerprint, fp);
    assert_eq!(bundle.meta.image_size, 28);
    let acc = bundle.meta.metrics["val_accuracy"];
    eprintln!("measured val_accuracy {acc}");
    // Measured 0.9 (about 32 val images); chance is 0.25.
    assert!(
        acc >= 0.8,
        "4 easy classes should be learnt well above chance (0.25): {acc}"
    );
    // The bundle predicts real images on its own: five training images of each class; at least
    // 14 of the 20 get the most probability as the class they are (chance is 5 of 20).
    let mut wrong = Vec::new();
    for (k, class) in bundle.meta.classes.iter().enumerate() {
        let mut files: Vec<_> = dir
            .path()
            .join("dataset")
            .join(class)
            .read_dir()
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in &files[..5] {
            let img = flora::data::imaging::prepare_file(file, 28, Default::default()).unwrap();
            let probs = &bundle.predict_pixels(&[img.as_raw()])[0];
            assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-4, "{probs:?}");
            let best = (0..probs.len())
                .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
                .unwrap();
            if best != k {
                wrong.push(format!(
                    "{} as {}",
                    file.display(),
                    bundle.meta.classes[best]
                ));
            }
        }
    }
    assert!(
        wrong.len() <= 6,
        "{} of 20 predicted wrong: {wrong:?}",
        wrong.len()
    );

    // The same data gives the same fingerprint; `flora runs` lists the run.
    let runs = ok(dir.path(), &["runs", "--json"]);
    assert!(runs.contains(run_id) && runs.contains("FINISHED"), "{runs}");
}

#[test]
fn same_seed_gives_same_metrics() {
    let dir = project(30, 2);
    ok(dir.path(), &["train", "--name", "a"]);
    ok(dir.path(), &["train", "--name", "b"]);
    let runs = ok(dir.path(), &["runs", "--json"]);
    let accs: Vec<serde_json::Value> = runs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(accs.len(), 2);
    assert_eq!(accs[0]["val_accuracy"], accs[1]["val_accuracy"], "{runs}");
    // And the same fingerprint, from the same files.
    let exp = only_exp(dir.path());
    let fps: Vec<String> = std::fs::read_dir(&exp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| std::fs::read_to_string(p.join("tags/flora.data_fingerprint")).unwrap())
        .collect();
    assert_eq!(fps[0], fps[1]);
    // Val loss matches to the last digit too.
    let losses: Vec<String> = std::fs::read_dir(&exp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| {
            metric_lines(&p, "val_loss")
                .iter()
                .map(|f| f[1].clone())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    assert_eq!(losses[0], losses[1]);
}

fn only_exp(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("meta.yaml").exists())
        .unwrap()
}

#[test]
fn bad_files_are_skipped_and_reported() {
    let dir = project(20, 1);
    let ds = dir.path().join("dataset");
    std::fs::write(
        ds.join("bag/corrupt.png"),
        b"\x89PNG\r\n\x1a\nthis is not really a png",
    )
    .unwrap();
    std::fs::write(ds.join("bag/empty.jpg"), b"").unwrap();
    std::fs::write(ds.join("trouser/notes.txt"), b"hello").unwrap();
    // A PNG named .jpg decodes by content.
    let png = std::fs::read_dir(ds.join("sneaker"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&png, ds.join("sneaker/really_a_png.jpg")).unwrap();
    // A JPEG whose data stops at 60%: skipped, not trained on with invented rows.
    let jpeg = jpeg_of(&std::fs::read(&png).unwrap());
    std::fs::write(ds.join("sneaker/cut.jpg"), &jpeg[..jpeg.len() * 6 / 10]).unwrap();
    // Inboxes are not classes.
    copy_classes(&ds, &ds.join("_UNLABELED_SORT_ME"), &["bag"], 5);
    let out = run(dir.path(), &["train"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("skipped 4 file(s)"), "{stderr}");
    assert!(
        stderr.contains("corrupt.png")
            && stderr.contains("empty.jpg")
            && stderr.contains("notes.txt"),
        "{stderr}"
    );
    assert!(stderr.contains("4 classes"), "{stderr}");
    let (_, run_dir) = only_run(dir.path());
    assert!(
        stderr.contains("cut.jpg") && stderr.contains("truncated JPEG"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(run_dir.join("params/num_skipped")).unwrap(),
        "4"
    );
    let count = |key: &str| -> usize {
        std::fs::read_to_string(run_dir.join("params").join(key))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        count("num_train") + count("num_val"),
        4 * 20 + 1,
        "the good files"
    );
}

#[test]
fn bad_input_exits_nonzero_with_a_named_problem() {
    let dir = project(5, 1);
    let p = dir.path();
    let err = fails(p, &["train", "--data", "no_such_folder"]);
    assert!(
        err.contains("no_such_folder") && err.contains("does not exist"),
        "{err}"
    );

    let single = p.join("single");
    copy_classes(&p.join("dataset"), &single, &["bag"], 5);
    let err = fails(p, &["train", "--data", "single"]);
    assert!(err.contains("at least 2"), "{err}");

    let broken = p.join("broken");
    copy_classes(&p.join("dataset"), &broken, &["bag"], 5);
    std::fs::create_dir_all(broken.join("coat")).unwrap();
    std::fs::write(broken.join("coat/x.png"), b"garbage").unwrap();
    let err = fails(p, &["train", "--data", "broken"]);
    assert!(err.contains("'coat' has no usable image"), "{err}");

    let err = fails(p, &["train", "--epochs", "-1"]);
    assert!(err.contains("--epochs"), "{err}");
    let err = fails(p, &["train", "--epochs", "0"]);
    assert!(err.contains("train.epochs"), "{err}");
    let err = fails(p, &["train", "--image-size", "8"]);
    assert!(err.contains("too small") && err.contains("16"), "{err}");

    write_config(p, 1, "epochz = 3\n");
    let err = fails(p, &["train"]);
    assert!(
        err.contains("epochz") && err.contains("flora.toml"),
        "{err}"
    );

    std::fs::write(p.join("flora.toml"), "[train]\nepochs = -2\n").unwrap();
    let err = fails(p, &["train"]);
    assert!(
        err.contains("epochs") && err.contains("flora.toml"),
        "{err}"
    );

    let err = fails(p, &["--config", "missing.toml", "train"]);
    assert!(err.contains("missing.toml"), "{err}");
    assert!(
        !p.join("runs").exists() || std::fs::read_dir(p.join("runs")).unwrap().count() == 0,
        "no run is created for bad input"
    );
}

#[test]
fn train_and_val_folders_are_used_as_the_split() {
    let (train, test) = fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    copy_classes(
        &train,
        &dir.path().join("dataset/train"),
        &["bag", "trouser"],
        20,
    );
    copy_classes(
        &test,
        &dir.path().join("dataset/val"),
        &["bag", "trouser"],
        7,
    );
    write_config(dir.path(), 1, "");
    ok(dir.path(), &["train"]);
    let (_, run) = only_run(dir.path());
    assert_eq!(
        std::fs::read_to_string(run.join("params/num_val")).unwrap(),
        "14"
    );
    let split = std::fs::read_to_string(run.join("artifacts/split.csv")).unwrap();
    assert!(
        split
            .lines()
            .filter(|l| l.ends_with(",val"))
            .all(|l| l.starts_with("val/")),
        "{split}"
    );
}

#[test]
fn init_writes_a_config_that_trains() {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["init", "proj"]);
    let proj = dir.path().join("proj");
    for sub in ["dataset", "runs", "models", "collected_data"] {
        assert!(proj.join(sub).is_dir(), "{sub}");
    }
    let text = std::fs::read_to_string(proj.join("flora.toml")).unwrap();
    flora::config::Config::parse(&text).unwrap();
    // Paths are relative to the config file, wherever flora runs from.
    let (train, _) = fashion_mnist();
    copy_classes(&train, &proj.join("dataset"), &["bag", "trouser"], 10);
    ok(
        dir.path(),
        &[
            "--config",
            "proj/flora.toml",
            "train",
            "--epochs",
            "1",
            "--image-size",
            "28",
        ],
    );
    assert!(proj.join("runs").read_dir().unwrap().count() == 1);
}

#[test]
fn sigint_marks_the_run_killed_and_keeps_the_store_readable() {
    let dir = project(100, 50);
    let mut child = flora(dir.path())
        .args(["train", "--name", "interrupted"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first epoch to be logged, then interrupt.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let logged = std::fs::read_dir(dir.path().join("runs"))
            .ok()
            .and_then(|mut d| {
                d.find_map(|e| {
                    let p = e.ok()?.path();
                    std::fs::read_dir(&p).ok()?.find_map(|r| {
                        let r = r.ok()?.path();
                        r.join("metrics/val_accuracy").exists().then_some(r)
                    })
                })
            });
        if logged.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no epoch finished in time");
        assert!(
            child.try_wait().unwrap().is_none(),
            "training ended before it was interrupted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, run) = only_run(dir.path());
    assert_eq!(yaml(&run.join("meta.yaml"))["status"], "5", "KILLED");
    let lines = metric_lines(&run, "val_accuracy");
    assert!(!lines.is_empty() && lines.len() < 50);
    flora::model::bundle::ModelBundle::load(&run.join("artifacts/model"))
        .expect("what exists was saved");
    let runs = ok(dir.path(), &["runs", "--json"]);
    assert!(runs.contains("KILLED"), "{runs}");
}

#[test]
fn mobilenet_v2_trains_and_its_bundle_predicts() {
    let dir = project(10, 1);
    ok(
        dir.path(),
        &[
            "train",
            "--arch",
            "mobilenet_v2",
            "--image-size",
            "32",
            "--name",
            "mnv2",
        ],
    );
    let (_, run) = only_run(dir.path());
    assert_eq!(
        std::fs::read_to_string(run.join("params/train.arch")).unwrap(),
        "mobilenet_v2"
    );
    let bundle = flora::model::bundle::ModelBundle::load(&run.join("artifacts/model")).unwrap();
    assert_eq!(bundle.meta.arch, flora::model::Arch::MobilenetV2);
    let out = ok(dir.path(), &["predict", "--json", "dataset/bag"]);
    assert_eq!(out.lines().count(), 10);
}

#[test]
fn imbalanced_classes_are_warned_about() {
    let (train, _) = fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    copy_classes(&train, &dir.path().join("dataset"), &["bag"], 40);
    copy_classes(&train, &dir.path().join("dataset"), &["trouser"], 6);
    write_config(dir.path(), 1, "");
    let out = run(dir.path(), &["train"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("classes are imbalanced: the largest has 40 images, the smallest 6"),
        "{err}"
    );
}

/// Starts `flora train --name NAME ARGS...` in `dir` and waits until its run is under way (its
/// `artifacts/config.toml` written). Returns the process and the run folder.
fn start_training(
    dir: &Path,
    name: &str,
    args: &[&str],
) -> (std::process::Child, std::path::PathBuf) {
    let mut child = flora(dir)
        .args(["train", "--name", name])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let found = common::run_dir(dir, name).filter(|r| r.join("artifacts/config.toml").exists());
        if let Some(run) = found {
            return (child, run);
        }
        assert!(
            Instant::now() < deadline,
            "run {name} did not start in time"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "training {name} ended before it was signalled"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &std::process::Child, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The `flora runs --json` line of the run called `name`.
fn runs_json(dir: &Path, name: &str) -> serde_json::Value {
    ok(dir, &["runs", "--json"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["run_name"] == name)
        .unwrap_or_else(|| panic!("no run {name}"))
}

#[test]
fn sigterm_and_a_second_ctrl_c_end_the_run_killed_and_sigkill_shows_crashed() {
    let dir = project(30, 500);
    let p = dir.path();
    write_config(p, 500, "[serve]\nadmin_token = \"s3cret-admin-token\"\n");

    // SIGTERM stops after the batch, like Ctrl-C.
    let (child, run) = start_training(p, "term", &[]);
    let live = runs_json(p, "term");
    assert_eq!(live["status"], "RUNNING", "{live}");
    let tags = run.join("tags");
    assert_eq!(
        std::fs::read_to_string(tags.join("flora.owner.pid")).unwrap(),
        child.id().to_string()
    );
    for t in ["flora.owner.start_time", "flora.owner.host"] {
        assert!(
            !std::fs::read_to_string(tags.join(t)).unwrap().is_empty(),
            "{t}"
        );
    }
    signal(&child, "-TERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(yaml(&run.join("meta.yaml"))["status"], "5", "KILLED");

    // No secret in the run store: not in config.toml, params, tags or anywhere else.
    for e in walkdir::WalkDir::new(&run).into_iter().flatten() {
        if e.file_type().is_file() {
            let bytes = std::fs::read(e.path()).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains("s3cret-admin-token"),
                "the admin token is in {}",
                e.path().display()
            );
        }
    }
    let config = std::fs::read_to_string(run.join("artifacts/config.toml")).unwrap();
    assert!(
        config.contains("admin_token is set but left out"),
        "{config}"
    );

    // Ctrl-C twice: quits at once, the run marked KILLED (not left RUNNING).
    // Big, slow batches, so that the second one comes while a batch still runs.
    let (mut child, run) =
        start_training(p, "twice", &["--batch-size", "128", "--image-size", "64"]);
    let stderr = child.stderr.take().unwrap();
    signal(&child, "-INT");
    let mut err = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
        let line = line.unwrap();
        err.push_str(&line);
        err.push('\n');
        if line.contains("stopping after this batch") {
            // SAFETY: plain kill(2) on our own child's pid.
            assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("marked KILLED, quitting"), "{err}");
    assert_eq!(yaml(&run.join("meta.yaml"))["status"], "5", "KILLED");

    // SIGKILL leaves it RUNNING on disk, but `flora runs` says it crashed.
    let (mut child, run) = start_training(p, "sigkilled", &[]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        yaml(&run.join("meta.yaml"))["status"],
        "1",
        "RUNNING on disk"
    );
    assert_eq!(runs_json(p, "sigkilled")["status"], "CRASHED");
    let table = ok(p, &["runs"]);
    let line = table.lines().find(|l| l.contains("sigkilled")).unwrap();
    assert!(line.contains("CRASHED"), "{table}");
    assert_eq!(runs_json(p, "term")["status"], "KILLED");
}

#[test]
fn control_characters_in_run_names_are_refused_and_artifact_uris_are_encoded() {
    let (train, _) = fashion_mnist();
    let root = tempfile::tempdir().unwrap();
    let p = root.path().join("my proj #1 100%");
    copy_classes(&train, &p.join("dataset"), &CLASSES, 10);
    write_config(&p, 1, "");
    let err = fails(&p, &["train", "--name", "evil\nstatus: 3"]);
    assert!(err.contains("control character"), "{err}");
    assert!(!p.join("runs").exists(), "nothing written for a bad name");

    ok(&p, &["train", "--name", "fine"]);
    let (exp, run) = only_run(&p);
    let encoded = "/my%20proj%20%231%20100%25/runs/";
    let rm = yaml(&run.join("meta.yaml"));
    assert!(
        rm["artifact_uri"].contains(encoded),
        "{}",
        rm["artifact_uri"]
    );
    assert!(!rm["artifact_uri"].contains(' '));
    let em = yaml(&exp.join("meta.yaml"));
    assert!(
        em["artifact_location"].contains(encoded),
        "{}",
        em["artifact_location"]
    );
}
