//! Promotion of a run's model into a blue/green slot, behind an accuracy gate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};

use crate::config::Settings;
use crate::evaluate::eval;
use crate::model::bundle::ModelBundle;
use crate::track::slots::{Registry, Slot, SlotInfo};
use crate::track::store::{RunStatus, RunStore};

/// What a promotion asked for.
#[derive(Debug, Clone, Default)]
pub struct PromoteRequest {
    /// Run id prefix or name.
    pub run: String,
    /// Slot to fill (default: the one that is not live; blue when neither is filled).
    pub to: Option<Slot>,
    /// Gate data (default: the dataset's `test/` folder, else the candidate's validation split).
    pub data: Option<std::path::PathBuf>,
    /// Promote even when the candidate is worse than the live model.
    pub force: bool,
    /// Also make the slot live.
    pub live: bool,
}

/// What a promotion did.
#[derive(Debug, Clone)]
pub struct Promotion {
    pub slot: Slot,
    pub info: SlotInfo,
    /// (live slot, its accuracy on the gate data), when there was a live model to compare with.
    pub compared_with: Option<(Slot, f64)>,
    pub made_live: bool,
}

/// What the slots held when the gate looked at them: a promote installs only if they still
/// hold the same under the lock.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    live: Option<Slot>,
    /// Each slot's version folder, blue then green.
    versions: [Option<PathBuf>; 2],
}

impl Snapshot {
    fn take(registry: &Registry) -> Result<Self> {
        Ok(Self {
            live: registry.live()?,
            versions: [
                registry.resolve(Slot::Blue)?,
                registry.resolve(Slot::Green)?,
            ],
        })
    }

    fn version(&self, slot: Slot) -> Option<&PathBuf> {
        self.versions[slot as usize].as_ref()
    }

    /// The slot to fill: the one asked for, else the one that is not live, else the first
    /// empty one (blue when both are).
    fn target(&self, to: Option<Slot>) -> Slot {
        match (to, self.live) {
            (Some(s), _) => s,
            (None, Some(l)) => l.other(),
            (None, None) => Slot::ALL
                .into_iter()
                .find(|s| self.version(*s).is_none())
                .unwrap_or(Slot::Blue),
        }
    }
}

/// How many times the gate runs again when the slots change while it runs.
const ATTEMPTS: usize = 3;

/// Copies the run's model into a slot, after checking the run and running the gate. The gate
/// runs without the registry lock (a switch or rollback meanwhile is not kept waiting); under
/// the lock the slots are read again, and if they changed the gate runs again against them.
pub fn promote(settings: &Settings, req: &PromoteRequest) -> Result<Promotion> {
    let store = RunStore::new(settings.runs_dir());
    let registry = Registry::new(settings.models_dir());
    let run = store.find(&req.run)?;
    if run.status != RunStatus::Finished {
        bail!(
            "run {} ({}) is {}: only FINISHED runs can be promoted",
            run.run_name,
            run.run_id,
            run.status_label()
        );
    }
    let bundle_dir = crate::track::select::from_run(run.clone())?.dir;
    let candidate = ModelBundle::load(&bundle_dir)?;

    // The gate: candidate and live model on the same data.
    let (samples, what) = match &req.data {
        Some(dir) => {
            let dir = std::path::absolute(dir)?;
            let samples = eval::samples_from_dir(&dir, &candidate.meta.classes)?;
            (samples, dir.display().to_string())
        }
        None => eval::default_samples(&run, &candidate.meta.classes)?,
    };
    let store = settings.pixel_store()?;
    let mut seen = Snapshot::take(&registry)?;
    eprintln!(
        "gate: evaluating the candidate on {} images of {what}",
        samples.len()
    );
    let cand_acc = eval::evaluate(
        &candidate,
        &samples,
        settings.decode_limits(),
        store.as_ref(),
    )?
    .report
    .accuracy;
    let mut scored: HashMap<PathBuf, f64> = HashMap::new();
    for _ in 0..ATTEMPTS {
        let slot = seen.target(req.to);
        let mut compared_with = None;
        if let Some(live_slot) = seen.live
            && let Some(live_dir) = seen.version(live_slot)
        {
            let live_model = ModelBundle::load(live_dir)?;
            if live_model.meta.classes != candidate.meta.classes {
                if !req.force {
                    bail!(
                        "the live model ({live_slot}) has other classes than run {} ({} vs {}): pass --force to promote anyway",
                        run.run_id,
                        live_model.meta.classes.join(","),
                        candidate.meta.classes.join(",")
                    );
                }
            } else {
                let live_acc = match scored.get(live_dir) {
                    Some(a) => *a,
                    None => {
                        eval::evaluate(
                            &live_model,
                            &samples,
                            settings.decode_limits(),
                            store.as_ref(),
                        )?
                        .report
                        .accuracy
                    }
                };
                scored.insert(live_dir.clone(), live_acc);
                eprintln!(
                    "gate: candidate {:.2}% vs live {live_slot} {:.2}%",
                    100.0 * cand_acc,
                    100.0 * live_acc
                );
                if cand_acc < live_acc && !req.force {
                    bail!(
                        "refused: run {} scores {:.2}% but the live model ({live_slot}) scores {:.2}% on the same {} images; pass --force to promote anyway",
                        run.run_name,
                        100.0 * cand_acc,
                        100.0 * live_acc,
                        samples.len()
                    );
                }
                compared_with = Some((live_slot, live_acc));
            }
        }

        let lock = registry.lock(Duration::from_secs(3))?;
        let now = Snapshot::take(&registry)?;
        if now != seen {
            drop(lock);
            eprintln!(
                "gate: the slots changed while the gate ran (live was {}, is {}): checking again",
                seen.live.map_or("none", Slot::as_str),
                now.live.map_or("none", Slot::as_str)
            );
            seen = now;
            continue;
        }
        let info = SlotInfo {
            run_id: run.run_id.clone(),
            run_name: run.run_name.clone(),
            promoted_at: jiff::Timestamp::now().to_string(),
            promoted_by: std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
            accuracy: Some(cand_acc),
            val_accuracy: candidate.meta.metrics.get("val_accuracy").copied(),
            data_fingerprint: candidate.meta.data_fingerprint.clone(),
        };
        registry.install(&lock, slot, &bundle_dir, &info)?;
        let made_live = req.live || now.live.is_none();
        if made_live {
            registry.set_live(&lock, slot)?;
        }
        registry.record("promote", slot, Some(&info))?;
        return Ok(Promotion {
            slot,
            info,
            compared_with,
            made_live,
        });
    }
    bail!(
        "the slots changed {ATTEMPTS} times while the gate ran: try again when no other promote or switch is running"
    )
}

/// One row of `flora status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotStatus {
    pub slot: Slot,
    pub live: bool,
    pub filled: bool,
    pub run_id: Option<String>,
    pub run_name: Option<String>,
    pub accuracy: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub promoted_at: Option<String>,
    pub data_fingerprint: Option<String>,
    pub path: Option<String>,
}

/// Both slots' state.
pub fn status(models_dir: &Path) -> Result<Vec<SlotStatus>> {
    let registry = Registry::new(models_dir);
    let live = registry.live()?;
    Slot::ALL
        .into_iter()
        .map(|slot| {
            let info = registry.info(slot)?;
            let path = registry.resolve(slot)?;
            Ok(SlotStatus {
                slot,
                live: live == Some(slot),
                filled: path.is_some(),
                run_id: info.as_ref().map(|i| i.run_id.clone()),
                run_name: info.as_ref().map(|i| i.run_name.clone()),
                accuracy: info.as_ref().and_then(|i| i.accuracy),
                val_accuracy: info.as_ref().and_then(|i| i.val_accuracy),
                promoted_at: info.as_ref().map(|i| i.promoted_at.clone()),
                data_fingerprint: info.as_ref().map(|i| i.data_fingerprint.clone()),
                path: path.map(|p| p.display().to_string()),
            })
        })
        .collect()
}
