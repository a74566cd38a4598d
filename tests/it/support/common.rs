//! Shared helpers for the integration tests: the real `flora` binary, the real Fashion-MNIST
//! images committed under `tests/data/`, and scratch project folders.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The last component of `path` (a file or folder name), as a String.
pub fn name_of(path: &Path) -> String {
    path.file_name()
        .expect("path has a file name")
        .to_string_lossy()
        .into_owned()
}

/// The flora binary under test.
pub fn flora_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flora"))
}

/// A `flora` command run inside `dir`.
pub fn flora(dir: &Path) -> Command {
    let mut c = Command::new(flora_bin());
    c.current_dir(dir);
    c.env_remove("FLORA_ADMIN_TOKEN");
    c.env_remove("FLORA_LABEL_TOKEN");
    c
}

/// Runs `flora args...` in `dir` and returns its output.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    flora(dir).args(args).output().expect("running flora")
}

/// Runs and asserts success, returning stdout.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "flora {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs and asserts failure, returning stderr.
pub fn fails(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        !out.status.success(),
        "flora {args:?} should fail\nstdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// The project's own real test images: Fashion-MNIST PNGs committed under `tests/data/`
/// (100 train and 25 test images per class of [`CLASSES`], plus 25 test `coat`s; MIT, see
/// `tests/data/README.md`). Returns (train_dir, test_dir); tests copy from them, never into them.
pub fn fashion_mnist() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fashion-mnist");
    (root.join("train"), root.join("test"))
}

/// Copies the folders `classes` of a folder-per-class set into `dst`, at most `limit` files each.
pub fn copy_classes(src: &Path, dst: &Path, classes: &[&str], limit: usize) {
    for c in classes {
        let to = dst.join(c);
        std::fs::create_dir_all(&to).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(src.join(c))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.into_iter().take(limit) {
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
}

/// The four classes used by most tests (easy to tell apart, so small runs learn something).
pub const CLASSES: [&str; 4] = ["trouser", "bag", "sneaker", "t-shirt_top"];

/// A scratch project: `dir/dataset/<class>/` with `per_class` real images of [`CLASSES`], and a
/// `flora.toml` for fast training (28 px, small batches).
pub fn project(per_class: usize, epochs: usize) -> tempfile::TempDir {
    let (train, _) = fashion_mnist();
    let dir = tempfile::tempdir().unwrap();
    copy_classes(&train, &dir.path().join("dataset"), &CLASSES, per_class);
    write_config(dir.path(), epochs, "");
    dir
}

/// Writes a fast-training `flora.toml` into `dir`, with `extra` TOML appended.
pub fn write_config(dir: &Path, epochs: usize, extra: &str) {
    let text = format!(
        "[project]\nname = \"test\"\n[data]\nimage_size = 28\nseed = 7\n[train]\nepochs = {epochs}\nbatch_size = 16\nlearning_rate = 0.003\npatience = 0\nthreads = 2\n{extra}"
    );
    std::fs::write(dir.join("flora.toml"), text).unwrap();
}

/// The single run directory under `dir/runs/<exp>/`, or panics.
pub fn only_run(dir: &Path) -> (PathBuf, PathBuf) {
    let runs = dir.join("runs");
    let exps: Vec<PathBuf> = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("meta.yaml").exists())
        .collect();
    assert_eq!(
        exps.len(),
        1,
        "one experiment expected in {}",
        runs.display()
    );
    let run_dirs: Vec<PathBuf> = std::fs::read_dir(&exps[0])
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(
        run_dirs.len(),
        1,
        "one run expected in {}",
        exps[0].display()
    );
    (exps[0].clone(), run_dirs[0].clone())
}

/// The folder of the run called `name` under `dir/runs/<exp>/`, if it exists yet.
pub fn run_dir(dir: &Path, name: &str) -> Option<PathBuf> {
    walkdir::WalkDir::new(dir.join("runs"))
        .min_depth(2)
        .max_depth(2)
        .into_iter()
        .flatten()
        .map(|e| e.into_path())
        .find(|r| {
            std::fs::read_to_string(r.join("tags/mlflow.runName"))
                .ok()
                .as_deref()
                == Some(name)
        })
}

/// Parses a flat MLflow meta.yaml into key → raw value text.
pub fn yaml(path: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split_once(": ")
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Whether this is CI: `CI` set to anything but empty, `0` or `false` (`CI=1` and `CI=true`
/// both count). Under CI a test never skips: a missing outside program fails it.
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Notes that the running test was skipped, why, and how to run it. Written to the process's
/// stderr directly, past libtest's capture, so the line shows in `cargo test`'s output even
/// though the test is counted as passed; under CI (see [`is_ci`]) it fails the test instead.
pub fn skip(msg: &str) {
    if is_ci() {
        panic!("{msg} (CI is set: .ci/run must install it)");
    }
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let _ = writeln!(std::io::stderr(), "SKIPPED (not run) {test}: {msg}");
}

/// An outside program a test needs (MLflow's Python, a browser, ...), found at `path`. Missing,
/// the test is skipped with a visible note saying why and how to get it ([`skip`]), except
/// under CI, where a missing program fails the test (`.ci/run` installs everything).
pub fn outside_program(path: &Path, what: &str, how: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path.to_path_buf());
    }
    skip(&format!("{what} not found at {}; {how}", path.display()));
    None
}

/// `image` (any format flora reads) as a 96×96 JPEG: large enough that its scan spans many
/// blocks, so a cut copy (`jpeg[..len * 6 / 10]`) has a real truncated scan.
pub fn jpeg_of(image: &[u8]) -> Vec<u8> {
    let photo = image::load_from_memory(image).unwrap().resize_exact(
        96,
        96,
        image::imageops::FilterType::Triangle,
    );
    let mut jpeg = std::io::Cursor::new(Vec::new());
    photo.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    jpeg.into_inner()
}

/// A project trained for 2 epochs on 30 images per class (run `r`), evaluated with
/// `eval --html --json` on 12 test images per class: (project, eval data, report folder,
/// eval's JSON). The report is `report.html` in the third folder. Made once per test process
/// and shared (its users only read it).
pub fn eval_html_report() -> &'static EvalHtmlReport {
    static R: OnceLock<EvalHtmlReport> = OnceLock::new();
    R.get_or_init(|| {
        let dir = project(30, 2);
        let p = dir.path();
        ok(p, &["train", "--name", "r"]);
        let (_, test) = fashion_mnist();
        let data = tempfile::tempdir().unwrap();
        copy_classes(&test, data.path(), &CLASSES, 12);
        let out = tempfile::tempdir().unwrap();
        let j = serde_json::from_str(&ok(
            p,
            &[
                "eval",
                "--data",
                data.path().to_str().unwrap(),
                "--out",
                out.path().to_str().unwrap(),
                "--html",
                "--json",
            ],
        ))
        .unwrap();
        (dir, data, out, j)
    })
}

/// What [`eval_html_report`] made: (project, eval data, report folder, eval's JSON).
pub type EvalHtmlReport = (
    tempfile::TempDir,
    tempfile::TempDir,
    tempfile::TempDir,
    serde_json::Value,
);

/// A large, highly compressible PNG: small on disk and to send, slow to decode.
pub fn big_png(side: u32) -> Vec<u8> {
    use image::ImageEncoder;
    let pixels: Vec<u8> = (0..side * side * 3).map(|i| (i / 3 % 7) as u8).collect();
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::NoFilter,
    )
    .write_image(&pixels, side, side, image::ExtendedColorType::Rgb8)
    .unwrap();
    out
}
