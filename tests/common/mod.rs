//! Test fixtures: a real forkpool server on 127.0.0.1 with an ephemeral port, helpers to run calls over
//! gRPC, and `/proc` helpers to check outcomes in the world (pids gone, no zombies).
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use forkpool::pb::{self, execute_request::Msg, execute_response::Event, executor_client::ExecutorClient};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_forkpool");

/// The guardian's process name.
pub const GUARDIAN: &str = "forkpool-guard";

/// A running server. Dropping it kills it (SIGKILL) and waits for it, even when the test failed; the log
/// is printed if the test is panicking.
pub struct TestServer {
    child: Option<Child>,
    pub pid: i32,
    pub url: String,
    pub log: PathBuf,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl TestServer {
    /// Starts `forkpool serve --listen 127.0.0.1:0 ARGS...` and waits for its "listening" line.
    pub fn start(args: &[&str]) -> TestServer {
        let mut command = Command::new(BIN);
        command.args(["serve", "--listen", "127.0.0.1:0"]).args(args).env("RUST_LOG", "forkpool=debug,info");
        Self::start_command(command)
    }

    /// Starts `forkpool serve --config FILE ARGS...` with `toml` written to a fresh FILE.
    pub fn with_config(toml: &str, args: &[&str]) -> TestServer {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("config-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, toml).expect("write the config");
        let path = path.to_str().expect("utf8 path").to_string();
        let mut all = vec!["--config", path.as_str()];
        all.extend_from_slice(args);
        Self::start(&all)
    }

    /// Starts `forkpool serve --listen 127.0.0.1:0 ARGS` from `sh -c '<setup> && exec ...'`, so the server
    /// inherits what `setup` arranged (a ulimit, a cgroup it moved the shell into). `pid` is the server's.
    pub fn start_in_shell(setup: &str, args: &str) -> TestServer {
        let mut command = Command::new("sh");
        command
            .args(["-c", &format!("{setup} && exec {BIN} serve --listen 127.0.0.1:0 {args}")])
            .env("RUST_LOG", "forkpool=debug,info");
        Self::start_command(command)
    }

    /// Starts the server with `command` (which must run `forkpool serve --listen 127.0.0.1:0 ...`, possibly
    /// through a wrapper); `pid` is then the wrapper's pid until [`TestServer::use_pid`] says otherwise.
    pub fn start_command(mut command: Command) -> TestServer {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("server-{}-{n}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("create log file");
        let mut child =
            command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file).spawn().expect("start forkpool serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let addr = first.strip_prefix("forkpool listening on ").unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("server did not start: {first:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default())
        });
        let url = format!("http://{addr}");
        // Keep draining stdout (so the server can never block on it), keeping the lines.
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(vec![first.clone()]));
        let keep = std::sync::Arc::clone(&stdout);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                keep.lock().expect("stdout lines").push(line);
            }
        });
        let pid = child.id() as i32;
        TestServer { child: Some(child), pid, url, log, stdout }
    }

    /// The server process is `pid` (e.g. the child of a wrapper such as `unshare`).
    pub fn use_pid(&mut self, pid: i32) {
        self.pid = pid;
    }

    pub async fn client(&self) -> ExecutorClient<Channel> {
        let channel = Channel::from_shared(self.url.clone()).expect("url").connect().await.expect("connect");
        ExecutorClient::new(channel)
    }

    /// The `host:port` of the metrics endpoint (the server must run with `--metrics-listen`).
    pub fn metrics_addr(&self) -> String {
        let mut addr = None;
        wait_until(Duration::from_secs(5), || {
            addr = self.stdout_lines().iter().find_map(|l| {
                l.strip_prefix("forkpool metrics on http://")?.strip_suffix("/metrics").map(String::from)
            });
            addr.is_some()
        });
        addr.expect("the metrics address on stdout")
    }

    /// The lines the server printed on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lines").clone()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends `signal` to the server process.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid), signal).expect("signal server");
    }

    /// Waits for the server to exit (after a signal); returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// The server's direct children right now, but for its guardian (which lives as long as the server).
    pub fn children(&self) -> Vec<ProcInfo> {
        all_processes().into_iter().filter(|p| p.ppid == self.pid && p.comm != GUARDIAN).collect()
    }

    /// The server's guardian process.
    pub fn guardian(&self) -> Option<ProcInfo> {
        all_processes().into_iter().find(|p| p.ppid == self.pid && p.comm == GUARDIAN)
    }

    /// Asserts that within a few seconds the server has no zombie child (the reaper keeps up).
    pub fn assert_no_zombies(&self) {
        let ok = wait_until(Duration::from_secs(5), || self.children().iter().all(|p| p.state != 'Z'));
        assert!(ok, "zombie children of the server remain: {:?}", self.children());
    }

    /// Asserts that within a few seconds the server has no child at all (no job process left).
    pub fn assert_no_children(&self) {
        let ok = wait_until(Duration::from_secs(5), || self.children().is_empty());
        assert!(ok, "children of the server remain: {:?}", self.children());
    }
}

impl Drop for TestServer {
    /// Every test ends with a check that the server has no zombie child, then kills the server for real.
    fn drop(&mut self) {
        let zombies_left = !std::thread::panicking()
            && self.is_running()
            && !wait_until(Duration::from_secs(5), || self.children().iter().all(|p| p.state != 'Z'));
        let children = self.children();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(!zombies_left, "the server left zombie children: {children:?}");
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("---- server log tail ({}) ----", self.log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Async version of [`wait_until`].
pub async fn wait_until_async(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One process, from `/proc/PID/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub start_time: u64,
}

pub fn proc_info(pid: i32) -> Option<ProcInfo> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 2..].split_whitespace().collect();
    Some(ProcInfo {
        pid,
        comm,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

pub fn all_processes() -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).filter_map(proc_info).collect()
}

/// Processes in session `sid` (a job's worker pid).
pub fn session_members(sid: i32) -> Vec<ProcInfo> {
    all_processes().into_iter().filter(|p| p.session == sid).collect()
}

/// Whether the very process `p` (same pid and start time) still exists (a zombie counts as existing).
pub fn exists(p: &ProcInfo) -> bool {
    proc_info(p.pid).is_some_and(|now| now.start_time == p.start_time)
}

/// Asserts every process in `procs` is gone (reaped) within `timeout`.
pub fn assert_all_gone(procs: &[ProcInfo], timeout: Duration) {
    let ok = wait_until(timeout, || procs.iter().all(|p| !exists(p)));
    let left: Vec<_> = procs.iter().filter(|p| exists(p)).collect();
    assert!(ok, "processes still exist: {left:?}");
}

pub fn raw(argv: &[&str]) -> pb::StartJob {
    pb::StartJob { command: argv.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

pub fn sh(script: &str) -> pb::StartJob {
    raw(&["sh", "-c", script])
}

pub fn job(name: &str, args: &[&str]) -> pb::StartJob {
    pb::StartJob { job: name.into(), args: args.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

pub fn duration(d: Duration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration::try_from(d).expect("duration"))
}

pub fn start_msg(start: pb::StartJob) -> pb::ExecuteRequest {
    pb::ExecuteRequest { msg: Some(Msg::Start(start)) }
}

pub fn stdin_msg(bytes: &[u8]) -> pb::ExecuteRequest {
    pb::ExecuteRequest { msg: Some(Msg::Stdin(bytes.to_vec())) }
}

pub fn close_stdin_msg() -> pb::ExecuteRequest {
    pb::ExecuteRequest { msg: Some(Msg::CloseStdin(pb::CloseStdin {})) }
}

pub fn signal_msg(signal: pb::Signal) -> pb::ExecuteRequest {
    pb::ExecuteRequest { msg: Some(Msg::Signal(pb::SendSignal { signal: signal as i32 })) }
}

/// Everything a finished call returned.
#[derive(Debug, Default)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exited: Option<pb::Exited>,
    pub status: Option<tonic::Status>,
    pub pid: Option<i32>,
}

impl Outcome {
    pub fn code(&self) -> Option<i32> {
        match self.exited.as_ref()?.status? {
            pb::exited::Status::Code(c) => Some(c),
            pb::exited::Status::Signal(_) => None,
        }
    }

    pub fn signal(&self) -> Option<i32> {
        match self.exited.as_ref()?.status? {
            pb::exited::Status::Signal(s) => Some(s),
            pb::exited::Status::Code(_) => None,
        }
    }

    pub fn reason(&self) -> Option<pb::ExitReason> {
        self.exited.as_ref().and_then(|e| pb::ExitReason::try_from(e.reason).ok())
    }

    pub fn error_code(&self) -> Option<tonic::Code> {
        self.status.as_ref().map(tonic::Status::code)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// An open call: send requests, read events.
pub struct OpenCall {
    pub requests: Option<mpsc::Sender<pb::ExecuteRequest>>,
    pub responses: tonic::Streaming<pb::ExecuteResponse>,
    pub outcome: Outcome,
}

impl OpenCall {
    /// Opens a call whose first message is `start`. Errors before the response (bad start) come back as
    /// the outcome's status.
    pub async fn open(client: &mut ExecutorClient<Channel>, start: pb::StartJob) -> Result<OpenCall, tonic::Status> {
        Self::open_with(client, vec![start_msg(start)], None).await
    }

    /// Opens a call with the given first requests and optional grpc-timeout.
    pub async fn open_with(
        client: &mut ExecutorClient<Channel>,
        first: Vec<pb::ExecuteRequest>,
        timeout: Option<Duration>,
    ) -> Result<OpenCall, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        for m in first {
            tx.send(m).await.expect("queue request");
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(t) = timeout {
            request.set_timeout(t);
        }
        let responses = client.execute(request).await?.into_inner();
        Ok(OpenCall { requests: Some(tx), responses, outcome: Outcome::default() })
    }

    pub async fn send(&self, m: pb::ExecuteRequest) {
        self.requests.as_ref().expect("request side open").send(m).await.expect("send request");
    }

    /// Half-closes the request stream.
    pub fn half_close(&mut self) {
        self.requests = None;
    }

    /// Reads the next event (recording it); `None` at the end of the call.
    pub async fn next(&mut self) -> Option<Event> {
        match self.responses.message().await {
            Ok(Some(pb::ExecuteResponse { event: Some(event) })) => {
                match &event {
                    Event::Stdout(b) => self.outcome.stdout.extend_from_slice(b),
                    Event::Stderr(b) => self.outcome.stderr.extend_from_slice(b),
                    Event::Exited(e) => self.outcome.exited = Some(e.clone()),
                    Event::Started(s) => self.outcome.pid = Some(s.pid as i32),
                    Event::Queued(_) => {}
                }
                self.outcome.events.push(event.clone());
                Some(event)
            }
            Ok(Some(_)) => panic!("response with no event"),
            Ok(None) => None,
            Err(status) => {
                self.outcome.status = Some(status);
                None
            }
        }
    }

    /// Reads until `started`; returns the worker pid.
    pub async fn started(&mut self) -> i32 {
        while let Some(event) = self.next().await {
            if let Event::Started(s) = event {
                return s.pid as i32;
            }
        }
        panic!("call ended before started: {:?}", self.outcome.status)
    }

    /// Opens a call for `start` (which prints `ready` once its tree is up), reads until `ready`, and returns
    /// the call with the `size` processes of the job's session.
    pub async fn open_tree(
        client: &mut ExecutorClient<Channel>,
        start: pb::StartJob,
        size: usize,
    ) -> (OpenCall, Vec<ProcInfo>) {
        let mut call = OpenCall::open(client, start).await.expect("open");
        let pid = call.started().await;
        call.wait_stdout("ready").await;
        let mut tree = Vec::new();
        wait_until_async(Duration::from_secs(5), || {
            tree = session_members(pid);
            tree.len() == size
        })
        .await;
        assert_eq!(tree.len(), size, "expected a {size}-process tree: {tree:?}");
        (call, tree)
    }

    /// Reads until stdout contains `needle`.
    pub async fn wait_stdout(&mut self, needle: &str) {
        while !self.outcome.stdout_text().contains(needle) {
            if self.next().await.is_none() {
                panic!("call ended before stdout had {needle:?}: {:?}", self.outcome);
            }
        }
    }

    /// Reads to the end of the call.
    pub async fn finish(mut self) -> Outcome {
        while self.next().await.is_some() {}
        self.outcome
    }
}

/// Runs a call to completion with the given requests after `start`, then half-closes.
pub async fn run(client: &mut ExecutorClient<Channel>, start: pb::StartJob) -> Outcome {
    match OpenCall::open(client, start).await {
        Ok(mut call) => {
            call.half_close();
            call.finish().await
        }
        Err(status) => Outcome { status: Some(status), ..Default::default() },
    }
}

/// Resident memory of `pid`, KiB.
pub fn rss_kib(pid: i32) -> u64 {
    status_field(pid, "VmRSS").and_then(|v| v.trim_end_matches(" kB").trim().parse().ok()).unwrap_or(0)
}

/// The worker's stdio, signal state and identity, from `/proc`.
pub fn fds_of(pid: i32) -> BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

pub fn status_field(pid: i32, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(&format!("{key}:")).map(|v| v.trim().to_string()))
}

pub async fn get_status(client: &mut ExecutorClient<Channel>) -> pb::GetStatusResponse {
    client.get_status(pb::GetStatusRequest {}).await.expect("GetStatus").into_inner()
}

/// `GetStatus` once nothing runs or waits any more (a job frees its slot after removing its cgroup and
/// directory, just after its call ended); polls for up to 5 s, then returns what it sees.
pub async fn settled_status(client: &mut ExecutorClient<Channel>) -> pb::GetStatusResponse {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = get_status(client).await;
        if (status.running == 0 && status.queued == 0) || Instant::now() >= deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A call that proves the server still serves: echo through the catalog.
pub async fn assert_serving(client: &mut ExecutorClient<Channel>) {
    let out = run(client, job("echo", &["still", "serving"])).await;
    assert_eq!(out.stdout_text(), "still serving\n", "server stopped serving: {out:?}");
    assert_eq!(out.code(), Some(0));
}

/// The metrics endpoint's text (checked to be OpenMetrics over HTTP 200).
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.to_lowercase().contains("content-type: application/openmetrics-text"), "{response}");
    response
}

/// The value of one series (`name{labels}`) in scraped metrics text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split_whitespace().next()?.parse().ok())
}

/// Live (not zombie) processes whose first argument is `tag` (`sleep <tag>`, `yes <tag>`): tests tag their
/// jobs' processes with a unique argument to find whatever of them is left anywhere on the machine.
pub fn tagged(tag: &str) -> Vec<ProcInfo> {
    all_processes()
        .into_iter()
        .filter(|p| p.state != 'Z')
        .filter(|p| {
            std::fs::read(format!("/proc/{}/cmdline", p.pid))
                .is_ok_and(|c| c.split(|b| *b == 0).nth(1).is_some_and(|arg| arg == tag.as_bytes()))
        })
        .collect()
}

/// A tag for [`tagged`], unique to this test process and `salt`.
pub fn unique_tag(salt: u32) -> String {
    format!("{}", 7_000_000 + (std::process::id() % 10_000) * 100 + salt)
}
