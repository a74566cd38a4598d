//! `flora runs list/show/compare/delete/restore/gc` on real runs trained on the committed
//! Fashion-MNIST images, and the PNGs they and training write.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::common::*;
use serde_json::Value;

/// `flora args...` in `dir` with an 80-column screen.
fn run80(dir: &Path, args: &[&str]) -> Output {
    flora(dir)
        .env("COLUMNS", "80")
        .args(args)
        .output()
        .expect("running flora")
}

fn ok80(dir: &Path, args: &[&str]) -> String {
    let out = run80(dir, args);
    assert!(
        out.status.success(),
        "flora {args:?} failed\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn names(dir: &Path, args: &[&str]) -> Vec<String> {
    let mut all = vec!["runs", "list", "--json"];
    all.extend_from_slice(args);
    json_lines(&ok(dir, &all))
        .iter()
        .map(|r| r["run_name"].as_str().unwrap().to_string())
        .collect()
}

/// The run folder of the run called `name`.
fn run_dir(dir: &Path, name: &str) -> PathBuf {
    let store = flora::track::store::RunStore::new(dir.join("runs"));
    store
        .all_runs()
        .unwrap()
        .into_iter()
        .find(|r| r.run_name == name)
        .unwrap_or_else(|| panic!("no run {name}"))
        .dir
}

/// A PNG that decodes, with its size.
fn png_size(path: &Path) -> (u32, u32) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rgb = img.to_rgb8();
    // Not a blank canvas: dark text and coloured lines are there.
    assert!(
        rgb.pixels().filter(|p| p.0[0] < 80).count() > 200,
        "{} looks empty",
        path.display()
    );
    (img.width(), img.height())
}

#[test]
fn list_show_and_compare_real_runs() {
    let dir = project(12, 2);
    let p = dir.path();
    ok(p, &["train", "--name", "base-run"]);
    ok(
        p,
        &[
            "train", "--name", "fast-lr", "--lr", "0.01", "--epochs", "1",
        ],
    );

    // Bare `flora runs` is `flora runs list`; the table fits 80 columns, newest first.
    let table = ok80(p, &["runs"]);
    assert_eq!(table, ok80(p, &["runs", "list"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for h in [
        "name", "id", "status", "arch", "ep", "val%", "eval%", "data", "time", "started",
    ] {
        assert!(lines[0].split_whitespace().any(|w| w == h), "{h}: {table}");
    }
    assert!(lines.iter().all(|l| l.chars().count() <= 80), "{table}");
    assert!(lines[1].starts_with("fast-lr") && lines[2].starts_with("base-run"));
    assert!(
        lines[2].contains("FINISHED") && lines[2].contains("cnn"),
        "{table}"
    );

    // JSON: one object per run with the figures of the table.
    let runs = json_lines(&ok(p, &["runs", "--json"]));
    assert_eq!(runs.len(), 2);
    let base = &runs[1];
    assert_eq!(base["run_name"], "base-run");
    assert_eq!(base["epochs"], 2);
    assert_eq!(runs[0]["epochs"], 1);
    assert_eq!(base["arch"], "cnn");
    assert_eq!(base["lifecycle_stage"], "active");
    assert!(
        base["data_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(base["data_fingerprint"], runs[0]["data_fingerprint"]);
    assert!(base["duration_seconds"].as_f64().unwrap() > 0.0);
    let acc = base["val_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    // The short fingerprint in the table is the JSON's.
    let fp = base["data_fingerprint"].as_str().unwrap();
    assert!(lines[2].contains(&fp[7..13]), "{table}");

    // Filters and sort.
    assert_eq!(names(p, &["--name", "fast*"]), ["fast-lr"]);
    assert_eq!(names(p, &["--name", "*-run"]), ["base-run"]);
    assert_eq!(names(p, &["--status", "finished"]).len(), 2);
    assert!(names(p, &["--status", "KILLED,FAILED"]).is_empty());
    assert!(names(p, &["--arch", "mobilenet_v2"]).is_empty());
    assert_eq!(names(p, &["--arch", "cnn"]).len(), 2);
    assert_eq!(names(p, &["--sort", "name"]), ["base-run", "fast-lr"]);
    assert_eq!(
        names(p, &["--sort", "name", "--reverse"]),
        ["fast-lr", "base-run"]
    );
    assert_eq!(names(p, &["--sort", "epochs"]), ["base-run", "fast-lr"]);
    assert_eq!(names(p, &["--limit", "1"]), ["fast-lr"]);
    let by_acc = json_lines(&ok(
        p,
        &["runs", "list", "--json", "--sort", "val_accuracy"],
    ));
    let accs: Vec<f64> = by_acc
        .iter()
        .map(|r| r["val_accuracy"].as_f64().unwrap())
        .collect();
    assert!(accs[0] >= accs[1], "{accs:?}");
    let err = fails(p, &["runs", "list", "--name", "[oops"]);
    assert!(err.contains("not a valid glob"), "{err}");
    let err = fails(p, &["runs", "list", "--sort", "colour"]);
    assert!(err.contains("val_accuracy"), "{err}");
    let none = run(p, &["runs", "list", "--status", "crashed"]);
    assert!(none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no run matches"));

    // Show: params, metrics (last and best), tags, artifacts, per-epoch results.
    let show = ok80(p, &["runs", "show", "base-run"]);
    for want in [
        "params",
        "train.learning_rate",
        "metrics",
        "best_val_accuracy",
        "tags",
        "flora.data_fingerprint",
        "artifacts",
        "curves.png",
        "model/bundle.json",
        "epochs",
        "val_acc",
    ] {
        assert!(show.contains(want), "{want}:\n{show}");
    }
    let epochs_part = show.split("\nepochs\n").nth(1).unwrap();
    assert_eq!(epochs_part.lines().count(), 3, "{show}");
    // By unique id prefix too, and as JSON.
    let id = base["run_id"].as_str().unwrap();
    let j: Value = serde_json::from_str(&ok(p, &["runs", "show", &id[..10], "--json"])).unwrap();
    assert_eq!(j["run"]["run_name"], "base-run");
    assert_eq!(j["epochs"].as_array().unwrap().len(), 2);
    assert_eq!(j["epochs"][1]["epoch"], 2);
    assert_eq!(j["params"]["train.epochs"], "2");
    assert_eq!(
        j["metrics"]["val_accuracy"]["best"].as_f64().unwrap(),
        acc,
        "the best val accuracy is the run's"
    );
    let files: Vec<&str> = j["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    for f in [
        "curves.png",
        "results.csv",
        "split.csv",
        "config.toml",
        "model/bundle.json",
    ] {
        assert!(files.contains(&f), "{f}: {files:?}");
    }
    let err = fails(p, &["runs", "show", "no-such-run"]);
    assert!(err.contains("no run with id or name"), "{err}");

    // Every run's curves.png: two panels side by side under a title.
    for name in ["base-run", "fast-lr"] {
        let (w, h) = png_size(&run_dir(p, name).join("artifacts/curves.png"));
        assert!(
            (1000..=1600).contains(&w) && (400..=700).contains(&h),
            "{w}x{h}"
        );
    }

    // Compare: the params that differ (and only those), metrics side by side, the PNG.
    let out = ok80(
        p,
        &["runs", "compare", "base-run", "fast-lr", "--out", "cmp.png"],
    );
    let params = out.split("\nmetrics\n").next().unwrap();
    assert!(
        params.contains("train.learning_rate") && params.contains("0.01"),
        "{out}"
    );
    assert!(params.contains("train.epochs"), "{out}");
    assert!(
        !params.contains("data.seed") && !params.contains("train.batch_size"),
        "{out}"
    );
    assert!(out.contains("best val accuracy") && out.contains("all trained on the same data"));
    assert!(out.lines().all(|l| l.chars().count() <= 80), "{out}");
    assert!(
        out.contains("wrote the curves of 2 runs to cmp.png"),
        "{out}"
    );
    let (w, h) = png_size(&p.join("cmp.png"));
    assert!(
        (1000..=1600).contains(&w) && (400..=700).contains(&h),
        "{w}x{h}"
    );
    // Without --out: a name from the run ids, in the current folder.
    let out = ok(p, &["runs", "compare", "fast-lr", &id[..12]]);
    let short_fast = runs[0]["run_id"].as_str().unwrap()[..8].to_string();
    let default = format!("compare-{short_fast}-{}.png", &id[..8]);
    assert!(out.contains(&default), "{out}");
    png_size(&p.join(&default));
    let err = fails(p, &["runs", "compare", "base-run", &id[..8]]);
    assert!(err.contains("named twice"), "{err}");
    fails(p, &["runs", "compare", "base-run"]);
}

#[test]
fn delete_restore_gc_and_model_choice() {
    let dir = project(10, 1);
    let p = dir.path();
    ok(p, &["train", "--name", "old"]);
    ok(p, &["train", "--name", "new"]);
    let (_, test) = fashion_mnist();
    let image = std::fs::read_dir(test.join("bag"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let image = image.to_str().unwrap();
    let model_of = |args: &[&str]| {
        let out = run(p, args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .find(|l| l.starts_with("model: "))
            .unwrap()
            .to_string()
    };
    assert!(model_of(&["predict", image]).contains("run new"));

    // Delete: MLflow's soft delete, in place.
    let new_dir = run_dir(p, "new");
    let out = ok(p, &["runs", "delete", "new"]);
    assert!(
        out.contains("deleted run new") && out.contains("restore"),
        "{out}"
    );
    let meta = yaml(&new_dir.join("meta.yaml"));
    assert_eq!(meta["lifecycle_stage"], "deleted");
    assert!(meta["deleted_time"].parse::<u64>().unwrap() > 0);
    assert_eq!(meta["status"], "3", "the status stays FINISHED");
    assert!(new_dir.join("artifacts/model/bundle.json").is_file());
    assert_eq!(names(p, &[]), ["old"]);
    assert_eq!(names(p, &["--all"]).len(), 2);
    assert_eq!(names(p, &["--deleted"]), ["new"]);
    assert!(ok80(p, &["runs", "list", "--all"]).contains("DELETED"));
    let deleted = json_lines(&ok(p, &["runs", "list", "--deleted", "--json"]));
    assert_eq!(deleted[0]["lifecycle_stage"], "deleted");
    // Deleting again says so; show still shows it, marked.
    assert!(ok(p, &["runs", "delete", "new"]).contains("already deleted"));
    assert!(ok(p, &["runs", "show", "new"]).contains("DELETED"));

    // Model choice ignores it: the newest remaining run, and --run names it as deleted.
    assert!(model_of(&["predict", image]).contains("run old"));
    let err = fails(p, &["predict", "--run", "new", image]);
    assert!(
        err.contains("is deleted") && err.contains("flora runs restore"),
        "{err}"
    );

    // Restore: active again, deleted_time gone, chosen again.
    let out = ok(p, &["runs", "restore", "new"]);
    assert!(out.contains("restored run new"), "{out}");
    let meta = yaml(&new_dir.join("meta.yaml"));
    assert_eq!(meta["lifecycle_stage"], "active");
    assert!(!meta.contains_key("deleted_time"), "{meta:?}");
    assert!(model_of(&["predict", image]).contains("run new"));
    let err = fails(p, &["runs", "restore", "new"]);
    assert!(err.contains("is not deleted"), "{err}");

    // Eval's confusion matrix: a real plot of bounded size.
    ok(p, &["eval", "--run", "new"]);
    let (w, h) = png_size(&new_dir.join("artifacts/eval/confusion_matrix.png"));
    assert!(
        (300..=1600).contains(&w) && (250..=1600).contains(&h),
        "{w}x{h}"
    );

    // A run a slot holds: refused without --force, and gc keeps it while the slot holds it.
    ok(p, &["promote", "new", "--to", "blue", "--force"]);
    let err = fails(p, &["runs", "delete", "new"]);
    assert!(
        err.contains("slot blue") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        yaml(&new_dir.join("meta.yaml"))["lifecycle_stage"],
        "active"
    );
    let out = run(p, &["runs", "delete", "new", "--force"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("slot blue"));

    // gc: dry run changes nothing; --older-than keeps young deletions; then old goes for good.
    let old_dir = run_dir(p, "old");
    ok(p, &["runs", "delete", "old"]);
    let out = ok(p, &["runs", "gc", "--dry-run"]);
    assert!(out.contains("would remove run old"), "{out}");
    assert!(old_dir.is_dir());
    let out = ok(p, &["runs", "gc", "--older-than", "1d"]);
    assert!(
        out.contains("deleted only") && out.contains("no deleted run to remove"),
        "{out}"
    );
    assert!(old_dir.is_dir());
    let out = ok(p, &["runs", "gc"]);
    assert!(out.contains("removed run old"), "{out}");
    assert!(
        out.contains("kept deleted run new") && out.contains("slot blue"),
        "{out}"
    );
    assert!(!old_dir.exists());
    assert!(new_dir.is_dir());
    assert_eq!(names(p, &["--all"]), ["new"]);
    // Nothing but the run folder went: the experiment and the store are intact.
    assert!(old_dir.parent().unwrap().join("meta.yaml").is_file());
    assert!(
        std::fs::read_dir(old_dir.parent().unwrap())
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(".gc-"))
    );
}
