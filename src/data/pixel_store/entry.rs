//! One pixel-store entry as a file: a fixed header (magic, format, pipeline version, image
//! size, the content hash it was made from, the pixels' SHA-256) followed by the `size`×`size`
//! RGB8 pixels. Every read checks all of it, so a torn, truncated or flipped entry is never used.

use crate::util::fingerprint::sha256;

/// The first bytes of every entry.
pub const MAGIC: [u8; 8] = *b"FLORAPX\n";
/// The entry format (bumped when the header changes).
pub const FORMAT: u32 = 1;
/// Header bytes: magic, format, pipeline version, size, reserved, content hash, pixel hash.
pub const HEADER_LEN: usize = 8 + 4 + 4 + 4 + 4 + 32 + 32;

/// What an entry is the pixels of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// SHA-256 of the image file's bytes.
    pub content: [u8; 32],
    /// Side of the square image, in pixels.
    pub size: u32,
    /// [`crate::data::imaging::PIPELINE_VERSION`] when the pixels were made.
    pub pipeline: u32,
}

/// Bytes of the pixels of a `size`×`size` RGB8 image.
pub fn pixel_len(size: u32) -> usize {
    size as usize * size as usize * 3
}

/// Bytes of a whole entry (header and pixels).
pub fn entry_len(size: u32) -> u64 {
    (HEADER_LEN + pixel_len(size)) as u64
}

/// The entry file's bytes for `pixels` under `key`.
pub fn encode(key: &Key, pixels: &[u8]) -> Vec<u8> {
    debug_assert_eq!(pixels.len(), pixel_len(key.size));
    let mut out = Vec::with_capacity(HEADER_LEN + pixels.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&key.pipeline.to_le_bytes());
    out.extend_from_slice(&key.size.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&key.content);
    out.extend_from_slice(&sha256(pixels));
    out.extend_from_slice(pixels);
    out
}

/// The pixels of an entry file's `bytes`, once every header field matches `key` and the pixels
/// match their checksum; else why the entry is corrupt.
pub fn decode<'a>(key: &Key, bytes: &'a [u8]) -> Result<&'a [u8], String> {
    let want = entry_len(key.size) as usize;
    if bytes.len() != want {
        return Err(format!("{} bytes where {want} belong", bytes.len()));
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if bytes[..8] != MAGIC {
        return Err("not a pixel entry (bad magic)".into());
    }
    if u32_at(8) != FORMAT {
        return Err(format!("entry format {} (expected {FORMAT})", u32_at(8)));
    }
    if u32_at(12) != key.pipeline || u32_at(16) != key.size {
        return Err("header names another pipeline version or size".into());
    }
    if bytes[24..56] != key.content {
        return Err("header names another image".into());
    }
    let pixels = &bytes[HEADER_LEN..];
    if bytes[56..88] != sha256(pixels) {
        return Err("pixels do not match their checksum".into());
    }
    Ok(pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key {
            content: sha256(b"a photo"),
            size: 4,
            pipeline: 7,
        }
    }

    fn pixels() -> Vec<u8> {
        (0..pixel_len(4) as u8).collect()
    }

    #[test]
    fn round_trip_and_fixed_length() {
        let bytes = encode(&key(), &pixels());
        assert_eq!(bytes.len() as u64, entry_len(4));
        assert_eq!(entry_len(64), 64 * 64 * 3 + 88);
        assert_eq!(decode(&key(), &bytes).unwrap(), &pixels()[..]);
    }

    #[test]
    fn any_flipped_byte_or_cut_is_detected() {
        let good = encode(&key(), &pixels());
        for at in 0..good.len() {
            // The reserved field is not checked.
            if (20..24).contains(&at) {
                continue;
            }
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            assert!(decode(&key(), &bad).is_err(), "flip at {at} not detected");
        }
        for len in [0, 7, HEADER_LEN, good.len() - 1] {
            assert!(decode(&key(), &good[..len]).is_err(), "cut at {len}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&key(), &longer).is_err());
    }

    #[test]
    fn another_key_is_refused() {
        let bytes = encode(&key(), &pixels());
        for other in [
            Key {
                content: sha256(b"another"),
                ..key()
            },
            Key {
                pipeline: 8,
                ..key()
            },
        ] {
            assert!(decode(&other, &bytes).is_err());
        }
        let small = Key { size: 2, ..key() };
        assert!(decode(&small, &bytes).is_err());
    }
}
