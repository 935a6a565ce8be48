//! Private working directories: each job runs in a fresh directory (mode 0700, owned by the job's user)
//! that is removed when the job ends, unless its catalog entry names a `cwd`.
//!
//! Directories live under `<work_root>/<instance>/`, one instance per server process. The server holds an
//! exclusive `flock` on `<work_root>/<instance>.lock` for as long as it lives (the lock file is made and
//! locked before the directory exists), so at start-up a server removes exactly the instances whose lock it
//! can take: those of servers that are gone, whatever their binary was called and however many servers (PID 1
//! of different containers, say) share the volume. A directory without a lock file is never removed.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::leftovers::lock_exclusive;

/// The server's directory of job working directories.
#[derive(Debug)]
pub(crate) struct WorkRoot {
    dir: PathBuf,
    lock_file: PathBuf,
    /// Our exclusive lock, held until the process ends.
    _lock: OwnedFd,
}

impl WorkRoot {
    /// Removes the instances of servers that are gone, then makes and locks this server's own, `instance`.
    pub(crate) fn prepare(base: &Path, instance: &str) -> io::Result<WorkRoot> {
        if !base.exists() {
            std::fs::create_dir_all(base)?;
            // Made here, whatever the umask: jobs running as other users pass through it to their directories.
            std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o711))?;
        }
        for entry in std::fs::read_dir(base)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(dead) = name.strip_suffix(".lock") else { continue };
            if dead == instance {
                continue;
            }
            match lock_exclusive(&entry.path(), false) {
                Ok(Some(_held)) => {
                    let dir = base.join(dead);
                    match std::fs::remove_dir_all(&dir) {
                        Ok(()) => info!(path = %dir.display(), "removed working directories left by a crashed server"),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            warn!(path = %dir.display(), error = %e, "cannot remove leftover working directories");
                            continue;
                        }
                    }
                    // Still holding the lock: nobody can have taken this instance meanwhile.
                    let _ = std::fs::remove_file(entry.path());
                }
                Ok(None) => {}
                Err(e) => warn!(path = %entry.path().display(), error = %e, "cannot check a server's lock"),
            }
        }
        // Locked under a name no other server looks at, then renamed: the lock file appears already locked.
        let lock_file = base.join(format!("{instance}.lock"));
        let making = base.join(format!(".{instance}.making"));
        let held = lock_exclusive(&making, true)?
            .ok_or_else(|| io::Error::other(format!("{} is locked by another server", making.display())))?;
        std::fs::rename(&making, &lock_file)?;
        let dir = base.join(instance);
        std::fs::DirBuilder::new().mode(0o711).create(&dir)?;
        // Whatever the umask: jobs running as other users must traverse it to reach their own directories.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
        Ok(WorkRoot { dir, lock_file, _lock: held })
    }

    /// This server's own directory of job directories.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates a job's private directory, owned by `owner` (uid, gid) when given.
    pub(crate) fn create(&self, job_id: &str, owner: Option<(u32, u32)>) -> io::Result<PathBuf> {
        let dir = self.dir.join(job_id);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        Ok(dir)
    }

    /// Removes this server's (empty) directory and its lock file, at a clean exit.
    pub(crate) fn remove(&self) {
        if std::fs::remove_dir(&self.dir).is_ok() {
            let _ = std::fs::remove_file(&self.lock_file);
        }
    }
}
