//! A config together with the folder its relative paths are resolved against.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{Config, DEFAULT_CONFIG};
use crate::data::imaging::DecodeLimits;
use crate::data::pixel_store::PixelStore;
use crate::model::pretrained::catalog::{self, Source};
use crate::model::unknown::Thresholds;

/// The environment variable that turns the pixel cache off for one run (`off`).
pub const PIXEL_CACHE_ENV: &str = "FLORA_PIXEL_CACHE";

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
    /// The pixel cache folder.
    pub fn cache_dir(&self) -> PathBuf {
        self.resolve(&self.config.cache.dir)
    }
    /// The pixel cache as configured, whether or not it is on.
    pub fn pixel_store_anyway(&self) -> PixelStore {
        PixelStore::new(self.cache_dir(), self.config.cache.max_size_mb << 20)
    }
    /// The pixel cache, or None when `cache.enabled = false` or `FLORA_PIXEL_CACHE=off`.
    pub fn pixel_store(&self) -> Result<Option<PixelStore>> {
        let off_by_env = match std::env::var(PIXEL_CACHE_ENV) {
            Err(_) => false,
            Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
                "off" | "0" | "false" | "no" => true,
                "" | "on" | "1" | "true" | "yes" => false,
                _ => bail!("{PIXEL_CACHE_ENV}={v:?} is not understood: use off (or on)"),
            },
        };
        Ok((self.config.cache.enabled && !off_by_env).then(|| self.pixel_store_anyway()))
    }
    /// Where the pretrained weights come from, if any: `train.pretrained` names weights (a
    /// built-in name or a `[weights]` entry; a name wins over a file of that name, which
    /// `./name` reaches) or is a file relative to the config file's folder. A value that could
    /// be a name but is neither one nor a file is an error that lists the names.
    pub fn pretrained(&self) -> Result<Option<Source>> {
        let Some(p) = self.config.train.pretrained.as_deref() else {
            return Ok(None);
        };
        let file = self.resolve(p);
        if let Some(text) = p.to_str().filter(|s| catalog::is_name_like(s)) {
            if let Some(w) = self.config.named_weights(text) {
                return Ok(Some(Source::Named(w)));
            }
            if !file.exists() {
                bail!(
                    "train.pretrained = {text:?} is neither a file ({} does not exist) nor a \
                     name of weights flora downloads: {}",
                    file.display(),
                    self.config.weight_names().join(", ")
                );
            }
        }
        Ok(Some(Source::File(file)))
    }

    /// Where named weights are fetched from instead of their publishers' servers:
    /// `FLORA_WEIGHTS_MIRROR`, else `train.pretrained_mirror` (a folder relative to the config
    /// file's, or a URL).
    pub fn weights_mirror(&self) -> Option<String> {
        if let Some(m) = std::env::var("FLORA_WEIGHTS_MIRROR")
            .ok()
            .filter(|m| !m.trim().is_empty())
        {
            return Some(m.trim().to_string());
        }
        let m = self.config.train.pretrained_mirror.as_deref()?.trim();
        if m.starts_with("http://") || m.starts_with("https://") {
            return Some(m.to_string());
        }
        let folder = Path::new(m.strip_prefix("file://").unwrap_or(m));
        Some(self.resolve(folder).display().to_string())
    }

    /// The limits of decoding image files (`data.max_image_megapixels`).
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits::for_data(self.config.data.max_image_megapixels)
    }

    /// The limits of decoding uploads in `flora serve` (`serve.max_image_megapixels`,
    /// `serve.max_decode_bytes`).
    pub fn serve_decode_limits(&self) -> DecodeLimits {
        let s = &self.config.serve;
        DecodeLimits::for_serve(s.max_image_megapixels, s.max_decode_bytes)
    }

    /// The thresholds of the config in use (`[thresholds]`), empty when it has none.
    pub fn thresholds(&self) -> Thresholds {
        // Validated when the config was read.
        Thresholds::from_table(&self.config.thresholds).unwrap_or_default()
    }
}
