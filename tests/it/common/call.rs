//! Calls over gRPC: requests, an open call to drive step by step, a call run to its end.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::time::{Duration, Instant};

use forkpool::pb::{self, execute_request::Msg, execute_response::Event, executor_client::ExecutorClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::procfs::{ProcInfo, session_members};
use super::server::wait_until_async;

/// A job whose tree is three processes (the shell and two sleepers) and prints `ready` once it is up.
pub const TREE: &str = "sleep 1000 & sleep 1000 & echo ready; wait";
/// A two-process job (the shell and a sleeper) that prints `ready` once it is up.
pub const PAIR: &str = "sleep 1000 & echo ready; wait";
/// A job that ignores SIGTERM (only SIGKILL ends it) and prints `ready`.
pub const STUBBORN: &str = "trap '' TERM; echo ready; while :; do sleep 0.05; done";

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
    /// Output files as received: path → (bytes, mode, whether its `last` chunk came).
    pub files: std::collections::BTreeMap<String, (Vec<u8>, u32, bool)>,
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

    /// `exited.outputs` as (path, state, size).
    pub fn output_states(&self) -> Vec<(String, pb::OutputState, u64)> {
        self.exited.as_ref().map_or_else(Vec::new, |e| {
            e.outputs
                .iter()
                .map(|o| (o.path.clone(), pb::OutputState::try_from(o.state).unwrap_or_default(), o.size))
                .collect()
        })
    }

    /// A complete output file's bytes.
    pub fn file(&self, path: &str) -> &[u8] {
        let (data, _, last) =
            self.files.get(path).unwrap_or_else(|| panic!("no output file {path}: {:?}", self.files.keys()));
        assert!(last, "output {path} never got its last chunk");
        data
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
                    Event::Heartbeat(_) => assert!(self.outcome.exited.is_none(), "a heartbeat after `exited`"),
                    Event::Output(chunk) => {
                        let entry = self.outcome.files.entry(chunk.path.clone()).or_default();
                        assert!(!entry.2, "a chunk of {} after its last one", chunk.path);
                        assert!(chunk.data.len() <= 64 * 1024, "an output chunk of {} bytes", chunk.data.len());
                        entry.0.extend_from_slice(&chunk.data);
                        entry.1 = chunk.mode;
                        entry.2 = chunk.last;
                    }
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
