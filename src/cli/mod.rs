//! The command-line client: `forkpool run` (with `-t`, under a terminal), `forkpool jobs`, `forkpool status`.

mod files;
mod terminal;

pub use files::{InputArg, OutputArg, parse_input, parse_output};

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::pb::{self, execute_request::Msg, execute_response::Event, executor_client::ExecutorClient};

/// HTTP/2 receive window the client advertises per stream (bytes).
pub const RECEIVE_WINDOW: u32 = 8 << 20;

/// Where the client connects when `--server` is not given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// Exit code of `forkpool run` when the server refused or failed the call.
pub const EXIT_CALL_FAILED: i32 = 125;
/// Exit code of `forkpool run` when the program could not be executed.
pub const EXIT_CANNOT_EXECUTE: i32 = 127;
/// Exit code of `forkpool run` after Ctrl-C (128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

/// How to reach a server: its URL, TLS material and bearer token.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// `http://HOST:PORT`, or `https://` for TLS.
    pub server: String,
    /// PEM CA bundle to verify the server with (TLS).
    pub ca_cert: Option<std::path::PathBuf>,
    /// PEM client certificate and key (mutual TLS).
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The name to verify the server's certificate against [default: the URL's host].
    pub domain: Option<String>,
    /// Bearer token sent as `authorization: Bearer ...`.
    pub token: Option<String>,
}

/// Adds the bearer token (if any) to every call.
#[derive(Debug, Clone)]
pub struct Credentials(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connected client.
pub type Client = ExecutorClient<tonic::service::interceptor::InterceptedService<Channel, Credentials>>;

/// Connects to a forkpool server.
pub async fn connect(connection: &Connection) -> anyhow::Result<Client> {
    let urls: Vec<&str> = connection.server.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
    // Every address of every URL (a DNS name may have several), each an endpoint that keeps the URL's own
    // name as its authority and TLS name.
    let mut endpoints = Vec::new();
    for url in &urls {
        for address in resolve(url).await? {
            endpoints.push(endpoint(connection, url, address.as_deref())?);
        }
    }
    let server = &connection.server;
    let channel = match endpoints.len() {
        0 => anyhow::bail!("no server address in {server:?}"),
        1 => endpoints.remove(0).connect().await.with_context(|| format!("cannot connect to {server}"))?,
        // Several replicas: calls are spread over those that answer now (one that is down would fail the
        // calls the balancer gave it).
        _ => {
            let mut tries = tokio::task::JoinSet::new();
            for endpoint in endpoints {
                // A replica that does not answer (a black hole) is left out after a few seconds.
                let probe = endpoint.clone().connect_timeout(std::time::Duration::from_secs(5));
                tries.spawn(async move { probe.connect().await.map(|_| endpoint) });
            }
            let mut up: Vec<Endpoint> = tries.join_all().await.into_iter().filter_map(Result::ok).collect();
            match up.len() {
                0 => anyhow::bail!("cannot connect to any of {server}"),
                1 => up.remove(0).connect().await.with_context(|| format!("cannot connect to {server}"))?,
                _ => Channel::balance_list(up.into_iter()),
            }
        }
    };
    let token = match &connection.token {
        Some(token) => Some(format!("Bearer {token}").parse().context("the token is not valid ASCII metadata")?),
        None => None,
    };
    Ok(ExecutorClient::with_interceptor(channel, Credentials(token)))
}

/// The addresses (`IP:PORT`) of a URL whose host is a DNS name with several of them, or `[None]`: connect to
/// the URL as it is.
async fn resolve(url: &str) -> anyhow::Result<Vec<Option<String>>> {
    let uri: Uri = url.parse().with_context(|| format!("invalid server URL {url:?}"))?;
    let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else { return Ok(vec![None]) };
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return Ok(vec![None]);
    }
    let addresses: Vec<std::net::SocketAddr> = match tokio::net::lookup_host((host, port)).await {
        Ok(found) => found.collect(),
        Err(_) => return Ok(vec![None]),
    };
    Ok(if addresses.len() > 1 { addresses.iter().map(|a| Some(a.to_string())).collect() } else { vec![None] })
}

/// An endpoint for `url`, or for one of its addresses (`IP:PORT`) with `url` as its authority.
fn endpoint(connection: &Connection, url: &str, address: Option<&str>) -> anyhow::Result<Endpoint> {
    let target = match address {
        Some(address) => format!("{}://{address}", if url.starts_with("https://") { "https" } else { "http" }),
        None => url.to_string(),
    };
    let mut endpoint = Channel::from_shared(target)
        .with_context(|| format!("invalid server URL {url:?}"))?
        // Large receive windows: with HTTP/2's default 64 KiB the server stalls for a round trip every
        // 64 KiB of a job's output.
        .initial_stream_window_size(RECEIVE_WINDOW)
        .initial_connection_window_size(RECEIVE_WINDOW * 2)
        // Lets a whole 64 KiB output chunk travel in one DATA frame.
        .max_frame_size(256 * 1024);
    if address.is_some() {
        endpoint = endpoint.origin(url.parse().with_context(|| format!("invalid server URL {url:?}"))?);
    }
    let server = url;
    if server.starts_with("https://") || connection.ca_cert.is_some() || connection.identity.is_some() {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &connection.ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = &connection.identity {
            let cert = std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
            let key = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        match (&connection.domain, address) {
            (Some(domain), _) => tls = tls.domain_name(domain.clone()),
            (None, Some(_)) => {
                let uri: Uri = url.parse()?;
                tls = tls.domain_name(uri.host().unwrap_or_default().to_string());
            }
            (None, None) => {}
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint)
}

/// Reads the first token of a token file (`TOKEN [jobs]` lines, `#` comments).
pub fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    crate::config::token_lines(&text)
        .next()
        .and_then(|(_, line)| line.split_whitespace().next())
        .map(String::from)
        .with_context(|| format!("no token in {}", path.display()))
}

/// What `forkpool run` should do.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The server.
    pub connection: Connection,
    /// Catalog job; without it, `args` is a raw command.
    pub job: Option<String>,
    /// Job timeout.
    pub timeout: Option<Duration>,
    /// Kill grace.
    pub kill_grace: Option<Duration>,
    /// Environment entries.
    pub env: Vec<(String, String)>,
    /// The job's extra args, or the raw argv.
    pub args: Vec<String>,
    /// Run the job under a terminal, with the local terminal in raw mode (`-t`).
    pub terminal: bool,
    /// Local files to send into the job's directory (`--input`).
    pub inputs: Vec<InputArg>,
    /// Output files to fetch (`--output`).
    pub outputs: Vec<OutputArg>,
}

/// Runs one job, relaying stdin, stdout and stderr; returns the exit code to exit with (the job's, or
/// 128+N when a signal N killed it).
pub async fn run(options: RunOptions) -> anyhow::Result<i32> {
    use tokio::signal::unix::{SignalKind, signal};
    let with_terminal = options.terminal;
    // Checked first: `-t` without a local terminal is a usage error, whatever the server says.
    if with_terminal {
        terminal::require()?;
    }
    // Watched before the size is read, so no resize is missed.
    let window_changes = with_terminal.then(|| signal(SignalKind::window_change())).transpose()?;
    let mut client = connect(&options.connection).await?;
    let (job, args, command) = match options.job {
        Some(job) => (job, options.args, Vec::new()),
        None if options.args.is_empty() => bail!("nothing to run: give --job NAME or a command after --"),
        None => (String::new(), Vec::new(), options.args),
    };
    let start = pb::StartJob {
        job,
        args,
        command,
        env: options.env.into_iter().collect(),
        timeout: options.timeout.and_then(|d| prost_types::Duration::try_from(d).ok()),
        kill_grace: options.kill_grace.and_then(|d| prost_types::Duration::try_from(d).ok()),
        terminal: with_terminal.then(|| {
            let (rows, cols) = terminal::window_size().unwrap_or((0, 0));
            pb::Terminal { rows, cols, no_echo: false, term: std::env::var("TERM").unwrap_or_default() }
        }),
        inputs: files::declare(&options.inputs)?,
        outputs: options.outputs.iter().map(|o| o.pattern.clone()).collect(),
        heartbeat_interval: None,
    };
    let mut downloads = files::Downloads::new(&options.outputs)?;
    let declared = start.inputs.clone();
    let (requests, outgoing) = mpsc::channel(4);
    requests.send(pb::ExecuteRequest { msg: Some(Msg::Start(start)) }).await?;
    // The input files go first; stdin, resizes and close_stdin may only follow them. An upload that fails
    // here half-closes the request stream, which ends the call; the local error is then the one reported.
    let upload_error = std::sync::Arc::new(std::sync::Mutex::new(None));
    let failed = std::sync::Arc::clone(&upload_error);
    tokio::spawn(async move {
        if let Err(e) = files::upload(&options.inputs, &declared, &requests).await {
            *failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
            return;
        }
        if let Some(window_changes) = window_changes {
            tokio::spawn(forward_window_size(requests.clone(), window_changes));
        }
        forward_stdin(requests).await;
    });
    let mut responses = client.execute(ReceiverStream::new(outgoing)).await.map_err(call_failed)?.into_inner();

    let show_queue = std::io::stderr().is_terminal();
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    // Created once, before the first event: a SIGINT that arrives while output is being written (even into
    // a pipe nobody reads) is kept and seen, never lost between two waits.
    let mut interrupt = signal(SignalKind::interrupt())?;
    // With a terminal, keys never signal this client (raw mode); a signal from elsewhere ends the call and
    // restores the terminal, rather than leaving it raw.
    let watch = |kind: SignalKind| with_terminal.then(|| signal(kind).map(|s| (s, kind.as_raw_value()))).transpose();
    let (mut term, mut hup, mut quit) =
        (watch(SignalKind::terminate())?, watch(SignalKind::hangup())?, watch(SignalKind::quit())?);
    // Raw only now that the call is accepted and every signal that ends this client is watched: from here on,
    // every way out (the job's exit, an error, a signal) drops this, which restores the terminal before
    // anything more is printed.
    let _raw_mode = with_terminal.then(terminal::RawMode::enter).transpose()?;
    loop {
        let step = async {
            let event = match responses.message().await {
                Ok(Some(pb::ExecuteResponse { event: Some(event) })) => event,
                Ok(Some(_)) => return Ok(None),
                Ok(None) => bail!("the server ended the call without an exit status"),
                Err(status) => {
                    let local = upload_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                    return Err(local.unwrap_or_else(|| call_failed(status)));
                }
            };
            match event {
                Event::Queued(q) if show_queue => eprint!("\rforkpool: queued, position {}   ", q.position),
                Event::Queued(_) => {}
                Event::Started(_) if show_queue => eprint!("\r\x1b[K"),
                Event::Started(_) => {}
                Event::Stdout(bytes) => {
                    stdout.write_all(&bytes).await?;
                    stdout.flush().await?;
                }
                Event::Stderr(bytes) => {
                    stderr.write_all(&bytes).await?;
                    stderr.flush().await?;
                }
                Event::Output(chunk) => downloads.chunk(chunk)?,
                // The call is alive; nothing to show.
                Event::Heartbeat(_) => {}
                Event::Exited(exited) => {
                    downloads.summary(&exited.outputs);
                    return Ok(Some(match exited.status {
                        Some(pb::exited::Status::Code(code)) => code,
                        Some(pb::exited::Status::Signal(signal)) => 128 + signal,
                        None => EXIT_CALL_FAILED,
                    }));
                }
            }
            Ok(None)
        };
        tokio::select! {
            _ = interrupt.recv() => {
                eprintln!("\r\nforkpool: interrupted; the job is cancelled\r");
                return Ok(EXIT_INTERRUPTED);
            }
            signal = received(&mut term) => return Ok(ended_by(signal)),
            signal = received(&mut hup) => return Ok(ended_by(signal)),
            signal = received(&mut quit) => return Ok(ended_by(signal)),
            step = step => if let Some(code) = step? {
                return Ok(code);
            },
        }
    }
}

/// Waits for a signal being watched (never, if it is not); returns its number.
async fn received(watched: &mut Option<(tokio::signal::unix::Signal, i32)>) -> i32 {
    match watched {
        Some((signal, number)) => {
            signal.recv().await;
            *number
        }
        None => std::future::pending().await,
    }
}

/// The exit code after a signal ended the call.
fn ended_by(signal: i32) -> i32 {
    eprintln!("\r\nforkpool: signal {signal}; the job is cancelled\r");
    128 + signal
}

/// Sends the local terminal's size on every SIGWINCH, until the call ends.
async fn forward_window_size(requests: mpsc::Sender<pb::ExecuteRequest>, mut winch: tokio::signal::unix::Signal) {
    while winch.recv().await.is_some() {
        if let Some((rows, cols)) = terminal::window_size() {
            let resize = pb::ExecuteRequest { msg: Some(Msg::Resize(pb::Resize { rows, cols })) };
            if requests.send(resize).await.is_err() {
                return;
            }
        }
    }
}

/// Forwards our stdin to the job; EOF closes the job's stdin.
async fn forward_stdin(requests: mpsc::Sender<pb::ExecuteRequest>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let msg = match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => Msg::CloseStdin(pb::CloseStdin {}),
            Ok(n) => Msg::Stdin(buf[..n].to_vec()),
        };
        let last = matches!(msg, Msg::CloseStdin(_));
        if requests.send(pb::ExecuteRequest { msg: Some(msg) }).await.is_err() || last {
            // Keep the request stream open after close_stdin: half-closing is fine too, but this way the
            // request side ends only with the call.
            if last {
                requests.closed().await;
            }
            return;
        }
    }
}

/// An error carrying the exit code `forkpool run` should use for a failed call.
#[derive(Debug, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct CallFailed {
    /// The gRPC status code.
    pub code: tonic::Code,
    /// The server's message.
    pub message: String,
}

impl CallFailed {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        if self.code == tonic::Code::FailedPrecondition { EXIT_CANNOT_EXECUTE } else { EXIT_CALL_FAILED }
    }
}

fn call_failed(status: tonic::Status) -> anyhow::Error {
    CallFailed { code: status.code(), message: status.message().to_string() }.into()
}

/// Prints the server's job catalog.
pub async fn jobs(connection: &Connection) -> anyhow::Result<()> {
    let reply = connect(connection).await?.list_jobs(pb::ListJobsRequest {}).await.map_err(call_failed)?.into_inner();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<16} {:<5} {:<12} {:<24} DESCRIPTION", "NAME", "ARGS", "MAX TIMEOUT", "COMMAND")?;
    for job in reply.jobs {
        let max = job
            .max_timeout
            .and_then(|d| Duration::try_from(d).ok())
            .map_or_else(|| "-".to_string(), |d| humantime::format_duration(d).to_string());
        let args = if job.accepts_args { "yes" } else { "no" };
        writeln!(out, "{:<16} {:<5} {:<12} {:<24} {}", job.name, args, max, job.command.join(" "), job.description)?;
    }
    writeln!(out, "raw commands: {}", if reply.raw_commands_allowed { "allowed" } else { "not allowed" })?;
    Ok(())
}

/// Prints the server's status.
pub async fn status(connection: &Connection) -> anyhow::Result<()> {
    let s = connect(connection).await?.get_status(pb::GetStatusRequest {}).await.map_err(call_failed)?.into_inner();
    let mut out = std::io::stdout().lock();
    writeln!(out, "workers:         {} ({} running)", s.workers, s.running)?;
    writeln!(out, "queue:           {} of {}", s.queued, s.queue_capacity)?;
    writeln!(out, "started:         {}", s.started_total)?;
    writeln!(out, "finished:        {}", s.finished_total)?;
    writeln!(out, "cancelled:       {}", s.cancelled_total)?;
    writeln!(out, "timed out:       {}", s.timed_out_total)?;
    writeln!(out, "rejected:        {}", s.rejected_total)?;
    writeln!(out, "orphans reaped:  {}", s.orphans_reaped_total)?;
    let mode = match pb::ContainmentMode::try_from(s.containment) {
        Ok(pb::ContainmentMode::Cgroup) => "cgroup",
        Ok(pb::ContainmentMode::ProcessGroup) => "process group",
        _ => "unknown",
    };
    writeln!(out, "containment:     {mode} ({})", s.containment_detail)?;
    Ok(())
}
