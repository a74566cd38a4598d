//! `flora.toml`: every setting flora reads, with its default, validation and path resolution.
//!
//! All paths in the file are relative to the folder that holds the file. Unknown keys and bad
//! values are errors that name the key and the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The square input sizes flora accepts, in pixels (config and model bundles alike).
pub const IMAGE_SIZES: std::ops::RangeInclusive<u32> = 8..=1024;
use serde::{Deserialize, Serialize};

/// The default config file name, looked up in the current folder.
pub const DEFAULT_CONFIG: &str = "flora.toml";

/// The whole configuration, as read from `flora.toml` (missing keys take their defaults).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub project: ProjectConfig,
    pub data: DataConfig,
    pub train: TrainConfig,
    pub paths: PathsConfig,
    pub serve: ServeConfig,
    /// Free key/values per class (a Latin name, a description...), copied into the model bundle.
    pub class_info: BTreeMap<String, BTreeMap<String, toml::Value>>,
    /// Minimum confidences for a named answer: `min_confidence` (global) and `<class>` keys
    /// (see [`crate::unknown`]); copied into the model bundle.
    pub thresholds: BTreeMap<String, f64>,
}

/// `[project]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectConfig {
    /// Project name; also the name of the experiment in the run store.
    pub name: String,
}

impl Default for ProjectConfig {
    fn default() -> Self {
        Self {
            name: "flora".into(),
        }
    }
}

/// `[data]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Folder-per-class dataset.
    pub dir: PathBuf,
    /// Side of the square model input, in pixels.
    pub image_size: u32,
    /// Share of each class held out for validation when the dataset has no `val/` folder.
    pub val_fraction: f64,
    /// Seed for the split, the shuffling, the augmentation and the weight init.
    pub seed: u64,
    /// Random resized crop and horizontal flip while training.
    pub augment: bool,
    /// Smallest share of the image area that a random resized crop keeps.
    pub crop_scale_min: f64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dir: "dataset".into(),
            image_size: 64,
            val_fraction: 0.2,
            seed: 42,
            augment: true,
            crop_scale_min: 0.7,
        }
    }
}

/// `[train]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Model architecture: `cnn` or `mobilenet_v2`.
    pub arch: crate::model::Arch,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Learning-rate schedule: `cosine` (to 1% of the start, per step), `constant`, or
    /// `plateau` (halved when the validation loss stalls).
    pub lr_schedule: LrSchedule,
    /// L2 weight decay added by Adam (0 disables it).
    pub weight_decay: f64,
    /// Dropout before the classifier layer (default per architecture:
    /// [`Arch::default_dropout`](crate::model::Arch::default_dropout)).
    pub dropout: Option<f64>,
    /// Stop after this many epochs without a better validation accuracy (0 disables it).
    pub patience: usize,
    /// Worker threads for the CPU backend and decoding (0: one per core).
    pub threads: usize,
    /// MobileNetV2's width multiplier: 0.35, 0.5, 0.75 or 1.0.
    pub width: f64,
    /// ImageNet weights to start from (torchvision `.pth` or timm `model.safetensors`;
    /// `mobilenet_v2` only), relative to the config file.
    pub pretrained: Option<PathBuf>,
    /// Epochs of phase 1, which trains only the head over a frozen backbone (0: no phases).
    pub freeze_epochs: usize,
    /// Share of the backbone (its 17 inverted residual blocks plus the final 1×1 conv, counted
    /// from the top) that phase 2 unfreezes.
    pub unfreeze_fraction: f64,
    /// Learning rate of phase 2.
    pub finetune_learning_rate: f64,
    /// Loss weight per class: `none`, `balanced` or a table (see [`crate::class_weights`]).
    pub class_weights: crate::class_weights::ClassWeights,
    /// Strength of `balanced`: weight = (n_max / n_class) ^ power.
    pub class_weight_power: f64,
    /// Order of the training images: `shuffle`, or `balanced` (classes drawn evenly).
    pub sampler: crate::class_weights::Sampler,
}

impl TrainConfig {
    /// `dropout`, or the architecture's default.
    pub fn dropout(&self) -> f64 {
        self.dropout.unwrap_or(self.arch.default_dropout())
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            arch: crate::model::Arch::Cnn,
            epochs: 10,
            batch_size: 32,
            learning_rate: 1e-3,
            lr_schedule: LrSchedule::Cosine,
            weight_decay: 0.0,
            dropout: None,
            patience: 5,
            threads: 0,
            width: 1.0,
            pretrained: None,
            freeze_epochs: 0,
            unfreeze_fraction: 0.3,
            finetune_learning_rate: 1e-4,
            class_weights: Default::default(),
            class_weight_power: 1.0,
            sampler: Default::default(),
        }
    }
}

/// How the learning rate moves over the run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Cosine decay, step by step, from the start value to 1% of it.
    Cosine,
    /// The same value throughout.
    Constant,
    /// Halved after [`PLATEAU_PATIENCE`] epochs without a lower validation loss (see
    /// [`crate::finetune`]).
    Plateau,
}

/// Epochs without a lower validation loss before `plateau` halves the learning rate.
pub const PLATEAU_PATIENCE: usize = 2;

impl LrSchedule {
    /// The learning rate at `step` of `total` steps.
    pub fn at(self, base: f64, step: usize, total: usize) -> f64 {
        match self {
            LrSchedule::Constant | LrSchedule::Plateau => base,
            LrSchedule::Cosine => {
                let min = base * 0.01;
                let t = step as f64 / total.max(1) as f64;
                min + 0.5 * (base - min) * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// `[paths]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PathsConfig {
    /// Run store (MLflow file-store layout).
    pub runs: PathBuf,
    /// Blue/green model slots.
    pub models: PathBuf,
    /// Where `flora serve` saves uploads.
    pub collected_data: PathBuf,
}

impl Default for PathsConfig {
    fn default() -> Self {
        Self {
            runs: "runs".into(),
            models: "models".into(),
            collected_data: "collected_data".into(),
        }
    }
}

/// `[serve]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// Save every upload under `collected_data/YYYY-MM-DD/`.
    pub collect: bool,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Bearer token for the admin endpoints (`FLORA_ADMIN_TOKEN` wins over it).
    pub admin_token: Option<String>,
    /// Largest image width or height the decoder accepts (decompression-bomb guard).
    pub max_image_side: u32,
    /// Largest decoder allocation per image, in bytes (decompression-bomb guard).
    pub max_decode_bytes: u64,
    /// Most images run through the model in one forward pass (1 turns batching off).
    pub max_batch: usize,
    /// Predictions below this confidence are counted as low-confidence (a drift signal).
    pub low_confidence: f32,
    /// Seconds a connection may take to send a request's headers, or leave its body silent,
    /// before it is closed (also closes idle keep-alive connections).
    pub stall_timeout_secs: u64,
    /// Seconds one request may take in all (upload, decode, inference): 408 or 503 past it.
    pub request_timeout_secs: u64,
    /// Most connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// Seconds a shutdown waits for in-flight requests before closing their connections.
    pub shutdown_timeout_secs: u64,
    /// Most uploads decoded at once (0: two per core).
    pub max_decodes: usize,
    /// Most bytes of decoded pixels waiting for the model; past it requests get 503.
    pub max_queue_bytes: usize,
    /// Collection is skipped (the prediction still answered) while the disk holding
    /// `collected_data/` has less free space than this, in bytes.
    pub collect_min_free_bytes: u64,
    /// Origins (`https://host[:port]`) besides the server's own host allowed to POST.
    pub allowed_origins: Vec<String>,
    /// Peer addresses of reverse proxies whose `X-Forwarded-Host` header is trusted.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// The JSON-lines access log: `"-"` stdout, `""` off, else a file (relative to flora.toml).
    pub access_log: String,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            collect: true,
            max_body_bytes: 10 * 1024 * 1024,
            admin_token: None,
            max_image_side: 4096,
            max_decode_bytes: 64 * 1024 * 1024,
            max_batch: 16,
            low_confidence: 0.5,
            stall_timeout_secs: 30,
            request_timeout_secs: 120,
            max_connections: 512,
            shutdown_timeout_secs: 10,
            max_decodes: 0,
            max_queue_bytes: 64 * 1024 * 1024,
            collect_min_free_bytes: 1024 * 1024 * 1024,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            access_log: "-".into(),
        }
    }
}

/// A config together with the folder its relative paths are resolved against.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    /// The folder holding the config file (or the current folder when there is none).
    pub base: PathBuf,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
}

impl Settings {
    /// Reads `path`, or `./flora.toml` when `path` is None. A missing default file means the
    /// defaults; a missing file that was named explicitly is an error.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let (file, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        if !file.exists() {
            if explicit {
                bail!(
                    "config file {} does not exist (run `flora init` to create one)",
                    file.display()
                );
            }
            let base = std::env::current_dir().context("reading the current folder")?;
            return Ok(Self {
                config: Config::default(),
                base,
                file: None,
            });
        }
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading config file {}", file.display()))?;
        let config =
            Config::parse(&text).with_context(|| format!("in config file {}", file.display()))?;
        let abs =
            std::path::absolute(&file).with_context(|| format!("resolving {}", file.display()))?;
        let base = abs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Self {
            config,
            base,
            file: Some(abs),
        })
    }

    /// Resolves a config path against the config file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// The dataset folder.
    pub fn data_dir(&self) -> PathBuf {
        self.resolve(&self.config.data.dir)
    }
    /// The run store folder.
    pub fn runs_dir(&self) -> PathBuf {
        self.resolve(&self.config.paths.runs)
    }
    /// The model slots folder.
    pub fn models_dir(&self) -> PathBuf {
        self.resolve(&self.config.paths.models)
    }
    /// The folder for collected uploads.
    pub fn collected_dir(&self) -> PathBuf {
        self.resolve(&self.config.paths.collected_data)
    }
    /// The pretrained weights file, if any.
    pub fn pretrained_file(&self) -> Option<PathBuf> {
        self.config
            .train
            .pretrained
            .as_deref()
            .map(|p| self.resolve(p))
    }
}

impl Config {
    /// The `[train]` keys that only MobileNetV2 uses.
    fn validate_mobilenet(&self) -> Result<()> {
        let t = &self.train;
        let mobilenet = t.arch == crate::model::Arch::MobilenetV2;
        if !crate::model::mobilenet::WIDTHS.contains(&t.width) {
            bail!(
                "train.width = {} is not offered: use 0.35, 0.5, 0.75 or 1.0",
                t.width
            );
        }
        for (key, used) in [
            ("width", t.width != 1.0),
            ("pretrained", t.pretrained.is_some()),
            ("freeze_epochs", t.freeze_epochs > 0),
        ] {
            if used && !mobilenet {
                bail!(
                    "train.{key} applies to train.arch = \"mobilenet_v2\" only (arch is \"{}\")",
                    t.arch.as_str()
                );
            }
        }
        if !(t.unfreeze_fraction > 0.0 && t.unfreeze_fraction <= 1.0) {
            bail!(
                "train.unfreeze_fraction = {} must be in (0, 1]",
                t.unfreeze_fraction
            );
        }
        if !(t.finetune_learning_rate > 0.0 && t.finetune_learning_rate.is_finite()) {
            bail!(
                "train.finetune_learning_rate = {} must be a positive number",
                t.finetune_learning_rate
            );
        }
        Ok(())
    }

    /// Parses and validates a `flora.toml` text.
    pub fn parse(text: &str) -> Result<Self> {
        let config: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value's range; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let d = &self.data;
        let t = &self.train;
        if !IMAGE_SIZES.contains(&d.image_size) {
            bail!(
                "data.image_size = {} is out of range: use {} to {} pixels",
                d.image_size,
                IMAGE_SIZES.start(),
                IMAGE_SIZES.end()
            );
        }
        if d.image_size < t.arch.min_image_size() {
            bail!(
                "data.image_size = {} is too small for train.arch = \"{}\": its pooling \
                 steps halve the image to nothing below {} pixels; use {} or more",
                d.image_size,
                t.arch.as_str(),
                t.arch.min_image_size(),
                t.arch.min_image_size()
            );
        }
        if !(d.val_fraction > 0.0 && d.val_fraction < 1.0) {
            bail!(
                "data.val_fraction = {} must be between 0 and 1 (exclusive)",
                d.val_fraction
            );
        }
        if !(d.crop_scale_min > 0.0 && d.crop_scale_min <= 1.0) {
            bail!(
                "data.crop_scale_min = {} must be in (0, 1]",
                d.crop_scale_min
            );
        }
        if t.epochs == 0 {
            bail!("train.epochs must be at least 1");
        }
        if t.batch_size == 0 {
            bail!("train.batch_size must be at least 1");
        }
        if !(t.learning_rate > 0.0 && t.learning_rate.is_finite()) {
            bail!(
                "train.learning_rate = {} must be a positive number",
                t.learning_rate
            );
        }
        if let Some(d) = t.dropout
            && !(0.0..1.0).contains(&d)
        {
            bail!("train.dropout = {d} must be in [0, 1)");
        }
        self.validate_mobilenet()?;
        crate::class_weights::validate(&t.class_weights, t.class_weight_power, t.sampler)?;
        crate::unknown::Thresholds::from_table(&self.thresholds)?;
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            bail!(
                "train.weight_decay = {} must be zero or positive",
                t.weight_decay
            );
        }
        if self.project.name.trim().is_empty() {
            bail!("project.name must not be empty");
        }
        if self.serve.max_body_bytes == 0 {
            bail!("serve.max_body_bytes must be positive");
        }
        if self.serve.max_image_side == 0 || self.serve.max_decode_bytes == 0 {
            bail!("serve.max_image_side and serve.max_decode_bytes must be positive");
        }
        if self.serve.max_batch == 0 {
            bail!("serve.max_batch must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.serve.low_confidence) {
            bail!(
                "serve.low_confidence = {} must be in [0, 1]",
                self.serve.low_confidence
            );
        }
        let sv = &self.serve;
        for (key, v) in [
            ("stall_timeout_secs", sv.stall_timeout_secs),
            ("request_timeout_secs", sv.request_timeout_secs),
            ("shutdown_timeout_secs", sv.shutdown_timeout_secs),
        ] {
            if !(1..=86_400).contains(&v) {
                bail!("serve.{key} = {v} is out of range: use 1 to 86400 seconds");
            }
        }
        if sv.max_connections == 0 || sv.max_connections > 1_000_000 {
            bail!(
                "serve.max_connections = {} is out of range: use 1 to 1000000",
                sv.max_connections
            );
        }
        if sv.max_queue_bytes == 0 {
            bail!("serve.max_queue_bytes must be positive");
        }
        for o in &sv.allowed_origins {
            let host = o
                .strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
                .map(|r| r.trim_end_matches('/'));
            if !host.is_some_and(|h| !h.is_empty() && !h.contains('/')) {
                bail!(
                    "serve.allowed_origins: {o:?} is not an origin: write it as the browser \
                     sends it, e.g. \"https://flora.example.org\" or \"http://localhost:3000\""
                );
            }
        }
        Ok(())
    }
}

/// The commented default `flora.toml` that `flora init` writes. It parses to `Config::default()`.
pub const DEFAULT_TOML: &str = r#"# flora configuration. Every path is relative to this file's folder.
# Every key is optional: the values below are the defaults.

[project]
name = "flora"                 # also the experiment name in the run store

[data]
dir = "dataset"                # dataset/<class>/<image>; folders starting with _ or . are skipped
image_size = 64                # square model input, in pixels
val_fraction = 0.2             # held out per class, unless dataset/train and dataset/val exist
seed = 42                      # split, shuffling, augmentation and weight init
augment = true                 # random resized crop + horizontal flip while training
crop_scale_min = 0.7           # smallest share of the image a random crop keeps

[train]
arch = "cnn"                   # cnn | mobilenet_v2
epochs = 10
batch_size = 32
learning_rate = 0.001
lr_schedule = "cosine"         # cosine | constant | plateau (halved after 2 epochs without a lower val loss)
weight_decay = 0.0
# dropout = 0.3                # default per arch: cnn 0.3, mobilenet_v2 0.2 (torchvision's)
patience = 5                   # early stopping on val accuracy (0 = off)
threads = 0                    # 0 = one per core
width = 1.0                    # mobilenet_v2 width multiplier: 0.35 | 0.5 | 0.75 | 1.0
# pretrained = "weights/mobilenet_v2-b0353104.pth"  # ImageNet weights, mobilenet_v2 only (docs/guide/01-train.md)
freeze_epochs = 0              # > 0: phase 1 trains only the head over the frozen backbone,
unfreeze_fraction = 0.3        #   then phase 2 unfreezes this top share of the backbone
finetune_learning_rate = 0.0001  # phase 2's learning rate
class_weights = "none"         # none | balanced | { rose = 2.0, tulip = 1.0 }: loss weight per class
class_weight_power = 1.0       # balanced: weight = (largest class / this class) ^ power (0.5 = milder)
sampler = "shuffle"            # shuffle | balanced (each draw picks a class evenly; use with class_weights = "none")

[paths]
runs = "runs"                  # run store, readable by MLflow (MLFLOW_ALLOW_FILE_STORE=true)
models = "models"              # blue/green slots
collected_data = "collected_data"

[serve]
host = "127.0.0.1"
port = 8000
collect = true                 # save uploads under collected_data/YYYY-MM-DD/
max_body_bytes = 10485760      # 10 MB; a larger request gets 413
max_image_side = 4096          # decoder limits: larger images (and decompression bombs) get 422
max_decode_bytes = 67108864    # 64 MB
max_batch = 16                 # concurrent requests run through the model together (1 = off)
low_confidence = 0.5           # predictions below it are counted in flora_low_confidence_total
stall_timeout_secs = 30        # headers not complete, or body silent, this long: connection closed
request_timeout_secs = 120     # one request in all (upload, decode, inference): 408 or 503 past it
max_connections = 512          # connections served at once; more wait to be accepted
shutdown_timeout_secs = 10     # SIGINT/SIGTERM waits this long for in-flight requests
max_decodes = 0                # uploads decoded at once (0 = two per core)
max_queue_bytes = 67108864     # 64 MB of decoded pixels waiting for the model; past it 503
collect_min_free_bytes = 1073741824  # below 1 GB free on its disk, uploads are not saved (still answered)
allowed_origins = []           # browser origins, besides the server's own, that may POST (e.g. "https://app.example.org")
trusted_proxies = []           # proxy IPs whose X-Forwarded-Host counts as the host (e.g. ["127.0.0.1"])
access_log = "-"               # one JSON line per request: "-" stdout, "" off, or a file path
# admin_token = "..."          # or set FLORA_ADMIN_TOKEN; without one the admin endpoints answer 403

# Answer "unknown" below a confidence (predict, serve, merge); carried in the model bundle,
# and this table, when present, replaces the bundle's. `flora eval --target-accuracy 0.95`
# suggests a value.
# [thresholds]
# min_confidence = 0.6         # every class
# sunflower = 0.8              # this class's own

# Free facts per class, shown by `flora predict` and `flora serve`:
# [class_info.sunflower]
# latin = "Helianthus annuus"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_is_the_default_config() {
        assert_eq!(Config::parse(DEFAULT_TOML).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[train]\nepochz = 3\n").unwrap_err();
        assert!(format!("{err:#}").contains("epochz"), "{err:#}");
    }

    #[test]
    fn negative_epochs_is_refused() {
        let err = Config::parse("[train]\nepochs = -1\n").unwrap_err();
        assert!(format!("{err:#}").contains("epochs"), "{err:#}");
    }

    #[test]
    fn mobilenet_keys_are_checked() {
        let err = Config::parse("[train]\nwidth = 0.6\narch = \"mobilenet_v2\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("train.width = 0.6"), "{err:#}");
        let err = Config::parse("[train]\nwidth = 0.5\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("applies to train.arch"),
            "{err:#}"
        );
        let ok = Config::parse("[train]\narch = \"mobilenet_v2\"\nwidth = 0.35\n").unwrap();
        assert_eq!(ok.train.dropout(), 0.2);
        assert_eq!(Config::default().train.dropout(), 0.3);
    }

    #[test]
    fn cosine_schedule_ends_low() {
        let s = LrSchedule::Cosine;
        assert!((s.at(1.0, 0, 100) - 1.0).abs() < 1e-9);
        assert!((s.at(1.0, 100, 100) - 0.01).abs() < 1e-9);
    }
}
