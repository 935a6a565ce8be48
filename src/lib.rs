//! # forkpool
//!
//! A gRPC worker-pool service. Clients hand it slow or risky work (a system binary, a script, a conversion);
//! each job runs in its own freshly spawned worker process, in its own session and process group, with clean
//! signal state and no inherited file descriptors, and **lives exactly as long as its call**: when the call
//! ends early (cancel, disconnect, deadline) the job and every process it started are killed and reaped.
//! Nothing outlives the server either: a guardian process kills every job's processes if it dies.
//!
//! # The life of a job, and where each step lives
//!
//! 1. [`server`] receives an `Execute` call ([`server::service`], the only place a `tonic::Status` is
//!    built). The first request must be `start`; [`config`] turns it into a validated [`config::JobPlan`]
//!    (catalog job or raw command, environment, timeout, kill grace, limits).
//! 2. [`job::pool`] admits the call: a free worker slot, a place in the FIFO queue (the client sees `queued`
//!    events with its position), or `RESOURCE_EXHAUSTED`. A call with input files is staged first: it
//!    uploads them into its private directory holding no slot, then queues.
//! 3. [`job`] owns the rest of the call. A job that names no user gets a dynamic user of its own
//!    ([`containment::users`]). With a slot, [`containment`] makes the job's cgroup and private directory,
//!    and [`process::spawn`] starts the worker: a long-lived spawner thread (so
//!    `PR_SET_PDEATHSIG` means "the server died") clones a child that is born in the job's cgroup, sets it up
//!    with async-signal-safe calls only (its namespaces: pid, mount with a private `/tmp`, network, IPC and
//!    UTS, in a user namespace where the server is not root; no privilege gained from then on, no capability
//!    kept but those its entry names; a seccomp filter), and execs: the program, or, in a pid namespace,
//!    forkpool's init ([`process::spawn::init`]), which starts the program, forwards signals, reaps inside and
//!    reports the program's status and its orphans. The kernel hands the child's pid to the
//!    [`process::registry`] before the child runs. A terminal job's pty pair is opened there too, and its
//!    slave becomes the child's stdio and controlling terminal.
//! 4. [`job::stdio`] pumps the worker's stdout and stderr (or its terminal) into bounded chunks
//!    (back-pressure: a slow client slows the job, never grows the server); stdin, signals and
//!    [`job::terminal`] resizes flow the other way.
//! 5. The call ends. [`job::supervise`] decides the ending (the worker's exit, cancel, deadline, timeout,
//!    shutdown, output cap, an invalid request) and [`process::kill`] sends SIGTERM + SIGCONT to the job's
//!    group and SIGKILL after the grace period.
//! 6. The [`process::reaper`], the only caller of `wait4` (the server is a child subreaper), collects the
//!    worker, kills what is left of its group while the zombie still pins the group id, and reaps every
//!    orphan, attributing it to its job. [`containment`] kills whatever escaped (the whole cgroup), waits
//!    until all of it is reaped. [`job`] sends the requested output files ([`containment::jobdir`] reads
//!    them without ever leaving the directory), then exactly one `exited` event (or one error status), and
//!    removes the cgroup and directory.
//!
//! Should the server die instead, every job's init dies with it (and the kernel kills its pid namespace), and
//! [`containment::guardian`] kills every job's processes within a second.
//!
//! # Layout
//!
//! | module | concern |
//! |---|---|
//! | [`server`] | wiring and shutdown; [`server::service`] (requests in, events out, every `Status`), auth, the handshake deadline, health, the metrics endpoint |
//! | [`job`] | one call's life: the pool, supervision (endings decided), stdio and pty pumps, terminals, the report, the counters |
//! | [`process`] | spawning (the only fork-time unsafe code; namespaces, pty pairs, the seccomp filter, the pid namespace's init), the registry, the reaper (the only waiter), killing, `/proc` |
//! | [`containment`] | cgroups, working directories and the files in them, dynamic users, a crashed server's leftovers, the guardian |
//! | [`config`] | the file's schema and the catalog, the request plan, limits, units |
//! | [`cli`] | `forkpool run` (`-t`: under a terminal, the local one raw), `jobs`, `status` and `bench` |
//!
//! Dependencies point down this list and never back up: `job` uses `process` and `containment`, which know
//! nothing of calls; `process` knows nothing of containment (the guardian is injected as a
//! [`process::registry::SessionWatch`]).

// The map above links every module, public or not: `cargo doc --document-private-items` renders it whole.
#![allow(rustdoc::private_intra_doc_links)]

pub mod cli;
pub mod config;
pub mod containment;
pub(crate) mod job;
pub mod process;
pub mod server;

/// Code generated from `proto/forkpool/v1/forkpool.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("forkpool.v1");

    /// The encoded descriptor set of the contract, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("forkpool_descriptor");
}
