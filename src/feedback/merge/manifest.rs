//! `merge.csv`, the manifest: one row per image that merge or `flora label` moved, with where
//! it came from, where it went and why. New rows are appended (fsynced; a tail torn by a crash
//! is cut when its journal is replayed, see [`cut_torn_tail`]); an undo, which removes rows,
//! writes it whole and atomically.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::util::fsutil::write_atomic;

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

/// A new batch id: `YYYYMMDD-HHMMSS-xxxx` (sortable).
pub fn new_batch() -> String {
    format!(
        "{}-{}",
        jiff::Zoned::now().strftime("%Y%m%d-%H%M%S"),
        &crate::track::store::new_id()[..4]
    )
}

/// Every row of a manifest (none when it does not exist yet).
pub fn read_manifest(path: &Path) -> Result<Vec<Row>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    r.deserialize()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", path.display()))
}

/// Writes a whole manifest atomically.
pub fn write_manifest(path: &Path, rows: &[Row]) -> Result<()> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    w.write_record(Row::HEADER)?;
    for r in rows {
        w.serialize(r)?;
    }
    write_atomic(path, &w.into_inner()?)
}

/// The CSV text of `rows`, without a header.
fn csv_lines(rows: &[Row]) -> Result<Vec<u8>> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    Ok(w.into_inner()?)
}

/// Appends `rows` to a manifest and fsyncs it: one write at the end of the file, the rows
/// before it untouched. A manifest that does not exist yet, or has another header (an older
/// flora's columns), is written whole instead.
pub fn append_manifest(path: &Path, rows: &[Row]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let header = format!("{}\n", Row::HEADER.join(","));
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return write_manifest(path, rows),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut head = vec![0u8; header.len()];
    let same_header = file.read_exact(&mut head).is_ok() && head == header.as_bytes();
    if !same_header {
        drop(file);
        let mut all = read_manifest(path)?;
        all.extend_from_slice(rows);
        return write_manifest(path, &all);
    }
    let len = file.metadata()?.len();
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    let mut bytes = Vec::new();
    if last[0] != b'\n' {
        // A last line without its newline (an edit by hand): end it first.
        bytes.push(b'\n');
    }
    bytes.extend(csv_lines(rows)?);
    file.write_all(&bytes)
        .and_then(|()| file.sync_data())
        .with_context(|| format!("appending to {}", path.display()))
}

/// Cuts a manifest's last line when it lacks its newline and is the start of one of `rows`:
/// what an append of those rows that a crash cut short leaves. Anything else is kept.
/// Returns whether it cut.
pub fn cut_torn_tail(path: &Path, rows: &[Row]) -> Result<bool> {
    let Ok(text) = std::fs::read(path) else {
        return Ok(false);
    };
    if text.is_empty() || text.ends_with(b"\n") {
        return Ok(false);
    }
    let start = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let tail = &text[start..];
    let mut ours = false;
    for r in rows {
        ours |= csv_lines(std::slice::from_ref(r))?.starts_with(tail);
    }
    if start == 0 || !ours {
        return Ok(false);
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.set_len(start as u64)
        .and_then(|()| file.sync_data())
        .with_context(|| format!("cutting the torn last line of {}", path.display()))?;
    Ok(true)
}

/// Counts of a batch's rows by action.
pub fn count(rows: &[Row], action: Action) -> usize {
    rows.iter().filter(|r| r.action == action).count()
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
        write_manifest(&p, std::slice::from_ref(&row)).unwrap();
        assert_eq!(read_manifest(&p).unwrap(), vec![row]);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("batch,action,source,destination,sha256,"));
        write_manifest(&p, &[]).unwrap();
        assert!(read_manifest(&p).unwrap().is_empty());
    }
}
