//! The pixel store: decoded, resized RGB8 pixels kept on disk per project, keyed by the image
//! file's SHA-256, the size and [`imaging::PIPELINE_VERSION`], so later runs (a second train,
//! a sweep's trials, eval, cv, the promote gate) do not decode an image again.
//!
//! - [`entry`]: an entry's bytes (header, checksum, pixels);
//! - [`layout`]: where entries and the store's other files live in the cache folder;
//! - [`memo`]: the file memo (path and stat → content hash), so warm runs do not read images;
//! - [`usage`]: what the folder holds, eviction (least recently used out) and clearing.
//!
//! Several processes may share a store. A writer writes a temp file beside the entry and
//! renames it into place, so a reader sees a whole entry or none; entries are not fsynced: a
//! crash can leave an empty or torn entry, and since every read checks the header, length and
//! checksum, such an entry is a miss that the next run rebuilds, never wrong pixels. A hit
//! sets the entry's modification time (the LRU clock). A reader that finds no entry (never
//! written, or evicted by another process) decodes; eviction never touches a run's pixels
//! once they are in memory.

pub mod entry;
pub mod layout;
pub mod memo;
pub mod usage;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use crate::data::imaging;
use crate::util::fsutil;
use entry::Key;
use memo::FileMemo;
use usage::{Cleared, Evicted, Usage};

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// The pixels, checked.
    Hit(Vec<u8>),
    /// No entry.
    Miss,
    /// An entry that failed its checks (the reason); the caller rebuilds it.
    Corrupt(String),
}

/// A pixel store in a cache folder, bounded to `max_bytes` on disk.
#[derive(Debug, Clone)]
pub struct PixelStore {
    dir: PathBuf,
    max_bytes: u64,
}

impl PixelStore {
    /// The store in `dir` (nothing is created until [`PixelStore::create`]).
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        Self { dir, max_bytes }
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bound on its bytes on disk.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Creates the cache folder if missing.
    pub fn create(&self) -> Result<()> {
        let pixels = self.dir.join(layout::PIXELS);
        fs::create_dir_all(&pixels).with_context(|| format!("creating {}", pixels.display()))
    }

    fn key(content: &[u8; 32], size: u32) -> Key {
        Key {
            content: *content,
            size,
            pipeline: imaging::PIPELINE_VERSION,
        }
    }

    /// Where the entry of an image with SHA-256 `content` at `size` pixels lives.
    pub fn entry_path(&self, content: &[u8; 32], size: u32) -> PathBuf {
        self.dir.join(layout::entry_rel(&Self::key(content, size)))
    }

    /// The checked pixels of an image with SHA-256 `content` at `size`; a hit refreshes the
    /// entry's modification time. A symbolic link in the entry's place is corrupt, not followed.
    pub fn get(&self, content: &[u8; 32], size: u32) -> Lookup {
        let key = Self::key(content, size);
        let path = self.dir.join(layout::entry_rel(&key));
        let mut file = match fs::File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Corrupt(format!("cannot open: {e}")),
        };
        let want = entry::entry_len(size);
        let mut bytes = Vec::with_capacity(want as usize);
        if let Err(e) = (&mut file).take(want + 1).read_to_end(&mut bytes) {
            return Lookup::Corrupt(format!("cannot read: {e}"));
        }
        match entry::decode(&key, &bytes) {
            Ok(_) => {
                // The LRU clock; a store shared with a user who owns the entry may refuse it.
                let _ = file.set_modified(SystemTime::now());
                bytes.drain(..entry::HEADER_LEN);
                Lookup::Hit(bytes)
            }
            Err(why) => Lookup::Corrupt(why),
        }
    }

    /// Stores `pixels` (`size`×`size` RGB8) for an image with SHA-256 `content`, replacing any
    /// entry there atomically. Returns the entry's length.
    pub fn put(&self, content: &[u8; 32], size: u32, pixels: &[u8]) -> Result<u64> {
        let key = Self::key(content, size);
        let path = self.dir.join(layout::entry_rel(&key));
        let parent = path.parent().expect("entry has a folder");
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let bytes = entry::encode(&key, pixels);
        let tmp = fsutil::temp_sibling(&path);
        let written = fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes))
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("writing {}", path.display()));
        }
        Ok(bytes.len() as u64)
    }

    /// The file memo as it is on disk (empty, with the reason, when unreadable).
    pub fn load_memo(&self) -> (FileMemo, Option<String>) {
        FileMemo::load(&self.dir.join(layout::MEMO))
    }

    /// Merges what a run noted into the file memo on disk.
    pub fn save_memo(&self, memo: &FileMemo) -> Result<()> {
        memo.save(
            &self.dir.join(layout::MEMO),
            &self.dir.join(layout::MEMO_LOCK),
        )
    }

    /// Evicts the least recently used entries when the store is over its bound. None when it
    /// was within it, or when another process is evicting at the moment.
    pub fn enforce_bound(&self) -> Result<Option<Evicted>> {
        let lock = self.dir.join(layout::EVICT_LOCK);
        let Ok(_lock) = fsutil::lock_file(&lock, Duration::ZERO, "pixel cache eviction") else {
            return Ok(None);
        };
        usage::evict(&self.dir, self.max_bytes)
    }

    /// What the store holds.
    pub fn usage(&self) -> Result<Usage> {
        usage::usage(&self.dir)
    }

    /// Removes every entry and the file memo; anything else in the folder is left.
    pub fn clear(&self) -> Result<Cleared> {
        usage::clear(&self.dir)
    }
}

/// Bytes as a short human figure: `512 B`, `12.1 KiB`, `3.4 MiB`, `1.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::fingerprint::sha256;

    #[test]
    fn put_get_and_a_corrupt_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = PixelStore::new(dir.path().join("c"), 1 << 20);
        store.create().unwrap();
        let (content, px) = (sha256(b"img"), vec![9u8; entry::pixel_len(8)]);
        assert!(matches!(store.get(&content, 8), Lookup::Miss));
        store.put(&content, 8, &px).unwrap();
        assert!(matches!(store.get(&content, 8), Lookup::Hit(p) if p == px));
        assert!(
            matches!(store.get(&content, 16), Lookup::Miss),
            "another size"
        );
        let path = store.entry_path(&content, 8);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(store.get(&content, 8), Lookup::Corrupt(_)));
        store.put(&content, 8, &px).unwrap();
        assert!(matches!(store.get(&content, 8), Lookup::Hit(_)), "rebuilt");
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.path(), &path).unwrap();
        assert!(
            matches!(store.get(&content, 8), Lookup::Corrupt(_)),
            "a link"
        );
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(16384), "16.0 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }
}
