//! Decode-once image cache: every sample is read, hashed and decoded once per run, in parallel,
//! and kept in memory as resized RGB8 pixels. Files that fail to decode are skipped and reported.

use std::path::PathBuf;

use rayon::prelude::*;

use crate::data::dataset::Sample;
use crate::data::imaging::{self, DecodeLimits};
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
}

impl ImageCache {
    /// Reads and decodes `samples` in parallel with a progress bar labelled `what`.
    pub fn build(samples: &[Sample], size: u32, limits: DecodeLimits, what: &str) -> Self {
        let bar = progress::count_bar(samples.len() as u64, what);
        let results: Vec<Result<(Vec<u8>, FileDigest), String>> = samples
            .par_iter()
            .map(|s| {
                let r = load_one(s, size, limits);
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
        for (s, r) in samples.iter().zip(results) {
            match r {
                Ok((px, digest)) => {
                    pixels.extend_from_slice(&px);
                    digests.push(digest);
                    kept.push(s.clone());
                }
                Err(reason) => skipped.push((s.path.clone(), reason)),
            }
        }
        Self {
            size,
            samples: kept,
            pixels,
            skipped,
            fingerprint: fingerprint(&digests),
            content_hashes: digests.iter().map(|d| d.sha256).collect(),
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

fn load_one(s: &Sample, size: u32, limits: DecodeLimits) -> Result<(Vec<u8>, FileDigest), String> {
    let bytes = std::fs::read(&s.path).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let img = imaging::prepare(&bytes, size, limits).map_err(|e| format!("{e:#}"))?;
    let digest = FileDigest {
        rel: s.rel.clone(),
        size: bytes.len() as u64,
        sha256: sha256(&bytes),
    };
    Ok((img.into_raw(), digest))
}
