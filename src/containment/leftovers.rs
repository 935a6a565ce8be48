//! What a crashed server leaves behind, and how a live one is told from a dead one.
//!
//! Every server process holds an exclusive `flock` for as long as it lives: on its instance cgroup
//! (`<cgroup root>/instance-<pid>-<nonce>`) and on `<work_root>/<instance>.lock`. At start-up, whatever a
//! server can lock is a dead server's: its cgroups are killed and removed, its working directories removed.
//! The kernel answers "is that server alive?", not a pid or a process name, so a renamed binary or two PID-1
//! servers of different containers sharing a volume never clean each other's live jobs.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{FlockOperation, Mode, OFlags};
use tracing::{info, warn};

use super::cgroup::{CgroupTree, JobCgroup};

/// Opens `path` (a directory, or a lock file created if `create`) and takes an exclusive `flock` on it
/// without waiting; `None` if another process holds it.
pub(crate) fn lock_exclusive(path: &Path, create: bool) -> io::Result<Option<OwnedFd>> {
    let flags = if create {
        OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC
    } else if path.is_dir() {
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
    } else {
        OFlags::RDWR | OFlags::CLOEXEC
    };
    let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(0o600))?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(fd)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether the open `fd` is the file now at `path` (not one removed and made again meanwhile).
pub(crate) fn same_file(fd: &OwnedFd, path: &Path) -> bool {
    match (rustix::fs::fstat(fd), rustix::fs::stat(path)) {
        (Ok(open), Ok(now)) => open.st_dev == now.st_dev && open.st_ino == now.st_ino,
        _ => false,
    }
}

impl CgroupTree {
    /// Kills and removes the instances of servers that are gone (a crash): those whose lock can be taken.
    /// Returns how many job cgroups were cleaned.
    pub(super) async fn clean_leftovers(&self) -> usize {
        let mut cleaned = 0;
        let Ok(entries) = std::fs::read_dir(&self.root) else { return 0 };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("instance-") || name == self.instance_name {
                continue;
            }
            // Held while cleaning, so two servers starting together do not both clean it.
            let _lock = match lock_exclusive(&entry.path(), false) {
                Ok(Some(lock)) => lock,
                Ok(None) => continue,
                Err(e) => {
                    warn!(instance = %entry.path().display(), error = %e, "cannot check a server's instance");
                    continue;
                }
            };
            let instance = JobCgroup::at(name.clone(), entry.path());
            let emptied = instance.kill_and_wait(Duration::from_secs(5)).await;
            let jobs: Vec<PathBuf> = std::fs::read_dir(entry.path())
                .map(|d| d.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()).collect())
                .unwrap_or_default();
            for job in &jobs {
                match std::fs::remove_dir(job) {
                    Ok(()) => {
                        info!(cgroup = %job.display(), emptied, "removed a job cgroup left by a crashed server");
                        cleaned += 1;
                    }
                    Err(e) => warn!(cgroup = %job.display(), error = %e, "cannot remove a leftover job cgroup"),
                }
            }
            let _ = std::fs::remove_dir(entry.path());
        }
        // v1 instances (hybrid hosts) of servers that are gone: those whose lock can be taken. The v1 hierarchies
        // are shared by servers whose v2 roots differ, so their own lock decides, never the v2 tree.
        for (_, root) in &self.v1 {
            let Ok(entries) = std::fs::read_dir(root) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.starts_with("instance-") || name == self.instance_name {
                    continue;
                }
                let Ok(Some(_held)) = lock_exclusive(&entry.path(), false) else { continue };
                if let Ok(jobs) = std::fs::read_dir(entry.path()) {
                    for job in jobs.flatten().filter(|j| j.path().is_dir()) {
                        let _ = std::fs::remove_dir(job.path());
                    }
                }
                let _ = std::fs::remove_dir(entry.path());
            }
        }
        cleaned
    }
}
