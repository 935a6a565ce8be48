//! `forkpool-bench` (also run as `forkpool bench`): measures forkpool against the physical floor in the same
//! run. A binary of its own, outside the server.
//!
//! It starts real servers (`forkpool serve` on 127.0.0.1:0, the binary beside this one), drives them over
//! loopback gRPC with the project's own client, and measures each floor directly from this process:
//! `posix_spawn` of `/bin/true` (Rust's `std::process::Command` uses it), killing and reaping a tree itself,
//! a shell pipe. Every figure is the median over several repetitions; ratios matter more than absolute times
//! on a shared machine.
//!
//! To measure spawning from a large server it needs a server holding gigabytes: rather than a hidden flag in
//! the server, it runs one itself (`forkpool-bench large-server BYTES ...`: this binary touches the memory,
//! then serves through the library, exactly as `forkpool serve` does).

use clap::Parser;

mod files;
mod isolation;
mod target;
mod transport;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use forkpool::cli::{Client, Connection};
use forkpool::pb::{self, execute_request::Msg, execute_response::Event};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

/// Measures forkpool against the physical floor: start latency, throughput, cancel time, stdout rate and
/// memory per call.
#[derive(Debug, Parser)]
#[command(name = "forkpool-bench", version)]
struct Cli {
    #[command(subcommand)]
    large_server: Option<LargeServer>,
    /// Seconds instead of minutes: small counts, for CI (figures are then only indicative).
    #[arg(long)]
    quick: bool,
    /// Extra argument for every server started (repeatable), e.g. `--server-arg=--cgroups=off`.
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Drive this running server instead of starting servers (`http://HOST:PORT`, `https://` for TLS): the rows
    /// that need no local floor, or, with `--jobs`, a plain load run.
    #[arg(long)]
    target: Option<String>,
    /// PEM CA bundle to verify the target with.
    #[arg(long, requires = "target")]
    tls_ca_cert: Option<std::path::PathBuf>,
    /// PEM client certificate (mutual TLS).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM client key (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Name to verify the target's certificate against.
    #[arg(long, requires = "target")]
    tls_domain: Option<String>,
    /// File whose first line is the bearer token [default: $FORKPOOL_TOKEN].
    #[arg(long, requires = "target")]
    token_file: Option<std::path::PathBuf>,
    /// Load mode: run this many jobs against the target and print jobs/s and latency percentiles.
    #[arg(long, requires = "target")]
    jobs: Option<usize>,
    /// Load mode: calls in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Run this catalog job (its args after `--`) instead of a raw command.
    #[arg(long)]
    job: Option<String>,
    /// The raw command to run [default: /bin/true]; or the catalog job's args.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
enum LargeServer {
    /// A forkpool server holding BYTES of touched memory (what the benchmark compares spawning from).
    LargeServer {
        /// Touched memory to hold.
        bytes: u64,
        /// Worker slots.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// `auto` or `off`.
        #[arg(long, default_value = "auto")]
        cgroups: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(LargeServer::LargeServer { bytes, workers, cgroups }) = cli.large_server {
        return match large_server(bytes, workers, &cgroups) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("forkpool-bench large-server: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("forkpool-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Some(server) = cli.target.clone() {
        let token = match &cli.token_file {
            Some(path) => forkpool::cli::read_token(path).map(Some),
            None => Ok(std::env::var("FORKPOOL_TOKEN").ok().filter(|t| !t.is_empty())),
        };
        let result = token.and_then(|token| {
            let connection = Connection {
                server,
                ca_cert: cli.tls_ca_cert.clone(),
                identity: cli.tls_cert.clone().zip(cli.tls_key.clone()),
                domain: cli.tls_domain.clone(),
                token,
            };
            let work = target::Work { job: cli.job.clone(), command: cli.command.clone() };
            runtime.block_on(async {
                match cli.jobs {
                    Some(jobs) => target::load_mode(&connection, &work, jobs, cli.concurrency).await,
                    None => target::target_mode(&connection, &work, cli.quick).await,
                }
            })
        });
        return match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("forkpool-bench: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(run(cli.quick, cli.server_args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("forkpool-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Serves like `forkpool serve --listen 127.0.0.1:0 --allow-raw-commands --workers N`, from a process that
/// first touched `bytes` of memory.
fn large_server(bytes: u64, workers: usize, cgroups: &str) -> anyhow::Result<()> {
    // vec! of a non-zero value writes every page, so all of it is resident.
    let ballast = vec![1u8; usize::try_from(bytes)?];
    // Single-threaded still: the guardian can be forked.
    let guardian = forkpool::containment::guardian::Guardian::start(false)?;
    let mut config = forkpool::config::Config {
        allow_raw_commands: true,
        workers,
        listen: "127.0.0.1:0".parse()?,
        ..forkpool::config::Config::default()
    };
    if cgroups == "off" {
        config.cgroups = forkpool::config::CgroupMode::Off;
    }
    let config = config.prepare()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let never = tokio_util::sync::CancellationToken::new();
        let shutdown =
            forkpool::server::Shutdown { drain: never.clone(), now: never, drain_timeout: Duration::from_secs(1) };
        let process = forkpool::server::Process { guardian: Some(guardian), ..Default::default() };
        forkpool::server::run(listener, config, shutdown, process).await?;
        anyhow::Ok(())
    })?;
    drop(std::hint::black_box(ballast));
    Ok(())
}

/// What every server of the run is started with.
struct Options {
    server_args: Vec<String>,
}

struct Sizes {
    repetitions: usize,
    latency_runs: usize,
    throughput_jobs: usize,
    cancel_runs: usize,
    stdout_bytes: u64,
    file_bytes: u64,
    open_calls: [usize; 2],
    ballast: u64,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                repetitions: 1,
                latency_runs: 20,
                throughput_jobs: 64,
                cancel_runs: 5,
                stdout_bytes: 16 << 20,
                file_bytes: 16 << 20,
                open_calls: [100, 300],
                ballast: 256 << 20,
            }
        } else {
            Sizes {
                repetitions: 5,
                latency_runs: 200,
                throughput_jobs: 1000,
                cancel_runs: 40,
                stdout_bytes: 1 << 30,
                file_bytes: 1 << 30,
                open_calls: [1_000, 10_000],
                ballast: 2 << 30,
            }
        }
    }
}

/// A server started for the benchmark; killed when dropped.
struct BenchServer {
    child: Child,
    url: String,
}

impl BenchServer {
    /// `forkpool serve` (the binary beside this one) with `args`, then `extra`.
    fn start(args: &[&str], extra: &[String]) -> anyhow::Result<BenchServer> {
        let exe = std::env::current_exe().context("cannot find this binary")?;
        let server = exe.with_file_name("forkpool");
        let mut command = Command::new(&server);
        command.args(["serve", "--listen", "127.0.0.1:0", "--allow-raw-commands"]).args(args).args(extra);
        Self::spawn(command)
    }

    /// A server holding `bytes` of touched memory (see [`large_server`]).
    fn large(bytes: u64, extra: &[String]) -> anyhow::Result<BenchServer> {
        let exe = std::env::current_exe().context("cannot find this binary")?;
        let mut command = Command::new(exe);
        command.args(["large-server", &bytes.to_string()]);
        if extra.iter().any(|a| a == "--cgroups=off") || extra.windows(2).any(|w| w == ["--cgroups", "off"]) {
            command.args(["--cgroups", "off"]);
        }
        Self::spawn(command)
    }

    fn spawn(mut command: Command) -> anyhow::Result<BenchServer> {
        let log = std::env::temp_dir().join(format!("forkpool-bench-{}.log", std::process::id()));
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot start the server")?;
        let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let first = lines.next().transpose()?.unwrap_or_default();
        let Some(addr) = first.strip_prefix("forkpool listening on ") else {
            let _ = child.kill();
            bail!("the server did not start (see {})", log.display());
        };
        let url = format!("http://{addr}");
        std::thread::spawn(move || for _ in lines {});
        Ok(BenchServer { child, url })
    }

    async fn client(&self) -> anyhow::Result<Client> {
        forkpool::cli::connect(&Connection { server: self.url.clone(), ..Connection::default() }).await
    }

    /// The server's CPU time so far (user + system).
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
        let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn raw(argv: &[&str]) -> pb::StartJob {
    pb::StartJob { command: argv.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

/// An open call: its request sender (kept to keep the stream open) and responses.
struct Call {
    _requests: mpsc::Sender<pb::ExecuteRequest>,
    responses: tonic::Streaming<pb::ExecuteResponse>,
}

async fn open(client: &mut Client, start: pb::StartJob) -> anyhow::Result<Call> {
    let (requests, rx) = mpsc::channel(2);
    requests.send(pb::ExecuteRequest { msg: Some(Msg::Start(start)) }).await?;
    let responses = client.execute(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Call { _requests: requests, responses })
}

/// Runs a job to its end; returns the stdout bytes seen.
async fn run_job(client: &mut Client, start: pb::StartJob) -> anyhow::Result<u64> {
    run_to_exit(client, start).await.map(|(bytes, _)| bytes)
}

/// Runs a job to its end; returns the stdout bytes seen and its `exited`.
async fn run_to_exit(client: &mut Client, start: pb::StartJob) -> anyhow::Result<(u64, pb::Exited)> {
    let mut call = open(client, start).await?;
    let mut bytes = 0u64;
    while let Some(response) = call.responses.message().await? {
        match response.event {
            Some(Event::Stdout(b)) => bytes += b.len() as u64,
            Some(Event::Exited(exited)) => return Ok((bytes, exited)),
            _ => {}
        }
    }
    bail!("the call ended without exited")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// (p50, p99) of `samples`.
fn p50_p99(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

/// The median p50 and the median p99 over repetitions.
fn median_p50_p99(repetitions: Vec<(Duration, Duration)>) -> (Duration, Duration) {
    let (p50s, p99s): (Vec<_>, Vec<_>) = repetitions.into_iter().unzip();
    (median_duration(p50s), median_duration(p99s))
}

fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn median_duration(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// One row of the table.
struct Row {
    figure: String,
    forkpool: String,
    floor: String,
    ratio: String,
    target: String,
}

/// Spawns and reaps `/bin/true` directly: the floor for one job.
fn spawn_true() -> anyhow::Result<()> {
    let status = Command::new("/bin/true").stdin(Stdio::null()).stdout(Stdio::null()).status()?;
    anyhow::ensure!(status.success(), "/bin/true failed");
    Ok(())
}

async fn start_latency(server: &BenchServer, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let mut client = server.client().await?;
    run_job(&mut client, raw(&["/bin/true"])).await?; // warm-up
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        run_job(&mut client, raw(&["/bin/true"])).await?;
        samples.push(t.elapsed());
    }
    Ok(samples)
}

fn floor_latency(runs: usize) -> anyhow::Result<Vec<Duration>> {
    spawn_true()?;
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            spawn_true().map(|()| t.elapsed())
        })
        .collect()
}

async fn throughput(server: &BenchServer, in_flight: usize, jobs: usize) -> anyhow::Result<f64> {
    let connections = in_flight.div_ceil(32);
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(server.client().await?);
    }
    let permits = Arc::new(Semaphore::new(in_flight));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..jobs {
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let mut client = clients[i % connections].clone();
        tasks.spawn(async move {
            let result = run_job(&mut client, raw(&["/bin/true"])).await;
            drop(permit);
            result
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(jobs as f64 / started.elapsed().as_secs_f64())
}

fn floor_throughput(in_flight: usize, jobs: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let per_thread = jobs / in_flight;
    let threads: Vec<_> =
        (0..in_flight).map(|_| std::thread::spawn(move || (0..per_thread).try_for_each(|_| spawn_true()))).collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("spawner thread panicked"))??;
    }
    Ok((per_thread * in_flight) as f64 / started.elapsed().as_secs_f64())
}

const TREE: &str = "sleep 1000 & sleep 1000 & echo ready; wait";

/// The job's processes in session (or group) `sid`; a pid namespace's init, forkpool's own, is not one.
fn session_members(sid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            forkpool::process::procfs::ProcStat::read(*pid)
                .is_some_and(|s| (s.session == sid || s.pgrp == sid) && s.comm != "forkpool-init")
        })
        .collect()
}

fn all_gone(pids: &[i32]) -> bool {
    pids.iter().all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

async fn cancel_latency(server: &BenchServer, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let mut client = server.client().await?;
    let mut samples = Vec::new();
    for _ in 0..runs {
        let mut start = raw(&["sh", "-c", TREE]);
        start.kill_grace = Some(prost_types::Duration { seconds: 0, nanos: 0 });
        let mut call = open(&mut client, start).await?;
        let mut pid = 0;
        while let Some(response) = call.responses.message().await? {
            match response.event {
                Some(Event::Started(s)) => pid = s.pid as i32,
                Some(Event::Stdout(_)) => break,
                _ => {}
            }
        }
        let tree = session_members(pid);
        anyhow::ensure!(tree.len() == 3, "expected a 3-process tree, found {tree:?}");
        let t = Instant::now();
        drop(call);
        while !all_gone(&tree) {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(10), "the tree survived the cancel");
            // Poll without blocking the runtime's thread.
            tokio::task::yield_now().await;
        }
        samples.push(t.elapsed());
    }
    Ok(samples)
}

fn floor_cancel(runs: usize) -> anyhow::Result<Vec<Duration>> {
    use std::os::unix::process::CommandExt;
    let mut samples = Vec::new();
    for _ in 0..runs {
        let mut child = Command::new("sh").args(["-c", TREE]).process_group(0).stdout(Stdio::piped()).spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let pgid = child.id() as i32;
        let tree = session_members(pgid);
        anyhow::ensure!(tree.len() == 3, "expected a 3-process tree, found {tree:?}");
        let t = Instant::now();
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL)?;
        // This process is a subreaper: the sleeps come back to it to be reaped.
        while !all_gone(&tree) {
            let _ = nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            anyhow::ensure!(t.elapsed() < Duration::from_secs(10), "the tree survived");
        }
        samples.push(t.elapsed());
        std::mem::forget(child); // reaped above
    }
    Ok(samples)
}

async fn stdout_rate(server: &BenchServer, bytes: u64) -> anyhow::Result<f64> {
    let mut client = server.client().await?;
    let t = Instant::now();
    let got = run_job(&mut client, raw(&["head", "-c", &bytes.to_string(), "/dev/zero"])).await?;
    anyhow::ensure!(got == bytes, "received {got} of {bytes} bytes");
    Ok(bytes as f64 / 1e6 / t.elapsed().as_secs_f64())
}

fn floor_stdout(bytes: u64) -> anyhow::Result<f64> {
    let t = Instant::now();
    let status = Command::new("sh").args(["-c", &format!("head -c {bytes} /dev/zero | cat > /dev/null")]).status()?;
    anyhow::ensure!(status.success(), "the shell pipe failed");
    Ok(bytes as f64 / 1e6 / t.elapsed().as_secs_f64())
}

/// Opens `n` calls (`sleep`, queued or running) and returns the server's RSS once all are admitted.
async fn rss_with_open_calls(server: &BenchServer, n: usize) -> anyhow::Result<u64> {
    let per_connection = 100;
    let mut calls = Vec::with_capacity(n);
    let mut client = server.client().await?;
    for i in 0..n {
        if i % per_connection == 0 {
            client = server.client().await?;
        }
        let mut call = open(&mut client, raw(&["sleep", "1000"])).await?;
        // The first event (queued or started) proves the call is admitted.
        call.responses.message().await?;
        calls.push(call);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss = server.rss_bytes();
    drop(calls);
    let mut status_client = server.client().await?;
    for _ in 0..1000 {
        let s = status_client.get_status(pb::GetStatusRequest {}).await?.into_inner();
        if s.running == 0 && s.queued == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(rss)
}

/// This process's CPU time so far (user + system, threads included).
fn own_cpu_time() -> Duration {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF);
    usage.map_or(Duration::ZERO, |u| {
        let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
        tv(u.user_time()) + tv(u.system_time())
    })
}

/// Runs the whole benchmark and prints the table (Markdown).
async fn run(quick: bool, server_args: Vec<String>) -> anyhow::Result<()> {
    let options = Options { server_args };
    let sizes = Sizes::new(quick);
    nix::sys::prctl::set_child_subreaper(true)?;
    let mut rows = Vec::new();
    let reps = sizes.repetitions;
    eprintln!("forkpool bench: {} repetition(s) of each measurement", reps);

    let server = BenchServer::start(&["--workers", "64", "--queue", "20000"], &options.server_args)?;
    let (mut ours, mut floor) = (vec![], vec![]);
    for _ in 0..reps {
        ours.push(p50_p99(start_latency(&server, sizes.latency_runs).await?));
        floor.push(p50_p99(tokio::task::block_in_place(|| floor_latency(sizes.latency_runs))?));
    }
    let ((p50, p99), (f50, f99)) = (median_p50_p99(ours), median_p50_p99(floor));
    rows.push(Row {
        figure: "start latency `/bin/true`, p50 / p99".into(),
        forkpool: format!("{} / {}", ms(p50), ms(p99)),
        floor: format!("{} / {}", ms(f50), ms(f99)),
        ratio: format!("{:.2}× / {:.2}×", p50.as_secs_f64() / f50.as_secs_f64(), p99.as_secs_f64() / f99.as_secs_f64()),
        target: "p50 ≤ 1.5×, p99 ≤ 2× floor (issue 14)".into(),
    });
    // What the transport alone costs: a unary round trip over the same loopback connection.
    let mut rpc = server.client().await?;
    let mut rpc50 = vec![];
    for _ in 0..reps {
        let mut samples = Vec::with_capacity(sizes.latency_runs);
        for _ in 0..sizes.latency_runs {
            let t = Instant::now();
            rpc.get_status(pb::GetStatusRequest {}).await?;
            samples.push(t.elapsed());
        }
        rpc50.push(p50_p99(samples).0);
    }
    let rpc50 = median_duration(rpc50);
    rows.push(Row {
        figure: "for reference: unary gRPC round trip (GetStatus), p50".into(),
        forkpool: ms(rpc50),
        floor: format!("spawn floor + round trip = {}", ms(f50 + rpc50)),
        ratio: format!("{:.2}× spawn floor", (f50 + rpc50).as_secs_f64() / f50.as_secs_f64()),
        target: "—".into(),
    });
    eprintln!("  start latency done");

    for in_flight in [8, 64] {
        let mut ours = vec![];
        let mut floor = vec![];
        let (server_cpu, client_cpu) = (server.cpu_time(), own_cpu_time());
        for _ in 0..reps {
            ours.push(throughput(&server, in_flight, sizes.throughput_jobs).await?);
        }
        let jobs = (reps * sizes.throughput_jobs) as f64;
        let server_us = (server.cpu_time() - server_cpu).as_secs_f64() * 1e6 / jobs;
        let client_us = (own_cpu_time() - client_cpu).as_secs_f64() * 1e6 / jobs;
        for _ in 0..reps {
            floor.push(tokio::task::block_in_place(|| floor_throughput(in_flight, sizes.throughput_jobs))?);
        }
        let (ours, floor) = (median_f64(ours), median_f64(floor));
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        rows.push(Row {
            figure: format!("throughput, {in_flight} in flight"),
            forkpool: format!("{ours:.0} jobs/s (CPU per job: server {server_us:.0} µs, client {client_us:.0} µs)"),
            floor: format!("{floor:.0} spawns/s ({:.0} µs of {cores} CPUs per spawn)", cores * 1e6 / floor),
            ratio: format!("{:.0} %", ours / floor * 100.0),
            target: "≥ 70 % of floor; server CPU ≤ 250 µs/job".into(),
        });
    }
    eprintln!("  throughput done");

    let (mut ours, mut floor) = (vec![], vec![]);
    for _ in 0..reps {
        ours.push(p50_p99(cancel_latency(&server, sizes.cancel_runs).await?));
        floor.push(p50_p99(tokio::task::block_in_place(|| floor_cancel(sizes.cancel_runs))?));
    }
    let ((c50, c99), (k50, k99)) = (median_p50_p99(ours), median_p50_p99(floor));
    rows.push(Row {
        figure: "cancel a 3-process tree until all pids are gone, p50 / p99".into(),
        forkpool: format!("{} / {}", ms(c50), ms(c99)),
        floor: format!("{} / {}", ms(k50), ms(k99)),
        ratio: format!("{:.2}× / {:.2}×", c50.as_secs_f64() / k50.as_secs_f64(), c99.as_secs_f64() / k99.as_secs_f64()),
        target: "p99 ≤ 2 ms".into(),
    });
    eprintln!("  cancel done");

    let mut ours = vec![];
    let mut floor = vec![];
    let mut transport = vec![];
    let transport_server = transport::start(sizes.stdout_bytes)?;
    let mut transport_client =
        forkpool::cli::connect(&Connection { server: transport_server, ..Connection::default() }).await?;
    for _ in 0..reps {
        ours.push(stdout_rate(&server, sizes.stdout_bytes).await?);
        floor.push(tokio::task::block_in_place(|| floor_stdout(sizes.stdout_bytes))?);
        let t = Instant::now();
        let got = run_job(&mut transport_client, raw(&["none"])).await?;
        anyhow::ensure!(got == sizes.stdout_bytes, "the transport floor sent {got} bytes");
        transport.push(got as f64 / 1e6 / t.elapsed().as_secs_f64());
    }
    let (ours, floor, transport) = (median_f64(ours), median_f64(floor), median_f64(transport));
    rows.push(Row {
        figure: format!("stdout, {} MiB streamed to the client", sizes.stdout_bytes >> 20),
        forkpool: format!("{ours:.0} MB/s"),
        floor: format!("{floor:.0} MB/s (`head | cat`)"),
        ratio: format!("{:.0} %", ours / floor * 100.0),
        target: "≥ 70 % of floor".into(),
    });
    rows.push(Row {
        figure: "for reference: the same stream from a gRPC server with no job (the transport alone)".into(),
        forkpool: format!("forkpool {ours:.0} MB/s"),
        floor: format!("{transport:.0} MB/s; `head | cat` {floor:.0} MB/s"),
        ratio: format!(
            "{:.0} % of the transport; the transport {:.0} % of `head | cat`",
            ours / transport * 100.0,
            transport / floor * 100.0
        ),
        target: "—".into(),
    });
    eprintln!("  stdout done");
    drop(server);

    let config = files::config(sizes.file_bytes)?;
    let config_arg = config.display().to_string();
    let server = BenchServer::start(&["--workers", "4", "--config", &config_arg], &options.server_args)?;
    let (mut input, mut output, mut floor) = (vec![], vec![], vec![]);
    for _ in 0..reps {
        input.push(files::input_rate(&server, sizes.file_bytes).await?);
        output.push(files::output_rate(&server, sizes.file_bytes).await?);
        floor.push(tokio::task::block_in_place(|| files::floor_cat(sizes.file_bytes))?);
    }
    let (input, output, floor) = (median_f64(input), median_f64(output), median_f64(floor));
    for (what, ours) in [("input", input), ("output", output)] {
        rows.push(Row {
            figure: format!("{what} file, {} MiB", sizes.file_bytes >> 20),
            forkpool: format!("{ours:.0} MB/s"),
            floor: format!("{floor:.0} MB/s (`cat FILE > /dev/null`)"),
            ratio: format!("{:.0} %", ours / floor * 100.0),
            target: "≥ 50 % of floor".into(),
        });
    }
    eprintln!("  files done");
    drop(server);
    let _ = std::fs::remove_file(&config);

    let server = BenchServer::start(&["--workers", "64", "--queue", "20000"], &options.server_args)?;
    let mut warm = server.client().await?;
    for _ in 0..20 {
        run_job(&mut warm, raw(&["/bin/true"])).await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle = server.rss_bytes();
    for n in sizes.open_calls {
        let rss = rss_with_open_calls(&server, n).await?;
        let per_call = rss.saturating_sub(idle) as f64 / n as f64 / 1024.0;
        rows.push(Row {
            figure: format!("memory per call, {n} calls open"),
            forkpool: format!("{:.1} KiB/call (RSS {:.1} MiB)", per_call, rss as f64 / 1048576.0),
            floor: format!("idle RSS {:.1} MiB", idle as f64 / 1048576.0),
            ratio: "—".into(),
            target: "≤ 32 KiB per call".into(),
        });
    }
    eprintln!("  memory done");
    drop(server);

    // Isolation: each level's start latency and machine CPU per job, against every level off (a root server;
    // one that is not root gets its namespaces through a user namespace, measured the same way). Every level's
    // server runs for the whole measurement, and each repetition takes every level in turn, so that a change in
    // the machine's load falls on all of them alike.
    let mut levels = Vec::new();
    for (name, table) in isolation::levels() {
        let config = isolation::config(name, &table)?;
        let config_arg = config.display().to_string();
        let server = BenchServer::start(&["--workers", "4", "--config", &config_arg], &options.server_args)?;
        let _ = std::fs::remove_file(&config);
        levels.push((name, server, Vec::new(), Vec::new()));
    }
    for _ in 0..reps {
        for (_, server, p50s, cpus) in &mut levels {
            let busy = isolation::machine_busy();
            p50s.push(p50_p99(start_latency(server, sizes.latency_runs).await?).0);
            cpus.push((isolation::machine_busy() - busy).as_secs_f64() * 1e6 / (sizes.latency_runs + 1) as f64);
        }
    }
    let mut baseline = None;
    for (name, server, p50s, cpus) in levels {
        drop(server);
        let (p50, cpu) = (median_duration(p50s), median_f64(cpus));
        let (base50, base_cpu) = *baseline.get_or_insert((p50, cpu));
        rows.push(Row {
            figure: format!("isolation: {name}, start p50 / machine CPU per job"),
            forkpool: format!("{} / {cpu:.0} µs", ms(p50)),
            floor: format!("{} / {base_cpu:.0} µs with none", ms(base50)),
            ratio: format!("{:.2}× / {:.2}×", p50.as_secs_f64() / base50.as_secs_f64(), cpu / base_cpu),
            target: "—".into(),
        });
    }
    eprintln!("  isolation done");

    let small = BenchServer::start(&["--workers", "4"], &options.server_args)?;
    let large = BenchServer::large(sizes.ballast, &options.server_args)?;
    let (mut small50, mut large50) = (vec![], vec![]);
    for _ in 0..reps {
        small50.push(p50_p99(start_latency(&small, sizes.latency_runs).await?).0);
        large50.push(p50_p99(start_latency(&large, sizes.latency_runs).await?).0);
    }
    let (s50, l50) = (median_duration(small50), median_duration(large50));
    rows.push(Row {
        figure: "start latency p50 vs server size".into(),
        forkpool: format!(
            "{} at {:.0} MB, {} at {:.0} MB",
            ms(s50),
            small.rss_bytes() as f64 / 1e6,
            ms(l50),
            large.rss_bytes() as f64 / 1e6
        ),
        floor: "—".into(),
        ratio: format!("{:.2}×", l50.as_secs_f64() / s50.as_secs_f64()),
        target: "≤ 1.1× between the two".into(),
    });

    println!("| figure | forkpool | floor, same run | ratio | target |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} | {} |", r.figure, r.forkpool, r.floor, r.ratio, r.target);
    }
    Ok(())
}
