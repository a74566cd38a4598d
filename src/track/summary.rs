//! A run's figures as `flora runs list/show/compare` show them: its params, tags, the best and
//! last value of each metric, per-epoch results, duration; all read from the run store.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::json;

use crate::track::store::{self, RunInfo, RunStatus};

/// Tag holding the hash of the images a run trained on.
pub const TAG_FINGERPRINT: &str = "flora.data_fingerprint";

/// One metric's history, summarised.
#[derive(Debug, Clone)]
pub struct MetricStat {
    /// The last logged value and its step.
    pub last: (f64, u64),
    /// The best value and its step, for metrics with a direction (accuracy up, loss down).
    pub best: Option<(f64, u64)>,
    /// How many values were logged.
    pub count: usize,
}

/// Whether higher values of metric `key` are better (Some(true)), lower (Some(false)), or
/// neither makes sense (a time, a count, a learning rate).
pub fn better_higher(key: &str) -> Option<bool> {
    if key.contains("loss") {
        Some(false)
    } else if ["accuracy", "f1", "precision", "recall"]
        .iter()
        .any(|k| key.contains(k))
    {
        Some(true)
    } else {
        None
    }
}

/// A run's params, tags and metric summaries.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub info: RunInfo,
    /// The status to show: CRASHED for a RUNNING run whose process is gone.
    pub status: &'static str,
    pub params: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub metrics: BTreeMap<String, MetricStat>,
}

impl RunSummary {
    /// Reads everything about `info` from the store.
    pub fn load(info: RunInfo) -> Result<Self> {
        let params = store::read_params(&info)?;
        let tags = store::read_tags(&info)?;
        let mut metrics = BTreeMap::new();
        for key in metric_keys(&info) {
            let history = store::read_metric(&info, &key)?;
            let Some(&(_, v, s)) = history.last() else {
                continue;
            };
            let best = better_higher(&key).and_then(|higher| {
                history
                    .iter()
                    .map(|&(_, v, s)| (v, s))
                    .filter(|(v, _)| v.is_finite())
                    .reduce(|a, b| {
                        // The first of equal values wins (the earliest epoch).
                        if (higher && b.0 > a.0) || (!higher && b.0 < a.0) {
                            b
                        } else {
                            a
                        }
                    })
            });
            metrics.insert(
                key,
                MetricStat {
                    last: (v, s),
                    best,
                    count: history.len(),
                },
            );
        }
        Ok(Self {
            status: info.status_label(),
            info,
            params,
            tags,
            metrics,
        })
    }

    /// The status, or DELETED for a soft-deleted run.
    pub fn shown_status(&self) -> &'static str {
        if self.info.is_deleted() {
            "DELETED"
        } else {
            self.status
        }
    }

    /// The architecture (`train.arch`), if the run logged one.
    pub fn arch(&self) -> Option<&str> {
        self.params.get("train.arch").map(|s| s.trim())
    }

    /// The architecture, short enough for a table: `cnn`, `mnv2` (with its width when not 1).
    pub fn arch_short(&self) -> String {
        match self.arch() {
            Some("mobilenet_v2") => match self.params.get("train.width").map(|w| w.trim()) {
                Some(w) if w != "1" && w != "1.0" => format!("mnv2/{}", w.trim_start_matches('0')),
                _ => "mnv2".into(),
            },
            Some(a) => a.to_string(),
            None => "-".into(),
        }
    }

    /// Epochs run: how many validation results were logged.
    pub fn epochs_run(&self) -> usize {
        self.metrics.get("val_accuracy").map_or(0, |m| m.count)
    }

    /// Epochs asked for (`train.epochs`).
    pub fn epochs_planned(&self) -> Option<usize> {
        self.params.get("train.epochs")?.trim().parse().ok()
    }

    /// The best validation accuracy and its epoch: the `best_val_accuracy` metric training
    /// logs at the end, else the best `val_accuracy` so far (a running or killed run).
    pub fn best_val_accuracy(&self) -> Option<(f64, u64)> {
        self.metrics
            .get("best_val_accuracy")
            .map(|m| m.last)
            .or_else(|| self.metrics.get("val_accuracy")?.best)
    }

    /// The latest `flora eval` accuracy.
    pub fn eval_accuracy(&self) -> Option<f64> {
        self.metrics.get("eval_accuracy").map(|m| m.last.0)
    }

    /// The training data's fingerprint (`sha256:…`).
    pub fn data_fingerprint(&self) -> Option<&str> {
        self.tags.get(TAG_FINGERPRINT).map(|s| s.trim())
    }

    /// The fingerprint's first 6 hex digits, for tables.
    pub fn data_short(&self) -> String {
        self.data_fingerprint().map_or("-".into(), |f| {
            let hex = f.rsplit(':').next().unwrap_or(f);
            hex.chars().take(6).collect()
        })
    }

    /// How long the run took (to now for a run still running), in milliseconds.
    pub fn duration_ms(&self) -> Option<u64> {
        let end = match self.info.end_time {
            Some(end) => end,
            None if self.status == RunStatus::Running.as_str() => crate::util::fsutil::now_ms(),
            None => return None,
        };
        Some(end.saturating_sub(self.info.start_time))
    }

    /// The run as one JSON object (`flora runs list --json`).
    pub fn to_json(&self) -> serde_json::Value {
        let best = self.best_val_accuracy();
        json!({
            "run_id": self.info.run_id,
            "run_name": self.info.run_name,
            "experiment_id": self.info.experiment_id,
            "status": self.status,
            "lifecycle_stage": self.info.lifecycle.as_str(),
            "deleted_time": self.info.deleted_time,
            "arch": self.arch(),
            "epochs": self.epochs_run(),
            "epochs_planned": self.epochs_planned(),
            "val_accuracy": best.map(|b| b.0),
            "best_epoch": best.map(|b| b.1),
            "eval_accuracy": self.eval_accuracy(),
            "data_fingerprint": self.data_fingerprint(),
            "start_time": self.info.start_time,
            "end_time": self.info.end_time,
            "duration_seconds": self.duration_ms().map(|d| d as f64 / 1000.0),
        })
    }

    /// Per-epoch results, from the training metrics logged at each epoch (step = epoch): the
    /// metric names present, and one row per epoch with a value (or None) for each.
    pub fn epochs(&self) -> Result<(Vec<&'static str>, Vec<EpochRow>)> {
        let keys: Vec<&'static str> = EPOCH_METRICS
            .iter()
            .copied()
            .filter(|k| self.metrics.contains_key(*k))
            .collect();
        let mut rows: BTreeMap<u64, Vec<Option<f64>>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            for (_, v, step) in store::read_metric(&self.info, key)? {
                rows.entry(step).or_insert_with(|| vec![None; keys.len()])[i] = Some(v);
            }
        }
        Ok((keys, rows.into_iter().collect()))
    }

    /// One metric's (step, value) series.
    pub fn series(&self, key: &str) -> Result<Vec<(f64, f64)>> {
        Ok(store::read_metric(&self.info, key)?
            .into_iter()
            .map(|(_, v, s)| (s as f64, v))
            .collect())
    }
}

/// One epoch's values of the per-epoch metrics: (epoch, a value or None per metric).
pub type EpochRow = (u64, Vec<Option<f64>>);

/// The metrics training logs once per epoch, in table order.
pub const EPOCH_METRICS: [&str; 7] = [
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "epoch_seconds",
    "images_per_second",
];

/// The metric names of a run (its `metrics/` files), sorted.
pub fn metric_keys(info: &RunInfo) -> Vec<String> {
    let mut keys: Vec<String> = std::fs::read_dir(info.dir.join("metrics"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|k| !k.starts_with('.'))
        .collect();
    keys.sort();
    keys
}

/// `7.2s`, `1m05s`, `1h02m`, `3d04h`.
pub fn format_duration(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600)
    }
}

/// A share as a percentage with one decimal (`92.8`), or `-`.
pub fn percent(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{:.1}", 100.0 * x))
}

/// A start time in the local form `YYYY-MM-DD HH:MM` (UTC).
pub fn format_time(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(format_duration(7_240), "7.2s");
        assert_eq!(format_duration(65_000), "1m05s");
        assert_eq!(format_duration(3_720_000), "1h02m");
        assert_eq!(format_duration(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
    }

    #[test]
    fn best_follows_the_metric_direction() {
        assert_eq!(better_higher("val_accuracy"), Some(true));
        assert_eq!(better_higher("eval_macro_f1"), Some(true));
        assert_eq!(better_higher("train_loss"), Some(false));
        assert_eq!(better_higher("learning_rate"), None);
    }
}
