//! Crash-safe file writes: write to a temp file in the same folder, fsync, then rename.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};

/// Checks a relative path read back from a file flora keeps (a split, a journal, a manifest):
/// it must be relative, `/`-separated, and made of plain names only (no `..`, `.`, empty or
/// absolute parts), so that joining it onto its base folder can never leave that folder.
pub fn check_relative(path: &str) -> Result<&Path> {
    let plain = !path.is_empty()
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if !plain {
        anyhow::bail!("path {path:?} is not a plain relative path inside its folder");
    }
    Ok(Path::new(path))
}

/// A temp name beside `path`, unique to this process and call.
pub fn temp_sibling(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".tmp-{}-{}-{name}", std::process::id(), n))
}

/// Writes `bytes` to `path` atomically: readers see the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = temp_sibling(path);
    let result = (|| -> Result<()> {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Appends one line to a text file atomically (the whole file is rewritten through a temp file).
pub fn append_line_atomic(path: &Path, line: &str) -> Result<()> {
    let mut text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Swaps `a` and `b` (two existing files or folders on one file system) in one atomic step
/// (`renameat2(RENAME_EXCHANGE)`): every reader, and a crash at any moment, sees each path
/// whole, old or new. Where the file system cannot exchange, `b` is moved aside to `a`'s
/// place through a third name: two renames, with a short window in which `b` is missing.
pub fn exchange(a: &Path, b: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: two NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
        return Err(err).with_context(|| format!("exchanging {} and {}", a.display(), b.display()));
    }
    let aside = temp_sibling(b);
    std::fs::rename(b, &aside).with_context(|| format!("moving {} aside", b.display()))?;
    std::fs::rename(a, b).with_context(|| format!("moving {} to {}", a.display(), b.display()))?;
    std::fs::rename(&aside, a)
        .with_context(|| format!("moving {} to {}", aside.display(), a.display()))
}

/// fsyncs a folder so that a rename inside it is durable.
pub fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The error of [`lock_file`] when another process holds the lock (callers may downcast to
/// it, e.g. to answer "busy, try again" rather than "refused").
#[derive(Debug)]
pub struct Busy {
    /// What holds the lock, e.g. "flora merge".
    pub what: String,
    pub path: PathBuf,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "another {} is running ({} is locked); try again when it has finished",
            self.what,
            self.path.display()
        )
    }
}

impl std::error::Error for Busy {}

/// Opens (creating) `path` and takes an exclusive lock on it, retrying for up to `wait`. When
/// another process holds it, the error says that `what` (e.g. "promote") is running.
pub fn lock_file(path: &Path, wait: std::time::Duration, what: &str) -> Result<std::fs::File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let start = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < wait => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Busy {
                    what: what.to_string(),
                    path: path.to_path_buf(),
                }
                .into());
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
}

/// `p` with `.` and `..` components resolved lexically (for configured roots such as
/// `data.dir = "../shared/data"`; manifest paths with `..` are refused, never normalised).
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_swaps_two_folders_and_no_reader_sees_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for (d, text) in [(&a, "new"), (&b, "old")] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("f"), text).unwrap();
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (b, stop) = (b.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut gaps = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    gaps += usize::from(!b.join("f").exists());
                }
                gaps
            })
        };
        for _ in 0..2000 {
            exchange(&a, &b).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            watcher.join().unwrap(),
            0,
            "b was missing while it was swapped"
        );
        // An even number of swaps: back where they started; once more swaps them.
        exchange(&a, &b).unwrap();
        assert_eq!(std::fs::read_to_string(b.join("f")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(a.join("f")).unwrap(), "old");
        assert!(exchange(&a, &dir.path().join("none")).is_err());
    }

    #[test]
    fn normalize_resolves_dots() {
        assert_eq!(
            normalize(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
    }
}
