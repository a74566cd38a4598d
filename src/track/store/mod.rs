//! The run store: runs under `runs/` in MLflow's file-store layout, so MLflow's own client and
//! UI read them (`MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri runs`).
//!
//! ```text
//! runs/<exp_id>/meta.yaml
//! runs/<exp_id>/<run_id>/meta.yaml
//! runs/<exp_id>/<run_id>/params/<key>     raw value, written once
//! runs/<exp_id>/<run_id>/metrics/<key>    "<timestamp_ms> <value> <step>" per line
//! runs/<exp_id>/<run_id>/tags/<key>
//! runs/<exp_id>/<run_id>/artifacts/
//! ```
//! Every write goes through a temp file and a rename.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::util::fsutil::{now_ms, write_atomic};

pub mod group;
mod meta;
mod owner;
mod run;

pub use meta::{
    experiment_name, read_metric, read_params, read_run_meta, read_tags, update_run_meta,
};
use meta::{file_uri, parse_yaml_map, quote, yaml_map};
pub(crate) use owner::lock_dir;
pub use owner::{Owner, TAG_HOST, TAG_PID, TAG_START, process_start_time};
pub use run::Run;
use run::checked_key;

/// The tag that makes a run the child of another (MLflow nests it under the parent).
pub const PARENT_RUN_TAG: &str = "mlflow.parentRunId";

/// The folder inside a run's artifacts where training keeps its checkpoints (resume state,
/// written by the trainer at the end of each epoch).
pub const CHECKPOINTS_DIR: &str = "checkpoints";

/// MLflow's run status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Running = 1,
    Scheduled = 2,
    Finished = 3,
    Failed = 4,
    Killed = 5,
}

impl RunStatus {
    fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => RunStatus::Running,
            2 => RunStatus::Scheduled,
            3 => RunStatus::Finished,
            4 => RunStatus::Failed,
            5 => RunStatus::Killed,
            _ => return None,
        })
    }

    /// MLflow's name for the status.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::Scheduled => "SCHEDULED",
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }
}

/// A run's `meta.yaml`, plus where it lives.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub run_id: String,
    pub run_name: String,
    pub experiment_id: String,
    pub user_id: String,
    pub status: RunStatus,
    pub start_time: u64,
    pub end_time: Option<u64>,
    /// MLflow's `lifecycle_stage`: soft-deleted runs (`flora runs delete`) stay in place.
    pub lifecycle: Lifecycle,
    /// When the run was soft-deleted (ms since the epoch), MLflow's `deleted_time`.
    pub deleted_time: Option<u64>,
    /// `runs/<exp_id>/<run_id>`.
    pub dir: PathBuf,
}

/// MLflow's lifecycle stage of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Active,
    /// Soft-deleted: hidden from listings and model choice until restored or purged by gc.
    Deleted,
}

impl Lifecycle {
    /// MLflow's name for the stage, as written in meta.yaml.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Active => "active",
            Lifecycle::Deleted => "deleted",
        }
    }
}

impl RunInfo {
    /// The run's artifacts folder.
    pub fn artifacts(&self) -> PathBuf {
        self.dir.join("artifacts")
    }

    /// Whether the run is soft-deleted.
    pub fn is_deleted(&self) -> bool {
        self.lifecycle == Lifecycle::Deleted
    }

    /// The status to show: MLflow's, except CRASHED for a RUNNING run whose process is gone
    /// (killed with SIGKILL, or the machine went down).
    pub fn status_label(&self) -> &'static str {
        if self.status == RunStatus::Running && self.owner() == Owner::Gone {
            "CRASHED"
        } else {
            self.status.as_str()
        }
    }
}

/// The first 8 characters of an id, for tables (whole characters, however short or odd the id).
pub fn short_id(id: &str) -> &str {
    id.char_indices().nth(8).map_or(id, |(i, _)| &id[..i])
}

/// A run store rooted at a folder (created on first write).
#[derive(Debug, Clone)]
pub struct RunStore {
    root: PathBuf,
}

impl RunStore {
    /// A store rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The store's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Locks the store's folder itself while an experiment is created (no lock file is left
    /// among MLflow's folders).
    fn lock(&self) -> Result<std::fs::File> {
        lock_dir(&self.root)
    }

    /// The id of the experiment called `name`, created if it does not exist.
    pub fn experiment(&self, name: &str) -> Result<String> {
        checked_name("experiment", name)?;
        let find = || -> Result<Option<String>> {
            Ok(self
                .experiments()?
                .into_iter()
                .find(|(_, meta)| meta.get("name").map(String::as_str) == Some(name))
                .map(|(id, _)| id))
        };
        if let Some(id) = find()? {
            return Ok(id);
        }
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("creating run store {}", self.root.display()))?;
        let _lock = self.lock()?;
        // Another process may have created it while this one waited for the lock.
        if let Some(id) = find()? {
            return Ok(id);
        }
        // MLflow's file store gives experiments random integer ids.
        let id = (u64::from_str_radix(&new_id()[..15], 16).unwrap_or(1) % 900_000_000_000_000_000
            + 100_000_000_000_000_000)
            .to_string();
        let dir = self.root.join(&id);
        let now = now_ms();
        let yaml = yaml_map(&[
            ("artifact_location", quote(&file_uri(&dir)?)),
            ("creation_time", now.to_string()),
            ("experiment_id", quote(&id)),
            ("last_update_time", now.to_string()),
            ("lifecycle_stage", "active".into()),
            ("name", quote(name)),
        ]);
        write_atomic(&dir.join("meta.yaml"), yaml.as_bytes())?;
        Ok(id)
    }

    /// Every experiment: id → meta.yaml fields.
    fn experiments(&self) -> Result<Vec<(String, BTreeMap<String, String>)>> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Ok(out);
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.path().join("meta.yaml");
            if name.starts_with('.') || !meta.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(&meta)
                .with_context(|| format!("reading {}", meta.display()))?;
            out.push((name, parse_yaml_map(&text)));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Starts a RUNNING run in experiment `experiment_id`, owned by this process (recorded in
    /// the `flora.owner.*` tags, so that a run whose process died shows as crashed).
    pub fn create_run(&self, experiment_id: &str, run_name: &str) -> Result<Run> {
        checked_name("run", run_name)?;
        let run_id = new_id();
        let dir = self.root.join(experiment_id).join(&run_id);
        for sub in ["params", "metrics", "tags", "artifacts"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let info = RunInfo {
            run_id,
            run_name: run_name.to_string(),
            experiment_id: experiment_id.to_string(),
            user_id: current_user(),
            status: RunStatus::Running,
            start_time: now_ms(),
            end_time: None,
            lifecycle: Lifecycle::Active,
            deleted_time: None,
            dir,
        };
        let run = Run { info };
        run.write_meta()?;
        run.set_tag("mlflow.runName", run_name)?;
        run.set_tag("mlflow.user", &run.info.user_id)?;
        run.set_tag("mlflow.source.type", "LOCAL")?;
        run.set_tag("mlflow.source.name", "flora")?;
        run.set_tag("flora.version", env!("CARGO_PKG_VERSION"))?;
        run.set_owner()?;
        Ok(run)
    }

    /// Every readable active run of every experiment, newest first (soft-deleted runs are left
    /// out: see [`RunStore::all_runs`]).
    pub fn runs(&self) -> Result<Vec<RunInfo>> {
        let mut runs = self.all_runs()?;
        runs.retain(|r| !r.is_deleted());
        Ok(runs)
    }

    /// Every readable run of every experiment, soft-deleted ones included, newest first.
    pub fn all_runs(&self) -> Result<Vec<RunInfo>> {
        let mut runs = Vec::new();
        for (exp_id, _) in self.experiments()? {
            let exp_dir = self.root.join(&exp_id);
            for entry in std::fs::read_dir(&exp_dir)
                .with_context(|| format!("listing {}", exp_dir.display()))?
            {
                let entry = entry?;
                // Hidden folders are not runs (a run being purged by `flora runs gc`).
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let meta = entry.path().join("meta.yaml");
                if meta.is_file() {
                    runs.push(read_run_meta(&entry.path())?);
                }
            }
        }
        runs.sort_by(|a, b| {
            b.start_time
                .cmp(&a.start_time)
                .then(b.run_id.cmp(&a.run_id))
        });
        Ok(runs)
    }

    /// The active run whose id is `key`, else whose name is `key` (newest wins), else whose id
    /// starts with `key` (unique). A key that names only a soft-deleted run is an error that
    /// says how to restore it.
    pub fn find(&self, key: &str) -> Result<RunInfo> {
        let (active, deleted): (Vec<RunInfo>, Vec<RunInfo>) =
            self.all_runs()?.into_iter().partition(|r| !r.is_deleted());
        if let Some(run) = find_among(&active, key)? {
            return Ok(run);
        }
        if let Ok(Some(run)) = find_among(&deleted, key) {
            bail!(
                "run {} ({}) is deleted: `flora runs restore {}` brings it back",
                run.run_name,
                run.run_id,
                run.run_id
            );
        }
        bail!(
            "no run with id or name '{key}' in {} (see `flora runs`)",
            self.root.display()
        )
    }

    /// Like [`RunStore::find`], but among the soft-deleted runs only.
    pub fn find_deleted(&self, key: &str) -> Result<RunInfo> {
        let (deleted, active): (Vec<RunInfo>, Vec<RunInfo>) =
            self.all_runs()?.into_iter().partition(|r| r.is_deleted());
        if let Some(run) = find_among(&deleted, key)? {
            return Ok(run);
        }
        if let Ok(Some(run)) = find_among(&active, key) {
            bail!("run {} ({}) is not deleted", run.run_name, run.run_id);
        }
        bail!(
            "no deleted run with id or name '{key}' in {} (see `flora runs list --deleted`)",
            self.root.display()
        )
    }

    /// An active run as [`RunStore::find`] resolves it, else a soft-deleted one.
    pub fn find_any(&self, key: &str) -> Result<RunInfo> {
        self.find(key)
            .or_else(|e| self.find_deleted(key).map_err(|_| e))
    }

    /// The newest FINISHED active run, if any.
    pub fn latest_finished(&self) -> Result<Option<RunInfo>> {
        Ok(self
            .runs()?
            .into_iter()
            .find(|r| r.status == RunStatus::Finished))
    }
}

/// The run among `runs` whose id is `key`, else whose name is `key` (the first, i.e. newest),
/// else whose id starts with `key` (an error when several do).
fn find_among(runs: &[RunInfo], key: &str) -> Result<Option<RunInfo>> {
    if key.is_empty() {
        bail!("empty run id or name");
    }
    if let Some(r) = runs.iter().find(|r| r.run_id == key) {
        return Ok(Some(r.clone()));
    }
    // A name wins over an id prefix: "b" names run b even if another run's id starts with b.
    if let Some(r) = runs.iter().find(|r| r.run_name == key) {
        return Ok(Some(r.clone()));
    }
    let by_prefix: Vec<&RunInfo> = runs.iter().filter(|r| r.run_id.starts_with(key)).collect();
    match by_prefix.len() {
        0 => Ok(None),
        1 => Ok(Some(by_prefix[0].clone())),
        n => bail!("run id prefix '{key}' matches {n} runs: give more characters"),
    }
}

/// A new 32-hex-digit id (MLflow's run id form).
pub fn new_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    crate::util::fingerprint::hex(&bytes)
}

fn current_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into())
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

/// Refuses an empty name or one with control characters (a newline would add fields to
/// meta.yaml); `what` is "run" or "experiment".
pub fn checked_name(what: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() {
        bail!("the {what} name is empty");
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        bail!(
            "the {what} name {name:?} contains the control character {c:?}: use printable characters only"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_name_wins_over_an_id_prefix() {
        let dir = std::env::temp_dir().join(format!("flora-store-{}", new_id()));
        let store = RunStore::new(&dir);
        let exp = store.experiment("t").unwrap();
        let mut runs = Vec::new();
        // Make a run whose id starts with the other run's name.
        loop {
            let r = store.create_run(&exp, "x").unwrap();
            if r.info.run_id.starts_with('b') {
                runs.push(r);
                break;
            }
            std::fs::remove_dir_all(&r.info.dir).unwrap();
        }
        let b = store.create_run(&exp, "b").unwrap();
        assert_eq!(store.find("b").unwrap().run_id, b.info.run_id);
        assert_eq!(
            store.find(&runs[0].info.run_id[..6]).unwrap().run_id,
            runs[0].info.run_id
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn uris_are_percent_encoded_and_names_have_no_control_characters() {
        assert_eq!(
            file_uri(Path::new("/a b/#c%/é")).unwrap(),
            "file:///a%20b/%23c%25/%C3%A9"
        );
        assert!(checked_name("run", "ok name-1").is_ok());
        assert!(checked_name("run", "x\nstatus: 3").is_err());
        assert!(checked_name("run", "tab\there").is_err());
        assert!(checked_name("run", " ").is_err());
    }

    #[test]
    fn short_ids_never_split_a_character() {
        assert_eq!(short_id("0123456789abcdef"), "01234567");
        assert_eq!(short_id("ab"), "ab");
        assert_eq!(short_id("ééééééééé"), "éééééééé");
    }

    #[test]
    fn concurrent_writers_neither_lose_metric_lines_nor_double_experiments() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::new(dir.path());
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| store.experiment("same").unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
        assert_eq!(store.experiments().unwrap().len(), 1);
        let run = store.create_run(&ids[0], "r").unwrap();
        std::thread::scope(|s| {
            for t in 0..8 {
                let run = &run;
                s.spawn(move || {
                    for i in 0..25 {
                        run.log_metric("m", (t * 100 + i) as f64, i).unwrap();
                    }
                });
            }
        });
        assert_eq!(read_metric(&run.info, "m").unwrap().len(), 200);
    }

    #[test]
    fn keys_cannot_escape() {
        assert!(checked_key("../x").is_err());
        assert!(checked_key("a/b").is_err());
        assert!(checked_key("val_accuracy").is_ok());
    }
}
