//! `flora export --format onnx`, checked by ONNX itself and ONNX Runtime (PyPI `onnx` and
//! `onnxruntime`, in the Python `FLORA_ONNX_PYTHON` names, default `/tmp/flora-onnx`, which
//! `.ci/run` installs): `onnx.checker` passes, the metadata reads back, and on real images the
//! runtime's probabilities are flora's within 1e-4, with and without the preprocessing inside.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::common::*;

/// The largest difference allowed between flora's and ONNX Runtime's probabilities.
const TOLERANCE: f32 = 1e-4;

fn onnx_python() -> Option<PathBuf> {
    let python =
        std::env::var("FLORA_ONNX_PYTHON").unwrap_or_else(|_| "/tmp/flora-onnx/bin/python".into());
    outside_program(
        Path::new(&python),
        "a Python with onnx and onnxruntime",
        "run .ci/run, or set FLORA_ONNX_PYTHON to one",
    )
}

/// ONNX Runtime's answer for `model` on the PNGs in `images` (see support/onnx_parity.py).
fn onnx_runtime(python: &Path, model: &Path, images: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/onnx_parity.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(model)
        .arg(images)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "onnx_parity.py failed on {}:\n{}",
        model.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Real test images as RGB PNGs of exactly `side` pixels (so neither side resizes): Fashion-MNIST
/// test images of three classes and the real photographs under tests/data/photos.
pub(crate) fn images_at(side: u32, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let (_, test) = fashion_mnist();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/photos/upright");
    let mut sources: Vec<PathBuf> = Vec::new();
    for class in ["bag", "sneaker", "trouser"] {
        let mut files: Vec<_> = std::fs::read_dir(test.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        sources.extend(files.into_iter().take(4));
    }
    let mut photos: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    photos.sort();
    sources.extend(photos);
    for (i, src) in sources.iter().enumerate() {
        let img = image::open(src).unwrap().to_rgb8();
        let img = image::imageops::resize(&img, side, side, image::imageops::FilterType::Triangle);
        img.save(dir.join(format!("img_{i:02}.png"))).unwrap();
    }
}

/// Every Fashion-MNIST test image of the scratch projects' classes ([`CLASSES`], 25 each) as an
/// RGB PNG of `side` pixels: the test set INT8 agreement is counted on.
fn test_set_at(side: u32, dir: &Path) -> usize {
    std::fs::create_dir_all(dir).unwrap();
    let (_, test) = fashion_mnist();
    let mut n = 0;
    for class in CLASSES {
        for e in std::fs::read_dir(test.join(class)).unwrap() {
            let img = image::open(e.unwrap().path()).unwrap().to_rgb8();
            let img =
                image::imageops::resize(&img, side, side, image::imageops::FilterType::Triangle);
            img.save(dir.join(format!("{class}_{n:03}.png"))).unwrap();
            n += 1;
        }
    }
    n
}

/// flora's probabilities per image file name, in class-index order.
pub(crate) fn flora_probs(
    dir: &Path,
    model: &Path,
    images: &Path,
    classes: &[String],
) -> BTreeMap<String, Vec<f32>> {
    let k = classes.len().to_string();
    let model = model.to_string_lossy().into_owned();
    let images = images.to_string_lossy().into_owned();
    let out = ok(
        dir,
        &[
            "predict", &images, "--model", &model, "--json", "--top-k", &k,
        ],
    );
    out.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            let name = name_of(Path::new(v["path"].as_str().unwrap()));
            let mut probs = vec![f32::NAN; classes.len()];
            for s in v["top_k"].as_array().unwrap() {
                let i = classes
                    .iter()
                    .position(|c| c == s["class"].as_str().unwrap())
                    .unwrap();
                probs[i] = s["confidence"].as_f64().unwrap() as f32;
            }
            (name, probs)
        })
        .collect()
}

#[test]
fn exported_models_give_floras_probabilities_under_onnx_runtime() {
    let Some(python) = onnx_python() else { return };
    // The cnn, and MobileNetV2 at two widths, one at an odd side.
    for (arch, width, side) in [
        ("cnn", 1.0, 28),
        ("mobilenet_v2", 0.35, 37),
        ("mobilenet_v2", 0.5, 32),
    ] {
        let case = format!("{arch} w{width} {side}px");
        let dir = project(12, 1);
        let extra = format!("arch = \"{arch}\"\nwidth = {width}\n");
        write_config(dir.path(), 1, &extra);
        let toml = std::fs::read_to_string(dir.path().join("flora.toml")).unwrap();
        std::fs::write(
            dir.path().join("flora.toml"),
            toml.replace("image_size = 28", &format!("image_size = {side}")),
        )
        .unwrap();
        ok(dir.path(), &["train", "--name", "exported"]);
        let (_, run) = only_run(dir.path());
        let bundle = run.join("artifacts/model");
        let meta: Value =
            serde_json::from_slice(&std::fs::read(bundle.join("bundle.json")).unwrap()).unwrap();
        let classes: Vec<String> = serde_json::from_value(meta["classes"].clone()).unwrap();
        let images = dir.path().join("images");
        images_at(side, &images);
        let want = flora_probs(dir.path(), &bundle, &images, &classes);
        assert_eq!(want.len(), 18, "{case}: flora predicted every image");

        for with_preprocess in [false, true] {
            let file = dir.path().join(format!("m{with_preprocess}.onnx"));
            let mut args = vec![
                "export",
                "--run",
                "exported",
                "--out",
                file.to_str().unwrap(),
            ];
            if with_preprocess {
                args.push("--with-preprocess");
            }
            let printed = ok(dir.path(), &args);
            assert!(printed.contains("ONNX opset 17"), "{case}: {printed}");
            let got = onnx_runtime(&python, &file, &images);
            let what = format!("{case}, preprocessing inside: {with_preprocess}");

            let input = &got["inputs"][0];
            if with_preprocess {
                assert_eq!(input["type"], "tensor(uint8)", "{what}");
                assert_eq!(
                    input["shape"],
                    serde_json::json!(["batch", side, side, 3]),
                    "{what}"
                );
            } else {
                assert_eq!(input["type"], "tensor(float)", "{what}");
                assert_eq!(
                    input["shape"],
                    serde_json::json!(["batch", 3, side, side]),
                    "{what}"
                );
            }
            assert_eq!(input["name"], "images");
            assert_eq!(
                got["outputs"][0]["shape"],
                serde_json::json!(["batch", classes.len()])
            );

            let md = &got["metadata"];
            let names: BTreeMap<String, String> =
                serde_json::from_str(md["names"].as_str().unwrap()).unwrap();
            let expected: BTreeMap<String, String> = classes
                .iter()
                .enumerate()
                .map(|(i, c)| (i.to_string(), c.clone()))
                .collect();
            assert_eq!(names, expected, "{what}: names");
            assert_eq!(md["imgsz"], format!("[{side},{side}]"), "{what}");
            assert_eq!(md["task"], "classify");
            assert_eq!(md["flora.arch"], arch);
            assert_eq!(
                md["flora.width"].as_str().unwrap().parse::<f64>().unwrap(),
                width
            );
            assert_eq!(md["flora.run_id"], meta["run_id"], "{what}");
            assert_eq!(
                md["flora.data_fingerprint"], meta["data_fingerprint"],
                "{what}"
            );
            assert_eq!(md["flora.mean"], "[0.485,0.456,0.406]");

            let probs = got["probs"].as_object().unwrap();
            assert_eq!(probs.len(), want.len(), "{what}");
            let mut worst = 0f32;
            for (name, expect) in &want {
                let row: Vec<f32> = probs[name]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(row.len(), expect.len());
                for (a, b) in row.iter().zip(expect) {
                    worst = worst.max((a - b).abs());
                }
            }
            assert!(worst <= TOLERANCE, "{what}: largest difference {worst}");
            eprintln!("{what}: largest difference from flora {worst:.2e}");
        }
    }
}

#[test]
fn int8_export_agrees_with_the_float_model_under_onnx_runtime() {
    let Some(python) = onnx_python() else { return };
    let dir = project(40, 4);
    let p = dir.path();
    let (float, int8, n) = float_and_int8(&python, p, 28);
    assert!(
        int8["metadata"]["flora.precision"]
            .as_str()
            .unwrap()
            .starts_with("int8")
    );
    let agree = agreement(&float, &int8);
    // Measured: 98 of 100, as ONNX Runtime's own quantize_static (QDQ, per-channel; MinMax,
    // Entropy or Percentile calibration) gives on the same float model (bench/int8_agreement.py).
    assert!(
        agree >= 97,
        "INT8 top-1 agrees with float on {agree} of {n}"
    );
    let size = |f: &str| std::fs::metadata(p.join(f)).unwrap().len();
    assert!(
        size("q.onnx") * 3 < size("f.onnx"),
        "int8 weights are a quarter of the size"
    );
}

/// Trains the project at `p` (images of `side` pixels), exports it as float (`f.onnx`) and as
/// INT8 (`q.onnx`), and returns ONNX Runtime's answers of both on the test set, and its size.
fn float_and_int8(python: &Path, p: &Path, side: u32) -> (Value, Value, usize) {
    ok(p, &["train", "--name", "q"]);
    let images = p.join("images");
    let n = test_set_at(side, &images);
    ok(p, &["export", "--out", "f.onnx"]);
    let printed = ok(p, &["export", "--int8", "--out", "q.onnx"]);
    assert!(printed.contains("INT8 QDQ"), "{printed}");
    let float = onnx_runtime(python, &p.join("f.onnx"), &images);
    let int8 = onnx_runtime(python, &p.join("q.onnx"), &images);
    (float, int8, n)
}

/// On how many images the top-1 class of two ONNX Runtime answers agrees.
fn agreement(a: &Value, b: &Value) -> usize {
    let top = |v: &Value| -> Vec<usize> {
        v["probs"]
            .as_object()
            .unwrap()
            .values()
            .map(|row| {
                let row: Vec<f64> = row
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_f64().unwrap())
                    .collect();
                (0..row.len())
                    .max_by(|&i, &j| row[i].total_cmp(&row[j]))
                    .unwrap()
            })
            .collect()
    };
    let (a, b) = (top(a), top(b));
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).filter(|(x, y)| x == y).count()
}

#[test]
fn int8_mobilenet_agrees_with_the_float_model_under_onnx_runtime() {
    let Some(python) = onnx_python() else { return };
    let dir = project(30, 3);
    let p = dir.path();
    write_config(p, 3, "arch = \"mobilenet_v2\"\nwidth = 0.35\n");
    let toml = std::fs::read_to_string(p.join("flora.toml")).unwrap();
    std::fs::write(
        p.join("flora.toml"),
        toml.replace("image_size = 28", "image_size = 32"),
    )
    .unwrap();
    let (float, int8, n) = float_and_int8(&python, p, 32);
    let agree = agreement(&float, &int8);
    // Measured: 100 of 100 (MobileNetV2 w0.35, 32 px, 3 epochs on 120 images).
    assert!(
        agree >= 99,
        "INT8 top-1 agrees with float on {agree} of {n}"
    );
}

#[test]
fn int8_calibration_names_a_corrupt_image_and_writes_nothing() {
    let dir = project(6, 1);
    let p = dir.path();
    ok(p, &["train", "--name", "c"]);
    let (train, _) = fashion_mnist();
    let calib = p.join("calib");
    copy_classes(&train, &calib, &CLASSES, 3);
    let good = std::fs::read_dir(calib.join("bag"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(calib.join("bag/broken.png"), &bytes[..bytes.len() / 2]).unwrap();
    let err = fails(
        p,
        &[
            "export",
            "--int8",
            "--calibration",
            "calib",
            "--out",
            "q.onnx",
        ],
    );
    assert!(err.contains("broken.png"), "names the file: {err}");
    assert!(!p.join("q.onnx").exists(), "nothing written");
    let leftovers: Vec<_> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp") || n.ends_with(".onnx"))
        .collect();
    assert!(leftovers.is_empty(), "no partial files: {leftovers:?}");
    std::fs::remove_file(calib.join("bag/broken.png")).unwrap();
    let printed = ok(
        p,
        &[
            "export",
            "--int8",
            "--calibration",
            "calib",
            "--out",
            "q.onnx",
        ],
    );
    assert!(printed.contains("INT8 QDQ"), "{printed}");
}

#[test]
fn export_names_the_file_after_the_run_and_never_overwrites_by_accident() {
    let dir = project(6, 1);
    let p = dir.path();
    ok(p, &["train", "--name", "tulips"]);
    let printed = ok(p, &["export"]);
    assert!(printed.contains("wrote tulips.onnx"), "{printed}");
    let first = std::fs::read(p.join("tulips.onnx")).unwrap();
    assert!(
        first.len() > 100_000,
        "a whole model: {} bytes",
        first.len()
    );
    let err = fails(p, &["export"]);
    assert!(
        err.contains("tulips.onnx already exists: pass --force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(p.join("tulips.onnx")).unwrap(),
        first,
        "left as it was"
    );
    ok(p, &["export", "--force", "--with-preprocess"]);
    assert_ne!(
        std::fs::read(p.join("tulips.onnx")).unwrap(),
        first,
        "replaced"
    );
    let err = fails(p, &["export", "--out", "runs"]);
    assert!(err.contains("is a folder"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
}
