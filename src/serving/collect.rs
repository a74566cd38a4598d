//! Collected uploads: what `flora serve` saves for retraining and `flora merge` reads back.
//!
//! ```text
//! collected_data/YYYY-MM-DD/<id>.<ext>    the original bytes (extension of the sniffed format)
//! collected_data/YYYY-MM-DD/<id>.json     a Sidecar: time, slot, run, prediction, client file name
//! ```
//! The sidecar is written first and the image last, each through a temp file (`.tmp-*`) and a
//! rename, so a finished image always has its sidecar and readers never see a partial file.
//!
//! [`collect`] (what serve uses) adds two guards on top of [`save`]:
//! - **No repeats**: an upload's `<id>` is derived from its SHA-256, and
//!   `collected_data/.index/<2 hex>/<sha256>` records each content once collected. The record
//!   is claimed with an exclusive create, so several servers sharing `collected_data/` store
//!   the same bytes once. A repeat is not saved; the first upload's sidecar (and prediction)
//!   stays as it was. Deleting `.index/` forgets what was collected.
//! - **Free space**: nothing is saved while the disk holding `collected_data/` has less free
//!   space than asked (`serve.collect_min_free_bytes`).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use image::ImageFormat;
use serde::{Deserialize, Serialize};

use crate::model::Scored;
use crate::util::fsutil::write_atomic;

/// Metadata saved beside each collected image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sidecar {
    pub id: String,
    /// RFC 3339 time of the upload.
    pub time: String,
    /// The image file name inside the dated folder.
    pub file: String,
    pub slot: Option<String>,
    pub run_id: Option<String>,
    pub predicted_class: String,
    pub confidence: f32,
    pub top_k: Vec<Scored>,
    /// The client's file name, as metadata only: never used as a path.
    pub client_filename: Option<String>,
    pub bytes: u64,
    pub sha256: String,
}

/// The file extension flora uses for a sniffed format.
pub fn extension(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "jpg",
        ImageFormat::Png => "png",
        ImageFormat::Gif => "gif",
        ImageFormat::Bmp => "bmp",
        ImageFormat::WebP => "webp",
        ImageFormat::Tiff => "tiff",
        _ => "img",
    }
}

/// A new unique upload id: `<HHMMSS>-<16 hex>` (sortable within a day).
pub fn new_id() -> String {
    let now = jiff::Zoned::now();
    format!(
        "{}-{}",
        now.strftime("%H%M%S"),
        &crate::track::store::new_id()[..16]
    )
}

/// The dated folder for today (local time): `root/YYYY-MM-DD`.
pub fn today_dir(root: &Path) -> PathBuf {
    root.join(jiff::Zoned::now().strftime("%Y-%m-%d").to_string())
}

/// Saves an upload and its sidecar (sidecar first, then the image, both atomic). Returns the
/// image path.
pub fn save(
    root: &Path,
    bytes: &[u8],
    format: ImageFormat,
    sidecar: &mut Sidecar,
) -> Result<PathBuf> {
    let dir = today_dir(root);
    let file = format!("{}.{}", sidecar.id, extension(format));
    sidecar.file = file.clone();
    sidecar.bytes = bytes.len() as u64;
    sidecar.sha256 = crate::util::fingerprint::hex(&crate::util::fingerprint::sha256(bytes));
    write_atomic(
        &dir.join(format!("{}.json", sidecar.id)),
        &serde_json::to_vec_pretty(sidecar)?,
    )?;
    let path = dir.join(&file);
    write_atomic(&path, bytes)?;
    Ok(path)
}

/// Reads the sidecar of a collected image (`<id>.json` beside `<id>.<ext>`), if there is one.
pub fn read_sidecar(image: &Path) -> Option<Sidecar> {
    let text = std::fs::read_to_string(image.with_extension("json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// What [`collect`] did with an upload.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Saved; the image's path.
    Saved(PathBuf),
    /// The same bytes were collected before (by this or another server): not saved.
    Duplicate,
    /// Not saved: the disk had `free` bytes free, below the configured minimum.
    LowDisk { free: u64 },
}

/// The folder of content records, hidden from `flora merge`.
pub const INDEX_DIR: &str = ".index";

/// A record still empty after this long was left by a server that died while saving: the
/// next upload of the same bytes takes it over.
const STALE_CLAIM: Duration = Duration::from_secs(60);

/// The upload id of some content: the first 32 hex digits of its SHA-256.
pub fn content_id(sha256_hex: &str) -> String {
    sha256_hex[..32].to_string()
}

/// Saves an upload as [`save`] does, under its content id, unless the same bytes were
/// collected before or the disk holding `root` has less than `min_free` bytes free (counting
/// the upload). See the module docs.
pub fn collect(
    root: &Path,
    bytes: &[u8],
    format: ImageFormat,
    sidecar: &mut Sidecar,
    min_free: u64,
) -> Result<Outcome> {
    let free = free_bytes(root)?;
    if free.saturating_sub(2 * bytes.len() as u64 + 64 * 1024) < min_free {
        return Ok(Outcome::LowDisk { free });
    }
    let sha = crate::util::fingerprint::hex(&crate::util::fingerprint::sha256(bytes));
    let record = root.join(INDEX_DIR).join(&sha[..2]).join(&sha);
    if !claim(&record)? {
        return Ok(Outcome::Duplicate);
    }
    sidecar.id = content_id(&sha);
    match save(root, bytes, format, sidecar) {
        Ok(path) => {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            write_atomic(&record, rel.to_string_lossy().as_bytes())?;
            Ok(Outcome::Saved(path))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&record);
            Err(e)
        }
    }
}

/// Claims a content record: true when this call created it (or took over a stale, empty one
/// left by a crash), false when the content was collected or is being saved by someone else.
fn claim(record: &Path) -> Result<bool> {
    let parent = record.parent().expect("a record has a folder");
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(record)
        {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let meta = std::fs::metadata(record)
                    .with_context(|| format!("reading {}", record.display()))?;
                let stale = meta.len() == 0
                    && meta
                        .modified()
                        .ok()
                        .and_then(|m| m.elapsed().ok())
                        .is_some_and(|age| age > STALE_CLAIM);
                if !stale {
                    return Ok(false);
                }
                // Left by a server that died while saving: remove it and claim again (if two
                // servers race here, both save the same bytes under the same names).
                let _ = std::fs::remove_file(record);
            }
            Err(e) => {
                return Err(e).with_context(|| format!("creating {}", record.display()));
            }
        }
    }
    Ok(false)
}

/// Free bytes (for unprivileged users) on the file system holding `path`, or its nearest
/// existing ancestor.
pub fn free_bytes(path: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => {
                p = Path::new(".");
                break;
            }
        }
    }
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .with_context(|| format!("{} is not a valid path", p.display()))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reading the free space of {}", p.display()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar() -> Sidecar {
        Sidecar {
            id: new_id(),
            time: "2026-11-23T00:00:00Z".into(),
            file: String::new(),
            slot: None,
            run_id: None,
            predicted_class: "bag".into(),
            confidence: 0.5,
            top_k: Vec::new(),
            client_filename: None,
            bytes: 0,
            sha256: String::new(),
        }
    }

    #[test]
    fn a_stale_empty_claim_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"\x89PNG\r\n\x1a\nnot really";
        let sha = crate::util::fingerprint::hex(&crate::util::fingerprint::sha256(bytes));
        let record = dir.path().join(INDEX_DIR).join(&sha[..2]).join(&sha);
        // A fresh empty record: someone is saving it now.
        std::fs::create_dir_all(record.parent().unwrap()).unwrap();
        std::fs::write(&record, b"").unwrap();
        let out = collect(dir.path(), bytes, ImageFormat::Png, &mut sidecar(), 0).unwrap();
        assert_eq!(out, Outcome::Duplicate);
        // The same record an hour old: its server died; the upload is saved.
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&record)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mut side = sidecar();
        let Outcome::Saved(path) =
            collect(dir.path(), bytes, ImageFormat::Png, &mut side, 0).unwrap()
        else {
            panic!("not saved");
        };
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert_eq!(side.id, content_id(&sha));
        let rel = std::fs::read_to_string(&record).unwrap();
        assert_eq!(dir.path().join(rel), path);
        // Now a repeat.
        let out = collect(dir.path(), bytes, ImageFormat::Png, &mut sidecar(), 0).unwrap();
        assert_eq!(out, Outcome::Duplicate);
    }

    #[test]
    fn nothing_is_saved_below_the_free_space_minimum() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let out = collect(
            dir.path(),
            b"abc",
            ImageFormat::Png,
            &mut sidecar(),
            u64::MAX,
        )
        .unwrap();
        assert!(matches!(out, Outcome::LowDisk { .. }), "{out:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
