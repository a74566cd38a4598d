//! The manifest (`merge.csv`, one row per merged file) and the write-ahead journal.
//!
//! A merge or an undo first writes its whole plan to `_UNLABELED_SORT_ME/.merge/<batch>.<op>.json`
//! (fsynced), then moves the files, fsyncs the folders, records the batch in the manifest, and
//! only then removes the journal. A journal left by a killed run is replayed by the next run:
//! each move is idempotent ([`super::moves::settle`]), and a replay records only the rows the
//! manifest lacks (cutting a row whose append the kill tore).

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::layout::Layout;
use super::manifest::{Row, append_manifest, cut_torn_tail, read_manifest, write_manifest};
use super::moves::{Settled, settle};
use crate::util::fsutil::{sync_dir, write_atomic};

/// Which way a journal moves files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// collected_data → dataset (or _rejected/_duplicates).
    Merge,
    /// Back to where the files came from.
    Undo,
}

impl Op {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Merge => "merge",
            Op::Undo => "undo",
        }
    }
}

/// One image (and its sidecar) in a journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub row: Row,
    /// Content hash of the sidecar, when the image has one.
    pub sidecar_sha256: Option<String>,
}

impl Entry {
    /// Every path of the entry passes [`Layout::checked`], or why not.
    pub fn check(&self, layout: &Layout) -> Result<(), String> {
        let r = &self.row;
        let mut paths = vec![r.source.clone(), r.destination.clone()];
        if let Some(side_src) = self.sidecar_source() {
            paths.extend([r.sidecar.clone(), side_src]);
        }
        for p in &paths {
            layout.checked(p)?;
        }
        Ok(())
    }

    /// The sidecar's place in collected_data before the merge.
    pub fn sidecar_source(&self) -> Option<String> {
        (!self.row.sidecar.is_empty()).then(|| {
            Path::new(&self.row.source)
                .with_extension("json")
                .to_string_lossy()
                .into_owned()
        })
    }
}

/// A batch's plan, written before the first move.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub op: Op,
    pub batch: String,
    pub entries: Vec<Entry>,
}

/// The outcome of replaying a journal: which entries' images ended where the op wanted.
pub struct Outcome {
    pub done: Vec<bool>,
    pub warnings: Vec<String>,
    /// Entries refused because a path in them is unsafe ([`Layout::checked`]): nothing was
    /// done for them.
    pub refused: Vec<usize>,
}

impl Journal {
    /// Where this journal lives.
    pub fn path(&self, layout: &Layout) -> PathBuf {
        layout
            .state_dir()
            .join(format!("{}.{}.json", self.batch, self.op.as_str()))
    }

    /// Writes the journal durably (file and folder fsynced).
    pub fn save(&self, layout: &Layout) -> Result<()> {
        let path = self.path(layout);
        write_atomic(&path, &serde_json::to_vec_pretty(self)?)?;
        sync_dir(&layout.state_dir());
        Ok(())
    }

    /// Moves every file as planned (again, if a run was killed), then fsyncs the folders.
    /// A merge whose destination turned out taken picks a free name, journalled first.
    /// An entry with a path that [`Layout::checked`] refuses is left alone and reported.
    pub fn execute(&mut self, layout: &Layout) -> Result<Outcome> {
        let mut done = vec![false; self.entries.len()];
        let mut warnings = Vec::new();
        let mut refused = Vec::new();
        let mut dirs = BTreeSet::new();
        #[allow(clippy::needless_range_loop)] // entries[i] is rewritten inside the loop
        for i in 0..self.entries.len() {
            if let Err(why) = self.entries[i].check(layout) {
                warnings.push(format!(
                    "refused entry {} of {} (source {:?}, destination {:?}): {why}; nothing was done for it",
                    i + 1,
                    self.path(layout).display(),
                    self.entries[i].row.source,
                    self.entries[i].row.destination,
                ));
                refused.push(i);
                continue;
            }
            for sidecar in [false, true] {
                if sidecar && !done[i] {
                    break; // a sidecar only goes where its image went
                }
                loop {
                    let e = &self.entries[i];
                    let (src, dst, sha) = if sidecar {
                        let (Some(src), Some(sha)) = (e.sidecar_source(), &e.sidecar_sha256) else {
                            break;
                        };
                        (src, e.row.sidecar.clone(), sha.clone())
                    } else {
                        (
                            e.row.source.clone(),
                            e.row.destination.clone(),
                            e.row.sha256.clone(),
                        )
                    };
                    let (src, dst) = (layout.abs(&src), layout.abs(&dst));
                    let (from, to) = match self.op {
                        Op::Merge => (src, dst),
                        Op::Undo => (dst, src),
                    };
                    let r = settle(&from, &to, &sha)?;
                    dirs.extend(from.parent().map(Path::to_path_buf));
                    dirs.extend(to.parent().map(Path::to_path_buf));
                    match (r, self.op) {
                        (Settled::Done, _) => {
                            if !sidecar {
                                done[i] = true;
                            }
                        }
                        (Settled::Conflict, Op::Merge) => {
                            // Someone wrote to the planned name meanwhile: plan a free one.
                            let free = super::moves::free_name(&to, &mut Default::default());
                            let rel = layout.rel(&free);
                            let row = &mut self.entries[i].row;
                            if sidecar {
                                row.sidecar = rel;
                            } else {
                                row.destination = rel;
                            }
                            self.save(layout)?;
                            continue;
                        }
                        (Settled::Conflict, Op::Undo) => warnings.push(format!(
                            "{} was not put back: {} holds another file",
                            from.display(),
                            to.display()
                        )),
                        (Settled::Changed, _) => warnings.push(format!(
                            "{} was not moved to {}: its content changed since it was recorded (sha256 {sha}); left in place",
                            from.display(),
                            to.display()
                        )),
                        (Settled::Missing, _) => warnings.push(format!(
                            "{} is gone (moved or removed since): nothing to move to {}",
                            from.display(),
                            to.display()
                        )),
                    }
                    break;
                }
            }
        }
        for d in &dirs {
            sync_dir(d);
        }
        Ok(Outcome {
            done,
            warnings,
            refused,
        })
    }

    /// A whole journalled step: saves the journal, moves the files, commits the batch. Returns
    /// the rows of the entries that were done and the warnings.
    pub fn run(mut self, layout: &Layout) -> Result<(Vec<Row>, Vec<String>)> {
        self.save(layout)?;
        let outcome = self.execute(layout)?;
        self.commit(layout, &outcome, false)?;
        let done = self
            .entries
            .into_iter()
            .zip(outcome.done)
            .filter(|(_, d)| *d)
            .map(|(e, _)| e.row)
            .collect();
        Ok((done, outcome.warnings))
    }

    /// Records the finished batch and removes the journal. Safe to repeat: a `replay` (of a
    /// journal a killed run left) records only the rows the manifest lacks; a fresh run's
    /// rows are new and are appended without reading the manifest (one `flora label`
    /// decision costs one short write, however long the manifest).
    pub fn commit(&self, layout: &Layout, outcome: &Outcome, replay: bool) -> Result<()> {
        let manifest = layout.manifest();
        let done: Vec<Row> = self
            .entries
            .iter()
            .zip(&outcome.done)
            .filter(|(_, d)| **d)
            .map(|(e, _)| e.row.clone())
            .collect();
        match self.op {
            Op::Merge if !replay => append_manifest(&manifest, &done)?,
            Op::Merge => {
                let all: Vec<Row> = self.entries.iter().map(|e| e.row.clone()).collect();
                cut_torn_tail(&manifest, &all)?;
                let recorded: BTreeSet<(String, String)> = read_manifest(&manifest)?
                    .into_iter()
                    .map(|r| (r.batch, r.destination))
                    .collect();
                let new: Vec<Row> = done
                    .into_iter()
                    .filter(|r| !recorded.contains(&(r.batch.clone(), r.destination.clone())))
                    .collect();
                append_manifest(&manifest, &new)?;
            }
            Op::Undo => {
                let mut rows = read_manifest(&manifest)?;
                let restored: Vec<&Row> = self
                    .entries
                    .iter()
                    .zip(&outcome.done)
                    .filter(|(_, d)| **d)
                    .map(|(e, _)| &e.row)
                    .collect();
                let gone: BTreeSet<(&str, &str)> = restored
                    .iter()
                    .map(|r| (r.batch.as_str(), r.destination.as_str()))
                    .collect();
                let undone = layout
                    .state_dir()
                    .join(format!("{}.undone.csv", self.batch));
                if !restored.is_empty() {
                    // Appended: single decisions of a `flora label` batch are undone one by one.
                    let mut owned = read_manifest(&undone)?;
                    for r in &restored {
                        if !owned.contains(r) {
                            owned.push((*r).clone());
                        }
                    }
                    write_manifest(&undone, &owned)?;
                }
                rows.retain(|r| !gone.contains(&(r.batch.as_str(), r.destination.as_str())));
                write_manifest(&manifest, &rows)?;
                for r in &restored {
                    layout.prune_empty(&layout.abs(&r.destination));
                    if !r.sidecar.is_empty() {
                        layout.prune_empty(&layout.abs(&r.sidecar));
                    }
                }
            }
        }
        if let Some(parent) = manifest.parent() {
            sync_dir(parent);
        }
        let path = self.path(layout);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        sync_dir(&layout.state_dir());
        Ok(())
    }
}

/// Journals left by runs that were killed, oldest first.
pub fn pending(layout: &Layout) -> Result<Vec<Journal>> {
    let dir = layout.state_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            !n.starts_with('.') && (n.ends_with(".merge.json") || n.ends_with(".undo.json"))
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_slice(&text)
                .with_context(|| format!("journal {} is corrupt", p.display()))
        })
        .collect()
}

/// Takes the merge lock of `layout` (one merge or undo at a time), then finishes what a
/// killed run left. Returns the lock and what was finished.
pub fn lock_and_recover(layout: &Layout) -> Result<(File, Vec<String>)> {
    let dir = layout.state_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = crate::util::fsutil::lock_file(
        &dir.join("lock"),
        std::time::Duration::ZERO,
        "flora merge",
    )?;
    // Temp files of atomic writes that a killed run left (only merge writes here).
    for d in [&dir, &layout.inbox] {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let mut notes = Vec::new();
    for mut j in pending(layout)? {
        let outcome = j.execute(layout)?;
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
            let path = j.path(layout).with_extension("refused.json");
            crate::util::fsutil::write_atomic(&path, &serde_json::to_vec_pretty(&kept)?)?;
            notes.push(format!(
                "kept the refused entries in {} (if that batch ran with --from DIR, run with the same --from)",
                path.display()
            ));
        }
        j.commit(layout, &outcome, true)?;
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
