//! The model bundle: a self-contained folder with the weights (Burn's burnpack record) and a
//! `bundle.json` describing how to use them. predict and serve load it without the dataset or
//! the run store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::{Tensor, TensorData, activation::softmax};
use serde::{Deserialize, Serialize};

use crate::data::imaging::Normalization;
use crate::model::unknown::Thresholds;
use crate::model::{Arch, Classifier, Fused, Scored};
use crate::util::{device, fsutil};

/// Version of the bundle layout; a bundle of another version is refused.
pub const BUNDLE_FORMAT: u32 = 1;
/// Weights file name inside a bundle.
pub const WEIGHTS_FILE: &str = "model.bpk";
/// Metadata file name inside a bundle.
pub const META_FILE: &str = "bundle.json";

/// What a bundle says about its model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BundleMeta {
    pub format: u32,
    pub flora_version: String,
    pub arch: Arch,
    pub image_size: u32,
    /// Class names in output-index order.
    pub classes: Vec<String>,
    pub normalization: Normalization,
    pub dropout: f64,
    /// MobileNetV2's width multiplier (1.0 for the `cnn`, and for bundles written before
    /// widths existed).
    #[serde(default = "width_one")]
    pub width: f64,
    /// The ImageNet weights the model started from (`file name (layout)`), if any.
    #[serde(default)]
    pub pretrained: Option<String>,
    pub run_id: Option<String>,
    pub run_name: Option<String>,
    pub data_fingerprint: String,
    /// Best validation metrics (`val_accuracy`, `val_loss`, `best_epoch`).
    pub metrics: BTreeMap<String, f64>,
    /// Per-class facts from `[class_info.<name>]` in flora.toml.
    #[serde(default)]
    pub class_info: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// Minimum confidences below which the answer is "unknown" (none in older bundles).
    #[serde(default, skip_serializing_if = "Thresholds::is_empty")]
    pub thresholds: Thresholds,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

impl BundleMeta {
    /// The thresholds this model answers with: `configured` (the config's `[thresholds]`, see
    /// `Settings::thresholds`) when it has any, else the bundle's own. A configured class the
    /// model lacks is left out with a warning.
    pub fn thresholds_with(&self, configured: Thresholds) -> Thresholds {
        let mut config = configured;
        if config.is_empty() {
            return self.thresholds.clone();
        }
        config.per_class.retain(|c, _| {
            let known = self.classes.contains(c);
            if !known {
                eprintln!(
                    "warning: [thresholds] names class '{c}', which this model does not have"
                );
            }
            known
        });
        config
    }

    /// Checks every value flora will act on, so a hand-edited or hostile `bundle.json` gives an
    /// error here instead of a panic (or a path outside the project) later.
    pub fn validate(&self) -> Result<()> {
        let sizes = crate::data::imaging::IMAGE_SIZES;
        let min = self.arch.min_image_size().max(*sizes.start());
        if !(min..=*sizes.end()).contains(&self.image_size) {
            bail!(
                "image_size = {} is out of range for arch {}: use {min} to {} pixels",
                self.image_size,
                self.arch.as_str(),
                sizes.end()
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout = {} must be in [0, 1)", self.dropout);
        }
        let widths = crate::model::mobilenet::WIDTHS;
        let width_ok = match self.arch {
            crate::model::Arch::Cnn => self.width == 1.0,
            crate::model::Arch::MobilenetV2 => widths.contains(&self.width),
        };
        if !width_ok {
            bail!(
                "width = {} is not one of {widths:?} (1.0 for the cnn)",
                self.width
            );
        }
        if self.classes.len() < 2 {
            bail!(
                "it lists {} classes; a bundle needs at least 2",
                self.classes.len()
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for class in &self.classes {
            crate::data::dataset::check_class_name(class)?;
            if !seen.insert(class) {
                bail!("class '{class}' is listed twice");
            }
        }
        self.thresholds.validate(&self.classes)?;
        let n = &self.normalization;
        if n.mean.iter().any(|m| !m.is_finite())
            || n.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
        {
            bail!(
                "normalization mean {:?} / std {:?} must be finite, with every std above 0",
                n.mean,
                n.std
            );
        }
        Ok(())
    }
}

/// A loaded model, ready for inference.
#[derive(Debug, Clone)]
pub struct ModelBundle {
    pub meta: BundleMeta,
    pub model: Classifier,
    /// The fast inference form of the model (see [`Engine`]); `None` runs Burn's forward.
    fused: Option<Arc<Fused>>,
}

/// Which forward pass [`ModelBundle::predict_pixels`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The fused channels-last path ([`Fused`]: the reference CNN and MobileNetV2). The default.
    Fused,
    /// Burn's forward pass on the selected device, for every architecture.
    Burn,
}

impl Engine {
    /// [`Engine::Burn`] on a GPU (the fused path is CPU-only) or with `FLORA_ENGINE=burn` (to
    /// compare the two); else [`Engine::Fused`].
    pub fn from_env() -> Self {
        if !device::selected().is_cpu() {
            return Engine::Burn;
        }
        match std::env::var("FLORA_ENGINE").as_deref() {
            Ok("burn") => Engine::Burn,
            _ => Engine::Fused,
        }
    }

    /// The fused form of `model` when this engine uses one for its architecture.
    pub fn fused(self, model: &Classifier) -> Option<Fused> {
        match self {
            Engine::Fused => model.fused(),
            Engine::Burn => None,
        }
    }
}

impl ModelBundle {
    /// A bundle for `model`, with the engine chosen by [`Engine::from_env`].
    pub fn new(meta: BundleMeta, model: Classifier) -> Self {
        let mut bundle = Self {
            meta,
            model,
            fused: None,
        };
        bundle.set_engine(Engine::from_env());
        bundle
    }

    /// Switches the forward pass used by [`Self::predict_pixels`].
    pub fn set_engine(&mut self, engine: Engine) {
        self.fused = engine.fused(&self.model).map(Arc::new);
    }

    /// The forward pass [`Self::predict_pixels`] runs (Burn's for an architecture without a
    /// fused form).
    pub fn engine(&self) -> Engine {
        if self.fused.is_some() {
            Engine::Fused
        } else {
            Engine::Burn
        }
    }

    /// Writes the bundle into a new folder `dir` (written beside it, then renamed into place).
    pub fn save(&self, dir: &Path) -> Result<()> {
        if dir.exists() {
            bail!(
                "cannot write model bundle: {} already exists",
                dir.display()
            );
        }
        let parent = dir.parent().context("bundle folder has no parent")?;
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let tmp = fsutil::temp_sibling(dir);
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let result = self.write_files(&tmp).and_then(|()| {
            std::fs::rename(&tmp, dir)
                .with_context(|| format!("moving bundle into {}", dir.display()))
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        fsutil::sync_dir(parent);
        result
    }

    /// Writes a run's model bundle to `dir`, replacing the one a stopped run left there: the
    /// new one is written beside it, then the two folders change places in one atomic step
    /// ([`fsutil::exchange`]), so a crash at any point leaves one whole bundle at `dir`.
    pub fn replace(&self, dir: &Path) -> Result<()> {
        if !dir.exists() {
            return self.save(dir);
        }
        let new = fsutil::temp_sibling(dir);
        self.save(&new)?;
        if let Err(e) = fsutil::exchange(&new, dir) {
            let _ = std::fs::remove_dir_all(&new);
            return Err(e);
        }
        // `new` now holds the old bundle.
        let _ = std::fs::remove_dir_all(&new);
        if let Some(parent) = dir.parent() {
            fsutil::sync_dir(parent);
        }
        Ok(())
    }

    fn write_files(&self, dir: &Path) -> Result<()> {
        let weights = dir.join(WEIGHTS_FILE);
        self.model
            .clone()
            .save_file(&weights)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("writing {}", weights.display()))?;
        if let Ok(f) = std::fs::File::open(&weights) {
            let _ = f.sync_all();
        }
        let json = serde_json::to_vec_pretty(&self.meta)?;
        fsutil::write_atomic(&dir.join(META_FILE), &json)
    }

    /// Reads only a bundle's metadata, checking that flora can use it.
    pub fn read_meta(dir: &Path) -> Result<BundleMeta> {
        let path = dir.join(META_FILE);
        if !dir.is_dir() {
            bail!("model bundle {} does not exist", dir.display());
        }
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is {} a model bundle?)",
                path.display(),
                dir.display()
            )
        })?;
        let meta: BundleMeta = serde_json::from_str(&text)
            .with_context(|| format!("{} is corrupt or not a flora bundle", path.display()))?;
        if meta.format != BUNDLE_FORMAT {
            bail!(
                "{} has bundle format {} (written by flora {}); this flora reads format {}",
                path.display(),
                meta.format,
                meta.flora_version,
                BUNDLE_FORMAT
            );
        }
        meta.validate()
            .with_context(|| format!("{} is not a usable model bundle", path.display()))?;
        Ok(meta)
    }

    /// Loads a bundle folder onto the inference device.
    pub fn load(dir: &Path) -> Result<Self> {
        let meta = Self::read_meta(dir)?;
        let weights = dir.join(WEIGHTS_FILE);
        if !weights.is_file() {
            bail!(
                "model bundle {} has no weights file {}",
                dir.display(),
                WEIGHTS_FILE
            );
        }
        let device = device::inference();
        let model = Classifier::with_width(
            meta.arch,
            meta.width,
            meta.classes.len(),
            meta.dropout,
            &device,
        )
            .try_load_file(&weights)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| {
                format!(
                    "loading weights {} ({} classes, arch {}): the file is corrupt or does not match bundle.json",
                    weights.display(),
                    meta.classes.len(),
                    meta.arch.as_str()
                )
            })?
            .valid();
        Ok(Self::new(meta, model))
    }

    /// Values per image: `3 * size * size`.
    pub fn image_len(&self) -> usize {
        (3 * self.meta.image_size * self.meta.image_size) as usize
    }

    /// Class probabilities for a batch of preprocessed RGB8 images (`size`×`size` each).
    pub fn predict_pixels(&self, images: &[&[u8]]) -> Vec<Vec<f32>> {
        if images.is_empty() {
            return Vec::new();
        }
        let side = self.meta.image_size as usize;
        if let Some(fused) = &self.fused {
            let logits = fused.logits(images, &self.meta.normalization, side);
            return logits.iter().map(|l| softmax_vec(l)).collect();
        }
        let per = self.image_len();
        let mut input = vec![0f32; images.len() * per];
        for (img, out) in images.iter().zip(input.chunks_mut(per)) {
            self.meta.normalization.write_chw(img, side, false, out);
        }
        self.predict_tensor(input, images.len())
    }

    /// Class probabilities for `n` images already normalised into CHW floats.
    fn predict_tensor(&self, input: Vec<f32>, n: usize) -> Vec<Vec<f32>> {
        let side = self.meta.image_size as usize;
        let device = device::inference();
        let x = Tensor::<4>::from_data(TensorData::new(input, [n, 3, side, side]), &device);
        let probs = softmax(self.model.forward(x), 1).into_data();
        let flat: Vec<f32> = probs.as_slice::<f32>().expect("f32 probabilities").to_vec();
        flat.chunks(self.meta.classes.len())
            .map(<[f32]>::to_vec)
            .collect()
    }

    /// The `k` most likely classes, most likely first.
    pub fn top_k(&self, probs: &[f32], k: usize) -> Vec<Scored> {
        let mut idx: Vec<usize> = (0..probs.len()).collect();
        idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        idx.into_iter()
            .take(k.max(1))
            .map(|i| Scored {
                class: self.meta.classes[i].clone(),
                confidence: probs[i],
            })
            .collect()
    }
}

fn width_one() -> f64 {
    1.0
}

/// Probabilities from logits (max-shifted, so large logits do not overflow).
fn softmax_vec(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The path of the bundle inside a run's artifacts.
pub fn run_bundle_dir(artifacts: &Path) -> PathBuf {
    artifacts.join("model")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_from_before_widths_read_as_width_one() {
        // bundle.json as flora wrote it before `width` and `pretrained` existed.
        let old = r#"{"format":1,"flora_version":"0.1.0","arch":"mobilenet_v2","image_size":32,
            "classes":["bag","trouser"],"normalization":{"mean":[0.485,0.456,0.406],
            "std":[0.229,0.224,0.225]},"dropout":0.3,"run_id":null,"run_name":null,
            "data_fingerprint":"sha256:0","metrics":{},"created_at_ms":0}"#;
        let meta: BundleMeta = serde_json::from_str(old).unwrap();
        assert_eq!(meta.width, 1.0);
        assert_eq!(meta.pretrained, None);
        assert!(meta.thresholds.is_empty());
        meta.validate().unwrap();
    }

    #[test]
    fn thresholds_for_a_class_the_bundle_lacks_are_refused() {
        let mut meta: BundleMeta = serde_json::from_str(
            r#"{"format":1,"flora_version":"0.1.0","arch":"cnn","image_size":32,
            "classes":["bag","trouser"],"normalization":{"mean":[0.5,0.5,0.5],
            "std":[0.5,0.5,0.5]},"dropout":0.3,"run_id":null,"run_name":null,
            "data_fingerprint":"sha256:0","metrics":{},"created_at_ms":0,
            "thresholds":{"min_confidence":0.5,"per_class":{"bag":0.9}}}"#,
        )
        .unwrap();
        meta.validate().unwrap();
        assert_eq!(meta.thresholds.for_class("bag"), Some(0.9));
        meta.thresholds.per_class.insert("hat".into(), 0.5);
        let err = meta.validate().unwrap_err();
        assert!(err.to_string().contains("'hat'"), "{err}");
        meta.thresholds.per_class.clear();
        meta.thresholds.min_confidence = Some(1.5);
        assert!(meta.validate().is_err());
    }
}
