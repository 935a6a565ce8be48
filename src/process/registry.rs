//! The worker registry: which children of the server are workers (and of which job), which spawns are in
//! flight, which sessions and cgroups belong to which job. The spawner, the killers, containment and the
//! reaper all consult it under one lock, and that lock is what makes pids safe to signal.
//!
//! # Invariants
//! - A worker's pid is known from before the reaper can see it exit until it is reaped: the kernel writes it
//!   into the spawn's [`SpawnTicket`] before the child runs (`CLONE_PARENT_SETTID`), the ticket is in the
//!   in-flight list from before the clone until the pid is registered as a worker, and the reaper, which
//!   holds the lock from its `WNOWAIT` peek to the `wait4`, leaves an in-flight pid alone until then. So an
//!   instant exit is never mistaken for an orphan and its status is never lost, and yet no lock is held
//!   across a clone (which lasts until the child execs, and an exec can hang).
//! - A pid in the registry is not reaped yet, so its number cannot have been reused: signalling it (or its
//!   group, which it leads) under the lock cannot hit a stranger. See [`Registry::with_live_worker`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use tokio::sync::{Notify, oneshot};
use tracing::info;

use super::procfs::ProcStat;
use super::signal::signal_group;
pub(crate) use super::wait::ExitStatus;

/// Told the sessions of jobs (fallback mode), so that their processes can be killed if the server dies: the
/// guardian. Injected, so that process handling does not depend on containment.
pub(crate) trait SessionWatch: Send + Sync + std::fmt::Debug {
    /// Processes of session `sid` are a job's.
    fn watch_session(&self, sid: i32);
    /// One announcement of session `sid` is over.
    fn forget_session(&self, sid: i32);
}

/// A worker's end, as the reaper saw it: `wait4`'s report.
pub(crate) use super::wait::Reaped as WorkerExit;

/// A process other than a worker that the reaper collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReapedOrphan {
    /// Its pid.
    pub(crate) pid: i32,
    /// `/proc/PID/comm`, read before reaping.
    pub(crate) name: String,
    /// How it ended.
    pub(crate) status: ExitStatus,
}

/// The orphans reaped for one job, filled by the reaper while the job runs and after its worker exits.
#[derive(Debug, Default)]
pub(crate) struct JobReaps {
    pub(super) reaped: Mutex<Vec<ReapedOrphan>>,
    /// Woken whenever an orphan is added.
    pub(crate) notify: Notify,
}

impl JobReaps {
    /// Records orphans reaped for the job elsewhere (by its pid namespace's init).
    pub(crate) fn record(&self, orphans: Vec<ReapedOrphan>) {
        if !orphans.is_empty() {
            lock(&self.reaped).extend(orphans);
            self.notify.notify_waiters();
        }
    }

    /// Takes the orphans recorded so far.
    pub(crate) fn take(&self) -> Vec<ReapedOrphan> {
        std::mem::take(&mut *lock(&self.reaped))
    }
}

/// What the reaper needs to know about a worker: where to send its exit, and where its job's orphans go.
#[derive(Debug)]
pub(crate) struct WorkerEntry {
    /// Receives the worker's exit status.
    pub(crate) exit: oneshot::Sender<WorkerExit>,
    /// Collects the orphans of the worker's session (and cgroup).
    pub(crate) reaps: Arc<JobReaps>,
    /// The job's cgroup name, when it has one: processes reaped from it are the job's.
    pub(crate) cgroup: Option<String>,
}

/// A live worker, as the reaper needs it.
#[derive(Debug)]
pub(super) struct LiveWorker {
    pub(super) exit: oneshot::Sender<WorkerExit>,
}

#[derive(Debug, Default)]
pub(super) struct Inner {
    /// Live (unreaped) workers by pid.
    pub(super) workers: HashMap<i32, LiveWorker>,
    /// Jobs by session id (= worker pid, and sessions of escapers found later), kept until the job is
    /// fully cleaned up.
    pub(super) sessions: HashMap<i32, Arc<JobReaps>>,
    /// Jobs by cgroup name.
    pub(super) cgroups: HashMap<String, Arc<JobReaps>>,
    /// Spawns under way: cloned (or about to be), not yet registered.
    pub(super) in_flight: Vec<Arc<SpawnTicket>>,
}

/// One spawn, shared by the job that asked for it and the spawner thread doing it.
#[derive(Debug, Default)]
pub(crate) struct SpawnTicket {
    /// The child's pid, written by the kernel before the child runs; 0 before the clone.
    pub(super) pid: AtomicI32,
    /// The job gave up on the spawn before it began.
    cancelled: AtomicBool,
}

impl SpawnTicket {
    /// Where the kernel stores the child's pid (`CLONE_PARENT_SETTID`).
    pub(crate) fn pid_ptr(&self) -> *mut libc::c_int {
        self.pid.as_ptr()
    }
}

/// A job's entries in the registry: its worker's session, the sessions of escapers adopted later, its cgroup.
/// Dropping it removes them all, the one place that does: once the job is over (everything reaped), or at
/// once for a spawn that failed.
#[derive(Debug)]
pub(crate) struct Registration {
    registry: Arc<Registry>,
    worker: i32,
    cgroup: Option<String>,
}

impl Registration {
    /// The worker's pid.
    pub(crate) fn worker(&self) -> i32 {
        self.worker
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.forget_job(Some(self.worker), self.cgroup.as_deref());
    }
}

/// What [`Registry::cancel_spawn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpawnCancel {
    /// The spawn had not begun and now never will.
    NotStarted,
    /// The child exists: it was sent SIGKILL; the spawn returns once it is dead (or has exec'd).
    Killed,
    /// The clone is under way and the kernel has not named the child yet: ask again shortly.
    NotYet,
}

/// The worker registry shared by the spawner, the killers and the reaper.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(super) inner: Mutex<Inner>,
    pub(super) orphans_reaped: prometheus_client::metrics::counter::Counter,
    /// The guardian's pid (a child of the server that is neither a worker nor an orphan), or 0.
    pub(super) guardian_pid: AtomicI32,
    pub(super) guardian_died: AtomicBool,
    /// Set when the server is done: the guardian's exit is then expected.
    pub(super) guardian_retired: AtomicBool,
    /// Told about escapers' sessions in fallback mode.
    session_guardian: OnceLock<Arc<dyn SessionWatch>>,
    /// Wakes the reaper when a pid it had to leave alone (in flight) has been registered.
    pub(super) reap_again: Notify,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps inconsistent, so poisoning is ignored.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Registry {
    /// Records the guardian's pid: when it is reaped, that is an error, not an orphan.
    pub(crate) fn set_guardian(&self, pid: i32) {
        self.guardian_pid.store(pid, Ordering::Release);
    }

    /// The server is done: the guardian exiting from now on is its normal end, not an error.
    pub(crate) fn retire_guardian(&self) {
        self.guardian_retired.store(true, Ordering::Release);
    }

    /// Whether the guardian was seen to die.
    pub(crate) fn guardian_died(&self) -> bool {
        self.guardian_died.load(Ordering::Acquire)
    }

    /// In fallback mode, escapers' sessions are announced to `guardian` too.
    pub(crate) fn guard_sessions(&self, guardian: Arc<dyn SessionWatch>) {
        let _ = self.session_guardian.set(guardian);
    }

    /// Marks a spawn as under way, unless its job cancelled it. Called before the clone.
    pub(crate) fn begin_spawn(&self, ticket: &Arc<SpawnTicket>) -> bool {
        let mut inner = lock(&self.inner);
        if ticket.cancelled.load(Ordering::Acquire) {
            return false;
        }
        inner.in_flight.push(Arc::clone(ticket));
        true
    }

    /// Registers the worker the clone created (or forgets a failed spawn), then lets the reaper collect it.
    /// The job's entries last as long as the returned [`Registration`].
    pub(crate) fn finish_spawn(
        self: &Arc<Self>,
        ticket: &SpawnTicket,
        cloned: Result<i32, Errno>,
        entry: WorkerEntry,
    ) -> Result<Registration, Errno> {
        let mut inner = lock(&self.inner);
        inner.in_flight.retain(|t| !std::ptr::eq(Arc::as_ptr(t), ticket));
        let pid = cloned?;
        let worker = LiveWorker { exit: entry.exit };
        inner.workers.insert(pid, worker);
        if let Some(cgroup) = &entry.cgroup {
            inner.cgroups.insert(cgroup.clone(), Arc::clone(&entry.reaps));
        }
        inner.sessions.insert(pid, entry.reaps);
        drop(inner);
        self.reap_again.notify_one();
        Ok(Registration { registry: Arc::clone(self), worker: pid, cgroup: entry.cgroup })
    }

    /// Stops a spawn its job no longer wants: before it began, it never will; once the child exists, it is
    /// SIGKILLed (it is unreaped, in flight or registered, so its pid cannot have been reused).
    pub(crate) fn cancel_spawn(&self, ticket: &Arc<SpawnTicket>) -> SpawnCancel {
        let inner = lock(&self.inner);
        let in_flight = inner.in_flight.iter().any(|t| Arc::ptr_eq(t, ticket));
        let pid = ticket.pid.load(Ordering::Acquire);
        if !in_flight && pid == 0 {
            ticket.cancelled.store(true, Ordering::Release);
            return SpawnCancel::NotStarted;
        }
        if pid == 0 {
            return SpawnCancel::NotYet;
        }
        if in_flight || inner.workers.contains_key(&pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            let _ = signal_group(pid, Signal::SIGKILL);
        }
        SpawnCancel::Killed
    }

    /// Attributes processes of session `session` (an escaper's own session) to the job of `worker`.
    fn adopt(inner: &mut Inner, worker: i32, session: i32, guardian: Option<&Arc<dyn SessionWatch>>) {
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
    /// or `holds_stdio(pid)`. Decided and done under the lock from one reading of `/proc/PID/stat`: as only the
    /// reaper reaps, and it needs this lock, the pid cannot be reaped and reused in between. Returns `None` if
    /// it is not the job's, else whether it still has to be reaped (signalled now, or a zombie).
    pub(crate) fn kill_if_job_child(
        &self,
        pid: i32,
        worker: i32,
        holds_stdio: impl FnOnce(i32) -> bool,
    ) -> Option<bool> {
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
        if !(stat.session == worker || stat.pgrp == worker || same_job || holds_stdio(pid)) {
            return None;
        }
        if stat.state == 'Z' {
            return Some(true);
        }
        Self::adopt(&mut inner, worker, stat.session, self.session_guardian.get());
        info!(pid, name = %stat.comm, "killing a process that escaped the job's group");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        if stat.pgrp == pid {
            let _ = signal_group(pid, Signal::SIGKILL);
        }
        Some(true)
    }

    /// Runs `f(pid)` only if `pid` is a registered, not yet reaped worker, holding the lock so that the
    /// reaper cannot reap it meanwhile. Returns `None` if the worker is already gone.
    pub(crate) fn with_live_worker<T>(&self, pid: i32, f: impl FnOnce(i32) -> T) -> Option<T> {
        let inner = lock(&self.inner);
        inner.workers.contains_key(&pid).then(|| f(pid))
    }

    /// Forgets a job (its sessions and cgroup); later orphans count as unattributed. Only
    /// [`Registration`]'s drop calls it.
    fn forget_job(&self, worker: Option<i32>, cgroup: Option<&str>) {
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
    pub(crate) fn orphans_reaped(&self) -> u64 {
        self.orphans_reaped.get()
    }

    /// The orphan counter, for the metrics.
    pub(crate) fn orphans_counter(&self) -> prometheus_client::metrics::counter::Counter {
        self.orphans_reaped.clone()
    }
}
