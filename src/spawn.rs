//! The spawner: the one place where worker processes are created, and the only fork-time unsafe code.
//!
//! # Design
//! - **One long-lived spawner thread.** `PR_SET_PDEATHSIG` fires when the *thread* that created the child
//!   exits, not the process. Tokio's blocking threads exit after idling, which would kill healthy long jobs;
//!   this thread never exits (it parks forever if the server drops its handle), so a worker's death signal
//!   means exactly "the server died".
//! - **All signals blocked in that thread, forever.** A child starts with its creator's signal mask, so no
//!   signal can run a handler inherited from the server (tokio's handler writes into the server's own
//!   signal pipe: a worker SIGTERMed before exec would otherwise shut the server down). The child resets
//!   every disposition to the default first, and only then unblocks.
//! - **`clone(CLONE_VM | CLONE_VFORK)`**, posix_spawn style: no page tables are copied, so spawning costs
//!   the same whatever the server's size. The parent thread is suspended until the child execs or exits;
//!   the child runs on a dedicated stack and only makes async-signal-safe calls on memory prepared before
//!   the clone: it allocates nothing, takes no lock and cannot panic.
//! - **Exec errors come back through a close-on-exec pipe**: an empty read means the exec happened.
//! - **Registration before reaping**: the clone runs inside [`Registry::spawn_registered`], so the reaper
//!   cannot collect a worker that exits at once before its pid is recorded.

use std::collections::BTreeMap;
use std::ffi::{CString, c_char};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::unistd::{AccessFlags, access, getpid, pipe2};
use tokio::sync::oneshot;
use tracing::error;

use crate::kill;
use crate::reaper::{Registry, WorkerEntry};

/// Capacity asked for the stdout and stderr pipes.
const OUTPUT_PIPE_BYTES: libc::c_int = 1 << 20;

/// Stack for the child between clone and exec. It runs a handful of small frames.
const CHILD_STACK_BYTES: usize = 64 * 1024;

/// What to execute, with every string converted before the clone (the child must not allocate).
#[derive(Debug)]
pub struct Command {
    display: String,
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: Option<CString>,
    cgroup_dir: Option<CString>,
    cgroup_procs: Vec<CString>,
    rlimits: Vec<(libc::c_int, u64)>,
    ids: Option<(u32, u32)>,
}

impl Command {
    /// Builds a command from an argv and a complete environment. `argv[0]` is looked up in the
    /// environment's `PATH` unless it contains a `/`; a program that is not found is an exec error.
    pub fn new(argv: &[String], env: &BTreeMap<String, String>) -> Result<Command, SpawnError> {
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
            cgroup_dir: None,
            cgroup_procs: Vec::new(),
            rlimits: Vec::new(),
            ids: None,
        })
    }

    /// Runs the worker in `dir`.
    pub fn cwd(mut self, dir: &Path) -> Result<Self, SpawnError> {
        self.cwd = Some(path_cstring(dir)?);
        Ok(self)
    }

    /// Creates the worker directly in the cgroup v2 directory `dir` (`clone3` with `CLONE_INTO_CGROUP`),
    /// or, where that is not supported, makes it write itself into `dir/cgroup.procs` before exec.
    pub fn cgroup(mut self, dir: Option<&Path>) -> Result<Self, SpawnError> {
        self.cgroup_dir = dir.map(path_cstring).transpose()?;
        if let Some(dir) = dir {
            self.cgroup_procs.insert(0, path_cstring(&dir.join("cgroup.procs"))?);
        }
        Ok(self)
    }

    /// Makes the worker join these extra cgroups (their `cgroup.procs` files, e.g. v1 hierarchies) before
    /// exec.
    pub fn join_cgroups(mut self, procs_files: &[PathBuf]) -> Result<Self, SpawnError> {
        for file in procs_files {
            self.cgroup_procs.push(path_cstring(file)?);
        }
        Ok(self)
    }

    /// Sets these rlimits `(resource, value)` (soft and hard) before exec.
    pub fn rlimits(mut self, rlimits: Vec<(libc::c_int, u64)>) -> Self {
        self.rlimits = rlimits;
        self
    }

    /// Runs the worker as `(uid, gid)`, with no supplementary groups.
    pub fn user(mut self, ids: Option<(u32, u32)>) -> Self {
        self.ids = ids;
        self
    }
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

/// A running worker and the server's ends of its stdio pipes.
#[derive(Debug)]
pub struct Spawned {
    /// The worker's pid, which is also its session and process group id.
    pub pid: i32,
    /// Write end of the worker's stdin.
    pub stdin: OwnedFd,
    /// Read end of the worker's stdout.
    pub stdout: OwnedFd,
    /// Read end of the worker's stderr.
    pub stderr: OwnedFd,
}

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
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
    /// The argv or environment cannot be passed to exec.
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// The spawner thread is gone (only while the process is exiting).
    #[error("the spawner thread is gone")]
    SpawnerGone,
}

struct Request {
    command: Command,
    entry: WorkerEntry,
    reply: oneshot::Sender<Result<Spawned, SpawnError>>,
}

/// Handle to the spawner thread.
#[derive(Debug, Clone)]
pub struct Spawner {
    requests: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("command", &self.command.display).finish()
    }
}

impl Spawner {
    /// Starts the spawner thread. Call once per process, after the reaper listens for SIGCHLD.
    pub fn start(registry: Arc<Registry>) -> std::io::Result<Spawner> {
        let (requests, incoming) = mpsc::channel::<Request>();
        std::thread::Builder::new().name("forkpool-spawner".into()).spawn(move || {
            if let Err(e) = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None) {
                // Without the mask the seed bug is possible: refuse to spawn at all.
                error!(error = %e, "cannot block signals in the spawner thread; no job can run");
                park_forever();
            }
            let mut stack = vec![0u8; CHILD_STACK_BYTES];
            let server_pid = getpid().as_raw();
            while let Ok(Request { command, entry, reply }) = incoming.recv() {
                let result = spawn_one(&registry, &mut stack, server_pid, &command, entry);
                if let Err(Ok(orphaned)) = reply.send(result) {
                    // The job went away during the spawn: nobody would ever end this worker.
                    registry.with_live_worker(orphaned.pid, |pid| kill::signal_group(pid, Signal::SIGKILL));
                }
            }
            park_forever()
        })?;
        Ok(Spawner { requests })
    }

    /// Starts a worker for `command`, registered with the reaper through `entry`.
    pub async fn spawn(&self, command: Command, entry: WorkerEntry) -> Result<Spawned, SpawnError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request { command, entry, reply }).map_err(|_| SpawnError::SpawnerGone)?;
        answer.await.map_err(|_| SpawnError::SpawnerGone)?
    }
}

/// The spawner thread is the parent of record for `PR_SET_PDEATHSIG`: it must never exit.
fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// Everything the child needs, as raw pointers into memory the spawner thread keeps alive (and does not
/// touch) until the child has exec'd or exited.
#[derive(Clone, Copy)]
#[repr(C)]
struct ChildPlan {
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    cgroup_procs: *const *const c_char,
    cgroup_count: usize,
    /// Index of the first procs file the child must write (1 when `clone3` already placed it in the v2
    /// cgroup, which is the first).
    cgroup_first: usize,
    rlimits: *const (libc::c_int, u64),
    rlimit_count: usize,
    ids: Option<(u32, u32)>,
    stdio: [RawFd; 3],
    report: RawFd,
    server_pid: libc::pid_t,
}

/// The setup steps in the child, in order; a failure reports its index.
const STEPS: [&str; 10] = [
    "setsid",
    "set the parent-death signal",
    "check the parent",
    "join the job's cgroup",
    "set resource limits",
    "change to the working directory",
    "switch user",
    "set up stdio",
    "close fds",
    "exec",
];

fn spawn_one(
    registry: &Registry,
    stack: &mut [u8],
    server_pid: libc::pid_t,
    command: &Command,
    entry: WorkerEntry,
) -> Result<Spawned, SpawnError> {
    let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Resources);
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    for output in [&stdout_r, &stderr_r] {
        // Room for the job to run ahead while a chunk is on its way to the client (pages are only used
        // when filled). Best effort: the system limit may be lower.
        let _ = nix::fcntl::fcntl(output, nix::fcntl::FcntlArg::F_SETPIPE_SZ(OUTPUT_PIPE_BYTES));
    }
    let (report_r, report_w) = pipe()?;
    let nul = std::iter::once(std::ptr::null());
    let argv: Vec<*const c_char> = command.argv.iter().map(|a| a.as_ptr()).chain(nul.clone()).collect();
    let envp: Vec<*const c_char> = command.envp.iter().map(|e| e.as_ptr()).chain(nul).collect();
    let cgroup_procs: Vec<*const c_char> = command.cgroup_procs.iter().map(|p| p.as_ptr()).collect();
    let plan = ChildPlan {
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
        stdio: [stdin_r.as_raw_fd(), stdout_w.as_raw_fd(), stderr_w.as_raw_fd()],
        report: report_w.as_raw_fd(),
        server_pid,
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
    let pid = registry.spawn_registered(entry, || {
        if let Some(dir) = &cgroup_dir {
            let mut plan = plan;
            plan.cgroup_first = 1;
            match clone_into_cgroup(&plan, stack, dir.as_raw_fd()) {
                Err(Errno::ENOSYS | Errno::EINVAL | Errno::E2BIG | Errno::EOPNOTSUPP) => {}
                other => return other.map_err(SpawnError::Resources),
            }
        }
        // SAFETY: `child_main` runs in the child, which shares our memory (CLONE_VM) while this thread is
        // suspended (CLONE_VFORK) until it execs or exits; everything `plan` points to lives in this frame,
        // which outlives the clone. All signals are blocked in this thread, so the child starts with every
        // signal blocked and no inherited handler can run. `child_main` only makes async-signal-safe calls,
        // allocates nothing and never returns.
        let child = Box::new(move || -> isize { unsafe { child_main(plan) } });
        let flags = CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK;
        unsafe { nix::sched::clone(child, stack, flags, Some(libc::SIGCHLD)) }
            .map(|pid| pid.as_raw())
            .map_err(SpawnError::Resources)
    })?;
    drop(cgroup_dir);
    // Our copies of the child's ends must close, or EOF would never come.
    drop((stdin_r, stdout_w, stderr_w, report_w));
    let mut report = [0u8; 8];
    let read = loop {
        match nix::unistd::read(&report_r, &mut report) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    match read {
        Ok(0) => Ok(Spawned { pid, stdin: stdin_w, stdout: stdout_r, stderr: stderr_r }),
        other => {
            // The child has exited (the reaper collects it); it is not a job any more.
            registry.forget_job(pid, None);
            let (step, errno) = match other {
                Ok(8) => {
                    let step = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]) as usize;
                    let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
                    (STEPS.get(step).copied().unwrap_or("setup"), Errno::from_raw(errno))
                }
                Ok(_) => ("setup", Errno::EIO),
                Err(e) => ("read the exec report", e),
            };
            Err(SpawnError::Exec { program: command.display.clone(), step, errno })
        }
    }
}

/// The kernel's `struct clone_args` (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Creates the child with `clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP)`: born inside its cgroup, so
/// no migration (which waits for an RCU grace period, about 1 ms) is needed. Returns the child's pid, or the
/// error (`ENOSYS` etc. where clone3 or the flag is not supported: the caller falls back to `clone`).
#[cfg(target_arch = "x86_64")]
fn clone_into_cgroup(plan: &ChildPlan, stack: &mut [u8], cgroup_fd: RawFd) -> Result<i32, Errno> {
    /// Runs on the child's own stack; never returns.
    extern "C" fn entry(plan: *const ChildPlan) -> ! {
        // SAFETY: `plan` points into the suspended parent's frame (CLONE_VFORK); see `child_main`.
        unsafe { child_main(*plan) }
    }
    // The kernel starts the child with its stack pointer at stack + stack_size: keep that 16-byte aligned.
    let base = stack.as_mut_ptr() as usize;
    let aligned = (base + 15) & !15;
    let size = (stack.len() - (aligned - base)) & !15;
    let mut args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        stack: aligned as u64,
        stack_size: size as u64,
        cgroup: cgroup_fd as u64,
        ..CloneArgs::default()
    };
    let ret: i64;
    // SAFETY: the raw clone3 syscall. In the parent it returns the pid (or -errno) like any syscall; the
    // child starts at the next instruction with rax = 0 on the new stack and, sharing our registers, finds
    // `plan` in r12 and `entry` in r13, clears the frame pointer and calls `entry`, which never returns.
    // The parent is suspended until the child execs or exits (CLONE_VFORK), so `plan`, `args` and the stack
    // stay valid and untouched for the child's whole life before exec. rcx and r11 are clobbered by
    // `syscall`.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") &mut args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") plan as *const ChildPlan,
            in("r13") entry as extern "C" fn(*const ChildPlan) -> !,
            out("rcx") _,
            out("r11") _,
        );
    }
    if ret < 0 { Err(Errno::from_raw(-ret as i32)) } else { Ok(ret as i32) }
}

/// Elsewhere, `clone3` is not used: the child writes itself into its cgroup.
#[cfg(not(target_arch = "x86_64"))]
fn clone_into_cgroup(_: &ChildPlan, _: &mut [u8], _: RawFd) -> Result<i32, Errno> {
    Err(Errno::ENOSYS)
}

/// The child, between clone and exec.
///
/// # Safety
/// Only to be run as the entry of a `CLONE_VM | CLONE_VFORK` child whose `plan` pointers are valid. Every
/// call below is async-signal-safe (rt_sigaction, setsid, prctl, getppid, open, write, close, setrlimit,
/// chdir, setgroups/setresgid/setresuid as raw syscalls, dup2, fcntl, close_range, sigprocmask, execve,
/// _exit) and no memory is allocated or shared state written, except `errno`,
/// which lives in the suspended parent thread's TLS and is not read by it before it is set again.
unsafe fn child_main(plan: ChildPlan) -> ! {
    // SAFETY (whole body): see the function's contract.
    unsafe {
        // 1. Default dispositions for every signal: handlers belong to the server, and SIG_IGN (Rust ignores
        //    SIGPIPE; a supervisor may ignore others) would be inherited across exec. All signals are still
        //    blocked.
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                reset_signal(sig);
            }
        }
        // 2. Own session and process group: nothing the job does to its group can reach the server.
        if libc::setsid() < 0 {
            fail(plan.report, 0);
        }
        // 3. Die when the server (the spawner thread) dies; if it already has, we were reparented: exit.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) < 0 {
            fail(plan.report, 1);
        }
        if libc::getppid() != plan.server_pid {
            *libc::__errno_location() = libc::ESRCH;
            fail(plan.report, 2);
        }
        // 4. Join the job's cgroup(s) before anything else can be started, so nothing escapes them.
        for i in plan.cgroup_first..plan.cgroup_count {
            let fd = libc::open(*plan.cgroup_procs.add(i), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                fail(plan.report, 3);
            }
            libc::close(fd);
        }
        // 5. Resource limits, soft = hard, so the job cannot raise them.
        for i in 0..plan.rlimit_count {
            let (resource, value) = *plan.rlimits.add(i);
            let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
            if libc::setrlimit(resource as libc::__rlimit_resource_t, &limit) < 0 {
                fail(plan.report, 4);
            }
        }
        // 6. Working directory.
        if !plan.cwd.is_null() && libc::chdir(plan.cwd) < 0 {
            fail(plan.report, 5);
        }
        // 7. Drop privileges with raw syscalls: the C library's set*id wrappers would try to signal every
        //    thread of the (shared-memory) parent.
        if let Some((uid, gid)) = plan.ids {
            let groups = [gid];
            if libc::syscall(libc::SYS_setgroups, 1usize, groups.as_ptr()) < 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) < 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) < 0
            {
                fail(plan.report, 6);
            }
        }
        // 8. stdin/stdout/stderr from the pipes. dup2 clears close-on-exec on the copy.
        for (target, fd) in (0..).zip(plan.stdio) {
            let ok = if fd == target { libc::fcntl(fd, libc::F_SETFD, 0) >= 0 } else { libc::dup2(fd, target) >= 0 };
            if !ok {
                fail(plan.report, 7);
            }
        }
        // 9. No other fd survives exec. Marking them close-on-exec (rather than closing) keeps the report
        //    pipe usable until the exec itself closes it.
        let marked =
            libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC);
        if marked < 0 && !close_fds_slowly(plan.report) {
            fail(plan.report, 8);
        }
        // 10. Unblock everything (dispositions are all default now) and exec.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(plan.program, plan.argv, plan.envp);
        fail(plan.report, 9)
    }
}

/// Sets `sig` to its default disposition with the raw syscall: the C library's `sigaction` refuses the
/// signals it reserves (32 and 33 in glibc), yet an ignored one would still be inherited across exec.
///
/// # Safety
/// Same contract as [`child_main`].
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
unsafe fn reset_signal(sig: libc::c_int) {
    /// The kernel's `struct sigaction` on these architectures (not the C library's).
    #[repr(C)]
    struct KernelSigaction {
        handler: libc::sighandler_t,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
    // SAFETY: rt_sigaction is async-signal-safe; `default` is a local of the kernel's layout and the size
    // argument is the kernel's sigset size (8 bytes).
    unsafe {
        libc::syscall(libc::SYS_rt_sigaction, sig, &default as *const KernelSigaction, std::ptr::null::<u8>(), 8usize);
    }
}

/// See the other `reset_signal`; elsewhere the C library's `sigaction` is used.
///
/// # Safety
/// Same contract as [`child_main`].
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn reset_signal(sig: libc::c_int) {
    // SAFETY: sigaction is async-signal-safe; `default` is a local.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &default, std::ptr::null_mut());
    }
}

/// Fallback for kernels without `close_range` (< 5.11): closes every fd from 3 up to the fd limit except
/// the report pipe, which is close-on-exec already.
///
/// # Safety
/// Same contract as [`child_main`].
unsafe fn close_fds_slowly(keep: RawFd) -> bool {
    // SAFETY: getrlimit and close are async-signal-safe; `limit` is a local.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) < 0 {
            return false;
        }
        let max = RawFd::try_from(limit.rlim_cur).unwrap_or(RawFd::MAX);
        for fd in 3..max {
            if fd != keep {
                libc::close(fd);
            }
        }
        true
    }
}

/// Reports `(step, errno)` on the report pipe and exits. No allocation, no panic path.
///
/// # Safety
/// Same contract as [`child_main`].
unsafe fn fail(report: RawFd, step: u32) -> ! {
    // SAFETY: reading errno, write and _exit are async-signal-safe; `buf` is a local.
    unsafe {
        let errno = *libc::__errno_location();
        let s = step.to_ne_bytes();
        let e = errno.to_ne_bytes();
        let buf = [s[0], s[1], s[2], s[3], e[0], e[1], e[2], e[3]];
        libc::write(report, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}
