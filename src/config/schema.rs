//! The sections and keys of `flora.toml`, with their defaults (missing keys take them).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole configuration, as read from `flora.toml` (missing keys take their defaults).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub project: ProjectConfig,
    pub data: DataConfig,
    pub train: TrainConfig,
    pub paths: PathsConfig,
    pub serve: ServeConfig,
    pub label: LabelConfig,
    pub cache: CacheConfig,
    /// Free key/values per class (a Latin name, a description...), copied into the model bundle.
    pub class_info: BTreeMap<String, BTreeMap<String, toml::Value>>,
    /// Minimum confidences for a named answer: `min_confidence` (global) and `<class>` keys
    /// (see [`crate::model::unknown`]); copied into the model bundle.
    pub thresholds: BTreeMap<String, f64>,
    /// The project's own pretrained weights by name (see [`super::weights`]).
    pub weights: BTreeMap<String, super::weights::WeightsEntry>,
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
    /// Largest image accepted from files (train, eval, predict, merge, label), in megapixels
    /// (width × height / 10⁶). JPEGs larger than the model needs decode at a reduced scale.
    pub max_image_megapixels: f64,
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
            max_image_megapixels: crate::data::imaging::DEFAULT_MAX_MEGAPIXELS,
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
    /// Where train and cv run: `auto` (a hardware GPU when this flora has the `gpu` feature and
    /// the machine has one, else the CPU), `cpu`, `gpu`, `gpu:N` or `wgpu-cpu`.
    pub device: crate::util::device::DeviceChoice,
    /// MobileNetV2's width multiplier: 0.35, 0.5, 0.75 or 1.0.
    pub width: f64,
    /// ImageNet weights to start from (`mobilenet_v2` only): a name flora downloads into the
    /// user cache (built-in, or a `[weights]` entry), or a file relative to the config file
    /// (torchvision `.pth` or timm `model.safetensors`).
    pub pretrained: Option<PathBuf>,
    /// Where named weights are fetched from instead of their publishers: a URL or a folder
    /// holding `<name>/<file>` (`FLORA_WEIGHTS_MIRROR` wins over it).
    pub pretrained_mirror: Option<String>,
    /// Epochs of phase 1, which trains only the head over a frozen backbone (0: no phases).
    pub freeze_epochs: usize,
    /// Share of the backbone (its 17 inverted residual blocks plus the final 1×1 conv, counted
    /// from the top) that phase 2 unfreezes.
    pub unfreeze_fraction: f64,
    /// Learning rate of phase 2.
    pub finetune_learning_rate: f64,
    /// Loss weight per class: `none`, `balanced` or a table (see [`crate::data::class_weights`]).
    pub class_weights: crate::data::class_weights::ClassWeights,
    /// Strength of `balanced`: weight = (n_max / n_class) ^ power.
    pub class_weight_power: f64,
    /// Order of the training images: `shuffle`, or `balanced` (classes drawn evenly).
    pub sampler: crate::data::class_weights::Sampler,
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
            device: Default::default(),
            width: 1.0,
            pretrained: None,
            pretrained_mirror: None,
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
    /// [`crate::train::finetune`]).
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

/// `[label]`: `flora label`, the sorting page.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LabelConfig {
    /// The page's own token, required beyond loopback (`FLORA_LABEL_TOKEN` wins over it). Never
    /// the admin token: the page keeps it in a cookie, and it opens only the page.
    pub token: Option<String>,
}

/// `[cache]`: the pixel cache (decoded, resized images kept on disk between runs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Keep decoded pixels on disk for later runs (`FLORA_PIXEL_CACHE=off` or `--no-cache`
    /// turn it off for one run).
    pub enabled: bool,
    /// The cache folder, relative to the config file.
    pub dir: PathBuf,
    /// Most MiB the cache may hold on disk; past it the least recently used entries go.
    pub max_size_mb: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: ".flora/cache".into(),
            max_size_mb: 4096,
        }
    }
}

/// The largest `cache.max_size_mb` (16 TiB).
pub const MAX_CACHE_MB: u64 = 16 << 20;

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
    /// Largest upload accepted, in megapixels (width × height / 10⁶); larger ones get 422.
    pub max_image_megapixels: f64,
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
            max_image_megapixels: crate::data::imaging::DEFAULT_MAX_MEGAPIXELS,
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
