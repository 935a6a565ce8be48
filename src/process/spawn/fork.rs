//! The one plain `fork` in forkpool: the guardian's, at start-up, while the server is still single-threaded.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

/// Forks the guardian process (see [`crate::containment::guardian`]) and runs `body` in it; the child exits when `body`
/// returns. Refuses unless the process is single-threaded: only then is everything (the allocator, locks)
/// in a consistent state in the child, so that it may run ordinary code.
pub(crate) fn fork_guardian(socket: OwnedFd, body: impl FnOnce(OwnedFd)) -> std::io::Result<i32> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(std::io::Error::other(format!(
            "the guardian must be started before any other thread exists ({threads} threads now)"
        )));
    }
    // SAFETY: the process has one thread (checked above), so the child is a complete copy in a consistent
    // state: no lock is held by a thread that does not exist in it.
    match unsafe { nix::unistd::fork() }.map_err(std::io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => Ok(child.as_raw()),
        nix::unistd::ForkResult::Child => {
            prepare_guardian(socket.as_raw_fd());
            body(socket);
            // SAFETY: _exit ends the process without running the parent's atexit handlers or flushing
            // buffers copied from it (which would print the server's pending output twice).
            unsafe { libc::_exit(0) }
        }
    }
}

/// The guardian's process state: its own session (a group kill or a terminal's signals meant for the server
/// do not reach it), a name, the stop signals ignored (it outlives a draining server by design), stdin and
/// stdout on /dev/null, no fd but stderr and `keep`, and the OOM killer's last choice where allowed.
fn prepare_guardian(keep: std::os::fd::RawFd) {
    let _ = nix::unistd::setsid();
    let _ = rustix::thread::set_name(c"forkpool-guard");
    for signal in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGPIPE,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        // SAFETY: SIG_IGN installs no handler, so no code can run asynchronously.
        let _ = unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigIgn) };
    }
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
    }
    let open: Vec<std::os::fd::RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    for fd in open.into_iter().filter(|fd| *fd > 2 && *fd != keep) {
        // SAFETY: the child owns no Rust object for these fds (inherited ones, and the directory listing's,
        // now closed); `keep` is the one the guardian's body owns.
        unsafe { libc::close(fd) };
    }
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
}
