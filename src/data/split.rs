//! Train/validation split: the dataset's own `train/`+`val/` folders, or a stable split seeded by
//! `seed` in which each image's side depends only on its content. Saved as `split.csv` (path,
//! class, subset) so eval can reproduce it. Also the k-fold assignment of cross-validation
//! ([`fold_of`]) and the split of what a held-out fold leaves ([`split_rest`]).

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::cache::ImageCache;
use crate::data::dataset::Subset;

/// One row of `split.csv`: the path relative to the dataset root.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SplitRow {
    pub path: String,
    pub class: String,
    pub subset: String,
}

/// Assigns each sample to train or val from its content alone: a sample goes to val when the
/// hash of (`seed`, its content hash) falls in the lowest `fraction` of the hash range. Adding,
/// removing or relabelling other images never moves an image between train and val, so a model
/// trained before a merge has not seen the next run's validation images, and byte-identical
/// copies always land on the same side. Each class with two or more samples keeps at least one
/// image on each side (its lowest- or highest-scoring one).
pub fn stable(
    content_hashes: &[[u8; 32]],
    classes_of: &[usize],
    num_classes: usize,
    fraction: f64,
    seed: u64,
) -> Vec<Subset> {
    debug_assert_eq!(content_hashes.len(), classes_of.len());
    let scores: Vec<f64> = content_hashes.iter().map(|h| score(h, seed)).collect();
    let mut subsets: Vec<Subset> = scores
        .iter()
        .map(|&u| {
            if u < fraction {
                Subset::Val
            } else {
                Subset::Train
            }
        })
        .collect();
    for class in 0..num_classes {
        let members: Vec<usize> = (0..classes_of.len())
            .filter(|&i| classes_of[i] == class)
            .collect();
        if members.len() < 2 {
            for &i in &members {
                subsets[i] = Subset::Train;
            }
            continue;
        }
        let by_score = |&a: &usize, &b: &usize| scores[a].total_cmp(&scores[b]).then(a.cmp(&b));
        if !members.iter().any(|&i| subsets[i] == Subset::Val) {
            subsets[members
                .iter()
                .copied()
                .min_by(by_score)
                .expect("two or more")] = Subset::Val;
        }
        if !members.iter().any(|&i| subsets[i] == Subset::Train) {
            subsets[members
                .iter()
                .copied()
                .max_by(by_score)
                .expect("two or more")] = Subset::Train;
        }
    }
    subsets
}

/// A uniform number in [0, 1) from the seed and a content hash.
fn score(content_hash: &[u8; 32], seed: u64) -> f64 {
    let mut h = Sha256::new();
    h.update(b"flora-split");
    h.update(seed.to_le_bytes());
    h.update(content_hash);
    let d = h.finalize();
    let x = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Writes `split.csv` atomically.
pub fn write_csv(path: &Path, rows: &[SplitRow]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    crate::util::fsutil::write_atomic(path, &w.into_inner().context("writing split.csv")?)
}

/// Reads `split.csv`.
pub fn read_csv(path: &Path) -> Result<Vec<SplitRow>> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let rows: Vec<SplitRow> = r
        .deserialize()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", path.display()))?;
    if rows.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(rows)
}

/// The fold (`0..k`) of an image: a uniform number from the seed and its content hash, cut
/// into `k` equal ranges.
pub fn fold_of(content_hash: &[u8; 32], seed: u64, k: usize) -> usize {
    let mut h = Sha256::new();
    h.update(b"flora-cv");
    h.update(seed.to_le_bytes());
    h.update(content_hash);
    let d = h.finalize();
    let x = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
    let u = (x >> 11) as f64 / (1u64 << 53) as f64;
    ((u * k as f64) as usize).min(k - 1)
}

/// The train/val side of each image of `cache` outside `held_out` (a stable content split of
/// the rest, as [`stable`]); `None` for the held-out images.
pub fn split_rest(
    cache: &ImageCache,
    num_classes: usize,
    held_out: &HashSet<[u8; 32]>,
    fraction: f64,
    seed: u64,
) -> Vec<Option<Subset>> {
    let pool: Vec<usize> = (0..cache.len())
        .filter(|&i| !held_out.contains(&cache.content_hashes[i]))
        .collect();
    let hashes: Vec<[u8; 32]> = pool.iter().map(|&i| cache.content_hashes[i]).collect();
    let classes_of: Vec<usize> = pool.iter().map(|&i| cache.samples[i].class).collect();
    let sides = stable(&hashes, &classes_of, num_classes, fraction, seed);
    let mut out = vec![None; cache.len()];
    for (&i, side) in pool.iter().zip(sides) {
        out[i] = Some(side);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::fingerprint::sha256;

    fn hashes(range: std::ops::Range<u32>) -> Vec<[u8; 32]> {
        range.map(|i| sha256(&i.to_le_bytes())).collect()
    }

    fn val_count(subsets: &[Subset], classes: &[usize], class: usize) -> usize {
        classes
            .iter()
            .zip(subsets)
            .filter(|(k, s)| **k == class && **s == Subset::Val)
            .count()
    }

    #[test]
    fn split_is_seeded_and_near_the_fraction() {
        let h = hashes(0..1000);
        let classes: Vec<usize> = (0..1000).map(|i| i % 2).collect();
        let a = stable(&h, &classes, 2, 0.2, 7);
        assert_eq!(a, stable(&h, &classes, 2, 0.2, 7));
        assert_ne!(a, stable(&h, &classes, 2, 0.2, 8));
        for c in 0..2 {
            let val = val_count(&a, &classes, c);
            assert!((70..=130).contains(&val), "class {c}: {val} of 500 in val");
        }
    }

    #[test]
    fn adding_images_never_moves_old_ones() {
        let old = hashes(0..300);
        let classes: Vec<usize> = (0..300).map(|i| i % 3).collect();
        let before = stable(&old, &classes, 3, 0.2, 42);
        let grown = hashes(0..450);
        let grown_classes: Vec<usize> = (0..450).map(|i| i % 3).collect();
        let after = stable(&grown, &grown_classes, 3, 0.2, 42);
        assert_eq!(before[..], after[..300]);
    }

    #[test]
    fn small_classes_keep_one_image_on_each_side() {
        // Two classes of two images: whatever the scores, one val and one train each.
        for seed in 0..20 {
            let h = hashes(seed * 4..seed * 4 + 4);
            let classes = [0, 0, 1, 1];
            let s = stable(&h, &classes, 2, 0.2, seed as u64);
            for c in 0..2 {
                assert_eq!(val_count(&s, &classes, c), 1, "seed {seed}");
            }
        }
        // A single image trains.
        assert_eq!(stable(&hashes(0..1), &[0], 1, 0.9, 1), vec![Subset::Train]);
    }

    #[test]
    fn identical_content_lands_on_the_same_side() {
        let mut h = hashes(0..200);
        h.extend(hashes(0..200));
        let classes = vec![0; 400];
        let s = stable(&h, &classes, 1, 0.3, 3);
        assert_eq!(s[..200], s[200..]);
    }

    #[test]
    fn folds_are_stable_and_near_even() {
        let hashes: Vec<[u8; 32]> = (0u32..1000).map(|i| sha256(&i.to_le_bytes())).collect();
        let a: Vec<usize> = hashes.iter().map(|h| fold_of(h, 3, 5)).collect();
        let b: Vec<usize> = hashes.iter().map(|h| fold_of(h, 3, 5)).collect();
        assert_eq!(a, b);
        for f in 0..5 {
            let n = a.iter().filter(|&&x| x == f).count();
            assert!((150..=250).contains(&n), "fold {f}: {n}");
        }
        let other: Vec<usize> = hashes.iter().map(|h| fold_of(h, 4, 5)).collect();
        assert_ne!(a, other);
    }
}
