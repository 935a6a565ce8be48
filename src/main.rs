//! The `forkpool` binary: parses the command line and calls into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use forkpool::cli::{self, CallFailed, Connection, DEFAULT_SERVER, RunOptions};
use forkpool::config::units::parse_duration;
use forkpool::config::{CgroupMode, Config};
use forkpool::server::{self, Shutdown};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    name = "forkpool",
    version,
    about = "A gRPC worker pool: each job in its own process, living as long as its call."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Run a job on a server and relay its stdin, stdout and stderr; exits with the job's exit code.
    Run(RunArgs),
    /// List the server's job catalog.
    Jobs(ConnectArgs),
    /// Show the server's pool and counters.
    Status(ConnectArgs),
    /// Measure start latency, throughput, cancel time, stdout rate and memory per call against the floor; or,
    /// with `--target URL`, a running server (`--jobs N --concurrency C [--job NAME] -- CMD...`: a load run).
    /// Every argument goes to `forkpool-bench` (see `forkpool bench --help`).
    Bench {
        /// `[--quick] [--server-arg ARG]... [--target URL [CONNECTION] [--jobs N] [--concurrency C] [--job NAME] -- CMD...]`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on [default: the config's `listen`, else 127.0.0.1:50051].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Send GOAWAY on connections older than this (running calls go on), so clients reconnect and reach new
    /// replicas, e.g. `5m` [default: the config's, else never].
    #[arg(long, value_parser = parse_duration)]
    max_connection_age: Option<Duration>,
    /// Close a connection this long after its GOAWAY even if calls still run [default: never].
    #[arg(long, value_parser = parse_duration)]
    max_connection_age_grace: Option<Duration>,
    /// Send a heartbeat event on calls that have sent nothing for this long, for proxies with idle timeouts
    /// [default: the config's, else only for calls that ask].
    #[arg(long, value_parser = parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// Concurrent jobs [default: number of CPUs].
    #[arg(long)]
    workers: Option<usize>,
    /// Calls that may wait for a worker [default: 64].
    #[arg(long)]
    queue: Option<usize>,
    /// TOML config file with the job catalog [default: a built-in demo catalog].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Accept raw commands (`StartJob.command`), not only catalog jobs.
    #[arg(long)]
    allow_raw_commands: bool,
    /// PEM certificate (chain): serve TLS only.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates it signed (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// File of bearer tokens, one per line (`TOKEN [job,job...]`); calls without a valid one get UNAUTHENTICATED.
    #[arg(long)]
    auth_token_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Per-job cgroups: `auto` uses them when a writable cgroup v2 tree exists, `off` never.
    #[arg(long, value_enum)]
    cgroups: Option<CgroupMode>,
    /// How long running jobs may finish after SIGTERM/SIGINT before they are killed.
    #[arg(long, value_parser = parse_duration, default_value = "25s")]
    drain_timeout: Duration,
    /// Log format: `text` for people, `json` (one object per line) for log pipelines.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level or filter (e.g. `info`, `debug`, `forkpool=debug,info`); `RUST_LOG` overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// How the client commands reach a server.
#[derive(Debug, clap::Args)]
struct ConnectArgs {
    /// Server URL (`https://` for TLS).
    #[arg(long, default_value = DEFAULT_SERVER)]
    server: String,
    /// PEM CA bundle to verify the server with.
    #[arg(long)]
    tls_ca_cert: Option<PathBuf>,
    /// PEM client certificate (mutual TLS).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM client key (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Name to verify the server's certificate against [default: the URL's host].
    #[arg(long)]
    tls_domain: Option<String>,
    /// File whose first line is the bearer token [default: $FORKPOOL_TOKEN].
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl ConnectArgs {
    fn connection(self) -> anyhow::Result<Connection> {
        let token = match &self.token_file {
            Some(path) => Some(cli::read_token(path)?),
            None => std::env::var("FORKPOOL_TOKEN").ok().filter(|t| !t.is_empty()),
        };
        Ok(Connection {
            server: self.server,
            ca_cert: self.tls_ca_cert,
            identity: self.tls_cert.zip(self.tls_key),
            domain: self.tls_domain,
            token,
        })
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Catalog job to run; without it, ARGS is a raw command.
    #[arg(long)]
    job: Option<String>,
    /// Kill the job after this long (e.g. 500ms, 2s, 1m).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when the job is killed.
    #[arg(long, value_parser = parse_duration)]
    kill_grace: Option<Duration>,
    /// Environment entry for the job (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Send a local file into the job's working directory (repeatable; REMOTE defaults to the file's name).
    #[arg(long = "input", value_name = "LOCAL[:REMOTE]", value_parser = cli::parse_input)]
    inputs: Vec<cli::InputArg>,
    /// Fetch the job's output files matching a path or glob into LOCAL_DIR (repeatable; default `.`).
    #[arg(long = "output", value_name = "REMOTE_OR_GLOB[:LOCAL_DIR]", value_parser = cli::parse_output)]
    outputs: Vec<cli::OutputArg>,
    /// Run the job under a terminal: the local terminal goes into raw mode (keys, Ctrl-C included, go to the
    /// job), its size follows the local window. Needs a terminal on stdin.
    #[arg(short = 't', long = "tty")]
    tty: bool,
    /// The job's extra args, or the raw command.
    #[arg(last = true)]
    args: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?} is not K=V"))
}

fn main() -> ExitCode {
    // A job's pid-namespace init is this executable under another name: nothing else of forkpool runs there.
    let mut args = std::env::args_os();
    if args.next().is_some_and(|argv0| argv0 == forkpool::process::INIT_ARGV0) {
        forkpool::process::init_main(std::env::args_os().collect());
    }
    let cli = Cli::parse();
    // The guardian is forked first, while this process has one thread (the runtime's come next).
    let guardian = match &cli.command {
        Command::Serve(args) => {
            match forkpool::containment::guardian::Guardian::start(matches!(args.log_format, LogFormat::Json)) {
                Ok(guardian) => Some(guardian),
                Err(e) => {
                    eprintln!("forkpool: cannot start the guardian process: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("forkpool: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args, guardian).await.map(|()| 0),
            Command::Run(args) => {
                let options = RunOptions {
                    connection: args.connect.connection()?,
                    job: args.job,
                    timeout: args.timeout,
                    kill_grace: args.kill_grace,
                    env: args.env,
                    args: args.args,
                    terminal: args.tty,
                    inputs: args.inputs,
                    outputs: args.outputs,
                };
                cli::run(options).await
            }
            Command::Jobs(args) => cli::jobs(&args.connection()?).await.map(|()| 0),
            Command::Status(args) => cli::status(&args.connection()?).await.map(|()| 0),
            Command::Bench { args } => bench(args),
        }
    });
    let code = match code {
        Ok(code) => code,
        Err(e) => {
            eprintln!("forkpool: {e:#}");
            e.downcast_ref::<CallFailed>().map_or(1, CallFailed::exit_code)
        }
    };
    // Exit without waiting for the runtime's blocking stdin reader.
    std::process::exit(code)
}

/// `forkpool bench`: runs the benchmark binary installed beside this one, `forkpool-bench`.
fn bench(args: Vec<String>) -> anyhow::Result<i32> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let bench = exe.with_file_name("forkpool-bench");
    let error = std::process::Command::new(&bench).args(args).exec();
    Err(anyhow::anyhow!("cannot run {}: {error}", bench.display()))
}

/// Fault injection for the crash tests, in debug builds only: `FORKPOOL_TEST_PANIC_ON_JOB=NAME` makes the job
/// task of catalog job NAME panic (the server then aborts, and its guardian cleans up). Release builds have
/// no such hook.
fn test_fault_panic_on_job() -> Option<String> {
    if cfg!(debug_assertions) { std::env::var("FORKPOOL_TEST_PANIC_ON_JOB").ok() } else { None }
}

async fn serve(args: ServeArgs, guardian: Option<forkpool::containment::guardian::Guardian>) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.is_empty() => tracing_subscriber::EnvFilter::try_new(filter),
        _ => tracing_subscriber::EnvFilter::try_new(&args.log_level),
    }
    .context("invalid log level or filter")?;
    // Colours only for a person at a terminal, never into a file or a log collector.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
    }
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(workers) = args.workers {
        config.workers = workers;
    }
    if let Some(queue) = args.queue {
        config.queue = queue;
    }
    config.allow_raw_commands |= args.allow_raw_commands;
    config.tls_cert = args.tls_cert.or(config.tls_cert);
    config.tls_key = args.tls_key.or(config.tls_key);
    config.tls_client_ca = args.tls_client_ca.or(config.tls_client_ca);
    config.auth_token_file = args.auth_token_file.or(config.auth_token_file);
    if let Some(addr) = args.metrics_listen {
        config.metrics_listen = Some(addr);
    }
    config.max_connection_age = args.max_connection_age.or(config.max_connection_age);
    config.max_connection_age_grace = args.max_connection_age_grace.or(config.max_connection_age_grace);
    config.heartbeat_interval = args.heartbeat_interval.or(config.heartbeat_interval);
    if let Some(mode) = args.cgroups {
        config.cgroups = mode;
    }
    let config = config.prepare()?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;

    let shutdown =
        Shutdown { drain: CancellationToken::new(), now: CancellationToken::new(), drain_timeout: args.drain_timeout };
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let signals = shutdown.clone();
    tokio::spawn(async move {
        for round in 0.. {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            if round == 0 {
                info!(signal = name, "shutdown requested: draining");
                signals.drain.cancel();
            } else {
                info!(signal = name, "second signal: killing every job now");
                signals.now.cancel();
            }
        }
    });
    let process = server::Process { guardian, panic_on_job: test_fault_panic_on_job() };
    server::run(listener, config, shutdown, process).await?;
    info!("stopped");
    Ok(())
}
