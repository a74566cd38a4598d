//! `flora label` for the tests: the running process, and an inbox filled by `flora merge` from
//! real images uploaded as serve saves them.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::common::*;
use flora::model::Scored;
use flora::serving::collect::{self, Sidecar};
use flora::util::fingerprint::{hex, sha256};

pub const INBOX: &str = "dataset/_UNLABELED_SORT_ME";

/// A running `flora label`, stopped with SIGTERM when dropped.
pub struct Label {
    child: Child,
    pub url: String,
    pub out: Arc<Mutex<String>>,
    pub err: Arc<Mutex<String>>,
}

fn drain(from: impl std::io::Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let mut l = into.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
}

impl Label {
    pub fn start(dir: &Path, args: &[&str], token: Option<&str>) -> Label {
        let mut cmd = flora(dir);
        cmd.args(["label", "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(t) = token {
            cmd.env("FLORA_LABEL_TOKEN", t);
        }
        let mut child = cmd.spawn().expect("starting flora label");
        let (out, err) = (Arc::default(), Arc::default());
        drain(child.stdout.take().unwrap(), Arc::clone(&out));
        drain(child.stderr.take().unwrap(), Arc::clone(&err));
        let start = Instant::now();
        loop {
            let text = out.lock().unwrap().clone();
            if let Some(url) = text
                .lines()
                .find_map(|l| l.strip_prefix("flora label: open "))
                .map(|u| u.split(' ').next().unwrap().to_string())
            {
                return Label {
                    child,
                    url,
                    out,
                    err,
                };
            }
            if let Ok(Some(s)) = child.try_wait() {
                panic!("flora label exited ({s}):\n{}", err.lock().unwrap());
            }
            assert!(start.elapsed() < Duration::from_secs(60), "no URL printed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address without a trailing `/` nor `?token=...`.
    pub fn base(&self) -> String {
        let u = self.url.split('?').next().unwrap();
        u.trim_end_matches('/').to_string()
    }

    /// Stops it (SIGTERM) and returns what it printed on stdout.
    pub fn stop(mut self) -> String {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}: {}", self.err.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
        self.out.lock().unwrap().clone()
    }
}

impl Drop for Label {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Saves `bytes` under collected_data as serve does, with serve's guess `class`.
pub fn upload(collected: &Path, bytes: &[u8], class: &str) {
    let mut side = Sidecar {
        id: collect::new_id(),
        time: jiff::Zoned::now().to_string(),
        file: String::new(),
        slot: Some("green".into()),
        run_id: Some("serve-run".into()),
        predicted_class: class.into(),
        confidence: 0.61,
        top_k: vec![Scored {
            class: class.into(),
            confidence: 0.61,
        }],
        client_filename: Some("phone.png".into()),
        bytes: 0,
        sha256: String::new(),
    };
    collect::save(collected, bytes, image::ImageFormat::Png, &mut side).unwrap();
}

/// A project whose inbox `flora merge` filled with `per_class` real test images of each
/// class (and of `coat`, a class the model does not know), pre-sorted by `model` if given.
pub fn inbox_project(per_class: usize, model: Option<&Path>) -> tempfile::TempDir {
    let dir = project(10, 1);
    write_config(dir.path(), 1, "[class_info.bag]\ncare = \"wipe clean\"\n");
    let (_, test) = fashion_mnist();
    let collected = dir.path().join("collected_data");
    for class in CLASSES.iter().chain(&["coat"]) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(test.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.iter().take(per_class) {
            upload(&collected, &std::fs::read(f).unwrap(), class);
        }
    }
    let model = model.map(|m| m.to_string_lossy().into_owned());
    let mut args = vec!["merge"];
    if let Some(m) = &model {
        args.extend(["--model", m]);
    }
    ok(dir.path(), &args);
    dir
}

/// Every file under `root` (relative path → content hash), without merge's bookkeeping.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(root).unwrap().to_string_lossy();
            (
                rel.into_owned(),
                hex(&sha256(&std::fs::read(e.path()).unwrap())),
            )
        })
        .filter(|(k, _)| !k.ends_with("merge.csv") && !k.split('/').any(|c| c == ".merge"))
        .collect()
}

pub fn manifest(dir: &Path) -> Vec<flora::feedback::merge::Row> {
    csv::Reader::from_path(dir.join(INBOX).join("merge.csv"))
        .unwrap()
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap()
}
