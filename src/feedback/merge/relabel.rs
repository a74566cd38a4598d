//! Moves made by hand in `flora label`: a file already in the dataset (in the inbox, or in a
//! class folder when relabelling) goes into another dataset folder. Each decision is a small
//! journal of the session's batch, replayed like a merge's after a crash, never overwriting
//! (a taken name gets a `-2` suffix), and recorded as a manifest row of that batch, so that
//! `flora merge --undo BATCH` puts the whole session back, and [`revert`] single decisions.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::journal::lock_and_recover;
use super::journal::{Entry, Journal, Op};
use super::layout::Layout;
use super::manifest::{Row, read_manifest};
use super::moves;

/// One move to make: `from` (a file inside the dataset) into the folder `to_dir`, under its
/// own name. `row` carries the other columns (action, suggestion, who); its batch, source,
/// destination, sha256 and time are filled in by [`apply`].
#[derive(Debug, Clone)]
pub struct Move {
    pub from: PathBuf,
    pub to_dir: PathBuf,
    pub row: Row,
}

/// Makes the moves as part of `batch`, journalled first; returns the rows recorded (those
/// whose file moved) and warnings for the others. Every path must lie inside the dataset
/// ([`Layout::checked`]); a source that is not a file is an error and nothing moves.
pub fn apply(layout: &Layout, batch: &str, moves: Vec<Move>) -> Result<(Vec<Row>, Vec<String>)> {
    let (lock, notes) = lock_and_recover(layout)?;
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
        let to = inside(&moves::free_name(&m.to_dir.join(name), &mut reserved))?;
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
    journalled(layout, lock, Op::Merge, batch, entries, notes)
}

/// Puts the files of `rows` (rows of `batch` that [`apply`] recorded) back where they came
/// from and removes the rows from the manifest (kept in `.merge/<batch>.undone.csv`).
/// Returns the rows put back and warnings for the others.
pub fn revert(layout: &Layout, batch: &str, rows: &[Row]) -> Result<(Vec<Row>, Vec<String>)> {
    let (lock, notes) = lock_and_recover(layout)?;
    let recorded = read_manifest(&layout.manifest())?;
    let recorded: HashMap<(&str, &str), &Row> = recorded
        .iter()
        .map(|r| ((r.batch.as_str(), r.destination.as_str()), r))
        .collect();
    let mut entries = Vec::new();
    for r in rows {
        let exact = recorded.get(&(r.batch.as_str(), r.destination.as_str())) == Some(&r);
        if r.batch != batch || !exact {
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
    journalled(layout, lock, Op::Undo, batch, entries, notes)
}

/// Journals `entries` as one `op` of `batch`, carries them out and commits them, holding
/// merge's `lock` until the end; returns the rows done and the warnings after `notes`.
fn journalled<L>(
    layout: &Layout,
    lock: L,
    op: Op,
    batch: &str,
    entries: Vec<Entry>,
    mut notes: Vec<String>,
) -> Result<(Vec<Row>, Vec<String>)> {
    if entries.is_empty() {
        return Ok((Vec::new(), notes));
    }
    let j = Journal {
        op,
        batch: batch.to_string(),
        entries,
    };
    let (done, warnings) = j.run(layout)?;
    notes.extend(warnings);
    drop(lock);
    Ok((done, notes))
}

#[cfg(test)]
mod tests {
    use super::super::layout::INBOX;
    use super::super::manifest::Action;
    use super::*;

    fn layout(base: &Path) -> Layout {
        let dataset = base.join("dataset");
        Layout {
            base: base.to_path_buf(),
            collected: base.join("collected_data"),
            inbox: dataset.join(INBOX),
            dataset,
        }
    }

    fn template(class: &str) -> Row {
        Row {
            batch: String::new(),
            action: Action::Labelled,
            source: String::new(),
            destination: String::new(),
            sha256: String::new(),
            collected_date: "2026-01-01".into(),
            predicted_class: "bag".into(),
            confidence: Some(0.4),
            slot: String::new(),
            run_id: String::new(),
            predicted_by: "label".into(),
            serve_class: String::new(),
            serve_confidence: None,
            serve_slot: String::new(),
            serve_run_id: String::new(),
            sidecar: String::new(),
            reason: String::new(),
            merged_at: String::new(),
            labelled_class: class.into(),
            labelled_by: "me".into(),
        }
    }

    #[test]
    fn decisions_grow_one_batch_never_overwrite_and_revert_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        let inbox = l.inbox.join("bag");
        std::fs::create_dir_all(&inbox).unwrap();
        std::fs::create_dir_all(l.dataset.join("bag")).unwrap();
        std::fs::write(inbox.join("a.png"), b"new").unwrap();
        std::fs::write(l.inbox.join("b.png"), b"other").unwrap();
        // Someone else's file already has the name: it is kept, the move gets `a-2.png`.
        std::fs::write(l.dataset.join("bag/a.png"), b"old").unwrap();
        let batch = super::super::manifest::new_batch();
        let mv = |from: PathBuf| Move {
            from,
            to_dir: l.dataset.join("bag"),
            row: template("bag"),
        };
        let (first, notes) = apply(&l, &batch, vec![mv(inbox.join("a.png"))]).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(first[0].destination, "dataset/bag/a-2.png");
        assert_eq!(std::fs::read(l.dataset.join("bag/a.png")).unwrap(), b"old");
        assert_eq!(
            std::fs::read(l.dataset.join("bag/a-2.png")).unwrap(),
            b"new"
        );
        let (second, _) = apply(&l, &batch, vec![mv(l.inbox.join("b.png"))]).unwrap();
        let rows = read_manifest(&l.manifest()).unwrap();
        assert_eq!(
            rows,
            vec![first[0].clone(), second[0].clone()],
            "one batch, two rows"
        );
        assert!(
            rows.iter()
                .all(|r| r.batch == batch && !r.merged_at.is_empty())
        );
        // Paths outside the dataset, or the manifest itself, are refused before any move.
        let outside = dir.path().join("flora.toml");
        std::fs::write(&outside, b"x").unwrap();
        assert!(apply(&l, &batch, vec![mv(outside.clone())]).is_err());
        assert!(apply(&l, &batch, vec![mv(l.manifest())]).is_err());
        assert!(outside.is_file());
        // Single decisions go back one at a time; the undone rows are all kept.
        let (back, _) = revert(&l, &batch, &second).unwrap();
        assert_eq!(back, second);
        assert!(l.inbox.join("b.png").is_file());
        assert!(revert(&l, &batch, &second).is_err(), "already reverted");
        revert(&l, &batch, &first).unwrap();
        assert!(inbox.join("a.png").is_file());
        assert!(read_manifest(&l.manifest()).unwrap().is_empty());
        let undone = read_manifest(&l.state_dir().join(format!("{batch}.undone.csv"))).unwrap();
        assert_eq!(undone.len(), 2);
        assert!(super::super::journal::pending(&l).unwrap().is_empty());
    }

    #[test]
    fn a_decision_cut_off_after_its_journal_is_finished_by_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        std::fs::create_dir_all(&l.inbox).unwrap();
        std::fs::write(l.inbox.join("a.png"), b"a").unwrap();
        std::fs::write(l.inbox.join("b.png"), b"b").unwrap();
        let batch = super::super::manifest::new_batch();
        // What a process killed right after writing its journal leaves.
        let mut row = template("bag");
        row.batch = batch.clone();
        row.source = "dataset/_UNLABELED_SORT_ME/a.png".into();
        row.destination = "dataset/bag/a.png".into();
        row.sha256 = moves::file_sha(&l.inbox.join("a.png")).unwrap();
        Journal {
            op: Op::Merge,
            batch: batch.clone(),
            entries: vec![Entry {
                row,
                sidecar_sha256: None,
            }],
        }
        .save(&l)
        .unwrap();
        let m = Move {
            from: l.inbox.join("b.png"),
            to_dir: l.dataset.join("bag"),
            row: template("bag"),
        };
        let (_, notes) = apply(&l, &batch, vec![m]).unwrap();
        assert!(
            notes.iter().any(|n| n.contains("finished the interrupted")),
            "{notes:?}"
        );
        assert!(l.dataset.join("bag/a.png").is_file() && l.dataset.join("bag/b.png").is_file());
        assert_eq!(read_manifest(&l.manifest()).unwrap().len(), 2);
    }
    #[test]
    fn a_decision_appends_its_row_and_a_torn_append_is_cut_on_replay() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        std::fs::create_dir_all(&l.inbox).unwrap();
        for n in ["a", "b", "c"] {
            std::fs::write(l.inbox.join(format!("{n}.png")), n).unwrap();
        }
        let batch = super::super::manifest::new_batch();
        let mv = |n: &str| Move {
            from: l.inbox.join(format!("{n}.png")),
            to_dir: l.dataset.join("bag"),
            row: template("bag"),
        };
        let (first, _) = apply(&l, &batch, vec![mv("a")]).unwrap();
        let before = std::fs::read(l.manifest()).unwrap();
        let inode = std::fs::metadata(l.manifest()).unwrap().ino();
        let (second, _) = apply(&l, &batch, vec![mv("b")]).unwrap();
        let after = std::fs::read(l.manifest()).unwrap();
        assert!(
            after.starts_with(&before),
            "the earlier rows were rewritten"
        );
        assert_eq!(
            std::fs::metadata(l.manifest()).unwrap().ino(),
            inode,
            "the manifest was replaced, not appended to"
        );
        assert_eq!(
            read_manifest(&l.manifest()).unwrap(),
            vec![first[0].clone(), second[0].clone()]
        );
        // Undo stays exact: it removes just that row.
        revert(&l, &batch, &second).unwrap();
        assert_eq!(read_manifest(&l.manifest()).unwrap(), first);

        // A kill in the middle of an append: the journal is left, the manifest ends in half
        // a row. The next decision replays the journal, cuts the half row and records it once.
        let mut row = template("bag");
        row.batch = batch.clone();
        row.source = "dataset/_UNLABELED_SORT_ME/c.png".into();
        row.destination = "dataset/bag/c.png".into();
        row.sha256 = moves::file_sha(&l.inbox.join("c.png")).unwrap();
        row.merged_at = "2026-01-01T00:00:00Z".into();
        Journal {
            op: Op::Merge,
            batch: batch.clone(),
            entries: vec![Entry {
                row: row.clone(),
                sidecar_sha256: None,
            }],
        }
        .save(&l)
        .unwrap();
        let mut line = Vec::new();
        {
            let mut w = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(&mut line);
            w.serialize(&row).unwrap();
        }
        let mut torn = std::fs::read(l.manifest()).unwrap();
        torn.extend_from_slice(&line[..line.len() / 2]);
        std::fs::write(l.manifest(), &torn).unwrap();
        let (third, notes) = apply(&l, &batch, vec![mv("b")]).unwrap();
        assert!(
            notes.iter().any(|n| n.contains("finished the interrupted")),
            "{notes:?}"
        );
        let rows = read_manifest(&l.manifest()).unwrap();
        assert_eq!(rows, vec![first[0].clone(), row, third[0].clone()]);
    }
}
