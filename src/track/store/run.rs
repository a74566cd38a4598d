//! A run being written: its params, metrics and tags as MLflow's file store keeps them, its
//! claim by this process and its end.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::meta::{file_uri, quote, read_run_meta, rewrite_run_meta, update_run_meta};
use super::owner::lock_dir;
use super::{Lifecycle, Owner, RunInfo, RunStatus};
use crate::util::fsutil::{append_line_atomic, now_ms, write_atomic};

/// A run that can be logged to.
#[derive(Debug, Clone)]
pub struct Run {
    pub info: RunInfo,
}

impl Run {
    /// Re-opens an existing run for logging.
    pub fn open(info: RunInfo) -> Self {
        Self { info }
    }

    /// The run's artifacts folder.
    pub fn artifacts(&self) -> PathBuf {
        self.info.artifacts()
    }

    /// Fails when the run's folder is gone (purged by `flora runs gc`, or removed by hand):
    /// a run is never recreated piece by piece under a folder someone removed.
    pub fn check_present(&self) -> Result<()> {
        if self.info.dir.join("meta.yaml").is_file() {
            return Ok(());
        }
        bail!(
            "run {} ({}) is gone: its folder {} was removed (by `flora runs gc` or by hand) \
             while this process was writing it; stopping without recreating it",
            self.info.run_name,
            self.info.run_id,
            self.info.dir.display()
        )
    }

    /// Logs a parameter. Parameters are never rewritten: a different second value is an error.
    pub fn log_param(&self, key: &str, value: &str) -> Result<()> {
        self.check_present()?;
        let path = self.info.dir.join("params").join(checked_key(key)?);
        if let Ok(old) = std::fs::read_to_string(&path) {
            if old == value {
                return Ok(());
            }
            bail!(
                "parameter {key} of run {} is already {old:?}; parameters are never rewritten",
                self.info.run_id
            );
        }
        write_atomic(&path, value.as_bytes())
    }

    /// Appends one metric value at `step`, with the run's `metrics/` folder locked: two
    /// processes logging to one run (such as two `flora eval`s) never lose a line.
    pub fn log_metric(&self, key: &str, value: f64, step: u64) -> Result<()> {
        self.check_present()?;
        let dir = self.info.dir.join("metrics");
        let path = dir.join(checked_key(key)?);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let _lock = lock_dir(&dir)?;
        append_line_atomic(&path, &format!("{} {} {}", now_ms(), value, step))
    }

    /// Sets (or replaces) a tag.
    pub fn set_tag(&self, key: &str, value: &str) -> Result<()> {
        self.check_present()?;
        write_atomic(
            &self.info.dir.join("tags").join(checked_key(key)?),
            value.as_bytes(),
        )
    }

    /// Takes an existing run over to continue it (`flora train --resume`): RUNNING again,
    /// owned by this process, with no end time. The owner check and the claim are one step
    /// under the run folder's lock: of two processes claiming one run, the second is refused
    /// with the first one's pid (as is any claim while the run's owner is alive).
    pub fn claim(&mut self) -> Result<()> {
        self.check_present()?;
        let _lock = lock_dir(&self.info.dir)?;
        let now = read_run_meta(&self.info.dir)?;
        let other = now.owner_pid() != std::process::id().to_string();
        if other && now.status == RunStatus::Running && now.owner() == Owner::Alive {
            bail!(
                "run {} is being trained by another live process (pid {}): it was resumed or \
                 started meanwhile; stop that process first",
                now.run_name,
                now.owner_pid()
            );
        }
        self.set_owner()?;
        self.info.status = RunStatus::Running;
        self.info.end_time = None;
        rewrite_run_meta(&self.info.dir, |meta| self.own_fields(meta))?
    }

    /// Ends the run with `status`.
    pub fn end(&mut self, status: RunStatus) -> Result<()> {
        self.check_present()?;
        self.info.status = status;
        self.info.end_time = Some(now_ms());
        self.write_meta()
    }

    /// Writes the fields of meta.yaml this run owns; `lifecycle_stage` and `deleted_time` stay
    /// as they are on disk (a run deleted while it trains stays deleted when it ends).
    pub(super) fn write_meta(&self) -> Result<()> {
        update_run_meta(&self.info.dir, |meta| self.own_fields(meta))?
    }

    /// Sets the fields of meta.yaml this run owns in `meta`.
    fn own_fields(&self, meta: &mut std::collections::BTreeMap<String, String>) -> Result<()> {
        let i = &self.info;
        let fields = [
            ("artifact_uri", quote(&file_uri(&i.artifacts())?)),
            (
                "end_time",
                i.end_time.map_or("null".into(), |t| t.to_string()),
            ),
            ("entry_point_name", "''".into()),
            ("experiment_id", quote(&i.experiment_id)),
            ("run_id", i.run_id.clone()),
            ("run_name", quote(&i.run_name)),
            ("run_uuid", i.run_id.clone()),
            ("source_name", "''".into()),
            ("source_type", "4".into()),
            ("source_version", "''".into()),
            ("start_time", i.start_time.to_string()),
            ("status", (i.status as i64).to_string()),
            ("tags", "[]".into()),
            ("user_id", quote(&i.user_id)),
        ];
        for (k, v) in fields {
            meta.insert(k.to_string(), v);
        }
        meta.entry("lifecycle_stage".into())
            .or_insert_with(|| Lifecycle::Active.as_str().into());
        Ok(())
    }
}

pub(super) fn checked_key(key: &str) -> Result<&str> {
    let ok = !key.is_empty()
        && key.len() <= 250
        && !key.starts_with('.')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-. ".contains(c));
    if ok {
        Ok(key)
    } else {
        bail!("invalid run store key {key:?}")
    }
}
