//! Phone photos stored sideways or upside down with an EXIF Orientation tag are seen upright
//! by every path: train and eval, predict (and its explanations), merge's pre-sort and serve.
//! The model is taught to tell real photographs (tests/data/photos) from the same photographs
//! upside down, from plainly stored files; then the same photos stored the way a phone stores
//! them (pixels turned, Orientation 3, 6 or 8) must get the same answers. A path that ignored
//! the tag would call an upright photo stored with Orientation 3 upside down.

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde_json::Value;

use crate::support::common::{ok, run_dir};
use crate::support::serve::Server;

const NAMES: [&str; 6] = [
    "flower",
    "china",
    "chelsea",
    "coffee",
    "rocket",
    "astronaut",
];

fn upright(name: &str) -> RgbImage {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/photos/upright/{name}.jpg"));
    image::open(p).unwrap().to_rgb8()
}

fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92)
        .encode_image(img)
        .unwrap();
    out
}

/// `img` stored as a phone stores it with EXIF orientation `o` (3, 6 or 8): the pixels turned
/// the other way and an APP1 segment holding the tag, right after the start marker.
fn phone_jpeg(img: &RgbImage, o: u16) -> Vec<u8> {
    let stored = match o {
        3 => image::imageops::rotate180(img),
        6 => image::imageops::rotate270(img),
        8 => image::imageops::rotate90(img),
        _ => unreachable!(),
    };
    let plain = jpeg(&stored);
    // "Exif\0\0", a big-endian TIFF header, one IFD with one SHORT entry: 0x0112 = o.
    let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
    exif.extend_from_slice(&o.to_be_bytes());
    exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut out = plain[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&exif);
    out.extend_from_slice(&plain[2..]);
    out
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// (class, image) pairs: every photo upright and upside down.
fn labelled() -> Vec<(&'static str, String, RgbImage)> {
    let mut out = Vec::new();
    for name in NAMES {
        let up = upright(name);
        out.push((
            "upside_down",
            name.to_string(),
            image::imageops::rotate180(&up),
        ));
        out.push(("upright", name.to_string(), up));
    }
    out
}

fn predictions(dir: &Path, run: &str, files: &[PathBuf]) -> Vec<Value> {
    let mut args = vec!["predict", "--run", run, "--json"];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    ok(dir, &args)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn top(v: &Value) -> String {
    v["top_k"][0]["class"]
        .as_str()
        .unwrap_or_else(|| panic!("no top class in {v}"))
        .to_string()
}

#[test]
fn phone_orientations_are_honoured_on_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    for (class, name, img) in labelled() {
        for split in ["train", "val"] {
            write(
                &p.join(format!("dataset/{split}/{class}/{name}.jpg")),
                &jpeg(&img),
            );
        }
        for o in [3, 6, 8] {
            write(
                &p.join(format!("phone/{class}/{name}-{o}.jpg")),
                &phone_jpeg(&img, o),
            );
        }
    }
    std::fs::write(
        p.join("flora.toml"),
        "[project]\nname = \"t\"\n[data]\nimage_size = 64\nseed = 3\naugment = false\n\
         [train]\nepochs = 60\nbatch_size = 12\nlearning_rate = 0.003\npatience = 0\nthreads = 2\n",
    )
    .unwrap();
    ok(p, &["train", "--name", "orient"]);
    assert!(run_dir(p, "orient").is_some());

    // Train + eval: the phone-stored copies score as the plain ones.
    let eval = |data: &str| -> f64 {
        let out = ok(
            p,
            &[
                "eval",
                "--run",
                "orient",
                "--data",
                data,
                "--json",
                "--no-cache",
            ],
        );
        let v: Value =
            serde_json::from_str(out.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
        v["accuracy"].as_f64().unwrap()
    };
    let plain = eval("dataset/val");
    assert!(
        plain >= 0.9,
        "the model did not learn the plain photos: {plain}"
    );
    let phone = eval("phone");
    assert!(
        phone >= plain - 0.1,
        "phone-stored photos: {phone} against {plain} stored plain"
    );

    // Predict: each phone file gets its class.
    let mut files: Vec<PathBuf> = walk(&p.join("phone"));
    files.sort();
    let preds = predictions(p, "orient", &files);
    assert_eq!(preds.len(), files.len());
    let wrong: Vec<String> = files
        .iter()
        .zip(&preds)
        .filter(|(f, v)| class_of(f) != top(v))
        .map(|(f, v)| format!("{} -> {}", f.display(), top(v)))
        .collect();
    assert!(wrong.len() <= 2, "predicted wrongly: {wrong:?}");

    // Explanations are drawn over the upright photo: the overlay of a phone-stored file is the
    // overlay of the plain one (up to JPEG noise).
    let explain = |f: &Path, out: &str| -> RgbImage {
        ok(
            p,
            &[
                "predict",
                "--run",
                "orient",
                "--explain",
                "--explain-dir",
                out,
                f.to_str().unwrap(),
            ],
        );
        let stem = f.file_stem().unwrap().to_string_lossy().to_string();
        image::open(p.join(out).join(format!("{stem}.explain.png")))
            .unwrap()
            .to_rgb8()
    };
    let a = explain(&p.join("dataset/val/upright/flower.jpg"), "ex_plain");
    let b = explain(&p.join("phone/upright/flower-6.jpg"), "ex_phone");
    assert_eq!(a.dimensions(), b.dimensions());
    let mean = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y) as f64)
        .sum::<f64>()
        / a.as_raw().len() as f64;
    assert!(
        mean < 8.0,
        "explanation of the phone-stored photo differs: {mean}"
    );

    // Merge's pre-sort: collected phone photos are suggested their class.
    for f in &files {
        let dst = p.join("collected_data/2026-12-01").join(format!(
            "{}-{}",
            class_of(f),
            f.file_name().unwrap().to_string_lossy()
        ));
        write(&dst, &std::fs::read(f).unwrap());
    }
    let out = ok(p, &["merge", "--dry-run", "--run", "orient"]);
    let mut checked = 0;
    let mut wrong = Vec::new();
    for line in out.lines() {
        for class in ["upright", "upside_down"] {
            let other = if class == "upright" {
                "upside_down"
            } else {
                "upright"
            };
            if line.contains(&format!("/{class}-")) || line.contains(&format!(" {class}-")) {
                checked += 1;
                if line.contains(&format!(" {other} ")) {
                    wrong.push(line.to_string());
                }
            }
        }
    }
    assert!(checked >= files.len(), "merge printed too few rows:\n{out}");
    assert!(wrong.len() <= 2, "pre-sorted wrongly: {wrong:?}\n{out}");

    // Serve: uploads of phone-stored photos get the plain photo's probabilities.
    ok(p, &["promote", "orient", "--live"]);
    let server = Server::start(p, None, &["--no-collect"]);
    let post = |bytes: Vec<u8>| -> Value {
        let mut r = ureq::post(&server.url("/predict"))
            .header("Content-Type", "image/jpeg")
            .send(&bytes[..])
            .unwrap();
        serde_json::from_slice(&r.body_mut().read_to_vec().unwrap()).unwrap()
    };
    let plain = post(std::fs::read(p.join("dataset/val/upright/coffee.jpg")).unwrap());
    for o in [3, 6, 8] {
        let phone = post(std::fs::read(p.join(format!("phone/upright/coffee-{o}.jpg"))).unwrap());
        assert_eq!(
            top(&phone),
            top(&plain),
            "orientation {o}: {phone} vs {plain}"
        );
    }
}

fn class_of(f: &Path) -> String {
    f.parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn walk(d: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(d)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect()
}
