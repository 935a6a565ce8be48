//! forkpool's init: PID 1 of a job's pid namespace, never the job itself (a shell as PID 1 ignores SIGTERM).
//!
//! The worker's child side execs the server's own executable as `forkpool-init PROGRAM ARGV...` (the
//! environment is the job's), with every signal blocked, after the whole set-up (cgroup, limits, mounts,
//! user, seccomp). The init then:
//! - starts the program in a process group of its own (the terminal's foreground group, for a terminal
//!   job), reporting a failed exec on the spawn's report pipe (fd 4) exactly as a worker without init would;
//! - forwards every signal the server sends it (TERM, INT, HUP, QUIT, USR1, USR2, WINCH, CONT, ...) to that
//!   group;
//! - reaps everything reparented to it, as the server's reaper does outside;
//! - when the program exits, kills whatever is left in the namespace, reaps it, writes the program's wait
//!   status and every orphan it reaped (pid in the namespace, name, status) on its report pipe (fd 3), and
//!   exits with the program's code (128+N for a signal: PID 1 cannot die of its own signals).
//!
//! If the init dies (SIGKILL from the server, or the server's death through the parent-death signal), the
//! kernel kills everything in its namespace: no process of the job can outlive it.
//!
//! It is a separate process image, single-threaded: ordinary Rust is fine until the `fork`, and the child
//! between `fork` and `exec` only makes async-signal-safe calls on memory prepared before it. This file is
//! also the whole of the small `forkpool-init` executable (`src/bin/forkpool-init.rs`), which execs in a
//! fraction of the server's time: it depends on nothing but `std` and `libc`.

use std::ffi::{CString, OsString};
use std::fmt::Write as _;
use std::os::unix::ffi::OsStringExt;

/// `argv[0]` of the init, and the name of its own small executable, installed beside `forkpool` (the server
/// execs itself under this name where that is missing).
pub const ARGV0: &str = "forkpool-init";

/// The fd the init writes its report on.
pub(crate) const INIT_REPORT_FD: libc::c_int = 3;
/// The spawn's report pipe, kept open through the init until the program's own exec.
pub(crate) const INIT_SPAWN_REPORT_FD: libc::c_int = 4;
/// Index of "exec" in the worker's set-up steps: what the init reports when the program's own exec fails.
pub(crate) const EXEC_STEP: u32 = 15;
/// Index of the init's fork of the program in the worker's set-up steps: the OS refused a process.
pub(crate) const FORK_STEP: u32 = 17;
/// Indices of the steps a warm sandbox's init does at hand-off (see [`warm`]).
pub(crate) const CTTY_STEP: u32 = 1;
pub(crate) const RLIMIT_STEP: u32 = 6;
pub(crate) const CWD_STEP: u32 = 7;
pub(crate) const MOUNT_STEP: u32 = 8;
pub(crate) const PRIVILEGES_STEP: u32 = 10;
pub(crate) const USER_STEP: u32 = 11;
pub(crate) const STDIO_STEP: u32 = 12;
pub(crate) const SECCOMP_STEP: u32 = 14;
/// The init of a warm sandbox gets its job on this fd (a unix socket).
pub(crate) const WARM_REQUEST_FD: libc::c_int = 5;
/// A warm sandbox's init reaches the server's job directories through this fd (opened before its private
/// /tmp covered them).
pub(crate) const WARM_ROOT_FD: libc::c_int = 6;
/// The argument before the job's environment (a count, then the entries) in a cold init's argv.
pub(crate) const ENV_FLAG: &str = "--env";
/// The argument that makes the init a warm sandbox's.
pub(crate) const WARM_FLAG: &str = "--warm";
/// After [`WARM_FLAG`]: empty the capability bounding set while waiting (every job this sandbox may get keeps
/// none), not at the hand-off (one `prctl` per capability, each making new credentials: 40-odd calls).
pub(crate) const EMPTY_BOUNDING_FLAG: &str = "--empty-bounding-set";

/// Most orphans listed in the report (more are counted).
const MAX_REPORTED_ORPHANS: usize = 1000;

/// The init's `main`: never returns. Anywhere but as PID 1 of a pid namespace it does nothing: its last act,
/// `kill(-1, SIGKILL)`, would reach every process the caller may signal.
pub fn main(args: Vec<OsString>) -> ! {
    if std::process::id() != 1 {
        eprintln!("{ARGV0}: forkpool runs this as PID 1 of a job's pid namespace; it is not a command");
        // SAFETY: nothing is buffered that must be flushed.
        unsafe { libc::_exit(127) }
    }
    let warm = args.get(1).is_some_and(|a| a == WARM_FLAG);
    // SAFETY: plain system calls on the init's own fds and state.
    unsafe {
        // A warm sandbox's is `forkpool-warm` until it gets its job.
        let name = if warm { c"forkpool-warm" } else { c"forkpool-init" };
        libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0);
        // Not ptrace-able or readable through /proc by the job, which runs as the same user.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::fcntl(INIT_REPORT_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(INIT_SPAWN_REPORT_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(WARM_REQUEST_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(WARM_ROOT_FD, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    let code = run(args);
    // SAFETY: nothing is buffered that must be flushed.
    unsafe { libc::_exit(code) }
}

fn run(args: Vec<OsString>) -> i32 {
    // SAFETY: `all` is a local; the mask is this (single-threaded) process's own.
    let all = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        all
    };
    // A warm sandbox: everything is ready but the job, which the server hands over later (see `warm`).
    let program = if args.get(1).is_some_and(|a| a == WARM_FLAG) {
        let bounding_empty = args.get(2).is_some_and(|a| a == EMPTY_BOUNDING_FLAG) && warm::empty_bounding_set();
        match warm::receive(bounding_empty) {
            Ok(Some(job)) => {
                // SAFETY: sets this process's own name.
                unsafe { libc::prctl(libc::PR_SET_NAME, c"forkpool-init".as_ptr(), 0, 0, 0) };
                job
            }
            // The server let the sandbox go (or died) before using it.
            Ok(None) => return 0,
            Err((step, errno)) => return report_failure(step, errno),
        }
    } else {
        match Program::from_args(args) {
            Some(program) => program,
            None => return exec_failed(libc::EINVAL),
        }
    };
    let argv: Vec<*const libc::c_char> =
        program.argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp: Vec<*const libc::c_char> =
        program.envp.iter().map(|e| e.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let start =
        Start { program: program.path.as_ptr(), argv: argv.as_ptr(), envp: envp.as_ptr(), stdio: program.stdio };
    // Not zeroed (the child's frames initialise what they use): only the pages it touches are faulted in.
    let mut stack: Vec<std::mem::MaybeUninit<u8>> = Vec::with_capacity(PROGRAM_STACK_BYTES);
    // The program's process, created as posix_spawn does: sharing the init's memory, the init suspended until
    // it has exec'd or exited, so no page table is copied and no page copied on write (a `fork` here cost a
    // tenth of the server's CPU at saturation).
    // SAFETY: the process is single-threaded and suspended until the child execs or exits (CLONE_VFORK); the
    // child runs `program_entry` on its own stack (the end of `stack`, 16-byte aligned), makes only
    // async-signal-safe calls (dup2, setpgid, isatty (an ioctl), getpid, tcsetpgrp, signal, sigprocmask,
    // execve, write, _exit) and writes no memory but its stack and errno; `start`, `argv`, `envp` and `stack`
    // outlive it.
    let job = unsafe {
        let top = stack.as_mut_ptr().add(PROGRAM_STACK_BYTES).cast::<u8>();
        let top = top.sub(top as usize % 16);
        libc::clone(
            program_entry,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&start as *const Start).cast_mut().cast(),
        )
    };
    drop(stack);
    if job < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EAGAIN);
        return report_failure(FORK_STEP, errno);
    }
    // The init needs no capability of its own from here on.
    warm::drop_own_capabilities();
    // The job's stdio and directory, handed over by the server, are the program's alone now.
    for fd in program.stdio.into_iter().flatten().chain(program.cwd) {
        // SAFETY: fds received by this process and used by nothing else in it.
        unsafe { libc::close(fd) };
    }
    supervise(job, &all)
}

/// Stack of the program's process between its clone and its exec.
const PROGRAM_STACK_BYTES: usize = 64 * 1024;

/// What the program's process needs between its clone and its exec, prepared before.
struct Start {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    stdio: Option<[libc::c_int; 3]>,
}

/// The program's process's entry (see [`start_program`]).
extern "C" fn program_entry(start: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `start` is the init's `Start`, alive while the init is suspended (CLONE_VFORK).
    unsafe {
        let start = &*start.cast::<Start>();
        start_program(start.program, start.argv, start.envp, start.stdio)
    }
}

/// What the init starts.
struct Program {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// The job's stdin, stdout and stderr when handed over (a warm sandbox); else they are fds 0-2 already.
    stdio: Option<[libc::c_int; 3]>,
    /// The job's directory, handed over (a warm sandbox).
    cwd: Option<libc::c_int>,
}

impl Program {
    /// From the init's own argv: `forkpool-init --env N ENTRY... PROGRAM ARGV...` (the init's own environment
    /// is empty: the job's is in its argv).
    fn from_args(args: Vec<OsString>) -> Option<Program> {
        let strings = |items: Vec<Vec<u8>>| items.into_iter().map(CString::new).collect::<Result<Vec<_>, _>>();
        let mut args = strings(args.into_iter().skip(1).map(OsStringExt::into_vec).collect()).ok()?.into_iter();
        if args.next()?.as_bytes() != ENV_FLAG.as_bytes() {
            return None;
        }
        let count: usize = std::str::from_utf8(args.next()?.as_bytes()).ok()?.parse().ok()?;
        let envp: Vec<CString> = args.by_ref().take(count).collect();
        let path = args.next()?;
        let argv: Vec<CString> = args.collect();
        (envp.len() == count && !argv.is_empty()).then_some(Program { path, argv, envp, stdio: None, cwd: None })
    }
}

/// The init's life once the program runs: forward signals, reap, and when the program is done, kill and reap
/// the rest and report. Returns the init's exit code.
fn supervise(job: libc::pid_t, all: &libc::sigset_t) -> i32 {
    // SAFETY: plain system calls on the init's own fds. The report pipe's copy in the program closes at its
    // exec; the init lets go of the job's stdio, so that the job's closing them is seen (EOF, EPIPE).
    unsafe {
        libc::setpgid(job, job);
        libc::close(INIT_SPAWN_REPORT_FD);
        libc::close(WARM_REQUEST_FD);
        libc::close(WARM_ROOT_FD);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        for fd in 0..3 {
            if null < 0 {
                libc::close(fd);
            } else {
                libc::dup2(null, fd);
            }
        }
        if null > 2 {
            libc::close(null);
        }
    }
    let mut report = Report::default();
    let status = loop {
        // SAFETY: `all` is initialised; no siginfo is asked for.
        let signal = unsafe { libc::sigwaitinfo(all, std::ptr::null_mut()) };
        match signal {
            -1 => continue,
            libc::SIGCHLD => {
                if let Some(status) = report.reap(job, false) {
                    break status;
                }
            }
            signal => forward(job, signal),
        }
    };
    // The program is done: nothing else of the job may outlive it (as its cgroup would be killed outside).
    // SAFETY: kill(-1) from a namespace's init reaches every other process of the namespace, and only them
    // (checked once more: never from anywhere else).
    unsafe {
        if libc::syscall(libc::SYS_getpid) == 1 {
            libc::kill(-1, libc::SIGKILL);
        }
    }
    report.reap(job, true);
    let mut text = String::new();
    for (pid, name, status) in &report.orphans {
        let _ = writeln!(text, "orphan {pid} {status} {name}");
    }
    if report.dropped > 0 {
        let _ = writeln!(text, "dropped {}", report.dropped);
    }
    // SAFETY: `usage` is a local; the init's children are all reaped, so this is the whole job's.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    let _ = writeln!(text, "usage {} {} {}", micros(usage.ru_utime), micros(usage.ru_stime), usage.ru_maxrss);
    let _ = writeln!(text, "job {status}");
    write_all(INIT_REPORT_FD, text.as_bytes());
    if libc::WIFSIGNALED(status) { 128 + libc::WTERMSIG(status) } else { libc::WEXITSTATUS(status) }
}

/// The program's side of the clone: own process group (the terminal's foreground one), signals unblocked,
/// exec; a failure goes to the spawn's report pipe as the exec step.
///
/// # Safety
/// Only in the child of the init's `clone`, with valid NUL-terminated arrays; it shares the init's memory, so
/// it must not allocate or write anything but its own stack and errno.
unsafe fn start_program(
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    stdio: Option<[libc::c_int; 3]>,
) -> ! {
    // SAFETY: async-signal-safe calls only; `empty` and `buf` are locals.
    unsafe {
        // Handed-over stdio (received at fds 6 and up, so never among 0-2 already): dup2 clears close-on-exec.
        if let Some(stdio) = stdio {
            for (target, fd) in (0..).zip(stdio) {
                if libc::dup2(fd, target) < 0 {
                    let errno = *libc::__errno_location();
                    let (s, e) = (STDIO_STEP.to_ne_bytes(), errno.to_ne_bytes());
                    let buf = [s[0], s[1], s[2], s[3], e[0], e[1], e[2], e[3]];
                    libc::write(INIT_SPAWN_REPORT_FD, buf.as_ptr().cast(), buf.len());
                    libc::_exit(127);
                }
            }
        }
        libc::setpgid(0, 0);
        // SIGTTOU is blocked, so a background group may take the terminal.
        if libc::isatty(0) == 1 {
            libc::tcsetpgrp(0, libc::getpid());
        }
        // Rust's runtime ignores SIGPIPE where the server's executable is the init; the program must not
        // inherit that.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(program, argv, envp);
        let errno = *libc::__errno_location();
        let (s, e) = (EXEC_STEP.to_ne_bytes(), errno.to_ne_bytes());
        let buf = [s[0], s[1], s[2], s[3], e[0], e[1], e[2], e[3]];
        libc::write(INIT_SPAWN_REPORT_FD, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}

/// The program could not be started: reported as its exec failing.
fn exec_failed(errno: i32) -> i32 {
    report_failure(EXEC_STEP, errno)
}

/// Reports a failed step on the spawn's report pipe, as the worker's set-up does.
fn report_failure(step: u32, errno: i32) -> i32 {
    let (s, e) = (step.to_ne_bytes(), errno.to_ne_bytes());
    write_all(INIT_SPAWN_REPORT_FD, &[s[0], s[1], s[2], s[3], e[0], e[1], e[2], e[3]]);
    127
}

/// Sends `signal` on to the program's group (or the program, if it left its group).
fn forward(job: libc::pid_t, signal: libc::c_int) {
    // SAFETY: plain system calls; `job` is our unreaped child, so its number is ours.
    unsafe {
        if libc::kill(-job, signal) < 0 {
            libc::kill(job, signal);
        }
    }
}

fn write_all(fd: libc::c_int, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        match n {
            n if n > 0 => bytes = &bytes[n as usize..],
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return,
        }
    }
}

/// What the init reaped besides the program.
#[derive(Default)]
struct Report {
    orphans: Vec<(libc::pid_t, String, libc::c_int)>,
    dropped: u64,
}

impl Report {
    /// Reaps every child that has exited (all of them, blocking, if `all`); returns the program's wait status
    /// once it has been reaped.
    fn reap(&mut self, job: libc::pid_t, all: bool) -> Option<libc::c_int> {
        let mut job_status = None;
        loop {
            let flags = libc::WEXITED | libc::WNOWAIT | if all { 0 } else { libc::WNOHANG };
            // SAFETY: `info` is a local.
            let pid = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                if libc::waitid(libc::P_ALL, 0, &mut info, flags) < 0 {
                    if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return job_status;
                }
                info.si_pid()
            };
            if pid == 0 {
                return job_status;
            }
            // The name while the zombie still has it (this namespace's own /proc).
            let name = (pid != job).then(|| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|n| n.trim_end().chars().map(|c| if c.is_control() { '?' } else { c }).collect())
                    .unwrap_or_default()
            });
            let mut status = 0;
            // SAFETY: `status` is a local.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } != pid {
                continue;
            }
            match name {
                None => job_status = Some(status),
                Some(_) if self.orphans.len() >= MAX_REPORTED_ORPHANS => self.dropped += 1,
                Some(name) => self.orphans.push((pid, name, status)),
            }
        }
    }
}

/// A warm sandbox: the init was started, with its namespaces, mounts and cgroup, before any request; it runs
/// as root of its (empty) namespaces until the server hands it a job on [`WARM_REQUEST_FD`]. Then it does the
/// rest of a worker's set-up for that job, in the same order as a cold worker's child does (terminal,
/// working directory, limits, privileges, user, seccomp), and starts the program. A failure is reported on
/// the spawn's report pipe with the step's index, as the child does.
///
/// The request: one `sendmsg` of a fixed header ([`warm::Header`]) carrying the fds (the job's directory, then its
/// stdin, stdout and stderr, or its terminal's slave once), then `body_len` bytes: NUL-terminated strings
/// (directory path, program path, argc, argv..., envc, env..., rlimit count, `RESOURCE VALUE`...), then
/// `filter_len` bytes of seccomp filter (`struct sock_filter` array).
pub(crate) mod warm {
    use std::ffi::CString;

    use super::*;

    /// The request's fixed part.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub(crate) struct Header {
        pub(crate) body_len: u32,
        pub(crate) filter_len: u32,
        pub(crate) flags: u32,
        pub(crate) uid: u32,
        pub(crate) gid: u32,
        pub(crate) cap_last: u32,
        pub(crate) keep_caps: u64,
    }

    /// The job runs under a terminal: one fd (the slave) stands for all three.
    pub(crate) const TERMINAL: u32 = 1;
    /// Empty the capability bounding set (but for `keep_caps`).
    pub(crate) const DROP_CAPABILITIES: u32 = 2;
    /// Bind the job's directory into the private /tmp (it lies under a tmpfs of the sandbox).
    pub(crate) const BIND_CWD: u32 = 4;
    /// The root is read-only: bind the directory onto itself, writable.
    pub(crate) const READ_ONLY_ROOT: u32 = 8;
    /// Switch to `uid`/`gid`.
    pub(crate) const SWITCH_USER: u32 = 16;
    /// Largest request accepted (argv and environment included).
    const MAX_BODY: u32 = 16 << 20;

    /// Empties the capability bounding set (the init keeps its own capabilities: the set only bounds what an
    /// exec may give). Returns whether it is empty.
    pub(super) fn empty_bounding_set() -> bool {
        // SAFETY: prctl only.
        unsafe { drop_bounding_set(0, 63) }.is_ok()
    }

    /// Drops every capability up to `last` from the bounding set but those in `keep` (bit N = capability N);
    /// past the kernel's last capability (EINVAL) it is done. The errno of a failed drop otherwise.
    ///
    /// # Safety
    /// Async-signal-safe (prctl, errno): the worker's child calls it between clone and exec.
    pub(crate) unsafe fn drop_bounding_set(keep: u64, last: libc::c_int) -> Result<(), libc::c_int> {
        for cap in 0..=last.min(63) {
            // SAFETY: a plain prctl; errno is this thread's.
            unsafe {
                if keep & (1u64 << cap) == 0 && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) < 0 {
                    match *libc::__errno_location() {
                        libc::EINVAL => break,
                        errno => return Err(errno),
                    }
                }
            }
        }
        Ok(())
    }

    /// Waits for the job; `Ok(None)` when the server closed the socket instead. `bounding_empty`: the
    /// bounding set was emptied ahead (a job that keeps a capability is refused).
    pub(super) fn receive(bounding_empty: bool) -> Result<Option<Program>, (u32, i32)> {
        let mut header = Header::default();
        let mut fds = [-1 as libc::c_int; 4];
        let received = receive_header(&mut header, &mut fds).map_err(|e| (MOUNT_STEP, e))?;
        if !received {
            return Ok(None);
        }
        let terminal = header.flags & TERMINAL != 0;
        let (cwd_fd, stdio) = (fds[0], if terminal { [fds[1]; 3] } else { [fds[1], fds[2], fds[3]] });
        if cwd_fd < 0 || stdio.contains(&-1) || header.body_len > MAX_BODY {
            return Err((MOUNT_STEP, libc::EINVAL));
        }
        let mut body = vec![0u8; (header.body_len + header.filter_len) as usize];
        read_exact(WARM_REQUEST_FD, &mut body).map_err(|e| (MOUNT_STEP, e))?;
        let (strings, filter) = body.split_at(header.body_len as usize);
        let mut fields = strings.split(|b| *b == 0).map(|s| s.to_vec());
        let mut next = || fields.next().ok_or((MOUNT_STEP, libc::EINVAL));
        let cstring = |bytes: Vec<u8>| CString::new(bytes).map_err(|_| (MOUNT_STEP, libc::EINVAL));
        let number = |bytes: Vec<u8>| -> Result<u64, (u32, i32)> {
            String::from_utf8(bytes).ok().and_then(|s| s.parse().ok()).ok_or((MOUNT_STEP, libc::EINVAL))
        };
        let cwd = cstring(next()?)?;
        let in_root = cstring(next()?)?;
        let path = cstring(next()?)?;
        let argc = number(next()?)?;
        let argv = (0..argc).map(|_| next().and_then(cstring)).collect::<Result<Vec<_>, _>>()?;
        let envc = number(next()?)?;
        let envp = (0..envc).map(|_| next().and_then(cstring)).collect::<Result<Vec<_>, _>>()?;
        let limits = number(next()?)?;
        let mut rlimits = Vec::new();
        for _ in 0..limits {
            let pair = String::from_utf8(next()?).map_err(|_| (RLIMIT_STEP, libc::EINVAL))?;
            let (resource, value) = pair.split_once(' ').ok_or((RLIMIT_STEP, libc::EINVAL))?;
            let resource: libc::c_int = resource.parse().map_err(|_| (RLIMIT_STEP, libc::EINVAL))?;
            rlimits.push((resource, value.parse::<u64>().map_err(|_| (RLIMIT_STEP, libc::EINVAL))?));
        }
        if terminal {
            // SAFETY: the init leads its session, which has no controlling terminal yet.
            if unsafe { libc::ioctl(stdio[0], libc::TIOCSCTTY, 0) } < 0 {
                return Err((CTTY_STEP, errno()));
            }
        }
        enter_directory(&cwd, &in_root, cwd_fd, header.flags)?;
        for (resource, value) in rlimits {
            let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
            // SAFETY: `limit` is a local.
            if unsafe { libc::setrlimit(resource as libc::__rlimit_resource_t, &limit) } < 0 {
                return Err((RLIMIT_STEP, errno()));
            }
        }
        restrict(&header, bounding_empty)?;
        if !filter.is_empty() {
            let program = libc::sock_fprog {
                len: (filter.len() / std::mem::size_of::<libc::sock_filter>()) as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: `program` points into `body`, alive for the call (the kernel copies the filter).
            if unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program as *const _, 0, 0) } < 0 {
                return Err((SECCOMP_STEP, errno()));
            }
        }
        let stdio = if terminal { [stdio[0]; 3] } else { stdio };
        Ok(Some(Program { path, argv, envp, stdio: Some(stdio), cwd: Some(cwd_fd) }))
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
    }

    /// Receives the header and up to four fds; `false` at the end of the stream.
    fn receive_header(header: &mut Header, fds: &mut [libc::c_int; 4]) -> Result<bool, i32> {
        // SAFETY: every pointer is to a local of the right size; the control buffer is large enough and
        // aligned for four fds; received fds are copied out of it as the cmsg says.
        unsafe {
            let mut control = [0u64; 8];
            let mut iov =
                libc::iovec { iov_base: (header as *mut Header).cast(), iov_len: std::mem::size_of::<Header>() };
            let mut message: libc::msghdr = std::mem::zeroed();
            message.msg_iov = &mut iov;
            message.msg_iovlen = 1;
            message.msg_control = control.as_mut_ptr().cast();
            message.msg_controllen = std::mem::size_of_val(&control);
            let n = loop {
                let n = libc::recvmsg(WARM_REQUEST_FD, &mut message, libc::MSG_CMSG_CLOEXEC);
                if n < 0 && errno() == libc::EINTR {
                    continue;
                }
                break n;
            };
            if n == 0 {
                return Ok(false);
            }
            if n != std::mem::size_of::<Header>() as isize {
                return Err(if n < 0 { errno() } else { libc::EPROTO });
            }
            let mut cmsg = libc::CMSG_FIRSTHDR(&message);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                    let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                    for (i, fd) in fds.iter_mut().enumerate().take(count.min(4)) {
                        *fd = data.add(i).read_unaligned();
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&message, cmsg);
            }
            Ok(true)
        }
    }

    fn read_exact(fd: libc::c_int, mut buf: &mut [u8]) -> Result<(), i32> {
        while !buf.is_empty() {
            // SAFETY: `buf` is a live, writable slice.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            match n {
                n if n > 0 => buf = &mut buf[n as usize..],
                0 => return Err(libc::EPROTO),
                _ if errno() == libc::EINTR => {}
                _ => return Err(errno()),
            }
        }
        Ok(())
    }

    /// Makes the job's directory (`fd`, at `path` outside; `in_root` below the work root) its working
    /// directory at the same path inside. A bind mount's source must be of the init's own mount namespace: it
    /// is reached from the work root's fd, opened in it.
    fn enter_directory(path: &CString, in_root: &CString, fd: libc::c_int, flags: u32) -> Result<(), (u32, i32)> {
        if flags & (BIND_CWD | READ_ONLY_ROOT) != 0 {
            // Its parents inside the private /tmp (made empty): each one's mkdir may find it there.
            let bytes = path.as_bytes();
            for (i, _) in bytes.iter().enumerate().skip(1).filter(|(_, b)| **b == b'/') {
                if flags & BIND_CWD != 0 {
                    let parent = CString::new(&bytes[..i]).map_err(|_| (MOUNT_STEP, libc::EINVAL))?;
                    // SAFETY: `parent` is a C string.
                    unsafe { libc::mkdir(parent.as_ptr(), 0o755) };
                }
            }
            if flags & BIND_CWD != 0 {
                // SAFETY: `path` is a C string.
                unsafe { libc::mkdir(path.as_ptr(), 0o755) };
            }
            // SAFETY: `in_root` is a C string; the work root's fd is the init's own.
            let directory = unsafe {
                libc::openat(WARM_ROOT_FD, in_root.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            };
            if in_root.is_empty() || directory < 0 {
                return Err((MOUNT_STEP, if directory < 0 { errno() } else { libc::EXDEV }));
            }
            let source = CString::new(format!("/proc/self/fd/{directory}")).map_err(|_| (MOUNT_STEP, libc::EINVAL))?;
            // SAFETY: C strings; a bind mount of the job's directory onto its own path.
            let bound = unsafe {
                libc::mount(
                    source.as_ptr(),
                    path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                )
            };
            // SAFETY: our own fd.
            unsafe { libc::close(directory) };
            if bound < 0 {
                return Err((MOUNT_STEP, errno()));
            }
            if flags & READ_ONLY_ROOT != 0 {
                let attr = [0u64, 1, 0, 0]; // struct mount_attr { set, clr = MOUNT_ATTR_RDONLY, .. }
                // SAFETY: `attr` is the kernel's struct mount_attr; `path` a C string.
                let set = unsafe {
                    libc::syscall(
                        libc::SYS_mount_setattr,
                        libc::AT_FDCWD,
                        path.as_ptr(),
                        libc::AT_RECURSIVE as libc::c_uint,
                        attr.as_ptr(),
                        std::mem::size_of_val(&attr),
                    )
                };
                if set < 0 {
                    return Err((MOUNT_STEP, errno()));
                }
            }
        }
        // SAFETY: C string; fchdir on the received directory if the path cannot be entered.
        if unsafe { libc::chdir(path.as_ptr()) } < 0 && unsafe { libc::fchdir(fd) } < 0 {
            return Err((CWD_STEP, errno()));
        }
        Ok(())
    }

    /// The kernel's `struct __user_cap_header_struct` (version 3: two data words); the worker's child uses it too.
    #[repr(C)]
    pub(crate) struct CapHeader {
        pub(crate) version: u32,
        pub(crate) pid: libc::c_int,
    }

    /// The kernel's `struct __user_cap_data_struct`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub(crate) struct CapData {
        pub(crate) effective: u32,
        pub(crate) permitted: u32,
        pub(crate) inheritable: u32,
    }

    /// No privilege kept but what the job's entry names, none gained later, then the job's user; the init
    /// dies with the server still (a uid change clears the parent-death signal).
    fn restrict(header: &Header, bounding_empty: bool) -> Result<(), (u32, i32)> {
        if bounding_empty && header.keep_caps != 0 {
            return Err((PRIVILEGES_STEP, libc::EPERM));
        }
        // SAFETY: prctl, capget/capset with locals of the kernel's layout, setgroups/setresgid/setresuid,
        // poll with a local: plain system calls in a single-threaded process.
        unsafe {
            if header.flags & DROP_CAPABILITIES != 0 && !bounding_empty {
                drop_bounding_set(header.keep_caps, header.cap_last as libc::c_int)
                    .map_err(|errno| (PRIVILEGES_STEP, errno))?;
            }
            libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0);
            let mut cap_header = CapHeader { version: 0x2008_0522, pid: 0 };
            let mut data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
            if libc::syscall(libc::SYS_capget, &mut cap_header as *mut CapHeader, data.as_mut_ptr()) == 0 {
                data[0].inheritable &= header.keep_caps as u32;
                data[1].inheritable &= (header.keep_caps >> 32) as u32;
                if libc::syscall(libc::SYS_capset, &mut cap_header as *mut CapHeader, data.as_ptr()) < 0 {
                    return Err((PRIVILEGES_STEP, errno()));
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) < 0 {
                return Err((PRIVILEGES_STEP, errno()));
            }
            if header.flags & SWITCH_USER != 0 {
                let groups = [header.gid];
                if libc::setgroups(1, groups.as_ptr()) < 0
                    || libc::setresgid(header.gid, header.gid, header.gid) < 0
                    || libc::setresuid(header.uid, header.uid, header.uid) < 0
                {
                    return Err((USER_STEP, errno()));
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) < 0 {
                    return Err((USER_STEP, errno()));
                }
                // The server holds the other end of the report pipe: gone, the pipe says so.
                let mut report = libc::pollfd { fd: INIT_REPORT_FD, events: 0, revents: 0 };
                if libc::poll(&mut report, 1, 0) < 0 || report.revents & libc::POLLERR != 0 {
                    return Err((USER_STEP, libc::ESRCH));
                }
                // A uid change makes the process dumpable again: the job (the same uid) must not ptrace it.
                libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
            }
        }
        Ok(())
    }

    /// Drops every capability of the init's own, once its program is forked (with `no_new_privs`, the program's
    /// exec keeps no more than the init had at the fork: a root job keeps what its bounding set allows).
    pub(super) fn drop_own_capabilities() {
        let none = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
        let mut cap_header = CapHeader { version: 0x2008_0522, pid: 0 };
        // SAFETY: capset with locals of the kernel's layout.
        unsafe { libc::syscall(libc::SYS_capset, &mut cap_header as *mut CapHeader, none.as_ptr()) };
    }
}
