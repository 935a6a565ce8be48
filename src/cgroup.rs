//! Per-job cgroups: the strong containment mode.
//!
//! Process groups are not enough: a job that calls `setsid` or double-forks leaves its group. In cgroup mode
//! every job gets its own cgroup v2 directory (`job-<server pid>-<job id>` under the tree's root), which the
//! worker joins between clone and exec, so everything it ever starts is inside. Ending a job writes
//! `cgroup.kill` (or freezes and SIGKILLs on kernels without it), waits for `cgroup.events` to say
//! `populated 0`, and removes the directory. At start-up, job cgroups of a server that is gone (or of an
//! earlier incarnation of this pid) are killed and removed.
//!
//! Limits use the v2 controllers enabled for the tree. On hybrid hosts (v2 mounted at
//! `/sys/fs/cgroup/unified`, controllers still bound to v1) the memory, pids and cpu limits use the v1
//! hierarchies instead, with a directory of the same name; membership, kill and emptiness stay v2.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, warn};

use crate::limits::Limits;

/// The limit controllers forkpool uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
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
#[derive(Debug, Clone)]
pub struct CgroupTree {
    /// The v2 directory holding the job cgroups.
    root: PathBuf,
    /// Controllers usable in job cgroups of the v2 tree.
    v2: BTreeSet<&'static str>,
    /// v1 hierarchies standing in for controllers the v2 tree lacks: (controller, directory for jobs).
    v1: Vec<(Controller, PathBuf)>,
    server_pid: i32,
}

/// One job's cgroup.
#[derive(Debug)]
pub struct JobCgroup {
    name: String,
    v2: PathBuf,
    v1: Vec<(Controller, PathBuf)>,
    v2_memory: bool,
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
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

/// Moves this whole process into cgroup `leaf` (created if needed).
fn move_into_leaf(leaf: &Path) -> io::Result<()> {
    match std::fs::create_dir(leaf) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    write(&leaf.join("cgroup.procs"), &std::process::id().to_string())
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
    /// moving the server into its `server` leaf.
    pub fn discover(configured: Option<&Path>) -> Result<CgroupTree, String> {
        let server_pid = std::process::id() as i32;
        let (v2_mount, v1_mounts) = mounts();
        let own = own_cgroups();
        let root = match configured {
            Some(root) => root.to_path_buf(),
            None => {
                let mount = v2_mount.ok_or("no cgroup v2 hierarchy is mounted")?;
                let path = own.iter().find(|(c, _)| c.is_empty()).map(|(_, p)| p.clone()).unwrap_or_default();
                let own_dir = mount.join(path.trim_start_matches('/'));
                if own_dir == mount {
                    own_dir.join("forkpool")
                } else {
                    // A delegated cgroup (systemd `Delegate=yes`, a container): cgroup v2 lets a cgroup with
                    // processes enable no controllers for its children, so the server moves itself into a
                    // leaf first and its jobs get cgroups beside it.
                    if let Err(e) = move_into_leaf(&own_dir.join("server")) {
                        warn!(error = %e, "cannot move the server into a leaf of its cgroup; jobs may get no limits");
                    }
                    own_dir
                }
            }
        };
        probe_writable(&root, server_pid).map_err(|e| format!("{} is not writable: {e}", root.display()))?;
        if !root.join("cgroup.procs").exists() {
            return Err(format!("{} is not a cgroup v2 directory", root.display()));
        }
        let v2 = enable_controllers(&root);
        let mut v1 = Vec::new();
        for controller in Controller::ALL {
            if v2.contains(controller.name()) {
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
        Ok(CgroupTree { root, v2, v1, server_pid })
    }

    /// One line for logs and `GetStatus`.
    pub fn describe(&self) -> String {
        let mut controllers: Vec<String> = self.v2.iter().map(|c| format!("{c} (v2)")).collect();
        controllers.extend(self.v1.iter().map(|(c, _)| format!("{} (v1)", c.name())));
        let controllers = if controllers.is_empty() { "none".to_string() } else { controllers.join(", ") };
        format!("cgroup v2 at {}; limit controllers: {controllers}", self.root.display())
    }

    /// Whether memory limits are enforced by a cgroup (else `RLIMIT_AS`).
    pub fn enforces(&self, limit: &str) -> bool {
        self.v2.contains(limit) || self.v1.iter().any(|(c, _)| c.name() == limit)
    }

    /// The name of a job's cgroup: unique per server process, so concurrent servers never collide.
    pub fn job_name(&self, job_id: &str) -> String {
        format!("job-{}-{job_id}", self.server_pid)
    }

    /// Creates a job's cgroup with its limits.
    pub fn create(&self, job_id: &str, limits: &Limits) -> io::Result<JobCgroup> {
        let name = self.job_name(job_id);
        let v2 = self.root.join(&name);
        if let Err(e) = std::fs::create_dir(&v2) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
            // The tree was removed underneath the server: make it again, once.
            warn!(root = %self.root.display(), "the job cgroup tree is gone; recreating it");
            std::fs::create_dir_all(&self.root)?;
            enable_controllers(&self.root);
            for (_, root) in &self.v1 {
                std::fs::create_dir_all(root)?;
            }
            std::fs::create_dir(&v2)?;
        }
        let mut cgroup = JobCgroup { name, v2, v1: Vec::new(), v2_memory: false };
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
                Controller::Memory => limits.memory.is_some(),
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
                        write(&dir.join("memory.max"), &limits.memory.unwrap_or_default().to_string())?;
                        // No swap: a job over its memory is OOM-killed, not slowed to a crawl.
                        let _ = write(&dir.join("memory.swap.max"), "0");
                        cgroup.v2_memory = true;
                    }
                    Controller::Pids => {
                        write(&dir.join("pids.max"), &limits.processes.unwrap_or_default().to_string())?
                    }
                    Controller::Cpu => write(&dir.join("cpu.max"), &format!("{} 100000", quota.unwrap_or_default()))?,
                }
            } else if let Some((_, root)) = self.v1.iter().find(|(c, _)| *c == controller) {
                let dir = root.join(&cgroup.name);
                std::fs::create_dir(&dir)?;
                cgroup.v1.push((controller, dir.clone()));
                match controller {
                    Controller::Memory => {
                        let bytes = limits.memory.unwrap_or_default().to_string();
                        write(&dir.join("memory.limit_in_bytes"), &bytes)?;
                        let memsw = dir.join("memory.memsw.limit_in_bytes");
                        if memsw.exists() {
                            let _ = write(&memsw, &bytes);
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

    /// Kills and removes job cgroups left by servers that are gone (a crash), including an earlier
    /// incarnation of this pid (PID 1 in a container). Returns how many were cleaned.
    pub async fn clean_leftovers(&self) -> usize {
        let mut cleaned = 0;
        let Ok(entries) = std::fs::read_dir(&self.root) else { return 0 };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(owner) = name.strip_prefix("job-").and_then(|r| r.split('-').next()?.parse::<i32>().ok()) else {
                continue;
            };
            if owner != self.server_pid && crate::containment::is_live_server(owner) {
                continue;
            }
            let cgroup = JobCgroup {
                v2: entry.path(),
                v1: self.v1.iter().map(|(c, root)| (*c, root.join(&name))).filter(|(_, d)| d.exists()).collect(),
                name,
                v2_memory: false,
            };
            let pids = cgroup.pids();
            let emptied = cgroup.kill_and_wait(Duration::from_secs(5)).await;
            match cgroup.remove() {
                Ok(()) if emptied => {
                    info!(cgroup = %cgroup.name, killed = pids.len(), "removed a job cgroup left by a crashed server");
                    cleaned += 1;
                }
                result => warn!(cgroup = %cgroup.name, ?result, emptied, "cannot clean a leftover job cgroup"),
            }
        }
        cleaned
    }
}

/// Turns on, in `root`, every limit controller its parent offers, and returns those now usable by children
/// of `root`. Moving processes is never needed: a fresh `root` has none, and a delegated one with
/// processes simply gets none enabled (then limits fall back to v1 or rlimits).
fn enable_controllers(root: &Path) -> BTreeSet<&'static str> {
    let parent = root.parent().unwrap_or(root);
    for controller in Controller::ALL {
        // The parent must pass the controller down to `root` before `root` can pass it to jobs.
        let _ = std::fs::write(parent.join("cgroup.subtree_control"), format!("+{}", controller.name()));
        let _ = std::fs::write(root.join("cgroup.subtree_control"), format!("+{}", controller.name()));
    }
    let enabled = std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap_or_default();
    Controller::ALL.iter().map(|c| c.name()).filter(|c| enabled.split_whitespace().any(|e| e == *c)).collect()
}

impl JobCgroup {
    /// The directory name (also how the reaper attributes a reaped process to this job).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The v2 directory: the worker is created in it (`CLONE_INTO_CGROUP`) or writes itself into it.
    pub fn dir(&self) -> &Path {
        &self.v2
    }

    /// The `cgroup.procs` files of the v1 hierarchies, which the worker writes itself into before exec.
    pub fn v1_procs_files(&self) -> Vec<PathBuf> {
        self.v1.iter().map(|(_, d)| d.join("cgroup.procs")).collect()
    }

    /// Whether `pid` exists (a zombie too) and is in this cgroup.
    pub fn holds(&self, pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|text| text.lines().any(|l| l.starts_with("0::") && l.ends_with(&format!("/{}", self.name))))
    }

    /// Pids in the cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.v2.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Whether any live process is in the cgroup.
    pub fn populated(&self) -> bool {
        std::fs::read_to_string(self.v2.join("cgroup.events"))
            .map(|events| events.lines().any(|l| l.trim() == "populated 1"))
            .unwrap_or(false)
    }

    /// SIGKILLs every process in the cgroup: `cgroup.kill`, or freeze, kill each, thaw (kernels < 5.14).
    pub fn kill(&self) -> io::Result<()> {
        let kill = self.v2.join("cgroup.kill");
        if kill.exists() {
            return write(&kill, "1");
        }
        write(&self.v2.join("cgroup.freeze"), "1")?;
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        write(&self.v2.join("cgroup.freeze"), "0")
    }

    /// Kills everything and waits (bounded) until the cgroup is empty. Returns whether it emptied.
    pub async fn kill_and_wait(&self, timeout: Duration) -> bool {
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

    /// OOM kills inside the job's cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        let (file, dir) = if self.v2_memory {
            ("memory.events", &self.v2)
        } else if let Some((_, dir)) = self.v1.iter().find(|(c, _)| *c == Controller::Memory) {
            ("memory.oom_control", dir)
        } else {
            return 0;
        };
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Removes the cgroup directories (they must be empty).
    pub fn remove(&self) -> io::Result<()> {
        let mut first_error = None;
        for dir in self.v1.iter().map(|(_, d)| d).chain(std::iter::once(&self.v2)) {
            if let Err(e) = std::fs::remove_dir(dir)
                && e.kind() != io::ErrorKind::NotFound
            {
                first_error.get_or_insert(io::Error::new(e.kind(), format!("{}: {e}", dir.display())));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
