//! Private working directories: each job runs in a fresh directory (mode 0700, owned by the job's user)
//! that is removed when the job ends, unless its catalog entry names a `cwd`.
//!
//! Directories live under `<work_root>/<instance>/`, one instance per server process. The server holds an
//! exclusive `flock` on `<work_root>/<instance>.lock` for as long as it lives (the lock file is made and
//! locked before the directory exists), so at start-up a server removes exactly the instances whose lock it
//! can take: those of servers that are gone, whatever their binary was called and however many servers (PID 1
//! of different containers, say) share the volume. A directory without a lock file is never removed.
//!
//! A job that leaves its directory empty and as it was made may leave it for the next job instead of to `rmdir`
//! (renamed to `.spare-N` in the instance; the next job's is renamed from it and given its owner and mode):
//! making a directory allocates an inode, which on some file systems costs far more than the few calls that
//! check and rename one (on this project's CI machine, ext4 without a journal, each allocation scans past every
//! inode freed in the last seconds: a third of the server's CPU at saturation; see BENCHMARKS.md). Only where
//! the job could not have handed an open fd of it to anyone (see `Containment::reusable`: a view into the next
//! job's directory), and only once every process of the job is gone. It is first made the server's, mode
//! 0700 (nobody else can add to it from then on), then checked: "as it was made" is no entry, no extended
//! attribute (so no ACL), the same size, inode flags and `fsxattr` (project, flags) as a new one: anything a
//! job could set on its own directory that would outlive a `chmod`/`chown`. Any other is removed as before.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{info, warn};

use super::leftovers::lock_exclusive;

/// The server's directory of job working directories.
#[derive(Debug)]
pub(crate) struct WorkRoot {
    dir: PathBuf,
    lock_file: PathBuf,
    /// Our exclusive lock, held until the process ends.
    _lock: OwnedFd,
    /// Emptied job directories, ready for the next jobs.
    spares: Mutex<Vec<PathBuf>>,
    /// Names the next spare.
    spare_seq: AtomicU64,
    /// What a new directory's attributes are here (see [`attributes`]); `None` where they cannot be read
    /// (then no directory is reused).
    fresh: Option<Attributes>,
}

/// Most spare directories kept.
const SPARES: usize = 32;

/// `FS_IOC_GETFLAGS` (`_IOR('f', 1, long)`) and `FS_IOC_FSGETXATTR` (`_IOR('X', 31, struct fsxattr)`).
const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;

/// A directory's inode flags and `struct fsxattr` (28 bytes), as the two ioctls give them (an error as its
/// errno, so that a file system without them compares equal to itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Attributes {
    /// The directory's size (a directory that once held many entries keeps its blocks on ext4).
    size: u64,
    flags: Result<libc::c_long, i32>,
    fsxattr: Result<[u8; 28], i32>,
}

/// The attributes of the open directory `dir`, if it has no extended attribute (`None` if it has, or they
/// cannot be listed).
fn attributes(dir: &std::fs::File) -> Option<Attributes> {
    let fd = dir.as_raw_fd();
    // SAFETY: `fd` is open for the calls; a null buffer of size 0 asks only for the list's size; the ioctls
    // write into locals of the size their numbers say.
    unsafe {
        if libc::flistxattr(fd, std::ptr::null_mut(), 0) != 0 {
            return None;
        }
        let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
        let mut flags: libc::c_long = 0;
        let flags = if libc::ioctl(fd, FS_IOC_GETFLAGS, &mut flags) == 0 { Ok(flags) } else { Err(errno()) };
        let mut fsxattr = [0u8; 28];
        let fsxattr =
            if libc::ioctl(fd, FS_IOC_FSGETXATTR, fsxattr.as_mut_ptr()) == 0 { Ok(fsxattr) } else { Err(errno()) };
        let size = dir.metadata().ok()?.len();
        Some(Attributes { size, flags, fsxattr })
    }
}

/// Whether the open directory `dir` has no entry (one that cannot be read is not).
fn is_empty(dir: &std::fs::File) -> bool {
    let Ok(fd) = dir.try_clone() else { return false };
    nix::dir::Dir::from_fd(fd.into())
        .is_ok_and(|mut d| d.iter().all(|e| e.is_ok_and(|e| matches!(e.file_name().to_bytes(), b"." | b".."))))
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
        // What a new job directory looks like here.
        let probe = dir.join(".probe");
        std::fs::DirBuilder::new().mode(0o700).create(&probe)?;
        let fresh = std::fs::File::open(&probe).ok().and_then(|d| attributes(&d));
        std::fs::remove_dir(&probe)?;
        Ok(WorkRoot { dir, lock_file, _lock: held, spares: Mutex::default(), spare_seq: AtomicU64::new(0), fresh })
    }

    fn spares(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        // A panic while holding the lock leaves a valid list.
        self.spares.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// This server's own directory of job directories.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates a job's private directory, owned by `owner` (uid, gid) when given (else by the server's user):
    /// a spare one renamed, or a new one.
    pub(crate) fn create(&self, job_id: &str, owner: Option<(u32, u32)>) -> io::Result<PathBuf> {
        let dir = self.dir.join(job_id);
        let spare = self.spares().pop();
        let reused = spare.is_some_and(|spare| match std::fs::rename(&spare, &dir) {
            Ok(()) => true,
            Err(_) => {
                let _ = std::fs::remove_dir(&spare);
                false
            }
        });
        if !reused {
            std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        }
        // (A new directory is the server's already; a spare one too, since it was recycled.)
        let made = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .and_then(|()| owner.map_or(Ok(()), |(uid, gid)| std::os::unix::fs::chown(&dir, Some(uid), Some(gid))));
        match made {
            Ok(()) => Ok(dir),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// Keeps a finished job's directory (`dir`, made by [`WorkRoot::create`]; nothing of the job runs any
    /// more) for another job if it is empty and as it was made; returns whether it did (else the caller
    /// removes it).
    pub(crate) fn recycle(&self, dir: &Path) -> bool {
        if self.fresh.is_none() || self.spares().len() >= SPARES || dir.parent() != Some(self.dir.as_path()) {
            return false;
        }
        let Ok(open) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir)
        else {
            return false;
        };
        // The server's from now on, so that nobody can add to it; then checked.
        let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        if nix::unistd::fchown(&open, Some(uid), Some(gid)).is_err()
            || nix::sys::stat::fchmod(&open, nix::sys::stat::Mode::from_bits_truncate(0o700)).is_err()
            || !is_empty(&open)
            || attributes(&open) != self.fresh
        {
            return false;
        }
        // Its times would tell when the last job last changed it.
        // SAFETY: `open` is an open fd; a null `times` sets both to now.
        unsafe { libc::futimens(open.as_raw_fd(), std::ptr::null()) };
        drop(open);
        let spare = self.dir.join(format!(".spare-{}", self.spare_seq.fetch_add(1, Ordering::Relaxed)));
        if std::fs::rename(dir, &spare).is_err() {
            return false;
        }
        // (Kept even if the pool filled meanwhile: it is removed with the others at exit.)
        self.spares().push(spare);
        true
    }

    /// Removes this server's (empty) directory and its lock file, at a clean exit.
    pub(crate) fn remove(&self) {
        for spare in std::mem::take(&mut *self.spares()) {
            let _ = std::fs::remove_dir(spare);
        }
        if std::fs::remove_dir(&self.dir).is_ok() {
            let _ = std::fs::remove_file(&self.lock_file);
        }
    }
}
