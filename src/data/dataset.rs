//! The dataset index: `dataset/<class>/<image>` scanned into classes and sample paths.
//!
//! Folders whose names start with `_` or `.` are not classes (they are inboxes such as
//! `_UNLABELED_SORT_ME`). When the dataset holds `train/` and `val/` folders, each is read as
//! a folder-per-class set and their split is used as it is. A `test/` folder (beside
//! `train/`+`val/`, beside `train/`, or beside the class folders) is the held-out set: never
//! trained on, and evaluated by default by `flora eval` and the promote gate.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use walkdir::WalkDir;

/// One image file of the dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Full path of the file.
    pub path: PathBuf,
    /// Path relative to the dataset root, with `/` separators (stable across machines).
    pub rel: String,
    /// Index into [`DatasetIndex::classes`].
    pub class: usize,
}

/// Which part of the data a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subset {
    Train,
    Val,
}

impl Subset {
    /// The name written in `split.csv`.
    pub fn as_str(self) -> &'static str {
        match self {
            Subset::Train => "train",
            Subset::Val => "val",
        }
    }
}

/// The classes and files of a folder-per-class dataset, in a stable (sorted) order.
#[derive(Debug, Clone)]
pub struct DatasetIndex {
    pub root: PathBuf,
    /// Class names, sorted; a class's index is its position here.
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
    /// The subset of each sample when the dataset ships `train/` and `val/` folders.
    pub fixed_split: Option<Vec<Subset>>,
    /// The held-out `test/` folder (folder-per-class), when the dataset has one: never trained
    /// on, and what eval and the promote gate use by default.
    pub test_dir: Option<PathBuf>,
}

/// True for folder or file names that flora never treats as data (`_inbox`, `.hidden`).
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('_') || name.starts_with('.')
}

/// The folder names a dataset uses for its split (`train/`, `val/`) and its held-out set
/// (`test/`): never class names, in any case.
pub const SPLIT_FOLDERS: [&str; 3] = ["train", "val", "test"];

/// `name` is one of [`SPLIT_FOLDERS`] (ignoring case, as some file systems do).
pub fn is_split_folder(name: &str) -> bool {
    SPLIT_FOLDERS.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// Checks that `name` can be a class: a plain folder name (no separators, no control
/// characters, not `_`/`.`-prefixed, at most 255 bytes), so that joining it onto the dataset
/// folder can never leave it, and not a split folder's name ([`SPLIT_FOLDERS`]). Class names
/// come back from files flora did not write itself (bundles, manifests), so every use as a
/// path goes through this.
pub fn check_class_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 255
        || is_ignored_name(name)
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if bad {
        bail!(
            "class name {name:?} is not a plain folder name (no '/', '\\', control characters, \
             leading '_' or '.')"
        );
    }
    if is_split_folder(name) {
        bail!(
            "{name:?} cannot be a class: train/, val/ and test/ are the dataset's split and \
             held-out folders (pick another class name)"
        );
    }
    Ok(())
}

impl DatasetIndex {
    /// Scans `root`. Errors name the cause: a missing folder, or fewer than two classes.
    pub fn scan(root: &Path) -> Result<Self> {
        let index = Self::read(root)?;
        if index.classes.len() < 2 {
            bail!(
                "dataset {} has {} class folder(s) ({}); a classifier needs at least 2: \
                 add one folder of images per class",
                root.display(),
                index.classes.len(),
                index.classes.join(", ")
            );
        }
        Ok(index)
    }

    /// Scans `root` like [`scan`](Self::scan) but accepts any number of classes (evaluation
    /// data may hold a single class).
    pub fn read(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            bail!(
                "dataset folder {} does not exist: put images in <dataset>/<class>/ or pass --data DIR",
                root.display()
            );
        }
        let (train, val, test) = (root.join("train"), root.join("val"), root.join("test"));
        let test_dir = test.is_dir().then_some(test);
        let index = if train.is_dir() && val.is_dir() {
            let classes = class_names(&train)?;
            let mut samples = class_files(root, &train, &classes)?;
            let n_train = samples.len();
            let val_classes = class_names(&val)?;
            if let Some(unknown) = val_classes.iter().find(|c| !classes.contains(c)) {
                bail!(
                    "class folder val/{unknown} in {} has no train/{unknown} folder",
                    root.display()
                );
            }
            samples.extend(class_files(root, &val, &classes)?);
            let fixed = (0..samples.len())
                .map(|i| {
                    if i < n_train {
                        Subset::Train
                    } else {
                        Subset::Val
                    }
                })
                .collect();
            Self {
                root: root.to_path_buf(),
                classes,
                samples,
                fixed_split: Some(fixed),
                test_dir,
            }
        } else {
            // `train/` + `test/`: the classes are under train/; `<class>/` + `test/`: every
            // folder but test/ is a class.
            let dir = if train.is_dir() && test_dir.is_some() {
                train
            } else {
                root.to_path_buf()
            };
            let mut classes = class_names(&dir)?;
            if test_dir.is_some() {
                classes.retain(|c| c != "test");
            }
            if let Some(split) = classes.iter().find(|c| is_split_folder(c)) {
                bail!(
                    "{} has a {split}/ folder among its class folders: train/, val/ and test/ \
                     are split folders, not classes (use train/ + val/ of class folders \
                     together, or rename {split}/)",
                    root.display()
                );
            }
            let samples = class_files(root, &dir, &classes)?;
            Self {
                root: root.to_path_buf(),
                classes,
                samples,
                fixed_split: None,
                test_dir,
            }
        };
        Ok(index)
    }

    /// Number of samples per class.
    pub fn counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for s in &self.samples {
            counts[s.class] += 1;
        }
        counts
    }
}

/// Sorted class folder names under `dir`, skipping `_` and `.` folders.
pub fn class_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && !is_ignored_name(&name) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Every file below `dir/<class>/` (recursively, skipping `_`/`.` entries), sorted by path.
fn class_files(root: &Path, dir: &Path, classes: &[String]) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for (class, name) in classes.iter().enumerate() {
        let class_dir = dir.join(name);
        if !class_dir.is_dir() {
            continue;
        }
        let walker = WalkDir::new(&class_dir)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !is_ignored_name(&e.file_name().to_string_lossy()));
        for entry in walker {
            let entry = entry.with_context(|| format!("walking {}", class_dir.display()))?;
            if !entry.file_type().is_file() {
                continue;
            }
            let path = entry.into_path();
            samples.push(Sample {
                rel: rel_path(root, &path),
                path,
                class,
            });
        }
    }
    Ok(samples)
}

/// `path` relative to `root`, with `/` separators.
pub fn rel_path(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_folder_names_are_never_classes() {
        for name in ["train", "val", "test", "Train", "VAL", "Test"] {
            let err = check_class_name(name).unwrap_err().to_string();
            assert!(err.contains("cannot be a class"), "{name}: {err}");
        }
        for name in ["trainers", "testudo", "bag", "val-1"] {
            assert!(check_class_name(name).is_ok(), "{name}");
        }
        // A dataset with `train/` among its class folders (no val/, no test/) is refused.
        let dir = tempfile::tempdir().unwrap();
        for class in ["bag", "shoe", "train"] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            std::fs::write(dir.path().join(class).join("a.png"), b"x").unwrap();
        }
        let err = DatasetIndex::scan(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("train/") && err.contains("not classes"),
            "{err}"
        );
    }
}
