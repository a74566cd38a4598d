//! Blue/green model slots under `models/`:
//!
//! ```text
//! models/blue, models/green   each a symlink to a version folder (absent = empty slot);
//!                             a version holds a model bundle plus slot.toml
//! models/.versions/<slot>-<time>-<id>/
//! models/LIVE                 "blue" or "green": the slot that serves
//! models/history.csv          timestamp, action, slot, run_id, accuracy, user, live
//! models/.lock                held by a promote
//! ```
//! A slot is replaced by renaming a new symlink over the old one, so a reader always resolves
//! a whole old version or a whole new one. `LIVE` is written to a temp file and renamed.
//! Switching the live slot never touches either slot's files.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::util::fsutil::{append_line_atomic, now_ms, sync_dir, write_atomic};

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    Blue,
    Green,
}

impl Slot {
    /// Both slots, blue first.
    pub const ALL: [Slot; 2] = [Slot::Blue, Slot::Green];

    /// `blue` or `green`.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Blue => "blue",
            Slot::Green => "green",
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::Blue => Slot::Green,
            Slot::Green => Slot::Blue,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Slot {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "blue" => Ok(Slot::Blue),
            "green" => Ok(Slot::Green),
            other => bail!("unknown slot {other:?}: use blue or green"),
        }
    }
}

/// `slot.toml`: where a slot's model came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SlotInfo {
    pub run_id: String,
    pub run_name: String,
    /// RFC 3339 time of the promotion.
    pub promoted_at: String,
    pub promoted_by: String,
    /// Accuracy measured by the promotion gate (None when the gate did not run).
    pub accuracy: Option<f64>,
    /// The model's own best validation accuracy, from its bundle.
    pub val_accuracy: Option<f64>,
    pub data_fingerprint: String,
}

/// One row of `history.csv`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryRow {
    pub timestamp: String,
    pub action: String,
    pub slot: String,
    pub run_id: String,
    pub accuracy: String,
    pub user: String,
    /// The live slot after this change.
    pub live: String,
}

/// The slots folder.
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

/// Holds `models/.lock` while alive.
pub struct RegistryLock {
    _file: File,
}

impl Registry {
    /// The registry rooted at `dir` (`models/`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The `models/` folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of a slot (a symlink to its current version).
    pub fn slot_path(&self, slot: Slot) -> PathBuf {
        self.dir.join(slot.as_str())
    }

    /// The version folder a slot holds now, resolved once (so a reader keeps reading one
    /// version even if a promote replaces the slot meanwhile), or None for an empty slot.
    pub fn resolve(&self, slot: Slot) -> Result<Option<PathBuf>> {
        let p = self.slot_path(slot);
        match std::fs::canonicalize(&p) {
            Ok(real) if real.join(crate::model::bundle::META_FILE).is_file() => Ok(Some(real)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading slot {}", p.display())),
        }
    }

    /// A slot's `slot.toml`, or None for an empty slot.
    pub fn info(&self, slot: Slot) -> Result<Option<SlotInfo>> {
        let Some(dir) = self.resolve(slot)? else {
            return Ok(None);
        };
        let path = dir.join("slot.toml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(toml::from_str(&text).with_context(|| {
            format!("{} is corrupt", path.display())
        })?))
    }

    /// The live slot, None when `LIVE` does not exist. A corrupt `LIVE` is an error.
    pub fn live(&self) -> Result<Option<Slot>> {
        let path = self.dir.join("LIVE");
        match std::fs::read_to_string(&path) {
            Ok(text) => text.parse().map(Some).with_context(|| {
                format!(
                    "{} is corrupt: it must hold `blue` or `green`",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Takes `models/.lock`, waiting up to `wait` for another promote to finish.
    pub fn lock(&self, wait: Duration) -> Result<RegistryLock> {
        let file = crate::util::fsutil::lock_file(&self.dir.join(".lock"), wait, "promote")?;
        Ok(RegistryLock { _file: file })
    }

    /// Copies the bundle at `bundle` plus `info` into `slot`, replacing what it held. The copy
    /// is made in `models/.tmp-*`, then published by renaming a symlink over the slot.
    pub fn install(
        &self,
        _lock: &RegistryLock,
        slot: Slot,
        bundle: &Path,
        info: &SlotInfo,
    ) -> Result<()> {
        let versions = self.dir.join(".versions");
        std::fs::create_dir_all(&versions)
            .with_context(|| format!("creating {}", versions.display()))?;
        let id = &crate::track::store::new_id()[..8];
        let tmp = self.dir.join(format!(".tmp-{id}"));
        let result = (|| -> Result<PathBuf> {
            std::fs::create_dir_all(&tmp)?;
            for entry in std::fs::read_dir(bundle)
                .with_context(|| format!("reading bundle {}", bundle.display()))?
            {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    let to = tmp.join(entry.file_name());
                    std::fs::copy(entry.path(), &to).with_context(|| {
                        format!("copying {} into {}", entry.path().display(), tmp.display())
                    })?;
                    File::open(&to)?.sync_all()?;
                }
            }
            write_atomic(&tmp.join("slot.toml"), toml::to_string(info)?.as_bytes())?;
            sync_dir(&tmp);
            let version = versions.join(format!("{}-{}-{id}", slot.as_str(), now_ms()));
            std::fs::rename(&tmp, &version)
                .with_context(|| format!("moving {} into place", tmp.display()))?;
            sync_dir(&versions);
            Ok(version)
        })();
        let version = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let previous = self.resolve(slot)?;
        let slot_path = self.slot_path(slot);
        if slot_path.is_dir() && !slot_path.is_symlink() {
            // A slot made by hand as a real folder: keep it as a version, then link.
            let kept = versions.join(format!("{}-manual-{}-{id}", slot.as_str(), now_ms()));
            std::fs::rename(&slot_path, &kept)
                .with_context(|| format!("moving {} to {}", slot_path.display(), kept.display()))?;
            eprintln!(
                "note: the hand-made folder {} was kept as {}",
                slot_path.display(),
                kept.display()
            );
        }
        let link = self.dir.join(format!(".tmp-link-{id}"));
        let target = Path::new(".versions").join(version.file_name().unwrap());
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("creating {}", link.display()))?;
        std::fs::rename(&link, &slot_path)
            .with_context(|| format!("switching {}", slot_path.display()))?;
        sync_dir(&self.dir);
        self.prune(slot, &version, previous.as_deref());
        Ok(())
    }

    /// Removes a slot's old versions, keeping the current one, the one just replaced (a
    /// reader may still be loading it) and hand-made folders kept by [`Registry::install`].
    fn prune(&self, slot: Slot, current: &Path, previous: Option<&Path>) {
        let versions = self.dir.join(".versions");
        let prefix = format!("{}-", slot.as_str());
        let Ok(entries) = std::fs::read_dir(&versions) else {
            return;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let keep = std::fs::canonicalize(&p).ok().is_some_and(|c| {
                c == std::fs::canonicalize(current).unwrap_or_default()
                    || previous
                        .is_some_and(|prev| c == std::fs::canonicalize(prev).unwrap_or_default())
            });
            let manual = name.starts_with(&format!("{prefix}manual-"));
            if name.starts_with(&prefix) && !keep && !manual {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
        // Leftovers of a promote that crashed before publishing.
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(".tmp-") {
                    let p = entry.path();
                    let _ = if p.is_symlink() || p.is_file() {
                        std::fs::remove_file(&p)
                    } else {
                        std::fs::remove_dir_all(&p)
                    };
                }
            }
        }
    }

    /// Makes `slot` live (refused for an empty slot). Touches only `LIVE`.
    pub fn set_live(&self, _lock: &RegistryLock, slot: Slot) -> Result<()> {
        if self.resolve(slot)?.is_none() {
            bail!(
                "slot {slot} is empty: promote a run into it first (`flora promote RUN --to {slot}`)"
            );
        }
        write_atomic(&self.dir.join("LIVE"), format!("{slot}\n").as_bytes())?;
        sync_dir(&self.dir);
        Ok(())
    }

    /// Makes `slot` live under the lock and records it in the history (`action` is `live` or
    /// `rollback`). This is what `flora promote --live` and serve's switch endpoint both do.
    pub fn switch_live(&self, slot: Slot, action: &str) -> Result<()> {
        let lock = self.lock(Duration::from_secs(5))?;
        self.set_live(&lock, slot)?;
        let info = self.info(slot)?;
        self.record(action, slot, info.as_ref())
    }

    /// Appends a row to `history.csv`.
    pub fn record(&self, action: &str, slot: Slot, info: Option<&SlotInfo>) -> Result<()> {
        let path = self.dir.join("history.csv");
        let row = HistoryRow {
            timestamp: jiff::Timestamp::now().to_string(),
            action: action.into(),
            slot: slot.as_str().into(),
            run_id: info.map(|i| i.run_id.clone()).unwrap_or_default(),
            accuracy: info
                .and_then(|i| i.accuracy.or(i.val_accuracy))
                .map(|a| format!("{a:.6}"))
                .unwrap_or_default(),
            user: std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
            live: self
                .live()?
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
        };
        let mut w = csv::WriterBuilder::new()
            .has_headers(!path.exists())
            .from_writer(Vec::new());
        w.serialize(&row)?;
        let text = String::from_utf8(w.into_inner()?)?;
        let mut lines = text.lines();
        if !path.exists() {
            write_atomic(
                &path,
                format!("{}\n", lines.next().unwrap_or_default()).as_bytes(),
            )?;
        }
        for line in lines {
            append_line_atomic(&path, line)?;
        }
        Ok(())
    }

    /// Every row of `history.csv`, oldest first.
    pub fn history(&self) -> Result<Vec<HistoryRow>> {
        let path = self.dir.join("history.csv");
        if !path.exists() {
            return Ok(Vec::new());
        }
        let mut r =
            csv::Reader::from_path(&path).with_context(|| format!("opening {}", path.display()))?;
        r.deserialize()
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", path.display()))
    }

    /// The slot that was live before the current one, from the history.
    pub fn previous_live(&self) -> Result<Slot> {
        let current = self
            .live()?
            .ok_or_else(|| anyhow!("no slot is live yet: nothing to roll back"))?;
        self.history()?
            .iter()
            .rev()
            .filter_map(|r| r.live.parse::<Slot>().ok())
            .find(|s| *s != current)
            .ok_or_else(|| {
                anyhow!("the history has no earlier live slot than {current}: nothing to roll back")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_only_blue_and_green() {
        assert_eq!("blue".parse::<Slot>().unwrap(), Slot::Blue);
        assert!("../x".parse::<Slot>().is_err());
        assert!("BLUE".parse::<Slot>().is_err());
    }
}
