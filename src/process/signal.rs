//! The one way forkpool signals a process group: never a group or pid ≤ 1 (`kill(-1)` / `kill(0)` would hit
//! everything) and never the server's own group. Callers make sure the group's number is pinned (its leader
//! unreaped) while they signal it; see the registry.

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, getpgrp, getpid};

/// Sends `sig` to process group `pgid`, refusing the groups that would hit the server or everything.
pub(crate) fn signal_group(pgid: i32, sig: impl Into<Option<Signal>>) -> Result<(), Errno> {
    if pgid <= 1 || pgid == getpgrp().as_raw() || pgid == getpid().as_raw() {
        return Err(Errno::EPERM);
    }
    killpg(Pid::from_raw(pgid), sig)
}

/// Whether any process (a zombie included) is still in group `pgid`. Signal 0 only checks, so this is
/// harmless even after the group's leader is reaped.
pub(crate) fn group_exists(pgid: i32) -> bool {
    !matches!(signal_group(pgid, None), Err(Errno::ESRCH))
}
