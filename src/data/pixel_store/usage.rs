//! What the cache folder holds, and the two ways it shrinks: eviction (least recently used
//! entries out, down to 90% of the bound) and clearing. Both remove only what
//! [`super::layout`] recognises as the store's own, as regular files: symbolic links are never
//! followed nor removed, and anything else found is left and reported.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use super::layout;

/// A temp file older than this was left by a writer that died.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// Entries of one pipeline version and image size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    pub pipeline: u32,
    pub size: u32,
    pub entries: u64,
    /// Bytes on disk (allocated blocks), as `du` counts them.
    pub bytes: u64,
}

/// What the cache folder holds.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// By pipeline version, then size.
    pub groups: Vec<Group>,
    /// Bytes on disk of the file memo.
    pub memo_bytes: u64,
    /// Writers' temp files (in flight, or left by a writer that died).
    pub temp_files: u64,
    pub temp_bytes: u64,
    /// Paths inside `pixels/` that are not the store's (never removed), the first few.
    pub foreign: Vec<PathBuf>,
    pub foreign_count: u64,
}

impl Usage {
    /// Entries of every group.
    pub fn entries(&self) -> u64 {
        self.groups.iter().map(|g| g.entries).sum()
    }

    /// Bytes on disk of the entries, the memo and the temp files.
    pub fn total_bytes(&self) -> u64 {
        self.groups.iter().map(|g| g.bytes).sum::<u64>() + self.memo_bytes + self.temp_bytes
    }
}

/// What an eviction removed.
#[derive(Debug, Clone, Copy)]
pub struct Evicted {
    pub entries: u64,
    pub bytes: u64,
    /// Bytes on disk after it.
    pub total: u64,
}

/// What a clear removed, and what it left.
#[derive(Debug, Clone, Default)]
pub struct Cleared {
    pub entries: u64,
    /// Bytes on disk freed (entries, temp files, memo).
    pub bytes: u64,
    pub temp_files: u64,
    pub memo: bool,
    /// Paths that are not the store's, left in place (the first few), and their count.
    pub left: Vec<PathBuf>,
    pub left_count: u64,
}

/// One file found: its path, modification time and bytes on disk.
struct Found {
    path: PathBuf,
    mtime: SystemTime,
    bytes: u64,
}

/// Everything under the cache folder, sorted into the store's own and the rest.
#[derive(Default)]
struct Walk {
    entries: Vec<((u32, u32), Found)>,
    temps: Vec<Found>,
    memo: Option<Found>,
    foreign: Vec<PathBuf>,
    foreign_count: u64,
    /// The store's folders, deepest first.
    dirs: Vec<PathBuf>,
}

impl Walk {
    fn foreign(&mut self, p: PathBuf) {
        self.foreign_count += 1;
        if self.foreign.len() < 5 {
            self.foreign.push(p);
        }
    }
}

fn found(path: PathBuf, meta: &fs::Metadata) -> Found {
    Found {
        path,
        mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        bytes: meta.blocks() * 512,
    }
}

/// The children of a folder with their own (never followed) metadata. A folder that vanished
/// meanwhile (another process cleared it) is empty.
fn children(dir: &Path) -> Result<Vec<(String, PathBuf, fs::Metadata)>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let path = e.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue; // removed meanwhile
        };
        out.push((e.file_name().to_string_lossy().into_owned(), path, meta));
    }
    Ok(out)
}

fn walk(root: &Path) -> Result<Walk> {
    let mut w = Walk::default();
    let memo = root.join(layout::MEMO);
    match fs::symlink_metadata(&memo) {
        Ok(m) if m.is_file() => w.memo = Some(found(memo, &m)),
        Ok(_) => w.foreign(memo),
        Err(_) => {}
    }
    for (name, path, meta) in children(root)? {
        if layout::is_memo_temp(&name) && meta.is_file() {
            w.temps.push(found(path, &meta));
        }
    }
    let pixels = root.join(layout::PIXELS);
    match fs::symlink_metadata(&pixels) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            w.foreign(pixels);
            return Ok(w);
        }
        Err(_) => return Ok(w),
    }
    for (vname, vpath, vmeta) in children(&pixels)? {
        let Some(pipeline) = layout::version_dir(&vname).filter(|_| vmeta.is_dir()) else {
            w.foreign(vpath);
            continue;
        };
        for (sname, spath, smeta) in children(&vpath)? {
            let Some(size) = layout::size_dir(&sname).filter(|_| smeta.is_dir()) else {
                w.foreign(spath);
                continue;
            };
            for (shard, hpath, hmeta) in children(&spath)? {
                if !(layout::is_shard(&shard) && hmeta.is_dir()) {
                    w.foreign(hpath);
                    continue;
                }
                for (name, path, meta) in children(&hpath)? {
                    if !meta.is_file() {
                        w.foreign(path);
                    } else if layout::is_entry(&name, &shard) {
                        w.entries.push(((pipeline, size), found(path, &meta)));
                    } else if layout::is_entry_temp(&name, &shard) {
                        w.temps.push(found(path, &meta));
                    } else {
                        w.foreign(path);
                    }
                }
                w.dirs.push(hpath);
            }
            w.dirs.push(spath);
        }
        w.dirs.push(vpath);
    }
    w.dirs.push(pixels);
    Ok(w)
}

/// What the cache folder `root` holds.
pub fn usage(root: &Path) -> Result<Usage> {
    let w = walk(root)?;
    let mut groups: BTreeMap<(u32, u32), Group> = BTreeMap::new();
    for ((pipeline, size), f) in &w.entries {
        let g = groups.entry((*pipeline, *size)).or_insert(Group {
            pipeline: *pipeline,
            size: *size,
            entries: 0,
            bytes: 0,
        });
        g.entries += 1;
        g.bytes += f.bytes;
    }
    Ok(Usage {
        groups: groups.into_values().collect(),
        memo_bytes: w.memo.as_ref().map_or(0, |m| m.bytes),
        temp_files: w.temps.len() as u64,
        temp_bytes: w.temps.iter().map(|t| t.bytes).sum(),
        foreign: w.foreign,
        foreign_count: w.foreign_count,
    })
}

/// Removes a file; one already gone (another process removed it) counts as removed.
fn remove(path: &Path) -> bool {
    match fs::remove_file(path) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// When the folder holds more than `max_bytes` on disk, removes the least recently used
/// entries (oldest modification time: a hit refreshes it) until it holds at most 90% of it;
/// temp files of writers that died go first. None when it was within the bound.
pub fn evict(root: &Path, max_bytes: u64) -> Result<Option<Evicted>> {
    let mut w = walk(root)?;
    let now = SystemTime::now();
    let mut total: u64 = w.entries.iter().map(|(_, f)| f.bytes).sum::<u64>()
        + w.memo.as_ref().map_or(0, |m| m.bytes);
    for t in &w.temps {
        let stale = now
            .duration_since(t.mtime)
            .is_ok_and(|age| age > STALE_TEMP);
        if !(stale && remove(&t.path)) {
            total += t.bytes;
        }
    }
    if total <= max_bytes {
        return Ok(None);
    }
    let target = max_bytes / 10 * 9;
    w.entries
        .sort_by(|(_, a), (_, b)| a.mtime.cmp(&b.mtime).then_with(|| a.path.cmp(&b.path)));
    let (mut entries, mut bytes) = (0, 0);
    for (_, f) in &w.entries {
        if total <= target {
            break;
        }
        if remove(&f.path) {
            entries += 1;
            bytes += f.bytes;
            total -= f.bytes;
        }
    }
    Ok(Some(Evicted {
        entries,
        bytes,
        total,
    }))
}

/// Removes every entry, temp file and the file memo, then the store's folders that are left
/// empty. Anything else is left and reported.
pub fn clear(root: &Path) -> Result<Cleared> {
    let w = walk(root)?;
    let mut c = Cleared {
        left: w.foreign,
        left_count: w.foreign_count,
        ..Cleared::default()
    };
    for (_, f) in &w.entries {
        if remove(&f.path) {
            c.entries += 1;
            c.bytes += f.bytes;
        }
    }
    for t in &w.temps {
        if remove(&t.path) {
            c.temp_files += 1;
            c.bytes += t.bytes;
        }
    }
    if let Some(m) = &w.memo
        && remove(&m.path)
    {
        c.memo = true;
        c.bytes += m.bytes;
    }
    for d in &w.dirs {
        // Only empty folders go; one with a foreign file (or a new entry) stays.
        let _ = fs::remove_dir(d);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::pixel_store::entry::Key;

    fn put(root: &Path, byte: u8, age_s: u64) -> PathBuf {
        let key = Key {
            content: [byte; 32],
            size: 8,
            pipeline: 1,
        };
        let p = root.join(layout::entry_rel(&key));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, vec![0u8; 4096]).unwrap();
        let t = SystemTime::now() - Duration::from_secs(age_s);
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
        p
    }

    #[test]
    fn eviction_removes_the_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let old = put(root, 0x11, 300);
        let mid = put(root, 0x22, 200);
        let new = put(root, 0x33, 100);
        let per = fs::symlink_metadata(&old).unwrap().blocks() * 512;
        assert_eq!(usage(root).unwrap().total_bytes(), 3 * per);
        assert!(evict(root, 3 * per).unwrap().is_none(), "within the bound");
        // Over a bound of 2 entries: down to 90% of it (1.8), so only the newest stays.
        let e = evict(root, per * 2).unwrap().unwrap();
        assert_eq!(e.entries, 2);
        assert!(!old.exists() && !mid.exists() && new.exists());
        assert_eq!(usage(root).unwrap().entries(), 1);
    }

    #[test]
    fn clear_removes_only_the_stores_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let entry = put(&root, 0x44, 0);
        let shard = entry.parent().unwrap().to_path_buf();
        // A file named like an entry outside the store, and a link to it inside.
        let outside = dir.path().join("keep");
        fs::create_dir(&outside).unwrap();
        let victim = outside.join(entry.file_name().unwrap());
        fs::write(&victim, b"precious").unwrap();
        let mut link_name = entry.file_name().unwrap().to_string_lossy().into_owned();
        link_name.replace_range(63.., "0");
        std::os::unix::fs::symlink(&victim, shard.join(&link_name)).unwrap();
        std::os::unix::fs::symlink(&outside, shard.parent().unwrap().join("4f")).unwrap();
        fs::write(shard.join("notes.txt"), b"mine").unwrap();
        fs::write(root.join(layout::MEMO), b"memo").unwrap();
        let temp = shard.join(format!(
            ".tmp-1-1-{}",
            entry.file_name().unwrap().to_string_lossy()
        ));
        fs::write(&temp, b"half").unwrap();

        let u = usage(&root).unwrap();
        assert_eq!((u.entries(), u.temp_files, u.foreign_count), (1, 1, 3));
        let c = clear(&root).unwrap();
        assert_eq!(
            (c.entries, c.temp_files, c.memo, c.left_count),
            (1, 1, true, 3)
        );
        assert!(!entry.exists() && !temp.exists() && !root.join(layout::MEMO).exists());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(shard.join("notes.txt").exists() && shard.join(&link_name).is_symlink());
    }
}
