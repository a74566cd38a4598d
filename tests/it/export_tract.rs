//! `flora export --format onnx` read back by a pure-Rust runtime, tract (`tract-onnx`, a
//! dev-dependency): `cargo test` checks the exported graphs without Python or ONNX Runtime. On
//! real images tract's probabilities are flora's within 1e-4, for the cnn and an odd-sided
//! MobileNetV2, with and without the preprocessing inside.

use std::path::Path;

use serde_json::Value;
use tract_onnx::prelude::*;

use crate::export::{flora_probs, images_at};
use crate::support::common::*;
use flora::data::imaging::Normalization;

const TOLERANCE: f32 = 1e-4;

/// tract's probabilities for the RGB PNGs in `images` (file name order) through the ONNX file
/// `model`: uint8 NHWC pixels when the preprocessing is inside, else normalised NCHW floats.
fn tract_probs(model: &Path, images: &Path, side: usize, inside: bool) -> Vec<(String, Vec<f32>)> {
    let mut files: Vec<_> = std::fs::read_dir(images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let pixels: Vec<Vec<u8>> = files
        .iter()
        .map(|f| image::open(f).unwrap().to_rgb8().into_raw())
        .collect();
    let n = files.len();
    let input: Tensor = if inside {
        tract_ndarray::Array4::from_shape_vec((n, side, side, 3), pixels.concat())
            .unwrap()
            .into()
    } else {
        let norm = Normalization::default();
        let mut x = vec![0f32; n * 3 * side * side];
        for (img, out) in pixels.iter().zip(x.chunks_mut(3 * side * side)) {
            norm.write_chw(img, side, false, out);
        }
        tract_ndarray::Array4::from_shape_vec((n, 3, side, side), x)
            .unwrap()
            .into()
    };
    let fact = if inside {
        u8::fact([n, side, side, 3])
    } else {
        f32::fact([n, 3, side, side])
    };
    let plan = tract_onnx::onnx()
        .model_for_path(model)
        .unwrap()
        .with_input_fact(0, fact.into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let out = plan.run(tvec!(input.into())).unwrap();
    let probs = out[0].to_plain_array_view::<f32>().unwrap();
    assert_eq!(probs.shape()[0], n);
    files
        .iter()
        .zip(probs.outer_iter())
        .map(|(f, row)| (name_of(f), row.iter().copied().collect()))
        .collect()
}

#[test]
fn exported_models_give_floras_probabilities_under_tract() {
    for (arch, width, side) in [("cnn", 1.0, 28), ("mobilenet_v2", 0.35, 37)] {
        let case = format!("{arch} w{width} {side}px");
        let dir = project(12, 1);
        let p = dir.path();
        write_config(p, 1, &format!("arch = \"{arch}\"\nwidth = {width}\n"));
        let toml = std::fs::read_to_string(p.join("flora.toml")).unwrap();
        let toml = toml.replace("image_size = 28", &format!("image_size = {side}"));
        std::fs::write(p.join("flora.toml"), toml).unwrap();
        ok(p, &["train", "--name", "exported"]);
        let (_, run) = only_run(p);
        let bundle = run.join("artifacts/model");
        let meta: Value =
            serde_json::from_slice(&std::fs::read(bundle.join("bundle.json")).unwrap()).unwrap();
        let classes: Vec<String> = serde_json::from_value(meta["classes"].clone()).unwrap();
        let images = p.join("images");
        images_at(side as u32, &images);
        let want = flora_probs(p, &bundle, &images, &classes);
        assert_eq!(want.len(), 18, "{case}: flora predicted every image");
        for inside in [false, true] {
            let file = p.join(format!("m{inside}.onnx"));
            let mut args = vec![
                "export",
                "--run",
                "exported",
                "--out",
                file.to_str().unwrap(),
            ];
            if inside {
                args.push("--with-preprocess");
            }
            ok(p, &args);
            let got = tract_probs(&file, &images, side, inside);
            assert_eq!(got.len(), want.len(), "{case}");
            let mut worst = 0f32;
            for (name, row) in &got {
                let expect = &want[name];
                assert_eq!(row.len(), expect.len(), "{case}: {name}");
                for (a, b) in row.iter().zip(expect) {
                    worst = worst.max((a - b).abs());
                }
            }
            eprintln!("{case}, preprocessing inside: {inside}: largest difference {worst:.2e}");
            assert!(
                worst <= TOLERANCE,
                "{case}, preprocessing inside: {inside}: tract differs from flora by {worst}"
            );
        }
    }
}
