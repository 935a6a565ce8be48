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
    // SAFETY: plain system calls on the init's own fds and state.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"forkpool-init".as_ptr(), 0, 0, 0);
        // Not ptrace-able or readable through /proc by the job, which runs as the same user.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::fcntl(INIT_REPORT_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(INIT_SPAWN_REPORT_FD, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    let code = run(args);
    // SAFETY: nothing is buffered that must be flushed.
    unsafe { libc::_exit(code) }
}

fn run(args: Vec<OsString>) -> i32 {
    let strings = |items: Vec<Vec<u8>>| items.into_iter().map(CString::new).collect::<Result<Vec<_>, _>>();
    let argv = strings(args.into_iter().skip(1).map(OsStringExt::into_vec).collect());
    let envp = strings(
        std::env::vars_os()
            .map(|(k, v)| {
                let mut entry = k.into_vec();
                entry.push(b'=');
                entry.extend(v.into_vec());
                entry
            })
            .collect(),
    );
    let (Ok(argv), Ok(envp)) = (argv, envp) else { return exec_failed(libc::EINVAL) };
    let Some((program, argv)) = argv.split_first() else { return exec_failed(libc::EINVAL) };
    if argv.is_empty() {
        return exec_failed(libc::EINVAL);
    }
    let argv: Vec<*const libc::c_char> =
        argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp: Vec<*const libc::c_char> =
        envp.iter().map(|e| e.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    // SAFETY: `all` is a local; the mask is this (single-threaded) process's own.
    let all = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        all
    };
    // SAFETY: the process is single-threaded; the child only makes async-signal-safe calls (setpgid, isatty
    // (an ioctl), getpid, tcsetpgrp, sigprocmask, execve, write, _exit) on memory prepared above.
    let job = unsafe { libc::fork() };
    if job == 0 {
        // SAFETY: see above.
        unsafe { start_program(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) }
    }
    if job < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EAGAIN);
        return report_failure(FORK_STEP, errno);
    }
    // SAFETY: plain system calls on the init's own fds. The report pipe's copy in the program closes at its
    // exec; the init lets go of the job's stdio, so that the job's closing them is seen (EOF, EPIPE).
    unsafe {
        libc::setpgid(job, job);
        libc::close(INIT_SPAWN_REPORT_FD);
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
        let signal = unsafe { libc::sigwaitinfo(&all, std::ptr::null_mut()) };
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
    let _ = writeln!(text, "job {status}");
    write_all(INIT_REPORT_FD, text.as_bytes());
    if libc::WIFSIGNALED(status) { 128 + libc::WTERMSIG(status) } else { libc::WEXITSTATUS(status) }
}

/// The program's side of the fork: own process group (the terminal's foreground one), signals unblocked,
/// exec; a failure goes to the spawn's report pipe as the exec step.
///
/// # Safety
/// Only in the child of the init's `fork`, with valid NUL-terminated arrays.
unsafe fn start_program(
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> ! {
    // SAFETY: async-signal-safe calls only; `empty` and `buf` are locals.
    unsafe {
        libc::setpgid(0, 0);
        // SIGTTOU is blocked, so a background group may take the terminal.
        if libc::isatty(0) == 1 {
            libc::tcsetpgrp(0, libc::getpid());
        }
        // Rust's runtime ignores SIGPIPE in the init; the program must not inherit that.
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
