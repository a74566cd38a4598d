//! Training checkpoints and `flora train --resume`.
//!
//! At the end of every epoch the trainer writes a checkpoint into the run's artifacts:
//!
//! ```text
//! artifacts/checkpoints/epoch-0003/model.bpk       weights (Burn burnpack record)
//! artifacts/checkpoints/epoch-0003/optimizer.bpk   Adam's state (Burn optimizer record)
//! artifacts/checkpoints/epoch-0003/state.json      epoch, schedule, early stopping, ...
//! artifacts/checkpoints/epoch-0003/history.csv     the epochs so far (results.csv's rows)
//! artifacts/checkpoints/last                       "epoch-0003"
//! artifacts/checkpoints/best                       the folder of the best epoch
//! ```
//! A folder is written under a temp name and renamed into place, then the `last` (and `best`)
//! pointer files are replaced atomically; only the folders they name are kept. Randomness is
//! reseeded every epoch from (seed, epoch), so a run resumed from epoch k's checkpoint ends
//! with the same metrics as one that never stopped. [`resume`] checks a run and reopens it.

mod resume;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::ModuleOptimizer;

use crate::model::Classifier;
use crate::track::epochs::EpochStats;
use crate::track::store::{CHECKPOINTS_DIR, Run, RunInfo};
use crate::train::finetune::ScheduleState;
use crate::util::fsutil;
pub use resume::{CV_FOLD_TAG, Resume};

const MODEL_FILE: &str = "model.bpk";
const OPTIMIZER_FILE: &str = "optimizer.bpk";
const STATE_FILE: &str = "state.json";
const HISTORY_FILE: &str = "history.csv";
/// The version of `state.json` this flora writes and reads.
pub const STATE_FORMAT: u32 = 1;

/// Everything besides the weights and the optimizer that the training loop carries over an
/// epoch boundary.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoopState {
    pub format: u32,
    /// The last completed epoch (1-based).
    pub epoch: usize,
    /// The best epoch so far (by val accuracy) and epochs since it, for early stopping.
    pub best_epoch: Option<usize>,
    pub since_best: usize,
    pub schedule: ScheduleState,
    pub train_images: usize,
    #[serde(with = "crate::util::exact_f64")]
    pub train_seconds: f64,
    /// The data the run trains on (`flora.data_fingerprint`).
    pub data_fingerprint: String,
}

/// A checkpoint read back for resuming.
pub struct Checkpoint {
    pub state: LoopState,
    pub history: Vec<EpochStats>,
    dir: PathBuf,
}

fn checkpoints(run: &RunInfo) -> PathBuf {
    run.artifacts().join(CHECKPOINTS_DIR)
}

/// Writes epoch `state.epoch`'s checkpoint; `is_best` also points `best` at it.
pub fn save(
    run: &Run,
    model: &Classifier,
    optim: &ModuleOptimizer,
    state: &LoopState,
    history: &[EpochStats],
    is_best: bool,
) -> Result<()> {
    run.check_present()?;
    let root = checkpoints(&run.info);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let name = format!("epoch-{:04}", state.epoch);
    let dir = root.join(&name);
    let tmp = fsutil::temp_sibling(&dir);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let written = (|| -> Result<()> {
        let weights = tmp.join(MODEL_FILE);
        model
            .clone()
            .save_file(&weights)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("writing {}", weights.display()))?;
        let optimizer = tmp.join(OPTIMIZER_FILE);
        optim
            .save(&optimizer)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("writing {}", optimizer.display()))?;
        for f in [&weights, &optimizer] {
            std::fs::File::open(f)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", f.display()))?;
        }
        fsutil::write_atomic(&tmp.join(HISTORY_FILE), &history_csv(history)?)?;
        fsutil::write_atomic(&tmp.join(STATE_FILE), &serde_json::to_vec_pretty(state)?)?;
        if dir.exists() {
            // Left by a run killed after this epoch's folder but before its pointer.
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("replacing {}", dir.display()))?;
        }
        std::fs::rename(&tmp, &dir).with_context(|| format!("moving {}", dir.display()))?;
        fsutil::sync_dir(&root);
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    fsutil::write_atomic(&root.join("last"), name.as_bytes())?;
    if is_best {
        fsutil::write_atomic(&root.join("best"), name.as_bytes())?;
    }
    prune(&root);
    Ok(())
}

/// Removes the epoch folders neither `last` nor `best` names (and temp leftovers).
fn prune(root: &Path) {
    let keep: Vec<String> = ["last", "best"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(root.join(p)).ok())
        .map(|s| s.trim().to_string())
        .collect();
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = (name.starts_with("epoch-") && !keep.contains(&name))
            || (name.starts_with(".tmp-") && !name.contains(&format!("-{}-", std::process::id())));
        if stale && e.path().is_dir() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn history_csv(history: &[EpochStats]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for s in history {
        w.serialize(s)?;
    }
    w.into_inner().context("writing the epoch history")
}

/// The checkpoint folder a pointer file names, if any.
fn pointed(root: &Path, pointer: &str) -> Result<Option<PathBuf>> {
    let path = root.join(pointer);
    let name = match std::fs::read_to_string(&path) {
        Ok(n) => n.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if !name.starts_with("epoch-") || name.contains('/') {
        bail!("{} is corrupt: {name:?}", path.display());
    }
    Ok(Some(root.join(name)))
}

impl Checkpoint {
    /// The last checkpoint of `run`, or an error saying why it cannot be resumed.
    pub fn read_last(run: &RunInfo) -> Result<Self> {
        let root = checkpoints(run);
        let Some(dir) = pointed(&root, "last")? else {
            bail!(
                "run {} has no checkpoint (it stopped before its first epoch ended): start a new run",
                run.run_name
            );
        };
        let state_path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&state_path)
            .with_context(|| format!("reading {}", state_path.display()))?;
        let state: LoopState = serde_json::from_str(&text)
            .with_context(|| format!("{} is corrupt", state_path.display()))?;
        if state.epoch == 0 {
            bail!("{} is corrupt: epoch 0", state_path.display());
        }
        if state.format != STATE_FORMAT {
            bail!(
                "{} has checkpoint format {}; this flora reads format {STATE_FORMAT}",
                state_path.display(),
                state.format
            );
        }
        let history_path = dir.join(HISTORY_FILE);
        let mut reader = csv::Reader::from_path(&history_path)
            .with_context(|| format!("reading {}", history_path.display()))?;
        let history = reader
            .deserialize()
            .collect::<Result<Vec<EpochStats>, _>>()
            .with_context(|| format!("{} is corrupt", history_path.display()))?;
        if history.len() != state.epoch {
            bail!(
                "{} holds {} epochs, its state says {}: the checkpoint is corrupt",
                dir.display(),
                history.len(),
                state.epoch
            );
        }
        Ok(Self {
            state,
            history,
            dir,
        })
    }

    /// Loads the checkpoint's weights into `model` (a fresh one of the run's shape) and its
    /// optimizer state into `optim`.
    pub fn restore(
        &self,
        model: Classifier,
        optim: ModuleOptimizer,
    ) -> Result<(Classifier, ModuleOptimizer)> {
        let weights = self.dir.join(MODEL_FILE);
        let model = model
            .try_load_file(&weights)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("loading {}", weights.display()))?;
        let optimizer = self.dir.join(OPTIMIZER_FILE);
        let optim = optim
            .load(&optimizer)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("loading {}", optimizer.display()))?;
        Ok((model, optim))
    }

    /// The best epoch's weights, loaded into `model`, with its stats. Its folder is named from
    /// the state (the `best` pointer may lag it by one epoch when a run was killed between the
    /// two pointers; either folder is kept until both pointers are written).
    pub fn best(&self, model: Classifier) -> Result<Option<(EpochStats, Classifier)>> {
        let Some(epoch) = self.state.best_epoch else {
            return Ok(None);
        };
        let dir = self.dir.with_file_name(format!("epoch-{epoch:04}"));
        let stats = self
            .history
            .iter()
            .find(|s| s.epoch == epoch)
            .cloned()
            .with_context(|| format!("best epoch {epoch} is not in the checkpoint's history"))?;
        let weights = dir.join(MODEL_FILE);
        let model = model
            .try_load_file(&weights)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("loading {}", weights.display()))?;
        Ok(Some((stats, model)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Settings};
    use crate::track::store::{self, RunStatus, RunStore};
    use crate::train::finetune::Schedule;

    fn stats(epoch: usize, val_accuracy: f64) -> EpochStats {
        EpochStats {
            epoch,
            train_loss: 1.0 / epoch as f64,
            train_accuracy: 0.5,
            val_loss: 0.1 + 1.0 / 3.0,
            val_accuracy,
            learning_rate: 3e-4,
            epoch_seconds: 0.25,
            images_per_second: 100.0,
            phase: "full".into(),
        }
    }

    #[test]
    fn last_and_best_are_kept_and_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::new(dir.path());
        let exp = store.experiment("t").unwrap();
        let run = store.create_run(&exp, "r").unwrap();
        let device = crate::util::device::training();
        let model = Classifier::new(crate::model::Arch::Cnn, 3, 0.0, &device);
        let optim = burn::optim::AdamConfig::new().init();
        let schedule = Schedule::new(&crate::config::TrainConfig::default(), 4).state();
        let mut history = Vec::new();
        for (epoch, acc, best) in [(1, 0.5, 1), (2, 0.75, 2), (3, 0.7, 2), (4, 0.6, 2)] {
            history.push(stats(epoch, acc));
            let state = LoopState {
                format: STATE_FORMAT,
                epoch,
                best_epoch: Some(best),
                since_best: epoch - best,
                schedule: schedule.clone(),
                train_images: 10 * epoch,
                train_seconds: 0.1 * epoch as f64,
                data_fingerprint: "sha256:ab".into(),
            };
            save(&run, &model, &optim, &state, &history, best == epoch).unwrap();
        }
        let root = checkpoints(&run.info);
        let mut kept: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        kept.sort();
        assert_eq!(kept, ["best", "epoch-0002", "epoch-0004", "last"]);
        let ck = Checkpoint::read_last(&run.info).unwrap();
        assert_eq!(ck.state.epoch, 4);
        assert_eq!(ck.state.since_best, 2);
        assert_eq!(ck.state.train_seconds, 0.1 * 4.0);
        assert_eq!(ck.history.len(), 4);
        assert_eq!(
            ck.history[3].val_loss,
            0.1 + 1.0 / 3.0,
            "floats read back exactly"
        );
        let fresh = Classifier::new(crate::model::Arch::Cnn, 3, 0.0, &device);
        let (best, _) = ck.best(fresh).unwrap().unwrap();
        assert_eq!(best.epoch, 2);
        // A corrupt pointer is an error, not a path elsewhere.
        std::fs::write(root.join("last"), "../../x").unwrap();
        assert!(Checkpoint::read_last(&run.info).is_err());
        std::fs::remove_file(root.join("last")).unwrap();
        let err = Checkpoint::read_last(&run.info).err().unwrap();
        assert!(format!("{err:#}").contains("no checkpoint"), "{err:#}");
    }

    #[test]
    fn reopening_cuts_and_completes_each_metric_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::new(dir.path());
        let exp = store.experiment("t").unwrap();
        let run = store.create_run(&exp, "r").unwrap();
        let device = crate::util::device::training();
        let model = Classifier::new(crate::model::Arch::Cnn, 3, 0.0, &device);
        let optim = burn::optim::AdamConfig::new().init();
        let history = vec![stats(1, 0.5), stats(2, 0.6)];
        let state = LoopState {
            format: STATE_FORMAT,
            epoch: 2,
            best_epoch: Some(2),
            since_best: 0,
            schedule: Schedule::new(&crate::config::TrainConfig::default(), 4).state(),
            train_images: 20,
            train_seconds: 0.2,
            data_fingerprint: "sha256:ab".into(),
        };
        save(&run, &model, &optim, &state, &history, true).unwrap();
        // Epoch 1 logged in full; killed inside epoch 2's metrics; a stale epoch 3 line.
        for (k, v) in crate::track::epochs::epoch_metrics(&history[0]) {
            run.log_metric(k, v, 1).unwrap();
        }
        run.log_metric("train_loss", history[1].train_loss, 2)
            .unwrap();
        run.log_metric("train_loss", 9.0, 3).unwrap();
        run.log_metric("best_val_accuracy", 0.5, 1).unwrap();
        let resume = Resume {
            info: run.info.clone(),
            checkpoint: Checkpoint::read_last(&run.info).unwrap(),
            settings: Settings {
                config: Config::default(),
                base: dir.path().into(),
                file: None,
            },
            force: false,
            held_out: None,
        };
        let reopened = resume.reopen("sha256:ab").unwrap();
        for s in &history {
            for (k, v) in crate::track::epochs::epoch_metrics(s) {
                let m = store::read_metric(&reopened.info, k).unwrap();
                let steps: Vec<u64> = m.iter().map(|m| m.2).collect();
                assert_eq!(steps, [1, 2], "{k}");
                assert_eq!(m[s.epoch - 1].1, v, "{k}");
            }
        }
        assert!(
            store::read_metric(&reopened.info, "best_val_accuracy")
                .unwrap()
                .is_empty()
        );
        assert_eq!(reopened.info.status, RunStatus::Running);
    }
}
