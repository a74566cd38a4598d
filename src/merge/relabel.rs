//! Moves made by hand in `flora label`: a file already in the dataset (in the inbox, or in a
//! class folder when relabelling) goes into another dataset folder. Each decision is a small
//! journal of the session's batch, replayed like a merge's after a crash, never overwriting
//! (a taken name gets a `-2` suffix), and recorded as a manifest row of that batch, so that
//! `flora merge --undo BATCH` puts the whole session back, and [`revert`] single decisions.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::journal::{Entry, Journal, Op};
use super::{Layout, Row, moves, plan};

/// One move to make: `from` (a file inside the dataset) into the folder `to_dir`, under its
/// own name. `row` carries the other columns (action, suggestion, who); its batch, source,
/// destination, sha256 and time are filled in by [`apply`].
#[derive(Debug, Clone)]
pub struct Move {
    pub from: PathBuf,
    pub to_dir: PathBuf,
    pub row: Row,
}

/// A new batch id for a `flora label` session (the same form as a merge's).
pub fn new_batch() -> String {
    super::new_batch()
}

/// Makes the moves as part of `batch`, journalled first; returns the rows recorded (those
/// whose file moved) and warnings for the others. Every path must lie inside the dataset
/// ([`Layout::checked`]); a source that is not a file is an error and nothing moves.
pub fn apply(layout: &Layout, batch: &str, moves: Vec<Move>) -> Result<(Vec<Row>, Vec<String>)> {
    let (lock, mut notes) = layout.lock_and_recover()?;
    let now = jiff::Timestamp::now().to_string();
    let mut reserved = HashSet::new();
    let mut entries = Vec::with_capacity(moves.len());
    for m in moves {
        let inside = |p: &Path| {
            if !p.starts_with(&layout.dataset) {
                bail!(
                    "{} is outside the dataset {}",
                    p.display(),
                    layout.dataset.display()
                );
            }
            layout
                .checked(&layout.rel(p))
                .map_err(|why| anyhow::anyhow!("refused: {why}"))
        };
        let from = inside(&m.from)?;
        if !from.symlink_metadata().is_ok_and(|md| md.is_file()) {
            bail!("{} is not a file (moved or removed since?)", from.display());
        }
        let name = from
            .file_name()
            .with_context(|| format!("{} has no file name", from.display()))?;
        let to = inside(&plan::free_name(&m.to_dir.join(name), &mut reserved))?;
        let mut row = m.row;
        row.batch = batch.to_string();
        row.source = layout.rel(&from);
        row.destination = layout.rel(&to);
        row.sha256 = moves::file_sha(&from)?;
        row.sidecar = String::new();
        row.merged_at = now.clone();
        entries.push(Entry {
            row,
            sidecar_sha256: None,
        });
    }
    if entries.is_empty() {
        return Ok((Vec::new(), notes));
    }
    let mut j = Journal {
        op: Op::Merge,
        batch: batch.to_string(),
        entries,
    };
    j.save(layout)?;
    let outcome = j.execute(layout)?;
    j.commit(layout, &outcome)?;
    notes.extend(outcome.warnings);
    drop(lock);
    let done = j
        .entries
        .into_iter()
        .zip(outcome.done)
        .filter(|(_, d)| *d)
        .map(|(e, _)| e.row)
        .collect();
    Ok((done, notes))
}

/// Puts the files of `rows` (rows of `batch` that [`apply`] recorded) back where they came
/// from and removes the rows from the manifest (kept in `.merge/<batch>.undone.csv`).
/// Returns the rows put back and warnings for the others.
pub fn revert(layout: &Layout, batch: &str, rows: &[Row]) -> Result<(Vec<Row>, Vec<String>)> {
    let (lock, mut notes) = layout.lock_and_recover()?;
    let recorded = super::read_manifest(&layout.manifest())?;
    let mut entries = Vec::new();
    for r in rows {
        if r.batch != batch || !recorded.contains(r) {
            bail!(
                "{} -> {} is not a recorded move of batch {batch} in {}",
                r.source,
                r.destination,
                layout.manifest().display()
            );
        }
        entries.push(Entry {
            row: r.clone(),
            sidecar_sha256: None,
        });
    }
    if entries.is_empty() {
        return Ok((Vec::new(), notes));
    }
    let mut j = Journal {
        op: Op::Undo,
        batch: batch.to_string(),
        entries,
    };
    j.save(layout)?;
    let outcome = j.execute(layout)?;
    j.commit(layout, &outcome)?;
    notes.extend(outcome.warnings);
    drop(lock);
    let done = j
        .entries
        .into_iter()
        .zip(outcome.done)
        .filter(|(_, d)| *d)
        .map(|(e, _)| e.row)
        .collect();
    Ok((done, notes))
}
