//! The models a server holds: every filled blue/green slot, loaded at start, and which one is
//! live. A [`Snapshot`] is immutable; a change (a switch, a re-promote, done through the API or
//! the CLI) builds a new one and swaps it in, so a request keeps the snapshot it started with.
//!
//! A slot that fails to load is retried with a growing delay ([`RETRY_FIRST`] doubling up to
//! [`RETRY_MAX`]), and a broken standby slot does not stop the server: only the model that
//! would answer must load at start.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::track::slots::{Registry, Slot};
use crate::track::store::{RunInfo, RunStore};

use super::prometheus::Metrics;
use super::snapshot::{Loaded, Snapshot, index};

/// How often `models/` is polled for switches and re-promotes done outside the server.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// The first delay before a slot that failed to load is tried again.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest delay between two tries of a slot that fails to load.
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// A slot's version folder that failed to load, and when to try it again.
#[derive(Debug, Clone)]
struct Failed {
    dir: PathBuf,
    next_try: Instant,
    delay: Duration,
    error: String,
}

/// The loaded models, kept in step with `models/`.
pub struct Models {
    registry: Registry,
    current: RwLock<Arc<Snapshot>>,
    /// Serialises refreshes and switches, so a poll never undoes a newer switch.
    reload: Mutex<()>,
    /// Per slot (blue, green): the folder that last failed to load, with its retry time.
    failed: Mutex<[Option<Failed>; 2]>,
    metrics: Arc<Metrics>,
}

impl Models {
    /// Loads every filled slot. With no slot filled, loads the newest finished run of `runs`
    /// instead. A slot that fails to load is logged and retried later, unless it is the live
    /// one (or no filled slot loads at all): then it fails, as when there is nothing to serve.
    pub fn open(registry: Registry, runs: &RunStore, metrics: Arc<Metrics>) -> Result<Self> {
        let models = Self {
            registry,
            current: RwLock::new(Arc::new(Snapshot::default())),
            reload: Mutex::new(()),
            failed: Mutex::new([None, None]),
            metrics,
        };
        models.refresh_locked(true)?;
        let mut snap = (*models.snapshot()).clone();
        let failed = models
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let broken = |slot: Slot| failed[index(slot)].as_ref().map(|f| f.error.clone());
        if let Some(live) = snap.live
            && snap.slot(live).is_none()
            && let Some(error) = broken(live)
        {
            bail!(
                "the live slot {live} cannot be loaded: {error}\n(re-promote a run into it with \
                 `flora promote RUN --to {live}`, or make the other slot live with \
                 `flora promote --live {}`)",
                live.other()
            );
        }
        if snap.slots.iter().all(Option::is_none)
            && let Some(error) = Slot::ALL.iter().find_map(|&s| broken(s))
        {
            bail!("no filled slot can be loaded: {error}");
        }
        if snap.slots.iter().all(Option::is_none) {
            let run: RunInfo = runs.latest_finished()?.with_context(|| {
                format!(
                    "nothing to serve: no slot is filled in {} and {} has no finished run \
                     (run `flora train`, then `flora promote RUN`)",
                    models.registry.dir().display(),
                    runs.root().display()
                )
            })?;
            let dir = crate::model::bundle::run_bundle_dir(&run.artifacts());
            let loaded = Loaded::load(None, dir)
                .with_context(|| format!("loading the newest finished run {}", run.run_id))?;
            eprintln!(
                "no slot is filled in {}: serving the newest finished run {} ({}); \
                 promote a run with `flora promote RUN` to serve from the blue/green slots",
                models.registry.dir().display(),
                run.run_name,
                run.run_id
            );
            snap.fallback = Some(Arc::new(loaded));
            models.set(snap, true);
        } else {
            let snap = models.snapshot();
            models.metrics.models_changed(&snap, true);
        }
        if models.snapshot().serving().is_none() {
            bail!("nothing to serve");
        }
        Ok(models)
    }

    /// The registry the server watches.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The current snapshot (cheap: one Arc clone).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, snap: Snapshot, initial: bool) {
        let snap = Arc::new(snap);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = snap.clone();
        self.metrics.models_changed(&snap, initial);
    }

    /// Re-reads `models/` and loads whatever changed. Returns whether anything did.
    pub fn refresh(&self) -> Result<bool> {
        let _guard = self.reload.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh_locked(false)
    }

    fn refresh_locked(&self, initial: bool) -> Result<bool> {
        let old = self.snapshot();
        let mut new = (*old).clone();
        match self.registry.live() {
            Ok(live) => new.live = live,
            Err(e) => eprintln!("warning: {e:#}; keeping the live slot {:?}", old.live),
        }
        for slot in Slot::ALL {
            let i = index(slot);
            let dir = match self.registry.resolve(slot) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("warning: {e:#}; keeping what slot {slot} held");
                    continue;
                }
            };
            let unchanged = match (&dir, &old.slots[i]) {
                (Some(d), Some(m)) => *d == m.dir,
                (None, None) => true,
                _ => false,
            };
            if unchanged {
                continue;
            }
            let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            match dir {
                None => {
                    new.slots[i] = None;
                    failed[i] = None;
                }
                Some(d) => {
                    let now = Instant::now();
                    let before = failed[i].take().filter(|f| f.dir == d);
                    if let Some(f) = &before
                        && now < f.next_try
                    {
                        failed[i] = before;
                        continue;
                    }
                    match Loaded::load(Some(slot), d.clone()) {
                        Ok(m) => {
                            eprintln!("loaded slot {slot}: {}", m.describe());
                            new.slots[i] = Some(Arc::new(m));
                        }
                        Err(e) => {
                            self.metrics.failure("model_load");
                            let delay =
                                before.map_or(RETRY_FIRST, |f| (f.delay * 2).min(RETRY_MAX));
                            let keeping = if new.slots[i].is_some() {
                                "keeping the model it had"
                            } else {
                                "the slot stays unloaded"
                            };
                            eprintln!(
                                "error: slot {slot} cannot be loaded ({keeping}; next try in {} s): {e:#}",
                                delay.as_secs()
                            );
                            failed[i] = Some(Failed {
                                dir: d,
                                next_try: now + delay,
                                delay,
                                error: format!("{e:#}"),
                            });
                        }
                    }
                }
            }
        }
        if new.same_as(&old) {
            return Ok(false);
        }
        let before = old.serving().map(|(l, m)| (l, m.dir.clone()));
        let after = new.serving().map(|(l, m)| (l, m.dir.clone()));
        if !initial
            && before != after
            && let Some((label, m)) = new.serving()
        {
            eprintln!("now serving {label}: {}", m.describe());
        }
        self.set(new, initial);
        Ok(true)
    }

    /// Makes `slot` live the way `flora promote --live` does (the `LIVE` file and the history),
    /// then serves it. The slot's model is loaded first: an empty slot or one that does not
    /// load is an error and leaves `LIVE` as it was.
    pub fn switch(&self, slot: Slot) -> Result<()> {
        let _guard = self.reload.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self
            .registry
            .resolve(slot)?
            .with_context(|| format!("slot {slot} is empty"))?;
        let old = self.snapshot();
        let loaded = match old.slot(slot) {
            Some(m) if m.dir == dir => m.clone(),
            _ => Arc::new(Loaded::load(Some(slot), dir).map_err(|e| {
                self.metrics.failure("model_load");
                e.context(format!(
                    "slot {slot} cannot be loaded, so the live slot was not changed"
                ))
            })?),
        };
        self.registry.switch_live(slot, "live")?;
        let mut new = (*old).clone();
        new.slots[index(slot)] = Some(loaded);
        new.live = Some(slot);
        self.failed.lock().unwrap_or_else(|e| e.into_inner())[index(slot)] = None;
        self.set(new, false);
        Ok(())
    }

    /// Polls `models/` every [`POLL_INTERVAL`] on a thread of its own until `stop` is set. A
    /// panic during a poll is caught and logged, and polling goes on.
    pub fn watch(self: Arc<Self>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("flora-watch".into())
            .spawn(move || {
                poll_until(
                    &stop,
                    POLL_INTERVAL,
                    || self.refresh(),
                    |problem| {
                        if problem.panicked {
                            self.metrics.failure("watcher_panic");
                        }
                        eprintln!(
                            "{}: reading {}: {}",
                            if problem.panicked { "error" } else { "warning" },
                            self.registry.dir().display(),
                            problem.message
                        );
                    },
                )
            })
            .expect("spawning the models watcher")
    }
}

/// What went wrong in one poll.
#[derive(Debug)]
pub struct PollProblem {
    /// The poll panicked (rather than returned an error).
    pub panicked: bool,
    pub message: String,
}

/// Calls `poll` every `every` until `stop` is set; errors and panics go to `report`, and
/// polling goes on after either.
pub fn poll_until(
    stop: &AtomicBool,
    every: Duration,
    mut poll: impl FnMut() -> Result<bool>,
    mut report: impl FnMut(PollProblem),
) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(every);
        match std::panic::catch_unwind(AssertUnwindSafe(&mut poll)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => report(PollProblem {
                panicked: false,
                message: format!("{e:#}"),
            }),
            Err(payload) => {
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                report(PollProblem {
                    panicked: true,
                    message: format!("the models watcher panicked ({what}); hot reload goes on"),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_poll_does_not_end_the_watcher() {
        let stop = AtomicBool::new(false);
        let mut calls = 0;
        let mut problems = Vec::new();
        poll_until(
            &stop,
            Duration::from_millis(1),
            || {
                calls += 1;
                if calls >= 5 {
                    stop.store(true, Ordering::Relaxed);
                }
                match calls {
                    1 | 3 => panic!("boom {calls}"),
                    2 => anyhow::bail!("unreadable"),
                    _ => Ok(true),
                }
            },
            |p| problems.push(p),
        );
        assert_eq!(calls, 5, "polling went on after the panics");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].panicked && problems[0].message.contains("boom 1"));
        assert!(!problems[1].panicked && problems[1].message.contains("unreadable"));
        assert!(problems[2].panicked && problems[2].message.contains("boom 3"));
    }
}
