//! Moving one file without ever losing or doubling it: rename when both ends are on one
//! filesystem, else copy + fsync + rename + remove the source. [`settle`] looks at both ends
//! first, so the same move can be replayed from a journal after a crash, at any point.

use std::collections::HashSet;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::util::fingerprint::{hex, sha256};

/// What [`settle`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The file is now at `to` and no longer at `from` (moved now or earlier).
    Done,
    /// `to` holds other content: nothing was moved, `from` is untouched.
    Conflict,
    /// Neither end exists: the file was moved or removed by someone else.
    Missing,
    /// `from` no longer has content `sha` (edited since it was recorded): nothing was moved.
    Changed,
}

/// Brings the move `from` → `to` of a file whose content hash is `sha` (lower-case hex) to its
/// end, whatever state an earlier, interrupted attempt left behind. A `from` whose content is
/// no longer `sha` is left where it is.
pub fn settle(from: &Path, to: &Path, sha: &str) -> Result<Settled> {
    let stale = copy_temp(to);
    let (has_from, has_to) = (exists(from), exists(to));
    let out = match (has_from, has_to) {
        (true, false) if file_sha(from)? != sha => Settled::Changed,
        (true, false) => match move_file(from, to) {
            Ok(()) => Settled::Done,
            Err(e) if is_exists(&e) => return settle(from, to, sha),
            Err(e) => return Err(e),
        },
        (false, true) => Settled::Done,
        (true, true) => {
            // A copy that finished before the source was removed, or a foreign file.
            if file_sha(to)? == sha {
                std::fs::remove_file(from)
                    .with_context(|| format!("removing {}", from.display()))?;
                Settled::Done
            } else {
                Settled::Conflict
            }
        }
        (false, false) => Settled::Missing,
    };
    if exists(&stale) {
        let _ = std::fs::remove_file(&stale);
    }
    Ok(out)
}

fn is_exists(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::AlreadyExists)
}

/// True when something (even a dangling link) is at `p`.
pub fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

/// Lower-case hex SHA-256 of a file's content.
pub fn file_sha(p: &Path) -> Result<String> {
    let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(hex(&sha256(&bytes)))
}

/// The temp file a cross-filesystem copy to `to` is written to (hidden, so never trained on).
fn copy_temp(to: &Path) -> PathBuf {
    let name = to
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    to.with_file_name(format!(".tmp-merge-{name}"))
}

/// Moves `from` to `to`, never replacing an existing `to` (an `AlreadyExists` io error then).
fn move_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    match rename_noreplace(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => copy_across(from, to),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e.into()),
        Err(e) => Err(e).with_context(|| format!("moving {} to {}", from.display(), to.display())),
    }
}

/// Copy into a hidden temp beside `to`, fsync, rename into place, fsync the folder, then remove
/// the source. A crash leaves either the source alone, or both with equal content.
fn copy_across(from: &Path, to: &Path) -> Result<()> {
    let tmp = copy_temp(to);
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    if let Err(e) = rename_noreplace(&tmp, to) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    if let Some(parent) = to.parent() {
        crate::util::fsutil::sync_dir(parent);
    }
    std::fs::remove_file(from).with_context(|| format!("removing {}", from.display()))
}

/// `rename(2)` that fails with `AlreadyExists` instead of replacing `to` (`renameat2` with
/// `RENAME_NOREPLACE`; on a filesystem without it, a check then a plain rename).
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            if exists(to) {
                Err(std::io::ErrorKind::AlreadyExists.into())
            } else {
                std::fs::rename(from, to)
            }
        }
        _ => Err(err),
    }
}

/// A free path like `path`: `path` itself, else `stem-2.ext`, `stem-3.ext`... that neither
/// exists nor is in `reserved` (which then holds it).
pub fn free_name(path: &Path, reserved: &mut HashSet<PathBuf>) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|s| format!(".{}", s.to_string_lossy()))
        .unwrap_or_default();
    let mut candidate = path.to_path_buf();
    let mut n = 1;
    while exists(&candidate) || reserved.contains(&candidate) {
        n += 1;
        candidate = path.with_file_name(format!("{stem}-{n}{ext}"));
    }
    reserved.insert(candidate.clone());
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_replays_every_state() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("sub/b"));
        std::fs::write(&a, b"x").unwrap();
        let sha = file_sha(&a).unwrap();
        assert_eq!(settle(&a, &b, &sha).unwrap(), Settled::Done);
        assert!(!a.exists() && b.exists());
        // Replayed after it finished.
        assert_eq!(settle(&a, &b, &sha).unwrap(), Settled::Done);
        // A copy that finished before the source was removed.
        std::fs::write(&a, b"x").unwrap();
        assert_eq!(settle(&a, &b, &sha).unwrap(), Settled::Done);
        assert!(!a.exists());
        // Someone else's file at the destination is never replaced.
        std::fs::write(&a, b"y").unwrap();
        let sha_y = file_sha(&a).unwrap();
        assert_eq!(settle(&a, &b, &sha_y).unwrap(), Settled::Conflict);
        assert_eq!(std::fs::read(&b).unwrap(), b"x");
        assert_eq!(std::fs::read(&a).unwrap(), b"y");
        // A source edited since its hash was recorded stays where it is.
        assert_eq!(
            settle(&a, &dir.path().join("c"), &sha).unwrap(),
            Settled::Changed
        );
        assert_eq!(std::fs::read(&a).unwrap(), b"y");
        std::fs::remove_file(&a).unwrap();
        assert_eq!(
            settle(&a, &dir.path().join("c"), &sha).unwrap(),
            Settled::Missing
        );
    }

    #[test]
    fn copy_across_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"hello").unwrap();
        copy_across(&a, &b).unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::read(&b).unwrap(), b"hello");
        assert!(!copy_temp(&b).exists());
    }
}
