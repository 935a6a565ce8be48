//! # forkpool
//!
//! A gRPC worker-pool service. Clients hand it slow or risky work (a system binary, a script, a conversion);
//! each job runs in its own freshly spawned worker process, in its own session and process group, with clean
//! signal state and no inherited file descriptors, and **lives exactly as long as its call**: when the call
//! ends early (cancel, disconnect, deadline) the job and every process it started are killed and reaped.
//!
//! # The life of a job
//!
//! 1. [`service`] receives an `Execute` call. The first request must be `start`; [`config`] turns it into a
//!    validated [`config::JobPlan`] (catalog job or raw command, environment, timeout, kill grace).
//! 2. [`pool`] admits the call: a free worker slot, a place in the FIFO queue (the client sees `queued`
//!    events with its position), or `RESOURCE_EXHAUSTED`.
//! 3. [`job`] owns the rest of the call. With a slot, it asks [`spawn`] to start the worker: a dedicated
//!    spawner thread that lives as long as the server (so `PR_SET_PDEATHSIG` means "the server died") clones
//!    a child with `CLONE_VM | CLONE_VFORK` (with `clone3`, straight into the job's cgroup), sets it up with
//!    async-signal-safe calls only, and execs.
//!    The worker's pid is registered with the [`reaper`] before the reaper can collect it.
//! 4. [`output`] pumps the worker's stdout and stderr into bounded chunks (back-pressure: a slow client
//!    slows the job, never grows the server); stdin and signals flow the other way.
//! 5. The call ends. Cancellation is a [`tokio_util::sync::CancellationToken`] fired by a drop guard on the
//!    response stream, by the deadline, by the job's timeout or by server shutdown; [`kill`] then sends
//!    SIGTERM + SIGCONT to the job's group and SIGKILL after the grace period.
//! 6. The [`reaper`] — the only caller of `wait4` in the server, which is a child subreaper — collects the
//!    worker, kills what is left of its group while the zombie still pins the group id, and reaps every
//!    orphan, attributing it to its job. [`job`] sends exactly one `exited` event (or one error status).
//!
//! # Layout
//!
//! | module | concern |
//! |---|---|
//! | [`config`] | config file and flags, the job catalog, request validation |
//! | [`server`] | wiring: gRPC server, health, reflection, keepalive, shutdown |
//! | [`handshake`] | a deadline for a new connection's first bytes |
//! | [`service`] | the tonic service; the only place a `tonic::Status` is built |
//! | [`auth`] | bearer tokens and what each may run |
//! | [`pool`] | worker slots and the FIFO queue |
//! | [`job`] | one job's life: wait for a slot, spawn, stream, kill, report |
//! | `supervise` | the running phase: requests in, endings decided, kill started |
//! | [`spawn`] | the spawner thread: clone + exec, the only fork-time unsafe code |
//! | [`reaper`] | subreaper, SIGCHLD loop, worker registry, orphan records |
//! | [`kill`] | signalling a job's process group safely; hunting escapers without cgroups |
//! | [`containment`] | a job's cgroup, directory and limits; killing and reaping all that is left |
//! | [`cgroup`] | per-job cgroups: membership, limits, kill, leftovers of a crash |
//! | [`guardian`] | the process that kills every job's processes when the server dies |
//! | [`metrics`] | Prometheus metrics and the `GetStatus` counters |
//! | [`limits`] | resource limits and how each is enforced |
//! | [`workdir`] | private working directories |
//! | [`output`] | pipes to bounded chunks |
//! | [`client`] | the `forkpool run`, `jobs` and `status` commands |
//! | [`mod@bench`] | `forkpool bench`: figures against the physical floor |

pub mod auth;
pub mod bench;
pub mod cgroup;
pub mod client;
pub mod config;
pub mod containment;
pub mod guardian;
pub mod handshake;
pub mod job;
pub mod kill;
pub mod limits;
pub mod metrics;
pub mod output;
pub mod pool;
pub mod reaper;
pub mod server;
pub mod service;
pub mod spawn;
mod supervise;
mod sys;
pub mod workdir;

/// Code generated from `proto/forkpool/v1/forkpool.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("forkpool.v1");

    /// The encoded descriptor set of the contract, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("forkpool_descriptor");
}
