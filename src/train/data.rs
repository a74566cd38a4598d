//! Training data: scanning, decoding and splitting the dataset, batches as tensors, validation.

use anyhow::{Result, bail};
use burn::nn::loss::CrossEntropyLoss;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::Plan;
use crate::config::Settings;
use crate::data::cache::ImageCache;
use crate::data::class_weights::Weighting;
use crate::data::dataset::{DatasetIndex, Subset};
use crate::data::imaging::{self, Normalization};
use crate::data::split::{self, SplitRow};
use crate::evaluate::scores::argmax;
use crate::model::Classifier;
use crate::model::bundle::Engine;
use crate::util::device;

/// Images per forward pass during validation.
const EVAL_BATCH: usize = 128;

/// Data ready for training: decoded pixels with each sample's subset.
pub(super) struct Prepared {
    pub(super) classes: Vec<String>,
    pub(super) cache: ImageCache,
    pub(super) train: Vec<usize>,
    pub(super) val: Vec<usize>,
    pub(super) split_rows: Vec<SplitRow>,
    pub(super) weighting: Weighting,
}

/// Scans the dataset and decodes it at `data.image_size` (through the pixel store), warning
/// about the images it skipped: what training and cross-validation start from.
pub(crate) fn decode_dataset(settings: &Settings) -> Result<(DatasetIndex, ImageCache)> {
    let index = DatasetIndex::scan(&settings.data_dir())?;
    let store = settings.pixel_store()?;
    let cache = ImageCache::build(
        &index.samples,
        settings.config.data.image_size,
        settings.decode_limits(),
        "decoding",
        store.as_ref(),
    );
    if let Some(report) = cache.skipped_report() {
        eprintln!("warning: {report}");
    }
    Ok((index, cache))
}

/// Scans, decodes and splits the dataset; every data error is reported here, before a run exists.
pub(super) fn prepare(settings: &Settings, plan: &Plan) -> Result<Prepared> {
    let cfg = &settings.config;
    let (index, cache) = decode_dataset(settings)?;
    let mut counts = vec![0usize; index.classes.len()];
    for s in &cache.samples {
        counts[s.class] += 1;
    }
    if let Some(empty) = counts.iter().position(|&c| c == 0) {
        bail!(
            "class '{}' has no usable image in {}: add images or remove the folder",
            index.classes[empty],
            index.root.join(&index.classes[empty]).display()
        );
    }
    let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
    if max > 5 * min {
        eprintln!(
            "warning: classes are imbalanced: the largest has {max} images, the smallest {min} (more than 5x)"
        );
    }
    let mut held_out = plan.held_out.clone();
    held_out.extend(
        cache
            .samples
            .iter()
            .zip(&cache.content_hashes)
            .filter(|(s, _)| plan.held_out_paths.contains(&s.rel))
            .map(|(_, h)| *h),
    );
    let subsets: Vec<Option<Subset>> = match &index.fixed_split {
        _ if !held_out.is_empty() => split::split_rest(
            &cache,
            index.classes.len(),
            &held_out,
            cfg.data.val_fraction,
            cfg.data.seed,
        ),
        Some(fixed) => {
            let by_path: std::collections::HashMap<&str, Subset> = index
                .samples
                .iter()
                .zip(fixed)
                .map(|(s, &sub)| (s.rel.as_str(), sub))
                .collect();
            cache
                .samples
                .iter()
                .map(|s| Some(by_path[s.rel.as_str()]))
                .collect()
        }
        None => {
            let classes_of: Vec<usize> = cache.samples.iter().map(|s| s.class).collect();
            split::stable(
                &cache.content_hashes,
                &classes_of,
                index.classes.len(),
                cfg.data.val_fraction,
                cfg.data.seed,
            )
            .into_iter()
            .map(Some)
            .collect()
        }
    };
    let train: Vec<usize> = (0..subsets.len())
        .filter(|&i| subsets[i] == Some(Subset::Train))
        .collect();
    let val: Vec<usize> = (0..subsets.len())
        .filter(|&i| subsets[i] == Some(Subset::Val))
        .collect();
    if train.is_empty() || val.is_empty() {
        bail!(
            "too few images to train and validate: {} train, {} val (need at least 2 images per class)",
            train.len(),
            val.len()
        );
    }
    let split_rows = cache
        .samples
        .iter()
        .zip(&subsets)
        .map(|(s, sub)| SplitRow {
            path: s.rel.clone(),
            class: index.classes[s.class].clone(),
            subset: sub.map_or("held_out", Subset::as_str).into(),
        })
        .collect();
    let t = &cfg.train;
    let train_classes: Vec<usize> = train.iter().map(|&i| cache.samples[i].class).collect();
    let weighting = Weighting::new(
        &t.class_weights,
        t.class_weight_power,
        t.sampler,
        &index.classes,
        &train_classes,
    )?;
    settings.thresholds().validate(&index.classes)?;
    eprintln!(
        "dataset {}: {} classes, {} train / {} val images at {}px",
        index.root.display(),
        index.classes.len(),
        train.len(),
        val.len(),
        cfg.data.image_size
    );
    if let Some(test) = &index.test_dir {
        eprintln!(
            "held-out test set: {} (never trained on; eval and the promote gate use it)",
            test.display()
        );
    }
    Ok(Prepared {
        classes: index.classes,
        cache,
        train,
        val,
        split_rows,
        weighting,
    })
}

/// Normalised CHW floats for the batch, augmented when asked. Each image gets its own RNG
/// (seeded from `seed` and its position), so the result does not depend on thread scheduling.
pub(super) fn batch_input(
    data: &Prepared,
    batch: &[usize],
    norm: &Normalization,
    augment: bool,
    scale_min: f64,
    seed: u64,
) -> Vec<f32> {
    let side = data.cache.size as usize;
    let per = 3 * side * side;
    let mut input = vec![0f32; batch.len() * per];
    input
        .par_chunks_mut(per)
        .zip(batch.par_iter())
        .enumerate()
        .for_each(|(k, (out, &i))| {
            let px = data.cache.pixels(i);
            if augment {
                let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(k as u64));
                let img = image::RgbImage::from_raw(side as u32, side as u32, px.to_vec())
                    .expect("cached image size");
                let crop = imaging::random_resized_crop(&img, scale_min, &mut rng);
                norm.write_chw(crop.as_raw(), side, rng.random_bool(0.5), out);
            } else {
                norm.write_chw(px, side, false, out);
            }
        });
    input
}

pub(super) fn to_tensors(
    input: Vec<f32>,
    data: &Prepared,
    batch: &[usize],
    device: &Device,
) -> (Tensor<4>, Tensor<1, Int>) {
    let side = data.cache.size as usize;
    let images =
        Tensor::<4>::from_data(TensorData::new(input, [batch.len(), 3, side, side]), device);
    let labels: Vec<i64> = batch
        .iter()
        .map(|&i| data.cache.samples[i].class as i64)
        .collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch.len()]), device);
    (images, targets)
}

/// Argmax of each row of `logits` compared with the batch's labels.
pub(super) fn count_correct(logits: Tensor<2>, data: &Prepared, batch: &[usize]) -> usize {
    let n = data.classes.len();
    let values = logits.into_data();
    let flat = values.as_slice::<f32>().expect("f32 logits");
    flat.chunks(n)
        .zip(batch)
        .filter(|(row, i)| argmax(row) == data.cache.samples[**i].class)
        .count()
}

/// Mean cross-entropy and accuracy of `model` (in validation mode) on the val split, through
/// the fused inference path when the model has one (as predict and serve run it).
pub(super) fn evaluate(model: &Classifier, data: &Prepared, norm: &Normalization) -> (f64, f64) {
    let fused = Engine::from_env().fused(model);
    let device = device::inference();
    let side = data.cache.size as usize;
    let (mut loss_sum, mut correct) = (0f64, 0usize);
    for batch in data.val.chunks(EVAL_BATCH) {
        if let Some(fused) = &fused {
            let pixels: Vec<&[u8]> = batch.iter().map(|&i| data.cache.pixels(i)).collect();
            for (row, &i) in fused.logits(&pixels, norm, side).iter().zip(batch) {
                let target = data.cache.samples[i].class;
                loss_sum += cross_entropy(row, target);
                correct += usize::from(argmax(row) == target);
            }
            continue;
        }
        let input = batch_input(data, batch, norm, false, 1.0, 0);
        let (images, targets) = to_tensors(input, data, batch, &device);
        let logits = model.forward(images);
        let loss: f32 = CrossEntropyLoss::new(None, &device)
            .forward(logits.clone(), targets)
            .into_scalar();
        loss_sum += loss as f64 * batch.len() as f64;
        correct += count_correct(logits, data, batch);
    }
    (
        loss_sum / data.val.len() as f64,
        correct as f64 / data.val.len() as f64,
    )
}

/// `-ln softmax(logits)[target]`, computed stably.
fn cross_entropy(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln() - logits[target] as f64
}
