//! The spawner: the one place where worker processes are created, and the only fork-time unsafe code.
//!
//! # Design
//! - **Long-lived spawner threads.** `PR_SET_PDEATHSIG` fires when the *thread* that created the child
//!   exits, not the process. Tokio's blocking threads exit after idling, which would kill healthy long jobs;
//!   a spawner thread never exits (it parks forever if the server drops its handle), so a worker's death
//!   signal means exactly "the server died".
//! - **All signals blocked in those threads, forever.** A child starts with its creator's signal mask, so no
//!   signal can run a handler inherited from the server (tokio's handler writes into the server's own
//!   signal pipe: a worker SIGTERMed before exec would otherwise shut the server down). The child resets
//!   every disposition to the default first, and only then unblocks.
//! - **`clone(CLONE_VM | CLONE_VFORK)`**, posix_spawn style: no page tables are copied, so spawning costs
//!   the same whatever the server's size. The parent thread is suspended until the child execs or exits;
//!   the child runs on a dedicated stack and only makes async-signal-safe calls on memory prepared before
//!   the clone: it allocates nothing, takes no lock and cannot panic.
//! - **Exec errors come back through a close-on-exec pipe**: an empty read means the exec happened.
//! - **Registration before reaping, with no lock held across the clone**: the kernel writes the child's pid
//!   into the spawn's ticket before the child runs, and the reaper leaves an in-flight pid alone until
//!   [`Registry::finish_spawn`] has recorded it; so a worker that exits at once is never mistaken for an
//!   orphan, and a spawn that hangs before exec (a hung filesystem, a frozen cgroup) blocks no reaping or
//!   killing.
//! - **A pool of spawner threads**: a spawn stuck before exec keeps its thread (`CLONE_VFORK` suspends it), so
//!   when every thread is busy another is started (up to 64): a stuck spawn delays only its own call, which
//!   can cancel it ([`Registry::cancel_spawn`] SIGKILLs the child).

use std::collections::BTreeMap;
use std::ffi::{CString, c_char};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::unistd::{AccessFlags, access, getpid, pipe2};
use tokio::sync::oneshot;
use tracing::{error, warn};

use crate::process::registry::{Registration, Registry, SpawnTicket, WorkerEntry};

mod child;
mod fork;
pub(crate) mod init;
mod pty;
mod seccomp;

pub(crate) use fork::fork_guardian;
pub(crate) use pty::TerminalSpec;

use child::{ChildPlan, FileWrite, FsOp, STEPS, clone_child};

/// Capacity asked for the stdout and stderr pipes.
const OUTPUT_PIPE_BYTES: libc::c_int = 1 << 20;

/// Stack for the child between clone and exec. It runs a handful of small frames.
const CHILD_STACK_BYTES: usize = 64 * 1024;

/// What to execute, with every string converted before the clone (the child must not allocate).
#[derive(Debug)]
pub(crate) struct Command {
    display: String,
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: Option<CString>,
    cwd_path: Option<PathBuf>,
    cgroup_dir: Option<CString>,
    cgroup_procs: Vec<CString>,
    rlimits: Vec<(libc::c_int, u64)>,
    ids: Option<(u32, u32)>,
    terminal: Option<TerminalSpec>,
    /// Empty the bounding set (but for `keep_caps`): only a root server can.
    drop_capabilities: bool,
    keep_caps: u64,
    namespaces: libc::c_int,
    /// Files to write in a new user namespace, `(path, content)`.
    user_maps: Vec<(CString, Vec<u8>)>,
    /// The mount namespace's set-up.
    fs: Vec<FsStep>,
    /// Bring up the new network namespace's loopback interface.
    loopback: bool,
    /// A network namespace to join instead of making one (a reused one, whose loopback is up).
    join_net: Option<OwnedFd>,
    /// Install the seccomp deny list.
    seccomp: bool,
    /// Run under forkpool's init (a pid namespace): its argv, `forkpool-init PROGRAM ARGV...`.
    init_argv: Option<Vec<CString>>,
    /// A warm sandbox of this shape, not a worker (see [`Command::warm`]).
    warm: bool,
    /// The working directory lies under a private tmpfs (or the root is read-only): a warm sandbox's init
    /// binds it in.
    bind_cwd: bool,
    /// The root is read-only.
    read_only_root: bool,
    /// A warm sandbox: the directory its jobs' directories are made in.
    warm_root: Option<(CString, PathBuf)>,
}

/// One step of a mount namespace's set-up, owning its strings (see [`FsOp`]).
#[derive(Debug)]
enum FsStep {
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    Mkdir(CString),
    Chdir(CString),
    SetAttr {
        path: CString,
        set: u64,
        clr: u64,
    },
}

impl FsStep {
    fn op(&self) -> FsOp {
        let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        match self {
            FsStep::Mount { source, target, fstype, flags, data } => FsOp::Mount {
                source: ptr(source),
                target: target.as_ptr(),
                fstype: ptr(fstype),
                flags: *flags,
                data: ptr(data),
            },
            FsStep::Mkdir(path) => FsOp::Mkdir(path.as_ptr()),
            FsStep::Chdir(path) => FsOp::Chdir(path.as_ptr()),
            FsStep::SetAttr { path, set, clr } => FsOp::SetAttr { path: path.as_ptr(), set: *set, clr: *clr },
        }
    }
}

/// `MOUNT_ATTR_RDONLY`.
const MOUNT_ATTR_RDONLY: u64 = 1;

impl Namespaces {
    /// Everything in `self` or `other`.
    pub(crate) fn with(self, other: Namespaces) -> Namespaces {
        Namespaces {
            user: self.user || other.user,
            pid: self.pid || other.pid,
            private_tmp: self.private_tmp || other.private_tmp,
            read_only_root: self.read_only_root || other.read_only_root,
            no_network: self.no_network || other.no_network,
            ipc_and_hostname: self.ipc_and_hostname || other.ipc_and_hostname,
            seccomp: self.seccomp || other.seccomp,
        }
    }
}

/// Which namespaces (and filters) a worker gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Namespaces {
    /// A user namespace mapping the job's uid and gid to the server's (a server that is not root).
    pub(crate) user: bool,
    /// A pid namespace under forkpool's init, with its own /proc.
    pub(crate) pid: bool,
    /// A mount namespace with private /tmp and /dev/shm.
    pub(crate) private_tmp: bool,
    /// The system read-only (with `private_tmp`).
    pub(crate) read_only_root: bool,
    /// An empty network namespace with its own loopback.
    pub(crate) no_network: bool,
    /// IPC and UTS namespaces.
    pub(crate) ipc_and_hostname: bool,
    /// The seccomp deny list.
    pub(crate) seccomp: bool,
}

impl Command {
    /// Builds a command from an argv and a complete environment. `argv[0]` is looked up in the
    /// environment's `PATH` unless it contains a `/`; a program that is not found is an exec error.
    pub(crate) fn new(argv: &[String], env: &BTreeMap<String, String>) -> Result<Command, SpawnError> {
        let invalid = |what: &str| SpawnError::InvalidCommand(format!("{what} contains a NUL byte"));
        let first = argv.first().ok_or_else(|| SpawnError::InvalidCommand("empty argv".into()))?;
        let program = resolve_program(first, env.get("PATH").map(String::as_str)).ok_or_else(|| SpawnError::Exec {
            program: first.clone(),
            step: "not found in PATH",
            errno: Errno::ENOENT,
        })?;
        let program = CString::new(program.into_os_string().into_encoded_bytes()).map_err(|_| invalid("program"))?;
        let argv = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()).map_err(|_| invalid("an argument")))
            .collect::<Result<_, _>>()?;
        let envp = env
            .iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")).map_err(|_| invalid("the environment")))
            .collect::<Result<_, _>>()?;
        Ok(Command {
            display: first.clone(),
            program,
            argv,
            envp,
            cwd: None,
            cwd_path: None,
            cgroup_dir: None,
            cgroup_procs: Vec::new(),
            rlimits: Vec::new(),
            ids: None,
            terminal: None,
            drop_capabilities: false,
            keep_caps: 0,
            namespaces: 0,
            user_maps: Vec::new(),
            fs: Vec::new(),
            loopback: false,
            join_net: None,
            seccomp: false,
            init_argv: None,
            warm: false,
            bind_cwd: false,
            read_only_root: false,
            warm_root: None,
        })
    }

    /// The child's tables, pointing into this command: the user namespace's map writes, the mount steps, the
    /// seccomp filter.
    fn child_tables(&self) -> (Vec<FileWrite>, Vec<FsOp>, Option<&'static libc::sock_fprog>) {
        let user_maps = self
            .user_maps
            .iter()
            .map(|(path, data)| FileWrite { path: path.as_ptr(), data: data.as_ptr(), len: data.len() })
            .collect();
        let fs_ops = self.fs.iter().map(FsStep::op).collect();
        (user_maps, fs_ops, if self.seccomp { seccomp::filter() } else { None })
    }

    /// Makes this a warm sandbox of the command's shape (namespaces, mounts, cgroup, rlimits are ignored: the
    /// job's come with it) instead of a worker: forkpool's init waits for a job ([`Staged::start`]). Needs a
    /// pid namespace. No privilege is dropped before the job comes (the init does it then), but for the
    /// capability bounding set if `empty_bounding` (then only jobs that keep no capability may use it).
    pub(crate) fn warm(mut self, work_root: &Path, empty_bounding: bool) -> Result<Self, SpawnError> {
        self.warm_root = Some((path_cstring(work_root)?, work_root.to_path_buf()));
        if self.init_argv.is_none() {
            return Err(SpawnError::InvalidCommand("a warm sandbox needs a pid namespace".into()));
        }
        let arg = |s: &str| CString::new(s).map_err(|_| SpawnError::InvalidCommand("init".into()));
        let mut argv = vec![arg(init::ARGV0)?, arg(init::WARM_FLAG)?];
        if empty_bounding {
            argv.push(arg(init::EMPTY_BOUNDING_FLAG)?);
        }
        self.init_argv = Some(argv);
        self.warm = true;
        self.ids = None;
        self.drop_capabilities = false;
        self.seccomp = false;
        self.rlimits.clear();
        self.terminal = None;
        Ok(self)
    }

    /// Runs the worker in `dir`.
    pub(crate) fn cwd(mut self, dir: &Path) -> Result<Self, SpawnError> {
        self.cwd = Some(path_cstring(dir)?);
        self.cwd_path = Some(dir.to_path_buf());
        Ok(self)
    }

    /// Creates the worker directly in the cgroup v2 directory `dir` (`clone3` with `CLONE_INTO_CGROUP`),
    /// or, where that is not supported, makes it write itself into `dir/cgroup.procs` before exec.
    pub(crate) fn cgroup(mut self, dir: Option<&Path>) -> Result<Self, SpawnError> {
        self.cgroup_dir = dir.map(path_cstring).transpose()?;
        if let Some(dir) = dir {
            self.cgroup_procs.insert(0, path_cstring(&dir.join("cgroup.procs"))?);
        }
        Ok(self)
    }

    /// Makes the worker join these extra cgroups (their `cgroup.procs` files, e.g. v1 hierarchies) before
    /// exec.
    pub(crate) fn join_cgroups(mut self, procs_files: &[PathBuf]) -> Result<Self, SpawnError> {
        for file in procs_files {
            self.cgroup_procs.push(path_cstring(file)?);
        }
        Ok(self)
    }

    /// Sets these rlimits `(resource, value)` (soft and hard) before exec.
    pub(crate) fn rlimits(mut self, rlimits: Vec<(libc::c_int, u64)>) -> Self {
        self.rlimits = rlimits;
        self
    }

    /// Runs the worker as `(uid, gid)`, with no supplementary groups.
    pub(crate) fn user(mut self, ids: Option<(u32, u32)>) -> Self {
        self.ids = ids;
        self
    }

    /// Sets `no_new_privs` (always) and, if `drop_capabilities` (a root server), empties the capability bounding
    /// set but for `keep` (bit N = capability N) and clears the ambient set, before the user is switched.
    pub(crate) fn privileges(mut self, drop_capabilities: bool, keep: u64) -> Self {
        self.drop_capabilities = drop_capabilities;
        self.keep_caps = keep;
        self
    }

    /// Creates the worker in these namespaces (IPC and UTS, pid, mount, network need CAP_SYS_ADMIN or a user
    /// namespace), with the seccomp filter. Call after [`Command::cwd`]: the working directory is kept visible.
    pub(crate) fn namespaces(mut self, ns: Namespaces) -> Result<Self, SpawnError> {
        let mut flags = 0;
        if ns.ipc_and_hostname {
            flags |= libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
        }
        if ns.user {
            flags |= libc::CLONE_NEWUSER;
            let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
            self.user_maps = vec![
                (c"/proc/self/setgroups".into(), b"deny".to_vec()),
                (c"/proc/self/uid_map".into(), format!("{uid} {uid} 1\n").into_bytes()),
                (c"/proc/self/gid_map".into(), format!("{gid} {gid} 1\n").into_bytes()),
            ];
        }
        if ns.pid || ns.private_tmp {
            flags |= libc::CLONE_NEWNS;
            self.fs = self.mount_steps(ns)?;
            self.read_only_root = ns.private_tmp && ns.read_only_root;
            self.bind_cwd = ns.private_tmp
                && self.cwd_path.as_ref().is_some_and(|cwd| {
                    ["/tmp", "/dev/shm"]
                        .iter()
                        .any(|dir| cwd.strip_prefix(dir).is_ok_and(|b| !b.as_os_str().is_empty()))
                });
        }
        if ns.pid {
            flags |= libc::CLONE_NEWPID;
            // The init runs with an empty environment (nothing of the job's, such as LD_PRELOAD, may reach its
            // loader): the job's comes in its argv, `forkpool-init --env N ENTRY... PROGRAM ARGV...`.
            let arg = |s: &str| CString::new(s).map_err(|_| SpawnError::InvalidCommand("init".into()));
            let mut argv = vec![arg(init::ARGV0)?, arg(init::ENV_FLAG)?, arg(&self.envp.len().to_string())?];
            argv.extend(self.envp.iter().cloned());
            argv.push(self.program.clone());
            argv.extend(self.argv.iter().cloned());
            self.init_argv = Some(argv);
        }
        if ns.no_network {
            flags |= libc::CLONE_NEWNET;
            self.loopback = true;
        }
        self.namespaces = flags;
        self.seccomp = ns.seccomp;
        Ok(self)
    }

    /// Joins the network namespace `ns` instead of making a new one (call after [`Command::namespaces`]; a
    /// command that gets no network namespace of its own ignores it). `ns` is one a finished job left as it
    /// was made (see `containment::netns`): its loopback is up, and nothing of that job is in it.
    pub(crate) fn join_network(mut self, ns: OwnedFd) -> Self {
        if self.namespaces & libc::CLONE_NEWNET != 0 {
            self.namespaces &= !libc::CLONE_NEWNET;
            self.loopback = false;
            self.join_net = Some(ns);
        }
        self
    }

    /// Whether the worker gets a network namespace of its own (new, or joined).
    pub(crate) fn own_network(&self) -> bool {
        self.namespaces & libc::CLONE_NEWNET != 0 || self.join_net.is_some()
    }

    /// The mount namespace's set-up: nothing propagates back to the host; a read-only system; empty tmpfs on
    /// `/tmp` and `/dev/shm`; the working directory bound back where a tmpfs covers it (from the child's
    /// current directory, entered before the mounts) and writable; `/proc` of the job's pid namespace.
    fn mount_steps(&self, ns: Namespaces) -> Result<Vec<FsStep>, SpawnError> {
        let c = |p: &Path| path_cstring(p);
        let mut steps = vec![FsStep::Mount {
            source: None,
            target: c"/".into(),
            fstype: None,
            flags: libc::MS_REC | libc::MS_PRIVATE,
            data: None,
        }];
        let read_only = ns.private_tmp && ns.read_only_root;
        if read_only {
            steps.push(FsStep::SetAttr { path: c"/".into(), set: MOUNT_ATTR_RDONLY, clr: 0 });
        }
        let cwd = self.cwd_path.clone();
        let mut covered = false;
        if ns.private_tmp {
            for dir in ["/tmp", "/dev/shm"] {
                if !Path::new(dir).is_dir() {
                    continue;
                }
                steps.push(FsStep::Mount {
                    source: Some(c"tmpfs".into()),
                    target: c(Path::new(dir))?,
                    fstype: Some(c"tmpfs".into()),
                    flags: libc::MS_NOSUID | libc::MS_NODEV,
                    data: Some(c"mode=1777".into()),
                });
                if let Some(cwd) = &cwd
                    && let Ok(below) = cwd.strip_prefix(dir)
                    && !below.as_os_str().is_empty()
                {
                    covered = true;
                    let mut path = PathBuf::from(dir);
                    for part in below.components() {
                        path.push(part);
                        steps.push(FsStep::Mkdir(c(&path)?));
                    }
                }
            }
        }
        if let Some(cwd) = &cwd
            && (covered || read_only)
            && !self.warm
        {
            steps.push(FsStep::Mount {
                source: Some(c".".into()),
                target: c(cwd)?,
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REC,
                data: None,
            });
            if read_only {
                steps.push(FsStep::SetAttr { path: c(cwd)?, set: 0, clr: MOUNT_ATTR_RDONLY });
            }
            steps.push(FsStep::Chdir(c(cwd)?));
        }
        if ns.pid {
            steps.push(FsStep::Mount {
                source: Some(c"proc".into()),
                target: c"/proc".into(),
                fstype: Some(c"proc".into()),
                flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                data: None,
            });
        }
        Ok(steps)
    }

    /// Runs the worker under a new pseudo-terminal (its stdio and controlling terminal) instead of pipes.
    pub(crate) fn terminal(mut self, terminal: Option<TerminalSpec>) -> Self {
        self.terminal = terminal;
        self
    }
}

/// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`), read once.
fn cap_last() -> libc::c_int {
    static LAST: std::sync::OnceLock<libc::c_int> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(63)
    })
}

fn path_cstring(path: &Path) -> Result<CString, SpawnError> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| SpawnError::InvalidCommand(format!("path {} contains a NUL byte", path.display())))
}

fn resolve_program(program: &str, path: Option<&str>) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(program.into());
    }
    path?
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file() && access(candidate, AccessFlags::X_OK).is_ok())
}

/// A running worker and the server's ends of its stdio.
#[derive(Debug)]
pub(crate) struct Spawned {
    /// The worker's pid, which is also its session and process group id.
    pub(crate) pid: i32,
    /// The server's ends of the worker's stdio.
    pub(crate) io: WorkerIo,
    /// What the worker's stdin, stdout and stderr are, as `/proc/PID/fd/N` links read (`pipe:[INODE]`,
    /// `/dev/pts/N`): how a process that left the job's group is still recognised as the job's.
    pub(crate) stdio_links: Vec<String>,
    /// The job's entries in the registry, removed when this is dropped (after the job's end).
    pub(crate) registration: Registration,
    /// A pid namespace's init: the read end of its report pipe (see [`crate::process::init_report`]).
    pub(crate) init_report: Option<OwnedFd>,
}

/// The server's ends of a worker's stdio. Both close on exec: no job ever holds another's.
#[derive(Debug)]
pub(crate) enum WorkerIo {
    /// Three pipes.
    Pipes {
        /// Write end of the worker's stdin.
        stdin: OwnedFd,
        /// Read end of the worker's stdout.
        stdout: OwnedFd,
        /// Read end of the worker's stderr.
        stderr: OwnedFd,
    },
    /// A pseudo-terminal: the master, read for all output and written for input.
    Terminal {
        /// The pty master.
        master: OwnedFd,
    },
}

/// Makes one of a worker's stdio ends (a pipe end, a pty master) non-blocking and registers it with the
/// runtime, for the job's pumps. Must be called within the runtime.
pub(crate) fn watch(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    rustix::io::ioctl_fionbio(&fd, true)?;
    // SAFETY: `register` needs the fd to stay open, and the same file, for the whole life of the `AsyncFd`:
    // an `OwnedFd` moved into it is closed only when the `AsyncFd` drops it, and nothing else owns it.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpawnError {
    /// The program could not be executed (reported by the child, or not found in `PATH`).
    #[error("cannot execute `{program}` ({step}): {errno}")]
    Exec {
        /// `argv[0]` as requested.
        program: String,
        /// The setup step that failed.
        step: &'static str,
        /// The OS error.
        errno: Errno,
    },
    /// The OS refused a process or pipe (process or fd limits).
    #[error("cannot create a worker process: {0}")]
    Resources(Errno),
    /// No pseudo-terminal could be opened for a terminal job (ptys or fds exhausted).
    #[error(
        "cannot open a pseudo-terminal for the job: {0} (the system's ptys may be exhausted: /proc/sys/kernel/pty/max)"
    )]
    Terminal(Errno),
    /// The argv or environment cannot be passed to exec.
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// The spawner thread is gone (only while the process is exiting).
    #[error("the spawner thread is gone")]
    SpawnerGone,
    /// The call ended before its worker was created.
    #[error("the call ended before its worker was created")]
    Cancelled,
}

struct Request {
    command: Command,
    entry: WorkerEntry,
    ticket: Arc<SpawnTicket>,
    reply: oneshot::Sender<Result<Started, SpawnError>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("command", &self.command.display).finish()
    }
}

/// Most spawner threads: more are started only while every one is busy (a spawn stuck before exec keeps its
/// thread), and none ever exits.
const MAX_SPAWNER_THREADS: usize = 64;

/// The spawner threads' shared queue.
#[derive(Debug)]
struct Threads {
    incoming: Mutex<mpsc::Receiver<Request>>,
    registry: Arc<Registry>,
    /// Threads waiting for a request.
    idle: AtomicUsize,
    /// Requests sent and not yet taken by a thread.
    queued: AtomicUsize,
    /// Threads started.
    started: AtomicUsize,
    /// The server's end of the guardian's socket, or -1: closed by every child before anything else (so a
    /// child stuck before exec does not hold it), after announcing its session on it if `announce`.
    guardian_fd: std::os::fd::RawFd,
    /// Workers announce their session to the guardian (fallback mode).
    announce: bool,
    /// This executable, exec'd as the init of a job's pid namespace; `None` if it cannot be opened.
    init_exe: Option<OwnedFd>,
}

/// Handle to the spawner threads.
#[derive(Debug, Clone)]
pub(crate) struct Spawner {
    requests: mpsc::Sender<Request>,
    threads: Arc<Threads>,
}

impl Spawner {
    /// Starts the first spawner thread. Call once per process, after the reaper listens for SIGCHLD.
    /// `guardian_fd`, when given, is the server's end of the guardian's socket, on which each worker announces
    /// its session if `announce`.
    pub(crate) fn start(
        registry: Arc<Registry>,
        guardian_fd: Option<std::os::fd::RawFd>,
        announce: bool,
    ) -> std::io::Result<Spawner> {
        let (requests, incoming) = mpsc::channel::<Request>();
        let threads = Arc::new(Threads {
            incoming: Mutex::new(incoming),
            registry,
            idle: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            guardian_fd: guardian_fd.unwrap_or(-1),
            announce,
            init_exe: open_own_executable()
                .inspect_err(|e| warn!(error = %e, "cannot open the init's executable: jobs get no pid namespace"))
                .ok(),
        });
        start_thread(&threads)?;
        Ok(Spawner { requests, threads })
    }

    /// Starts a worker for `command`, registered with the reaper through `entry`. `ticket` lets the caller
    /// cancel the spawn while it is under way ([`Registry::cancel_spawn`]).
    pub(crate) async fn spawn(
        &self,
        command: Command,
        entry: WorkerEntry,
        ticket: Arc<SpawnTicket>,
    ) -> Result<Spawned, SpawnError> {
        match self.run_spawn(command, entry, ticket).await? {
            Started::Running(spawned) => Ok(spawned),
            Started::Warm(_) => Err(SpawnError::InvalidCommand("a warm sandbox where a worker was asked for".into())),
        }
    }

    /// Makes a warm sandbox for jobs shaped like `command` (see [`Command::warm`]), registered through `entry`.
    pub(crate) async fn stage(&self, command: Command, entry: WorkerEntry) -> Result<Staged, SpawnError> {
        match self.run_spawn(command, entry, Arc::new(SpawnTicket::default())).await? {
            Started::Warm(staged) => Ok(staged),
            Started::Running(_) => {
                Err(SpawnError::InvalidCommand("a worker where a warm sandbox was asked for".into()))
            }
        }
    }

    async fn run_spawn(
        &self,
        command: Command,
        entry: WorkerEntry,
        ticket: Arc<SpawnTicket>,
    ) -> Result<Started, SpawnError> {
        let (reply, answer) = oneshot::channel();
        self.threads.queued.fetch_add(1, Ordering::AcqRel);
        self.requests.send(Request { command, entry, ticket, reply }).map_err(|_| SpawnError::SpawnerGone)?;
        // More requests waiting than threads waiting for them (a thread may be stuck in a spawn that never
        // reaches exec): add one, so a stuck spawn delays only its own call.
        if self.threads.queued.load(Ordering::Acquire) > self.threads.idle.load(Ordering::Acquire)
            && self.threads.started.load(Ordering::Acquire) < MAX_SPAWNER_THREADS
            && let Err(e) = start_thread(&self.threads)
        {
            warn!(error = %e, "cannot start another spawner thread");
        }
        answer.await.map_err(|_| SpawnError::SpawnerGone)?
    }
}

fn start_thread(shared: &Arc<Threads>) -> std::io::Result<()> {
    let threads = Arc::clone(shared);
    let n = threads.started.fetch_add(1, Ordering::AcqRel);
    let spawned = std::thread::Builder::new().name(format!("forkpool-spawn{n}")).spawn(move || {
        if let Err(e) = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None) {
            // Without the mask the seed bug is possible: refuse to spawn at all.
            error!(error = %e, "cannot block signals in a spawner thread; it runs no job");
            park_forever();
        }
        let mut stack = vec![0u8; CHILD_STACK_BYTES];
        let server_pid = getpid().as_raw();
        loop {
            threads.idle.fetch_add(1, Ordering::AcqRel);
            let next = threads.incoming.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv();
            threads.idle.fetch_sub(1, Ordering::AcqRel);
            threads.queued.fetch_sub(1, Ordering::AcqRel);
            let Ok(Request { command, entry, ticket, reply }) = next else { break };
            let registry = &threads.registry;
            let parent = Parent {
                server_pid,
                guardian_fd: threads.guardian_fd,
                announce: threads.announce,
                init_exe: threads.init_exe.as_ref().map_or(-1, AsRawFd::as_raw_fd),
            };
            let result = spawn_one(registry, &mut stack, parent, &command, entry, &ticket);
            if let Err(Ok(orphaned)) = reply.send(result) {
                // The job went away during the spawn: nobody would ever end this worker.
                let pid = match orphaned {
                    Started::Running(spawned) => spawned.pid,
                    Started::Warm(staged) => staged.pid,
                };
                registry.with_live_worker(pid, |pid| crate::process::signal::signal_group(pid, Signal::SIGKILL));
            }
        }
        park_forever()
    });
    match spawned {
        Ok(_) => Ok(()),
        Err(e) => {
            shared.started.fetch_sub(1, Ordering::AcqRel);
            Err(e)
        }
    }
}

/// Tries a worker's set-up with `ns` in `cwd` without executing anything: `Err` names the step the kernel
/// refused and why. Runs the clone on a thread of its own with every signal blocked (as the spawner threads),
/// as a "clone" child (no exit signal) that the reaper never sees, and waits for it.
pub(crate) fn probe(ns: Namespaces, cwd: &Path) -> Result<(), SpawnError> {
    let command = Command::new(&["true".to_string()], &BTreeMap::from([("PATH".into(), "/bin".into())]))
        .or_else(|_| Command::new(&["/proc/self/exe".to_string()], &BTreeMap::new()))?
        .cwd(cwd)?
        .namespaces(ns)?
        .privileges(ns.user, 0);
    let probing = std::thread::Builder::new().name("forkpool-probe".into()).spawn(move || {
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None).map_err(SpawnError::Resources)?;
        let (report_r, report_w) = pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Resources)?;
        let (user_maps, fs_ops, seccomp) = command.child_tables();
        let nul: [*const c_char; 1] = [std::ptr::null()];
        let mut plan = ChildPlan {
            program: command.program.as_ptr(),
            argv: nul.as_ptr(),
            envp: nul.as_ptr(),
            cwd: command.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            cgroup_procs: std::ptr::null(),
            cgroup_count: 0,
            cgroup_first: 0,
            rlimits: std::ptr::null(),
            rlimit_count: 0,
            ids: None,
            drop_capabilities: command.drop_capabilities,
            keep_caps: 0,
            cap_last: cap_last(),
            stdio: [0, 1, 2],
            ctty: -1,
            report: report_w.as_raw_fd(),
            server_pid: getpid().as_raw(),
            guardian: -1,
            announce: false,
            fd_limit: 1024,
            namespaces: command.namespaces,
            user_maps: user_maps.as_ptr(),
            user_map_count: user_maps.len(),
            fs_ops: fs_ops.as_ptr(),
            fs_op_count: fs_ops.len(),
            loopback: command.loopback,
            join_net: -1,
            seccomp: seccomp.map_or(std::ptr::null(), |p| p as *const libc::sock_fprog),
            init_exe: -1,
            init_report: -1,
            exit_signal: 0,
            probe: true,
            warm: false,
            warm_request: -1,
            warm_root: std::ptr::null(),
        };
        let mut stack = vec![0u8; CHILD_STACK_BYTES];
        let mut pid = 0;
        let child = clone_child(&mut plan, &mut stack, None, &mut pid).map_err(SpawnError::Resources)?;
        drop(report_w);
        let mut report = [0u8; 8];
        let read = nix::unistd::read(&report_r, &mut report);
        let mut status = 0;
        // SAFETY: `status` is a local; `child` is this thread's clone child, waited for only here.
        unsafe { libc::waitpid(child, &mut status, libc::__WCLONE) };
        match read {
            Ok(8) => {
                let step = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]) as usize;
                let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
                let step = STEPS.get(step).copied().unwrap_or("setup");
                Err(SpawnError::Exec { program: "probe".into(), step, errno: Errno::from_raw(errno) })
            }
            _ => Ok(()),
        }
    });
    probing.map_err(|_| SpawnError::Resources(Errno::EAGAIN))?.join().unwrap_or(Err(SpawnError::SpawnerGone))
}

/// Opens the init's executable for `execveat` (kept open: it is the one started with, even if the file is
/// replaced later): `forkpool-init` beside this executable, or this executable itself (which runs as the init
/// under that name).
fn open_own_executable() -> std::io::Result<OwnedFd> {
    let small = std::env::current_exe().map(|exe| exe.with_file_name(init::ARGV0));
    if let Ok(small) = small
        && access(&small, AccessFlags::X_OK).is_ok()
        && let Ok(file) = std::fs::File::open(&small)
    {
        return Ok(file.into());
    }
    Ok(std::fs::File::open("/proc/self/exe")?.into())
}

/// The spawner thread is the parent of record for `PR_SET_PDEATHSIG`: it must never exit.
fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// What a spawner thread hands every child of the server's own.
#[derive(Debug, Clone, Copy)]
struct Parent {
    /// The server's pid: the parent a child checks it still has.
    server_pid: libc::pid_t,
    /// The server's end of the guardian's socket, or -1.
    guardian_fd: std::os::fd::RawFd,
    /// Workers announce their session to the guardian.
    announce: bool,
    /// This executable, for a pid namespace's init, or -1.
    init_exe: std::os::fd::RawFd,
}

fn spawn_one(
    registry: &Arc<Registry>,
    stack: &mut [u8],
    Parent { server_pid, guardian_fd, announce, init_exe }: Parent,
    command: &Command,
    entry: WorkerEntry,
    ticket: &Arc<SpawnTicket>,
) -> Result<Started, SpawnError> {
    let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Resources);
    // The server's ends, and the worker's; a warm sandbox's init gets the job's later, and /dev/null now.
    let (io, child_ends, child_stdio, ctty) = if command.warm {
        let null = nix::fcntl::open(c"/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
            .map_err(SpawnError::Resources)?;
        let fd = null.as_raw_fd();
        (None, vec![null], [fd; 3], -1)
    } else {
        let (io, ends, stdio, ctty) = open_stdio(command.terminal, command.ids)?;
        (Some(io), ends, stdio, ctty)
    };
    let stdio_links = links(&child_ends);
    // A warm sandbox's request socket: the server's end, and its init's (fd 5 there).
    let request = command
        .warm
        .then(std::os::unix::net::UnixStream::pair)
        .transpose()
        .map_err(|e| SpawnError::Resources(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EMFILE))))?;
    let (report_r, report_w) = pipe()?;
    // Under an init (a pid namespace): its argv, and its report pipe, read by the reaper when it is reaped.
    let init_report = match &command.init_argv {
        Some(_) if init_exe < 0 => {
            return Err(SpawnError::Exec {
                program: command.display.clone(),
                step: "open /proc/self/exe",
                errno: Errno::ENOENT,
            });
        }
        Some(_) => Some(pipe()?),
        None => None,
    };
    let (init_report_read, init_report) = match init_report {
        Some((read, write)) => (Some(read), Some(write)),
        None => (None, None),
    };
    let nul = std::iter::once(std::ptr::null());
    let argv: Vec<*const c_char> =
        command.init_argv.as_ref().unwrap_or(&command.argv).iter().map(|a| a.as_ptr()).chain(nul.clone()).collect();
    let (user_maps, fs_ops, seccomp) = command.child_tables();
    // Under an init, nothing of the job's environment (it is in the init's argv).
    let envp: Vec<*const c_char> = if command.init_argv.is_some() {
        vec![std::ptr::null()]
    } else {
        command.envp.iter().map(|e| e.as_ptr()).chain(nul).collect()
    };
    let cgroup_procs: Vec<*const c_char> = command.cgroup_procs.iter().map(|p| p.as_ptr()).collect();
    // Read here, before the child lowers RLIMIT_NOFILE for the job: the slow fd-closing fallback must reach
    // every fd the server may have, not only those below the job's limit.
    let fd_limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(65_536, |(soft, _)| soft.min(1 << 20));
    let mut plan = ChildPlan {
        program: command.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: command.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        cgroup_procs: cgroup_procs.as_ptr(),
        cgroup_count: cgroup_procs.len(),
        cgroup_first: 0,
        rlimits: command.rlimits.as_ptr(),
        rlimit_count: command.rlimits.len(),
        ids: command.ids,
        drop_capabilities: command.drop_capabilities,
        keep_caps: command.keep_caps,
        cap_last: cap_last(),
        stdio: child_stdio,
        ctty,
        report: report_w.as_raw_fd(),
        server_pid,
        guardian: guardian_fd,
        announce,
        fd_limit: libc::c_int::try_from(fd_limit).unwrap_or(libc::c_int::MAX),
        namespaces: command.namespaces,
        user_maps: user_maps.as_ptr(),
        user_map_count: user_maps.len(),
        fs_ops: fs_ops.as_ptr(),
        fs_op_count: fs_ops.len(),
        loopback: command.loopback,
        join_net: command.join_net.as_ref().map_or(-1, AsRawFd::as_raw_fd),
        seccomp: seccomp.map_or(std::ptr::null(), |p| p as *const libc::sock_fprog),
        init_exe: if init_report.is_some() { init_exe } else { -1 },
        init_report: init_report.as_ref().map_or(-1, AsRawFd::as_raw_fd),
        exit_signal: libc::SIGCHLD,
        probe: false,
        warm: command.warm,
        warm_request: request.as_ref().map_or(-1, |(_, init)| init.as_raw_fd()),
        warm_root: command.warm_root.as_ref().map_or(std::ptr::null(), |(c, _)| c.as_ptr()),
    };
    // The v2 cgroup directory, for clone3's CLONE_INTO_CGROUP.
    let cgroup_dir = match &command.cgroup_dir {
        Some(dir) => Some(
            nix::fcntl::open(
                dir.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(SpawnError::Resources)?,
        ),
        None => None,
    };
    // The registry lock is not held across the clone, which lasts until the child execs (and an exec can
    // hang): the kernel writes the child's pid into the ticket before the child runs, and the reaper leaves a
    // pid that is in flight alone until `finish_spawn` has registered it.
    if !registry.begin_spawn(ticket) {
        return Err(SpawnError::Cancelled);
    }
    let cloned = clone_child(&mut plan, stack, cgroup_dir.as_ref().map(AsRawFd::as_raw_fd), ticket.pid_ptr());
    let registration = registry.finish_spawn(ticket, cloned, entry).map_err(SpawnError::Resources)?;
    let pid = registration.worker();
    drop(cgroup_dir);
    // Our copies of the child's ends must close, or EOF would never come.
    drop((child_ends, report_w, init_report));
    if let Some((request, init_end)) = request {
        drop(init_end);
        // The child has exec'd the init (or exited: CLONE_VFORK), and a failure wrote its report before
        // exiting; the init keeps the pipe open until its program execs, so there is no EOF to wait for.
        rustix::io::ioctl_fionbio(&report_r, true)
            .map_err(|e| SpawnError::Resources(Errno::from_raw(e.raw_os_error())))?;
        let mut report = [0u8; 8];
        return match nix::unistd::read(&report_r, &mut report) {
            Err(Errno::EAGAIN) => {
                let root = command.warm_root.as_ref().map(|(_, p)| p.clone()).unwrap_or_default();
                let init_report = init_report_read;
                Ok(Started::Warm(Staged { pid, registration, request, report: report_r, root, init_report }))
            }
            other => {
                drop(registration);
                Err(report_error(&command.display, other, &report))
            }
        };
    }
    let mut report = [0u8; 8];
    let read = loop {
        match nix::unistd::read(&report_r, &mut report) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    match read {
        Ok(0) => {
            let io = io.ok_or(SpawnError::Cancelled)?;
            Ok(Started::Running(Spawned { pid, io, stdio_links, registration, init_report: init_report_read }))
        }
        other => {
            // The child has exited (the reaper collects it); it is not a job any more.
            drop(registration);
            Err(report_error(&command.display, other, &report))
        }
    }
}

/// The error a child's (or an init's) report pipe gave: 8 bytes of step and errno, or a short read.
fn report_error(program: &str, read: Result<usize, Errno>, report: &[u8; 8]) -> SpawnError {
    let (step, errno) = match read {
        Ok(8) => {
            let step = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
            let errno = Errno::from_raw(i32::from_ne_bytes([report[4], report[5], report[6], report[7]]));
            // The init could not fork the program: the OS refused a process, as a clone here would; or a step
            // ran out of fds: the OS refused an fd, as a pipe here would.
            if step == child::FORK_STEP || matches!(errno, Errno::EMFILE | Errno::ENFILE) {
                return SpawnError::Resources(errno);
            }
            (STEPS.get(step as usize).copied().unwrap_or("setup"), errno)
        }
        Ok(0) => ("exec forkpool's init", Errno::EIO),
        Ok(_) => ("setup", Errno::EIO),
        Err(e) => ("read the exec report", e),
    };
    SpawnError::Exec { program: program.to_string(), step, errno }
}

/// The server's ends of a job's stdio, the job's (to be closed here once the job has them), the job's as fds
/// 0-2, and its controlling terminal (-1 for pipes).
type Stdio = (WorkerIo, Vec<OwnedFd>, [std::os::fd::RawFd; 3], std::os::fd::RawFd);

/// Opens a job's stdio: three pipes, or a pty whose slave is all three; owned by the job's user.
fn open_stdio(terminal: Option<TerminalSpec>, ids: Option<(u32, u32)>) -> Result<Stdio, SpawnError> {
    let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Resources);
    match terminal {
        None => {
            let (stdin_r, stdin_w) = pipe()?;
            let (stdout_r, stdout_w) = pipe()?;
            let (stderr_r, stderr_w) = pipe()?;
            for output in [&stdout_r, &stderr_r] {
                // Room for the job to run ahead while a chunk is on its way to the client (pages are only used
                // when filled). Best effort: the system limit may be lower.
                let _ = nix::fcntl::fcntl(output, nix::fcntl::FcntlArg::F_SETPIPE_SZ(OUTPUT_PIPE_BYTES));
            }
            // The job's ends belong to the job's user, as a terminal would: pipes are 0600, and a job reopening
            // its stdio by name (`/dev/stderr`, `/proc/self/fd/1`) must be allowed to.
            if let Some((uid, gid)) = ids {
                for end in [&stdin_r, &stdout_w, &stderr_w] {
                    nix::unistd::fchown(end, Some(uid.into()), Some(gid.into())).map_err(SpawnError::Resources)?;
                }
            }
            let io = WorkerIo::Pipes { stdin: stdin_w, stdout: stdout_r, stderr: stderr_r };
            let stdio = [stdin_r.as_raw_fd(), stdout_w.as_raw_fd(), stderr_w.as_raw_fd()];
            Ok((io, vec![stdin_r, stdout_w, stderr_w], stdio, -1))
        }
        Some(spec) => {
            let pair = pty::open(spec, ids.map(|(uid, _)| uid)).map_err(SpawnError::Terminal)?;
            let slave = pair.slave.as_raw_fd();
            Ok((WorkerIo::Terminal { master: pair.master }, vec![pair.slave], [slave; 3], slave))
        }
    }
}

/// What `/proc/self/fd` says the job's ends are (`pipe:[INODE]`, `/dev/pts/N`).
fn links(ends: &[OwnedFd]) -> Vec<String> {
    ends.iter()
        .filter_map(|fd| std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok())
        .filter_map(|link| link.to_str().map(String::from))
        .collect()
}

/// What a spawner thread made: a running worker, or a warm sandbox waiting for its job.
#[derive(Debug)]
enum Started {
    Running(Spawned),
    Warm(Staged),
}

/// A warm sandbox: forkpool's init, in the namespaces, mounts and cgroup of a job to come, waiting on its
/// request socket (see [`init::warm`]). [`Staged::start`] hands it a job.
#[derive(Debug)]
pub(crate) struct Staged {
    /// The init's pid.
    pub(crate) pid: i32,
    registration: Registration,
    request: std::os::unix::net::UnixStream,
    /// The spawn's report pipe (non-blocking): the job's set-up failure, or EOF once its program has exec'd.
    report: OwnedFd,
    /// The directory of job directories, as the init reaches it.
    root: PathBuf,
    /// The read end of the init's report pipe.
    init_report: Option<OwnedFd>,
}

impl Staged {
    /// Hands `command` (a job of this sandbox's shape) to the init, and returns once its program has exec'd
    /// (or the set-up failed). `command`'s namespaces and mounts are the sandbox's already; the rest (terminal,
    /// directory, limits, privileges, user, seccomp, stdio) the init applies now.
    pub(crate) async fn start(self, command: &Command) -> Result<Spawned, SpawnError> {
        let Staged { pid, registration, request, report, root, init_report } = self;
        let (io, child_ends, _, _) = open_stdio(command.terminal, command.ids)?;
        let stdio_links = links(&child_ends);
        let cwd = command.cwd_path.as_deref().unwrap_or(Path::new("/"));
        let directory =
            nix::fcntl::open(cwd, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
                .map_err(SpawnError::Resources)?;
        let mut body = Vec::new();
        let mut push = |bytes: &[u8]| {
            body.extend_from_slice(bytes);
            body.push(0);
        };
        push(cwd.as_os_str().as_encoded_bytes());
        push(cwd.strip_prefix(&root).map_or(&[][..], |p| p.as_os_str().as_encoded_bytes()));
        push(command.program.as_bytes());
        push(command.argv.len().to_string().as_bytes());
        for arg in &command.argv {
            push(arg.as_bytes());
        }
        push(command.envp.len().to_string().as_bytes());
        for entry in &command.envp {
            push(entry.as_bytes());
        }
        push(command.rlimits.len().to_string().as_bytes());
        for (resource, value) in &command.rlimits {
            push(format!("{resource} {value}").as_bytes());
        }
        let filter: &[u8] = match command.seccomp.then(seccomp::filter).flatten() {
            // SAFETY: the program's `len` instructions are a live, never-written static array.
            Some(program) => unsafe {
                std::slice::from_raw_parts(
                    program.filter.cast::<u8>(),
                    program.len as usize * std::mem::size_of::<libc::sock_filter>(),
                )
            },
            None => &[],
        };
        let mut flags = 0;
        if command.terminal.is_some() {
            flags |= init::warm::TERMINAL;
        }
        if command.drop_capabilities {
            flags |= init::warm::DROP_CAPABILITIES;
        }
        if command.bind_cwd {
            flags |= init::warm::BIND_CWD;
        }
        if command.read_only_root {
            flags |= init::warm::READ_ONLY_ROOT;
        }
        if command.ids.is_some() {
            flags |= init::warm::SWITCH_USER;
        }
        let (uid, gid) = command.ids.unwrap_or((u32::MAX, u32::MAX));
        let header = init::warm::Header {
            body_len: u32::try_from(body.len())
                .map_err(|_| SpawnError::InvalidCommand("argv and env too large".into()))?,
            filter_len: filter.len() as u32,
            flags,
            uid,
            gid,
            cap_last: u32::try_from(cap_last()).unwrap_or(63),
            keep_caps: command.keep_caps,
        };
        let mut fds = vec![directory.as_raw_fd()];
        fds.extend(child_ends.iter().map(AsRawFd::as_raw_fd).take(if command.terminal.is_some() { 1 } else { 3 }));
        let io_error =
            |e: std::io::Error| SpawnError::Resources(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EPIPE)));
        request.set_nonblocking(true).map_err(io_error)?;
        // A fresh socket's buffer always holds the header (with its fds); the rest is written as the init reads
        // it, without holding a runtime thread.
        send_with_fds(&request, &header, &fds).map_err(SpawnError::Resources)?;
        let mut stream = tokio::net::UnixStream::from_std(request).map_err(io_error)?;
        let written = async {
            tokio::io::AsyncWriteExt::write_all(&mut stream, &body).await?;
            tokio::io::AsyncWriteExt::write_all(&mut stream, filter).await
        };
        // An init that gave up (it reports why on the report pipe) closes its end: its report is the error.
        let written = written.await;
        // The job's ends are the init's now (received with the message).
        drop((child_ends, directory));
        let report =
            watch(report).map_err(|e| SpawnError::Resources(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
        let mut buf = [0u8; 8];
        let mut got = 0;
        let read = loop {
            let mut ready = report
                .readable()
                .await
                .map_err(|e| SpawnError::Resources(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
            match ready.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf[got..]).map_err(std::io::Error::from)) {
                Ok(Ok(0)) => break Ok(got),
                Ok(Ok(n)) => {
                    got += n;
                    if got == buf.len() {
                        break Ok(got);
                    }
                }
                Ok(Err(e)) => break Err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
                Err(_would_block) => {}
            }
        };
        drop(stream);
        match (read, written) {
            (Ok(0), Ok(())) => Ok(Spawned { pid, io, stdio_links, registration, init_report }),
            (Ok(0), Err(e)) => Err(io_error(e)),
            (other, _) => Err(report_error(&command.display, other, &buf)),
        }
    }
}

/// Sends `header` with `fds` attached (`SCM_RIGHTS`) on `socket`, in one `sendmsg`.
fn send_with_fds(
    socket: &std::os::unix::net::UnixStream,
    header: &init::warm::Header,
    fds: &[std::os::fd::RawFd],
) -> Result<(), Errno> {
    let space = unsafe_cmsg_space(std::mem::size_of_val(fds));
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: the iovec points at `header` (alive for the call); the control buffer is zeroed, 8-byte aligned
    // and CMSG_SPACE long for the fds, and the one cmsg written into it stays within it.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: (header as *const init::warm::Header).cast_mut().cast(),
            iov_len: std::mem::size_of::<init::warm::Header>(),
        };
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(&message);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
        loop {
            let sent = libc::sendmsg(socket.as_raw_fd(), &message, libc::MSG_NOSIGNAL);
            if sent == std::mem::size_of::<init::warm::Header>() as isize {
                return Ok(());
            }
            if sent < 0 && Errno::last() == Errno::EINTR {
                continue;
            }
            return Err(if sent < 0 { Errno::last() } else { Errno::EPROTO });
        }
    }
}

/// `CMSG_SPACE(bytes)`.
fn unsafe_cmsg_space(bytes: usize) -> usize {
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    unsafe { libc::CMSG_SPACE(bytes as u32) as usize }
}
