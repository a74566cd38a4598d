//! `flora merge --status`: what waits in the inbox, by suggested class and by date.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;

use super::layout::Layout;
use super::manifest::read_manifest;
use super::plan;

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
