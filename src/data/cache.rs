//! Decode-once image cache: every sample is hashed and decoded once per run, in parallel, and
//! kept in memory as resized RGB8 pixels. With a [`PixelStore`], pixels (and, through its file
//! memo, the content hashes) come from disk when an earlier run made them, and only the rest
//! are read and decoded. Files that fail to decode are skipped and reported.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rayon::prelude::*;

use crate::data::dataset::Sample;
use crate::data::imaging::{self, DecodeLimits};
use crate::data::pixel_store::memo::{FileMemo, Stamp};
use crate::data::pixel_store::{Lookup, PixelStore, entry, human_bytes};
use crate::util::fingerprint::{FileDigest, fingerprint, sha256};
use crate::util::progress;

/// Decoded, resized pixels of a list of samples (`size`×`size` RGB8 each, contiguous).
pub struct ImageCache {
    pub size: u32,
    /// The samples that decoded, in their original order.
    pub samples: Vec<Sample>,
    pixels: Vec<u8>,
    /// Files that could not be used, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Fingerprint of the files that decoded.
    pub fingerprint: String,
    /// SHA-256 of each decoded file's content, in the order of `samples`.
    pub content_hashes: Vec<[u8; 32]>,
    /// Where the pixels came from.
    pub stats: LoadStats,
}

/// Where a build's pixels came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Whether a pixel store was used.
    pub store: bool,
    /// Images whose pixels came from the store.
    pub from_store: usize,
    /// Images decoded.
    pub decoded: usize,
    /// Image files opened and read (a memo hit reads none).
    pub files_read: usize,
    /// Corrupt entries found (each rebuilt when its image decoded), and the first reason.
    pub corrupt: usize,
    pub corrupt_example: Option<String>,
    /// Entries written, their bytes, and the entries that could not be written (first error).
    pub stored: usize,
    pub stored_bytes: u64,
    pub store_errors: usize,
    pub store_error_example: Option<String>,
}

impl LoadStats {
    /// The one line a build prints about the pixel store.
    pub fn line(&self, total: usize) -> String {
        let mut s = format!(
            "pixel cache: {} of {total} images from the cache, {} decoded, {} files read",
            self.from_store, self.decoded, self.files_read
        );
        if self.stored > 0 {
            s.push_str(&format!(
                ", {} stored ({})",
                self.stored,
                human_bytes(self.stored_bytes)
            ));
        }
        if self.corrupt > 0 {
            s.push_str(&format!(
                "; {} corrupt entries rebuilt (e.g. {})",
                self.corrupt,
                self.corrupt_example.as_deref().unwrap_or("?")
            ));
        }
        if self.store_errors > 0 {
            s.push_str(&format!(
                "; {} could not be stored ({})",
                self.store_errors,
                self.store_error_example.as_deref().unwrap_or("?")
            ));
        }
        s
    }
}

/// One sample's outcome.
struct Loaded {
    result: Result<(Vec<u8>, FileDigest), String>,
    from_store: bool,
    read: bool,
    corrupt: Option<String>,
    stored: Option<Result<u64, String>>,
    /// (path, stamp, content) for the file memo.
    memo: Option<(PathBuf, Stamp, [u8; 32])>,
}

impl ImageCache {
    /// Reads and decodes `samples` in parallel with a progress bar labelled `what`, taking what
    /// it can from `store` and storing what it decodes there (then keeping it within its
    /// bound). A store that cannot be used is reported and the run goes on without it.
    pub fn build(
        samples: &[Sample],
        size: u32,
        limits: DecodeLimits,
        what: &str,
        store: Option<&PixelStore>,
    ) -> Self {
        let store = store.filter(|s| match s.create() {
            Ok(()) => true,
            Err(e) => {
                eprintln!("warning: pixel cache off for this run: {e:#}");
                false
            }
        });
        let (mut memo, memo_problem) = store.map(|s| s.load_memo()).unwrap_or_default();
        let now = SystemTime::now();
        let bar = progress::count_bar(samples.len() as u64, what);
        let results: Vec<Loaded> = samples
            .par_iter()
            .map(|s| {
                let r = match store {
                    Some(st) => load_cached(s, (size, limits), st, &memo, now),
                    None => load_plain(s, size, limits),
                };
                bar.inc(1);
                r
            })
            .collect();
        bar.finish_and_clear();
        let plane = (size * size * 3) as usize;
        let mut kept = Vec::with_capacity(samples.len());
        let mut pixels = Vec::with_capacity(samples.len() * plane);
        let mut digests = Vec::with_capacity(samples.len());
        let mut skipped = Vec::new();
        let mut stats = LoadStats {
            store: store.is_some(),
            ..LoadStats::default()
        };
        for (s, r) in samples.iter().zip(results) {
            stats.count(&r);
            if let Some((path, stamp, content)) = r.memo {
                memo.note(path, stamp, content);
            }
            match r.result {
                Ok((px, digest)) => {
                    pixels.extend_from_slice(&px);
                    digests.push(digest);
                    kept.push(s.clone());
                }
                Err(reason) => skipped.push((s.path.clone(), reason)),
            }
        }
        if let Some(st) = store {
            finish(
                st,
                &memo,
                memo_problem,
                &stats,
                samples.len(),
                kept.len(),
                size,
            );
        }
        Self {
            size,
            samples: kept,
            pixels,
            skipped,
            fingerprint: fingerprint(&digests),
            content_hashes: digests.iter().map(|d| d.sha256).collect(),
            stats,
        }
    }

    /// Number of decoded images.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when nothing decoded.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The RGB8 pixels of image `i`.
    pub fn pixels(&self, i: usize) -> &[u8] {
        let plane = (self.size * self.size * 3) as usize;
        &self.pixels[i * plane..(i + 1) * plane]
    }

    /// A one-paragraph report of the skipped files (count plus the first few), if any.
    pub fn skipped_report(&self) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let mut msg = format!(
            "skipped {} file(s) that are not readable images:",
            self.skipped.len()
        );
        for (path, reason) in self.skipped.iter().take(5) {
            msg.push_str(&format!("\n  {}: {reason}", path.display()));
        }
        if self.skipped.len() > 5 {
            msg.push_str(&format!("\n  ... and {} more", self.skipped.len() - 5));
        }
        Some(msg)
    }
}

impl LoadStats {
    fn count(&mut self, r: &Loaded) {
        match (&r.result, r.from_store) {
            (Ok(_), true) => self.from_store += 1,
            (Ok(_), false) => self.decoded += 1,
            (Err(_), _) => {}
        }
        self.files_read += usize::from(r.read);
        if let Some(why) = &r.corrupt {
            self.corrupt += 1;
            self.corrupt_example.get_or_insert_with(|| why.clone());
        }
        match &r.stored {
            Some(Ok(bytes)) => {
                self.stored += 1;
                self.stored_bytes += bytes;
            }
            Some(Err(e)) => {
                self.store_errors += 1;
                self.store_error_example.get_or_insert_with(|| e.clone());
            }
            None => {}
        }
    }
}

/// After a build with a store: the memo saved, the bound kept, one line printed (two when
/// entries were evicted).
fn finish(
    store: &PixelStore,
    memo: &FileMemo,
    memo_problem: Option<String>,
    stats: &LoadStats,
    total: usize,
    kept: usize,
    size: u32,
) {
    if let Err(e) = store.save_memo(memo) {
        eprintln!("warning: pixel cache: the file memo was not saved: {e:#}");
    }
    eprintln!("{}", stats.line(total));
    if let Some(problem) = memo_problem {
        eprintln!("pixel cache: {problem}: rebuilt (the images were read again)");
    }
    if stats.stored == 0 {
        return;
    }
    match store.enforce_bound() {
        Ok(Some(ev)) => {
            let need = kept as u64 * entry::entry_len(size).next_multiple_of(4096);
            let hint = if need > store.max_bytes() / 10 * 9 {
                format!(
                    "; these {kept} images alone need about {} at {size} px: raise cache.max_size_mb",
                    human_bytes(need)
                )
            } else {
                String::new()
            };
            eprintln!(
                "pixel cache: evicted {} least recently used entries ({}) to stay under cache.max_size_mb ({} in use){hint}",
                ev.entries,
                human_bytes(ev.bytes),
                human_bytes(ev.total)
            );
        }
        Ok(None) => {}
        Err(e) => eprintln!("warning: pixel cache: eviction failed: {e:#}"),
    }
}

fn digest(s: &Sample, len: u64, content: [u8; 32]) -> FileDigest {
    FileDigest {
        rel: s.rel.clone(),
        size: len,
        sha256: content,
    }
}

/// Without a store: read, hash, decode.
fn load_plain(s: &Sample, size: u32, limits: DecodeLimits) -> Loaded {
    let result = (|| {
        let bytes = fs::read(&s.path).map_err(|e| format!("cannot read: {e}"))?;
        if bytes.is_empty() {
            return Err("empty file".to_string());
        }
        let img = imaging::prepare(&bytes, size, limits).map_err(|e| format!("{e:#}"))?;
        Ok((
            img.into_raw(),
            digest(s, bytes.len() as u64, sha256(&bytes)),
        ))
    })();
    Loaded {
        result,
        from_store: false,
        read: true,
        corrupt: None,
        stored: None,
        memo: None,
    }
}

/// With a store: the content hash from the memo and the pixels from the store when both are
/// there (the file is not opened); else the file is read and hashed, and decoded (and stored)
/// unless the store has its pixels.
fn load_cached(
    s: &Sample,
    (size, limits): (u32, DecodeLimits),
    store: &PixelStore,
    memo: &FileMemo,
    now: SystemTime,
) -> Loaded {
    let path = std::path::absolute(&s.path).unwrap_or_else(|_| s.path.clone());
    let mut out = Loaded {
        result: Err(String::new()),
        from_store: false,
        read: false,
        corrupt: None,
        stored: None,
        memo: None,
    };
    let mut known = None;
    if let Ok(meta) = fs::metadata(&path)
        && meta.is_file()
    {
        let stamp = Stamp::of(&meta);
        if let Some(content) = memo.get(&path, &stamp) {
            match store.get(&content, size) {
                Lookup::Hit(px) => {
                    out.result = Ok((px, digest(s, stamp.len, content)));
                    out.from_store = true;
                    out.memo = Some((path, stamp, content));
                    return out;
                }
                Lookup::Corrupt(why) => {
                    out.corrupt = Some(why);
                    known = Some(content);
                }
                Lookup::Miss => known = Some(content),
            }
        }
    }
    out.read = true;
    let (bytes, stamp) = match read_stamped(&path) {
        Ok(r) => r,
        Err(e) => {
            out.result = Err(e);
            return out;
        }
    };
    if bytes.is_empty() {
        out.result = Err("empty file".into());
        return out;
    }
    let content = sha256(&bytes);
    let d = digest(s, bytes.len() as u64, content);
    let memo_entry = stamp
        .filter(|st| st.settled(now) && st.len == bytes.len() as u64)
        .map(|st| (path, st, content));
    if known != Some(content) {
        match store.get(&content, size) {
            Lookup::Hit(px) => {
                out.result = Ok((px, d));
                out.from_store = true;
                out.memo = memo_entry;
                return out;
            }
            Lookup::Corrupt(why) => out.corrupt = Some(why),
            Lookup::Miss => {}
        }
    }
    match imaging::prepare(&bytes, size, limits) {
        Ok(img) => {
            let px = img.into_raw();
            out.stored = Some(store.put(&content, size, &px).map_err(|e| format!("{e:#}")));
            out.result = Ok((px, d));
            out.memo = memo_entry;
        }
        Err(e) => out.result = Err(format!("{e:#}")),
    }
    out
}

/// The file's bytes, and its stamp when it did not change while it was read.
fn read_stamped(path: &Path) -> Result<(Vec<u8>, Option<Stamp>), String> {
    let mut f = fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let before = f.metadata().ok().map(|m| Stamp::of(&m));
    let mut bytes = Vec::with_capacity(before.map_or(0, |s| s.len as usize));
    f.read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    let after = f.metadata().ok().map(|m| Stamp::of(&m));
    Ok((bytes, before.filter(|b| Some(*b) == after)))
}
