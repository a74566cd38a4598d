//! A local run as MLflow's REST API takes it: params, tags and metric history cut into
//! `runs/log-batch` requests within the server's limits, and the artifact files to upload.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::track::store::CHECKPOINTS_DIR;
use crate::track::store::{self, RunInfo};

/// MLflow's `runs/log-batch` limits: entries of each kind, and in all, per request.
pub const MAX_METRICS: usize = 1000;
pub const MAX_PARAMS: usize = 100;
pub const MAX_TAGS: usize = 100;
pub const MAX_ENTRIES: usize = 1000;

/// Tag on the remote run naming the local run it was pushed from.
pub const SOURCE_TAG: &str = "flora.source_run_id";
/// Tag on the remote run set last, once everything else was sent.
pub const COMPLETE_TAG: &str = "flora.push_complete";
/// Prefix of the local tag recording the remote run id, per server.
pub const PUSHED_PREFIX: &str = "flora.pushed.";

/// Local tags that describe this machine's process or earlier pushes: never sent.
fn local_only(key: &str) -> bool {
    key.starts_with("flora.owner.") || key.starts_with(PUSHED_PREFIX) || key == "mlflow.parentRunId"
}

/// One metric value as the API takes it.
fn metric(key: &str, (timestamp, value, step): (u64, f64, u64)) -> Value {
    json!({"key": key, "value": value, "timestamp": timestamp, "step": step})
}

/// Everything a run logged, ready to send.
pub struct Payload {
    pub params: Vec<Value>,
    pub tags: Vec<Value>,
    pub metrics: Vec<Value>,
}

impl Payload {
    /// The run's params, tags (but the local-only ones, plus `extra_tags`) and every metric
    /// value with its step and timestamp (non-finite values, which JSON cannot carry, left out).
    pub fn of(info: &RunInfo, extra_tags: &[(String, String)]) -> Result<Self> {
        let params = store::read_params(info)?
            .into_iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        let mut tags: Vec<Value> = store::read_tags(info)?
            .into_iter()
            .filter(|(k, _)| !local_only(k))
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        tags.extend(
            extra_tags
                .iter()
                .map(|(k, v)| json!({"key": k, "value": v})),
        );
        let mut metrics = Vec::new();
        let dir = info.dir.join("metrics");
        let mut keys: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .flatten()
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|k| !k.starts_with(".tmp-"))
                .collect(),
            Err(_) => Vec::new(),
        };
        keys.sort();
        for key in keys {
            for m in store::read_metric(info, &key)? {
                if m.1.is_finite() {
                    metrics.push(metric(&key, m));
                }
            }
        }
        Ok(Self {
            params,
            tags,
            metrics,
        })
    }

    /// `runs/log-batch` bodies for `run_id`: params and tags first (each within its limit),
    /// then metrics, no request over [`MAX_ENTRIES`].
    pub fn batches(&self, run_id: &str) -> Vec<Value> {
        let mut out = Vec::new();
        for chunk in self.params.chunks(MAX_PARAMS) {
            out.push(json!({"run_id": run_id, "params": chunk}));
        }
        for chunk in self.tags.chunks(MAX_TAGS) {
            out.push(json!({"run_id": run_id, "tags": chunk}));
        }
        for chunk in self.metrics.chunks(MAX_METRICS.min(MAX_ENTRIES)) {
            out.push(json!({"run_id": run_id, "metrics": chunk}));
        }
        out
    }
}

/// A run's artifacts as a push sends them.
#[derive(Debug, Default)]
pub struct Artifacts {
    /// Relative `/`-separated path and local file, for each file to upload.
    pub files: Vec<(String, PathBuf)>,
    /// What is left out, said in words (`checkpoints/` is resume state, kept local).
    pub skipped: Vec<String>,
}

/// The run's artifact files to upload, and the folders left out.
pub fn artifact_files(info: &RunInfo) -> Result<Artifacts> {
    let root = info.artifacts();
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    if !root.is_dir() {
        return Ok(Artifacts { files, skipped });
    }
    let mut walk = walkdir::WalkDir::new(&root).sort_by_file_name().into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.with_context(|| format!("listing {}", root.display()))?;
        let rel = relative(&root, entry.path());
        let name = entry.file_name().to_string_lossy();
        if entry.depth() > 0 && name.starts_with(".tmp-") {
            if entry.file_type().is_dir() {
                walk.skip_current_dir();
            }
            continue;
        }
        if entry.depth() == 1 && entry.file_type().is_dir() && name == CHECKPOINTS_DIR {
            skipped.push(format!("{CHECKPOINTS_DIR}/ (resume state, kept local)"));
            walk.skip_current_dir();
            continue;
        }
        if entry.file_type().is_file() {
            files.push((rel, entry.into_path()));
        }
    }
    Ok(Artifacts { files, skipped })
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// The local tag key recording where a run was pushed on the server at `url`
/// (`flora.pushed.<host_port_path>`, in the characters a tag key may hold).
pub fn pushed_tag(url: &str) -> String {
    let url = super::client::without_userinfo(url);
    let rest = url
        .trim_end_matches('/')
        .split_once("://")
        .map_or(url.as_str(), |(_, r)| r);
    let clean: String = rest
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut key = format!("{PUSHED_PREFIX}{clean}");
    key.truncate(250);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_the_limits() {
        let p = Payload {
            params: (0..250).map(|i| json!({"key": i.to_string()})).collect(),
            tags: (0..5).map(|i| json!({"key": i.to_string()})).collect(),
            metrics: (0..2500).map(|i| json!({"key": i.to_string()})).collect(),
        };
        let b = p.batches("r");
        let count = |v: &Value, k: &str| v.get(k).and_then(Value::as_array).map_or(0, Vec::len);
        assert_eq!(b.len(), 3 + 1 + 3);
        for v in &b {
            assert!(count(v, "params") <= MAX_PARAMS);
            assert!(count(v, "tags") <= MAX_TAGS);
            assert!(count(v, "metrics") <= MAX_METRICS);
            assert!(count(v, "params") + count(v, "tags") + count(v, "metrics") <= MAX_ENTRIES);
        }
        let total: usize = b.iter().map(|v| count(v, "metrics")).sum();
        assert_eq!(total, 2500);
    }

    #[test]
    fn pushed_tags_are_valid_keys() {
        assert_eq!(
            pushed_tag("http://127.0.0.1:5000/"),
            "flora.pushed.127.0.0.1_5000"
        );
        assert_eq!(
            pushed_tag("https://dagshub.com/me/flowers.mlflow"),
            "flora.pushed.dagshub.com_me_flowers.mlflow"
        );
        assert_eq!(
            pushed_tag("http://me:s3cret@127.0.0.1:5000/"),
            "flora.pushed.127.0.0.1_5000"
        );
    }
}
