//! Private working directories: each job runs in a fresh directory (mode 0700, owned by the job's user)
//! that is removed when the job ends, unless its catalog entry names a `cwd`. Directories live under
//! `<work_root>/<server pid>/`; at start-up the server removes those of servers that are gone (a crash).

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

/// The server's directory of job working directories.
#[derive(Debug, Clone)]
pub struct WorkRoot {
    dir: PathBuf,
}

impl WorkRoot {
    /// Prepares `<base>/<own pid>/`, first removing directories of servers that are gone.
    pub fn prepare(base: &Path) -> io::Result<WorkRoot> {
        std::fs::create_dir_all(base)?;
        let own = std::process::id();
        for entry in std::fs::read_dir(base)?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if pid == own || !i32::try_from(pid).is_ok_and(crate::containment::is_live_server) {
                match std::fs::remove_dir_all(entry.path()) {
                    Ok(()) => {
                        info!(path = %entry.path().display(), "removed working directories left by a crashed server")
                    }
                    Err(e) => {
                        warn!(path = %entry.path().display(), error = %e, "cannot remove leftover working directories")
                    }
                }
            }
        }
        let dir = base.join(own.to_string());
        std::fs::DirBuilder::new().mode(0o711).create(&dir)?;
        Ok(WorkRoot { dir })
    }

    /// Creates a job's private directory, owned by `owner` (uid, gid) when given.
    pub fn create(&self, job_id: &str, owner: Option<(u32, u32)>) -> io::Result<PathBuf> {
        let dir = self.dir.join(job_id);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        Ok(dir)
    }
}
