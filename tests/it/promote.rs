//! `flora promote` and `flora status`: blue/green slots, the gate, rollback, safety.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::common::*;
use flora::model::bundle::ModelBundle;
use flora::track::slots::{Registry, Slot};
use serde_json::Value;

/// A project with a poor run "weak" and a good run "strong" on the same data and split.
fn two_runs() -> tempfile::TempDir {
    let dir = project(40, 4);
    ok(
        dir.path(),
        &[
            "train",
            "--name",
            "weak",
            "--epochs",
            "1",
            "--lr",
            "0.00001",
            "--no-augment",
        ],
    );
    ok(dir.path(), &["train", "--name", "strong"]);
    dir
}

fn status(dir: &Path) -> Value {
    let s: Value = serde_json::from_str(&ok(dir, &["status", "--json"])).unwrap();
    s
}

fn slot<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["slot"] == name)
        .unwrap()
}

fn history(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("models/history.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "timestamp,action,slot,run_id,accuracy,user,live"
    );
    lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

fn run_id(dir: &Path, name: &str) -> String {
    let runs: Vec<Value> = ok(dir, &["runs", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    runs.iter().find(|r| r["run_name"] == name).unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn predicted_run(dir: &Path, slot: &str) -> String {
    let img = std::fs::read_dir(dir.join("dataset/bag"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let out = ok(
        dir,
        &["predict", "--json", "--slot", slot, img.to_str().unwrap()],
    );
    let v: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    v["model"]["run_id"].as_str().unwrap().to_string()
}

#[test]
fn promote_switch_rollback_gate_and_errors() {
    let dir = two_runs();
    let p = dir.path();
    let (weak, strong) = (run_id(p, "weak"), run_id(p, "strong"));

    // First promote: blue, and it becomes live.
    ok(p, &["promote", "weak"]);
    let s = status(p);
    assert_eq!(slot(&s, "blue")["live"], true);
    assert_eq!(slot(&s, "blue")["run_id"], weak.as_str());
    assert_eq!(slot(&s, "green")["filled"], false);
    assert_eq!(
        std::fs::read_to_string(p.join("models/LIVE"))
            .unwrap()
            .trim(),
        "blue"
    );
    let h = history(p);
    assert_eq!(h.len(), 1);
    assert_eq!(
        (
            h[0][1].as_str(),
            h[0][2].as_str(),
            h[0][3].as_str(),
            h[0][6].as_str()
        ),
        ("promote", "blue", weak.as_str(), "blue")
    );

    // A better run goes to the staging slot (green) and passes the gate.
    let out = ok(p, &["promote", "strong"]);
    assert!(out.contains("green"), "{out}");
    let s = status(p);
    assert_eq!(slot(&s, "green")["run_id"], strong.as_str());
    assert_eq!(slot(&s, "green")["live"], false);
    assert_eq!(slot(&s, "blue")["live"], true);
    assert!(
        slot(&s, "green")["accuracy"].as_f64().unwrap()
            >= slot(&s, "blue")["accuracy"].as_f64().unwrap()
    );
    assert_eq!(history(p).len(), 2);
    assert!(
        p.join("models/green/bundle.json").is_file() && p.join("models/green/slot.toml").is_file()
    );

    // Switch, then roll back.
    ok(p, &["promote", "--live", "green"]);
    assert_eq!(slot(&status(p), "green")["live"], true);
    let h = history(p);
    assert_eq!(
        (h[2][1].as_str(), h[2][2].as_str(), h[2][6].as_str()),
        ("live", "green", "green")
    );
    assert_eq!(predicted_run(p, "live"), strong);
    assert_eq!(predicted_run(p, "blue"), weak);
    assert_eq!(predicted_run(p, "green"), strong);
    ok(p, &["promote", "--rollback"]);
    assert_eq!(slot(&status(p), "blue")["live"], true);
    let h = history(p);
    assert_eq!(
        (h[3][1].as_str(), h[3][2].as_str(), h[3][6].as_str()),
        ("rollback", "blue", "blue")
    );
    assert_eq!(predicted_run(p, "live"), weak);
    // Eval picks the slot too: the default model is the live one.
    let out = run(p, &["eval", "--json"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("slot blue"));

    // The gate: with strong live, the weak run is refused for blue, unless --force.
    ok(p, &["promote", "--live", "green"]);
    let before = std::fs::read_link(p.join("models/blue")).unwrap();
    let err = fails(p, &["promote", "weak", "--to", "blue"]);
    assert!(
        err.contains("refused") && err.contains("live model (green)"),
        "{err}"
    );
    assert!(err.matches('%').count() >= 2, "both figures: {err}");
    assert_eq!(
        std::fs::read_link(p.join("models/blue")).unwrap(),
        before,
        "refused promote changes nothing"
    );
    ok(p, &["promote", "weak", "--to", "blue", "--force"]);
    assert_eq!(slot(&status(p), "blue")["run_id"], weak.as_str());
    assert_eq!(
        slot(&status(p), "green")["live"],
        true,
        "promote without --live keeps the live slot"
    );

    // Errors that change nothing.
    let live_before = std::fs::read_to_string(p.join("models/LIVE")).unwrap();
    let n = history(p).len();
    assert!(fails(p, &["promote", "no-such-run"]).contains("no run with id or name"));
    assert!(fails(p, &["promote", "weak", "--to", "purple"]).contains("purple"));
    assert!(fails(p, &["promote", "--live", "../x"]).contains("../x"));
    let store = flora::track::store::RunStore::new(p.join("runs"));
    let exp = store.experiment("test").unwrap();
    let mut failed = store.create_run(&exp, "crashed").unwrap();
    failed.end(flora::track::store::RunStatus::Failed).unwrap();
    assert!(fails(p, &["promote", "crashed"]).contains("is FAILED"));
    let mut empty = store.create_run(&exp, "no-model").unwrap();
    empty.end(flora::track::store::RunStatus::Finished).unwrap();
    assert!(fails(p, &["promote", "no-model"]).contains("has no model bundle"));
    assert_eq!(
        std::fs::read_to_string(p.join("models/LIVE")).unwrap(),
        live_before
    );
    assert_eq!(history(p).len(), n);

    std::fs::write(p.join("models/LIVE"), "purple\n").unwrap();
    let err = fails(p, &["status"]);
    assert!(err.contains("LIVE") && err.contains("corrupt"), "{err}");
    let err = fails(p, &["promote", "strong"]);
    assert!(err.contains("corrupt"), "{err}");
    std::fs::write(p.join("models/LIVE"), live_before).unwrap();

    // A second promote waits briefly for the lock, then fails clearly.
    let reg = Registry::new(p.join("models"));
    let lock = reg.lock(Duration::from_secs(1)).unwrap();
    let err = fails(p, &["promote", "strong", "--force"]);
    assert!(err.contains("another promote is running"), "{err}");
    drop(lock);
}

#[test]
fn readers_never_see_a_broken_slot_and_kill_9_leaves_slots_loadable() {
    let dir = two_runs();
    let p = dir.path().to_path_buf();
    ok(&p, &["promote", "weak"]);
    ok(&p, &["promote", "strong", "--force"]);

    // A reader loads the green slot over and over while promotes rewrite it.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let reader = {
        let (p, stop) = (p.clone(), stop.clone());
        std::thread::spawn(move || {
            let reg = Registry::new(p.join("models"));
            let mut loads = 0;
            while !stop.load(Ordering::SeqCst) {
                let dir = reg
                    .resolve(Slot::Green)
                    .unwrap()
                    .expect("green stays filled");
                ModelBundle::load(&dir).unwrap_or_else(|e| panic!("broken bundle seen: {e:#}"));
                loads += 1;
            }
            loads
        })
    };
    for name in ["weak", "strong", "weak", "strong"] {
        ok(&p, &["promote", name, "--to", "green", "--force"]);
    }
    stop.store(true, Ordering::SeqCst);
    let loads = reader.join().expect("reader saw only whole bundles");
    assert!(loads > 5, "the reader ran ({loads} loads)");

    // kill -9 in the middle of promotes: a kill "lands" when it leaves a new `models/.tmp-*`
    // behind (the bundle copy or the symlink made, not yet renamed into place). The kill time
    // adapts between the latest kill that found nothing started and the earliest that found
    // the promote finished, until two kills have landed, whatever the machine's speed.
    let temps = |p: &Path| -> BTreeSet<String> {
        std::fs::read_dir(p.join("models"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-"))
            .collect()
    };
    let (mut early, mut late) = (0u64, 3000u64);
    let (mut landed, mut tries) = (0, 0);
    while landed < 2 {
        tries += 1;
        assert!(
            tries <= 40,
            "only {landed} of {tries} kills landed mid-promote (window {early}..{late} ms)"
        );
        let before = temps(p.as_path());
        let mut child = flora(&p)
            .args([
                "promote",
                if tries % 2 == 0 { "weak" } else { "strong" },
                "--to",
                "green",
                "--force",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let at = (early + late) / 2;
        std::thread::sleep(Duration::from_millis(at));
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        let _ = child.wait();
        let left = temps(p.as_path()).difference(&before).count() > 0;
        if finished {
            late = at;
        } else if left {
            landed += 1;
        } else {
            early = at;
        }
        if late <= early + 1 {
            // Converged on a window narrower than the timer: widen it and go on.
            (early, late) = (early.saturating_sub(50), late + 50);
        }
        let reg = Registry::new(p.join("models"));
        assert!(
            reg.live().unwrap().is_some(),
            "LIVE is valid after kill {tries}"
        );
        for s in Slot::ALL {
            let d = reg
                .resolve(s)
                .unwrap()
                .unwrap_or_else(|| panic!("{s} filled after kill {tries}"));
            ModelBundle::load(&d).unwrap_or_else(|e| panic!("{s} loads after kill {tries}: {e:#}"));
            assert!(reg.info(s).unwrap().is_some());
        }
    }
    eprintln!("{landed} of {tries} kills landed mid-promote");
    // And the registry still works afterwards.
    ok(&p, &["promote", "strong", "--to", "green", "--force"]);
    ok(&p, &["status"]);
}

/// A `flora promote` started in the background, with its stderr lines collected.
struct Promoting {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Promoting {
    fn start(dir: &Path, args: &[&str]) -> Self {
        let mut child = flora(dir)
            .arg("promote")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until a stderr line contains `text` (panics if the promote ends first).
    fn wait_for(&mut self, text: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while std::time::Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let hit = l.contains(text);
                    self.seen.push(l);
                    if hit {
                        return;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => panic!("promote ended before {text:?}: {:?}", self.seen),
            }
        }
        panic!("no {text:?} in time: {:?}", self.seen);
    }

    /// Waits for the end; asserts success and returns all of stderr.
    fn finish(mut self) -> String {
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.iter());
        let err = self.seen.join("\n");
        assert!(status.success(), "promote failed: {err}");
        err
    }
}

#[test]
fn promote_races_hand_made_slots_and_odd_run_ids() {
    let dir = two_runs();
    let p = dir.path();
    let (weak, strong) = (run_id(p, "weak"), run_id(p, "strong"));
    let reg = Registry::new(p.join("models"));
    let run_of = |s: &str| slot(&status(p), s)["run_id"].as_str().unwrap().to_string();

    // Two first promotes at once: the gates run side by side (the lock is held here meanwhile,
    // so neither can install before both have looked); one fills blue and makes it live, the
    // other sees that and goes to green, gated against blue.
    let lock = reg.lock(Duration::from_secs(1)).unwrap();
    let mut a = Promoting::start(p, &["weak", "--force"]);
    let mut b = Promoting::start(p, &["strong", "--force"]);
    a.wait_for("gate: evaluating");
    b.wait_for("gate: evaluating");
    drop(lock);
    let both = format!("{}\n{}", a.finish(), b.finish());
    assert!(both.contains("slots changed while the gate ran"), "{both}");
    assert!(
        both.contains("vs live blue"),
        "the second was gated: {both}"
    );
    let s = status(p);
    assert_eq!(slot(&s, "blue")["live"], true);
    let filled = std::collections::BTreeSet::from(["blue", "green"].map(run_of));
    assert_eq!(
        filled,
        std::collections::BTreeSet::from([weak.clone(), strong.clone()]),
        "{s}"
    );

    // A switch while the gate runs: the promote re-reads LIVE under the lock and fills the
    // slot that is not live now, never the one that just became live.
    ok(p, &["promote", "--live", "blue"]);
    let green_run = run_of("green");
    let lock = reg.lock(Duration::from_secs(1)).unwrap();
    let mut c = Promoting::start(p, &["weak", "--force"]);
    c.wait_for("gate: evaluating");
    reg.set_live(&lock, Slot::Green).unwrap();
    drop(lock);
    let err = c.finish();
    assert!(
        err.contains("live was blue, is green") && err.contains("vs live green"),
        "{err}"
    );
    let s = status(p);
    assert_eq!(slot(&s, "green")["live"], true);
    assert_eq!(
        run_of("green"),
        green_run,
        "the live slot was not overwritten"
    );
    assert_eq!(run_of("blue"), weak);

    // A slot made by hand as a real folder is kept as a version, also after later promotes.
    let blue = p.join("models/blue");
    let model = std::fs::canonicalize(&blue).unwrap();
    std::fs::remove_file(&blue).unwrap();
    std::fs::create_dir(&blue).unwrap();
    for e in std::fs::read_dir(&model).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), blue.join(e.file_name())).unwrap();
    }
    std::fs::write(blue.join("notes.txt"), "hand-made").unwrap();
    ok(p, &["promote", "strong", "--to", "blue", "--force"]);
    ok(p, &["promote", "weak", "--to", "blue", "--force"]);
    let kept: Vec<_> = std::fs::read_dir(p.join("models/.versions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| name_of(d).starts_with("blue-manual-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        std::fs::read_to_string(kept[0].join("notes.txt")).unwrap(),
        "hand-made"
    );

    // A run id that is short and not ASCII (a hand-made or foreign run) never panics.
    let (_, run_dir) = {
        let store = flora::track::store::RunStore::new(p.join("runs"));
        let r = store.find("strong").unwrap();
        ((), r.dir)
    };
    let meta = run_dir.join("meta.yaml");
    let text = std::fs::read_to_string(&meta).unwrap();
    let text = text.replace(&strong, "aéééé");
    std::fs::write(&meta, text).unwrap();
    let out = ok(p, &["promote", "strong", "--to", "blue", "--force"]);
    assert!(out.contains("(aéééé)"), "{out}");
    assert!(ok(p, &["status"]).contains("aéééé"));
    assert!(ok(p, &["runs"]).contains("aéééé"));
}
