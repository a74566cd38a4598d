//! `meta.yaml` reading and writing (MLflow's flat YAML), and reading a run's params, tags and metrics.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow};

use super::{Lifecycle, RunInfo, RunStatus, checked_key, lock_dir};
use crate::util::fsutil::write_atomic;

/// Rewrites `dir/meta.yaml` (read, modify, write) with the run's folder locked, so that two
/// writers (a run ending, `flora runs delete`) never lose each other's fields. `edit` gets the
/// top-level fields as raw YAML text (quoted strings stay quoted); fields it leaves alone are
/// written back as they were.
pub fn update_run_meta<T>(
    dir: &Path,
    edit: impl FnOnce(&mut BTreeMap<String, String>) -> T,
) -> Result<T> {
    let _lock = lock_dir(dir)?;
    rewrite_run_meta(dir, edit)
}

/// [`update_run_meta`] for a caller that already holds the run folder's lock.
pub(super) fn rewrite_run_meta<T>(
    dir: &Path,
    edit: impl FnOnce(&mut BTreeMap<String, String>) -> T,
) -> Result<T> {
    let path = dir.join("meta.yaml");
    let mut fields = match std::fs::read_to_string(&path) {
        Ok(text) => raw_yaml_fields(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let out = edit(&mut fields);
    let yaml: String = fields.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
    write_atomic(&path, yaml.as_bytes())?;
    Ok(out)
}

/// The top-level `key: value` fields of a YAML mapping, values as raw text; indented or `- `
/// lines that follow a key are kept with it.
fn raw_yaml_fields(text: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '-', '\t']) {
            if let Some(v) = last.as_ref().and_then(|k| out.get_mut(k)) {
                v.push('\n');
                v.push_str(line);
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            out.insert(k.trim().to_string(), v.trim().to_string());
            last = Some(k.trim().to_string());
        }
    }
    out
}

/// The name of the experiment a run belongs to (from the experiment's meta.yaml).
pub fn experiment_name(info: &RunInfo) -> Result<String> {
    let path = info
        .dir
        .parent()
        .map(|p| p.join("meta.yaml"))
        .context("a run folder has an experiment folder")?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_yaml_map(&text)
        .remove("name")
        .ok_or_else(|| anyhow!("{} has no name", path.display()))
}

/// All params of a run.
pub fn read_params(info: &RunInfo) -> Result<BTreeMap<String, String>> {
    read_kv_dir(&info.dir.join("params"))
}

/// All tags of a run.
pub fn read_tags(info: &RunInfo) -> Result<BTreeMap<String, String>> {
    read_kv_dir(&info.dir.join("tags"))
}

/// One metric's history: (timestamp_ms, value, step) per logged value.
pub fn read_metric(info: &RunInfo, key: &str) -> Result<Vec<(u64, f64, u64)>> {
    let path = info.dir.join("metrics").join(checked_key(key)?);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let parse = || -> Option<(u64, f64, u64)> {
                Some((f[0].parse().ok()?, f[1].parse().ok()?, f[2].parse().ok()?))
            };
            if f.len() != 3 {
                return Err(anyhow!("{}: bad metric line {l:?}", path.display()));
            }
            parse().ok_or_else(|| anyhow!("{}: bad metric line {l:?}", path.display()))
        })
        .collect()
}

fn read_kv_dir(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") || !entry.path().is_file() {
            continue;
        }
        out.insert(
            name,
            std::fs::read_to_string(entry.path())
                .with_context(|| format!("reading {}", entry.path().display()))?,
        );
    }
    Ok(out)
}

/// Reads `dir/meta.yaml` into a [`RunInfo`].
pub fn read_run_meta(dir: &Path) -> Result<RunInfo> {
    let path = dir.join("meta.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let m = parse_yaml_map(&text);
    let get = |k: &str| {
        m.get(k)
            .cloned()
            .ok_or_else(|| anyhow!("{} has no {k}", path.display()))
    };
    let status_code: i64 = get("status")?
        .parse()
        .with_context(|| format!("{}: bad status", path.display()))?;
    Ok(RunInfo {
        run_id: get("run_id")?,
        run_name: m.get("run_name").cloned().unwrap_or_default(),
        experiment_id: get("experiment_id")?,
        user_id: m.get("user_id").cloned().unwrap_or_default(),
        status: RunStatus::from_code(status_code)
            .ok_or_else(|| anyhow!("{}: unknown status {status_code}", path.display()))?,
        start_time: get("start_time")?
            .parse()
            .with_context(|| format!("{}: bad start_time", path.display()))?,
        end_time: m.get("end_time").and_then(|v| v.parse().ok()),
        lifecycle: match m.get("lifecycle_stage").map(String::as_str) {
            Some("deleted") => Lifecycle::Deleted,
            _ => Lifecycle::Active,
        },
        deleted_time: m.get("deleted_time").and_then(|v| v.parse().ok()),
        dir: dir.to_path_buf(),
    })
}

/// A `file://` URI for `path`, percent-encoded (RFC 3986: every byte but unreserved
/// characters and `/`).
pub(super) fn file_uri(path: &Path) -> Result<String> {
    use std::os::unix::ffi::OsStrExt;
    let abs = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let mut uri = String::from("file://");
    for &b in abs.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(uri)
}

pub(super) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub(super) fn yaml_map(fields: &[(&str, String)]) -> String {
    fields.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}

/// Parses the flat `key: value` YAML that MLflow's meta.yaml files use.
pub(super) fn parse_yaml_map(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if line.starts_with(' ') || line.starts_with('-') {
            continue;
        }
        let v = v.trim();
        let v = if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
            v[1..v.len() - 1].replace("''", "'")
        } else if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
            v[1..v.len() - 1].to_string()
        } else {
            v.to_string()
        };
        out.insert(k.trim().to_string(), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_round_trip_with_quotes() {
        let y = yaml_map(&[("name", quote("it's: here")), ("n", "3".into())]);
        let m = parse_yaml_map(&y);
        assert_eq!(m["name"], "it's: here");
        assert_eq!(m["n"], "3");
    }
}
