//! Checking the paths that journals and `merge.csv` name before any file is moved.
//!
//! Both files live in the dataset, which may come from someone else: a path in them is used
//! only when it is relative to the project folder without `..` (or absolute inside a
//! collected_data or dataset folder that lies outside the project, the one case flora writes
//! absolute paths), lies inside collected_data or the dataset, has no hidden component there
//! (`.merge/`, temp files) and no symlink on the way.

use std::path::{Component, Path, PathBuf};

use super::layout::Layout;

impl Layout {
    /// A manifest or journal path made absolute, or why it is refused (nothing may be done
    /// with it then).
    pub fn checked(&self, s: &str) -> Result<PathBuf, String> {
        if s.is_empty() {
            return Err("the path is empty".into());
        }
        let p = Path::new(s);
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(format!("{s:?} contains `..`"));
        }
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        };
        let root = [&self.collected, &self.dataset]
            .into_iter()
            .filter(|r| abs.starts_with(r))
            .max_by_key(|r| r.components().count())
            .ok_or_else(|| {
                format!(
                    "{s:?} is outside {} and {}",
                    self.collected.display(),
                    self.dataset.display()
                )
            })?;
        if p.is_absolute() && root.starts_with(&self.base) {
            // flora writes paths inside the project relative to it.
            return Err(format!("{s:?} is an absolute path"));
        }
        if abs == self.manifest() {
            return Err(format!("{s:?} is the manifest itself"));
        }
        let rest = abs.strip_prefix(root).unwrap_or(&abs);
        if rest.as_os_str().is_empty() {
            return Err(format!("{s:?} names a folder, not a file in it"));
        }
        let mut at = root.clone();
        for c in rest.components() {
            let Component::Normal(name) = c else {
                return Err(format!("{s:?} is not a plain path"));
            };
            if name.to_string_lossy().starts_with('.') {
                return Err(format!("{s:?} has a hidden component"));
            }
            at.push(name);
            if at.symlink_metadata().is_ok_and(|m| m.is_symlink()) {
                return Err(format!("{s:?} goes through the symlink {}", at.display()));
            }
        }
        Ok(abs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(base: &Path) -> Layout {
        let dataset = base.join("dataset");
        Layout {
            base: base.to_path_buf(),
            collected: base.join("collected_data"),
            inbox: dataset.join(super::super::layout::INBOX),
            dataset,
        }
    }

    #[test]
    fn only_plain_paths_inside_collected_data_or_the_dataset_pass() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        assert!(l.checked("collected_data/2026-01-01/a.png").is_ok());
        assert!(l.checked("dataset/_UNLABELED_SORT_ME/bag/a.png").is_ok());
        for bad in [
            "",
            "../outside.png",
            "dataset/../../outside.png",
            "/etc/passwd",
            "flora.toml",
            "models/blue/model.bpk",
            "dataset",
            "dataset/_UNLABELED_SORT_ME/merge.csv",
            "dataset/_UNLABELED_SORT_ME/.merge/lock",
            "collected_data/.tmp-1-a.png",
        ] {
            assert!(l.checked(bad).is_err(), "{bad:?} passed");
        }
        // An absolute path is refused even inside the project.
        let abs = dir.path().join("dataset/bag/a.png");
        assert!(l.checked(&abs.to_string_lossy()).is_err());
        // A symlink on the way out of the dataset.
        std::fs::create_dir_all(dir.path().join("dataset")).unwrap();
        std::os::unix::fs::symlink("/tmp", dir.path().join("dataset/evil")).unwrap();
        let e = l.checked("dataset/evil/x.png").unwrap_err();
        assert!(e.contains("symlink"), "{e}");
    }

    #[test]
    fn absolute_paths_pass_only_inside_an_outside_collected_folder() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let mut l = layout(dir.path());
        l.collected = other.path().join("c");
        let inside = other.path().join("c/2026-01-01/a.png");
        assert!(l.checked(&inside.to_string_lossy()).is_ok());
        let beside = other.path().join("d/a.png");
        assert!(l.checked(&beside.to_string_lossy()).is_err());
    }
}
