//! A parent run shared by the workers of an indexed job (`flora train --sweep --trial-index`,
//! `flora cv --fold`): however many processes start at once, on one machine or on many pods
//! over a shared `runs/`, the first creates the parent and the others join it. Its children
//! are found by an index tag, and a worker that runs an index again replaces that index's
//! child (soft-deletes the old one) instead of adding another.

use anyhow::{Result, bail};

use super::owner::{Owner, lock_dir};
use super::{PARENT_RUN_TAG, Run, RunInfo, RunStatus, RunStore, read_params, read_tags};
use super::{TAG_HOST, TAG_PID, TAG_START};

/// Tag on a shared parent: how many indexes its job has.
pub const TAG_INDEXED: &str = "flora.indexed";

impl RunStore {
    /// The active run called `name` tagged `kind_tag = "parent"` in experiment `exp`, or a new
    /// one with `params` and `tags`, created under the experiment's lock so that workers
    /// starting together make exactly one. A parent of that name whose params differ is an
    /// error naming the first difference (another job used the name). The parent has no owner
    /// process: it is RUNNING until a worker ends it.
    pub fn shared_parent(
        &self,
        exp: &str,
        name: &str,
        kind_tag: &str,
        params: &[(&str, String)],
        tags: &[(&str, String)],
    ) -> Result<Run> {
        let _lock = lock_dir(&self.root.join(exp))?;
        let existing = self.runs()?.into_iter().find(|r| {
            r.experiment_id == exp
                && r.run_name == name
                && read_tags(r).is_ok_and(|t| t.get(kind_tag).map(String::as_str) == Some("parent"))
        });
        if let Some(info) = existing {
            let have = read_params(&info)?;
            for (k, v) in params {
                match have.get(*k) {
                    Some(old) if old == v => {}
                    old => bail!(
                        "run {name} ({}) is the parent of another job: its {k} is {}, this \
                         worker's is {v:?}; give this job another --name",
                        info.run_id,
                        old.map_or("not set".into(), |o| format!("{o:?}"))
                    ),
                }
            }
            return Ok(Run::open(info));
        }
        let run = self.create_run(exp, name)?;
        // No one process owns it: without owner tags it is never shown as crashed because the
        // worker that happened to create it has ended.
        for tag in [TAG_PID, TAG_START, TAG_HOST] {
            let _ = std::fs::remove_file(run.info.dir.join("tags").join(tag));
        }
        for (k, v) in params {
            run.log_param(k, v)?;
        }
        run.set_tag(kind_tag, "parent")?;
        for (k, v) in tags {
            run.set_tag(k, v)?;
        }
        Ok(run)
    }

    /// The active children of `parent` whose tag `index_tag` is set, with its value.
    pub fn children_by(&self, parent: &RunInfo, index_tag: &str) -> Result<Vec<(String, RunInfo)>> {
        let mut out = Vec::new();
        for r in self.runs()? {
            let tags = read_tags(&r)?;
            if tags.get(PARENT_RUN_TAG) != Some(&parent.run_id) {
                continue;
            }
            if let Some(v) = tags.get(index_tag) {
                out.push((v.clone(), r));
            }
        }
        Ok(out)
    }

    /// Soft-deletes `parent`'s children tagged `index_tag = value`, so that a worker running
    /// that index again replaces its child. A child whose process is still alive is refused:
    /// two workers on one index.
    pub fn replace_child(&self, parent: &RunInfo, index_tag: &str, value: &str) -> Result<()> {
        for (v, child) in self.children_by(parent, index_tag)? {
            if v != value {
                continue;
            }
            if child.status == RunStatus::Running && child.owner() == Owner::Alive {
                bail!(
                    "{index_tag} {value} of {} is already running as run {} ({}); wait for it \
                     or stop it first",
                    parent.run_name,
                    child.run_name,
                    child.run_id
                );
            }
            super::update_run_meta(&child.dir, |meta| {
                meta.insert(
                    "lifecycle_stage".into(),
                    super::Lifecycle::Deleted.as_str().into(),
                );
                meta.insert(
                    "deleted_time".into(),
                    crate::util::fsutil::now_ms().to_string(),
                );
            })?;
            eprintln!(
                "replacing run {} ({}, {}) of {}",
                child.run_name,
                child.run_id,
                child.status.as_str(),
                parent.run_name
            );
        }
        Ok(())
    }
}

/// Holds `parent`'s artifacts folder locked while a worker checks whether the job is complete
/// and writes the parent's summary, so that two workers ending together summarise it once.
/// (Not the run's own folder: meta.yaml's writes lock that one.)
pub fn lock_parent(parent: &RunInfo) -> Result<std::fs::File> {
    lock_dir(&parent.artifacts())
}

/// Re-reads `parent`'s meta.yaml (another worker may have ended it).
pub fn reread(parent: &RunInfo) -> Result<RunInfo> {
    super::read_run_meta(&parent.dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_share_one_parent_and_a_rerun_replaces_its_child() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::new(dir.path());
        let exp = store.experiment("t").unwrap();
        let params = [("sweep.spec", "lr=1,2".to_string())];
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (store, exp) = (store.clone(), exp.clone());
                let params = params.clone();
                std::thread::spawn(move || {
                    store
                        .shared_parent(&exp, "job", "flora.sweep", &params, &[])
                        .unwrap()
                        .info
                        .run_id
                })
            })
            .collect();
        let ids: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
        assert_eq!(store.runs().unwrap().len(), 1);
        let parent = store.find(&ids[0]).unwrap();
        assert_eq!(
            parent.owner(),
            Owner::Unknown,
            "a shared parent has no owner"
        );

        let other = [("sweep.spec", "lr=3".to_string())];
        let err = store
            .shared_parent(&exp, "job", "flora.sweep", &other, &[])
            .unwrap_err();
        assert!(format!("{err:#}").contains("another --name"), "{err:#}");

        let child = |n: &str| {
            let c = store.create_run(&exp, n).unwrap();
            c.set_tag(PARENT_RUN_TAG, &parent.run_id).unwrap();
            c.set_tag("flora.sweep.trial", "1").unwrap();
            c
        };
        let mut first = child("job-1");
        // Still running in this (live) process: a second worker on index 1 is refused.
        let err = store
            .replace_child(&parent, "flora.sweep.trial", "1")
            .unwrap_err();
        assert!(format!("{err:#}").contains("already running"), "{err:#}");
        first.end(RunStatus::Failed).unwrap();
        store
            .replace_child(&parent, "flora.sweep.trial", "1")
            .unwrap();
        let mut second = child("job-1");
        second.end(RunStatus::Finished).unwrap();
        let children = store.children_by(&parent, "flora.sweep.trial").unwrap();
        assert_eq!(children.len(), 1);
        assert_eq!(children[0].1.run_id, second.info.run_id);
        assert!(store.find_any(&first.info.run_id).unwrap().is_deleted());
    }
}
