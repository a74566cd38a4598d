//! Parsing `flora.toml` and checking the range of every value; each error names its key.

use anyhow::{Result, bail};

use super::Config;
use crate::data::imaging::IMAGE_SIZES;

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
        self.validate_weights()?;
        crate::data::class_weights::validate(&t.class_weights, t.class_weight_power, t.sampler)?;
        crate::model::unknown::Thresholds::from_table(&self.thresholds)?;
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            bail!(
                "train.weight_decay = {} must be zero or positive",
                t.weight_decay
            );
        }
        let c = &self.cache;
        if !(1..=super::MAX_CACHE_MB).contains(&c.max_size_mb) {
            bail!(
                "cache.max_size_mb = {} is out of range: use 1 to {}",
                c.max_size_mb,
                super::MAX_CACHE_MB
            );
        }
        if c.dir.as_os_str().is_empty() {
            bail!("cache.dir must not be empty (turn the cache off with cache.enabled = false)");
        }
        if self.project.name.trim().is_empty() {
            bail!("project.name must not be empty");
        }
        if self.serve.max_body_bytes == 0 {
            bail!("serve.max_body_bytes must be positive");
        }
        for (key, mp) in [
            ("data.max_image_megapixels", self.data.max_image_megapixels),
            (
                "serve.max_image_megapixels",
                self.serve.max_image_megapixels,
            ),
        ] {
            if !(mp > 0.0 && mp <= 10_000.0) {
                bail!(
                    "{key} = {mp} is out of range: use a number of megapixels above 0 (at most 10000)"
                );
            }
        }
        if self.serve.max_decode_bytes == 0 {
            bail!("serve.max_decode_bytes must be positive");
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
