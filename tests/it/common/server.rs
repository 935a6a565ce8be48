//! A real forkpool server on 127.0.0.1 with an ephemeral port, stopped for real when dropped; its metrics.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use forkpool::pb::executor_client::ExecutorClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::Channel;

use super::procfs::{ProcInfo, all_processes};

pub const BIN: &str = env!("CARGO_BIN_EXE_forkpool");

/// The guardian's process name.
pub const GUARDIAN: &str = "forkpool-guard";
/// The name of a warm sandbox's init while it waits for a job (it is `forkpool-init` once it has one).
pub const WARM_SANDBOX: &str = "forkpool-warm";

/// A child of the server that is not yet what it will be: before its exec it has the name of the server's
/// spawner thread (`forkpool-spawnN`), and a warm sandbox's init (`forkpool-init --warm ...`) names itself
/// `forkpool-warm` only once it runs, and `forkpool-init` again when it takes a job, before it starts it.
pub fn unsettled(p: &ProcInfo) -> bool {
    if p.state == 'Z' {
        return false;
    }
    if p.comm.starts_with("forkpool-spawn") || p.comm.parse::<u32>().is_ok() {
        // Before its exec, or just after an exec through an fd on a kernel that names it after the fd.
        return true;
    }
    let warm = std::fs::read(format!("/proc/{}/cmdline", p.pid))
        .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(b"--warm".as_slice()));
    warm && p.comm != WARM_SANDBOX && !all_processes().iter().any(|c| c.ppid == p.pid)
}

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
        Self::with_config_env(toml, args, &[])
    }

    /// [`TestServer::with_config`], with `env` added to the server's environment.
    pub fn with_config_env(toml: &str, args: &[&str], env: &[(&str, &str)]) -> TestServer {
        super::sweep_stale_test_dirs();
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("config-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, toml).expect("write the config");
        let path = path.to_str().expect("utf8 path").to_string();
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--config", path.as_str()])
            .args(args)
            .env("RUST_LOG", "forkpool=debug,info")
            .envs(env.iter().copied());
        Self::start_command(command)
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
        ExecutorClient::new(self.channel().await)
    }

    /// A new connection to the server (for the health service, or raw calls).
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url.clone()).expect("url").connect().await.expect("connect")
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

    /// The server's direct children, but for its guardian (which lives as long as the server) and its warm
    /// sandboxes (idle inits waiting for a job, named `forkpool-warm`; see `src/job/warm.rs`).
    ///
    /// A child caught between its clone and its name is neither yet (see [`unsettled`]): the list is taken
    /// again, for up to 5 s, until no child is. A replacement warm sandbox started as a job takes the last one
    /// would otherwise be counted as a second job worker.
    pub fn children(&self) -> Vec<ProcInfo> {
        self.settled_children().into_iter().filter(|p| p.comm != GUARDIAN && p.comm != WARM_SANDBOX).collect()
    }

    /// The server's warm sandboxes, idle.
    pub fn warm_sandboxes(&self) -> Vec<ProcInfo> {
        self.settled_children().into_iter().filter(|p| p.comm == WARM_SANDBOX).collect()
    }

    fn settled_children(&self) -> Vec<ProcInfo> {
        let list = || all_processes().into_iter().filter(|p| p.ppid == self.pid).collect::<Vec<_>>();
        let mut children = list();
        let deadline = Instant::now() + Duration::from_secs(5);
        while children.iter().any(unsettled) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            children = list();
        }
        children
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
