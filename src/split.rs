//! Train/validation split: the dataset's own `train/`+`val/` folders, or a stratified split
//! seeded by `seed`. Saved as `split.csv` (path, class, subset) so eval can reproduce it.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::Subset;

/// One row of `split.csv`: the path relative to the dataset root.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SplitRow {
    pub path: String,
    pub class: String,
    pub subset: String,
}

/// Assigns each of `classes_of` (one class index per sample) to train or val: `fraction` of each
/// class (rounded, at least one when the class has two or more samples) goes to val.
pub fn stratified(
    classes_of: &[usize],
    num_classes: usize,
    fraction: f64,
    seed: u64,
) -> Vec<Subset> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (i, &c) in classes_of.iter().enumerate() {
        by_class[c].push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut subsets = vec![Subset::Train; classes_of.len()];
    for idx in &mut by_class {
        idx.shuffle(&mut rng);
        let mut k = (idx.len() as f64 * fraction).round() as usize;
        if idx.len() >= 2 {
            k = k.clamp(1, idx.len() - 1);
        } else {
            k = 0;
        }
        for &i in &idx[..k] {
            subsets[i] = Subset::Val;
        }
    }
    subsets
}

/// Writes `split.csv` atomically.
pub fn write_csv(path: &Path, rows: &[SplitRow]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    crate::fsutil::write_atomic(path, &w.into_inner().context("writing split.csv")?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_is_seeded_and_per_class() {
        let classes: Vec<usize> = (0..100).map(|i| i % 2).collect();
        let a = stratified(&classes, 2, 0.2, 7);
        assert_eq!(a, stratified(&classes, 2, 0.2, 7));
        for c in 0..2 {
            let val = classes
                .iter()
                .zip(&a)
                .filter(|(k, s)| **k == c && **s == Subset::Val)
                .count();
            assert_eq!(val, 10);
        }
    }
}
