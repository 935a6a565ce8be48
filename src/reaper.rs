//! The reaper: the server is a child subreaper, and this module is the **only** place that waits for
//! children. It collects every worker's exit status and rusage and hands it to the worker's job, kills what
//! is left of a worker's process group at that moment, and reaps every orphan that the kernel reparents to
//! the server (grandchildren of jobs, or, as PID 1, anything), attributing it to its job.
//!
//! # Invariants
//! - A worker's pid is in the registry from before the reaper can see it exit until it is reaped: the
//!   spawner holds the registry lock across `clone`, and the reaper holds it from its `WNOWAIT` peek to the
//!   `wait4`. So an instant exit is never mistaken for an orphan and its status is never lost.
//! - A pid in the registry is not reaped yet, so its number cannot have been reused: signalling it (or its
//!   group, which it leads) under the lock cannot hit a stranger. See [`Registry::with_live_worker`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use tokio::sync::{Notify, oneshot};
use tracing::{debug, error, info, warn};

use crate::kill;
pub use crate::sys::ExitStatus;

/// A worker's end, as the reaper saw it.
#[derive(Debug, Clone, Copy)]
pub struct WorkerExit {
    /// Exit code or killing signal.
    pub status: ExitStatus,
    /// User CPU time of the worker (and the children it waited for).
    pub user_time: Duration,
    /// System CPU time, likewise.
    pub system_time: Duration,
    /// Peak resident set size.
    pub max_rss_bytes: u64,
}

/// A process other than a worker that the reaper collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReapedOrphan {
    /// Its pid.
    pub pid: i32,
    /// `/proc/PID/comm`, read before reaping.
    pub name: String,
    /// How it ended.
    pub status: ExitStatus,
}

/// The orphans reaped for one job, filled by the reaper while the job runs and after its worker exits.
#[derive(Debug, Default)]
pub struct JobReaps {
    reaped: Mutex<Vec<ReapedOrphan>>,
    /// Woken whenever an orphan is added.
    pub notify: Notify,
}

impl JobReaps {
    /// Takes the orphans recorded so far.
    pub fn take(&self) -> Vec<ReapedOrphan> {
        std::mem::take(&mut *lock(&self.reaped))
    }
}

/// What the reaper needs to know about a worker: where to send its exit, and where its job's orphans go.
#[derive(Debug)]
pub struct WorkerEntry {
    /// Receives the worker's exit status.
    pub exit: oneshot::Sender<WorkerExit>,
    /// Collects the orphans of the worker's session (and cgroup).
    pub reaps: Arc<JobReaps>,
    /// The job's cgroup name, when it has one: processes reaped from it are the job's.
    pub cgroup: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Live (unreaped) workers by pid.
    workers: HashMap<i32, oneshot::Sender<WorkerExit>>,
    /// Jobs by session id (= worker pid, and sessions of escapers found later), kept until the job is
    /// fully cleaned up.
    sessions: HashMap<i32, Arc<JobReaps>>,
    /// Jobs by cgroup name.
    cgroups: HashMap<String, Arc<JobReaps>>,
}

/// The worker registry shared by the spawner, the killers and the reaper.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    orphans_reaped: prometheus_client::metrics::counter::Counter,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps inconsistent, so poisoning is ignored.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Registry {
    /// Runs `spawn` (which creates the worker and returns its pid) with the registry locked, and registers
    /// the new pid before the lock is released, so the reaper cannot collect it unregistered.
    pub fn spawn_registered<E>(&self, entry: WorkerEntry, spawn: impl FnOnce() -> Result<i32, E>) -> Result<i32, E> {
        let mut inner = lock(&self.inner);
        let pid = spawn()?;
        inner.workers.insert(pid, entry.exit);
        if let Some(cgroup) = entry.cgroup {
            inner.cgroups.insert(cgroup, Arc::clone(&entry.reaps));
        }
        inner.sessions.insert(pid, entry.reaps);
        Ok(pid)
    }

    /// Attributes processes of session `session` (an escaper's own session) to the job of `worker`.
    pub fn adopt_session(&self, worker: i32, session: i32) {
        let mut inner = lock(&self.inner);
        if let Some(reaps) = inner.sessions.get(&worker).cloned() {
            inner.sessions.entry(session).or_insert(reaps);
        }
    }

    /// Whether processes of `session` are attributed to the job of `worker`.
    pub fn same_job(&self, worker: i32, session: i32) -> bool {
        let inner = lock(&self.inner);
        match (inner.sessions.get(&worker), inner.sessions.get(&session)) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Whether `pid` is a registered, unreaped worker.
    pub fn is_worker(&self, pid: i32) -> bool {
        lock(&self.inner).workers.contains_key(&pid)
    }

    /// Runs `f(stat)` only if `pid` is, at this instant, an unreaped child of this process (the server);
    /// as only the reaper reaps, and it needs the lock held here, the pid cannot be reaped and reused
    /// while `f` signals it.
    pub fn with_unreaped_child<T>(&self, pid: i32, f: impl FnOnce(&ProcStat) -> T) -> Option<T> {
        let _inner = lock(&self.inner);
        let stat = ProcStat::read(pid)?;
        (stat.ppid == std::process::id() as i32).then(|| f(&stat))
    }

    /// Runs `f(pid)` only if `pid` is a registered, not yet reaped worker, holding the lock so that the
    /// reaper cannot reap it meanwhile. Returns `None` if the worker is already gone.
    pub fn with_live_worker<T>(&self, pid: i32, f: impl FnOnce(i32) -> T) -> Option<T> {
        let inner = lock(&self.inner);
        inner.workers.contains_key(&pid).then(|| f(pid))
    }

    /// Forgets a job (its sessions and cgroup) once it has finished; later orphans count as unattributed.
    pub fn forget_job(&self, worker: Option<i32>, cgroup: Option<&str>) {
        let mut inner = lock(&self.inner);
        if let Some(reaps) = worker.and_then(|worker| inner.sessions.remove(&worker)) {
            inner.sessions.retain(|_, r| !Arc::ptr_eq(r, &reaps));
        }
        if let Some(cgroup) = cgroup {
            inner.cgroups.remove(cgroup);
        }
    }

    /// Orphans (non-worker processes) reaped since start.
    pub fn orphans_reaped(&self) -> u64 {
        self.orphans_reaped.get()
    }

    /// The orphan counter, for the metrics.
    pub fn orphans_counter(&self) -> prometheus_client::metrics::counter::Counter {
        self.orphans_reaped.clone()
    }

    /// The reaper loop: wakes on SIGCHLD (and once a second, as a safety net) and reaps until nothing is
    /// left. `sigchld` must be created before the first child is spawned. Runs until the runtime stops.
    pub async fn run(self: Arc<Self>, mut sigchld: tokio::signal::unix::Signal) {
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = sweep.tick() => {}
            }
            self.reap_ready();
        }
    }

    /// Reaps every child that has exited, without blocking.
    pub fn reap_ready(&self) {
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
            // Read name, session and cgroup while the zombie still has its /proc entry.
            let stat = ProcStat::read(pid);
            let is_worker = inner.workers.contains_key(&pid);
            let cgroup = if is_worker || inner.cgroups.is_empty() { None } else { v2_cgroup_name(pid) };
            if is_worker {
                // The zombie worker still pins its pid, and so its group id: nothing else can be in that
                // group, so this kills exactly the job's leftovers (kill grace is over once the worker is).
                match kill::signal_group(pid, Signal::SIGKILL) {
                    Ok(()) => debug!(pid, "killed the rest of the worker's group"),
                    Err(Errno::ESRCH) => {}
                    Err(e) => warn!(pid, error = %e, "cannot kill the worker's group"),
                }
            }
            let reaped = match crate::sys::wait4(pid) {
                Ok(r) => r,
                Err(e) => {
                    error!(pid, error = %e, "wait4 failed after waitid reported the child");
                    return;
                }
            };
            if let Some(exit) = inner.workers.remove(&pid) {
                // The job may be gone already (its call ended); then nobody needs the status.
                let _ = exit.send(WorkerExit {
                    status: reaped.status,
                    user_time: reaped.user_time,
                    system_time: reaped.system_time,
                    max_rss_bytes: reaped.max_rss_bytes,
                });
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

/// The last component of a process's cgroup v2 path (readable for zombies too).
fn v2_cgroup_name(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(path.rsplit('/').next()?.to_string())
}

/// The fields of `/proc/PID/stat` the reaper needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// Command name (`comm`).
    pub comm: String,
    /// State letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Parent pid.
    pub ppid: i32,
    /// Process group id.
    pub pgrp: i32,
    /// Session id.
    pub session: i32,
}

impl ProcStat {
    /// Reads `/proc/PID/stat`; `None` if the process is gone.
    pub fn read(pid: i32) -> Option<ProcStat> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Parses the text of a stat file. `comm` may contain spaces and parentheses, so it is delimited by the
    /// first `(` and the last `)`.
    pub fn parse(text: &str) -> Option<ProcStat> {
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let comm = text.get(open + 1..close)?.to_string();
        let mut rest = text.get(close + 1..)?.split_whitespace();
        let state = rest.next()?.chars().next()?;
        let ppid = rest.next()?.parse().ok()?;
        let pgrp = rest.next()?.parse().ok()?;
        let session = rest.next()?.parse().ok()?;
        Some(ProcStat { comm, state, ppid, pgrp, session })
    }
}

#[cfg(test)]
mod tests {
    use super::ProcStat;

    #[test]
    fn stat_with_awkward_comm_parses() {
        let s = ProcStat::parse("42 (a) b (c)) Z 1 40 41 0 -1").expect("parses");
        assert_eq!(s, ProcStat { comm: "a) b (c)".into(), state: 'Z', ppid: 1, pgrp: 40, session: 41 });
    }
}
