//! `flora runs push RUN... --to URL`: copies runs to an MLflow tracking server over its REST
//! API. The experiment is found or created by name; each run is created with its start time,
//! gets its params, tags and full metric history (steps and timestamps kept) in `log-batch`
//! requests within the server's limits, its artifacts through the server's artifact proxy
//! (`mlflow server --serve-artifacts`) when it has one, and finally its status and end time.
//!
//! Pushing twice does not duplicate: the remote run id is recorded in the local tag
//! `flora.pushed.<server>` once a push completes, and the remote run carries
//! `flora.source_run_id`, so a push that was cut off is found and replaced. A failure changes
//! nothing locally.

pub mod client;
pub mod mapping;

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::track::store::{self, Owner, Run, RunInfo, RunStatus, RunStore};
use client::{Client, encode_path, is_not_found};
use mapping::{COMPLETE_TAG, Payload, SOURCE_TAG, artifact_files, pushed_tag};

/// What happened to one run.
pub enum Pushed {
    /// Sent now: the remote run id and what was left out.
    New { remote: String, notes: Vec<String> },
    /// Already on the server.
    Already { remote: String },
}

/// The tracking server: `to` (the `--to` flag), else `MLFLOW_TRACKING_URI`.
pub fn tracking_url(to: Option<&str>) -> Result<String> {
    match to {
        Some(u) => Ok(u.to_string()),
        None => std::env::var("MLFLOW_TRACKING_URI")
            .ok()
            .filter(|u| !u.is_empty())
            .context("give the tracking server with --to URL (or set MLFLOW_TRACKING_URI)"),
    }
}

/// Pushes the runs that `keys` name (ids, id prefixes or names) to the server at `url`,
/// parents before their children. `done` hears of each run as it is pushed, with the server's
/// base URL.
pub fn push_runs(
    store: &RunStore,
    url: &str,
    keys: &[String],
    experiment: Option<&str>,
    mut done: impl FnMut(&RunInfo, &Pushed, &str),
) -> Result<()> {
    let client = Client::new(url)?;
    let mut runs: Vec<RunInfo> = Vec::new();
    for key in keys {
        let info = store.find(key)?;
        if info.status == RunStatus::Running && info.owner() == Owner::Alive {
            bail!(
                "run {} is still training: push it when it has ended",
                info.run_name
            );
        }
        if !runs.iter().any(|r| r.run_id == info.run_id) {
            runs.push(info);
        }
    }
    // Parents first, so that their children can point at their remote ids.
    runs.sort_by_key(|r| {
        store::read_tags(r)
            .map(|t| t.contains_key("mlflow.parentRunId"))
            .unwrap_or(false)
    });
    let mut remote_ids: HashMap<String, String> = HashMap::new();
    for info in &runs {
        let pushed = push_one(&client, info, experiment, &remote_ids)
            .with_context(|| format!("pushing run {} ({})", info.run_name, info.run_id))?;
        done(info, &pushed, &client.base);
        let remote = match pushed {
            Pushed::New { remote, .. } | Pushed::Already { remote } => remote,
        };
        remote_ids.insert(info.run_id.clone(), remote);
    }
    Ok(())
}

/// Whether a remote run (the `run` object of `runs/get`) is a complete, live push.
fn complete(run: &Value) -> bool {
    let active = run["info"]["lifecycle_stage"].as_str() != Some("deleted");
    let done = run["data"]["tags"]
        .as_array()
        .is_some_and(|tags| tags.iter().any(|t| t["key"] == COMPLETE_TAG));
    active && done
}

fn push_one(
    client: &Client,
    info: &RunInfo,
    experiment: Option<&str>,
    remote_ids: &HashMap<String, String>,
) -> Result<Pushed> {
    let key = pushed_tag(&client.base);
    let tags = store::read_tags(info)?;
    let local = Run::open(info.clone());
    // A run pushed before: still there?
    if let Some(remote) = tags.get(&key) {
        match client.get("runs/get", &[("run_id", remote.trim())]) {
            Ok(v) if complete(&v["run"]) => {
                return Ok(Pushed::Already {
                    remote: remote.trim().to_string(),
                });
            }
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    let name = match experiment {
        Some(n) => n.to_string(),
        None => store::experiment_name(info)?,
    };
    let experiment_id = find_or_create_experiment(client, &name)?;
    // A push of this run that completed without its local record, or was cut off.
    let found = client.post(
        "runs/search",
        &json!({
            "experiment_ids": [experiment_id],
            "filter": format!("tags.`{SOURCE_TAG}` = '{}'", info.run_id),
            "run_view_type": "ACTIVE_ONLY",
            "max_results": 100,
        }),
    )?;
    for r in found["runs"].as_array().into_iter().flatten() {
        let id = r["info"]["run_id"].as_str().unwrap_or_default().to_string();
        if complete(r) {
            local.set_tag(&key, &id)?;
            return Ok(Pushed::Already { remote: id });
        }
        client.post("runs/delete", &json!({"run_id": id}))?;
    }

    let mut notes = Vec::new();
    let mut extra = vec![(SOURCE_TAG.to_string(), info.run_id.clone())];
    if let Some(parent) = tags.get("mlflow.parentRunId") {
        let parent_remote = remote_ids.get(parent).cloned().or_else(|| {
            let dir = info.dir.with_file_name(parent);
            store::read_run_meta(&dir)
                .ok()
                .and_then(|p| store::read_tags(&p).ok())
                .and_then(|t| t.get(&key).map(|s| s.trim().to_string()))
        });
        match parent_remote {
            Some(p) => extra.push(("mlflow.parentRunId".into(), p)),
            None => notes.push(format!(
                "its sweep parent {parent} is not on this server: push it too to link them"
            )),
        }
    }
    let payload = Payload::of(info, &extra)?;
    let created = client.post(
        "runs/create",
        &json!({
            "experiment_id": experiment_id,
            "user_id": info.user_id,
            "run_name": info.run_name,
            "start_time": info.start_time,
            "tags": [{"key": SOURCE_TAG, "value": info.run_id}],
        }),
    )?;
    let remote = created["run"]["info"]["run_id"]
        .as_str()
        .context("the server's runs/create answer has no run id")?
        .to_string();
    for batch in payload.batches(&remote) {
        client.post("runs/log-batch", &batch)?;
    }
    let artifact_uri = created["run"]["info"]["artifact_uri"]
        .as_str()
        .unwrap_or_default();
    let mapping::Artifacts { files, skipped } = artifact_files(info)?;
    match proxy_path(artifact_uri) {
        Some(base) => {
            for (rel, path) in &files {
                let bytes =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                client
                    .put_artifact(
                        &format!("{}/{}", encode_path(&base), encode_path(rel)),
                        bytes,
                    )
                    .with_context(|| format!("uploading artifact {rel}"))?;
            }
        }
        None if !files.is_empty() => notes.push(format!(
            "artifacts not sent ({}): the server keeps them at {artifact_uri:?}, which is not its \
             artifact proxy (start it with `mlflow server --serve-artifacts`)",
            files
                .iter()
                .map(|(r, _)| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None => {}
    }
    notes.extend(skipped.into_iter().map(|s| format!("not sent: {s}")));
    let status = match (info.status, info.owner()) {
        // Its process is gone: it will never end by itself.
        (RunStatus::Running, Owner::Gone) => RunStatus::Failed,
        (s, _) => s,
    };
    let mut update = json!({"run_id": remote, "status": status.as_str()});
    if let Some(end) = info.end_time {
        update["end_time"] = json!(end);
    }
    client.post("runs/update", &update)?;
    client.post(
        "runs/set-tag",
        &json!({"run_id": remote, "key": COMPLETE_TAG, "value": "true"}),
    )?;
    local.set_tag(&key, &remote)?;
    Ok(Pushed::New { remote, notes })
}

/// The id of the experiment called `name` on the server, created if it does not exist.
fn find_or_create_experiment(client: &Client, name: &str) -> Result<String> {
    match client.get("experiments/get-by-name", &[("experiment_name", name)]) {
        Ok(v) => {
            let exp = &v["experiment"];
            if exp["lifecycle_stage"].as_str() == Some("deleted") {
                bail!(
                    "experiment {name:?} is deleted on {}: restore it there, or push with \
                     --experiment OTHER",
                    client.base
                );
            }
            exp["experiment_id"]
                .as_str()
                .map(str::to_string)
                .context("the server's experiment has no id")
        }
        Err(e) if is_not_found(&e) => {
            let v = client.post("experiments/create", &json!({"name": name}))?;
            v["experiment_id"]
                .as_str()
                .map(str::to_string)
                .context("the server's experiments/create answer has no id")
        }
        Err(e) => Err(e),
    }
}

/// The artifact proxy path of a run's `mlflow-artifacts:` URI (None for any other store).
fn proxy_path(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("mlflow-artifacts:")?;
    let path = match rest.strip_prefix("//") {
        Some(authority_path) => authority_path.split_once('/').map_or("", |(_, p)| p),
        None => rest,
    };
    Some(path.trim_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_paths() {
        assert_eq!(
            proxy_path("mlflow-artifacts:/1/abc/artifacts").unwrap(),
            "1/abc/artifacts"
        );
        assert_eq!(
            proxy_path("mlflow-artifacts://host:5000/1/abc/artifacts").unwrap(),
            "1/abc/artifacts"
        );
        assert_eq!(proxy_path("s3://bucket/1/abc"), None);
        assert_eq!(proxy_path("/tmp/mlruns/1/abc/artifacts"), None);
    }
}
