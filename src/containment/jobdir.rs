//! Files in and out of a job's private directory, and never anywhere else, even with the server running as
//! root and the job free to plant symlinks, FIFOs, hard links and mounts in its directory.
//!
//! Every path is walked from the directory's fd one component at a time, each directory opened with
//! `O_NOFOLLOW | O_DIRECTORY` and checked to be on the job directory's own filesystem: a symlink anywhere on
//! the path is refused, never followed, and no other filesystem mounted inside leads out. This is what
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` does, on every kernel, plus a device check (a bind mount of
//! the same filesystem is not told apart; making one needs `CAP_SYS_ADMIN`, which a contained job should not
//! have). Paths are checked by [`crate::config::files::check_path`] first (relative, no `..`).
//!
//! An output is read only if it is a regular file with a single link, on that filesystem: it is looked at
//! with `fstatat(AT_SYMLINK_NOFOLLOW)` before anything opens it (opening a FIFO could hang, a device could act),
//! then opened `O_NOFOLLOW | O_NONBLOCK` and checked again to be the same inode. A hard link is refused
//! because it may be a file from outside the directory (`ln /etc/shadow out`, for a job running as root).

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{self as fs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Most directory entries [`JobDir::list`] returns (a job that makes millions of files gets its patterns
/// matched against the first ones, and a warning in the log).
pub(crate) const MAX_LISTED: usize = 20_000;

/// A job's private directory, open.
#[derive(Debug)]
pub(crate) struct JobDir {
    root: OwnedFd,
    dev: u64,
    owner: Option<(u32, u32)>,
}

/// What is at an output path.
#[derive(Debug)]
pub(crate) enum Found {
    /// A regular file with one link, open for reading.
    File {
        /// The file.
        file: File,
        /// Its size.
        size: u64,
        /// Its permission bits.
        mode: u32,
    },
    /// Nothing.
    Missing,
    /// Something that is not read: a directory, a device, a FIFO, a socket, a symlink (or a path through one),
    /// a hard link, another filesystem.
    NotRegular {
        /// Its size, as `fstatat` says (0 where that means nothing).
        size: u64,
    },
}

/// One entry [`JobDir::list`] met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Relative to the job's directory.
    pub(crate) path: String,
    /// A directory (walked, never itself an output of a pattern).
    pub(crate) dir: bool,
}

/// How a walk down a path ended early.
enum Walk {
    Missing,
    NotDirectory,
    Failed(io::Error),
}

impl From<Errno> for Walk {
    fn from(e: Errno) -> Self {
        match e {
            Errno::NOENT => Walk::Missing,
            // A symlink (O_NOFOLLOW), or not a directory.
            Errno::LOOP | Errno::NOTDIR => Walk::NotDirectory,
            e => Walk::Failed(e.into()),
        }
    }
}

impl JobDir {
    /// Opens the job's directory `dir`; files created in it belong to `owner` (the job's user).
    pub(crate) fn open(dir: &Path, owner: Option<(u32, u32)>) -> io::Result<JobDir> {
        let root =
            fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?;
        let dev = fs::fstat(&root)?.st_dev;
        Ok(JobDir { root, dev, owner })
    }

    /// Opens the directory `dirs` below the root, creating what is missing (mode 0755, the job's user's) if
    /// `create`.
    fn walk(&self, dirs: &[&str], create: bool) -> Result<Option<OwnedFd>, Walk> {
        let mut current: Option<OwnedFd> = None;
        for name in dirs {
            let parent = current.as_ref().unwrap_or(&self.root);
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let opened = match fs::openat(parent, *name, flags, Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    match fs::mkdirat(parent, *name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(Walk::Failed(e.into())),
                    }
                    let dir = fs::openat(parent, *name, flags, Mode::empty())?;
                    if let Some((uid, gid)) = self.owner {
                        fs::fchown(&dir, Some(fs::Uid::from_raw(uid)), Some(fs::Gid::from_raw(gid)))
                            .map_err(|e| Walk::Failed(e.into()))?;
                    }
                    dir
                }
                other => other?,
            };
            if fs::fstat(&opened).map_err(|e| Walk::Failed(e.into()))?.st_dev != self.dev {
                return Err(Walk::NotDirectory);
            }
            current = Some(opened);
        }
        Ok(current)
    }

    /// Creates the file `path` (its directories too) with permission bits `mode`, owned by the job's user, for
    /// writing. A path through a symlink or a non-directory is an error; so is an existing file, unless
    /// `replace` (then a regular file is truncated; a symlink in its place is still refused).
    pub(crate) fn create(&self, path: &str, mode: u32, replace: bool) -> io::Result<File> {
        let (dirs, name) = split(path);
        let dir = match self.walk(&dirs, true) {
            Ok(dir) => dir,
            Err(Walk::Failed(e)) => return Err(e),
            Err(Walk::Missing | Walk::NotDirectory) => {
                return Err(io::Error::new(io::ErrorKind::NotADirectory, format!("a directory of {path} is not one")));
            }
        };
        let parent = dir.as_ref().unwrap_or(&self.root);
        let exclusive = if replace { OFlags::TRUNC } else { OFlags::EXCL };
        let flags = OFlags::WRONLY | OFlags::CREATE | exclusive | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let file = fs::openat(parent, name, flags, Mode::from_raw_mode(0o600))?;
        // The job's first (chown clears set-id bits), then exactly these bits, whatever the umask.
        if let Some((uid, gid)) = self.owner {
            fs::fchown(&file, Some(fs::Uid::from_raw(uid)), Some(fs::Gid::from_raw(gid)))?;
        }
        fs::fchmod(&file, Mode::from_raw_mode(mode & 0o7777))?;
        Ok(File::from(file))
    }

    /// What is at `path`, opened for reading only if it is a regular file (see the module docs).
    pub(crate) fn open_output(&self, path: &str) -> io::Result<Found> {
        let (dirs, name) = split(path);
        let dir = match self.walk(&dirs, false) {
            Ok(dir) => dir,
            Err(Walk::Missing) => return Ok(Found::Missing),
            Err(Walk::NotDirectory) => return Ok(Found::NotRegular { size: 0 }),
            Err(Walk::Failed(e)) => return Err(e),
        };
        let parent = dir.as_ref().unwrap_or(&self.root);
        let stat = match fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => return Ok(Found::Missing),
            Err(e) => return Err(e.into()),
        };
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        let regular = |stat: &fs::Stat| {
            FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
                && stat.st_nlink == 1
                && stat.st_dev == self.dev
        };
        if !regular(&stat) {
            return Ok(Found::NotRegular { size });
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let file = match fs::openat(parent, name, flags, Mode::empty()) {
            Ok(file) => file,
            Err(Errno::NOENT) => return Ok(Found::Missing),
            Err(Errno::LOOP | Errno::NXIO) => return Ok(Found::NotRegular { size }),
            Err(e) => return Err(e.into()),
        };
        // Replaced between the look and the open: judge what was opened.
        let opened = fs::fstat(&file)?;
        if !regular(&opened) || opened.st_ino != stat.st_ino {
            return Ok(Found::NotRegular { size: u64::try_from(opened.st_size).unwrap_or(0) });
        }
        let size = u64::try_from(opened.st_size).unwrap_or(0);
        Ok(Found::File { file: File::from(file), size, mode: opened.st_mode & 0o7777 })
    }

    /// Every entry below the directory (at most [`MAX_LISTED`], each path at most `max_path` bytes: longer ones
    /// cannot be requested), in path order, without following a symlink or leaving the filesystem. Each
    /// directory is reached by a fresh walk from the root, so a deep tree holds no fd per level and no stack.
    /// Names that are not UTF-8 cannot be requested either, and are skipped. Returns whether it stopped at
    /// [`MAX_LISTED`].
    pub(crate) fn list(&self, max_path: usize) -> io::Result<(Vec<Entry>, bool)> {
        let mut out = Vec::new();
        let mut pending = vec![String::new()];
        while let Some(prefix) = pending.pop() {
            let dirs: Vec<&str> = if prefix.is_empty() { Vec::new() } else { prefix.split('/').collect() };
            let walked = match self.walk(&dirs, false) {
                Ok(walked) => walked,
                // Replaced meanwhile by something else: not a directory to walk.
                Err(Walk::Missing | Walk::NotDirectory) => continue,
                Err(Walk::Failed(e)) => return Err(e),
            };
            let dir = walked.as_ref().unwrap_or(&self.root);
            for entry in fs::Dir::read_from(dir)? {
                let entry = entry?;
                let Ok(name) = entry.file_name().to_str() else { continue };
                if name == "." || name == ".." {
                    continue;
                }
                let path = if prefix.is_empty() { name.to_string() } else { format!("{prefix}/{name}") };
                if path.len() > max_path {
                    continue;
                }
                if out.len() >= MAX_LISTED {
                    out.sort_by(|a: &Entry, b: &Entry| a.path.cmp(&b.path));
                    return Ok((out, true));
                }
                let kind = match entry.file_type() {
                    FileType::Unknown => match fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(stat) => FileType::from_raw_mode(stat.st_mode),
                        Err(_) => continue,
                    },
                    kind => kind,
                };
                let is_dir = kind == FileType::Directory;
                if is_dir {
                    pending.push(path.clone());
                }
                out.push(Entry { path, dir: is_dir });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((out, false))
    }
}

/// `a/b/c` → (`[a, b]`, `c`).
fn split(path: &str) -> (Vec<&str>, &str) {
    let mut parts: Vec<&str> = path.split('/').collect();
    let name = parts.pop().unwrap_or_default();
    (parts, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("forkpool-jobdir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn creates_nested_files_and_refuses_every_way_out() {
        let base = scratch("paths");
        let dir = JobDir::open(&base, None).expect("open");
        use std::io::Write;
        dir.create("a/b/c.txt", 0o640, false).expect("create").write_all(b"hi").expect("write");
        assert!(matches!(dir.open_output("a/b/c.txt").expect("look"), Found::File { size: 2, mode: 0o640, .. }));
        assert!(dir.create("a/b/c.txt", 0o644, false).is_err(), "an existing file was overwritten");
        assert!(dir.create("a/b/c.txt", 0o644, true).is_ok(), "replace refused");
        std::os::unix::fs::symlink("/etc", base.join("etc")).expect("symlink");
        std::os::unix::fs::symlink("/etc/passwd", base.join("passwd")).expect("symlink");
        assert!(dir.create("etc/x", 0o644, false).is_err(), "created through a symlink");
        assert!(dir.create("passwd", 0o644, true).is_err(), "replaced a symlink's target");
        assert!(matches!(dir.open_output("etc/passwd").expect("look"), Found::NotRegular { .. }));
        assert!(matches!(dir.open_output("passwd").expect("look"), Found::NotRegular { .. }));
        assert!(matches!(dir.open_output("nope").expect("look"), Found::Missing));
        assert!(matches!(dir.open_output("a").expect("look"), Found::NotRegular { .. }));
        std::fs::write(base.join("one"), b"1").expect("write");
        std::fs::hard_link(base.join("one"), base.join("two")).expect("link");
        assert!(matches!(dir.open_output("two").expect("look"), Found::NotRegular { .. }));
        nix::unistd::mkfifo(&base.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("fifo");
        assert!(matches!(dir.open_output("fifo").expect("look"), Found::NotRegular { .. }));
        let listed: Vec<String> = dir.list(1024).expect("list").0.into_iter().map(|e| e.path).collect();
        assert_eq!(listed, ["a", "a/b", "a/b/c.txt", "etc", "fifo", "one", "passwd", "two"]);
        let _ = std::fs::remove_dir_all(&base);
    }
}
