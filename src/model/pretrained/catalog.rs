//! Weights by name: the ImageNet MobileNetV2 weights torchvision and timm publish (and the
//! project's own, `[weights.<name>]` in flora.toml), downloaded once into the user cache
//! (`<cache>/weights/<name>/<file>`, see [`user_cache_dir`]) with their SHA-256 checked
//! before use. A mirror (a URL or a folder laid out like the cache's `weights/`) replaces the
//! publisher's server.
//!
//! Hashes: timm's Hugging Face files carry their full SHA-256 (the Git LFS pointer);
//! torchvision's and timm's GitHub release files carry only its first 8 hex digits in their
//! names, which is all torch.hub checks (`check_hash`): for those the prefix is checked, and
//! the run records the full SHA-256 of what was used.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::util::download::{self, Download, DownloadError, user_cache_dir};

/// Weights flora can fetch by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    pub name: String,
    /// Who published them (`torchvision`, `timm`), or `flora.toml` for the project's own.
    pub publisher: String,
    /// The MobileNetV2 width they are for.
    pub width: f64,
    pub url: String,
    /// The file name in the cache and on a mirror (`<name>/<file>`).
    pub file: String,
    /// The published SHA-256, or the prefix of it that is all the publisher gives.
    pub sha256: String,
}

/// One built-in entry.
struct Builtin {
    name: &'static str,
    aliases: &'static [&'static str],
    publisher: &'static str,
    width: f64,
    url: &'static str,
    sha256: &'static str,
    about: &'static str,
}

/// The built-in names. Sources of the hashes: the 8-digit prefixes are those in the published
/// file names (torchvision's `MobileNet_V2_Weights`, timm's `clean_checkpoint.py` naming); the
/// full one is the Git LFS SHA-256 Hugging Face shows for the file.
const BUILTIN: [Builtin; 4] = [
    Builtin {
        name: "mobilenet_v2",
        aliases: &["mobilenet_v2.imagenet1k_v1"],
        publisher: "torchvision",
        width: 1.0,
        url: "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
        sha256: "b0353104",
        about: "MobileNet_V2_Weights.IMAGENET1K_V1",
    },
    Builtin {
        name: "mobilenet_v2.imagenet1k_v2",
        aliases: &[],
        publisher: "torchvision",
        width: 1.0,
        url: "https://download.pytorch.org/models/mobilenet_v2-7ebf99e0.pth",
        sha256: "7ebf99e0",
        about: "MobileNet_V2_Weights.IMAGENET1K_V2 (a newer training recipe)",
    },
    Builtin {
        name: "mobilenetv2_050.lamb_in1k",
        aliases: &["mobilenetv2_050"],
        publisher: "timm",
        width: 0.5,
        url: "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/mobilenetv2_050-3d30d450.pth",
        sha256: "3d30d450",
        about: "the file of its GitHub release",
    },
    Builtin {
        name: "mobilenetv2_100.ra_in1k",
        aliases: &["mobilenetv2_100"],
        publisher: "timm",
        width: 1.0,
        url: "https://huggingface.co/timm/mobilenetv2_100.ra_in1k/resolve/main/model.safetensors",
        sha256: "55ea4fb3a96010b933710ebf44fc965b070d5cd054d3f35e44f2d1320b4a714e",
        about: "model.safetensors on Hugging Face",
    },
];

impl Builtin {
    fn weights(&self) -> Weights {
        Weights {
            name: self.name.into(),
            publisher: self.publisher.into(),
            width: self.width,
            url: self.url.into(),
            file: file_name_of(self.url).expect("a built-in URL names a file"),
            sha256: self.sha256.into(),
        }
    }
}

/// The built-in weights, in the order they are listed.
pub fn builtin() -> Vec<Weights> {
    BUILTIN.iter().map(Builtin::weights).collect()
}

/// The built-in weights called `name` (or one of its aliases).
pub fn find_builtin(name: &str) -> Option<Weights> {
    BUILTIN
        .iter()
        .find(|b| b.name == name || b.aliases.contains(&name))
        .map(Builtin::weights)
}

/// Whether `name` is a built-in name or alias.
pub fn is_builtin(name: &str) -> bool {
    find_builtin(name).is_some()
}

/// The built-in names as `flora train --help` lists them, one per line.
pub fn help_lines() -> String {
    BUILTIN
        .iter()
        .map(|b| {
            let aliases = if b.aliases.is_empty() {
                String::new()
            } else {
                format!(" (also {})", b.aliases.join(", "))
            };
            format!(
                "{}{aliases}: {}, width {:.2}, {}",
                b.name, b.publisher, b.width, b.about
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// File extensions that make a `--pretrained` value a path, never a name.
const FILE_EXTENSIONS: [&str; 5] = [".pth", ".pt", ".bin", ".safetensors", ".ckpt"];

/// Whether `s` could be a weights name: letters, digits, `.`, `_`, `-`, not starting with `.`,
/// and not ending with a weights file extension (`x.pth` is a file).
pub fn is_name_like(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !FILE_EXTENSIONS.iter().any(|e| s.ends_with(e))
}

/// The last segment of a URL's path (without query or fragment), if it is a plain file name.
pub fn file_name_of(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?;
    let last = path.rsplit('/').next()?;
    (!last.is_empty() && last != "." && last != ".." && !last.contains('\\'))
        .then(|| last.to_string())
}

impl Weights {
    /// Where the file lives in the cache folder `cache`.
    pub fn cache_path(&self, cache: &Path) -> PathBuf {
        cache.join("weights").join(&self.name).join(&self.file)
    }

    /// Where to fetch from: `<mirror>/<name>/<file>` with a mirror, else the publisher's URL.
    pub fn source(&self, mirror: Option<&str>) -> String {
        match mirror {
            Some(m) => format!("{}/{}/{}", m.trim_end_matches('/'), self.name, self.file),
            None => self.url.clone(),
        }
    }

    /// The hash as messages show it: the full value, or the prefix and what it is.
    fn hash_text(&self) -> String {
        if self.sha256.len() < 64 {
            format!(
                "{}: the prefix {} publishes in the file name",
                self.sha256, self.publisher
            )
        } else {
            self.sha256.clone()
        }
    }
}

/// Where pretrained weights come from: a file the user has, or a name.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    File(PathBuf),
    Named(Weights),
}

/// Pretrained weights ready to load, with what the run records about them.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub file: PathBuf,
    /// The catalog entry, for named weights.
    pub weights: Option<Weights>,
    /// The full SHA-256 of `file`.
    pub sha256: String,
}

impl Resolved {
    /// The name the bundle and the log show: the weights' name, else the file name.
    pub fn name(&self) -> Option<&str> {
        self.weights.as_ref().map(|w| w.name.as_str())
    }
}

/// Makes `source` a local file: a named one is downloaded into the user cache unless it is
/// there already (from `mirror` when given: a URL or a folder); a file is hashed.
pub fn resolve(source: &Source, mirror: Option<&str>) -> Result<Resolved> {
    match source {
        Source::File(path) => {
            if !path.is_file() {
                bail!(
                    "pretrained weights file {} does not exist: point train.pretrained or \
                     --pretrained at a file that does, or at one of the names flora downloads \
                     itself ({})",
                    path.display(),
                    known_names(&[]).join(", ")
                );
            }
            Ok(Resolved {
                file: path.clone(),
                weights: None,
                sha256: download::sha256_file(path)?,
            })
        }
        Source::Named(w) => fetch(w, mirror, &user_cache_dir()?),
    }
}

/// Every name `train.pretrained` accepts: the built-in ones and `extra` (the project's own).
pub fn known_names(extra: &[String]) -> Vec<String> {
    BUILTIN
        .iter()
        .flat_map(|b| std::iter::once(b.name).chain(b.aliases.iter().copied()))
        .map(str::to_string)
        .chain(extra.iter().cloned())
        .collect()
}

/// Fetches `w` into `cache` (see [`resolve`]); errors say what to do without network.
pub fn fetch(w: &Weights, mirror: Option<&str>, cache: &Path) -> Result<Resolved> {
    let dest = w.cache_path(cache);
    let source = w.source(mirror);
    let got = download::fetch(&Download {
        source: &source,
        dest: &dest,
        sha256: &w.sha256,
    });
    match got {
        Ok(f) => {
            if f.downloaded {
                eprintln!(
                    "pretrained weights {} saved to {} (SHA-256 {})",
                    w.name,
                    dest.display(),
                    f.sha256
                );
            }
            Ok(Resolved {
                file: f.path,
                weights: Some(w.clone()),
                sha256: f.sha256,
            })
        }
        Err(e) => match e.downcast_ref::<DownloadError>() {
            Some(de) => bail!("{}", advice(w, &source, mirror, &dest, de)),
            None => Err(e.context(format!("fetching pretrained weights {}", w.name))),
        },
    }
}

/// The message for a failed download: what happened, and the ways around it.
fn advice(
    w: &Weights,
    source: &str,
    mirror: Option<&str>,
    dest: &Path,
    e: &DownloadError,
) -> String {
    let mirror_hint = if mirror.is_some() {
        String::new()
    } else {
        format!(
            "\n  Or set FLORA_WEIGHTS_MIRROR (or train.pretrained_mirror) to a mirror serving {}/{}.",
            w.name, w.file
        )
    };
    let by_hand = format!(
        "\n  Without network: download {} on a machine that has it, and save it as\n    {}\n  \
         (flora checks its SHA-256 before use; {}).{mirror_hint}\n  Or pass --pretrained FILE \
         with a copy you have.",
        w.url,
        dest.display(),
        w.hash_text(),
    );
    let from = match mirror {
        Some(m) => format!("{source} (the mirror {m})"),
        None => source.to_string(),
    };
    match e {
        DownloadError::Unreachable { reason, part, .. } => {
            let kept = part.as_ref().map_or(String::new(), |(p, n)| {
                format!(
                    "\n  The {n} bytes downloaded so far are kept in {} and resumed next time.",
                    p.display()
                )
            });
            format!(
                "cannot download pretrained weights {} from {from}: {reason} (no network, or \
                 the server is down?){kept}{by_hand}",
                w.name
            )
        }
        DownloadError::Status { status, .. } => format!(
            "cannot download pretrained weights {} from {from}: the server answered HTTP \
             {status}{by_hand}",
            w.name
        ),
        DownloadError::Cut { .. } => format!("pretrained weights {}: {e}{by_hand}", w.name),
        DownloadError::Hash {
            expected, actual, ..
        } => format!(
            "pretrained weights {}: the file from {from} has SHA-256 {actual}, but the \
             published SHA-256 is {expected}{}; flora deleted its copy and kept nothing. The \
             file at that address changed, or the transfer was corrupted. If you trust that \
             file, pass it as --pretrained FILE, or add it under a name of its own as \
             [weights.<name>] (url, sha256, width) in flora.toml.",
            w.name,
            if expected.len() < 64 {
                " (a prefix)"
            } else {
                ""
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_entries_are_well_formed() {
        let all = builtin();
        assert_eq!(all.len(), BUILTIN.len());
        for w in &all {
            download::check_sha256(&w.sha256).unwrap();
            assert!(w.url.starts_with("https://"), "{}", w.url);
            assert!(crate::model::mobilenet::WIDTHS.contains(&w.width));
            assert!(is_name_like(&w.name), "{}", w.name);
            // A prefix-only hash is the one in the published file name.
            if w.sha256.len() < 64 {
                assert!(w.file.contains(&format!("-{}.", w.sha256)), "{}", w.file);
            }
        }
        let names = known_names(&[]);
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "names and aliases are unique");
        assert_eq!(find_builtin("mobilenetv2_050").unwrap().width, 0.5);
        assert_eq!(
            find_builtin("mobilenet_v2").unwrap().file,
            "mobilenet_v2-b0353104.pth"
        );
        assert_eq!(
            find_builtin("mobilenetv2_100").unwrap().file,
            "model.safetensors"
        );
        assert!(find_builtin("resnet50").is_none());
        assert!(help_lines().contains("mobilenetv2_050.lamb_in1k (also mobilenetv2_050)"));
    }

    #[test]
    fn names_and_paths_are_told_apart() {
        assert!(is_name_like("mobilenet_v2"));
        assert!(is_name_like("mobilenetv2_100.ra_in1k"));
        assert!(!is_name_like("mobilenet_v2-b0353104.pth"));
        assert!(!is_name_like("weights/model"));
        assert!(!is_name_like("model.safetensors"));
        assert!(!is_name_like(".hidden"));
        assert!(!is_name_like(""));
    }

    #[test]
    fn urls_and_cache_paths() {
        let w = find_builtin("mobilenetv2_100.ra_in1k").unwrap();
        assert_eq!(
            w.cache_path(Path::new("/c")),
            Path::new("/c/weights/mobilenetv2_100.ra_in1k/model.safetensors")
        );
        assert_eq!(w.source(None), w.url);
        assert_eq!(
            w.source(Some("https://mirror.example/flora/")),
            "https://mirror.example/flora/mobilenetv2_100.ra_in1k/model.safetensors"
        );
        assert_eq!(
            file_name_of("https://h/a/b.pth?download=true").as_deref(),
            Some("b.pth")
        );
        assert_eq!(file_name_of("https://h/a/"), None);
    }

    #[test]
    fn advice_names_the_url_the_path_and_the_hashes() {
        let w = find_builtin("mobilenet_v2").unwrap();
        let dest = w.cache_path(Path::new("/cache"));
        let down = advice(
            &w,
            &w.url,
            None,
            &dest,
            &DownloadError::Unreachable {
                source: w.url.clone(),
                reason: "connection refused".into(),
                part: None,
            },
        );
        for want in [
            w.url.as_str(),
            "/cache/weights/mobilenet_v2/mobilenet_v2-b0353104.pth",
            "--pretrained FILE",
            "FLORA_WEIGHTS_MIRROR",
            "b0353104: the prefix torchvision publishes",
        ] {
            assert!(down.contains(want), "{want:?} missing from: {down}");
        }
        let bad = advice(
            &w,
            &w.url,
            None,
            &dest,
            &DownloadError::Hash {
                source: w.url.clone(),
                expected: "b0353104".into(),
                actual: "ffff".repeat(16),
            },
        );
        assert!(bad.contains("b0353104 (a prefix)") && bad.contains(&"ffff".repeat(16)));
    }
}
