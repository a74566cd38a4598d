//! The content hashes of every file already in the dataset (to find duplicates), cached in
//! `_UNLABELED_SORT_ME/.merge/hashes.json` by (path, size, mtime) so that a merge reads only
//! the files that are new or changed since the last one, not the whole dataset.
//!
//! Like git's index, a file modified within two seconds before it was hashed is not cached
//! (a later edit in the same timestamp tick would keep its mtime). The cache is read without
//! trust: entries with unsafe paths are ignored, a corrupt file is ignored whole.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use walkdir::WalkDir;

use super::layout::Layout;
use crate::util::fingerprint::{hex, sha256};

/// Files modified this close (ns) before their hashing started are not cached.
const RACY_NS: u64 = 2_000_000_000;

/// One cached hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cached {
    size: u64,
    mtime_ns: u64,
    sha256: String,
}

/// `hashes.json`: dataset-relative path → hash.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    files: BTreeMap<String, Cached>,
}

/// The dataset's hashes, with what it took to get them.
pub struct DatasetHashes {
    /// Content hash → first path (as the manifest writes it) holding it.
    pub known: HashMap<String, String>,
    /// Files in the dataset.
    pub files: usize,
    /// Files read and hashed now (the rest came from the cache).
    pub hashed: usize,
    cache: CacheFile,
}

impl DatasetHashes {
    /// Writes the cache atomically (a merge does, under its lock; a dry run does not).
    pub fn save(&self, layout: &Layout) -> Result<()> {
        crate::util::fsutil::write_atomic(&layout.hash_cache(), &serde_json::to_vec(&self.cache)?)
    }
}

/// A cache key read back from disk is used only when it is a plain relative path.
fn safe_key(k: &str) -> bool {
    let p = Path::new(k);
    !k.is_empty()
        && p.components().all(|c| match c {
            Component::Normal(n) => !n.to_string_lossy().starts_with('.'),
            _ => false,
        })
}

fn read_cache(path: &Path) -> CacheFile {
    let Ok(bytes) = std::fs::read(path) else {
        return CacheFile::default();
    };
    let mut c: CacheFile = serde_json::from_slice(&bytes).unwrap_or_default();
    c.files.retain(|k, v| {
        safe_key(k) && v.sha256.len() == 64 && v.sha256.bytes().all(|b| b.is_ascii_hexdigit())
    });
    c
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Hashes every file of the dataset, inbox included (the merge's own bookkeeping excepted),
/// reading only those the cache does not vouch for. `FLORA_MERGE_STATS=1` prints the counts.
pub fn dataset_hashes(layout: &Layout) -> Result<DatasetHashes> {
    let root = &layout.dataset;
    let old = read_cache(&layout.hash_cache());
    let mut out = DatasetHashes {
        known: HashMap::new(),
        files: 0,
        hashed: 0,
        cache: CacheFile::default(),
    };
    if !root.is_dir() {
        return Ok(out);
    }
    let started = now_ns();
    let manifest = layout.manifest();
    let mut files: Vec<(PathBuf, String, u64, Option<u64>)> = Vec::new();
    let walker = WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for e in walker {
        let e = e.with_context(|| format!("listing {}", root.display()))?;
        if !e.file_type().is_file() || e.path() == manifest {
            continue;
        }
        let meta = e
            .metadata()
            .with_context(|| format!("reading {}", e.path().display()))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as u64);
        let key = e
            .path()
            .strip_prefix(root)
            .unwrap_or(e.path())
            .to_string_lossy()
            .into_owned();
        files.push((e.into_path(), key, meta.len(), mtime));
    }
    let hashed: Vec<(String, bool)> = files
        .par_iter()
        .map(|(p, key, size, mtime)| -> Result<(String, bool)> {
            if let (Some(c), Some(m)) = (old.files.get(key), mtime)
                && c.size == *size
                && c.mtime_ns == *m
            {
                return Ok((c.sha256.clone(), false));
            }
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Ok((hex(&sha256(&bytes)), true))
        })
        .collect::<Result<_>>()?;
    for ((p, key, size, mtime), (sha, read)) in files.iter().zip(hashed) {
        out.files += 1;
        out.hashed += usize::from(read);
        if let Some(m) = *mtime
            && m.saturating_add(RACY_NS) < started
        {
            out.cache.files.insert(
                key.clone(),
                Cached {
                    size: *size,
                    mtime_ns: m,
                    sha256: sha.clone(),
                },
            );
        }
        out.known.entry(sha).or_insert_with(|| layout.rel(p));
    }
    if std::env::var_os("FLORA_MERGE_STATS").is_some() {
        eprintln!(
            "merge stats: {} dataset file(s), {} hashed, {} from the cache",
            out.files,
            out.hashed,
            out.files - out.hashed
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keys_must_be_plain_relative_paths() {
        assert!(safe_key("bag/a.png"));
        for bad in [
            "",
            "/etc/passwd",
            "../x.png",
            "bag/../../x",
            ".merge/lock",
            "./a",
        ] {
            assert!(!safe_key(bad), "{bad:?}");
        }
    }
}
