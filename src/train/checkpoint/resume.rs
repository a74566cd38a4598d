//! `flora train --resume`: check that a run may be continued, read its own settings back and
//! reopen it in the run store.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::Checkpoint;
use crate::config::{Config, Settings};
use crate::track::store::{self, Owner, Run, RunInfo, RunStatus, RunStore};
use crate::util::fsutil;

/// A run checked and ready to be continued by [`crate::train::train`].
pub struct Resume {
    pub info: RunInfo,
    pub checkpoint: Checkpoint,
    /// The run's own settings (its logged config), with the current run store.
    pub settings: Settings,
    /// Continue even if the data changed.
    pub force: bool,
    /// A cross-validation fold's held-out images (paths under the data folder, from the
    /// run's `split.csv`): they stay out of training and validation when it continues.
    pub held_out: Option<HashSet<String>>,
}

/// The tag a cross-validation fold's run carries (`2/5`).
pub const CV_FOLD_TAG: &str = "flora.cv_fold";

impl Resume {
    /// Finds `key` in the run store of `current` and checks that it can be resumed: KILLED,
    /// FAILED or crashed (RUNNING with its process gone), with a checkpoint. A FINISHED run,
    /// or a RUNNING one whose process cannot be checked, needs `force`; a run whose process
    /// is alive never resumes.
    pub fn prepare(current: &Settings, key: &str, force: bool) -> Result<Self> {
        let store = RunStore::new(current.runs_dir());
        let info = store.find(key)?;
        let label = info.status_label();
        match (info.status, info.owner()) {
            (RunStatus::Running, Owner::Alive) => bail!(
                "run {} is being trained by another live process (pid {}): stop it first",
                info.run_name,
                info.owner_pid()
            ),
            (RunStatus::Running, Owner::Unknown) if !force => bail!(
                "run {} is RUNNING and flora cannot tell whether its process (on another \
                 machine?) is still alive: resume it with --force only if it is not",
                info.run_name
            ),
            (RunStatus::Finished, _) if !force => bail!(
                "run {} is FINISHED: there is nothing to resume (--force continues it anyway)",
                info.run_name
            ),
            (RunStatus::Scheduled, _) => {
                bail!(
                    "run {} is SCHEDULED, not a flora training run",
                    info.run_name
                )
            }
            _ => {}
        }
        let checkpoint = Checkpoint::read_last(&info)?;
        let settings = run_settings(current, &info)?;
        let held_out = held_out(&info)?;
        eprintln!(
            "resuming run {} ({}, {label}) after epoch {} of {}",
            info.run_name, info.run_id, checkpoint.state.epoch, settings.config.train.epochs
        );
        if let Some(held) = &held_out {
            eprintln!(
                "run {} is a cross-validation fold: its {} held-out images (split.csv) stay out \
                 of training; the cross-validation's own summary is not redone (run `flora cv` \
                 for that)",
                info.run_name,
                held.len()
            );
        }
        Ok(Self {
            info,
            checkpoint,
            settings,
            force,
            held_out,
        })
    }

    /// Refuses data whose fingerprint differs from the run's, unless forced.
    pub fn check_data(&self, fingerprint: &str) -> Result<()> {
        let was = &self.checkpoint.state.data_fingerprint;
        if was == fingerprint {
            return Ok(());
        }
        if !self.force {
            bail!(
                "the data of run {} changed since it was trained (fingerprint {} now {}): \
                 resuming would train on other images; start a new run, or pass --force",
                self.info.run_name,
                short(was),
                short(fingerprint)
            );
        }
        eprintln!(
            "warning: the data changed since the run was trained ({} now {}); continuing (--force)",
            short(was),
            short(fingerprint)
        );
        Ok(())
    }

    /// Takes the run over: owned by this process, RUNNING again, its metrics cut back to the
    /// checkpoint's epochs (a run killed between its metrics and its checkpoint logged an epoch
    /// that will run again) and completed from the checkpoint's history.
    /// The claim comes first, under the run's lock: a second `--resume` of the same run is
    /// refused before it changes anything.
    pub fn reopen(&self, data_fingerprint: &str) -> Result<Run> {
        let mut run = Run::open(self.info.clone());
        run.claim()?;
        let epoch = self.checkpoint.state.epoch as u64;
        let metrics = run.info.dir.join("metrics");
        // Each metric cut back to the checkpoint's epochs, then completed from its history
        // (a kill can fall between two metrics of one epoch).
        let keys = crate::track::epochs::epoch_metrics(&self.checkpoint.history[0]).map(|(k, _)| k);
        for key in keys {
            let kept: Vec<(u64, f64, u64)> = store::read_metric(&run.info, key)?
                .into_iter()
                .filter(|m| m.2 <= epoch)
                .collect();
            let text: String = kept
                .iter()
                .map(|(t, v, s)| format!("{t} {v} {s}\n"))
                .collect();
            fsutil::write_atomic(&metrics.join(key), text.as_bytes())?;
            for s in &self.checkpoint.history {
                let step = s.epoch as u64;
                if !kept.iter().any(|m| m.2 == step) {
                    let value = crate::track::epochs::epoch_metrics(s)
                        .into_iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, v)| v)
                        .expect("the same keys every epoch");
                    run.log_metric(key, value, step)?;
                }
            }
        }
        // Logged when a run ends; logged again when the resumed run ends.
        let best = metrics.join("best_val_accuracy");
        if best.exists() {
            std::fs::remove_file(&best).with_context(|| format!("removing {}", best.display()))?;
        }
        let resumes = store::read_tags(&run.info)?
            .get("flora.resumes")
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(0);
        run.set_tag("flora.resumes", &(resumes + 1).to_string())?;
        if data_fingerprint != self.checkpoint.state.data_fingerprint {
            run.set_tag("flora.resumed_on_data_fingerprint", data_fingerprint)?;
        }
        Ok(run)
    }
}

/// The first 12 characters of a fingerprint's hex (characters, not bytes: a `state.json`
/// edited by hand may hold anything).
fn short(fingerprint: &str) -> &str {
    let hex = fingerprint.strip_prefix("sha256:").unwrap_or(fingerprint);
    let end = hex.char_indices().nth(12).map_or(hex.len(), |(i, _)| i);
    &hex[..end]
}

/// A cross-validation fold's held-out images, from its `split.csv` (None for other runs). A
/// fold whose held-out set cannot be read back is refused: it would train on its held-out
/// fold.
fn held_out(info: &RunInfo) -> Result<Option<HashSet<String>>> {
    let tags = store::read_tags(info)?;
    let Some(fold) = tags.get(CV_FOLD_TAG) else {
        return Ok(None);
    };
    let path = info.artifacts().join("split.csv");
    let rows = crate::data::split::read_csv(&path).with_context(|| {
        format!(
            "run {} is fold {} of a cross-validation and its held-out images cannot be read \
             back: it cannot be resumed; run `flora cv` again",
            info.run_name,
            fold.trim()
        )
    })?;
    let held: HashSet<String> = rows
        .into_iter()
        .filter(|r| r.subset == "held_out")
        .map(|r| r.path)
        .collect();
    if held.is_empty() {
        bail!(
            "run {} is fold {} of a cross-validation, but its split.csv holds no held-out \
             image: it cannot be resumed; run `flora cv` again",
            info.run_name,
            fold.trim()
        );
    }
    Ok(Some(held))
}

/// The settings a run was trained with: its logged `config.toml`, with the data folder and
/// pretrained file as they were resolved (logged as params), and the current run store, serve
/// settings and pixel cache.
fn run_settings(current: &Settings, info: &RunInfo) -> Result<Settings> {
    let path = info.artifacts().join("config.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut config: Config = toml::from_str(&text)
        .with_context(|| format!("{} is not a flora config", path.display()))?;
    let params = store::read_params(info)?;
    if let Some(dir) = params.get("data.dir") {
        config.data.dir = PathBuf::from(dir);
    }
    config.train.pretrained = match params.get("train.pretrained").map(String::as_str) {
        None | Some("none") => None,
        Some(p) => Some(PathBuf::from(p)),
    };
    config.paths = current.config.paths.clone();
    config.cache = current.config.cache.clone();
    config.serve = current.config.serve.clone();
    config
        .validate()
        .with_context(|| format!("in {}", path.display()))?;
    Ok(Settings {
        config,
        base: current.base.clone(),
        file: current.file.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::short;

    #[test]
    fn short_fingerprints_cut_on_characters() {
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
        assert_eq!(short("sha256:ééééééééééééééé"), "éééééééééééé");
        assert_eq!(short("日本語"), "日本語");
    }
}
