//! The file memo: the content hash each dataset file had when flora last read it, keyed by its
//! absolute path and valid only while the file's stamp (length, modification and change times
//! in nanoseconds, device, inode) is unchanged. Warm runs take the hash from here and the
//! pixels from the store without opening the image.
//!
//! The assumption: a file whose bytes change gets a new stamp. Any write moves the modification
//! time, and the change time, which no tool can set, also moves when a tool puts an old
//! modification time back (`cp -p`, `touch -d`, `rsync -t`); a replaced file has a new inode. A
//! write within the same clock tick as the last one could keep every time: files modified less
//! than [`SETTLE`] before a run are hashed but not memoised ("racily clean", as git calls it).
//! The file is one text file with a SHA-256 of its lines at the end; one that fails it is
//! ignored whole (the files are read again, nothing wrong is used).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Result;

use crate::util::fingerprint::{hex, sha256};
use crate::util::fsutil;

const HEADER: &str = "flora file memo 1";
/// A file modified this recently may change again within the same timestamp tick.
pub const SETTLE: Duration = Duration::from_secs(2);
/// Records not used for this many days are dropped when the memo is rewritten.
const KEEP_DAYS: u32 = 30;

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    dev: u64,
    ino: u64,
}

impl Stamp {
    pub fn of(meta: &fs::Metadata) -> Self {
        Self {
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// Whether the file was last modified at least [`SETTLE`] before `now`.
    pub fn settled(&self, now: SystemTime) -> bool {
        let since_epoch = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let limit = since_epoch.saturating_sub(SETTLE);
        let (s, ns) = self.mtime;
        s >= 0 && Duration::new(s as u64, ns.clamp(0, 999_999_999) as u32) < limit
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    stamp: Stamp,
    content: [u8; 32],
    /// Days since the Unix epoch when it was last used.
    day: u32,
}

/// The memo as read at the start of a run, plus what the run noted.
#[derive(Debug, Default)]
pub struct FileMemo {
    records: HashMap<PathBuf, Record>,
    noted: HashMap<PathBuf, Record>,
}

fn today() -> u32 {
    (fsutil::now_ms() / 86_400_000) as u32
}

impl FileMemo {
    /// Reads the memo at `path`: empty when there is none; empty with the reason when it is
    /// unreadable or fails its checksum.
    pub fn load(path: &Path) -> (Self, Option<String>) {
        match fs::read(path) {
            Ok(bytes) => match parse(&bytes) {
                Some(records) => (
                    Self {
                        records,
                        noted: HashMap::new(),
                    },
                    None,
                ),
                None => (Self::default(), Some("the file memo is corrupt".into())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Self::default(), None),
            Err(e) => (
                Self::default(),
                Some(format!("cannot read the file memo: {e}")),
            ),
        }
    }

    /// The content hash of the file at `path` when its stamp is the one recorded.
    pub fn get(&self, path: &Path, stamp: &Stamp) -> Option<[u8; 32]> {
        self.records
            .get(path)
            .filter(|r| r.stamp == *stamp)
            .map(|r| r.content)
    }

    /// Notes that the file at `path` with `stamp` has `content` (used or learnt by this run).
    pub fn note(&mut self, path: PathBuf, stamp: Stamp, content: [u8; 32]) {
        let day = today();
        let known = self
            .records
            .get(&path)
            .is_some_and(|r| r.stamp == stamp && r.content == content && r.day == day);
        if !known {
            self.noted.insert(
                path,
                Record {
                    stamp,
                    content,
                    day,
                },
            );
        }
    }

    /// Whether the run noted anything the memo on disk lacks.
    pub fn changed(&self) -> bool {
        !self.noted.is_empty()
    }

    /// Writes what the run noted into the memo at `path`, merged with what other processes
    /// wrote meanwhile, under the lock file `lock`; records unused for 30 days are dropped.
    pub fn save(&self, path: &Path, lock: &Path) -> Result<()> {
        if !self.changed() {
            return Ok(());
        }
        let _lock = fsutil::lock_file(lock, Duration::from_secs(5), "update of the file memo")?;
        let mut records = fs::read(path)
            .ok()
            .and_then(|b| parse(&b))
            .unwrap_or_default();
        records.extend(self.noted.iter().map(|(p, r)| (p.clone(), *r)));
        let oldest = today().saturating_sub(KEEP_DAYS);
        records.retain(|_, r| r.day >= oldest);
        fsutil::write_atomic(path, &render(&records))
    }
}

fn render(records: &HashMap<PathBuf, Record>) -> Vec<u8> {
    let mut lines: Vec<String> = records
        .iter()
        .filter_map(|(p, r)| {
            let p = p.to_str().filter(|p| !p.contains(['\n', '\r']))?;
            let s = &r.stamp;
            Some(format!(
                "{} {} {} {} {} {} {} {} {} {p}\n",
                hex(&r.content),
                s.len,
                s.mtime.0,
                s.mtime.1,
                s.ctime.0,
                s.ctime.1,
                s.dev,
                s.ino,
                r.day
            ))
        })
        .collect();
    lines.sort();
    let mut text = format!("{HEADER}\n");
    for l in lines {
        text.push_str(&l);
    }
    let sum = hex(&sha256(text.as_bytes()));
    text.push_str(&format!("end {sum}\n"));
    text.into_bytes()
}

fn parse(bytes: &[u8]) -> Option<HashMap<PathBuf, Record>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let body_end = text.trim_end_matches('\n').rfind('\n')? + 1;
    let (body, end) = text.split_at(body_end);
    if end.strip_prefix("end ")?.trim_end() != hex(&sha256(body.as_bytes())) {
        return None;
    }
    let mut lines = body.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let mut out = HashMap::new();
    for line in lines {
        let mut f = line.splitn(10, ' ');
        let content = unhex(f.next()?)?;
        let mut num = || f.next()?.parse::<i64>().ok();
        let stamp = Stamp {
            len: num()? as u64,
            mtime: (num()?, num()?),
            ctime: (num()?, num()?),
            dev: num()? as u64,
            ino: num()? as u64,
        };
        let day = num()? as u32;
        let path = PathBuf::from(f.next()?);
        out.insert(
            path,
            Record {
                stamp,
                content,
                day,
            },
        );
    }
    Some(out)
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noted_files_come_back_until_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let (memo_path, lock) = (dir.path().join("memo"), dir.path().join("lock"));
        let photo = dir.path().join("a photo.png");
        fs::write(&photo, b"pixels").unwrap();
        let meta = fs::metadata(&photo).unwrap();
        let stamp = Stamp::of(&meta);
        assert!(!stamp.settled(SystemTime::now()), "just written");
        assert!(stamp.settled(SystemTime::now() + Duration::from_secs(3)));

        let (mut memo, problem) = FileMemo::load(&memo_path);
        assert!(problem.is_none() && memo.get(&photo, &stamp).is_none());
        memo.note(photo.clone(), stamp, sha256(b"pixels"));
        memo.save(&memo_path, &lock).unwrap();

        let (memo, problem) = FileMemo::load(&memo_path);
        assert!(problem.is_none());
        assert_eq!(memo.get(&photo, &stamp), Some(sha256(b"pixels")));
        // Same length, new bytes: the times (and so the stamp) move.
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&photo, b"PIXELS").unwrap();
        let new = Stamp::of(&fs::metadata(&photo).unwrap());
        assert_ne!(new, stamp);
        assert!(memo.get(&photo, &new).is_none());
        // Putting the old modification time back still moves the change time.
        let f = fs::File::options().write(true).open(&photo).unwrap();
        f.set_modified(meta.modified().unwrap()).unwrap();
        let restored = Stamp::of(&fs::metadata(&photo).unwrap());
        assert_eq!((restored.len, restored.mtime), (stamp.len, stamp.mtime));
        assert!(memo.get(&photo, &restored).is_none());
    }

    #[test]
    fn a_damaged_memo_is_ignored_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (memo_path, lock) = (dir.path().join("memo"), dir.path().join("lock"));
        let photo = dir.path().join("p");
        fs::write(&photo, b"x").unwrap();
        let stamp = Stamp::of(&fs::metadata(&photo).unwrap());
        let mut memo = FileMemo::default();
        memo.note(photo.clone(), stamp, [7; 32]);
        memo.save(&memo_path, &lock).unwrap();
        let good = fs::read(&memo_path).unwrap();
        assert!(parse(&good).is_some());
        let mut bad = good.clone();
        let at = bad.iter().position(|&b| b == b'7').unwrap();
        bad[at] = b'8';
        fs::write(&memo_path, &bad).unwrap();
        let (memo, problem) = FileMemo::load(&memo_path);
        assert!(problem.is_some() && memo.get(&photo, &stamp).is_none());
        fs::write(&memo_path, &good[..good.len() - 3]).unwrap();
        assert!(FileMemo::load(&memo_path).1.is_some());
    }
}
