//! Wiring: the reaper, the spawner, the pool and the gRPC server (the Executor service, health, reflection,
//! keepalive), and the shutdown sequence.
//!
//! Shutdown is a drain: `drain` fires → new and queued calls get `UNAVAILABLE`, health says `NOT_SERVING`,
//! running jobs may finish for up to `drain_timeout` → then (or when `now` fires) the rest are killed
//! (SIGTERM, SIGKILL after at most a second) and report `EXIT_REASON_SHUTDOWN` → every job task has ended,
//! everything is reaped → connections close → the server returns.
//!
//! The drain timeout bounds the whole shutdown, whatever the clients do: once `now` fires, events a client
//! does not read are abandoned after [`ABANDON_AFTER`], job tasks get [`FORCE_BUDGET`] in all, and open
//! calls get a second to close before the transport is dropped; so the server returns within
//! about four seconds of the drain timeout (or of a second signal).

pub(crate) mod auth;
pub(crate) mod handshake;
pub(crate) mod health;
pub(crate) mod metrics;
pub(crate) mod service;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tracing::{error, info, warn};

use crate::config::{Config, Prepared};
use crate::containment::Containment;
use crate::containment::guardian::Guardian;
use crate::job::Jobs;
use crate::job::metrics::Metrics;
use crate::job::pool::Pool;
use crate::pb::{self, executor_server::ExecutorServer};
use crate::process::registry::Registry;
use crate::process::spawn::Spawner;
use handshake::HandshakeDeadline;
use service::{Authenticate, ExecutorService};

/// The health service name of the Executor.
pub const SERVICE_NAME: &str = "forkpool.v1.Executor";

/// How long in-flight calls may take to close after all jobs ended within the drain.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// After `now`: when sends to clients that do not read are abandoned (the jobs are dead and reaped by then:
/// their kill grace is capped at a second).
pub const ABANDON_AFTER: Duration = Duration::from_secs(2);
/// After `now`: how long job tasks may take in all before the server stops waiting for them.
pub const FORCE_BUDGET: Duration = Duration::from_secs(3);
/// After a forced shutdown: how long open calls get to close.
const FORCED_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// HTTP/2 receive window per call (bytes).
pub const STREAM_WINDOW_BYTES: u32 = 1 << 20;
/// HTTP/2 receive window per connection (bytes).
pub const CONNECTION_WINDOW_BYTES: u32 = 4 << 20;
/// Largest HTTP/2 frame the server accepts (bytes): a 1 MiB upload chunk in 4 frames, not 64.
pub const MAX_FRAME_BYTES: u32 = 256 << 10;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Setting up the process (subreaper, signal handling, spawner thread) failed.
    #[error("cannot set up the server process: {0}")]
    Setup(#[from] std::io::Error),
    /// The TLS files or the token file cannot be used.
    #[error("{0}")]
    Security(String),
    /// Building reflection failed.
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// When and how the server stops.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// Start draining.
    pub drain: CancellationToken,
    /// Kill every job now (a second signal, or the drain timeout).
    pub now: CancellationToken,
    /// How long running jobs may go on once draining.
    pub drain_timeout: Duration,
}

/// What the process brings to the server besides its config: the guardian forked at start-up (see
/// [`crate::containment::guardian`]) and test-only faults.
#[derive(Debug, Default)]
pub struct Process {
    /// The guardian, if one was started (it must be forked before the runtime's threads exist).
    pub guardian: Option<Guardian>,
    /// Test-only: a job task running this catalog job panics.
    pub panic_on_job: Option<String>,
}

/// Runs forkpool on an already-bound listener until `shutdown` completes. Call once per process: it makes
/// the process a child subreaper and starts the spawner threads.
pub async fn run(
    listener: TcpListener,
    config: Prepared,
    shutdown: Shutdown,
    process: Process,
) -> Result<(), ServerError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)?;
    // SIGCHLD must be watched before the first worker exists, or an early exit could go unnoticed.
    let sigchld = signal(SignalKind::child())?;
    let registry = Arc::new(Registry::default());
    let guardian = process.guardian.map(Arc::new);
    if let Some(guardian) = &guardian {
        registry.set_guardian(guardian.pid());
    }
    tokio::spawn(Arc::clone(&registry).run(sigchld));
    let metrics = Arc::new(Metrics::new(registry.orphans_counter()));
    let containment = Containment::start(
        &config,
        Arc::clone(&registry),
        metrics.cgroups_populated_after_end.clone(),
        guardian.clone(),
    )
    .await?;
    let guardian_fd = guardian.as_ref().map(|g| g.announce_fd());
    let spawner = Spawner::start(Arc::clone(&registry), guardian_fd, containment.sessions_guarded())?;

    let config = Arc::new(config);
    let pool = Pool::new(config.worker_count(), config.queue);
    let stop_metrics = CancellationToken::new();
    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await?;
            let bound = listener.local_addr()?;
            let serving = metrics::serve(listener, Arc::clone(&metrics), Arc::clone(&pool), stop_metrics.clone());
            tokio::spawn(async move {
                if let Err(e) = serving.await {
                    warn!(error = %e, "the metrics endpoint failed");
                }
            });
            Some(bound)
        }
        None => None,
    };
    let abandon = CancellationToken::new();
    let mut jobs = Jobs::new(
        Arc::clone(&pool),
        spawner,
        Arc::clone(&registry),
        containment,
        metrics,
        shutdown.now.clone(),
        abandon.clone(),
    )
    .with_max_terminals(config.max_terminals)
    .with_upload_idle_timeout(config.upload_idle_timeout)
    .with_warm_sandboxes(config.warm_sandboxes);
    jobs.inject_panic_on_job(process.panic_on_job);
    let jobs = Arc::new(jobs);
    let warm_keeper = {
        let jobs = Arc::clone(&jobs);
        tokio::spawn(async move { jobs.keep_warm().await })
    };
    let tracker = TaskTracker::new();
    let service = ExecutorService::new(Arc::clone(&jobs), Arc::clone(&config), tracker.clone());

    let stop_transport = CancellationToken::new();
    let health = tonic_health::server::HealthReporter::new();
    let health_service = health::service(health.clone(), stop_transport.clone());
    health::set_status(&health, ServingStatus::Serving).await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };

    let tokens = config
        .auth_token_file
        .as_deref()
        .map(crate::server::auth::Tokens::load)
        .transpose()
        .map_err(ServerError::Security)?;
    let tls = tls_config(&config)?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && (tls.is_none() || tokens.is_none()) {
        let missing = match (tls.is_none(), tokens.is_none()) {
            (true, true) => "without TLS or authentication: anyone who can reach it can run jobs",
            (true, false) => "without TLS: tokens and job output cross the network in clear text",
            _ => "without authentication: anyone who can reach it can run jobs",
        };
        warn!(%addr, "listening beyond loopback {missing}");
    }
    info!(%addr, workers = pool.workers(), queue = pool.capacity(), raw_commands = config.allow_raw_commands, "serving");
    // Announced once everything is set up; scripts and tests read this line to learn the port (listening
    // on port 0) and to know the server is ready.
    println!("forkpool listening on {addr}");
    if let Some(metrics_addr) = metrics_addr {
        println!("forkpool metrics on http://{metrics_addr}/metrics");
    }

    let handshake_timeout = config.handshake_timeout;
    let lifetime = config.max_connection_age.zip(config.max_connection_age_grace).map(|(age, grace)| age + grace);
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(config.keepalive_interval))
        .map(move |accepted| accepted.map(|stream| HandshakeDeadline::new(stream, handshake_timeout, lifetime)));
    let message_limit = usize::try_from(config.max_message_size).unwrap_or(usize::MAX);
    let mut builder = tonic::transport::Server::builder().max_concurrent_streams(config.max_concurrent_streams);
    if let Some(age) = config.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    // (Not tonic's max_connection_age_grace: it turns the GOAWAY at the age into a plain close at age + grace.
    // The grace is the connection wrapper's.)
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let transport = builder
        // Uploads (stdin, input files) flow at the rate of a window per round trip: 1 MiB per call and 4 MiB
        // per connection let them run at memory speed on a LAN, and bound what a client that sends without
        // the job reading can make the server hold.
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            ExecutorServer::new(service).max_decoding_message_size(message_limit),
            Authenticate::new(tokens),
        ))
        .serve_with_incoming_shutdown(incoming, stop_transport.clone().cancelled_owned());
    let mut transport = tokio::spawn(transport);

    tokio::select! {
        () = shutdown.drain.cancelled() => {}
        () = shutdown.now.cancelled() => {}
        result = &mut transport => return flatten(result),
    }
    info!(drain_timeout_ms = shutdown.drain_timeout.as_millis() as u64, "draining");
    // Admission closes first: once health says NOT_SERVING, no new call is admitted.
    pool.close();
    tracker.close();
    health::set_status(&health, ServingStatus::NotServing).await;
    // No more warm sandboxes: none will be used.
    let closing_warm = {
        let jobs = Arc::clone(&jobs);
        tokio::spawn(async move { jobs.close_warm().await })
    };
    // Then GOAWAY on every connection and no new ones: clients and proxies take new calls elsewhere, while
    // the calls already running here go on.
    let goaway = {
        let (stop, delay) = (stop_transport.clone(), config.drain_goaway_delay.min(shutdown.drain_timeout));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            info!("sending GOAWAY: no new calls on this server");
            stop.cancel();
        })
    };
    let forced = tokio::select! {
        () = tracker.wait() => false,
        () = tokio::time::sleep(shutdown.drain_timeout) => {
            info!("drain timeout: killing the remaining jobs");
            shutdown.now.cancel();
            true
        }
        () = shutdown.now.cancelled() => {
            info!("killing the remaining jobs");
            true
        }
    };
    let all_ended = if forced {
        // Bounded whatever the clients do: jobs are killed (a second of grace at most) and reaped, then
        // events nobody reads are abandoned, then the server stops waiting.
        let began = tokio::time::Instant::now();
        let ended = tokio::select! {
            () = tracker.wait() => true,
            () = tokio::time::sleep(ABANDON_AFTER) => false,
        };
        if !ended {
            warn!("calls whose clients do not read: abandoning their last events");
            abandon.cancel();
        }
        let ended = ended || tokio::time::timeout_at(began + FORCE_BUDGET, tracker.wait()).await.is_ok();
        if !ended {
            error!(
                remaining = tracker.len(),
                "some jobs did not end in time (a process that cannot be killed?); stopping anyway"
            );
        }
        ended
    } else {
        true
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), closing_warm).await;
    warm_keeper.abort();
    if all_ended {
        jobs.containment().close();
        info!("all jobs ended; closing connections");
    }
    goaway.abort();
    stop_transport.cancel();
    stop_metrics.cancel();
    let grace = if forced { FORCED_CLOSE_GRACE } else { CLOSE_GRACE };
    let result = match tokio::time::timeout(grace, &mut transport).await {
        Ok(result) => flatten(result),
        Err(_) => {
            warn!("some calls did not close in time; stopping anyway");
            transport.abort();
            Ok(())
        }
    };
    // The guardian ends when the server does (its socket closes with the last reference).
    registry.retire_guardian();
    result
}

/// The TLS configuration from the config's PEM files, if any.
fn tls_config(config: &Config) -> Result<Option<tonic::transport::ServerTlsConfig>, ServerError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| ServerError::Security(format!("cannot read {}: {e}", path.display())))
    };
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else { return Ok(None) };
    let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &config.tls_client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    info!(mutual = config.tls_client_ca.is_some(), "TLS enabled");
    Ok(Some(tls))
}

fn flatten(result: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>) -> Result<(), ServerError> {
    match result {
        Ok(inner) => Ok(inner?),
        Err(join) => Err(ServerError::Setup(std::io::Error::other(join))),
    }
}
