//! Reading a queued image for the page. The queue was built at start, but the files can change
//! under a running session: an image swapped for a symlink (to a private file, to `/dev/zero`)
//! or for a folder, a FIFO or a huge file. So a file is opened without following a symlink,
//! must be a regular file inside the dataset folder once open, and is read up to a bound.
//! Thumbnails for the grid are decoded through [`crate::data::imaging`] (upright, JPEGs at a
//! reduced DCT scale) and kept in a small cache.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

use crate::data::imaging::{self, DecodeLimits};

/// The largest file the page is sent or decodes (a 200 MP JPEG is well under this).
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Why a queued file could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Gone, or no longer a regular file inside the dataset (a symlink, a device, a folder).
    Refused(anyhow::Error),
    /// Over [`MAX_FILE_BYTES`].
    TooLarge(u64),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(e) => write!(f, "{e:#}"),
            Self::TooLarge(n) => write!(
                f,
                "the file is {} MB, over the {} MB the page shows",
                n.div_ceil(1 << 20),
                MAX_FILE_BYTES >> 20
            ),
        }
    }
}

/// Where a queued file may really be, fixed at the start: the dataset folder and the folders
/// its symlinked subfolders (down to `train/<class>/`) pointed to then. A symlink made later
/// leads nowhere in this list.
pub struct Roots(Vec<PathBuf>);

impl Roots {
    /// The real dataset folder and the real targets of its symlinked subfolders, now.
    pub fn of(dataset: &Path) -> Self {
        let real = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        let mut roots = vec![real(dataset)];
        let mut dirs = vec![(dataset.to_path_buf(), 0)];
        while let Some((dir, depth)) = dirs.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let Ok(kind) = e.file_type() else { continue };
                if kind.is_symlink() && e.path().is_dir() {
                    roots.push(real(&e.path()));
                } else if kind.is_dir() && depth < 1 {
                    dirs.push((e.path(), depth + 1));
                }
            }
        }
        Self(roots)
    }

    fn holds(&self, real: &Path) -> bool {
        self.0.iter().any(|r| real.starts_with(r))
    }
}

/// Opens `path` without following a symlink in its last part, checks that what was opened is
/// a regular file whose real path lies in `roots`, and reads it whole (at most
/// [`MAX_FILE_BYTES`]). Returns the bytes with the file's (size, modification time).
pub fn read_queued(roots: &Roots, path: &Path) -> Result<(Vec<u8>, Stamp), ReadError> {
    let refused = |e: anyhow::Error| ReadError::Refused(e);
    let file = open_no_follow(path).map_err(refused)?;
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))
        .map_err(refused)?;
    if !meta.is_file() {
        return Err(refused(anyhow::anyhow!(
            "{} is no longer a regular file: it was replaced since the session started",
            path.display()
        )));
    }
    check_inside(&file, roots, path).map_err(refused)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow while read: never more than the bound (one byte over tells).
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))
        .map_err(refused)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge(bytes.len() as u64));
    }
    let stamp = (
        meta.len(),
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    );
    Ok((bytes, stamp))
}

/// `open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK)`: a symlink is refused, a FIFO does not
/// block the open.
fn open_no_follow(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                anyhow::anyhow!(
                    "{} is now a symbolic link: the page shows only the files queued when \
                     the session started",
                    path.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("opening {}", path.display()))
            }
        })
}

/// The opened file's real path (through `/proc/self/fd`, so a folder above it swapped for a
/// symlink is seen too) lies in `roots`. Where `/proc` is not mounted, the check is the
/// lexical one the queue already made.
fn check_inside(file: &File, roots: &Roots, path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let Ok(real) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) else {
        return Ok(());
    };
    if !roots.holds(&real) {
        bail!(
            "{} now leads outside the dataset folder (to {}): refused",
            path.display(),
            real.display()
        );
    }
    Ok(())
}

/// A file's size and modification time: a thumbnail made from it is still good while they hold.
type Stamp = (u64, SystemTime);

/// A thumbnail (JPEG) with the stamp of the file it was made from.
struct Made {
    stamp: Stamp,
    jpeg: Vec<u8>,
}

/// Thumbnails already made, by file and side.
#[derive(Default)]
pub struct Thumbnails {
    made: Mutex<HashMap<(PathBuf, u32), Made>>,
}

/// At most this many thumbnails are kept (a few MB of JPEG).
const KEPT: usize = 2048;

impl Thumbnails {
    /// A JPEG of the image at `path`, upright, whose longer side is at most `side` pixels
    /// (never enlarged). Read as [`read_queued`] reads.
    pub fn get(
        &self,
        roots: &Roots,
        path: &Path,
        side: u32,
        limits: DecodeLimits,
    ) -> Result<Vec<u8>, ReadError> {
        let (bytes, stamp) = read_queued(roots, path)?;
        let key = (path.to_path_buf(), side);
        if let Some(m) = self.made.lock().expect("thumbnail lock").get(&key)
            && m.stamp == stamp
        {
            return Ok(m.jpeg.clone());
        }
        let jpeg = thumbnail(&bytes, side, limits).map_err(ReadError::Refused)?;
        let mut made = self.made.lock().expect("thumbnail lock");
        if made.len() >= KEPT {
            made.clear();
        }
        made.insert(
            key,
            Made {
                stamp,
                jpeg: jpeg.clone(),
            },
        );
        Ok(jpeg)
    }
}

/// Decodes `bytes` (a JPEG at a reduced scale when it is much larger than `side`) and encodes
/// it as a JPEG whose longer side is at most `side`.
fn thumbnail(bytes: &[u8], side: u32, limits: DecodeLimits) -> Result<Vec<u8>> {
    let rgb = imaging::decode_rgb(bytes, side, limits)?;
    let (w, h) = rgb.dimensions();
    let rgb = if w.max(h) > side {
        let scale = side as f64 / w.max(h) as f64;
        let (tw, th) = (
            ((w as f64 * scale).round() as u32).max(1),
            ((h as f64 * scale).round() as u32).max(1),
        );
        image::imageops::thumbnail(&rgb, tw, th)
    } else {
        rgb
    };
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&rgb)
        .context("encoding the thumbnail")?;
    Ok(out)
}
