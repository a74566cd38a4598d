//! Batched inference over image files: decode in parallel, infer in batches.

use std::path::PathBuf;

use rayon::prelude::*;

use crate::data::imaging::{self, DecodeLimits};
use crate::model::bundle::ModelBundle;
use crate::util::progress;

/// Images per forward pass.
pub const BATCH: usize = 64;

/// Class probabilities for each file, or the reason it could not be read, in input order.
/// Shows a progress bar labelled `what` when there are many files.
pub fn predict_files(
    bundle: &ModelBundle,
    paths: &[PathBuf],
    limits: DecodeLimits,
    what: &str,
) -> Vec<Result<Vec<f32>, String>> {
    let size = bundle.meta.image_size;
    let bar = progress::count_bar(paths.len() as u64, what);
    if paths.len() < BATCH {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(BATCH) {
        let decoded: Vec<Result<image::RgbImage, String>> = chunk
            .par_iter()
            .map(|p| imaging::prepare_file(p, size, limits).map_err(|e| format!("{e:#}")))
            .collect();
        let ok: Vec<&[u8]> = decoded
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|i| i.as_raw().as_slice()))
            .collect();
        let mut probs = bundle.predict_pixels(&ok).into_iter();
        for r in decoded {
            out.push(r.map(|_| probs.next().expect("one result per decoded image")));
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    out
}
