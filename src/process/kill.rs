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
//!
//! In a pid namespace the worker is forkpool's init. SIGKILL goes to its children (the program, and orphans
//! reparented to it), each through a pidfd opened while it was the init's child (a stranger that reused the
//! number is never hit): the init then kills whatever is left in the namespace, reaps it all and reports, as
//! when the program exits by itself, and every pid of the job is gone within a few hundred microseconds.
//! Killing the init instead leaves the reaping to the kernel's teardown of the dying init, after its mount
//! namespace's (measured: 4.5 ms from the SIGKILL to the init's reaping). Should the init not be reaped within
//! [`INIT_BACKSTOP`], it is killed too.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;
use tracing::info;

use super::procfs::{ProcStat, holds_stdio, server_children};
use super::registry::Registry;
use super::signal::signal_group;

/// How long a pid namespace's init has, once its children are SIGKILLed, to end the rest and be reaped before
/// it is SIGKILLed itself.
const INIT_BACKSTOP: Duration = Duration::from_secs(1);

/// Signals one job's group, only while its worker is alive (unreaped).
#[derive(Debug, Clone)]
pub(crate) struct GroupKiller {
    registry: Arc<Registry>,
    pgid: i32,
    /// The worker is a pid namespace's init (see the module's docs).
    init: bool,
}

impl GroupKiller {
    /// A killer for the group led by worker `pgid`; `init`: the worker is forkpool's init of a pid namespace.
    pub(crate) fn new(registry: Arc<Registry>, pgid: i32, init: bool) -> Self {
        GroupKiller { registry, pgid, init }
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

    /// SIGKILL to the job's group; in a pid namespace, to the init's children, the init's own after
    /// [`INIT_BACKSTOP`] if it is still there (at once outside a runtime).
    pub(crate) fn kill(&self) {
        if self.init
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
            && let Some(init) = self.kill_init_children()
        {
            info!("sent SIGKILL to the job's program (its init ends the rest)");
            // Through a pidfd of the init, opened while it was unreaped: once reaped, its number may be a new
            // worker's, which must not be hit (the pidfd then only says ESRCH).
            // The pidfd is held only until the init exits (it becomes readable then), not for the whole wait.
            runtime.spawn(async move {
                let Ok(init) = crate::process::spawn::watch(init) else { return };
                tokio::select! {
                    _ = init.readable() => {}
                    () = tokio::time::sleep(INIT_BACKSTOP) => {
                        if rustix::process::pidfd_send_signal(init.get_ref(), rustix::process::Signal::KILL).is_ok() {
                            info!("the job's init was still there {INIT_BACKSTOP:?} after its program's SIGKILL: killed");
                        }
                    }
                }
            });
            return;
        }
        if self.signal(Signal::SIGKILL) {
            info!("sent SIGKILL to the job's group");
        }
    }

    /// SIGKILL to every child of the init (while it is unreaped); a pidfd of the init if one was sent.
    fn kill_init_children(&self) -> Option<std::os::fd::OwnedFd> {
        self.registry
            .with_live_worker(self.pgid, |init| {
                let init_fd = rustix::process::pidfd_open(
                    rustix::process::Pid::from_raw(init)?,
                    rustix::process::PidfdFlags::empty(),
                )
                .ok()?;
                let list = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).ok()?;
                let mut sent = false;
                for pid in list.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                    let Some(pid) = rustix::process::Pid::from_raw(pid) else { continue };
                    let Ok(pidfd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
                        continue;
                    };
                    // Pinned by the pidfd, and still the init's child: not a stranger with a reused number.
                    if ProcStat::read(pid.as_raw_nonzero().get()).is_some_and(|s| s.ppid == init) {
                        sent |= rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL).is_ok();
                    }
                }
                sent.then_some(init_fd)
            })
            .flatten()
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
