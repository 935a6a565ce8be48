//! Signalling a job's process tree. Every signal forkpool sends to a job goes through here.
//!
//! Safety rules, each enforced below:
//! - only a process *group* that a worker leads is signalled (the worker called `setsid`, so its pid is its
//!   session and group id); never a pid or group ≤ 1 (`kill(-1)` / `kill(0)` would hit everything) and
//!   never the server's own group;
//! - only while the worker is registered and not yet reaped ([`Registry::with_live_worker`]): its zombie
//!   pins the number, so a reused pid can never be hit.
//!
//! Ending a job is SIGTERM then SIGCONT (a stopped process must run to see the SIGTERM), then SIGKILL once
//! the grace period is over; a grace of zero is SIGKILL at once.

use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, getpgrp, getpid};
use tokio::time::Instant;
use tracing::info;

use crate::reaper::Registry;

/// Sends `sig` to process group `pgid`, refusing the groups that would hit the server or everything.
pub fn signal_group(pgid: i32, sig: impl Into<Option<Signal>>) -> Result<(), Errno> {
    if pgid <= 1 || pgid == getpgrp().as_raw() || pgid == getpid().as_raw() {
        return Err(Errno::EPERM);
    }
    killpg(Pid::from_raw(pgid), sig)
}

/// Signals one job's group, only while its worker is alive (unreaped).
#[derive(Debug, Clone)]
pub struct GroupKiller {
    registry: Arc<Registry>,
    pgid: i32,
}

impl GroupKiller {
    /// A killer for the group led by worker `pgid`.
    pub fn new(registry: Arc<Registry>, pgid: i32) -> Self {
        GroupKiller { registry, pgid }
    }

    /// Sends `sig` to the job's group if its worker is still unreaped. Returns whether it was sent.
    pub fn signal(&self, sig: Signal) -> bool {
        self.registry.with_live_worker(self.pgid, |pgid| signal_group(pgid, sig).is_ok()).unwrap_or(false)
    }

    /// Starts ending the job: SIGTERM + SIGCONT and returns when to escalate, or SIGKILL at once for a zero
    /// grace (and returns `None`).
    pub fn terminate(&self, grace: Duration) -> Option<Instant> {
        if grace.is_zero() {
            self.kill();
            return None;
        }
        info!(grace_ms = grace.as_millis() as u64, "sending SIGTERM to the job's group");
        self.signal(Signal::SIGTERM);
        self.signal(Signal::SIGCONT);
        Some(Instant::now() + grace)
    }

    /// SIGKILL to the job's group.
    pub fn kill(&self) {
        if self.signal(Signal::SIGKILL) {
            info!("sent SIGKILL to the job's group");
        }
    }

    /// Whether any process (a zombie included) is still in the job's group. Signal 0 only checks, so this
    /// is harmless even after the worker is reaped.
    pub fn group_exists(&self) -> bool {
        !matches!(signal_group(self.pgid, None), Err(Errno::ESRCH))
    }
}
