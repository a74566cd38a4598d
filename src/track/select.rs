//! Choosing the model, the one place that does it (eval, predict, promote, merge, label):
//! `--run`, `--model`, `--slot`, or by default the live slot, else (eval and predict) the
//! newest FINISHED run.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::config::Settings;
use crate::model::bundle::{ModelBundle, run_bundle_dir};
use crate::track::slots::{Registry, Slot};
use crate::track::store::{RunInfo, RunStatus, RunStore};

/// Which slot the choice names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotChoice {
    Blue,
    Green,
    Live,
}

/// What the user asked for (`--run`, `--model`, `--slot`); all `None` asks for the default.
#[derive(Debug, Clone, Default)]
pub struct ModelChoice {
    /// A run: a unique prefix of its id, or its name.
    pub run: Option<String>,
    /// Any model bundle folder.
    pub model: Option<PathBuf>,
    /// A blue/green slot, or the live one.
    pub slot: Option<SlotChoice>,
}

/// Where a chosen model came from.
#[derive(Debug, Clone)]
pub enum Source {
    Run(RunInfo),
    Slot(Slot, Option<RunInfo>),
    Dir,
}

/// A chosen model bundle folder and its origin.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub dir: PathBuf,
    pub source: Source,
}

impl Chosen {
    /// A short description for stderr: "run NAME (ID)", "slot blue (run ...)", "bundle DIR".
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Run(r) => format!("run {} ({})", r.run_name, r.run_id),
            Source::Slot(s, Some(r)) => format!("slot {s} (run {} {})", r.run_name, r.run_id),
            Source::Slot(s, None) => format!("slot {s} ({})", self.dir.display()),
            Source::Dir => format!("bundle {}", self.dir.display()),
        }
    }

    /// The run the model came from, if the run store has it.
    pub fn run(&self) -> Option<&RunInfo> {
        match &self.source {
            Source::Run(r) | Source::Slot(_, Some(r)) => Some(r),
            _ => None,
        }
    }

    /// The slot the model came from, if any.
    pub fn slot(&self) -> Option<Slot> {
        match self.source {
            Source::Slot(s, _) => Some(s),
            _ => None,
        }
    }

    /// Loads the bundle.
    pub fn load(&self) -> Result<ModelBundle> {
        ModelBundle::load(&self.dir)
    }
}

/// Resolves the model choice for eval and predict: what `args` names, else the live slot,
/// else the newest FINISHED run. Errors name what is missing.
pub fn choose(settings: &Settings, args: &ModelChoice) -> Result<Chosen> {
    if let Some(chosen) = choose_named_or_live(settings, args)? {
        return Ok(chosen);
    }
    let store = RunStore::new(settings.runs_dir());
    match store.latest_finished()? {
        Some(run) => from_run(run),
        None => bail!(
            "no model to use: no slot is live and {} has no finished run (run `flora train`, or pass --model DIR)",
            store.root().display()
        ),
    }
}

/// Resolves the model choice for merge and label: what `args` names, else the live slot, else
/// none (they never fall back to the newest run, unlike predict).
pub fn choose_named_or_live(settings: &Settings, args: &ModelChoice) -> Result<Option<Chosen>> {
    let store = RunStore::new(settings.runs_dir());
    let registry = Registry::new(settings.models_dir());
    if let Some(key) = &args.run {
        let run = store.find(key)?;
        return from_run(run).map(Some);
    }
    if let Some(dir) = &args.model {
        return Ok(Some(Chosen {
            dir: std::path::absolute(dir)?,
            source: Source::Dir,
        }));
    }
    let slot = match args.slot {
        Some(SlotChoice::Blue) => Some(Slot::Blue),
        Some(SlotChoice::Green) => Some(Slot::Green),
        Some(SlotChoice::Live) => Some(registry.live()?.ok_or_else(|| {
            anyhow::anyhow!(
                "no slot is live in {}: run `flora promote RUN`",
                registry.dir().display()
            )
        })?),
        None => registry.live()?,
    };
    slot.map(|slot| from_slot(&registry, &store, slot))
        .transpose()
}

/// The model bundle of a run; an error when the run has none.
pub fn from_run(run: RunInfo) -> Result<Chosen> {
    let dir = run_bundle_dir(&run.artifacts());
    if !dir.is_dir() {
        bail!(
            "run {} ({}) has no model bundle at {}",
            run.run_name,
            run.run_id,
            dir.display()
        );
    }
    if run.status == RunStatus::Running {
        match run.owner() {
            crate::track::store::Owner::Gone => eprintln!(
                "warning: run {} CRASHED: it is marked RUNNING but its process is gone; its model is the last one saved",
                run.run_id
            ),
            _ => eprintln!("warning: run {} is still RUNNING", run.run_id),
        }
    }
    Ok(Chosen {
        dir,
        source: Source::Run(run),
    })
}

/// The model in `slot` (resolved once, so a concurrent promote cannot swap it mid-load).
pub fn from_slot(registry: &Registry, store: &RunStore, slot: Slot) -> Result<Chosen> {
    let Some(dir) = registry.resolve(slot)? else {
        bail!(
            "slot {slot} is empty: promote a run into it first (`flora promote RUN --to {slot}`)"
        );
    };
    let run = registry
        .info(slot)?
        .and_then(|i| store.find(&i.run_id).ok());
    Ok(Chosen {
        dir,
        source: Source::Slot(slot, run),
    })
}
