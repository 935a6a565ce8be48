//! Per-job cgroups: the strong containment mode.
//!
//! Process groups are not enough: a job that calls `setsid` or double-forks leaves its group. In cgroup mode
//! every job gets its own cgroup v2 directory, which the worker is born into (or joins between clone and
//! exec), so everything it ever starts is inside. Ending a job writes `cgroup.kill` (or freezes and SIGKILLs
//! on kernels without it), waits for `cgroup.events` to say `populated 0`, and removes the directory.
//!
//! The tree: `<root>/instance-<pid>-<nonce>/job-<job id>`. Each server process makes its own instance
//! cgroup and holds an exclusive `flock` on it for as long as it lives, so "is the server that made this
//! alive?" is answered by the kernel, whatever the binary is called and however many servers share the root
//! (two PID-1 servers of different containers have the same pid). The guardian kills the whole instance with
//! one write when the server dies; at start-up, instances whose lock can be taken are a dead server's: they
//! are killed and removed.
//!
//! Only cgroups inside the server's own are configured: in a delegated cgroup (systemd `Delegate=yes`, a
//! container) the parent's `cgroup.subtree_control` belongs to whoever delegated it.
//!
//! A job cgroup its job left empty (every process of it reaped, see [`crate::containment`]) is kept as a spare
//! for the next job or warm sandbox with the same limits, instead of an `rmdir` now and a `mkdir` then (with the
//! memory controller's per-cgroup state, and the hybrid hierarchies' directories, the largest part of the
//! server's CPU per job once everything else was reused). When it is taken again, its peak memory is reset (in
//! v2 through a file the job's cgroup keeps open: nothing is held by an idle spare); its next job's peak memory
//! and OOM kills are counted from there. The page cache its jobs brought in stays cached and charged to it, up
//! to a bound (see [`KEEP_CHARGED_AT_MOST`]): reclaiming it would evict, for instance, the job's program, to be
//! read from disk again by the next job. What a job can read of a cgroup through a file it kept open, it can
//! read of every job's by its path: the tree is readable to jobs.
//!
//! Limits use the v2 controllers enabled for the tree. On hybrid hosts (v2 mounted at
//! `/sys/fs/cgroup/unified`, controllers still bound to v1) the memory, pids and cpu limits use the v1
//! hierarchies instead, with a directory of the same name; membership, kill and emptiness stay v2.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{info, warn};

use super::leftovers::{lock_exclusive, same_file};
use crate::config::limits::Limits;

/// Emptied job cgroups kept for reuse, at most.
const SPARES: usize = 32;
/// A cgroup its jobs left with more memory charged than this (page cache they brought in, which stays cached)
/// is removed, not reused. So a job starts with at most this much charged before it, all of it reclaimable.
const KEEP_CHARGED_AT_MOST: u64 = 16 << 20;

/// The limit controllers forkpool uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    const ALL: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];

    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }
}

/// Where job cgroups live, and how limits are applied.
#[derive(Debug)]
pub(crate) struct CgroupTree {
    /// The v2 directory holding the servers' instance cgroups.
    pub(super) root: PathBuf,
    /// This server's instance cgroup: every job cgroup is inside.
    pub(super) instance: PathBuf,
    /// The instance's name, also used in the v1 hierarchies.
    pub(super) instance_name: String,
    /// The open instance directory with our exclusive `flock` on it: the proof that this server is alive.
    lock: Mutex<Vec<OwnedFd>>,
    /// The cgroups above the instance whose `subtree_control` this server may write (its own).
    configurable: Vec<PathBuf>,
    /// Controllers usable in job cgroups of the v2 tree.
    v2: BTreeSet<&'static str>,
    /// v1 hierarchies standing in for controllers the v2 tree lacks: (controller, directory holding the
    /// instances there).
    pub(super) v1: Vec<(Controller, PathBuf)>,
    /// Emptied job cgroups, for the next jobs with the same limits.
    spares: Mutex<Vec<JobCgroup>>,
    /// Job cgroups are reused (until the accounting of one cannot be reset: v2 before Linux 6.12).
    reuse: AtomicBool,
}

/// One job's cgroup.
#[derive(Debug)]
pub(crate) struct JobCgroup {
    pub(super) name: String,
    pub(super) v2: PathBuf,
    pub(super) v1: Vec<(Controller, PathBuf)>,
    /// The v2 memory controller is enabled for it (`memory.events`, `memory.peak`).
    pub(super) v2_memory: bool,
    /// What reuse needs (boxed: a job's future holds its cgroup, and every open call's task is as large as
    /// that future).
    reuse: Box<Reuse>,
}

/// A job cgroup's state for reuse.
#[derive(Debug, Default)]
struct Reuse {
    /// The limits it enforces: memory, processes, CPU.
    limits: (Option<u64>, Option<u64>, Option<f64>),
    /// What earlier jobs left counted in it (zero when new).
    base: Accounting,
    /// `cgroup.kill` was written to it: it is not reused. (Linux 6.18 at least SIGKILLs every process then
    /// created in such a cgroup with `CLONE_INTO_CGROUP`: `cgroup_post_fork` compares the target cgroup's kill
    /// count with the one read from the parent's cgroup.)
    killed: AtomicBool,
}

/// A reused cgroup's counters when its new job began: its memory charge (the cache its jobs left), its OOM kills
/// so far, and, in v2, the `memory.peak` file whose peak was reset (a reset holds for that open file only).
#[derive(Debug, Default)]
struct Accounting {
    memory: u64,
    oom_kills: u64,
    peak: Option<File>,
}

/// An OS error with the path it is about; the OS error stays reachable as the source (its errno decides
/// the gRPC code, see [`os_error`]).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub(crate) struct PathError {
    path: String,
    #[source]
    source: io::Error,
}

/// `error` with `path` for context, keeping its kind and errno.
pub(crate) fn at_path(path: &Path, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), PathError { path: path.display().to_string(), source: error })
}

/// The errno of `error`, or of the OS error it wraps.
pub(crate) fn os_error(error: &io::Error) -> Option<i32> {
    error.raw_os_error().or_else(|| error.get_ref()?.downcast_ref::<PathError>()?.source.raw_os_error())
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|e| at_path(path, e))
}

/// The limits a cgroup enforces (cgroups made for the same are the same).
fn cgroup_limits(limits: &Limits) -> (Option<u64>, Option<u64>, Option<f64>) {
    (limits.memory, limits.processes, limits.cpu)
}

/// The number in cgroup file `path`.
fn read_number(path: &Path) -> io::Result<u64> {
    let text = std::fs::read_to_string(path).map_err(|e| at_path(path, e))?;
    text.trim().parse().map_err(|_| io::Error::other(format!("{}: not a number: {text:?}", path.display())))
}

/// Makes `dir` (if a server starting beside us removed it) and locks it. Made, then locked: in between, that
/// server may take it for a dead one's and remove it, so the lock must be on the directory that is there now,
/// else it is made again.
fn hold(dir: &Path) -> io::Result<OwnedFd> {
    for _ in 0..20 {
        std::fs::create_dir_all(dir)?;
        if let Some(lock) = lock_exclusive(dir, false)?
            && same_file(&lock, dir)
        {
            return Ok(lock);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(io::Error::other(format!("cannot hold the lock of this server's own cgroup {}", dir.display())))
}

/// The mount point of the cgroup v2 hierarchy, and v1 mounts by controller, from `/proc/self/mountinfo`.
fn mounts() -> (Option<PathBuf>, Vec<(String, PathBuf)>) {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v2 = None;
    let mut v1 = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let Some(mount_point) = left.split_whitespace().nth(4) else { continue };
        let mut right = right.split_whitespace();
        match (right.next(), right.nth(1)) {
            (Some("cgroup2"), _) => v2 = v2.or(Some(PathBuf::from(mount_point))),
            (Some("cgroup"), Some(options)) => {
                for option in options.split(',') {
                    v1.push((option.to_string(), PathBuf::from(mount_point)));
                }
            }
            _ => {}
        }
    }
    (v2, v1)
}

/// This process's cgroup paths from `/proc/self/cgroup`: (controllers, path); v2 has empty controllers.
fn own_cgroups() -> Vec<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

/// Moves this whole process, and `companions` (the guardian), into cgroup `leaf` (created if needed).
fn move_into_leaf(leaf: &Path, companions: &[i32]) -> io::Result<()> {
    match std::fs::create_dir(leaf) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    for pid in companions.iter().copied().chain(std::iter::once(std::process::id() as i32)) {
        write(&leaf.join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(())
}

fn probe_writable(dir: &Path, server_pid: i32) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!("probe-{server_pid}"));
    let _ = std::fs::remove_dir(&probe);
    std::fs::create_dir(&probe)?;
    std::fs::remove_dir(&probe)
}

impl CgroupTree {
    /// Finds a writable cgroup v2 tree for job cgroups: `configured` if given, else `forkpool/` under this
    /// process's cgroup when that is the hierarchy root, else this process's (delegated) cgroup itself, after
    /// moving the server (and `companions`, the guardian) into its `server` leaf. Kills and removes the
    /// instances of dead servers there, then makes and locks this server's own instance.
    pub(crate) async fn discover(
        configured: Option<&Path>,
        companions: &[i32],
        instance: &str,
    ) -> Result<CgroupTree, String> {
        let server_pid = std::process::id() as i32;
        let (v2_mount, v1_mounts) = mounts();
        let own = own_cgroups();
        let (root, configurable) = match configured {
            // The operator's choice: its parent is theirs to configure.
            Some(root) => (root.to_path_buf(), vec![root.to_path_buf()]),
            None => {
                let mount = v2_mount.clone().ok_or("no cgroup v2 hierarchy is mounted")?;
                let path = own.iter().find(|(c, _)| c.is_empty()).map(|(_, p)| p.clone()).unwrap_or_default();
                let own_dir = mount.join(path.trim_start_matches('/'));
                if own_dir == mount {
                    // The server is in the hierarchy's root cgroup: that one is its own to configure.
                    (own_dir.join("forkpool"), vec![own_dir.clone(), own_dir.join("forkpool")])
                } else {
                    // A delegated cgroup (systemd `Delegate=yes`, a container): cgroup v2 lets a cgroup with
                    // processes enable no controllers for its children, so the server moves itself into a
                    // leaf first and its jobs get cgroups beside it.
                    if let Err(e) = move_into_leaf(&own_dir.join("server"), companions) {
                        warn!(error = %e, "cannot move the server into a leaf of its cgroup; jobs may get no limits");
                    }
                    (own_dir.clone(), vec![own_dir])
                }
            }
        };
        probe_writable(&root, server_pid).map_err(|e| format!("{} is not writable: {e}", root.display()))?;
        if !root.join("cgroup.procs").exists() {
            return Err(format!("{} is not a cgroup v2 directory", root.display()));
        }
        let mut v1 = Vec::new();
        let offered = enable_controllers(&configurable);
        for controller in Controller::ALL {
            if offered.contains(controller.name()) {
                continue;
            }
            let mount = v1_mounts.iter().find(|(option, _)| option == controller.name());
            let path = own.iter().find(|(cs, _)| cs.split(',').any(|c| c == controller.name()));
            if let (Some((_, mount)), Some((_, path))) = (mount, path) {
                let dir = mount.join(path.trim_start_matches('/')).join("forkpool");
                match probe_writable(&dir, server_pid) {
                    Ok(()) => v1.push((controller, dir)),
                    Err(e) => warn!(controller = controller.name(), error = %e, "v1 controller not usable"),
                }
            }
        }
        if !v1.is_empty() && !favors_dynamic_changes() {
            info!(
                mount = %v2_mount.as_deref().unwrap_or(Path::new("?")).display(),
                "hybrid cgroups: each job's worker joins the v1 hierarchies by a migration, which waits for an RCU \
                 grace period and holds up every fork on the machine meanwhile (about 1 % of job starts take \
                 10-30 ms more on a 2-CPU VM); mounting cgroup2 with favordynmods (mount -o \
                 remount,favordynmods MOUNT) removes that"
            );
        }
        let name = instance.to_string();
        let mut tree = CgroupTree {
            instance: root.join(&name),
            instance_name: name,
            root,
            lock: Mutex::new(Vec::new()),
            configurable,
            v2: BTreeSet::new(),
            v1,
            spares: Mutex::new(Vec::new()),
            reuse: AtomicBool::new(true),
        };
        let cleaned = tree.clean_leftovers().await;
        if cleaned > 0 {
            info!(cleaned, "removed job cgroups left by crashed servers");
        }
        tree.v2 = tree.make_instance().map_err(|e| format!("cannot make {}: {e}", tree.instance.display()))?;
        Ok(tree)
    }

    /// Makes (or makes again) the instance cgroup, locks it and enables the limit controllers in it; returns
    /// the controllers job cgroups get.
    fn make_instance(&self) -> io::Result<BTreeSet<&'static str>> {
        std::fs::create_dir_all(&self.instance)?;
        for (_, root) in &self.v1 {
            std::fs::create_dir_all(root.join(&self.instance_name))?;
        }
        // Each instance directory (v2, and v1 on hybrid hosts) is locked for as long as the server lives: a
        // starting server removes only what it can lock.
        // Made again (the tree was removed underneath): a lock still held on a directory still there is kept
        // (flock locks per open file: taking it again here would fail), the others are taken anew.
        let mut held = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = std::mem::take(&mut *held);
        let dirs =
            std::iter::once(self.instance.clone()).chain(self.v1.iter().map(|(_, r)| r.join(&self.instance_name)));
        for dir in dirs {
            let kept = previous.iter().position(|fd| same_file(fd, &dir));
            let lock = match kept {
                Some(i) => previous[i].try_clone()?,
                None => hold(&dir)?,
            };
            held.push(lock);
        }
        drop(held);
        let mut dirs = self.configurable.clone();
        dirs.push(self.instance.clone());
        Ok(enable_controllers(&dirs))
    }

    /// This server's instance cgroup, which the guardian kills if the server dies.
    pub(crate) fn instance(&self) -> &Path {
        &self.instance
    }

    /// This server's instance directories in the v1 hierarchies (hybrid hosts).
    pub(crate) fn v1_instances(&self) -> Vec<PathBuf> {
        self.v1.iter().map(|(_, root)| root.join(&self.instance_name)).collect()
    }

    /// One line for logs and `GetStatus`.
    pub(crate) fn describe(&self) -> String {
        let mut controllers: Vec<String> = self.v2.iter().map(|c| format!("{c} (v2)")).collect();
        controllers.extend(self.v1.iter().map(|(c, _)| format!("{} (v1)", c.name())));
        let controllers = if controllers.is_empty() { "none".to_string() } else { controllers.join(", ") };
        format!("cgroup v2 at {}; limit controllers: {controllers}", self.instance.display())
    }

    /// Whether memory limits are enforced by a cgroup (else `RLIMIT_AS`).
    pub(crate) fn enforces(&self, limit: &str) -> bool {
        self.v2.contains(limit) || self.v1.iter().any(|(c, _)| c.name() == limit)
    }

    /// A job's cgroup with its limits: a spare with the same limits if there is one, else a new one.
    pub(crate) fn create(&self, job_id: &str, limits: &Limits) -> io::Result<JobCgroup> {
        if let Some(spare) = self.take_spare(limits) {
            return Ok(spare);
        }
        let name = format!("job-{job_id}");
        let v2 = self.instance.join(&name);
        if let Err(e) = std::fs::create_dir(&v2) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
            // The tree was removed underneath the server: make it again (and lock it again), once.
            warn!(instance = %self.instance.display(), "the job cgroup tree is gone; recreating it");
            self.make_instance()?;
            std::fs::create_dir(&v2)?;
        }
        let mut cgroup = JobCgroup {
            name,
            v2,
            v1: Vec::new(),
            v2_memory: self.v2.contains("memory"),
            reuse: Box::new(Reuse { limits: cgroup_limits(limits), ..Reuse::default() }),
        };
        if cgroup.v2_memory {
            // Read through the same kind of open file as a reused cgroup's (so a live job cgroup holds one fd).
            cgroup.reuse.base.peak = File::open(cgroup.v2.join("memory.peak")).ok();
        }
        // From here on a failure removes what was made (Drop is not used: removal needs the job's end).
        let result = self.apply_limits(&mut cgroup, limits);
        if result.is_err() {
            let _ = cgroup.remove();
        }
        result.map(|()| cgroup)
    }

    fn apply_limits(&self, cgroup: &mut JobCgroup, limits: &Limits) -> io::Result<()> {
        let quota = limits.cpu.map(|cores| ((cores * 100_000.0) as u64).max(1000));
        for controller in Controller::ALL {
            let wanted = match controller {
                // Always, for the job's peak memory (`max_rss_bytes`), limited or not.
                Controller::Memory => true,
                Controller::Pids => limits.processes.is_some(),
                Controller::Cpu => quota.is_some(),
            };
            if !wanted {
                continue;
            }
            if self.v2.contains(controller.name()) {
                let dir = &cgroup.v2;
                match controller {
                    Controller::Memory => {
                        if let Some(bytes) = limits.memory {
                            write(&dir.join("memory.max"), &bytes.to_string())?;
                            // No swap: a job over its memory is OOM-killed, not slowed to a crawl.
                            let _ = write(&dir.join("memory.swap.max"), "0");
                        }
                    }
                    Controller::Pids => {
                        write(&dir.join("pids.max"), &limits.processes.unwrap_or_default().to_string())?
                    }
                    Controller::Cpu => write(&dir.join("cpu.max"), &format!("{} 100000", quota.unwrap_or_default()))?,
                }
            } else if let Some((_, root)) = self.v1.iter().find(|(c, _)| *c == controller) {
                let dir = root.join(&self.instance_name).join(&cgroup.name);
                if let Err(e) = std::fs::create_dir(&dir) {
                    if e.kind() != io::ErrorKind::NotFound {
                        return Err(e);
                    }
                    std::fs::create_dir_all(&dir)?;
                }
                cgroup.v1.push((controller, dir.clone()));
                match controller {
                    Controller::Memory => {
                        if let Some(bytes) = limits.memory {
                            let bytes = bytes.to_string();
                            write(&dir.join("memory.limit_in_bytes"), &bytes)?;
                            let memsw = dir.join("memory.memsw.limit_in_bytes");
                            if memsw.exists() {
                                let _ = write(&memsw, &bytes);
                            }
                        }
                    }
                    Controller::Pids => {
                        write(&dir.join("pids.max"), &limits.processes.unwrap_or_default().to_string())?
                    }
                    Controller::Cpu => {
                        write(&dir.join("cpu.cfs_period_us"), "100000")?;
                        write(&dir.join("cpu.cfs_quota_us"), &quota.unwrap_or_default().to_string())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The first kept spare with `limits` whose directory is still there (spares of a tree removed
    /// underneath the server are dropped), its accounting reset.
    fn take_spare(&self, limits: &Limits) -> Option<JobCgroup> {
        loop {
            // The oldest first: each spare in turn.
            let mut spare = {
                let mut spares = self.spares();
                let i = spares.iter().position(|c| c.reuse.limits == cgroup_limits(limits))?;
                spares.remove(i)
            };
            if !spare.v2.exists() {
                let _ = spare.remove();
                continue;
            }
            match spare.reset() {
                Ok(base) => {
                    spare.reuse.base = base;
                    return Some(spare);
                }
                Err(e) => {
                    // The kernel cannot reset a peak (v2 before Linux 6.12): no cgroup will be kept again.
                    if e.kind() == io::ErrorKind::Unsupported && self.reuse.swap(false, Ordering::Relaxed) {
                        let why = "job cgroups are not reused: their peak memory cannot be reset";
                        warn!(cgroup = spare.name, error = %e, "{why}");
                    }
                    let _ = spare.remove();
                }
            }
        }
    }

    fn spares(&self) -> std::sync::MutexGuard<'_, Vec<JobCgroup>> {
        // A panic while holding the lock leaves a valid list.
        self.spares.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `cgroup`, emptied (every process of its job reaped), for the next job with its limits. Returns it
    /// when it is not kept (it was killed through `cgroup.kill` or frozen from outside, or too much is left
    /// charged to it; or reuse is off, a spare's peak having failed to reset: v2 before Linux 6.12): the
    /// caller removes it.
    pub(crate) fn keep(&self, cgroup: JobCgroup) -> Option<JobCgroup> {
        if !self.reuse.load(Ordering::Relaxed) {
            return Some(cgroup);
        }
        if let Err(e) = cgroup.reusable() {
            tracing::debug!(cgroup = cgroup.name, error = %e, "a job cgroup is not reused");
            return Some(cgroup);
        }
        // An idle spare holds no open file.
        let mut cgroup = cgroup;
        cgroup.reuse.base = Accounting::default();
        let mut spares = self.spares();
        // Full (of spares with limits no job asked for since): the oldest goes instead.
        let oldest = (spares.len() >= SPARES).then(|| spares.remove(0));
        spares.push(cgroup);
        drop(spares);
        if let Some(oldest) = oldest
            && let Err(e) = oldest.remove()
        {
            warn!(cgroup = oldest.name, error = %e, "cannot remove a spare job cgroup");
        }
        None
    }

    /// Removes the spares (at a clean exit, or to let the tree go).
    pub(crate) fn remove_spares(&self) {
        for spare in std::mem::take(&mut *self.spares()) {
            if let Err(e) = spare.remove() {
                warn!(cgroup = spare.name, error = %e, "cannot remove a spare job cgroup");
            }
        }
    }

    /// Removes this server's instance cgroups (at a clean exit, once every job cgroup is gone).
    pub(crate) fn remove_instance(&self) {
        self.remove_spares();
        for (_, root) in &self.v1 {
            let _ = std::fs::remove_dir(root.join(&self.instance_name));
        }
        let _ = std::fs::remove_dir(&self.instance);
    }
}

/// Turns on the limit controllers in each of `dirs`' `cgroup.subtree_control`, top-down (a cgroup can pass
/// on only what its parent passed to it), and returns those then usable by children of the last. Only the
/// server's own cgroups are ever given here: never the parent of a delegated cgroup. Moving processes is
/// never needed: a fresh directory has none, and a delegated one with processes simply gets none enabled
/// (then limits fall back to v1 or rlimits).
fn enable_controllers(dirs: &[PathBuf]) -> BTreeSet<&'static str> {
    for dir in dirs {
        for controller in Controller::ALL {
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{}", controller.name()));
        }
    }
    let Some(last) = dirs.last() else { return BTreeSet::new() };
    let enabled = std::fs::read_to_string(last.join("cgroup.subtree_control")).unwrap_or_default();
    Controller::ALL.iter().map(|c| c.name()).filter(|c| enabled.split_whitespace().any(|e| e == *c)).collect()
}

/// Whether a cgroup hierarchy is mounted with `favordynmods`, which makes every task migration (for any
/// hierarchy) fast: without it, each one waits for an RCU grace period, and every fork on the machine with it.
fn favors_dynamic_changes() -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines().filter_map(|line| line.split_once(" - ")).any(|(_, right)| {
        let mut fields = right.split_whitespace();
        matches!(fields.next(), Some("cgroup" | "cgroup2"))
            && fields.nth(1).is_some_and(|options| options.split(',').any(|o| o == "favordynmods"))
    })
}

/// The pids in cgroup `dir` itself.
fn pids_in(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The pids in cgroup `dir` and every cgroup below it.
fn pids_below(dir: &Path) -> Vec<i32> {
    let mut pids = pids_in(dir);
    if let Ok(children) = std::fs::read_dir(dir) {
        for child in children.flatten().filter(|c| c.path().is_dir()) {
            pids.extend(pids_below(&child.path()));
        }
    }
    pids
}

impl JobCgroup {
    /// A v2 cgroup `name` at `dir` that forkpool did not make now (a dead server's instance), to kill.
    pub(super) fn at(name: String, dir: PathBuf) -> JobCgroup {
        JobCgroup { name, v2: dir, v1: Vec::new(), v2_memory: false, reuse: Box::default() }
    }

    /// The directory name (also how the reaper attributes a reaped process to this job).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The v2 directory: the worker is created in it (`CLONE_INTO_CGROUP`) or writes itself into it.
    pub(crate) fn dir(&self) -> &Path {
        &self.v2
    }

    /// The `cgroup.procs` files of the v1 hierarchies, which the worker writes itself into before exec.
    pub(crate) fn v1_procs_files(&self) -> Vec<PathBuf> {
        self.v1.iter().map(|(_, d)| d.join("cgroup.procs")).collect()
    }

    /// Whether `pid` exists (a zombie too) and is in this cgroup.
    pub(crate) fn holds(&self, pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|text| text.lines().any(|l| l.starts_with("0::") && l.ends_with(&format!("/{}", self.name))))
    }

    /// Pids in the cgroup now.
    pub(crate) fn pids(&self) -> Vec<i32> {
        pids_in(&self.v2)
    }

    /// Whether any live process is in the cgroup (or below it).
    pub(crate) fn populated(&self) -> bool {
        std::fs::read_to_string(self.v2.join("cgroup.events"))
            .map(|events| events.lines().any(|l| l.trim() == "populated 1"))
            .unwrap_or(false)
    }

    /// SIGKILLs every process in the cgroup: `cgroup.kill`, or freeze, kill each, thaw (kernels < 5.14).
    pub(crate) fn kill(&self) -> io::Result<()> {
        self.reuse.killed.store(true, Ordering::Relaxed);
        let kill = self.v2.join("cgroup.kill");
        if kill.exists() {
            return write(&kill, "1");
        }
        write(&self.v2.join("cgroup.freeze"), "1")?;
        // Every member of the tree: a server's instance holds none itself, its job cgroups hold them all.
        for pid in pids_below(&self.v2) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        write(&self.v2.join("cgroup.freeze"), "0")
    }

    /// Kills everything and waits (bounded) until the cgroup is empty. Returns whether it emptied.
    pub(crate) async fn kill_and_wait(&self, timeout: Duration) -> bool {
        let give_up = tokio::time::Instant::now() + timeout;
        loop {
            if !self.populated() {
                return true;
            }
            if let Err(e) = self.kill() {
                warn!(cgroup = %self.name, error = %e, "cannot kill the job's cgroup");
            }
            if tokio::time::Instant::now() >= give_up {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The job's peak memory (the whole tree's, page cache included): v2 `memory.peak` (Linux 5.19+) or v1
    /// `memory.max_usage_in_bytes`, above what an earlier job left charged. `None` where neither is available.
    pub(crate) fn memory_peak(&self) -> Option<u64> {
        let peak = match &self.reuse.base.peak {
            Some(file) => {
                let mut buf = [0u8; 32];
                let n = file.read_at(&mut buf, 0).ok()?;
                std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
            }
            None => read_number(&self.memory_file("memory.peak", "memory.max_usage_in_bytes")?).ok(),
        };
        peak.map(|peak| peak.saturating_sub(self.reuse.base.memory))
    }

    /// OOM kills inside the job's cgroup since its job began.
    pub(crate) fn oom_kills(&self) -> u64 {
        self.oom_kills_ever().saturating_sub(self.reuse.base.oom_kills)
    }

    /// Whether an emptied cgroup may be kept for another job: not killed through `cgroup.kill`, not frozen, and
    /// with no more than [`KEEP_CHARGED_AT_MOST`] left charged, none of it unreclaimable. The page cache its
    /// jobs brought in stays cached, and charged to it (reclaimable under its limit like any cache).
    fn reusable(&self) -> io::Result<()> {
        if self.reuse.killed.load(Ordering::Relaxed) {
            return Err(io::Error::other("it was killed through cgroup.kill"));
        }
        // Frozen from outside (forkpool thaws what it freezes): left to be removed, not used.
        if std::fs::read_to_string(self.v2.join("cgroup.freeze")).is_ok_and(|f| f.trim() != "0") {
            return Err(io::Error::other("it is frozen"));
        }
        let charged = match self.memory_file("memory.current", "memory.usage_in_bytes") {
            Some(path) => read_number(&path)?,
            None => 0,
        };
        if charged > KEEP_CHARGED_AT_MOST {
            return Err(io::Error::other(format!("{charged} bytes left charged")));
        }
        // Memory that cannot be reclaimed (jobs get no swap) would count against the next job's limit: shared
        // memory a job left in a tmpfs or an IPC namespace it shared, for instance.
        if let Some(path) = self.memory_file("memory.stat", "memory.stat") {
            let stat = std::fs::read_to_string(&path).map_err(|e| at_path(&path, e))?;
            let names: &[&str] = if self.v2_memory {
                &["anon", "shmem", "unevictable"]
            } else {
                &["total_rss", "total_shmem", "total_unevictable"]
            };
            for line in stat.lines() {
                if let Some((name, value)) = line.split_once(' ')
                    && names.contains(&name)
                    && value.trim() != "0"
                {
                    return Err(io::Error::other(format!("{name} {} left charged", value.trim())));
                }
            }
        }
        Ok(())
    }

    /// The memory controller's file: `v2` in the v2 tree, else `v1` in the v1 memory hierarchy, if either.
    fn memory_file(&self, v2: &str, v1: &str) -> Option<PathBuf> {
        if self.v2_memory {
            return Some(self.v2.join(v2));
        }
        self.v1.iter().find(|(c, _)| *c == Controller::Memory).map(|(_, dir)| dir.join(v1))
    }

    /// Resets a spare's memory accounting for its next job and returns what is left counted (see
    /// [`CgroupTree::keep`]).
    fn reset(&self) -> io::Result<Accounting> {
        let mut base = Accounting::default();
        if self.v2_memory {
            let path = self.v2.join("memory.peak");
            let unsupported = |e: io::Error| match e.raw_os_error() {
                Some(libc::EACCES | libc::EPERM | libc::EINVAL) => io::Error::new(
                    io::ErrorKind::Unsupported,
                    PathError { path: path.display().to_string(), source: e },
                ),
                _ => at_path(&path, e),
            };
            let peak = File::options().read(true).write(true).open(&path).map_err(unsupported)?;
            // Linux 6.12+: the peak read through this file is now the current charge.
            peak.write_at(b"0\n", 0).map_err(unsupported)?;
            base.peak = Some(peak);
        } else if let Some(path) = self.memory_file("memory.peak", "memory.max_usage_in_bytes") {
            // The peak is now the current charge.
            write(&path, "0")?;
        }
        if let Some(path) = self.memory_file("memory.current", "memory.usage_in_bytes") {
            base.memory = read_number(&path)?;
        }
        base.oom_kills = self.oom_kills_ever();
        Ok(base)
    }

    /// OOM kills inside the cgroup since it was made.
    fn oom_kills_ever(&self) -> u64 {
        let Some(path) = self.memory_file("memory.events", "memory.oom_control") else { return 0 };
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Removes the cgroup directories (they must be empty).
    pub(crate) fn remove(&self) -> io::Result<()> {
        let mut first_error = None;
        for dir in self.v1.iter().map(|(_, d)| d).chain(std::iter::once(&self.v2)) {
            if let Err(e) = std::fs::remove_dir(dir)
                && e.kind() != io::ErrorKind::NotFound
            {
                first_error.get_or_insert(at_path(dir, e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
