//! The pixel cache on disk (`[cache]`, `flora cache`): warm runs decode and read nothing, a
//! corrupt entry is rebuilt, the bound evicts the least recently used, processes share it, a
//! changed file is a miss; `flora cache` shows and clears it.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use crate::support::common::*;
use flora::data::imaging::PIPELINE_VERSION;
use flora::data::pixel_store::{Lookup, PixelStore};
use flora::util::fingerprint::sha256;

/// The counts of a build's `pixel cache:` line: (from the cache, total, decoded, files read).
fn counts(line: &str) -> (usize, usize, usize, usize) {
    let nums: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(4)
        .map(|s| s.parse().unwrap())
        .collect();
    (nums[0], nums[1], nums[2], nums[3])
}

/// Every `pixel cache: N of ...` line of a run's stderr, as counts.
fn cache_lines(out: &Output) -> Vec<(usize, usize, usize, usize)> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("pixel cache: ") && l.contains(" of "))
        .map(counts)
        .collect()
}

fn ok_out(dir: &Path, args: &[&str]) -> Output {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "flora {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The one cache line of a run that must have one.
fn one_line(out: &Output) -> (usize, usize, usize, usize) {
    let lines = cache_lines(out);
    assert_eq!(lines.len(), 1, "{}", String::from_utf8_lossy(&out.stderr));
    lines[0]
}

/// Sets every file under `dir` to have been modified an hour ago, as files copied earlier
/// would be (the memo does not trust files modified in the last two seconds).
fn age(dir: &Path) {
    let then = SystemTime::now() - Duration::from_secs(3600);
    for e in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if e.file_type().is_file() {
            let f = std::fs::File::options().write(true).open(e.path()).unwrap();
            f.set_modified(then).unwrap();
        }
    }
}

fn store(dir: &Path) -> PixelStore {
    PixelStore::new(dir.join(".flora/cache"), 4096 << 20)
}

/// The files of the validation split of the run named `name` (what eval uses by default).
fn val_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let run = run_dir(dir, name).unwrap();
    let csv = std::fs::read_to_string(run.join("artifacts/split.csv")).unwrap();
    csv.lines()
        .skip(1)
        .filter(|l| l.ends_with(",val"))
        .map(|l| dir.join("dataset").join(l.split(',').next().unwrap()))
        .collect()
}

fn entry_of(dir: &Path, file: &Path, size: u32) -> PathBuf {
    store(dir).entry_path(&sha256(&std::fs::read(file).unwrap()), size)
}

fn metric_values(run: &Path, metric: &str) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics").join(metric))
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect()
}

#[test]
fn warm_runs_decode_and_read_nothing() {
    let dir = project(12, 2);
    let p = dir.path();
    age(&p.join("dataset"));
    let cold = ok_out(p, &["train", "--name", "a"]);
    assert_eq!(one_line(&cold), (0, 48, 48, 48));
    let warm = ok_out(p, &["train", "--name", "b"]);
    assert_eq!(
        one_line(&warm),
        (48, 48, 0, 0),
        "from the cache, no image opened"
    );
    let (a, b) = (run_dir(p, "a").unwrap(), run_dir(p, "b").unwrap());
    let tag = |r: &Path| std::fs::read_to_string(r.join("tags/flora.data_fingerprint")).unwrap();
    assert_eq!(tag(&a), tag(&b));
    for m in ["val_loss", "val_accuracy", "train_loss"] {
        assert_eq!(metric_values(&a, m), metric_values(&b, m), "{m}");
    }

    // eval after train hits; its results equal those of decoding afresh.
    let eval = ok_out(p, &["eval", "--run", "b", "--json"]);
    let (from, total, decoded, read) = one_line(&eval);
    assert!(from == total && total > 0 && decoded == 0 && read == 0);
    let fresh = ok_out(p, &["eval", "--run", "b", "--json", "--no-cache"]);
    assert!(cache_lines(&fresh).is_empty());
    assert_eq!(eval.stdout, fresh.stdout);
    let mut off = flora(p);
    off.args(["eval", "--run", "b", "--json"])
        .env("FLORA_PIXEL_CACHE", "off");
    let off = off.output().unwrap();
    assert!(off.status.success() && cache_lines(&off).is_empty());

    // The promote gate and a sweep's trials hit too.
    let gate = ok_out(p, &["promote", "b"]);
    assert!(cache_lines(&gate).iter().all(|c| c.2 == 0 && c.0 == c.1));
    let sweep = ok_out(p, &["train", "--sweep", "learning_rate=0.003,0.001"]);
    let lines = cache_lines(&sweep);
    assert_eq!(lines.len(), 2, "{}", String::from_utf8_lossy(&sweep.stderr));
    assert!(lines.iter().all(|&c| c == (48, 48, 0, 0)), "{lines:?}");
}

#[test]
fn corrupt_entries_are_detected_and_rebuilt() {
    let dir = project(10, 1);
    let p = dir.path();
    age(&p.join("dataset"));
    ok(p, &["train", "--name", "a"]);
    let before = ok_out(p, &["eval", "--run", "a", "--json"]);
    let files = val_files(p, "a");
    assert!(files.len() >= 4);
    let entries: Vec<PathBuf> = files[..4].iter().map(|f| entry_of(p, f, 28)).collect();
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40; // one pixel
    std::fs::write(&entries[0], &bytes).unwrap();
    let half = std::fs::read(&entries[1]).unwrap();
    std::fs::write(&entries[1], &half[..half.len() / 2]).unwrap(); // torn
    std::fs::write(&entries[2], b"").unwrap(); // lost in a crash
    let mut head = std::fs::read(&entries[3]).unwrap();
    head[2] = b'?'; // the magic
    std::fs::write(&entries[3], &head).unwrap();

    let after = ok_out(p, &["eval", "--run", "a", "--json"]);
    assert_eq!(
        before.stdout, after.stdout,
        "same result from rebuilt pixels"
    );
    let stderr = String::from_utf8_lossy(&after.stderr);
    assert!(stderr.contains("4 corrupt entries rebuilt"), "{stderr}");
    let (from, total, decoded, read) = one_line(&after);
    assert_eq!((from, decoded, read), (total - 4, 4, 4));
    for (f, e) in files[..4].iter().zip(&entries) {
        let content = sha256(&std::fs::read(f).unwrap());
        assert!(
            matches!(store(p).get(&content, 28), Lookup::Hit(_)),
            "{}",
            e.display()
        );
    }
    let again = ok_out(p, &["eval", "--run", "a", "--json"]);
    assert_eq!(one_line(&again).2, 0);
}

/// Copies images `from..to` (sorted by name) of each of [`CLASSES`] into `dst/<class>/`.
fn copy_range(dst: &Path, from: usize, to: usize) -> Vec<PathBuf> {
    let (train, _) = fashion_mnist();
    let mut out = Vec::new();
    for c in CLASSES {
        std::fs::create_dir_all(dst.join(c)).unwrap();
        let mut files: Vec<PathBuf> = std::fs::read_dir(train.join(c))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in &files[from..to] {
            let copy = dst.join(c).join(f.file_name().unwrap());
            std::fs::copy(f, &copy).unwrap();
            out.push(copy);
        }
    }
    age(dst);
    out
}

#[test]
fn the_bound_evicts_the_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    // 96 px entries: 27,736 bytes (28 KiB on disk with 4 KiB blocks); 16 images per set, so
    // two sets fit in 1 MiB and three do not.
    std::fs::write(
        p.join("flora.toml"),
        "[data]\nimage_size = 96\n[train]\nepochs = 1\nbatch_size = 8\nthreads = 2\n\
         [cache]\nmax_size_mb = 1\n",
    )
    .unwrap();
    let a = copy_range(&p.join("dataset"), 0, 4);
    let b = copy_range(&p.join("b"), 4, 8);
    let c = copy_range(&p.join("c"), 8, 12);
    let exists = |files: &[PathBuf]| files.iter().filter(|f| entry_of(p, f, 96).exists()).count();
    ok(p, &["train", "--name", "a"]);
    assert_eq!(exists(&a), 16);
    let eval = |data: &str| ok_out(p, &["eval", "--run", "a", "--data", data]);
    let first_b = eval("b");
    assert!(!String::from_utf8_lossy(&first_b.stderr).contains("evicted"));
    assert_eq!((exists(&a), exists(&b)), (16, 16));
    // A is used again (its entries become the most recent but for C's), then C overflows.
    assert_eq!(one_line(&eval("dataset")).2, 0);
    std::thread::sleep(Duration::from_millis(20));
    let over = eval("c");
    let stderr = String::from_utf8_lossy(&over.stderr);
    assert!(stderr.contains("evicted"), "{stderr}");
    assert_eq!((exists(&a), exists(&c)), (16, 16), "{stderr}");
    assert!(exists(&b) < 16, "B was the least recently used: {stderr}");
    let usage = store(p).usage().unwrap();
    assert!(usage.total_bytes() <= 1 << 20, "{}", usage.total_bytes());
    // What was evicted is decoded again, and nothing else.
    let missing = 16 - exists(&b);
    assert_eq!(one_line(&eval("b")).2, missing);
}

#[test]
fn processes_share_one_cache() {
    let dir = project(10, 1);
    let p = dir.path();
    ok(p, &["train", "--name", "a", "--no-cache"]);
    assert!(!p.join(".flora").exists(), "--no-cache writes nothing");
    let (_, test) = fashion_mnist();
    let held = p.join("held");
    copy_classes(&test, &held, &CLASSES, 25);
    age(&held);
    let args = ["eval", "--run", "a", "--data", "held", "--json"];
    let children: Vec<_> = (0..3)
        .map(|_| {
            flora(p)
                .args(args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.stdout, outs[0].stdout);
        assert_eq!(one_line(o).1, 100);
    }
    let fresh = ok_out(
        p,
        &[
            "eval",
            "--run",
            "a",
            "--data",
            "held",
            "--json",
            "--no-cache",
        ],
    );
    assert_eq!(fresh.stdout, outs[0].stdout);
    assert_eq!(one_line(&ok_out(p, &args)), (100, 100, 0, 0));
    let usage = store(p).usage().unwrap();
    assert_eq!((usage.entries(), usage.temp_files), (100, 0));
}

#[test]
fn a_changed_file_is_a_miss() {
    let dir = project(10, 1);
    let p = dir.path();
    age(&p.join("dataset"));
    ok(p, &["train", "--name", "a"]);
    let warm = one_line(&ok_out(p, &["eval", "--run", "a"]));
    assert_eq!((warm.2, warm.3), (0, 0));
    let files = val_files(p, "a");
    // New content in place (same name): read, hashed, decoded.
    let img = image::open(&files[0]).unwrap().fliph();
    img.save_with_format(&files[0], image::ImageFormat::Png)
        .unwrap();
    // Same content, new modification time: read and hashed, but not decoded.
    let f = std::fs::File::options()
        .write(true)
        .open(&files[1])
        .unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    let (from, total, decoded, read) = one_line(&ok_out(p, &["eval", "--run", "a"]));
    assert_eq!((from, decoded, read), (total - 1, 1, 2));
}

#[test]
fn flora_cache_shows_and_clears_only_its_own() {
    let dir = project(5, 1);
    let p = dir.path();
    age(&p.join("dataset"));
    ok(p, &["train", "--name", "a"]);
    let v: serde_json::Value = serde_json::from_str(&ok(p, &["cache", "--json"])).unwrap();
    assert_eq!(v["entries"], 20);
    assert_eq!(v["groups"][0]["size"], 28);
    assert_eq!(v["groups"][0]["pipeline"], PIPELINE_VERSION);
    assert!(v["groups"][0]["bytes"].as_u64().unwrap() >= 20 * (28 * 28 * 3 + 88));
    assert!(v["dir"].as_str().unwrap().ends_with(".flora/cache"));
    let text = ok(p, &["cache"]);
    for want in [
        "28 px",
        ".flora/cache (on)",
        "cache.max_size_mb = 4096",
        "file memo",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    assert_eq!(ok(p, &["cache", "info"]), text);

    // A file of the user's in the folder, and a link to a file named like an entry outside.
    let size_dir = p.join(format!(".flora/cache/pixels/v{PIPELINE_VERSION}/28"));
    std::fs::write(size_dir.join("notes.txt"), b"mine").unwrap();
    let shard = std::fs::read_dir(&size_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|d| d.is_dir())
        .unwrap();
    let name = format!(
        "{}{}",
        shard.file_name().unwrap().to_str().unwrap(),
        "0".repeat(62)
    );
    let outside = p.join(&name);
    std::fs::write(&outside, b"precious").unwrap();
    std::os::unix::fs::symlink(&outside, shard.join(&name)).unwrap();

    let cleared = ok(p, &["cache", "clear"]);
    assert!(
        cleared.contains("removed 20 cached images and the file memo"),
        "{cleared}"
    );
    assert!(cleared.contains("2 path(s)"), "{cleared}");
    assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
    assert!(size_dir.join("notes.txt").exists());
    let v: serde_json::Value = serde_json::from_str(&ok(p, &["cache", "--json"])).unwrap();
    assert_eq!(
        (v["entries"].as_u64(), v["memo_bytes"].as_u64()),
        (Some(0), Some(0))
    );

    // The section is checked like the others.
    write_config(p, 1, "[cache]\nmax_size_mb = 0\n");
    assert!(fails(p, &["cache"]).contains("cache.max_size_mb = 0"));
    write_config(p, 1, "[cache]\nsize_mb = 10\n");
    assert!(fails(p, &["cache"]).contains("size_mb"));
}
