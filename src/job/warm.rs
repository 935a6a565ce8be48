//! Warm sandboxes: the work a job needs that does not depend on its request, done before the request comes.
//!
//! A sandbox is forkpool's init, started in a job cgroup with the default limits and in the namespaces and
//! mounts a job asks for by default (pid, mount with a private `/tmp`, network, IPC and UTS), waiting for a
//! job ([`crate::process::spawn::Staged`]). A job of that shape (most are: no catalog `isolation` or `limits`
//! of its own) takes one when it gets its slot: only its directory, stdio, limits, privileges, user and
//! seccomp filter are applied then, by the init, and its program forked and exec'd. Everything else (the
//! cgroup, with the hybrid hierarchies' slow v1 joins; the namespaces; the mounts; the init's exec) is off
//! the request path. A job of another shape, or one that finds none ready, is spawned cold as before.
//!
//! One task keeps `target` sandboxes ready, making a new one whenever one is taken. They are workers like any
//! other (registered, in their cgroups, dying with the server through the parent-death signal); at shutdown
//! they are closed (their init exits when its request socket closes) and their cgroups removed.

use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::containment::cgroup::JobCgroup;
use crate::containment::netns::Netns;
use crate::containment::{Containment, WarmShape};
use crate::process::registry::{JobReaps, WorkerEntry, WorkerExit};
use crate::process::spawn::{Spawner, Staged};

/// A ready sandbox and what its job takes over: the cgroup, the network namespace, the exit channel and the
/// orphan list.
#[derive(Debug)]
pub(crate) struct Sandbox {
    pub(crate) staged: Staged,
    pub(crate) cgroup: Option<JobCgroup>,
    /// Its network namespace (a reused one, or its own new one), which may be reused after its job.
    pub(crate) net: Option<Netns>,
    pub(crate) exit: oneshot::Receiver<WorkerExit>,
    pub(crate) reaps: Arc<JobReaps>,
}

/// The ready sandboxes.
#[derive(Debug)]
pub(crate) struct WarmPool {
    shape: WarmShape,
    target: usize,
    ready: Mutex<Vec<Sandbox>>,
    /// Wakes the keeper when a sandbox was taken.
    taken: Notify,
    closed: CancellationToken,
    /// Fired by the keeper once the last sandbox is discarded.
    done: CancellationToken,
    /// Sandboxes whose init died before use, for the keeper to discard.
    dead: Mutex<Vec<Sandbox>>,
}

impl WarmPool {
    /// A pool of `target` sandboxes of `shape` (filled by [`WarmPool::keep`]).
    pub(crate) fn new(shape: WarmShape, target: usize) -> WarmPool {
        WarmPool {
            shape,
            target,
            ready: Mutex::new(Vec::new()),
            taken: Notify::new(),
            closed: CancellationToken::new(),
            done: CancellationToken::new(),
            dead: Mutex::new(Vec::new()),
        }
    }

    /// The same pool with another target.
    pub(crate) fn with_target(mut self, target: usize) -> WarmPool {
        self.target = target;
        self
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, Vec<Sandbox>> {
        // A panic while holding the lock leaves a valid list.
        self.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A ready sandbox for a job that fits its shape (`fits`), if there is one. One whose init died meanwhile
    /// (killed from outside) is left for the keeper to discard.
    pub(crate) fn take(&self, fits: impl FnOnce(&WarmShape) -> bool) -> Option<Sandbox> {
        if self.closed.is_cancelled() || !fits(&self.shape) {
            return None;
        }
        let mut ready = self.ready();
        let mut found = None;
        while let Some(mut sandbox) = ready.pop() {
            if matches!(sandbox.exit.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
                found = Some(sandbox);
                break;
            }
            self.dead().push(sandbox);
        }
        drop(ready);
        self.taken.notify_one();
        found
    }

    fn dead(&self) -> std::sync::MutexGuard<'_, Vec<Sandbox>> {
        self.dead.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `target` sandboxes ready until the pool is closed, then discards them.
    pub(crate) async fn keep(&self, spawner: &Spawner, containment: &Containment) {
        let mut made = 0u64;
        let mut failures = 0u32;
        while !self.closed.is_cancelled() {
            let dead = std::mem::take(&mut *self.dead());
            for Sandbox { cgroup, .. } in dead {
                warn!("a warm sandbox's init died before it was used");
                containment.discard(cgroup).await;
            }
            if self.ready().len() >= self.target {
                tokio::select! {
                    () = self.taken.notified() => {}
                    () = self.closed.cancelled() => break,
                }
                continue;
            }
            made += 1;
            match self.stage(spawner, containment, made).await {
                Ok(sandbox) => {
                    failures = 0;
                    self.ready().push(sandbox);
                }
                Err(e) => {
                    // Jobs are spawned cold meanwhile; try again, less and less often.
                    failures = failures.saturating_add(1);
                    warn!(error = %e, "cannot make a warm sandbox");
                    let pause = std::time::Duration::from_millis(100 << failures.min(6));
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = self.closed.cancelled() => break,
                    }
                }
            }
        }
        let mut left = std::mem::take(&mut *self.ready());
        left.append(&mut self.dead());
        for sandbox in left {
            let Sandbox { staged, cgroup, exit, .. } = sandbox;
            // Its request socket closes: the init exits.
            drop(staged);
            let _ = exit.await;
            containment.discard(cgroup).await;
        }
        self.done.cancel();
    }

    async fn stage(&self, spawner: &Spawner, containment: &Containment, n: u64) -> std::io::Result<Sandbox> {
        let (mut command, cgroup) = containment.stage(&format!("warm-{n}"), &self.shape)?;
        // A network namespace a finished job left as it was made, if one is ready (see `containment::netns`).
        let mut net = containment.spare_network(&self.shape);
        if let Some(fd) = net.as_ref().and_then(|n| n.fd().ok()) {
            command = command.join_network(fd);
        }
        let own_network = command.own_network();
        let reaps = Arc::new(JobReaps::default());
        let (tx, exit) = oneshot::channel();
        let entry =
            WorkerEntry { exit: tx, reaps: Arc::clone(&reaps), cgroup: cgroup.as_ref().map(|c| c.name().to_string()) };
        match spawner.stage(command, entry).await {
            Ok(staged) => {
                debug!(pid = staged.pid, reused_network = net.is_some(), "warm sandbox ready");
                if own_network && net.is_none() && containment.reusable_shape(&self.shape) {
                    // Its init waits for a job: its namespace is as made.
                    net = containment.new_network_of(staged.pid);
                }
                Ok(Sandbox { staged, cgroup, net, exit, reaps })
            }
            Err(e) => {
                containment.discard(cgroup).await;
                Err(std::io::Error::other(e.to_string()))
            }
        }
    }

    /// Stops making sandboxes and discards the ready ones (the keeper does, as it ends).
    pub(crate) fn close(&self) {
        self.closed.cancel();
    }

    /// Once the keeper has discarded every sandbox (after [`WarmPool::close`]).
    pub(crate) async fn discarded(&self) {
        self.done.cancelled().await;
    }
}
