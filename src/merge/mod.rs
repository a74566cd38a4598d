//! `flora merge`: fold the uploads that `flora serve` collected back into the dataset.
//!
//! ```text
//! collected_data/YYYY-MM-DD/<id>.<ext>         taken when finished (hidden `.tmp-*` never)
//!   → dataset/_UNLABELED_SORT_ME/[<class>/]    new images, pre-sorted when there is a model
//!   → dataset/<class>/                         with --accept-above P and confidence >= P
//!   → collected_data/_duplicates/YYYY-MM-DD/   content already in the dataset or the inbox
//!   → collected_data/_rejected/YYYY-MM-DD/     does not decode (reason in the manifest)
//! collected_data/YYYY-MM-DD/<id>.json (sidecar) goes with its image: beside it under
//!   _duplicates/ or _rejected/, else to collected_data/_merged/YYYY-MM-DD/ (no JSON ever lands
//!   in the dataset). The manifest row of the image names where it went.
//! dataset/_UNLABELED_SORT_ME/merge.csv         the manifest: one row per image
//! dataset/_UNLABELED_SORT_ME/.merge/           lock, journals of unfinished batches,
//!                                              <batch>.undone.csv for undone batches,
//!                                              hashes.json (the dataset's hash cache)
//! ```
//! Nothing is ever deleted or overwritten: every move is journalled first and replayable
//! ([`journal`]), and destination names that are taken get a `-2`, `-3`... suffix.

pub mod hashes;
pub mod journal;
pub mod moves;
pub mod paths;
pub mod plan;
pub mod relabel;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::registry::Registry;
use crate::select::{self, Chosen, ModelArgs};
use journal::{Journal, Op, count, pending, read_manifest};
pub use plan::Sorter;

/// The inbox folder's name inside the dataset (never a class: it starts with `_`).
pub const INBOX: &str = "_UNLABELED_SORT_ME";

/// Where a file went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Into the inbox, to be sorted by hand.
    Inbox,
    /// Straight into `dataset/<class>/` (`--accept-above`).
    Accepted,
    /// Already in the dataset: to `collected_data/_duplicates/`.
    Duplicate,
    /// Not a decodable image: to `collected_data/_rejected/`; or rejected by hand in
    /// `flora label`: to `dataset/_rejected/`.
    Rejected,
    /// Sorted by hand in `flora label`: into `dataset/<class>/` (or from one class folder
    /// to another).
    Labelled,
}

/// One row of `merge.csv`. Paths are relative to the project folder (the config's folder)
/// when inside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub batch: String,
    pub action: Action,
    /// Where the image was in collected_data.
    pub source: String,
    /// Where the image is now.
    pub destination: String,
    pub sha256: String,
    /// `YYYY-MM-DD` the upload was collected.
    pub collected_date: String,
    /// The prediction that sorted the image: the model merge used, or, when merge had no
    /// model, serve's prediction from the sidecar (see `predicted_by`).
    pub predicted_class: String,
    pub confidence: Option<f32>,
    /// The slot and run of the model that made the prediction.
    pub slot: String,
    pub run_id: String,
    /// `merge` (the model merge used), `serve` (from the sidecar), or empty.
    pub predicted_by: String,
    /// What serve predicted at upload time, from the sidecar (empty without one).
    pub serve_class: String,
    pub serve_confidence: Option<f32>,
    pub serve_slot: String,
    pub serve_run_id: String,
    /// Where the image's sidecar is now (empty when it had none).
    pub sidecar: String,
    /// Why an image was rejected, or what a duplicate duplicates.
    pub reason: String,
    /// RFC 3339 time of the merge (of the decision, for `flora label`'s rows).
    pub merged_at: String,
    /// `flora label`: the class a person chose (empty for a rejection and merge's rows).
    #[serde(default)]
    pub labelled_class: String,
    /// `flora label`: who chose it (`--user`, else `$USER`).
    #[serde(default)]
    pub labelled_by: String,
}

impl Row {
    /// The CSV header, in field order.
    pub const HEADER: [&str; 20] = [
        "batch",
        "action",
        "source",
        "destination",
        "sha256",
        "collected_date",
        "predicted_class",
        "confidence",
        "slot",
        "run_id",
        "predicted_by",
        "serve_class",
        "serve_confidence",
        "serve_slot",
        "serve_run_id",
        "sidecar",
        "reason",
        "merged_at",
        "labelled_class",
        "labelled_by",
    ];
}

/// The folders a merge reads and writes.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The project folder; manifest paths are relative to it.
    pub base: PathBuf,
    pub collected: PathBuf,
    pub dataset: PathBuf,
    pub inbox: PathBuf,
}

impl Layout {
    /// The layout of `settings`, with `from` (if given) as the collected-data folder.
    pub fn new(settings: &Settings, from: Option<&Path>) -> Result<Self> {
        let collected = match from {
            Some(p) => {
                std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))?
            }
            None => settings.collected_dir(),
        };
        let dataset = paths::normalize(&settings.data_dir());
        Ok(Self {
            base: paths::normalize(&settings.base),
            inbox: dataset.join(INBOX),
            collected: paths::normalize(&collected),
            dataset,
        })
    }

    /// `dataset/_UNLABELED_SORT_ME/merge.csv`.
    pub fn manifest(&self) -> PathBuf {
        self.inbox.join("merge.csv")
    }

    /// The files waiting in the inbox, sorted by name, each with the folder it was filed
    /// under inside the inbox (if any). Hidden entries (`.merge/`, temp files) and the manifest
    /// are left out; no inbox means none.
    pub fn inbox_files(&self) -> Result<Vec<(PathBuf, Option<String>)>> {
        let mut files = Vec::new();
        if !self.inbox.is_dir() {
            return Ok(files);
        }
        let manifest = self.manifest();
        let walker = walkdir::WalkDir::new(&self.inbox)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
        for e in walker {
            let e = e.with_context(|| format!("listing {}", self.inbox.display()))?;
            if !e.file_type().is_file() || e.path() == manifest {
                continue;
            }
            let rel = e.path().strip_prefix(&self.inbox).unwrap_or(e.path());
            let folder = (rel.components().count() > 1)
                .then(|| rel.components().next())
                .flatten()
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            files.push((e.into_path(), folder));
        }
        Ok(files)
    }

    /// `dataset/_UNLABELED_SORT_ME/.merge/`: lock and journals.
    pub fn state_dir(&self) -> PathBuf {
        self.inbox.join(".merge")
    }

    /// Where accepted images go: `dataset/`, or `dataset/train/` for a fixed train/val split.
    pub fn accept_root(&self) -> PathBuf {
        let train = self.dataset.join("train");
        if train.is_dir() && self.dataset.join("val").is_dir() {
            train
        } else {
            self.dataset.clone()
        }
    }

    /// `p` as written in the manifest: relative to the project folder when inside it.
    pub fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.base)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    }

    /// A manifest path made absolute again, unchecked: only for looking up, never for moving
    /// (see [`Layout::checked`]).
    pub fn abs(&self, s: &str) -> PathBuf {
        self.base.join(s)
    }

    /// `.merge/hashes.json`: the dataset's content hashes by (path, size, mtime).
    pub fn hash_cache(&self) -> PathBuf {
        self.state_dir().join("hashes.json")
    }

    /// Removes the now-empty folders that held `file`, within the inbox and collected_data's
    /// `_` folders only.
    fn prune_empty(&self, file: &Path) {
        let mut dir = file.parent();
        while let Some(d) = dir {
            let in_inbox = d.starts_with(&self.inbox) && d != self.inbox;
            let in_ours = d
                .strip_prefix(&self.collected)
                .ok()
                .and_then(|r| r.components().next())
                .is_some_and(|c| c.as_os_str().to_string_lossy().starts_with('_'));
            if !(in_inbox || in_ours) || std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }

    /// Takes the merge lock (one merge or undo at a time), then finishes what a killed run
    /// left. Returns the lock and what was finished.
    fn lock_and_recover(&self) -> Result<(File, Vec<String>)> {
        let dir = self.state_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let file =
            crate::fsutil::lock_file(&dir.join("lock"), std::time::Duration::ZERO, "flora merge")?;
        // Temp files of atomic writes that a killed run left (only merge writes here).
        for d in [&dir, &self.inbox] {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let mut notes = Vec::new();
        for mut j in pending(self)? {
            let outcome = j.execute(self)?;
            if !outcome.refused.is_empty() {
                // Keep the refused entries for the record; they are never replayed.
                let kept = Journal {
                    op: j.op,
                    batch: j.batch.clone(),
                    entries: outcome
                        .refused
                        .iter()
                        .map(|&i| j.entries[i].clone())
                        .collect(),
                };
                let path = j.path(self).with_extension("refused.json");
                crate::fsutil::write_atomic(&path, &serde_json::to_vec_pretty(&kept)?)?;
                notes.push(format!(
                    "kept the refused entries in {} (if that batch ran with --from DIR, run with the same --from)",
                    path.display()
                ));
            }
            j.commit(self, &outcome)?;
            let op = match j.op {
                Op::Merge => "merge",
                Op::Undo => "undo",
            };
            notes.push(format!(
                "finished the interrupted {op} of batch {} ({} file(s))",
                j.batch,
                outcome.done.iter().filter(|d| **d).count()
            ));
            notes.extend(outcome.warnings);
        }
        Ok((file, notes))
    }
}

/// The model to pre-sort with: the one the flags name, else the live slot, else none (merge
/// never falls back to the newest run, unlike predict).
pub fn choose_model(settings: &Settings, args: &ModelArgs) -> Result<Option<Chosen>> {
    if args.run.is_some() || args.model.is_some() || args.slot.is_some() {
        return select::choose(settings, args).map(Some);
    }
    let registry = Registry::new(settings.models_dir());
    match registry.live()? {
        Some(slot) => {
            let store = crate::store::RunStore::new(settings.runs_dir());
            select::from_slot(&registry, &store, slot).map(Some)
        }
        None => Ok(None),
    }
}

/// Loads a chosen model as a [`Sorter`], with the thresholds it answers with (the config's
/// `[thresholds]` when set, else the bundle's).
pub fn sorter(settings: &Settings, chosen: &Chosen) -> Result<Sorter> {
    let bundle = chosen.load()?;
    let thresholds = crate::unknown::effective(settings, &bundle.meta);
    let run_id = bundle
        .meta
        .run_id
        .clone()
        .or_else(|| chosen.run().map(|r| r.run_id.clone()))
        .unwrap_or_default();
    Ok(Sorter {
        bundle,
        slot: chosen.slot().map(|s| s.to_string()).unwrap_or_default(),
        run_id,
        thresholds,
    })
}

/// What `flora merge` should do.
#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    /// Move images predicted with at least this confidence into `dataset/<class>/`.
    pub accept_above: Option<f32>,
    /// Plan and report only.
    pub dry_run: bool,
}

/// The result of a merge (or of a dry run).
#[derive(Debug, Clone)]
pub struct MergeReport {
    pub batch: String,
    /// One row per image, in the order they were found.
    pub rows: Vec<Row>,
    /// Whether a model pre-sorted the new images.
    pub sorted: bool,
    /// JSON files with no image beside them (left in place).
    pub lone_sidecars: usize,
    /// What was finished of earlier, interrupted runs, and files that could not be moved.
    pub notes: Vec<String>,
    pub manifest: PathBuf,
}

impl MergeReport {
    /// "collected 412, new 380 (pre-sorted into 5 classes, 121 accepted), duplicates 25, rejected 7".
    pub fn summary(&self) -> String {
        let inbox = count(&self.rows, Action::Inbox);
        let accepted = count(&self.rows, Action::Accepted);
        let new = inbox + accepted;
        let detail = if self.sorted {
            let classes: BTreeSet<&str> = self
                .rows
                .iter()
                .filter(|r| matches!(r.action, Action::Inbox | Action::Accepted))
                .map(|r| r.predicted_class.as_str())
                .collect();
            let unknown = self
                .rows
                .iter()
                .filter(|r| r.action == Action::Inbox && r.reason.starts_with("unknown"))
                .count();
            format!(
                "pre-sorted into {} class{}, {accepted} accepted, {unknown} unknown left unsorted",
                classes.len(),
                if classes.len() == 1 { "" } else { "es" }
            )
        } else {
            format!("into {INBOX}, not pre-sorted: no model")
        };
        format!(
            "collected {}, new {new} ({detail}), duplicates {}, rejected {}",
            self.rows.len(),
            count(&self.rows, Action::Duplicate),
            count(&self.rows, Action::Rejected)
        )
    }
}

/// A new batch id: `YYYYMMDD-HHMMSS-xxxx` (sortable).
pub(crate) fn new_batch() -> String {
    format!(
        "{}-{}",
        jiff::Zoned::now().strftime("%Y%m%d-%H%M%S"),
        &crate::store::new_id()[..4]
    )
}

/// Runs a merge: finishes any interrupted one, then plans, journals, moves and records a new
/// batch. A dry run only plans.
pub fn merge(layout: &Layout, sorter: Option<&Sorter>, opts: &MergeOptions) -> Result<MergeReport> {
    if opts.accept_above.is_some() && sorter.is_none() {
        bail!(
            "--accept-above needs a model: make a slot live (`flora promote RUN --live`) or pass --model/--run/--slot"
        );
    }
    let (lock, mut notes) = if opts.dry_run {
        let n = pending(layout)?.len();
        let notes = if n > 0 {
            vec![format!(
                "{n} interrupted merge/undo batch(es) will be finished first (run without --dry-run)"
            )]
        } else {
            Vec::new()
        };
        (None, notes)
    } else {
        let (l, n) = layout.lock_and_recover()?;
        (Some(l), n)
    };
    let scan = plan::scan(&layout.collected)?;
    let batch = new_batch();
    let hashed = hashes::dataset_hashes(layout)?;
    if !opts.dry_run {
        hashed.save(layout)?;
    }
    let entries = plan::plan(
        layout,
        &batch,
        &scan.images,
        sorter,
        opts.accept_above,
        hashed.known,
    )?;
    let mut report = MergeReport {
        batch,
        rows: entries.iter().map(|e| e.row.clone()).collect(),
        sorted: sorter.is_some(),
        lone_sidecars: scan.lone_sidecars,
        notes: Vec::new(),
        manifest: layout.manifest(),
    };
    if !opts.dry_run && !entries.is_empty() {
        let j = Journal {
            op: Op::Merge,
            batch: report.batch.clone(),
            entries,
        };
        let (done, warnings) = j.run(layout)?;
        report.rows = done;
        notes.extend(warnings);
    }
    report.notes = notes;
    drop(lock);
    Ok(report)
}

/// The result of an undo.
#[derive(Debug, Clone)]
pub struct UndoReport {
    /// The batch's rows that were (or, in a dry run, would be) put back.
    pub restored: Vec<Row>,
    pub notes: Vec<String>,
}

/// Puts every file of `batch` back where it came from (its sidecar too) and removes the
/// batch's rows from the manifest (kept in `.merge/<batch>.undone.csv`).
pub fn undo(layout: &Layout, batch: &str, dry_run: bool) -> Result<UndoReport> {
    let (lock, mut notes) = if dry_run {
        (None, Vec::new())
    } else {
        let (l, n) = layout.lock_and_recover()?;
        (Some(l), n)
    };
    let rows: Vec<Row> = read_manifest(&layout.manifest())?
        .into_iter()
        .filter(|r| r.batch == batch)
        .collect();
    if rows.is_empty() {
        let undone = layout.state_dir().join(format!("{batch}.undone.csv"));
        if undone.exists() {
            bail!(
                "batch {batch} was already undone (see {})",
                undone.display()
            );
        }
        bail!(
            "no batch {batch} in {} (see `flora merge --status` for the batches)",
            layout.manifest().display()
        );
    }
    if dry_run {
        return Ok(UndoReport {
            restored: rows,
            notes,
        });
    }
    let entries = rows
        .into_iter()
        .map(|row| {
            // Read only when the path is safe; a refused one is reported by `execute`.
            let side = layout.checked(&row.sidecar).ok();
            let sidecar_sha256 = match side {
                _ if row.sidecar.is_empty() => None,
                Some(side) if moves::exists(&side) => Some(moves::file_sha(&side)?),
                _ => Some(String::new()),
            };
            Ok(journal::Entry {
                row,
                sidecar_sha256,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let j = Journal {
        op: Op::Undo,
        batch: batch.to_string(),
        entries,
    };
    let (restored, warnings) = j.run(layout)?;
    notes.extend(warnings);
    drop(lock);
    Ok(UndoReport { restored, notes })
}

/// What is waiting in the inbox.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Images in the inbox.
    pub waiting: usize,
    /// Suggested class (the inbox subfolder; empty = not pre-sorted) → count.
    pub by_class: BTreeMap<String, usize>,
    /// Collected date (from the manifest; `unknown` for files put there by hand) → count.
    pub by_date: BTreeMap<String, usize>,
    /// Finished uploads in collected_data not merged yet.
    pub not_merged: usize,
    /// Batches in the manifest with their row counts, oldest first.
    pub batches: Vec<(String, usize)>,
}

/// Counts the inbox by suggested class and by date.
pub fn status(layout: &Layout) -> Result<Status> {
    let rows = read_manifest(&layout.manifest())?;
    let dates: BTreeMap<PathBuf, &str> = rows
        .iter()
        .map(|r| (layout.abs(&r.destination), r.collected_date.as_str()))
        .collect();
    let mut st = Status::default();
    for (path, folder) in layout.inbox_files()? {
        st.waiting += 1;
        *st.by_class.entry(folder.unwrap_or_default()).or_default() += 1;
        let date = dates
            .get(&path)
            .filter(|d| !d.is_empty())
            .map_or("unknown".to_string(), |d| d.to_string());
        *st.by_date.entry(date).or_default() += 1;
    }
    st.not_merged = plan::scan(&layout.collected)?.images.len();
    for r in &rows {
        match st.batches.last_mut() {
            Some((b, n)) if *b == r.batch => *n += 1,
            _ => st.batches.push((r.batch.clone(), 1)),
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_matches_the_row_fields() {
        let row = Row {
            batch: "b".into(),
            action: Action::Inbox,
            source: "s".into(),
            destination: "d".into(),
            sha256: "h".into(),
            collected_date: "2026-01-01".into(),
            predicted_class: "c".into(),
            confidence: Some(0.5),
            slot: String::new(),
            run_id: String::new(),
            predicted_by: String::new(),
            serve_class: "c".into(),
            serve_confidence: None,
            serve_slot: "blue".into(),
            serve_run_id: String::new(),
            sidecar: String::new(),
            reason: "x, \"y\"".into(),
            merged_at: "t".into(),
            labelled_class: "c".into(),
            labelled_by: "me".into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.csv");
        journal::write_manifest(&p, std::slice::from_ref(&row)).unwrap();
        assert_eq!(read_manifest(&p).unwrap(), vec![row]);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("batch,action,source,destination,sha256,"));
        journal::write_manifest(&p, &[]).unwrap();
        assert!(read_manifest(&p).unwrap().is_empty());
    }
}
