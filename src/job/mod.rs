//! One job's life: wait for a slot, spawn the worker, stream its output and the client's input, end it,
//! and report exactly once.
//!
//! A job ends in one of these ways, and each is reported exactly once:
//! - the worker exits on its own (or from a signal the client sent): `exited`, reason `EXITED`;
//! - its timeout passes: killed, `exited` with `TIMED_OUT`;
//! - the server shuts down: killed, `exited` with `SHUTDOWN`;
//! - the call ends (cancel, disconnect: the response stream's drop guard fires `cancelled`): killed, and
//!   nobody is left to tell;
//! - the call's deadline passes: killed, `DEADLINE_EXCEEDED`;
//! - the client sends something invalid mid-call (a second `start`, a message that does not decode, a
//!   malformed frame): killed, `INVALID_ARGUMENT` naming the problem;
//! - the request stream breaks (a transport error): killed, the transport's status (if anyone is left to
//!   read it).
//!
//! A call that ends while its worker is being created cancels the spawn (a spawn stuck before exec is
//! SIGKILLed), so a hung exec holds only its own call. During a forced shutdown, sends to a client that does
//! not read are abandoned after a bound, so no client can keep the server from stopping.
//!
//! Whatever the way, `exited` (or the error) is sent only after the worker is reaped, the rest of its group
//! is killed and reaped, and its output is drained.

mod files;
pub(crate) mod metrics;
pub(crate) mod pool;
mod report;
pub(crate) mod stdio;
pub(crate) mod supervise;
pub(crate) mod terminal;
pub(crate) mod warm;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::Metrics;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, field, info, info_span, warn};

use crate::config::JobPlan;
use crate::containment::Containment;
use crate::pb::{self, execute_response::Event as Ev};
use crate::process::init_report::InitReport;
use crate::process::kill::GroupKiller;
use crate::process::registry::{JobReaps, Registry, SpawnCancel, SpawnTicket, WorkerEntry};
use crate::process::spawn::{SpawnError, Spawned, Spawner};
use pool::{Admission, AdmissionError, Pool, QueueEvent, Slot, Ticket};
use report::response;
use stdio::{JobIo, OutputBudget};
use supervise::{Ending, Outcome, Supervisor, sleep_until_or_never};
use terminal::{TerminalCount, TerminalPermit};

/// One item of a call's response stream.
pub(crate) type Event = Result<pb::ExecuteResponse, JobError>;

/// Why a call ended with an error status instead of `exited`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    /// A later request was invalid (`INVALID_ARGUMENT`); the job was killed.
    #[error("{0}")]
    InvalidRequest(String),
    /// A later request was over the size limit (`RESOURCE_EXHAUSTED`); the job was killed.
    #[error("request message too large: {0} (the job was killed)")]
    MessageTooLarge(String),
    /// The worker could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The call's deadline passed; the job was killed.
    #[error("the call's deadline passed; the job was killed")]
    DeadlineExceeded,
    /// The request stream failed below gRPC (a transport error); the job was killed. The code is the
    /// transport's.
    #[error("the request stream failed: {1} (the job was killed)")]
    Transport(tonic::Code, String),
    /// The server is shutting down and the call had not started.
    #[error("the server is shutting down; the job did not start")]
    ShuttingDown,
    /// The job's cgroup or working directory could not be made; the OS error keeps its kind.
    #[error("cannot prepare the job's containment: {0}")]
    Containment(std::io::Error),
    /// The job's stdio could not be watched (the runtime's epoll refused it); the job was killed.
    #[error("cannot relay the job's stdio: {0} (the job was killed)")]
    Stdio(String),
    /// Input or output files could not be written or read; the OS error keeps its kind.
    #[error("cannot write or read the job's files: {0}")]
    Files(std::io::Error),
    /// The call was refused admission after its upload (the queue was full, the server draining).
    #[error(transparent)]
    Admission(AdmissionError),
    /// No input chunk came for `upload_idle_timeout`: the staged upload was dropped.
    #[error("no `input` chunk came for {0:?} (upload_idle_timeout): the upload was dropped")]
    UploadStalled(Duration),
    /// The client went away while something was sent to it (nobody is left to tell).
    #[error("the client went away")]
    ClientGone,
    /// The worker's status was lost (a bug).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// Everything jobs share: the pool, the spawner, the reaper's registry, counters and the shutdown signal.
#[derive(Debug)]
pub(crate) struct Jobs {
    pool: Arc<Pool>,
    spawner: Spawner,
    registry: Arc<Registry>,
    containment: Containment,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// Fired late in a forced shutdown: events a client does not read are dropped from then on.
    abandon: CancellationToken,
    /// Terminal jobs queued or running, against `max_terminals`.
    terminals: Arc<TerminalCount>,
    /// Longest wait for the next input chunk of an upload.
    upload_idle_timeout: Duration,
    next_id: AtomicU64,
    id_prefix: String,
    /// Test-only fault (debug builds): a job task of this catalog job panics.
    panic_on_job: Option<String>,
    /// Warm sandboxes for jobs of the default shape (where jobs get a pid namespace).
    warm: Option<warm::WarmPool>,
}

/// One call's inputs, handed over by the service once the `start` request is validated and admitted.
#[derive(Debug)]
pub(crate) struct Call<S> {
    /// What to run.
    pub(crate) plan: JobPlan,
    /// The slot or queue place.
    pub(crate) admission: Admission,
    /// A terminal job's place among the server's terminals, held to the end of the call.
    pub(crate) terminal: Option<TerminalPermit>,
    /// The rest of the request stream (stdin, close_stdin, signal).
    pub(crate) requests: S,
    /// The response stream.
    pub(crate) events: mpsc::Sender<Event>,
    /// Fired when the call ends early (the response stream was dropped).
    pub(crate) cancelled: CancellationToken,
    /// The call's deadline (`grpc-timeout`).
    pub(crate) deadline: Option<Instant>,
    /// The client's address, for logs.
    pub(crate) peer: Option<SocketAddr>,
}

impl Jobs {
    /// Shared state for all jobs. `shutdown` fires when running jobs must be killed (reason `SHUTDOWN`);
    /// `abandon` when, late in a forced shutdown, events nobody reads must be dropped.
    pub(crate) fn new(
        pool: Arc<Pool>,
        spawner: Spawner,
        registry: Arc<Registry>,
        containment: Containment,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        abandon: CancellationToken,
    ) -> Self {
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let warm = containment.warm_shape().map(|shape| warm::WarmPool::new(shape, 0));
        Jobs {
            pool,
            spawner,
            registry,
            containment,
            metrics,
            shutdown,
            abandon,
            terminals: TerminalCount::new(usize::MAX),
            upload_idle_timeout: Duration::from_secs(60),
            next_id: AtomicU64::new(1),
            id_prefix: format!("{:x}", started & 0xff_ffff),
            panic_on_job: None,
            warm,
        }
    }

    /// Keeps `target` warm sandboxes ready (default: as many as can start at once, at least 4 and at most 8;
    /// each is an idle init and its namespaces); 0 = none. At least 4: making one can stall for 10-30 ms (a v1
    /// cgroup join on hybrid hosts waits for an RCU grace period), and with 2, sequential jobs used them up and
    /// started cold, as slow, about once in a hundred.
    pub(crate) fn with_warm_sandboxes(mut self, target: Option<usize>) -> Self {
        let target = target.unwrap_or_else(|| self.pool.workers().clamp(4, 8));
        self.warm = self.warm.take().filter(|_| target > 0).map(|pool| pool.with_target(target));
        self
    }

    /// Keeps warm sandboxes ready until [`Jobs::close_warm`] (run as a task of its own).
    pub(crate) async fn keep_warm(&self) {
        if let Some(warm) = &self.warm {
            warm.keep(&self.spawner, &self.containment).await;
        }
    }

    /// Stops making warm sandboxes and discards the ready ones; returns once they are gone.
    pub(crate) async fn close_warm(&self) {
        if let Some(warm) = &self.warm {
            warm.close();
            warm.discarded().await;
        }
    }

    /// Caps terminal jobs (queued or running) at `max`.
    pub(crate) fn with_max_terminals(mut self, max: usize) -> Self {
        self.terminals = TerminalCount::new(max);
        self
    }

    /// Drops an upload after `idle` without a chunk.
    pub(crate) fn with_upload_idle_timeout(mut self, idle: Duration) -> Self {
        self.upload_idle_timeout = idle;
        self
    }

    /// Test-only fault injection: a job task running catalog job `name` panics (the server aborts; see
    /// the crash tests).
    pub(crate) fn inject_panic_on_job(&mut self, name: Option<String>) {
        self.panic_on_job = name;
    }

    /// The pool.
    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The metrics (and `GetStatus` counters).
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The reaper's registry.
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The containment mode.
    pub(crate) fn containment(&self) -> &Containment {
        &self.containment
    }

    /// Admits a call to the pool (a terminal job also to one of the server's terminals; a call with input files
    /// first to the uploads, see [`Pool::admit_staging`]), counting refusals.
    pub(crate) fn admit(
        &self,
        terminal: bool,
        uploads: bool,
    ) -> Result<(Admission, Option<TerminalPermit>), AdmissionError> {
        let permit = match terminal {
            false => Ok(None),
            true => {
                self.terminals.acquire().map(Some).ok_or(AdmissionError::TooManyTerminals { max: self.terminals.max() })
            }
        };
        permit
            .and_then(|permit| {
                let admission = if uploads { self.pool.admit_staging()? } else { self.pool.admit()? };
                Ok((admission, permit))
            })
            .inspect_err(|e| self.metrics.rejected(rejection_label(e)))
    }

    /// Runs one call to its end. Spawned as its own task by the service.
    pub(crate) async fn run<S>(self: Arc<Self>, call: Call<S>)
    where
        S: Stream<Item = Result<pb::ExecuteRequest, tonic::Status>> + Unpin + Send + 'static,
    {
        let id = format!("{}-{}", self.id_prefix, self.next_id.fetch_add(1, Ordering::Relaxed));
        let peer = call.peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
        let span =
            info_span!("job", job_id = %id, job = %call.plan.name, %peer, pid = field::Empty, uid = field::Empty);
        self.run_call(id, call).instrument(span).await;
    }

    async fn run_call<S>(&self, job_id: String, call: Call<S>)
    where
        S: Stream<Item = Result<pb::ExecuteRequest, tonic::Status>> + Unpin + Send + 'static,
    {
        // The terminal permit (if any) is held to the end of the call, and given back before its slot.
        let Call {
            mut plan, mut admission, terminal: terminal_permit, mut requests, events, cancelled, deadline, ..
        } = call;
        let accepted = Instant::now();
        // A job that names no user gets a uid of its own for its whole call (its files and terminal are its).
        let _dynamic_user = match self.containment.dynamic_user(&plan) {
            Ok(user) => {
                if let Some(user) = &user {
                    plan.ids = Some(user.ids());
                    tracing::Span::current().record("uid", user.ids().0);
                }
                user
            }
            Err(e) => {
                warn!(error = %e, "no dynamic user is free");
                return self.send(&events, Err(JobError::Containment(e))).await;
            }
        };
        // A call with input files uploads them first (staged: no slot, no queue place), then queues.
        let mut staged = None;
        if let Admission::Staging(staging) = admission {
            let container = match self.containment.prepare(&job_id, &plan) {
                Ok(container) => container,
                Err(e) => {
                    warn!(error = %e, "cannot prepare the job's containment");
                    return self.send(&events, Err(JobError::Containment(e))).await;
                }
            };
            let idle = self.upload_idle_timeout;
            let watch = files::UploadWatch { cancelled: &cancelled, draining: self.pool.closed(), deadline, idle };
            if let Err(end) = self.upload(&container, &plan, &mut requests, watch).await {
                self.containment.release(container).await;
                return match end {
                    files::UploadEnd::Ended(ending) => self.report_unstarted(&events, ending).await,
                    files::UploadEnd::Failed(e) => self.send(&events, Err(JobError::Files(e))).await,
                    files::UploadEnd::Stalled(idle) => {
                        info!(?idle, "the upload stalled");
                        self.metrics.cancelled.inc();
                        self.send(&events, Err(JobError::UploadStalled(idle))).await
                    }
                };
            }
            admission = match staging.admit() {
                Ok(admission) => admission,
                Err(e) => {
                    self.containment.release(container).await;
                    self.metrics.rejected(rejection_label(&e));
                    return self.send(&events, Err(JobError::Admission(e))).await;
                }
            };
            staged = Some(container);
        }
        let slot = match admission {
            Admission::Slot(slot) => Some(slot),
            Admission::Queued(ticket) => self.wait_in_queue(ticket, &events, &cancelled, deadline).await,
            Admission::Staging(_) => None,
        };
        let Some(slot) = slot else {
            if let Some(container) = staged {
                self.containment.release(container).await;
            }
            return;
        };
        let slotted = Instant::now();
        let mut container = match staged.map_or_else(|| self.containment.prepare(&job_id, &plan), Ok) {
            Ok(container) => container,
            Err(e) => {
                warn!(error = %e, "cannot prepare the job's containment");
                return self.send(&events, Err(JobError::Containment(e))).await;
            }
        };
        // The command first (a bad one takes nothing); then a warm sandbox of the job's shape, if one is ready
        // (its cgroup becomes the job's), else the job's own cgroup, made now (and the command placed in it).
        let command = match self.containment.command(&plan, &container) {
            Ok(command) => command,
            Err(e) => {
                self.containment.release(container).await;
                return self.send(&events, Err(e.into())).await;
            }
        };
        let mut sandbox = self.warm.as_ref().and_then(|w| w.take(|shape| self.containment.fits(&plan, shape)));
        let command = match &mut sandbox {
            Some(sandbox) => {
                container.adopt_sandbox(sandbox.cgroup.take(), sandbox.net.take());
                command
            }
            None => {
                let cold = self
                    .containment
                    .add_cgroup(&mut container, &job_id, &plan)
                    .map_err(JobError::Containment)
                    .and_then(|()| self.containment.place(command, &container).map_err(JobError::from));
                match cold {
                    Ok(command) => command,
                    Err(e) => {
                        warn!(error = %e, "cannot prepare the job's containment");
                        self.containment.release(container).await;
                        return self.send(&events, Err(e)).await;
                    }
                }
            }
        };
        let prepared = Instant::now();
        let warm = sandbox.is_some();
        if self.panic_on_job.as_deref() == Some(plan.name.as_str()) {
            panic!("injected fault: a panic in the job task of `{}`", plan.name);
        }
        let (reaps, exit_rx, spawned, early) = match sandbox {
            // The init is waiting: it gets the job's directory, stdio, limits, privileges and user now.
            Some(warm::Sandbox { staged, exit, reaps, .. }) => {
                let pid = staged.pid;
                let starting = staged.start(&command);
                tokio::pin!(starting);
                let mut early = None;
                let spawned = tokio::select! {
                    biased;
                    spawned = &mut starting => spawned,
                    ending = early_ending(&cancelled, &self.shutdown, deadline) => {
                        info!(?ending, "the call ended while its worker was being started");
                        early = Some(ending);
                        // Killing the init kills its namespace; its report pipe closes, and the start returns.
                        self.registry.with_live_worker(pid, |pid| {
                            crate::process::signal::signal_group(pid, nix::sys::signal::Signal::SIGKILL)
                        });
                        starting.await
                    }
                };
                (reaps, exit, spawned, early)
            }
            None => {
                let reaps = Arc::new(JobReaps::default());
                let (exit_tx, exit_rx) = oneshot::channel();
                let entry = WorkerEntry { exit: exit_tx, reaps: Arc::clone(&reaps), cgroup: container.cgroup_name() };
                let ticket = Arc::new(SpawnTicket::default());
                let spawning = self.spawner.spawn(command, entry, Arc::clone(&ticket));
                tokio::pin!(spawning);
                // How the call ended, if it did while its worker was being created (the worker was killed then).
                let mut early = None;
                let spawned = tokio::select! {
                    biased;
                    spawned = &mut spawning => spawned,
                    ending = early_ending(&cancelled, &self.shutdown, deadline) => {
                        info!(?ending, "the call ended while its worker was being created");
                        early = Some(ending.clone());
                        loop {
                            match self.registry.cancel_spawn(&ticket) {
                                SpawnCancel::NotStarted => {
                                    self.containment.release(container).await;
                                    return self.report_unstarted(&events, ending).await;
                                }
                                // The spawn returns once the child is dead (or has exec'd); the supervisor then ends
                                // the job as usual, the ending still being in force.
                                SpawnCancel::Killed => {
                                    self.containment.kill_early(&container);
                                    break spawning.await;
                                }
                                // Inside the clone itself: the kernel names the child before it runs; look again.
                                SpawnCancel::NotYet => tokio::select! {
                                    spawned = &mut spawning => break spawned,
                                    () = tokio::time::sleep(Duration::from_millis(1)) => {}
                                },
                            }
                        }
                    }
                };
                (reaps, exit_rx, spawned, early)
            }
        };
        let (spawned, exit_rx) = match (spawned, early.clone()) {
            (Ok(spawned), _) => (spawned, exit_rx),
            // The call had ended anyway: report that, not the spawn's own failure. (A worker that exists, a
            // sandbox's init, is gone before its cgroup is removed.)
            (Err(_), Some(ending)) => {
                let _ = tokio::time::timeout(Duration::from_secs(5), exit_rx).await;
                self.containment.release(container).await;
                return self.report_unstarted(&events, ending).await;
            }
            (Err(e), None) => {
                warn!(error = %e, "spawn failed");
                let _ = tokio::time::timeout(Duration::from_secs(5), exit_rx).await;
                self.containment.release(container).await;
                return self.send(&events, Err(e.into())).await;
            }
        };
        let started_at = Instant::now();
        Metrics::observe(&self.metrics.spawn_seconds, started_at - slotted);
        debug!(
            prepare_us = (prepared - accepted).as_micros() as u64,
            spawn_us = (started_at - prepared).as_micros() as u64,
            warm,
            "spawned"
        );
        self.metrics.started.inc();
        let Spawned { pid, io, stdio_links, registration, init_report } = spawned;
        // In a pid namespace, the init's report is the program's end: it comes once the program's tree is dead
        // and reaped, before the init itself exits (its namespace's teardown is then off the call's path).
        // Without it (the init was killed), the reaper's word on the init stands. `init_gone` tells when the
        // init is reaped too.
        let (exit_rx, init_gone) = match init_report {
            Some(fd) => {
                let (exit_tx, merged) = oneshot::channel();
                let (gone_tx, gone) = oneshot::channel::<()>();
                let reaps = Arc::clone(&reaps);
                let orphans = self.registry.orphans_counter();
                tokio::spawn(async move {
                    let report = InitReport::watch(fd).await;
                    orphans.inc_by(report.orphans.len() as u64 + report.dropped.min(1 << 20));
                    reaps.record(report.orphans);
                    // (`gone` only once the reaper has the init: not when its channel merely closed.)
                    let reaped = match report.program {
                        Some(exit) => {
                            let _ = exit_tx.send(exit);
                            exit_rx.await.is_ok()
                        }
                        None => match exit_rx.await {
                            Ok(exit) => {
                                let _ = exit_tx.send(exit);
                                true
                            }
                            Err(_) => false,
                        },
                    };
                    if reaped {
                        let _ = gone_tx.send(());
                    }
                });
                (merged, Some(gone))
            }
            None => (exit_rx, None),
        };
        tracing::Span::current().record("pid", pid);
        info!(argv = ?plan.argv, terminal = plan.terminal.is_some(), "started");
        let started = Ev::Started(pb::Started { job_id, pid: u32::try_from(pid).unwrap_or(0) });
        self.send(&events, Ok(response(started))).await;

        let io = JobIo::watch(io).inspect_err(|e| warn!(error = %e, "cannot watch the job's stdio; killing it"));
        let early = match &io {
            Err(e) if early.is_none() => Some(Ending::Stdio(e.to_string())),
            _ => early,
        };
        let (outputs, stdin_fd, terminal) = match io {
            Ok(JobIo { stdout, stderr, stdin, terminal }) => (Some((stdout, stderr)), Some(stdin), terminal),
            Err(_) => (None, None, None),
        };
        let budget = plan.limits.output.map(|bytes| Arc::new(OutputBudget::new(bytes)));
        let worker_gone = CancellationToken::new();
        let pump = |fd: stdio::Watched, wrap: fn(Vec<u8>) -> Event| {
            tokio::spawn(stdio::pump(
                fd,
                events.clone(),
                wrap,
                worker_gone.clone(),
                budget.clone(),
                self.abandon.clone(),
            ))
        };
        let (stdout, stderr) = match outputs {
            Some((out, err)) => (
                Some(pump(out, |b| Ok(response(Ev::Stdout(b))))),
                err.map(|err| pump(err, |b| Ok(response(Ev::Stderr(b))))),
            ),
            None => (None, None),
        };
        let (stdin_tx, stdin_rx) = mpsc::channel(4);
        let stdin_closed = CancellationToken::new();
        let eof_key = terminal.clone().map(|t| (t, stdin_closed.clone()));
        let stdin = stdin_fd.map(|fd| tokio::spawn(stdio::feed_stdin(fd, stdin_rx, eof_key)));

        let killer = GroupKiller::new(Arc::clone(&self.registry), pid, init_gone.is_some());
        // Should this task ever unwind before its worker is reaped, the worker must not outlive the call.
        let mut kill_on_unwind = KillOnDrop(Some(killer.clone()));
        let supervisor =
            Supervisor::new(&killer, plan.kill_grace, requests, (stdin_tx, stdin_closed), terminal.as_ref(), early);
        // A timeout too far away to represent is no timeout (checked: a client chooses it).
        let timeout_at = plan.timeout.and_then(|t| started_at.checked_add(t));
        let over_limit = budget.as_ref().map(|b| &b.exceeded);
        let Outcome { exit, ending, ending_at } =
            supervisor.run(exit_rx, &cancelled, &self.shutdown, deadline, timeout_at, over_limit).await;
        let wall_time = started_at.elapsed();
        kill_on_unwind.0 = None;
        debug!(run_us = wall_time.as_micros() as u64, "worker reaped");

        // The reaper killed the rest of the group when it reaped the worker; containment kills what escaped
        // it and waits until everything is reaped (and recorded). Then the pumps drain what is left.
        worker_gone.cancel();
        if let Some(stdin) = stdin {
            stdin.abort();
        }
        // A terminal's master stays open (held by `terminal`) until the sweep is done: its pty number, which
        // recognises the job's escapers, cannot be given to another job meanwhile.
        let end = self.containment.end(pid, &container, &reaps, &stdio_links, init_gone.is_some()).await;
        drop(terminal);
        if let Some(at) = ending_at {
            Metrics::observe(&self.metrics.cancel_to_dead_seconds, at.elapsed());
        }
        // `None`: no such output (a terminal job has no stderr; a job whose stdio could not be watched, none).
        let pumped = |pump: Option<tokio::task::JoinHandle<(stdio::PumpEnd, u64)>>| async move {
            match pump {
                Some(pump) => pump.await.map_or((Some(stdio::PumpEnd::Failed), 0), |(end, n)| (Some(end), n)),
                None => (None, 0),
            }
        };
        let (stdout_end, stdout_bytes) = pumped(stdout).await;
        let (stderr_end, stderr_bytes) = pumped(stderr).await;
        let reaped = reaps.take();
        // Everything of the job is dead and reaped: its registry entries (and the guardian's watch on its
        // sessions) go now, not after a client that reads slowly has taken the report.
        drop(registration);
        self.metrics.finished(Ending::metric_label(ending.as_ref(), end.oom_killed));
        debug!(
            end_us = (started_at.elapsed() - wall_time).as_micros() as u64,
            ?stdout_end,
            stdout_bytes,
            ?stderr_end,
            stderr_bytes,
            "ended and drained"
        );
        // Everything of the job is dead, reaped and drained: its output files can be sent (to a client still
        // there: not after a cancel, a deadline, an invalid request or a shutdown).
        let outputs = match (&plan.files, &ending) {
            (Some(files), None | Some(Ending::TimedOut | Ending::OutputLimit)) if !files.outputs.is_empty() => {
                self.send_outputs(&container, files, &events, deadline).await
            }
            _ => Ok(Vec::new()),
        };
        // Report now (`exited`, or why the outputs could not be sent), and remove its cgroup and directory
        // meanwhile (an rmdir may wait for the disk). The slot is freed only once that is done.
        let report = async {
            match outputs {
                Ok(outputs) => self.report(&events, exit, ending, end, wall_time, reaped, outputs).await,
                Err(JobError::ClientGone) => {}
                Err(e) => {
                    warn!(error = %e, "cannot send the job's output files");
                    self.send(&events, Err(e)).await;
                }
            }
        };
        // (Boxed: only a job at its end needs this state, and every open call's task would be as large.)
        tokio::join!(report, Box::pin(self.containment.release_after(container, init_gone)));
        drop(terminal_permit);
        drop(slot);
    }

    /// Writes the call's input files into its private directory.
    async fn upload<S>(
        &self,
        container: &crate::containment::JobContainer,
        plan: &crate::config::JobPlan,
        requests: &mut S,
        watch: files::UploadWatch<'_>,
    ) -> Result<(), files::UploadEnd>
    where
        S: Stream<Item = Result<pb::ExecuteRequest, tonic::Status>> + Unpin,
    {
        let Some(files) = &plan.files else { return Ok(()) };
        let dir = container.files_dir(plan.ids).map_err(files::UploadEnd::Failed)?;
        let started = Instant::now();
        files::receive_inputs(&dir, files, requests, watch).await?;
        let bytes: u64 = files.inputs.iter().map(|i| i.size).sum();
        info!(
            files = files.inputs.len(),
            bytes,
            upload_ms = started.elapsed().as_millis() as u64,
            "input files written"
        );
        Ok(())
    }

    /// Sends the job's output files back.
    async fn send_outputs(
        &self,
        container: &crate::containment::JobContainer,
        files: &crate::config::files::FilesPlan,
        events: &mpsc::Sender<Event>,
        deadline: Option<Instant>,
    ) -> Result<Vec<pb::OutputFile>, JobError> {
        match container.files_dir(None) {
            Ok(dir) => files::send_outputs(&dir, files, events, &self.abandon, deadline).await,
            // The job removed its own directory: nothing it asked for is there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(files::all_missing(files)),
            Err(e) => Err(JobError::Files(e)),
        }
    }

    /// Waits for a slot, sending `queued` events as the position changes. `None` if the call ended first
    /// (reported here).
    async fn wait_in_queue(
        &self,
        mut ticket: Ticket,
        events: &mpsc::Sender<Event>,
        cancelled: &CancellationToken,
        deadline: Option<Instant>,
    ) -> Option<Slot> {
        self.send(events, Ok(response(Ev::Queued(pb::Queued { position: ticket.position() })))).await;
        let mut deadline = sleep_until_or_never(deadline);
        loop {
            tokio::select! {
                biased;
                () = cancelled.cancelled() => {
                    self.metrics.cancelled.inc();
                    info!("cancelled while queued");
                    return None;
                }
                () = &mut deadline => {
                    self.metrics.cancelled.inc();
                    info!("deadline passed while queued");
                    self.send(events, Err(JobError::DeadlineExceeded)).await;
                    return None;
                }
                event = ticket.next_event() => match event {
                    QueueEvent::Granted(slot) => return Some(slot),
                    QueueEvent::Moved(position) => {
                        self.send(events, Ok(response(Ev::Queued(pb::Queued { position })))).await;
                    }
                    QueueEvent::Closed => {
                        self.metrics.rejected("draining");
                        self.send(events, Err(JobError::ShuttingDown)).await;
                        return None;
                    }
                },
            }
        }
    }
}

/// The `reason` label of `forkpool_calls_rejected_total`.
fn rejection_label(e: &AdmissionError) -> &'static str {
    match e {
        AdmissionError::QueueFull { .. } => "queue_full",
        AdmissionError::Closed => "draining",
        AdmissionError::TooManyTerminals { .. } => "terminals",
        AdmissionError::TooManyUploads { .. } => "uploads",
    }
}

/// The name of a request message, for error messages.
pub(crate) fn request_kind(msg: &pb::execute_request::Msg) -> &'static str {
    use pb::execute_request::Msg;
    match msg {
        Msg::Start(_) => "start",
        Msg::Stdin(_) => "stdin",
        Msg::CloseStdin(_) => "close_stdin",
        Msg::Signal(_) => "signal",
        Msg::Resize(_) => "resize",
        Msg::Input(_) => "input",
    }
}

/// How a call ended while its worker was being created.
async fn early_ending(
    cancelled: &CancellationToken,
    shutdown: &CancellationToken,
    deadline: Option<Instant>,
) -> Ending {
    let mut deadline = sleep_until_or_never(deadline);
    tokio::select! {
        biased;
        () = cancelled.cancelled() => Ending::Cancelled,
        () = &mut deadline => Ending::Deadline,
        () = shutdown.cancelled() => Ending::Shutdown,
    }
}

/// SIGKILLs a job's group when dropped while armed: only if the job task unwinds before its worker exited.
struct KillOnDrop(Option<GroupKiller>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(killer) = self.0.take() {
            tracing::error!("the job's task ended before its worker: killing the worker's group");
            killer.kill();
        }
    }
}
