//! `flora merge` end to end: the real binary on real Fashion-MNIST images laid out in
//! collected_data exactly as `flora serve` lays them out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::common::*;
use flora::feedback::merge::{Action, Row};
use flora::model::Scored;
use flora::serving::collect::{self, Sidecar};
use flora::util::fingerprint::{hex, sha256};
use serde_json::Value;

const INBOX: &str = "dataset/_UNLABELED_SORT_ME";

fn sha_file(p: &Path) -> String {
    hex(&sha256(&std::fs::read(p).unwrap()))
}

/// Every file under `root` (relative path → content hash), except the merge's own
/// bookkeeping (`merge.csv`, `.merge/`) and hidden temp files.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).into_iter().flatten() {
        if !e.file_type().is_file() {
            continue;
        }
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let name = e.file_name().to_string_lossy();
        if rel.ends_with("_UNLABELED_SORT_ME/merge.csv")
            || rel.contains("_UNLABELED_SORT_ME/.merge/")
            || name.starts_with(".tmp-")
        {
            continue;
        }
        out.insert(rel, sha_file(e.path()));
    }
    out
}

/// Asserts two trees are equal, showing only the paths that differ.
#[track_caller]
fn same_tree(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) {
    let only_a: Vec<&String> = a.keys().filter(|k| a.get(*k) != b.get(*k)).collect();
    let only_b: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "trees differ: changed or missing {only_a:?}; extra {only_b:?}"
    );
}

/// [`tree`] of the dataset and collected_data only.
fn data_tree(p: &Path) -> BTreeMap<String, String> {
    tree(p)
        .into_iter()
        .filter(|(k, _)| k.starts_with("dataset/") || k.starts_with("collected_data/"))
        .collect()
}

/// The multiset of content hashes of a tree.
fn multiset(t: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for h in t.values() {
        *m.entry(h.clone()).or_insert(0) += 1;
    }
    m
}

fn manifest(project: &Path) -> Vec<Row> {
    let p = project.join(INBOX).join("merge.csv");
    csv::Reader::from_path(&p)
        .unwrap()
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Saves `bytes` as serve does (sidecar first, then the image), with a made-up prediction.
fn upload(collected: &Path, bytes: &[u8], client: &str) -> PathBuf {
    let format = flora::data::imaging::sniff_format(bytes).unwrap_or(image::ImageFormat::Png);
    let mut side = Sidecar {
        id: collect::new_id(),
        time: jiff::Zoned::now().to_string(),
        file: String::new(),
        slot: Some("green".into()),
        run_id: Some("serve-run".into()),
        predicted_class: "bag".into(),
        confidence: 0.5,
        top_k: vec![Scored {
            class: "bag".into(),
            confidence: 0.5,
        }],
        client_filename: Some(client.into()),
        bytes: 0,
        sha256: String::new(),
    };
    collect::save(collected, bytes, format, &mut side).unwrap()
}

fn files_of(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// What a collected_data folder holds, for the checks.
struct Filled {
    /// Finished images (what merge must take).
    images: Vec<PathBuf>,
    /// Files merge must leave alone: a temp file being written and a sidecar whose image is
    /// not there yet.
    untouchable: Vec<PathBuf>,
    new: usize,
    duplicates: usize,
    rejected: usize,
}

/// Fills `collected` as serve would: `new` real images, copies of `dups` dataset images, one
/// image uploaded twice, corrupt files, an older dated folder, a hand-dropped file without a
/// sidecar, plus an upload still being written.
fn fill(collected: &Path, new: &[PathBuf], dups: &[PathBuf], corrupt: usize) -> Filled {
    let (hand_src, uploaded) = new.split_last().unwrap();
    let mut images = Vec::new();
    for p in uploaded {
        images.push(upload(collected, &std::fs::read(p).unwrap(), "phone.jpg"));
    }
    for p in dups {
        images.push(upload(collected, &std::fs::read(p).unwrap(), "again.png"));
    }
    // The same upload twice: the second is a duplicate of the first.
    images.push(upload(
        collected,
        &std::fs::read(&new[0]).unwrap(),
        "twice.png",
    ));
    for i in 0..corrupt {
        let b = std::fs::read(&new[i % new.len()]).unwrap();
        let bytes = match i % 3 {
            0 => b"this is not an image at all".to_vec(),
            1 => b[..b.len() / 3].to_vec(), // a truncated PNG
            _ => {
                // A JPEG cut at 60%: its decoder alone would invent the missing rows.
                let jpeg = jpeg_of(&b);
                jpeg[..jpeg.len() * 6 / 10].to_vec()
            }
        };
        images.push(upload(collected, &bytes, "broken.png"));
    }
    // Two uploads (with their sidecars) from an older dated folder.
    let old = collected.join("2026-01-15");
    std::fs::create_dir_all(&old).unwrap();
    for i in [1, 2] {
        let img = images[i].clone();
        let to = old.join(img.file_name().unwrap());
        std::fs::rename(img.with_extension("json"), to.with_extension("json")).unwrap();
        std::fs::rename(&img, &to).unwrap();
        images[i] = to;
    }
    // A file dropped by hand, no sidecar.
    let hand = collected.join("hand-dropped.png");
    std::fs::copy(hand_src, &hand).unwrap();
    images.push(hand);
    // An upload serve is still writing: its sidecar is there, its image is a temp file.
    let day = collect::today_dir(collected);
    let lone = day.join("235959-0000000000000000.json");
    std::fs::write(&lone, b"{}").unwrap();
    let tmp = day.join(".tmp-999-0-235959-0000000000000000.png");
    std::fs::write(&tmp, &std::fs::read(&new[0]).unwrap()[..100]).unwrap();
    images.sort();
    Filled {
        images,
        untouchable: vec![lone, tmp],
        new: new.len(),
        duplicates: dups.len() + 1,
        rejected: corrupt,
    }
}

/// Checks the invariants after a finished merge: every image and sidecar is in exactly one
/// place, with the same hashes, and the manifest accounts for each file.
fn check_accounted(
    project: &Path,
    collected: &Path,
    before: &BTreeMap<String, String>,
    f: &Filled,
) {
    let after = all_files(project, collected);
    assert_eq!(multiset(before), multiset(&after), "content hashes changed");
    for u in &f.untouchable {
        assert!(u.exists(), "{} was taken", u.display());
    }
    let rows = manifest(project);
    let sources: BTreeSet<PathBuf> = rows.iter().map(|r| project.join(&r.source)).collect();
    let expected: BTreeSet<PathBuf> = f.images.iter().cloned().collect();
    assert_eq!(sources, expected, "manifest sources = the finished images");
    assert_eq!(rows.len(), f.images.len(), "one row per image");
    let mut placed = BTreeSet::new();
    for r in &rows {
        let dest = abs(project, &r.destination);
        assert!(
            !abs(project, &r.source).exists(),
            "{} still there",
            r.source
        );
        assert_eq!(sha_file(&dest), r.sha256, "{}", r.destination);
        assert!(
            placed.insert(dest.clone()),
            "two rows name {}",
            dest.display()
        );
        if !r.sidecar.is_empty() {
            let side = abs(project, &r.sidecar);
            assert!(side.exists(), "sidecar {}", r.sidecar);
            assert!(placed.insert(side));
        }
        let d = &r.destination;
        match r.action {
            Action::Duplicate => assert!(d.contains("_duplicates/"), "{d}"),
            Action::Rejected => {
                assert!(d.contains("_rejected/"), "{d}");
                assert!(!r.reason.is_empty());
            }
            Action::Inbox => assert!(d.contains("_UNLABELED_SORT_ME/"), "{d}"),
            Action::Accepted => assert!(!d.contains("_UNLABELED"), "{d}"),
            Action::Labelled => panic!("merge never labels: {d}"),
        }
    }
    // Everything in the merge's destination folders is named by the manifest.
    for dir in [
        project.join(INBOX),
        collected.join("_duplicates"),
        collected.join("_rejected"),
        collected.join("_merged"),
    ] {
        for e in walkdir::WalkDir::new(&dir).into_iter().flatten() {
            let n = e.file_name().to_string_lossy();
            if e.file_type().is_file()
                && n != "merge.csv"
                && !e.path().to_string_lossy().contains("/.merge/")
            {
                assert!(
                    placed.contains(e.path()),
                    "{} not in the manifest",
                    e.path().display()
                );
            }
        }
    }
    // Nothing finished is left in the dated folders.
    for img in &f.images {
        assert!(!img.exists(), "{} left behind", img.display());
    }
    let count = |a| rows.iter().filter(|r| r.action == a).count();
    assert_eq!(count(Action::Duplicate), f.duplicates);
    assert_eq!(count(Action::Rejected), f.rejected);
    assert_eq!(count(Action::Inbox) + count(Action::Accepted), f.new);
}

fn abs(project: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        project.join(p)
    }
}

/// Every file of the project and of the collected folder (when it lives elsewhere).
fn all_files(project: &Path, collected: &Path) -> BTreeMap<String, String> {
    let mut t = tree(project);
    if !collected.starts_with(project) {
        for (k, v) in tree(collected) {
            t.insert(format!("@collected/{k}"), v);
        }
    }
    t
}

fn test_images(per_class: usize, classes: &[&str]) -> Vec<PathBuf> {
    let (_, test) = fashion_mnist();
    let mut out = Vec::new();
    for c in classes {
        out.extend(files_of(&test.join(c)).into_iter().take(per_class));
    }
    out
}

fn batches(project: &Path) -> Vec<String> {
    let mut b: Vec<String> = manifest(project).into_iter().map(|r| r.batch).collect();
    b.dedup();
    b
}

#[test]
fn merge_without_a_model_keeps_every_file_and_undo_restores_the_tree() {
    let dir = project(10, 1);
    let p = dir.path();
    let collected = p.join("collected_data");
    let dataset_imgs: Vec<PathBuf> = files_of(&p.join("dataset/bag"))
        .into_iter()
        .take(3)
        .collect();
    let f = fill(&collected, &test_images(4, &CLASSES), &dataset_imgs, 3);
    let before = tree(p);

    // Dry run: prints the plan, changes nothing.
    let out = ok(p, &["merge", "--dry-run"]);
    assert!(out.contains("dry run: nothing changed"), "{out}");
    assert!(
        out.contains("rejected ") && out.contains("duplicate "),
        "{out}"
    );
    same_tree(&tree(p), &before);
    assert!(!p.join(INBOX).exists());

    let t = Instant::now();
    let out = ok(p, &["merge"]);
    eprintln!("merge of {} files: {:?}", f.images.len(), t.elapsed());
    let summary = format!(
        "collected {}, new {} (into _UNLABELED_SORT_ME, not pre-sorted: no model), duplicates {}, rejected {}",
        f.images.len(),
        f.new,
        f.duplicates,
        f.rejected
    );
    assert!(out.contains(&summary), "{out}\nexpected: {summary}");
    check_accounted(p, &collected, &before, &f);
    let rows = manifest(p);
    // Without a model the serve prediction from the sidecar is kept as information.
    let inbox_row = rows
        .iter()
        .find(|r| r.action == Action::Inbox && !r.sidecar.is_empty())
        .unwrap();
    assert_eq!(inbox_row.predicted_by, "serve");
    assert_eq!(inbox_row.slot, "green");
    assert_eq!(inbox_row.run_id, "serve-run");
    assert!(
        inbox_row.sidecar.starts_with("collected_data/_merged/"),
        "{}",
        inbox_row.sidecar
    );
    assert!(rows.iter().any(|r| r.collected_date == "2026-01-15"));
    let dup = rows
        .iter()
        .find(|r| r.reason.contains("dataset/bag/"))
        .unwrap();
    assert_eq!(dup.action, Action::Duplicate);
    // The inbox is flat: no class folders without a model.
    for r in rows.iter().filter(|r| r.action == Action::Inbox) {
        assert_eq!(
            Path::new(&r.destination).parent().unwrap(),
            Path::new(INBOX)
        );
    }

    let st = ok(p, &["merge", "--status"]);
    assert!(st.contains(&format!("{} image(s) waiting", f.new)), "{st}");
    assert!(
        st.contains("(not pre-sorted)") && st.contains("2026-01-15"),
        "{st}"
    );
    assert!(st.contains("0 upload(s) not merged yet"), "{st}");

    // Again: nothing left to take.
    let out = ok(p, &["merge"]);
    assert!(out.contains("collected 0, new 0"), "{out}");

    // A new upload of an image that is now in the inbox is a duplicate.
    let inbox_img = abs(p, &inbox_row.destination);
    upload(&collected, &std::fs::read(&inbox_img).unwrap(), "seen.png");
    let mid = tree(p);
    let out = ok(p, &["merge"]);
    assert!(
        out.contains("collected 1, new 0") && out.contains("duplicates 1"),
        "{out}"
    );
    let b = batches(p);
    assert_eq!(b.len(), 2);

    // Undo, newest first: the exact tree comes back, same hashes at the same paths.
    ok(p, &["merge", "--undo", &b[1]]);
    same_tree(&tree(p), &mid);
    let out = ok(p, &["merge", "--undo", &b[0], "--dry-run"]);
    assert!(out.contains("would put back"), "{out}");
    let out = ok(p, &["merge", "--undo", &b[0]]);
    assert!(
        out.contains(&format!("put back {}", f.images.len())),
        "{out}"
    );
    let mut expected = before.clone();
    expected.extend(
        mid.iter()
            .filter(|(k, _)| {
                k.starts_with("collected_data/") && !before.contains_key(*k) && !after_merge_path(k)
            })
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    same_tree(&tree(p), &expected);
    for d in ["_duplicates", "_rejected", "_merged"] {
        assert!(!collected.join(d).exists(), "{d} left behind");
    }
    assert!(manifest(p).is_empty());
    let err = fails(p, &["merge", "--undo", &b[0]]);
    assert!(err.contains("already undone"), "{err}");
    let err = fails(p, &["merge", "--undo", "nope"]);
    assert!(err.contains("no batch nope"), "{err}");
    let err = fails(p, &["merge", "--accept-above", "-1"]);
    assert!(err.contains("not a probability"), "{err}");
    let err = fails(p, &["merge", "--accept-above", "0.9"]);
    assert!(err.contains("needs a model"), "{err}");
}

/// Paths that exist only because of the first merge.
fn after_merge_path(rel: &str) -> bool {
    rel.starts_with("collected_data/_")
}

#[test]
fn kill_9_at_random_points_then_rerun_loses_nothing() {
    // collected_data on another filesystem (tmpfs) when there is one: every move is then a
    // copy + fsync + rename + remove, the slow path with the most states to be killed in.
    let shm = Path::new("/dev/shm");
    kill_9_rounds(shm.is_dir().then_some(shm), 3);
}

#[test]
fn kill_9_at_random_points_on_one_filesystem_then_rerun_loses_nothing() {
    kill_9_rounds(None, 2);
}

/// True when a merge journal waits in the inbox's `.merge/`: a merge was killed between
/// writing its plan and recording the batch.
fn journal_left(project: &Path) -> bool {
    std::fs::read_dir(project.join(INBOX).join(".merge"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".merge.json"))
}

/// SIGKILLs merges until at least `min_landed` kills landed mid-merge (a journal was left to
/// finish), one of them with some files moved and some not, whatever the machine's speed: the
/// kill time adapts between the latest kill that came before the first move and the earliest
/// that came after the last, and a batch that finished is undone so that there is work again.
fn kill_9_rounds(collected_in: Option<&Path>, min_landed: usize) {
    let dir = project(10, 1);
    let p = dir.path();
    let coll_dir = match collected_in {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir_in(p).unwrap(),
    };
    let collected = coll_dir.path().join("collected");
    let (_, test) = fashion_mnist();
    let classes: Vec<String> = files_of(&test).iter().map(|c| name_of(c)).collect();
    let class_refs: Vec<&str> = classes.iter().map(String::as_str).collect();
    let dataset_imgs: Vec<PathBuf> = files_of(&p.join("dataset/trouser"))
        .into_iter()
        .take(5)
        .collect();
    let f = fill(&collected, &test_images(25, &class_refs), &dataset_imgs, 6);
    let before = all_files(p, &collected);
    let from = collected.to_str().unwrap();

    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n.max(1)
    };
    let (mut landed, mut partial, mut early, mut late) = (0, 0, 0, 0);
    // Kill times (ms after the start) known to be too early and too late for a fresh merge.
    let (mut lo, mut hi) = (0u64, 2000u64);
    for round in 0..80 {
        if landed >= min_landed && partial > 0 {
            break;
        }
        let recovering = journal_left(p);
        let wait = if recovering {
            rand(hi)
        } else {
            lo + rand(hi - lo)
        };
        let mut child = flora(p)
            .args(["merge", "--from", from])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(wait));
        let killed = child.try_wait().unwrap().is_none();
        if killed {
            child.kill().unwrap(); // SIGKILL
        }
        child.wait().unwrap();
        let left = f.images.iter().filter(|i| i.exists()).count();
        let what = if killed && journal_left(p) {
            landed += 1;
            if left > 0 && left < f.images.len() {
                partial += 1;
            } else {
                if !recovering && left == 0 {
                    hi = wait; // all moved, not yet recorded
                } else if !recovering {
                    lo = wait; // journal written, nothing moved yet
                }
                // Nothing in between to be killed in: let the next merge finish it.
                ok(p, &["merge", "--from", from]);
            }
            "landed mid-merge"
        } else if killed && left == f.images.len() && !recovering {
            early += 1;
            lo = wait;
            "too early"
        } else {
            late += 1;
            if !recovering {
                hi = wait;
            }
            "too late"
        };
        if hi <= lo + 2 {
            // Timing noise: widen the window again.
            lo = lo.saturating_sub(10);
            hi = lo + 30;
        }
        eprintln!(
            "round {round}: {wait} ms: {what}; {left} of {} image(s) still in collected_data",
            f.images.len()
        );
        if left == 0 && !journal_left(p) {
            // All merged: undo, to have work for the next kill.
            for b in batches(p).iter().rev() {
                ok(p, &["merge", "--from", from, "--undo", b]);
            }
            same_tree(&all_files(p, &collected), &before);
        }
    }
    eprintln!(
        "{landed} kill(s) landed mid-merge ({partial} with some files moved), {early} too early, {late} too late"
    );
    assert!(
        landed >= min_landed && partial > 0,
        "only {landed} kill(s) landed mid-merge, {partial} with some files moved"
    );
    // Re-run to the end: it finishes every interrupted batch.
    let out = ok(p, &["merge", "--from", from]);
    eprintln!("{out}");
    check_accounted(p, &collected, &before, &f);
    assert!(!journal_left(p), "journal left behind");
    // Undo every batch: the original tree again.
    for b in batches(p).iter().rev() {
        ok(p, &["merge", "--from", from, "--undo", b]);
    }
    same_tree(&all_files(p, &collected), &before);
}

fn predict_classes(
    dir: &Path,
    bundle: &Path,
    files: &[PathBuf],
) -> BTreeMap<String, (String, f64)> {
    let mut args: Vec<String> = vec![
        "predict".into(),
        "--json".into(),
        "--model".into(),
        bundle.display().to_string(),
    ];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(dir, &args)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let name = name_of(Path::new(v["path"].as_str().unwrap()));
            (
                name,
                (
                    v["class"].as_str().unwrap().to_string(),
                    v["confidence"].as_f64().unwrap(),
                ),
            )
        })
        .collect()
}

fn find_bundle(dir: &Path) -> PathBuf {
    for e in walkdir::WalkDir::new(dir.join("runs"))
        .into_iter()
        .flatten()
    {
        if e.file_type().is_dir() && e.path().ends_with("artifacts/model") {
            return e.into_path();
        }
    }
    panic!("no bundle")
}

#[test]
fn with_a_model_presorts_like_predict_accepts_confident_ones_and_train_ignores_the_inbox() {
    let dir = project(40, 4);
    let p = dir.path();
    ok(p, &["train", "--name", "base"]);
    let bundle = find_bundle(p);
    let collected = p.join("collected_data");
    let imgs = test_images(8, &CLASSES);
    let mut uploads = Vec::new();
    for i in &imgs {
        uploads.push(upload(&collected, &std::fs::read(i).unwrap(), "x.png"));
    }
    let predicted = predict_classes(p, &bundle, &uploads);
    assert_eq!(predicted.len(), uploads.len());
    let before = data_tree(p);

    // A finished run but no live slot: merge does not guess a model; the inbox stays flat.
    let out = ok(p, &["merge"]);
    assert!(out.contains("not pre-sorted: no model"), "{out}");
    let b = batches(p);
    ok(p, &["merge", "--undo", &b[0]]);
    same_tree(&data_tree(p), &before);

    // With a live slot: pre-sorted into the classes flora predict gives.
    ok(p, &["promote", "base", "--live"]);
    let run_id = ok(p, &["runs", "--json"]);
    let out = ok(p, &["merge"]);
    assert!(out.contains("pre-sorted into"), "{out}");
    let rows = manifest(p);
    assert_eq!(rows.len(), uploads.len());
    for r in &rows {
        let name = name_of(Path::new(&r.source));
        let (class, conf) = &predicted[&name];
        assert_eq!(r.action, Action::Inbox);
        assert_eq!(r.destination, format!("{INBOX}/{class}/{name}"));
        assert_eq!(&r.predicted_class, class);
        assert!((r.confidence.unwrap() as f64 - conf).abs() < 1e-4);
        assert_eq!(r.slot, "blue");
        assert_eq!(r.predicted_by, "merge");
        // What serve said at upload time is kept beside it, from the sidecar.
        assert_eq!(
            (r.serve_class.as_str(), r.serve_slot.as_str()),
            ("bag", "green")
        );
        assert_eq!(r.serve_run_id, "serve-run");
        assert!(
            !r.run_id.is_empty() && run_id.contains(&r.run_id),
            "{}",
            r.run_id
        );
        assert!(p.join(&r.destination).is_file());
    }
    let st = ok(p, &["merge", "--status"]);
    let n_classes: BTreeSet<&String> = predicted.values().map(|(c, _)| c).collect();
    for c in &n_classes {
        assert!(st.contains(c.as_str()), "{st}");
    }
    let b = batches(p);
    ok(p, &["merge", "--undo", &b[0]]);
    same_tree(&data_tree(p), &before);

    // --accept-above: only the confident ones go straight into dataset/<class>/.
    // A threshold in the widest gap between confidences around the middle, so that tiny
    // numeric differences between batchings cannot flip a file across it.
    let mut confs: Vec<f64> = predicted.values().map(|(_, c)| *c).collect();
    confs.sort_by(f64::total_cmp);
    let n = confs.len();
    let i = (n / 4..3 * n / 4)
        .max_by(|&a, &b| (confs[a] - confs[a - 1]).total_cmp(&(confs[b] - confs[b - 1])))
        .unwrap();
    assert!(confs[i] - confs[i - 1] > 1e-4, "{confs:?}");
    let threshold = (confs[i] + confs[i - 1]) / 2.0;
    let t = format!("{threshold}");
    let out = ok(
        p,
        &[
            "merge",
            "--model",
            bundle.to_str().unwrap(),
            "--accept-above",
            &t,
        ],
    );
    let rows = manifest(p);
    let accepted = rows.iter().filter(|r| r.action == Action::Accepted).count();
    assert!(accepted > 0 && accepted < rows.len(), "{out}");
    assert!(out.contains(&format!("{accepted} accepted")), "{out}");
    for r in &rows {
        let name = name_of(Path::new(&r.source));
        let (class, conf) = &predicted[&name];
        if *conf >= threshold {
            assert_eq!(r.action, Action::Accepted, "{name} {conf}");
            assert_eq!(r.destination, format!("dataset/{class}/{name}"));
        } else {
            assert_eq!(r.action, Action::Inbox, "{name} {conf}");
            assert_eq!(r.destination, format!("{INBOX}/{class}/{name}"));
        }
        assert!(r.slot.is_empty(), "--model is not a slot");
    }

    // flora train never reads the inbox (but does read the accepted images).
    ok(p, &["train", "--name", "after"]);
    let split = walkdir::WalkDir::new(p.join("runs"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_name() == "split.csv")
        .map(|e| e.into_path())
        .max_by_key(|s| std::fs::read_to_string(s).unwrap().lines().count())
        .unwrap();
    let text = std::fs::read_to_string(&split).unwrap();
    assert!(!text.contains("_UNLABELED_SORT_ME"), "{text}");
    let in_classes: usize = CLASSES
        .iter()
        .map(|c| files_of(&p.join("dataset").join(c)).len())
        .sum();
    assert_eq!(text.lines().count() - 1, in_classes);
    assert_eq!(in_classes, 4 * 40 + accepted);
}

#[test]
fn merge_while_serve_writes_takes_only_finished_files() {
    // The merges must overlap the writes: at least one merge has to finish, having taken some
    // uploads, while the writer still has more to write. On a slow machine the writer is slowed
    // down and the whole test tried again.
    for (attempt, pause_ms) in [15u64, 60, 240].into_iter().enumerate() {
        if merge_while_writing(pause_ms) {
            return;
        }
        eprintln!("attempt {attempt}: no merge finished between uploads; slowing the writer");
    }
    panic!("no merge ever finished while uploads were still being written");
}

/// One round of [`merge_while_serve_writes_takes_only_finished_files`], the writer pausing
/// `pause_ms` every 10 uploads. Returns whether a merge landed mid-writing (having taken some
/// files while others were still to come); everything else is asserted.
fn merge_while_writing(pause_ms: u64) -> bool {
    let dir = project(5, 1);
    let p = dir.path().to_path_buf();
    let collected = p.join("collected_data");
    let imgs = test_images(25, &CLASSES);
    let total = imgs.len();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (collected, imgs, written) = (collected.clone(), imgs.clone(), written.clone());
        std::thread::spawn(move || {
            let mut saved = Vec::new();
            for (i, img) in imgs.iter().enumerate() {
                saved.push(upload(&collected, &std::fs::read(img).unwrap(), "live.png"));
                written.store(i + 1, std::sync::atomic::Ordering::SeqCst);
                if i % 10 == 0 {
                    std::thread::sleep(Duration::from_millis(pause_ms));
                }
            }
            saved
        })
    };
    let (mut runs, mut mid) = (0, 0);
    while !writer.is_finished() || runs == 0 {
        ok(&p, &["merge"]);
        runs += 1;
        // Read after the merge finished: uploads still to come, and some already merged.
        let so_far = written.load(std::sync::atomic::Ordering::SeqCst);
        let merged_some = p.join(INBOX).join("merge.csv").is_file() && !manifest(&p).is_empty();
        if so_far < total && merged_some {
            mid += 1;
        }
    }
    let saved = writer.join().unwrap();
    ok(&p, &["merge"]);
    eprintln!(
        "{runs} merge(s) ran while {} uploads were written, {mid} of them mid-writing",
        saved.len()
    );
    let rows = manifest(&p);
    let sources: BTreeSet<PathBuf> = rows.iter().map(|r| p.join(&r.source)).collect();
    assert_eq!(sources, saved.iter().cloned().collect::<BTreeSet<_>>());
    assert_eq!(rows.len(), saved.len());
    // A half-written file would have been rejected as corrupt.
    assert!(
        rows.iter().all(|r| r.action != Action::Rejected),
        "a partial file was taken"
    );
    for r in &rows {
        assert_eq!(sha_file(&p.join(&r.destination)), r.sha256);
        assert!(
            p.join(&r.sidecar).is_file(),
            "sidecar of {} left behind",
            r.source
        );
    }
    mid > 0
}

#[test]
fn undo_after_hand_sorting_puts_back_the_rest_and_says_what_it_could_not() {
    let dir = project(5, 1);
    let p = dir.path();
    let collected = p.join("collected_data");
    let imgs = test_images(2, &CLASSES);
    let saved: Vec<PathBuf> = imgs
        .iter()
        .map(|i| upload(&collected, &std::fs::read(i).unwrap(), "a.png"))
        .collect();
    ok(p, &["merge"]);
    let rows = manifest(p);
    let batch = rows[0].batch.clone();
    // The person sorts one image by hand.
    let sorted = p.join(&rows[0].destination);
    let by_hand = p.join("dataset/bag").join(sorted.file_name().unwrap());
    std::fs::rename(&sorted, &by_hand).unwrap();
    let out = run(p, &["merge", "--undo", &batch]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is gone"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("put back {}", saved.len() - 1)),
        "{stdout}"
    );
    assert!(by_hand.is_file());
    let src0 = p.join(&rows[0].source);
    for s in &saved {
        assert_eq!(s.is_file(), *s != src0, "{}", s.display());
    }
    // Its row stays in the manifest; the others are gone from it.
    let left = manifest(p);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].source, rows[0].source);
    // Its sidecar stays with the merged record, the others went back.
    assert!(p.join(&rows[0].sidecar).is_file());
    assert!(
        rows[1..]
            .iter()
            .all(|r| p.join(&r.source).with_extension("json").is_file())
    );
}

/// A manifest row that moves `source` to `destination` (content `sha`), the rest empty.
fn row(batch: &str, source: &str, destination: &str, sha: &str) -> Row {
    Row {
        batch: batch.into(),
        action: Action::Inbox,
        source: source.into(),
        destination: destination.into(),
        sha256: sha.into(),
        collected_date: "2026-01-01".into(),
        predicted_class: String::new(),
        confidence: None,
        slot: String::new(),
        run_id: String::new(),
        predicted_by: String::new(),
        serve_class: String::new(),
        serve_confidence: None,
        serve_slot: String::new(),
        serve_run_id: String::new(),
        sidecar: String::new(),
        reason: String::new(),
        merged_at: "2026-01-01T00:00:00Z".into(),
        labelled_class: String::new(),
        labelled_by: String::new(),
    }
}

#[test]
fn journal_and_manifest_paths_outside_the_project_are_refused() {
    // The project is root/proj, so that `../outside.png` from it is a real file: root/outside.png.
    let root = tempfile::tempdir().unwrap();
    let p = root.path().join("proj");
    let (train, _) = fashion_mnist();
    copy_classes(&train, &p.join("dataset"), &CLASSES, 5);
    write_config(&p, 1, "");
    let imgs = test_images(1, &CLASSES);
    let outside = root.path().join("outside.png");
    std::fs::copy(&imgs[0], &outside).unwrap();
    let elsewhere = root.path().join("elsewhere/abs.png");
    std::fs::create_dir_all(elsewhere.parent().unwrap()).unwrap();
    std::fs::copy(&imgs[1], &elsewhere).unwrap();
    let abs = elsewhere.to_str().unwrap().to_string();
    let (outside_sha, abs_sha) = (sha_file(&outside), sha_file(&elsewhere));
    // Same content as the victim inside the dataset: a replayed move would remove the source.
    let twin = "dataset/bag/twin-of-abs.png";
    std::fs::copy(&elsewhere, p.join(twin)).unwrap();
    let victims_intact = || {
        assert_eq!(
            sha_file(&outside),
            outside_sha,
            "{} touched",
            outside.display()
        );
        assert_eq!(
            sha_file(&elsewhere),
            abs_sha,
            "{} touched",
            elsewhere.display()
        );
    };
    let collected = p.join("collected_data");
    let good = upload(&collected, &std::fs::read(&imgs[2]).unwrap(), "ok.png");

    // A journal shipped with somebody else's dataset, replayed by the next merge.
    let journal = flora::feedback::merge::journal::Journal {
        op: flora::feedback::merge::journal::Op::Merge,
        batch: "20260101-000000-evil".into(),
        entries: [
            row(
                "20260101-000000-evil",
                "../outside.png",
                &format!("{INBOX}/stolen.png"),
                &outside_sha,
            ),
            row("20260101-000000-evil", &abs, twin, &abs_sha),
        ]
        .into_iter()
        .map(|row| flora::feedback::merge::journal::Entry {
            row,
            sidecar_sha256: None,
        })
        .collect(),
    };
    let state = p.join(INBOX).join(".merge");
    std::fs::create_dir_all(&state).unwrap();
    let jpath = state.join("20260101-000000-evil.merge.json");
    std::fs::write(&jpath, serde_json::to_vec(&journal).unwrap()).unwrap();
    let out = run(&p, &["merge"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("\"../outside.png\" contains `..`"), "{err}");
    assert!(err.contains(&format!("{abs:?} is outside")), "{err}");
    victims_intact();
    assert!(!p.join(INBOX).join("stolen.png").exists());
    assert!(p.join(twin).is_file());
    // The journal is not replayed again; its refused entries are kept for the record.
    assert!(!jpath.exists());
    assert!(
        state
            .join("20260101-000000-evil.merge.refused.json")
            .is_file()
    );
    // The real upload was merged all the same.
    assert!(!good.exists());
    let rows = manifest(&p);
    assert_eq!(rows.len(), 1);
    assert_eq!(p.join(&rows[0].source), good);
    ok(&p, &["merge"]);

    // A hand-made merge.csv: undo trusts none of its paths either.
    let mut rows = rows;
    rows.push(row(
        "evil",
        "collected_data/back.png",
        "../outside.png",
        &outside_sha,
    ));
    rows.push(row("evil", twin, &abs, &abs_sha));
    flora::feedback::merge::manifest::write_manifest(&p.join(INBOX).join("merge.csv"), &rows)
        .unwrap();
    let out = run(&p, &["merge", "--undo", "evil"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("\"../outside.png\" contains `..`"), "{err}");
    assert!(err.contains(&format!("{abs:?} is outside")), "{err}");
    victims_intact();
    assert!(!collected.join("back.png").exists());
    assert!(p.join(twin).is_file());
    assert_eq!(
        manifest(&p).len(),
        3,
        "the refused rows stay in the manifest"
    );
}

#[test]
fn undo_leaves_a_file_whose_content_changed_in_place() {
    let dir = project(5, 1);
    let p = dir.path();
    let collected = p.join("collected_data");
    let saved: Vec<PathBuf> = test_images(1, &CLASSES)
        .iter()
        .map(|i| upload(&collected, &std::fs::read(i).unwrap(), "a.png"))
        .collect();
    ok(p, &["merge"]);
    let rows = manifest(p);
    // Someone edits one merged image in the inbox.
    let edited = p.join(&rows[0].destination);
    std::fs::write(&edited, b"edited by hand").unwrap();
    let out = run(p, &["merge", "--undo", &rows[0].batch]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("content changed") && err.contains(&edited.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read(&edited).unwrap(), b"edited by hand");
    assert!(!p.join(&rows[0].source).exists());
    for r in &rows[1..] {
        assert!(p.join(&r.source).is_file(), "{} put back", r.source);
    }
    let left = manifest(p);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].destination, rows[0].destination);
    assert_eq!(saved.len(), rows.len());
}

/// Sets a file's modification time `secs_ago` seconds in the past.
fn age(path: &Path, secs_ago: u64) {
    let t = std::time::SystemTime::now() - Duration::from_secs(secs_ago);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// `flora merge` (plus `extra`) with `FLORA_MERGE_STATS`: (dataset files, hashed, from cache).
fn merge_stats(p: &Path, extra: &[&str]) -> (usize, usize, usize) {
    let out = flora(p)
        .env("FLORA_MERGE_STATS", "1")
        .arg("merge")
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("merge stats: "))
        .unwrap_or_else(|| panic!("no stats in {err}"));
    let n: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (n[0], n[1], n[2])
}

#[test]
fn merge_hashes_only_new_or_changed_dataset_files() {
    let dir = project(10, 1);
    let p = dir.path();
    for e in walkdir::WalkDir::new(p.join("dataset"))
        .into_iter()
        .flatten()
    {
        if e.file_type().is_file() {
            age(e.path(), 3600);
        }
    }
    let collected = p.join("collected_data");
    let imgs = test_images(2, &["bag"]);
    for i in &imgs {
        age(
            &upload(&collected, &std::fs::read(i).unwrap(), "a.png"),
            3600,
        );
    }
    assert_eq!(merge_stats(p, &[]), (40, 40, 0));
    let cache: Value =
        serde_json::from_slice(&std::fs::read(p.join(INBOX).join(".merge/hashes.json")).unwrap())
            .unwrap();
    assert_eq!(cache["files"].as_object().unwrap().len(), 40);
    // The two merged images are new to the cache; then nothing is read again.
    assert_eq!(merge_stats(p, &[]), (42, 2, 40));
    assert_eq!(merge_stats(p, &["--dry-run"]), (42, 0, 42));
    assert_eq!(merge_stats(p, &[]), (42, 0, 42));

    // A changed file is hashed again, and its new content is what counts for duplicates.
    let changed = files_of(&p.join("dataset/bag"))[0].clone();
    let original = std::fs::read(&changed).unwrap();
    std::fs::copy(&test_images(1, &["sneaker"])[0], &changed).unwrap();
    age(&changed, 1800);
    upload(&collected, &original, "old-content.png");
    let before = manifest(p).len();
    assert_eq!(merge_stats(p, &[]), (42, 1, 41));
    let rows = manifest(p);
    assert_eq!(rows.len(), before + 1);
    assert_eq!(
        rows.last().unwrap().action,
        Action::Inbox,
        "not a duplicate any more"
    );

    // A cache that names paths outside the dataset is not trusted for them.
    let mut cache: Value =
        serde_json::from_slice(&std::fs::read(p.join(INBOX).join(".merge/hashes.json")).unwrap())
            .unwrap();
    let some = cache["files"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    cache["files"]["../../etc/passwd"] = some.clone();
    cache["files"]["/etc/passwd"] = some;
    std::fs::write(
        p.join(INBOX).join(".merge/hashes.json"),
        serde_json::to_vec(&cache).unwrap(),
    )
    .unwrap();
    let (n, hashed, cached) = merge_stats(p, &[]);
    assert_eq!(n, hashed + cached);
    let cache: Value =
        serde_json::from_slice(&std::fs::read(p.join(INBOX).join(".merge/hashes.json")).unwrap())
            .unwrap();
    assert!(
        cache["files"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.contains("passwd"))
    );
}
