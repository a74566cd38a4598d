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
pub mod layout;
pub mod manifest;
pub mod moves;
pub mod paths;
pub mod plan;
pub mod relabel;
pub mod status;
pub mod undo;

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Result, bail};

use journal::{Journal, Op, lock_and_recover, pending};
pub use layout::{INBOX, Layout};
use manifest::count;
pub use manifest::{Action, Row, new_batch};
pub use plan::Sorter;
pub use status::{Status, status};
pub use undo::{UndoReport, undo};

/// What `flora merge` should do.
#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    /// Move images predicted with at least this confidence into `dataset/<class>/`.
    pub accept_above: Option<f32>,
    /// Plan and report only.
    pub dry_run: bool,
    /// Limits of decoding the collected images (`data.max_image_megapixels`).
    pub limits: crate::data::imaging::DecodeLimits,
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
        let (l, n) = lock_and_recover(layout)?;
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
        opts.limits,
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
