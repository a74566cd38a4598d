//! Downloading a file once into a cache, resumably and checked. The bytes go to `<dest>.part`;
//! a cut transfer is resumed with an HTTP `Range` request (a server that answers 200 instead of
//! 206 is read from the start again), the SHA-256 is checked before the file is renamed into
//! place (fsync, rename, fsync of the folder), and `<dest>.lock` keeps two processes from
//! writing the same file: the second waits, then finds the file done.
//!
//! A source is an `http(s)://` URL or, for a mirror on a shared drive, a local file path.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::{fsutil, progress};

/// Transfers tried in one call before a cut download is left for the next run to resume.
const ATTEMPTS: u32 = 3;

/// Seconds without a byte from the server before the transfer is given up
/// (`FLORA_DOWNLOAD_TIMEOUT` overrides it).
const STALL_SECS: u64 = 60;

/// The user cache folder: `FLORA_CACHE_DIR`, else `$XDG_CACHE_HOME/flora` or `~/.cache/flora`
/// (Linux and other Unix), `~/Library/Caches/flora` (macOS), `%LOCALAPPDATA%\flora\cache`
/// (Windows).
pub fn user_cache_dir() -> Result<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("FLORA_CACHE_DIR") {
        return Ok(dir);
    }
    let home = || {
        env("HOME").context(
            "neither FLORA_CACHE_DIR nor HOME is set: set FLORA_CACHE_DIR to the folder flora \
             may keep downloads in",
        )
    };
    if cfg!(windows) {
        return env("LOCALAPPDATA")
            .map(|d| d.join("flora").join("cache"))
            .context("neither FLORA_CACHE_DIR nor LOCALAPPDATA is set");
    }
    if cfg!(target_os = "macos") {
        return Ok(home()?.join("Library/Caches/flora"));
    }
    match env("XDG_CACHE_HOME").filter(|d| d.is_absolute()) {
        Some(dir) => Ok(dir.join("flora")),
        None => Ok(home()?.join(".cache/flora")),
    }
}

/// Checks a published SHA-256: 64 hex digits, or a prefix of at least 8 (what torch.hub file
/// names carry).
pub fn check_sha256(s: &str) -> Result<()> {
    if (8..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        anyhow::bail!("{s:?} is not a SHA-256: 64 hex digits, or a prefix of at least 8")
    }
}

/// Whether the full hex SHA-256 `actual` matches `expected` (the full value or a prefix).
pub fn sha256_matches(actual: &str, expected: &str) -> bool {
    expected.len() >= 8
        && actual.len() >= expected.len()
        && actual[..expected.len()].eq_ignore_ascii_case(expected)
}

/// The hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(super::fingerprint::hex(&h.finalize()))
}

/// What to download, where to, and the SHA-256 it must have.
pub struct Download<'a> {
    /// An `http(s)://` URL, or a local file path (`file://` allowed).
    pub source: &'a str,
    pub dest: &'a Path,
    /// The published SHA-256, or a prefix of it (see [`check_sha256`]).
    pub sha256: &'a str,
}

/// A file in place with the expected hash.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub path: PathBuf,
    /// The full SHA-256 of the file.
    pub sha256: String,
    /// False when the file was already there.
    pub downloaded: bool,
}

/// Why a download failed; the caller words the advice.
#[derive(Debug)]
pub enum DownloadError {
    /// No answer: no network, server down, name not resolved, or a timeout before the answer.
    /// `part` is what earlier tries left to resume (path, bytes).
    Unreachable {
        source: String,
        reason: String,
        part: Option<(PathBuf, u64)>,
    },
    /// The server answered with an error status.
    Status { source: String, status: u16 },
    /// The transfer stopped part way; the bytes so far are kept in `part` for the next try.
    Cut {
        source: String,
        got: u64,
        total: Option<u64>,
        part: PathBuf,
        reason: String,
    },
    /// The bytes have another hash than the published one; nothing was kept.
    Hash {
        source: String,
        expected: String,
        actual: String,
    },
}

impl std::fmt::Display for DownloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownloadError::Unreachable { source, reason, .. } => {
                write!(f, "cannot reach {source}: {reason}")
            }
            DownloadError::Status { source, status } => {
                write!(f, "{source} answered HTTP {status}")
            }
            DownloadError::Cut {
                source,
                got,
                total,
                part,
                reason,
            } => {
                let of = total.map_or(String::new(), |t| format!(" of {t}"));
                write!(
                    f,
                    "the download of {source} stopped after {got}{of} bytes ({reason}); run \
                     again to resume it from {}",
                    part.display()
                )
            }
            DownloadError::Hash {
                source,
                expected,
                actual,
            } => write!(
                f,
                "the file from {source} has SHA-256 {actual}, not the published {expected}; \
                 it was deleted"
            ),
        }
    }
}

impl std::error::Error for DownloadError {}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The partial file a download writes into (and resumes from).
pub fn part_path(dest: &Path) -> PathBuf {
    with_suffix(dest, ".part")
}

/// Puts `d.source` at `d.dest` with the expected hash, unless a file with that hash is there.
/// A file there with another hash is replaced. Errors that are a [`DownloadError`] can be
/// downcast to it.
pub fn fetch(d: &Download) -> Result<Fetched> {
    check_sha256(d.sha256)?;
    if let Some(done) = in_place(d)? {
        return Ok(done);
    }
    let dir = d.dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock_path = with_suffix(d.dest, ".lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            eprintln!(
                "waiting for another flora downloading {} ({} is locked)",
                d.dest.display(),
                lock_path.display()
            );
            lock.lock()
                .with_context(|| format!("locking {}", lock_path.display()))?;
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", lock_path.display()));
        }
    }
    // Another process may have finished it while this one waited.
    if let Some(done) = in_place(d)? {
        return Ok(done);
    }
    let source = d.source.trim();
    let result = match source
        .strip_prefix("http://")
        .or_else(|| source.strip_prefix("https://"))
    {
        Some(_) => download(source, d),
        None => copy(source.strip_prefix("file://").unwrap_or(source), d),
    };
    drop(lock);
    result
}

/// The file at `d.dest` if it has the expected hash; one with another hash is removed.
fn in_place(d: &Download) -> Result<Option<Fetched>> {
    if !d.dest.is_file() {
        return Ok(None);
    }
    let actual = sha256_file(d.dest)?;
    if sha256_matches(&actual, d.sha256) {
        return Ok(Some(Fetched {
            path: d.dest.to_path_buf(),
            sha256: actual,
            downloaded: false,
        }));
    }
    eprintln!(
        "{} has SHA-256 {actual}, not the published {}: removed, fetching it again",
        d.dest.display(),
        d.sha256
    );
    std::fs::remove_file(d.dest).with_context(|| format!("removing {}", d.dest.display()))?;
    Ok(None)
}

/// Copies a mirror's local file through the part file.
fn copy(from: &str, d: &Download) -> Result<Fetched> {
    let part = part_path(d.dest);
    if let Err(e) = std::fs::copy(from, &part) {
        let _ = std::fs::remove_file(&part);
        return Err(DownloadError::Unreachable {
            source: from.to_string(),
            reason: e.to_string(),
            part: None,
        }
        .into());
    }
    finish(from, &part, d)
}

/// Downloads over HTTP into the part file, resuming it, up to [`ATTEMPTS`] transfers.
fn download(url: &str, d: &Download) -> Result<Fetched> {
    let stall = std::env::var("FLORA_DOWNLOAD_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map_or(Duration::from_secs(STALL_SECS), Duration::from_secs_f64);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(stall))
        .timeout_recv_response(Some(stall))
        .timeout_per_read(Some(stall))
        .user_agent(concat!("flora/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let part = part_path(d.dest);
    let mut attempt = 1;
    loop {
        match transfer(&agent, url, &part) {
            Ok(()) => return finish(url, &part, d),
            Err(e) => {
                let cut = matches!(e.downcast_ref(), Some(DownloadError::Cut { .. }));
                if !cut || attempt == ATTEMPTS {
                    return Err(e);
                }
                eprintln!("{e:#}: trying again ({} of {ATTEMPTS})", attempt + 1);
                std::thread::sleep(Duration::from_millis(500 * attempt as u64));
                attempt += 1;
            }
        }
    }
}

/// The length of the part file, 0 when there is none.
fn part_len(part: &Path) -> u64 {
    std::fs::metadata(part).map_or(0, |m| m.len())
}

/// One HTTP transfer into `part`: from its end with a `Range` request when it has bytes.
fn transfer(agent: &ureq::Agent, url: &str, part: &Path) -> Result<()> {
    let have = part_len(part);
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let resp = req.call().map_err(|e| DownloadError::Unreachable {
        source: url.to_string(),
        reason: e.to_string(),
        part: (have > 0).then(|| (part.to_path_buf(), have)),
    })?;
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let length = header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
    // Where the body starts in the file, and the whole file's length when known.
    let (start, total) = match status {
        206 => {
            let range = header("content-range").unwrap_or_default();
            match parse_content_range(&range) {
                Some((from, total)) if from == have => (have, total.or(length.map(|l| have + l))),
                _ => {
                    // Not the range asked for: start again without one.
                    std::fs::remove_file(part).ok();
                    return Err(cut(url, part, 0, None, "the server sent another range"));
                }
            }
        }
        200 => (0, length),
        // The part already holds the whole file (or more): `finish` checks its hash.
        416 if have > 0 => return Ok(()),
        _ => {
            return Err(DownloadError::Status {
                source: url.to_string(),
                status,
            }
            .into());
        }
    };
    if start == 0 && have > 0 {
        eprintln!("{url} does not resume downloads: starting again from the beginning");
    }
    let mut file = File::options()
        .create(true)
        .write(true)
        .truncate(start == 0)
        .append(start > 0)
        .open(part)
        .with_context(|| format!("opening {}", part.display()))?;
    let bar = progress::bytes_bar(total, "download");
    bar.set_position(start);
    eprintln!(
        "downloading {url}{} to {}",
        total.map_or(String::new(), |t| format!(" ({:.1} MB)", t as f64 / 1e6)),
        part.display()
    );
    let mut body = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = start;
    let read_error = loop {
        match body.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => {
                file.write_all(&buf[..n])
                    .with_context(|| format!("writing {}", part.display()))?;
                got += n as u64;
                bar.set_position(got);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Some(e.to_string()),
        }
    };
    bar.finish_and_clear();
    file.flush()
        .with_context(|| format!("writing {}", part.display()))?;
    if let Some(reason) = read_error {
        return Err(cut(url, part, got, total, &reason));
    }
    if let Some(t) = total
        && got < t
    {
        return Err(cut(url, part, got, total, "the connection closed early"));
    }
    Ok(())
}

fn cut(url: &str, part: &Path, got: u64, total: Option<u64>, reason: &str) -> anyhow::Error {
    DownloadError::Cut {
        source: url.to_string(),
        got,
        total,
        part: part.to_path_buf(),
        reason: reason.to_string(),
    }
    .into()
}

/// `bytes FROM-TO/TOTAL` (TOTAL may be `*`) → (FROM, TOTAL).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let (range, total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let from = range.split_once('-')?.0.trim().parse().ok()?;
    Some((from, total.trim().parse().ok()))
}

/// Checks the complete part file's hash, then moves it into place durably.
fn finish(source: &str, part: &Path, d: &Download) -> Result<Fetched> {
    let actual = sha256_file(part)?;
    if !sha256_matches(&actual, d.sha256) {
        std::fs::remove_file(part).with_context(|| format!("removing {}", part.display()))?;
        return Err(DownloadError::Hash {
            source: source.to_string(),
            expected: d.sha256.to_ascii_lowercase(),
            actual,
        }
        .into());
    }
    File::open(part)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", part.display()))?;
    std::fs::rename(part, d.dest)
        .with_context(|| format!("renaming {} to {}", part.display(), d.dest.display()))?;
    if let Some(dir) = d.dest.parent() {
        fsutil::sync_dir(dir);
    }
    Ok(Fetched {
        path: d.dest.to_path_buf(),
        sha256: actual,
        downloaded: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_in_full_or_by_prefix() {
        let full = "b0353104ac1c8bd4a1e0ad3fe6b9e1a6f1c0c8a2b3d4e5f60718293a4b5c6d7e";
        assert!(sha256_matches(full, full));
        assert!(sha256_matches(full, "B0353104"));
        assert!(!sha256_matches(full, "b0353105"));
        assert!(!sha256_matches(full, "b035310"), "a prefix needs 8 digits");
        assert!(check_sha256("b0353104").is_ok());
        assert!(check_sha256(full).is_ok());
        assert!(check_sha256("b035310").is_err());
        assert!(check_sha256("g0353104").is_err());
        assert!(check_sha256(&format!("{full}0")).is_err());
    }

    #[test]
    fn content_range_is_read() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 5-9/10"), None);
    }

    #[test]
    fn a_local_source_is_copied_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.bin");
        std::fs::write(&src, b"weights").unwrap();
        let sha = crate::util::fingerprint::hex(&crate::util::fingerprint::sha256(b"weights"));
        let dest = dir.path().join("cache/w/file.bin");
        let d = Download {
            source: src.to_str().unwrap(),
            dest: &dest,
            sha256: &sha,
        };
        let got = fetch(&d).unwrap();
        assert!(got.downloaded);
        assert_eq!(std::fs::read(&dest).unwrap(), b"weights");
        assert!(!fetch(&d).unwrap().downloaded, "the second call finds it");

        std::fs::remove_file(&dest).unwrap();
        let bad = Download {
            sha256: "00000000",
            ..d
        };
        let err = fetch(&bad).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref(),
                Some(DownloadError::Hash { actual, .. }) if *actual == sha
            ),
            "{err:#}"
        );
        assert!(!dest.exists() && !part_path(&dest).exists());
    }
}
