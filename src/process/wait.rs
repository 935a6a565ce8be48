//! Thin safe wrappers over the few Linux calls that `nix` does not offer. Each is one syscall; the unsafe
//! code here only passes valid pointers to locals.

use std::mem::MaybeUninit;
use std::time::Duration;

use nix::errno::Errno;

/// How a process ended, decoded from a wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// This signal killed it.
    Signal(i32),
}

/// What `wait4` reports about a reaped child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reaped {
    /// Exit code or killing signal.
    pub(crate) status: ExitStatus,
    /// User CPU time of the child (and the children it waited for).
    pub(crate) user_time: Duration,
    /// System CPU time, likewise.
    pub(crate) system_time: Duration,
    /// `ru_maxrss`: the peak resident set size of the child and the children it waited for, but at least the
    /// spawning process's own at exec time (Linux carries its high-water mark across exec).
    pub(crate) max_rss_bytes: u64,
}

/// Reaps `pid`, which must be a zombie child (the reaper peeks with `WNOWAIT` first), with its rusage.
pub(crate) fn wait4(pid: i32) -> Result<Reaped, Errno> {
    let mut status: libc::c_int = 0;
    let mut usage = MaybeUninit::<libc::rusage>::zeroed();
    loop {
        // SAFETY: both pointers point to live, writable locals of the right types.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, usage.as_mut_ptr()) };
        match r {
            -1 if Errno::last() == Errno::EINTR => continue,
            -1 => return Err(Errno::last()),
            0 => return Err(Errno::EAGAIN),
            _ => break,
        }
    }
    // SAFETY: wait4 succeeded, so the kernel filled the struct (it was zeroed before anyway).
    let usage = unsafe { usage.assume_init() };
    let status = if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    };
    Ok(Reaped {
        status,
        user_time: timeval(usage.ru_utime),
        system_time: timeval(usage.ru_stime),
        // Linux reports ru_maxrss in KiB.
        max_rss_bytes: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
    })
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::new(u64::try_from(tv.tv_sec).unwrap_or(0), u32::try_from(tv.tv_usec).unwrap_or(0) * 1000)
}
