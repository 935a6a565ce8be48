//! The reaper: the server is a child subreaper, and this is the **only** place that waits for children. It
//! collects every worker's exit status and rusage and hands it to the worker's job, kills what is left of a
//! worker's process group at that moment, and reaps every orphan that the kernel reparents to the server
//! (grandchildren of jobs, or, as PID 1, anything), attributing it to its job. The invariants it relies on
//! are the registry's (see [`super::registry`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use tracing::{debug, error, info, warn};

use super::procfs::{ProcStat, v2_cgroup_name};
use super::registry::{ReapedOrphan, Registry, lock};
use super::signal::signal_group;

impl Registry {
    /// The reaper loop: wakes on SIGCHLD (and once a second, as a safety net) and reaps until nothing is
    /// left. `sigchld` must be created before the first child is spawned. Runs until the runtime stops.
    pub(crate) async fn run(self: Arc<Self>, mut sigchld: tokio::signal::unix::Signal) {
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                () = self.reap_again.notified() => {}
                _ = sweep.tick() => {}
            }
            self.reap_ready();
        }
    }

    /// Reaps every child that has exited, without blocking.
    pub(crate) fn reap_ready(&self) {
        loop {
            let mut inner = lock(&self.inner);
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            let pid = match waitid(Id::All, flags) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    error!(error = %e, "waitid failed");
                    return;
                }
                Ok(status) => match status.pid() {
                    Some(pid) => pid.as_raw(),
                    None => return,
                },
            };
            let is_worker = inner.workers.contains_key(&pid);
            if !is_worker && inner.in_flight.iter().any(|t| t.pid.load(Ordering::Acquire) == pid) {
                // A worker that exited before its spawn was registered: `finish_spawn` wakes us once it is.
                return;
            }
            // Read name, session and cgroup while the zombie still has its /proc entry.
            let stat = ProcStat::read(pid);
            let cgroup = if is_worker || inner.cgroups.is_empty() { None } else { v2_cgroup_name(pid) };
            if is_worker {
                // The zombie worker still pins its pid, and so its group id: nothing else can be in that
                // group, so this kills exactly the job's leftovers (kill grace is over once the worker is).
                match signal_group(pid, Signal::SIGKILL) {
                    Ok(()) => debug!(pid, "killed the rest of the worker's group"),
                    Err(Errno::ESRCH) => {}
                    Err(e) => warn!(pid, error = %e, "cannot kill the worker's group"),
                }
            }
            let reaped = match crate::process::wait::wait4(pid) {
                Ok(r) => r,
                Err(e) => {
                    error!(pid, error = %e, "wait4 failed after waitid reported the child");
                    return;
                }
            };
            if let Some(worker) = inner.workers.remove(&pid) {
                // The job may be gone already (its call ended); then nobody needs the status.
                let _ = worker.exit.send(reaped);
                continue;
            }
            if pid == self.guardian_pid.load(Ordering::Acquire) {
                drop(inner);
                self.guardian_died.store(true, Ordering::Release);
                if self.guardian_retired.load(Ordering::Acquire) {
                    debug!(pid, status = ?reaped.status, "the guardian exited with the server");
                } else {
                    error!(pid, status = ?reaped.status, "the guardian died: if the server crashes now, processes \
                        of its jobs can outlive it until the next start");
                }
                continue;
            }
            self.orphans_reaped.inc();
            let name = stat.as_ref().map(|s| s.comm.clone()).unwrap_or_default();
            let orphan = ReapedOrphan { pid, name, status: reaped.status };
            let by_session =
                stat.as_ref().and_then(|s| inner.sessions.get(&s.session).or_else(|| inner.sessions.get(&s.pgrp)));
            let by_cgroup = || inner.cgroups.get(cgroup.as_deref()?);
            let job = by_session.or_else(by_cgroup).cloned();
            drop(inner);
            match job {
                Some(reaps) => {
                    debug!(pid, name = %orphan.name, status = ?orphan.status, "reaped orphan of a job");
                    lock(&reaps.reaped).push(orphan);
                    reaps.notify.notify_waiters();
                }
                None => info!(
                    pid,
                    name = %orphan.name,
                    status = ?orphan.status,
                    ?cgroup,
                    "reaped unattributed orphan"
                ),
            }
        }
    }
}
