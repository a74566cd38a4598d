//! What a server holds at one moment: the loaded model of each slot, the live slot and the
//! fallback run. Immutable: a change builds a new [`Snapshot`] (see [`super::models`]).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::model::bundle::ModelBundle;
use crate::track::slots::{Slot, SlotInfo};

/// One loaded model bundle and where it came from.
#[derive(Debug)]
pub struct Loaded {
    /// The slot it was loaded from; None for the fallback run.
    pub slot: Option<Slot>,
    /// The resolved version folder (or run bundle folder) it was loaded from.
    pub dir: PathBuf,
    pub bundle: ModelBundle,
    /// The slot's `slot.toml`, when it has one.
    pub info: Option<SlotInfo>,
}

impl Loaded {
    pub(super) fn load(slot: Option<Slot>, dir: PathBuf) -> Result<Self> {
        let bundle =
            ModelBundle::load(&dir).with_context(|| format!("loading {}", dir.display()))?;
        let info = std::fs::read_to_string(dir.join("slot.toml"))
            .ok()
            .and_then(|t| toml::from_str(&t).ok());
        Ok(Self {
            slot,
            dir,
            bundle,
            info,
        })
    }

    /// A short description for the log.
    pub fn describe(&self) -> String {
        let m = &self.bundle.meta;
        format!(
            "run {} ({}), {} classes at {} px",
            m.run_name.as_deref().unwrap_or("-"),
            m.run_id.as_deref().unwrap_or("-"),
            m.classes.len(),
            m.image_size
        )
    }
}

/// What the server holds at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Blue, green.
    pub slots: [Option<Arc<Loaded>>; 2],
    /// The slot `models/LIVE` names.
    pub live: Option<Slot>,
    /// The newest finished run, used while no slot is live.
    pub fallback: Option<Arc<Loaded>>,
}

pub(super) fn index(slot: Slot) -> usize {
    match slot {
        Slot::Blue => 0,
        Slot::Green => 1,
    }
}

impl Snapshot {
    /// A slot's loaded model.
    pub fn slot(&self, slot: Slot) -> Option<&Arc<Loaded>> {
        self.slots[index(slot)].as_ref()
    }

    /// The model that answers and its label (`blue`, `green`, or `run` for the fallback):
    /// the live slot, else the fallback run, else the first filled slot.
    pub fn serving(&self) -> Option<(&'static str, &Arc<Loaded>)> {
        if let Some(live) = self.live
            && let Some(m) = self.slot(live)
        {
            return Some((live.as_str(), m));
        }
        if let Some(m) = &self.fallback {
            return Some(("run", m));
        }
        Slot::ALL
            .iter()
            .find_map(|&s| self.slot(s).map(|m| (s.as_str(), m)))
    }

    /// Every loaded model with its label.
    pub fn loaded(&self) -> Vec<(&'static str, &Arc<Loaded>)> {
        let mut out: Vec<_> = Slot::ALL
            .iter()
            .filter_map(|&s| self.slot(s).map(|m| (s.as_str(), m)))
            .collect();
        if let Some(m) = &self.fallback {
            out.push(("run", m));
        }
        out
    }

    pub(super) fn same_as(&self, other: &Snapshot) -> bool {
        self.live == other.live
            && self
                .slots
                .iter()
                .zip(&other.slots)
                .all(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                })
    }
}
