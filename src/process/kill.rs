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

use nix::sys::signal::Signal;
use tokio::time::Instant;
use tracing::info;

use super::procfs::{holds_stdio, server_children};
use super::registry::Registry;
use super::signal::signal_group;

/// Signals one job's group, only while its worker is alive (unreaped).
#[derive(Debug, Clone)]
pub(crate) struct GroupKiller {
    registry: Arc<Registry>,
    pgid: i32,
}

impl GroupKiller {
    /// A killer for the group led by worker `pgid`.
    pub(crate) fn new(registry: Arc<Registry>, pgid: i32) -> Self {
        GroupKiller { registry, pgid }
    }

    /// Sends `sig` to the job's group if its worker is still unreaped. Returns whether it was sent.
    pub(crate) fn signal(&self, sig: Signal) -> bool {
        self.registry.with_live_worker(self.pgid, |pgid| signal_group(pgid, sig).is_ok()).unwrap_or(false)
    }

    /// Starts ending the job: SIGTERM + SIGCONT and returns when to escalate, or SIGKILL at once for a zero
    /// grace (and returns `None`).
    pub(crate) fn terminate(&self, grace: Duration) -> Option<Instant> {
        if grace.is_zero() {
            self.kill();
            return None;
        }
        info!(grace_ms = grace.as_millis() as u64, "sending SIGTERM to the job's group");
        self.signal(Signal::SIGTERM);
        self.signal(Signal::SIGCONT);
        // The grace is capped by the config, but a config can say anything: never overflow.
        Some(Instant::now().checked_add(grace).unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365)))
    }

    /// SIGKILL to the job's group.
    pub(crate) fn kill(&self) {
        if self.signal(Signal::SIGKILL) {
            info!("sent SIGKILL to the job's group");
        }
    }
}

/// Without cgroups, processes that left the job's group (`setsid`, double fork) are found here: children
/// of the server (they are reparented to it, the subreaper, when their parent dies) that are not workers
/// and belong to the job's session, to a session already attributed to the job, or hold the job's stdio
/// (one of its pipes, its terminal) as stdin/stdout/stderr. Each is SIGKILLed (with its group, if it leads one); the decision and the
/// kill are one step under the registry's lock ([`Registry::kill_if_job_child`]), so a pid reused between
/// listing and killing can never be hit. Returns how many of the job's escapers are still around
/// (signalled now, or dead and not yet reaped).
pub(crate) fn sweep_escapers(registry: &Registry, worker: i32, stdio_links: &[String]) -> usize {
    server_children()
        .into_iter()
        .filter_map(|pid| registry.kill_if_job_child(pid, worker, |pid| holds_stdio(pid, stdio_links)))
        .filter(|pending| *pending)
        .count()
}
