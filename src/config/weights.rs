//! `[weights.<name>]`: the project's own pretrained weights by name (weights a company hosts
//! itself), next to the built-in names of [`crate::model::pretrained::catalog`]; and the checks
//! of `train.pretrained` against them.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::Config;
use crate::model::pretrained::catalog::{self, Weights};

/// `[weights.<name>]`: a file flora downloads when `train.pretrained` (or `--pretrained`) names
/// it, as it does the built-in names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightsEntry {
    /// The file's `http(s)://` address.
    pub url: String,
    /// Its SHA-256: 64 hex digits (a prefix of at least 8 is checked as a prefix).
    pub sha256: String,
    /// The MobileNetV2 width the weights are for.
    pub width: f64,
    /// The file name in the cache and on a mirror (default: the URL's last part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl Config {
    /// The `[weights]` entries as catalog entries.
    pub fn project_weights(&self) -> Vec<Weights> {
        self.weights
            .iter()
            .map(|(name, e)| Weights {
                name: name.clone(),
                publisher: "flora.toml".into(),
                width: e.width,
                url: e.url.clone(),
                file: e
                    .file
                    .clone()
                    .or_else(|| catalog::file_name_of(&e.url))
                    .unwrap_or_else(|| "weights".into()),
                sha256: e.sha256.to_ascii_lowercase(),
            })
            .collect()
    }

    /// The weights called `name`: a built-in name or alias, or a `[weights]` entry.
    pub fn named_weights(&self, name: &str) -> Option<Weights> {
        catalog::find_builtin(name)
            .or_else(|| self.project_weights().into_iter().find(|w| w.name == name))
    }

    /// Every name `train.pretrained` accepts.
    pub fn weight_names(&self) -> Vec<String> {
        catalog::known_names(&self.weights.keys().cloned().collect::<Vec<_>>())
    }

    /// The `[weights]` entries, and `train.pretrained` against the weights it names.
    pub(super) fn validate_weights(&self) -> Result<()> {
        for (name, e) in &self.weights {
            let key = format!("weights.{name}");
            if !catalog::is_name_like(name) {
                bail!(
                    "[{key}]: a weights name is made of letters, digits, '.', '_' and '-', and \
                     does not end like a file (.pth, .safetensors, ...)"
                );
            }
            if catalog::is_builtin(name) {
                bail!(
                    "[{key}]: {name} is a built-in name; choose another one (to fetch the \
                     built-in weights from elsewhere, set train.pretrained_mirror)"
                );
            }
            if !(e.url.starts_with("http://") || e.url.starts_with("https://")) {
                bail!("{key}.url = {:?} is not an http(s):// address", e.url);
            }
            let file = e.file.clone().or_else(|| catalog::file_name_of(&e.url));
            match file {
                None => bail!(
                    "{key}.url = {:?} does not end with a file name: set {key}.file",
                    e.url
                ),
                Some(f) if f.contains(['/', '\\']) || f.starts_with('.') => {
                    bail!("{key}.file = {f:?} must be a plain file name")
                }
                Some(_) => {}
            }
            crate::util::download::check_sha256(&e.sha256)
                .map_err(|err| anyhow::anyhow!("{key}.sha256: {err}"))?;
            if !crate::model::mobilenet::WIDTHS.contains(&e.width) {
                bail!(
                    "{key}.width = {} is not offered: use 0.35, 0.5, 0.75 or 1.0",
                    e.width
                );
            }
        }
        let t = &self.train;
        if let Some(m) = &t.pretrained_mirror
            && m.trim().is_empty()
        {
            bail!("train.pretrained_mirror must not be empty (leave it out for none)");
        }
        let named = t
            .pretrained
            .as_deref()
            .and_then(|p| p.to_str())
            .filter(|s| catalog::is_name_like(s))
            .and_then(|s| self.named_weights(s));
        if let Some(w) = named
            && w.width != t.width
        {
            bail!(
                "train.pretrained = {:?} holds MobileNetV2 weights of width {}, but train.width \
                 is {}: set train.width = {} (or pass --width {})",
                w.name,
                w.width,
                t.width,
                w.width,
                w.width
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_weights_are_checked_and_named() {
        let ok = Config::parse(
            "[train]\narch = \"mobilenet_v2\"\nwidth = 0.5\npretrained = \"ours\"\n\
             [weights.ours]\nurl = \"https://example.com/w/ours-1.pth\"\nsha256 = \"ABCDEF12\"\n\
             width = 0.5\n",
        )
        .unwrap();
        let w = ok.named_weights("ours").unwrap();
        assert_eq!(
            (w.file.as_str(), w.sha256.as_str()),
            ("ours-1.pth", "abcdef12")
        );
        assert!(ok.weight_names().contains(&"ours".to_string()));
        assert!(ok.named_weights("mobilenetv2_050").is_some());

        for (toml, want) in [
            (
                "[weights.mobilenet_v2]\nurl = \"https://e/x.pth\"\nsha256 = \"abcdef12\"\nwidth = 1.0\n",
                "built-in name",
            ),
            (
                "[weights.a]\nurl = \"ftp://e/x.pth\"\nsha256 = \"abcdef12\"\nwidth = 1.0\n",
                "weights.a.url",
            ),
            (
                "[weights.a]\nurl = \"https://e/x.pth\"\nsha256 = \"abc\"\nwidth = 1.0\n",
                "weights.a.sha256",
            ),
            (
                "[weights.a]\nurl = \"https://e/x.pth\"\nsha256 = \"abcdef12\"\nwidth = 1.4\n",
                "weights.a.width",
            ),
            (
                "[weights.a]\nurl = \"https://e/\"\nsha256 = \"abcdef12\"\nwidth = 1.0\n",
                "set weights.a.file",
            ),
            (
                "[weights.\"a.pth\"]\nurl = \"https://e/x\"\nsha256 = \"abcdef12\"\nwidth = 1.0\n",
                "weights name",
            ),
            (
                "[train]\narch = \"mobilenet_v2\"\npretrained = \"mobilenetv2_050\"\n",
                "set train.width = 0.5",
            ),
            (
                "[train]\npretrained_mirror = \" \"\n",
                "train.pretrained_mirror",
            ),
        ] {
            let err = format!("{:#}", Config::parse(toml).unwrap_err());
            assert!(err.contains(want), "{toml}: {err}");
        }
    }
}
