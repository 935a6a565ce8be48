//! The reaper: the server is a child subreaper, and this module is the **only** place that waits for
//! children. It collects every worker's exit status and rusage and hands it to the worker's job, kills what
//! is left of a worker's process group at that moment, and reaps every orphan that the kernel reparents to
//! the server (grandchildren of jobs, or, as PID 1, anything), attributing it to its job.
//!
//! # Invariants
//! - A worker's pid is known from before the reaper can see it exit until it is reaped: the kernel writes it
//!   into the spawn's [`SpawnTicket`] before the child runs (`CLONE_PARENT_SETTID`), the ticket is in the
//!   registry's in-flight list from before the clone until the pid is registered as a worker, and the reaper,
//!   which holds the lock from its `WNOWAIT` peek to the `wait4`, leaves an in-flight pid alone until then.
//!   So an instant exit is never mistaken for an orphan and its status is never lost, and yet no lock is held
//!   across a clone (which lasts until the child execs, and an exec can hang).
//! - A pid in the registry is not reaped yet, so its number cannot have been reused: signalling it (or its
//!   group, which it leads) under the lock cannot hit a stranger. See [`Registry::with_live_worker`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use tokio::sync::{Notify, oneshot};
use tracing::{debug, error, info, warn};

use crate::guardian::Guardian;
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
    /// `ru_maxrss`: the peak resident set size of the worker and the children it waited for, but at least
    /// the server's own at spawn time (Linux carries the spawning process's high-water mark across exec).
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
    /// Spawns under way: cloned (or about to be), not yet registered.
    in_flight: Vec<Arc<SpawnTicket>>,
}

/// One spawn, shared by the job that asked for it and the spawner thread doing it.
#[derive(Debug, Default)]
pub struct SpawnTicket {
    /// The child's pid, written by the kernel before the child runs; 0 before the clone.
    pid: AtomicI32,
    /// The job gave up on the spawn before it began.
    cancelled: AtomicBool,
}

impl SpawnTicket {
    /// Where the kernel stores the child's pid (`CLONE_PARENT_SETTID`).
    pub(crate) fn pid_ptr(&self) -> *mut libc::c_int {
        self.pid.as_ptr()
    }
}

/// What [`Registry::cancel_spawn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnCancel {
    /// The spawn had not begun and now never will.
    NotStarted,
    /// The child exists: it was sent SIGKILL; the spawn returns once it is dead (or has exec'd).
    Killed,
}

/// The worker registry shared by the spawner, the killers and the reaper.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    orphans_reaped: prometheus_client::metrics::counter::Counter,
    /// The guardian's pid (a child of the server that is neither a worker nor an orphan), or 0.
    guardian_pid: AtomicI32,
    guardian_died: AtomicBool,
    /// Told about escapers' sessions in fallback mode.
    session_guardian: OnceLock<Arc<Guardian>>,
    /// Wakes the reaper when a pid it had to leave alone (in flight) has been registered.
    reap_again: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps inconsistent, so poisoning is ignored.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Registry {
    /// Records the guardian's pid: when it is reaped, that is an error, not an orphan.
    pub fn set_guardian(&self, pid: i32) {
        self.guardian_pid.store(pid, Ordering::Release);
    }

    /// Whether the guardian was seen to die.
    pub fn guardian_died(&self) -> bool {
        self.guardian_died.load(Ordering::Acquire)
    }

    /// In fallback mode, escapers' sessions are announced to `guardian` too.
    pub fn guard_sessions(&self, guardian: Arc<Guardian>) {
        let _ = self.session_guardian.set(guardian);
    }

    /// Marks a spawn as under way, unless its job cancelled it. Called before the clone.
    pub fn begin_spawn(&self, ticket: &Arc<SpawnTicket>) -> bool {
        let mut inner = lock(&self.inner);
        if ticket.cancelled.load(Ordering::Acquire) {
            return false;
        }
        inner.in_flight.push(Arc::clone(ticket));
        true
    }

    /// Registers the worker the clone created (or forgets a failed spawn), then lets the reaper collect it.
    pub fn finish_spawn(
        &self,
        ticket: &SpawnTicket,
        cloned: Result<i32, Errno>,
        entry: WorkerEntry,
    ) -> Result<i32, Errno> {
        let mut inner = lock(&self.inner);
        inner.in_flight.retain(|t| !std::ptr::eq(Arc::as_ptr(t), ticket));
        let pid = cloned?;
        inner.workers.insert(pid, entry.exit);
        if let Some(cgroup) = entry.cgroup {
            inner.cgroups.insert(cgroup, Arc::clone(&entry.reaps));
        }
        inner.sessions.insert(pid, entry.reaps);
        drop(inner);
        self.reap_again.notify_one();
        Ok(pid)
    }

    /// Stops a spawn its job no longer wants: before it began, it never will; once the child exists, it is
    /// SIGKILLed (it is unreaped, in flight or registered, so its pid cannot have been reused).
    pub fn cancel_spawn(&self, ticket: &Arc<SpawnTicket>) -> SpawnCancel {
        let inner = lock(&self.inner);
        let in_flight = inner.in_flight.iter().any(|t| Arc::ptr_eq(t, ticket));
        let pid = ticket.pid.load(Ordering::Acquire);
        if !in_flight && pid == 0 {
            ticket.cancelled.store(true, Ordering::Release);
            return SpawnCancel::NotStarted;
        }
        if pid > 0 && (in_flight || inner.workers.contains_key(&pid)) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            let _ = kill::signal_group(pid, Signal::SIGKILL);
        }
        SpawnCancel::Killed
    }

    /// Attributes processes of session `session` (an escaper's own session) to the job of `worker`.
    pub fn adopt_session(&self, worker: i32, session: i32) {
        let mut inner = lock(&self.inner);
        Self::adopt(&mut inner, worker, session, self.session_guardian.get());
    }

    fn adopt(inner: &mut Inner, worker: i32, session: i32, guardian: Option<&Arc<Guardian>>) {
        if let Some(reaps) = inner.sessions.get(&worker).cloned()
            && let std::collections::hash_map::Entry::Vacant(entry) = inner.sessions.entry(session)
        {
            entry.insert(reaps);
            if let Some(guardian) = guardian {
                guardian.watch_session(session);
            }
        }
    }

    /// Kills `pid` if, at this instant, it is an unreaped child of the server that is not a worker and belongs
    /// to the job of `worker`: in the worker's session or group, in a session already attributed to the job,
    /// or `holds_pipe(pid)`. Decided and done under the lock from one reading of `/proc/PID/stat`: as only the
    /// reaper reaps, and it needs this lock, the pid cannot be reaped and reused in between. Returns `None` if
    /// it is not the job's, else whether it still has to be reaped (signalled now, or a zombie).
    pub fn kill_if_job_child(&self, pid: i32, worker: i32, holds_pipe: impl FnOnce(i32) -> bool) -> Option<bool> {
        let mut inner = lock(&self.inner);
        if inner.workers.contains_key(&pid) {
            return None;
        }
        let stat = ProcStat::read(pid)?;
        if stat.ppid != std::process::id() as i32 {
            return None;
        }
        let job = Arc::clone(inner.sessions.get(&worker)?);
        let same_job = inner.sessions.get(&stat.session).is_some_and(|r| Arc::ptr_eq(r, &job));
        if !(stat.session == worker || stat.pgrp == worker || same_job || holds_pipe(pid)) {
            return None;
        }
        if stat.state == 'Z' {
            return Some(true);
        }
        Self::adopt(&mut inner, worker, stat.session, self.session_guardian.get());
        info!(pid, name = %stat.comm, "killing a process that escaped the job's group");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        if stat.pgrp == pid {
            let _ = kill::signal_group(pid, Signal::SIGKILL);
        }
        Some(true)
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
        let guardian = self.session_guardian.get();
        if let Some(reaps) = worker.and_then(|worker| inner.sessions.remove(&worker)) {
            if let (Some(guardian), Some(worker)) = (guardian, worker) {
                guardian.forget_session(worker);
            }
            inner.sessions.retain(|session, r| {
                let keep = !Arc::ptr_eq(r, &reaps);
                if !keep && let Some(guardian) = guardian {
                    guardian.forget_session(*session);
                }
                keep
            });
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
                () = self.reap_again.notified() => {}
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
            if pid == self.guardian_pid.load(Ordering::Acquire) {
                drop(inner);
                self.guardian_died.store(true, Ordering::Release);
                error!(pid, status = ?reaped.status, "the guardian died: if the server crashes now, processes of \
                    its jobs can outlive it until the next start");
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
