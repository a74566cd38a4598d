//! `flora merge --undo BATCH`: put every file of a batch back where it came from.

use anyhow::{Result, bail};

use super::journal::{self, Journal, Op, lock_and_recover};
use super::layout::Layout;
use super::manifest::{Row, read_manifest};
use super::moves;

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
        let (l, n) = lock_and_recover(layout)?;
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
