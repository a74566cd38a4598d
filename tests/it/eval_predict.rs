//! `flora eval` and `flora predict` on real held-out Fashion-MNIST images.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::support::common::*;
use serde_json::Value;

/// One trained project shared by the tests of this file (training is the slow part).
fn trained() -> &'static (tempfile::TempDir, PathBuf) {
    static P: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    P.get_or_init(|| {
        let dir = project(60, 6);
        let info = "[class_info.trouser]\nlatin = \"Bracae\"\ndescription = \"two legs\"\n";
        write_config(dir.path(), 6, info);
        ok(dir.path(), &["train", "--name", "base"]);
        let (_, test) = fashion_mnist();
        let held_out = dir.path().join("held_out");
        copy_classes(&test, &held_out, &CLASSES, 25);
        (dir, held_out)
    })
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn eval_json_is_self_consistent_and_well_above_chance() {
    let (dir, held_out) = trained();
    let out = ok(
        dir.path(),
        &["eval", "--data", held_out.to_str().unwrap(), "--json"],
    );
    let r: Value = serde_json::from_str(&out).unwrap();
    let n = r["num_images"].as_u64().unwrap();
    assert_eq!(n, 100);
    let acc = r["accuracy"].as_f64().unwrap();
    eprintln!("measured eval accuracy {acc}");
    // Measured 0.97 (100 held-out images, 4 classes, 6 epochs at 28 px); chance is 0.25.
    assert!(acc >= 0.9, "accuracy {acc}");
    let classes: Vec<String> = r["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().into())
        .collect();
    let support: u64 = classes
        .iter()
        .map(|c| r["per_class"][c]["support"].as_u64().unwrap())
        .sum();
    assert_eq!(support, n);
    let cm = r["confusion_matrix"].as_array().unwrap();
    let diag: u64 = (0..classes.len()).map(|i| cm[i][i].as_u64().unwrap()).sum();
    assert!((diag as f64 / n as f64 - acc).abs() < 1e-12);
    for (i, c) in classes.iter().enumerate() {
        let row: u64 = cm[i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(row, r["per_class"][c]["support"].as_u64().unwrap());
    }
    assert!(r["top_k_accuracy"].as_f64().unwrap() >= acc);
    for k in ["macro_f1", "weighted_f1"] {
        let v = r[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{k}");
    }
    assert_eq!(r["top_k"], 4, "k = min(5, classes)");
}

#[test]
fn predict_json_agrees_with_eval() {
    let (dir, held_out) = trained();
    let eval: Value = serde_json::from_str(&ok(
        dir.path(),
        &["eval", "--data", held_out.to_str().unwrap(), "--json"],
    ))
    .unwrap();
    let lines = json_lines(&ok(
        dir.path(),
        &["predict", "--json", held_out.to_str().unwrap()],
    ));
    assert_eq!(lines.len(), 100);
    let correct = lines
        .iter()
        .filter(|l| {
            let path = PathBuf::from(l["path"].as_str().unwrap());
            let truth = name_of(path.parent().unwrap());
            l["class"].as_str().unwrap() == truth
        })
        .count();
    assert_eq!(correct as f64 / 100.0, eval["accuracy"].as_f64().unwrap());
    let first = &lines[0];
    let conf = first["confidence"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&conf));
    assert_eq!(first["top_k"].as_array().unwrap().len(), 3);
    assert_eq!(first["top_k"][0]["class"], first["class"]);
    assert!(first["model"]["run_id"].as_str().unwrap().len() == 32);
    // Class info from flora.toml travels in the bundle.
    let trouser = lines
        .iter()
        .find(|l| l["class"] == "trouser")
        .expect("some trouser prediction");
    assert_eq!(trouser["info"]["latin"], "Bracae");
}

#[test]
fn eval_defaults_to_the_runs_validation_split_and_logs_into_the_run() {
    let (dir, _) = trained();
    let out = ok(dir.path(), &["eval", "--run", "base"]);
    assert!(
        out.contains("precision") && out.contains("confusion matrix"),
        "{out}"
    );
    let run = std::fs::read_dir(dir.path().join("runs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .flat_map(|e| {
            std::fs::read_dir(e.path())
                .unwrap()
                .filter_map(|r| r.ok())
                .map(|r| r.path())
        })
        .find(|p| {
            p.is_dir()
                && std::fs::read_to_string(p.join("tags/mlflow.runName"))
                    .ok()
                    .as_deref()
                    == Some("base")
        })
        .unwrap();
    let art = run.join("artifacts/eval");
    for f in [
        "confusion_matrix.csv",
        "confusion_matrix.png",
        "misclassified.csv",
    ] {
        assert!(art.join(f).is_file(), "{f}");
    }
    image::open(art.join("confusion_matrix.png")).expect("a real PNG");
    let csv = std::fs::read_to_string(art.join("confusion_matrix.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5);
    let mis = std::fs::read_to_string(art.join("misclassified.csv")).unwrap();
    assert!(mis.starts_with("path,true,predicted,confidence"));
    let confs: Vec<f64> = mis
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        confs.windows(2).all(|w| w[0] >= w[1]),
        "most confident first"
    );
    let acc = std::fs::read_to_string(run.join("metrics/eval_accuracy")).unwrap();
    assert_eq!(acc.lines().next().unwrap().split(' ').count(), 3);
    assert!(run.join("tags/flora.eval_data_fingerprint").is_file());
    // Without --data, eval uses the run's own validation split: support adds up to it.
    let j: Value =
        serde_json::from_str(&ok(dir.path(), &["eval", "--run", "base", "--json"])).unwrap();
    let split = std::fs::read_to_string(run.join("artifacts/split.csv")).unwrap();
    let val = split.lines().filter(|l| l.ends_with(",val")).count();
    assert!(val >= 4, "{split}");
    assert_eq!(j["num_images"], val);
}

#[test]
fn saved_and_reloaded_bundle_gives_identical_probabilities() {
    let (dir, held_out) = trained();
    let bundle_dir = find_bundle(dir.path());
    let a = flora::model::bundle::ModelBundle::load(&bundle_dir).unwrap();
    let copy = tempfile::tempdir().unwrap();
    let again = copy.path().join("b");
    a.save(&again).unwrap();
    let b = flora::model::bundle::ModelBundle::load(&again).unwrap();
    let img = std::fs::read_dir(held_out.join("bag"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let px = flora::data::imaging::prepare_file(&img, 28, Default::default()).unwrap();
    assert_eq!(
        a.predict_pixels(&[px.as_raw()]),
        b.predict_pixels(&[px.as_raw()])
    );
    // And the CLI on the copied bundle agrees with the CLI on the run.
    let p1 = json_lines(&ok(
        dir.path(),
        &["predict", "--json", img.to_str().unwrap()],
    ));
    let p2 = json_lines(&ok(
        dir.path(),
        &[
            "predict",
            "--json",
            "--model",
            again.to_str().unwrap(),
            img.to_str().unwrap(),
        ],
    ));
    assert_eq!(p1[0]["top_k"], p2[0]["top_k"]);
}

#[test]
fn fused_engine_matches_the_burn_forward_pass() {
    check_fused_logits();
}

#[test]
fn narrower_kernel_builds_give_the_burn_forward_pass_too() {
    // The fused inference kernels (depthwise rows, epilogues, gemm) as an AVX2-only CPU and a
    // CPU the dispatch does not know (aarch64...) run them, each in a child process.
    crate::support::kernels::check_narrower_builds(
        "eval_predict::narrower_kernel_builds_give_the_burn_forward_pass_too",
        check_fused_logits,
    );
}

fn check_fused_logits() {
    use burn::module::Module;
    use burn::tensor::{Device, Tensor, TensorData};
    use flora::data::imaging::Normalization;
    use flora::model::{Arch, Classifier};
    use flora::ops::TrainEngine;
    // Logits, not probabilities (a confident model's saturate), of randomly initialised models
    // whose BatchNorm running statistics one training pass has moved off 0 and 1 (so folding
    // them into the fused convs matters), on real images of every test class.
    let (_, test) = fashion_mnist();
    let images: Vec<image::RgbImage> = CLASSES
        .iter()
        .flat_map(|class| {
            let mut files: Vec<_> = std::fs::read_dir(test.join(class))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            files.truncate(6);
            files
        })
        .map(|f| flora::data::imaging::prepare_file(&f, 28, Default::default()).unwrap())
        .collect();
    assert_eq!(images.len(), 6 * CLASSES.len());
    let px: Vec<&[u8]> = images.iter().map(|i| i.as_raw().as_slice()).collect();
    let norm = Normalization::default();
    let chw = |batch: &[&[u8]]| {
        let mut input = vec![0f32; batch.len() * 3 * 28 * 28];
        for (img, out) in batch.iter().zip(input.chunks_mut(3 * 28 * 28)) {
            norm.write_chw(img, 28, false, out);
        }
        TensorData::new(input, [batch.len(), 3, 28, 28])
    };
    let train = Device::flex().autodiff();
    train.seed(17);
    for (arch, width) in [(Arch::Cnn, 1.0), (Arch::MobilenetV2, 0.35)] {
        let model = Classifier::with_width(arch, width, 4, 0.0, &train);
        let _ = model.forward_with(Tensor::from_data(chw(&px), &train), TrainEngine::Burn);
        let model = model.valid();
        let fused = model.fused().expect("a fused form");
        let device = Device::flex();
        // A batch (images in parallel) and a lone image (rows split across threads).
        for batch in [&px[..], &px[..1]] {
            let got = fused.logits(batch, &norm, 28);
            let want =
                model.forward_with(Tensor::from_data(chw(batch), &device), TrainEngine::Burn);
            let want: Vec<f32> = want.into_data().try_to_vec().unwrap();
            let got: Vec<f32> = got.concat();
            assert_eq!(got.len(), want.len());
            let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            let diff = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max);
            eprintln!(
                "measured {arch:?} x{}: {diff:e} (scale {scale})",
                batch.len()
            );
            assert!(
                diff <= 1e-4 * scale,
                "{arch:?}: fused logits off by {diff:e}\n got {got:?}\nwant {want:?}"
            );
        }
    }
}

fn find_bundle(dir: &Path) -> PathBuf {
    let runs = dir.join("runs");
    for e in std::fs::read_dir(&runs).unwrap().flatten() {
        if let Ok(rs) = std::fs::read_dir(e.path()) {
            for r in rs.flatten() {
                let b = r.path().join("artifacts/model");
                if b.is_dir() {
                    return b;
                }
            }
        }
    }
    panic!("no bundle under {}", runs.display())
}

#[test]
fn gate_and_bad_models_give_clear_errors() {
    let (dir, held_out) = trained();
    let out = run(
        dir.path(),
        &[
            "eval",
            "--data",
            held_out.to_str().unwrap(),
            "--min-accuracy",
            "1.01",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("accuracy"),
        "report printed first"
    );
    let out = run(
        dir.path(),
        &[
            "eval",
            "--data",
            held_out.to_str().unwrap(),
            "--min-accuracy",
            "0.3",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0));

    let err = fails(dir.path(), &["eval", "--model", "/no/such/bundle"]);
    assert!(err.contains("/no/such/bundle"), "{err}");
    let err = fails(dir.path(), &["predict", "--run", "nope", "x.png"]);
    assert!(err.contains("no run with id or name 'nope'"), "{err}");

    // A class the model does not know.
    let odd = tempfile::tempdir().unwrap();
    let (_, test) = fashion_mnist();
    copy_classes(&test, odd.path(), &["bag", "coat"], 3);
    let err = fails(
        dir.path(),
        &["eval", "--data", odd.path().to_str().unwrap()],
    );
    assert!(
        err.contains("'coat'") && err.contains("not one of the model's classes"),
        "{err}"
    );

    // A corrupt bundle names the file.
    let broken = tempfile::tempdir().unwrap();
    let b = broken.path().join("bundle");
    std::fs::create_dir_all(&b).unwrap();
    let src = find_bundle(dir.path());
    std::fs::copy(src.join("bundle.json"), b.join("bundle.json")).unwrap();
    std::fs::write(b.join("model.bpk"), b"not weights").unwrap();
    let predict_broken = || {
        fails(
            dir.path(),
            &[
                "predict",
                "--model",
                b.to_str().unwrap(),
                held_out.join("bag").to_str().unwrap(),
            ],
        )
    };
    let err = predict_broken();
    assert!(err.contains("model.bpk"), "{err}");
    // Weights for 4 classes under a bundle.json that lists 3: a class-count mismatch.
    std::fs::copy(src.join("model.bpk"), b.join("model.bpk")).unwrap();
    let mut meta: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("bundle.json")).unwrap()).unwrap();
    meta["classes"].as_array_mut().unwrap().pop();
    std::fs::write(b.join("bundle.json"), meta.to_string()).unwrap();
    let err = predict_broken();
    assert!(
        err.contains("model.bpk") && err.contains("does not match bundle.json"),
        "{err}"
    );
    meta["format"] = 99.into();
    std::fs::write(b.join("bundle.json"), meta.to_string()).unwrap();
    let err = predict_broken();
    assert!(err.contains("bundle format 99"), "{err}");
    std::fs::write(b.join("bundle.json"), b"{ nope").unwrap();
    let err = predict_broken();
    assert!(err.contains("bundle.json"), "{err}");
    // Values out of range are refused when the bundle loads, never a panic later; a class
    // name that is a path (merge makes folders from them) is refused too.
    let good: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("bundle.json")).unwrap()).unwrap();
    let bad_values: [(&str, Value, &str); 6] = [
        ("dropout", 1.5.into(), "dropout = 1.5"),
        ("image_size", 8.into(), "image_size = 8"),
        (
            "image_size",
            4_000_000_000u64.into(),
            "image_size = 4000000000",
        ),
        (
            "classes",
            serde_json::json!(["bag", "../../evil", "t", "u"]),
            "../../evil",
        ),
        (
            "classes",
            serde_json::json!(["bag", "bag", "t", "u"]),
            "listed twice",
        ),
        (
            "normalization",
            serde_json::json!({"mean": [0.0, 0.0, 0.0], "std": [0.0, 1.0, 1.0]}),
            "std",
        ),
    ];
    for (key, value, says) in bad_values {
        let mut meta = good.clone();
        meta[key] = value;
        std::fs::write(b.join("bundle.json"), meta.to_string()).unwrap();
        let err = predict_broken();
        assert!(
            err.contains("not a usable model bundle") && err.contains(says),
            "{key}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }

    // No model at all.
    let empty = tempfile::tempdir().unwrap();
    let err = fails(empty.path(), &["predict", "x.png"]);
    assert!(err.contains("no model to use"), "{err}");
}

#[test]
fn predict_reports_bad_files_and_goes_on() {
    let (dir, held_out) = trained();
    let mixed = tempfile::tempdir().unwrap();
    copy_classes(held_out, mixed.path(), &["bag"], 4);
    let png = std::fs::read(
        std::fs::read_dir(mixed.path().join("bag"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    std::fs::write(
        mixed.path().join("bag/truncated.png"),
        &png[..png.len() / 2],
    )
    .unwrap();
    std::fs::write(
        mixed.path().join("bag/garbage.jpg"),
        b"definitely not a jpeg",
    )
    .unwrap();
    // A JPEG cut at 60% is refused (decoders fill the missing rows in silently); one that is
    // complete but lacks only its end marker, as some cameras write, is accepted.
    let jpeg = jpeg_of(&png);
    std::fs::write(
        mixed.path().join("bag/cut.jpg"),
        &jpeg[..jpeg.len() * 6 / 10],
    )
    .unwrap();
    std::fs::write(
        mixed.path().join("bag/no_end_marker.jpg"),
        &jpeg[..jpeg.len() - 2],
    )
    .unwrap();
    std::fs::write(
        mixed.path().join("bag/readme.txt"),
        b"not an image, skipped quietly",
    )
    .unwrap();
    let out = run(
        dir.path(),
        &["predict", "--json", mixed.path().to_str().unwrap()],
    );
    assert!(!out.status.success());
    let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(lines.len(), 5, "the 4 good ones and the unterminated JPEG");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("truncated.png") && err.contains("garbage.jpg"),
        "{err}"
    );
    assert!(
        err.contains("cut.jpg") && err.contains("truncated JPEG"),
        "{err}"
    );
    assert!(!err.contains("no_end_marker"), "{err}");
    assert!(!err.contains("readme.txt"), "{err}");
    // Named directly, a non-image is reported.
    let out = run(
        dir.path(),
        &[
            "predict",
            mixed.path().join("bag/readme.txt").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("readme.txt"));
    // The human table shows percentages and runner-ups.
    let table = ok(
        dir.path(),
        &[
            "predict",
            "--top-k",
            "2",
            held_out.join("trouser").to_str().unwrap(),
        ],
    );
    assert!(table.contains('%') && table.contains("Bracae"), "{table}");
}
