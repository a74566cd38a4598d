//! Soft delete, restore and garbage collection of runs, exactly as MLflow's file store does
//! them: `delete` sets `lifecycle_stage: deleted` and `deleted_time` in the run's meta.yaml and
//! leaves the run in place; `restore` sets it back to `active` and drops `deleted_time`; `gc`
//! (MLflow's `mlflow gc`) removes deleted runs for good, only ever inside the store.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::track::slots::{Registry, Slot};
use crate::track::store::{
    Lifecycle, Owner, RunInfo, RunStatus, RunStore, lock_dir, update_run_meta,
};
use crate::util::fsutil;

/// The slots whose model was promoted from run `run_id`.
pub fn slots_holding(registry: &Registry, run_id: &str) -> Result<Vec<Slot>> {
    let mut held = Vec::new();
    for slot in Slot::ALL {
        if registry.info(slot)?.is_some_and(|i| i.run_id == run_id) {
            held.push(slot);
        }
    }
    Ok(held)
}

/// Why `run` must not be deleted, if it must not: it is still training, or a slot holds its
/// model (unless `force`: the slot keeps its own copy of the model, but loses its provenance
/// in listings).
pub fn refuse_delete(registry: &Registry, run: &RunInfo, force: bool) -> Result<()> {
    if run.status == RunStatus::Running && run.owner() != Owner::Gone {
        bail!(
            "run {} ({}) is still RUNNING: stop it first (Ctrl-C in its terminal)",
            run.run_name,
            run.run_id
        );
    }
    let held = slots_holding(registry, &run.run_id)?;
    if !held.is_empty() && !force {
        let names: Vec<&str> = held.iter().map(|s| s.as_str()).collect();
        bail!(
            "run {} ({}) is the source of slot {}: promote another run into it first, or pass \
             --force (the slot keeps serving its own copy of the model, but `flora runs gc` \
             will not purge the run while a slot holds it)",
            run.run_name,
            run.run_id,
            names.join(" and ")
        );
    }
    Ok(())
}

/// Soft-deletes `run` as MLflow's `delete_run`: `lifecycle_stage: deleted`, `deleted_time: now`.
pub fn delete(run: &RunInfo) -> Result<()> {
    update_run_meta(&run.dir, |meta| {
        meta.insert("lifecycle_stage".into(), Lifecycle::Deleted.as_str().into());
        meta.insert("deleted_time".into(), fsutil::now_ms().to_string());
    })
}

/// Restores a soft-deleted `run` as MLflow's `restore_run`: `lifecycle_stage: active`, and
/// `deleted_time` removed.
pub fn restore(run: &RunInfo) -> Result<()> {
    update_run_meta(&run.dir, |meta| {
        meta.insert("lifecycle_stage".into(), Lifecycle::Active.as_str().into());
        meta.remove("deleted_time");
    })
}

/// What `gc` did (or, with `dry_run`, would do).
#[derive(Debug, Default)]
pub struct GcReport {
    /// Runs removed for good, with the bytes they held.
    pub purged: Vec<(RunInfo, u64)>,
    /// Deleted runs left in place, and why.
    pub kept: Vec<(RunInfo, String)>,
    /// Leftovers of an interrupted gc that were removed.
    pub leftovers: Vec<PathBuf>,
}

/// Purges the soft-deleted runs of `store` deleted at least `older_than_ms` ago, as
/// `mlflow gc --older-than` does (a run with no `deleted_time` counts as old enough). A run
/// whose model a slot holds is kept, and so is a run still being trained by a live process
/// (MLflow's UI deletes RUNNING runs too): gc purges it once it has ended. Each run folder is first renamed to a hidden name in its
/// experiment (one atomic step: from then on no reader sees the run), then removed; symbolic
/// links are removed as links, never followed, and a run folder that is a link or that
/// resolves outside the store is refused.
pub fn gc(
    store: &RunStore,
    registry: &Registry,
    older_than_ms: u64,
    dry_run: bool,
) -> Result<GcReport> {
    let mut report = GcReport::default();
    let root = store.root();
    if !root.exists() {
        return Ok(report);
    }
    let canonical_root = root
        .canonicalize()
        .with_context(|| format!("resolving {}", root.display()))?;
    let now = fsutil::now_ms();
    for run in store.all_runs()?.into_iter().filter(RunInfo::is_deleted) {
        let age = now.saturating_sub(run.deleted_time.unwrap_or(0));
        if age < older_than_ms {
            let reason = format!(
                "deleted only {} ago",
                crate::track::summary::format_duration(age)
            );
            report.kept.push((run, reason));
            continue;
        }
        if let Some(reason) = still_training(&run) {
            report.kept.push((run, reason));
            continue;
        }
        let held = slots_holding(registry, &run.run_id)?;
        if !held.is_empty() {
            let names: Vec<&str> = held.iter().map(|s| s.as_str()).collect();
            report.kept.push((
                run,
                format!(
                    "slot {} holds its model: promote another run into it first",
                    names.join(" and ")
                ),
            ));
            continue;
        }
        check_inside(&canonical_root, root, &run)?;
        let bytes = folder_bytes(&run.dir);
        if !dry_run {
            purge(&run)?;
        }
        report.purged.push((run, bytes));
    }
    if !dry_run {
        report.leftovers = remove_leftovers(store, &canonical_root)?;
    }
    Ok(report)
}

/// Why `run` must not be purged because its process is still writing it, if it is.
fn still_training(run: &RunInfo) -> Option<String> {
    (run.status == RunStatus::Running && run.owner() == Owner::Alive).then(|| {
        format!(
            "still being trained by a live process (pid {}): gc purges it after it has ended",
            run.owner_pid()
        )
    })
}

/// Refuses a run folder that is not a plain folder `<root>/<experiment>/<name>` inside the
/// store: a symbolic link (itself or its experiment folder), or a path resolving elsewhere.
fn check_inside(canonical_root: &Path, root: &Path, run: &RunInfo) -> Result<()> {
    let exp_dir = run.dir.parent().unwrap_or(root);
    for dir in [exp_dir, run.dir.as_path()] {
        let meta =
            std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
        if meta.file_type().is_symlink() || !meta.is_dir() {
            bail!(
                "{} is a symbolic link or not a folder: gc only removes plain run folders inside \
                 the store; remove it by hand if it should go",
                dir.display()
            );
        }
    }
    let resolved = run
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", run.dir.display()))?;
    if resolved.parent().and_then(Path::parent) != Some(canonical_root) {
        bail!(
            "run folder {} resolves to {}, outside the store {}: not removed",
            run.dir.display(),
            resolved.display(),
            canonical_root.display()
        );
    }
    Ok(())
}

/// Renames the run folder to `.gc-<name>` beside it (atomic), then removes that folder.
fn purge(run: &RunInfo) -> Result<()> {
    let exp_dir = run
        .dir
        .parent()
        .context("a run folder has an experiment folder")?;
    let name = run
        .dir
        .file_name()
        .context("a run folder has a name")?
        .to_string_lossy()
        .into_owned();
    let doomed = exp_dir.join(format!(".gc-{name}"));
    {
        // The run's own lock: a `flora runs restore` or a `flora train --resume` claim in
        // flight finishes first, and the run is purged only if it is still deleted, and not
        // being trained, after it.
        let _lock = lock_dir(&run.dir)?;
        let now = crate::track::store::read_run_meta(&run.dir)?;
        if !now.is_deleted() {
            bail!(
                "run {} ({}) was restored while gc ran: left in place",
                run.run_name,
                run.run_id
            );
        }
        if let Some(reason) = still_training(&now) {
            bail!(
                "run {} ({}) is {reason}: left in place",
                run.run_name,
                run.run_id
            );
        }
        std::fs::rename(&run.dir, &doomed)
            .with_context(|| format!("renaming {} to {}", run.dir.display(), doomed.display()))?;
    }
    fsutil::sync_dir(exp_dir);
    std::fs::remove_dir_all(&doomed).with_context(|| format!("removing {}", doomed.display()))
}

/// Removes `.gc-*` run folders left by a gc that was interrupted between its rename and its
/// removal (plain folders inside the store only).
fn remove_leftovers(store: &RunStore, canonical_root: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for exp in std::fs::read_dir(store.root())?.flatten() {
        let Ok(kind) = exp.file_type() else { continue };
        if !kind.is_dir() || exp.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        for entry in std::fs::read_dir(exp.path())?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if !name.starts_with(".gc-") || !kind.is_dir() {
                continue;
            }
            let resolved = entry.path().canonicalize()?;
            if !resolved.starts_with(canonical_root) {
                continue;
            }
            std::fs::remove_dir_all(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// Total size of the regular files under `dir` (links not followed).
pub fn folder_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Parses MLflow's `--older-than` form: `30d`, `12h`, `2d8h5m20s`, `90s` (numbers may have
/// decimals), into milliseconds.
pub fn parse_age(text: &str) -> Result<u64> {
    let mut total = 0f64;
    let mut number = String::new();
    let mut any = false;
    for c in text.trim().chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400_000.0,
            'h' => 3_600_000.0,
            'm' => 60_000.0,
            's' => 1_000.0,
            _ => bail!("'{text}' is not an age like 30d, 12h, 2d8h5m20s"),
        };
        let n: f64 = number
            .parse()
            .map_err(|_| anyhow::anyhow!("'{text}' is not an age like 30d, 12h, 2d8h5m20s"))?;
        total += n * unit;
        number.clear();
        any = true;
    }
    if !any || !number.is_empty() {
        bail!("'{text}' is not an age like 30d, 12h, 2d8h5m20s (a unit is needed: d, h, m, s)");
    }
    Ok(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_as_mlflow_writes_them() {
        assert_eq!(parse_age("30d").unwrap(), 30 * 86_400_000);
        assert_eq!(
            parse_age("2d8h5m20s").unwrap(),
            2 * 86_400_000 + 8 * 3_600_000 + 5 * 60_000 + 20_000
        );
        assert_eq!(parse_age("1.5h").unwrap(), 5_400_000);
        assert_eq!(parse_age("0s").unwrap(), 0);
        for bad in ["", "30", "d", "3x", "1h30"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_run_deleted_while_it_trains_stays_deleted_when_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::new(dir.path());
        let exp = store.experiment("t").unwrap();
        let mut run = store.create_run(&exp, "r").unwrap();
        delete(&run.info).unwrap();
        run.end(RunStatus::Finished).unwrap();
        let info = crate::track::store::read_run_meta(&run.info.dir).unwrap();
        assert_eq!(info.status, RunStatus::Finished);
        assert!(info.is_deleted());
        assert!(info.deleted_time.is_some());
        assert!(store.runs().unwrap().is_empty());
        assert_eq!(store.all_runs().unwrap().len(), 1);
        restore(&info).unwrap();
        let text = std::fs::read_to_string(run.info.dir.join("meta.yaml")).unwrap();
        assert!(text.contains("lifecycle_stage: active\n"), "{text}");
        assert!(!text.contains("deleted_time"), "{text}");
        assert_eq!(store.runs().unwrap().len(), 1);
    }

    #[test]
    fn gc_refuses_a_run_folder_that_is_a_link_out_of_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let store = RunStore::new(dir.path().join("runs"));
        let exp = store.experiment("t").unwrap();
        let mut run = store.create_run(&exp, "r").unwrap();
        run.end(RunStatus::Finished).unwrap();
        delete(&run.info).unwrap();
        // Move the run outside and leave a link in its place.
        let moved = outside.path().join("run");
        std::fs::rename(&run.info.dir, &moved).unwrap();
        std::os::unix::fs::symlink(&moved, &run.info.dir).unwrap();
        let registry = Registry::new(dir.path().join("models"));
        let err = gc(&store, &registry, 0, false).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(moved.join("meta.yaml").exists());
    }
}
