//! Data fingerprint: one hash over the sorted (relative path, size, content hash) of the files
//! used, so the same data always gives the same fingerprint (flora's answer to DVC).

use sha2::{Digest, Sha256};

/// One file's entry in a fingerprint.
#[derive(Debug, Clone)]
pub struct FileDigest {
    pub rel: String,
    pub size: u64,
    pub sha256: [u8; 32],
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint of a set of files, `sha256:` followed by 16 hex digits. Order-independent.
pub fn fingerprint(files: &[FileDigest]) -> String {
    let mut sorted: Vec<&FileDigest> = files.iter().collect();
    sorted.sort_by(|a, b| a.rel.cmp(&b.rel));
    let mut h = Sha256::new();
    for f in sorted {
        h.update(f.rel.as_bytes());
        h.update([0]);
        h.update(f.size.to_le_bytes());
        h.update(f.sha256);
    }
    format!("sha256:{}", &hex(&h.finalize())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_does_not_matter_but_content_does() {
        let a = FileDigest {
            rel: "a/1.png".into(),
            size: 3,
            sha256: sha256(b"abc"),
        };
        let b = FileDigest {
            rel: "b/2.png".into(),
            size: 3,
            sha256: sha256(b"def"),
        };
        let fp = fingerprint(&[a.clone(), b.clone()]);
        assert_eq!(fp, fingerprint(&[b.clone(), a.clone()]));
        let c = FileDigest {
            sha256: sha256(b"xyz"),
            ..b
        };
        assert_ne!(fp, fingerprint(&[a, c]));
    }
}
