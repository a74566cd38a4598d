//! Collected uploads: what `flora serve` saves for retraining and `flora merge` reads back.
//!
//! ```text
//! collected_data/YYYY-MM-DD/<id>.<ext>    the original bytes (extension of the sniffed format)
//! collected_data/YYYY-MM-DD/<id>.json     a Sidecar: time, slot, run, prediction, client file name
//! ```
//! The sidecar is written first and the image last, each through a temp file (`.tmp-*`) and a
//! rename, so a finished image always has its sidecar and readers never see a partial file.

use std::path::{Path, PathBuf};

use anyhow::Result;
use image::ImageFormat;
use serde::{Deserialize, Serialize};

use crate::bundle::Scored;
use crate::fsutil::write_atomic;

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
        &crate::store::new_id()[..16]
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
    sidecar.sha256 = crate::fingerprint::hex(&crate::fingerprint::sha256(bytes));
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
