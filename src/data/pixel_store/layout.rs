//! Where things live in the cache folder, and how a path is recognised as the store's own:
//! entries are `pixels/v<pipeline>/<size>/<2 hex>/<64 hex>` (the 64 hex digits are the content
//! hash, the first two name the shard), writers' temp files sit beside them, and the file memo
//! and the lock files are at the top. Eviction and `flora cache clear` remove nothing else.

use std::path::PathBuf;

use super::entry::Key;
use crate::util::fingerprint::hex;

/// The folder of the entries.
pub const PIXELS: &str = "pixels";
/// The file memo (path and stat → content hash).
pub const MEMO: &str = "files.memo";
/// Held while a process evicts.
pub const EVICT_LOCK: &str = "evict.lock";
/// Held while a process rewrites the file memo.
pub const MEMO_LOCK: &str = "memo.lock";
/// How `util::fsutil::temp_sibling` names a temp file: `.tmp-<pid>-<n>-<name>`.
const TEMP_PREFIX: &str = ".tmp-";

/// An entry's path under the cache folder.
pub fn entry_rel(key: &Key) -> PathBuf {
    let name = hex(&key.content);
    PathBuf::from(PIXELS)
        .join(format!("v{}", key.pipeline))
        .join(key.size.to_string())
        .join(&name[..2])
        .join(name)
}

/// `v<pipeline>` → the pipeline version.
pub fn version_dir(name: &str) -> Option<u32> {
    name.strip_prefix('v').and_then(number)
}

/// `<size>` → the image size.
pub fn size_dir(name: &str) -> Option<u32> {
    number(name)
}

/// Two lower-case hex digits.
pub fn is_shard(name: &str) -> bool {
    name.len() == 2 && is_hex(name)
}

/// 64 lower-case hex digits that start with `shard`.
pub fn is_entry(name: &str, shard: &str) -> bool {
    name.len() == 64 && is_hex(name) && name.starts_with(shard)
}

/// A writer's temp file for an entry of `shard` (left behind when the writer died).
pub fn is_entry_temp(name: &str, shard: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
        && name.len() > 65
        && is_entry(&name[name.len() - 64..], shard)
        && name.as_bytes()[name.len() - 65] == b'-'
}

/// A writer's temp file for the file memo.
pub fn is_memo_temp(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX) && name.ends_with(&format!("-{MEMO}"))
}

/// A plain decimal number without sign or leading zeros.
fn number(s: &str) -> Option<u32> {
    let plain = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0');
    plain.then(|| s.parse().ok()).flatten()
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let key = Key {
            content: [0xab; 32],
            size: 64,
            pipeline: 2,
        };
        let rel = entry_rel(&key);
        let parts: Vec<&str> = rel.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(parts[..4], ["pixels", "v2", "64", "ab"]);
        assert_eq!(version_dir(parts[1]), Some(2));
        assert_eq!(size_dir(parts[2]), Some(64));
        assert!(is_shard(parts[3]) && is_entry(parts[4], parts[3]));
        assert!(!is_entry(parts[4], "cd"));
        let temp = format!(".tmp-12-0-{}", parts[4]);
        assert!(is_entry_temp(&temp, "ab") && !is_entry_temp(parts[4], "ab"));
        assert!(is_memo_temp(".tmp-1-2-files.memo"));
        for bad in ["", "v", "v02", "x2", "-1", "1.5"] {
            assert_eq!(version_dir(bad), None, "{bad}");
        }
        for bad in ["AB", "a", "abc", "g0"] {
            assert!(!is_shard(bad), "{bad}");
        }
    }
}
