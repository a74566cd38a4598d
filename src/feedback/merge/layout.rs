//! The folders a merge reads and writes: collected_data, the dataset and its inbox.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::Settings;
use crate::util::fsutil::normalize;

/// The inbox folder's name inside the dataset (never a class: it starts with `_`).
pub const INBOX: &str = "_UNLABELED_SORT_ME";

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
        let dataset = normalize(&settings.data_dir());
        Ok(Self {
            base: normalize(&settings.base),
            inbox: dataset.join(INBOX),
            collected: normalize(&collected),
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

    /// Where accepted images go: `dataset/`, or `dataset/train/` when the class folders are
    /// there (beside `val/` or `test/`, as [`crate::data::dataset::DatasetIndex`] reads it).
    pub fn accept_root(&self) -> PathBuf {
        let train = self.dataset.join("train");
        if train.is_dir()
            && (self.dataset.join("val").is_dir() || self.dataset.join("test").is_dir())
        {
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
    pub(super) fn prune_empty(&self, file: &Path) {
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
}
