//! Who owns a run: the `flora.owner.*` tags, CRASHED detection, and folder locks.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::{Run, RunInfo, read_tags};

/// The owner process of a run, as far as this machine can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Alive,
    /// No such process, or the pid now belongs to a process started at another time.
    Gone,
    /// No owner recorded, another host, or no `/proc` to look in.
    Unknown,
}

/// Tag holding the pid of the process that runs a run.
pub const TAG_PID: &str = "flora.owner.pid";
/// Tag holding that process's start time (`/proc/<pid>/stat` field 22, clock ticks after boot).
pub const TAG_START: &str = "flora.owner.start_time";
/// Tag holding the host name the run runs on.
pub const TAG_HOST: &str = "flora.owner.host";

/// A live process's start time from `/proc/<pid>/stat`: None when there is no such process,
/// or when it has exited and waits to be reaped (a zombie, state `Z`, or dead, `X`).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    start_time_of_live(&stat)
}

/// Field 22 (start time) of a `/proc/<pid>/stat` line, unless field 3 (state) says the
/// process has exited.
fn start_time_of_live(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// This machine's host name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

impl RunInfo {
    /// Whether the process that owns this run is alive, from its `flora.owner.*` tags.
    pub fn owner(&self) -> Owner {
        let tags = read_tags(self).unwrap_or_default();
        let Some(pid) = tags.get(TAG_PID).and_then(|p| p.trim().parse::<u32>().ok()) else {
            return Owner::Unknown;
        };
        if tags.get(TAG_HOST).map(|h| h.trim()) != Some(host_name().as_str()) {
            return Owner::Unknown;
        }
        if !Path::new("/proc/self/stat").exists() {
            return Owner::Unknown;
        }
        let recorded = tags
            .get(TAG_START)
            .and_then(|t| t.trim().parse::<u64>().ok());
        match (process_start_time(pid), recorded) {
            (None, _) => Owner::Gone,
            (Some(now), Some(then)) if now != then => Owner::Gone, // the pid was reused
            _ => Owner::Alive,
        }
    }
}

impl RunInfo {
    /// The pid recorded as the run's owner, as text for messages (`?` when none is).
    pub fn owner_pid(&self) -> String {
        read_tags(self)
            .ok()
            .and_then(|t| t.get(TAG_PID).map(|p| p.trim().to_string()))
            .unwrap_or_else(|| "?".into())
    }
}

impl Run {
    /// Records this process as the run's owner (the `flora.owner.*` tags).
    pub(super) fn set_owner(&self) -> Result<()> {
        let me = std::process::id();
        self.set_tag(TAG_PID, &me.to_string())?;
        if let Some(t) = process_start_time(me) {
            self.set_tag(TAG_START, &t.to_string())?;
        }
        self.set_tag(TAG_HOST, &host_name())
    }
}

/// Takes an exclusive lock (`flock`) on the folder `dir` itself, waiting up to 30 s for
/// another flora process to finish its write.
pub(crate) fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let file = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let start = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock)
                if start.elapsed() < std::time::Duration::from_secs(30) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "{} stayed locked by another flora process for 30 s; try again when it has finished",
                dir.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", dir.display()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::store::RunStore;

    #[test]
    fn owner_is_alive_only_with_the_same_pid_start_time_and_host() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::new(dir.path());
        let exp = store.experiment("t").unwrap();
        let run = store.create_run(&exp, "r").unwrap();
        assert_eq!(run.info.owner(), Owner::Alive);
        assert_eq!(run.info.status_label(), "RUNNING");
        // The same pid, started at another time: a reused pid.
        run.set_tag(TAG_START, "1").unwrap();
        assert_eq!(run.info.owner(), Owner::Gone);
        assert_eq!(run.info.status_label(), "CRASHED");
        // A pid no process has.
        run.set_tag(TAG_PID, &(i32::MAX as u32).to_string())
            .unwrap();
        assert_eq!(run.info.owner(), Owner::Gone);
        // Another machine: cannot tell.
        run.set_tag(TAG_HOST, "elsewhere.invalid").unwrap();
        assert_eq!(run.info.owner(), Owner::Unknown);
        assert_eq!(run.info.status_label(), "RUNNING");
    }

    #[test]
    fn a_zombie_is_not_alive() {
        let line = |state: &str| {
            format!("42 (a (b) c) {state} 1 1 1 0 -1 4194304 1 0 0 0 5 3 0 0 20 0 1 0 777 9 9")
        };
        assert_eq!(start_time_of_live(&line("S")), Some(777));
        assert_eq!(start_time_of_live(&line("R")), Some(777));
        assert_eq!(start_time_of_live(&line("Z")), None);
        assert_eq!(start_time_of_live(&line("X")), None);
        // A real zombie: a child that exited and is not reaped yet.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z "))
        {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(process_start_time(pid), None);
        child.wait().unwrap();
        assert!(process_start_time(std::process::id()).is_some());
    }
}
