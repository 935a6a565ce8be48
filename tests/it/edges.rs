//! The promise at its edges: clients that never read cannot keep the server from stopping; a malformed
//! message or frame mid-call ends the call with a precise status; a spawn that hangs before exec holds only
//! its own call; inherited fds are closed even without `close_range`; `max_rss_bytes` describes the job;
//! leftovers are decided by lock, not by name; logs fit a file; the CLI's Ctrl-C is never lost.
//! (Crashes of the server are in `crash.rs`.)

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use bytes::{Buf, BufMut, Bytes};
use forkpool::pb;
use nix::sys::signal::Signal;
use prost::Message;

/// A client connection that reads nothing it is not asked to (tonic reads into its window, then stops).
async fn connection(server: &TestServer) -> pb::executor_client::ExecutorClient<tonic::transport::Channel> {
    server.client().await
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_clients_that_never_read_cannot_keep_the_server_from_stopping() {
    let drain = Duration::from_secs(2);
    let mut server = TestServer::start(&["--allow-raw-commands", "--workers", "64", "--drain-timeout", "2s"]);
    let tag = unique_tag(1);
    let mut held = Vec::new();
    for i in 0..50 {
        let mut client = connection(&server).await;
        // Half flood and half-close; half flood a little, then sleep, with the request stream held open.
        let (start, half_close) = if i % 2 == 0 {
            (raw(&["yes", &tag]), true)
        } else {
            (sh(&format!("yes {tag} | head -c 3000000; sleep {tag}")), false)
        };
        let mut call = OpenCall::open(&mut client, start).await.expect("open");
        if half_close {
            call.half_close();
        }
        // Never read: keep the call (and its connection) and walk away.
        held.push((client, call));
    }
    assert!(wait_until(Duration::from_secs(20), || tagged(&tag).len() >= 50), "50 jobs running");
    let began = Instant::now();
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(drain + Duration::from_secs(5)).unwrap_or_else(|| {
        panic!("the server was still running {:?} after SIGTERM with a {drain:?} drain", began.elapsed())
    });
    let took = began.elapsed();
    eprintln!("50 unread calls: the server exited {took:?} after SIGTERM (drain timeout {drain:?})");
    assert!(status.success(), "{status:?}");
    assert!(wait_until(Duration::from_secs(2), || tagged(&tag).is_empty()), "left: {:?}", tagged(&tag));
    let log = server.log_text();
    assert!(log.contains("drain timeout: killing the remaining jobs"), "{log}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_ends_a_stuck_shutdown_within_seconds() {
    let mut server = TestServer::start(&["--allow-raw-commands", "--drain-timeout", "60s"]);
    let tag = unique_tag(2);
    let mut client = connection(&server).await;
    let call = OpenCall::open(&mut client, raw(&["yes", &tag])).await.expect("open");
    assert!(wait_until(Duration::from_secs(10), || tagged(&tag).len() == 1));
    server.signal(Signal::SIGTERM);
    assert!(wait_until(Duration::from_secs(5), || server.log_text().contains("draining")));
    let began = Instant::now();
    server.signal(Signal::SIGINT);
    let status = server.wait_exit(Duration::from_secs(5)).expect("the server exits within 5 s of a second signal");
    eprintln!("unread flood: exited {:?} after the second signal", began.elapsed());
    assert!(status.success(), "{status:?}");
    assert!(tagged(&tag).is_empty());
    drop(call);
}

/// A codec that sends raw bytes as request messages and decodes responses as usual: a client that sends
/// what no real client would.
#[derive(Clone, Default)]
struct RawRequests;

struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Codec for RawRequests {
    type Encode = Vec<u8>;
    type Decode = pb::ExecuteResponse;
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<pb::ExecuteResponse>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// An `Execute` call whose request messages are the raw bytes received on `requests`.
async fn raw_execute(
    channel: &tonic::transport::Channel,
    requests: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<tonic::Response<tonic::Streaming<pb::ExecuteResponse>>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/forkpool.v1.Executor/Execute");
    let request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(requests));
    grpc.streaming(request, path, RawRequests).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_does_not_decode_mid_call_gets_invalid_argument_and_kills_the_job() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let channel = server.channel().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    tx.send(start_msg(sh("echo ready; sleep 1000")).encode_to_vec()).await.expect("queue");
    let mut responses = raw_execute(&channel, rx).await.expect("accepted").into_inner();
    let mut pid = None;
    let mut output = Vec::new();
    while !output.ends_with(b"ready\n") {
        match responses.message().await.expect("events").and_then(|r| r.event) {
            Some(pb::execute_response::Event::Started(s)) => pid = Some(s.pid as i32),
            Some(pb::execute_response::Event::Stdout(b)) => output.extend(b),
            other => panic!("unexpected {other:?}"),
        }
    }
    let worker = proc_info(pid.expect("started")).expect("worker");
    // Field 1 (`start`), length-delimited, then a length that never ends: not an ExecuteRequest.
    tx.send(vec![0x0a, 0xff]).await.expect("send garbage");
    let end = match responses.message().await {
        Ok(Some(event)) => panic!("no event may follow, got {event:?}"),
        Ok(None) => panic!("the call ended with status OK and no `exited`"),
        Err(status) => status,
    };
    assert_eq!(end.code(), tonic::Code::InvalidArgument, "{end:?}");
    assert!(end.message().contains("failed to decode") && end.message().contains("killed"), "{}", end.message());
    assert_all_gone(&[worker], Duration::from_secs(5));
    // The same as the first message: refused with the same code, nothing started.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    tx.send(vec![0x0a, 0xff]).await.expect("queue");
    let refused = raw_execute(&channel, rx).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("malformed request"), "{}", refused.message());
    let mut client = server.client().await;
    assert_serving(&mut client).await;
    assert_eq!(settled_status(&mut client).await.started_total, 2);
}

/// One gRPC frame: compression flag, big-endian length, message.
fn grpc_frame(flag: u8, message: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(flag);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame.into()
}

/// Starts `sh -c 'echo ready; sleep 1000'` over a raw HTTP/2 stream and reads until `ready`; returns the
/// request side, the response body and the worker.
async fn raw_call(addr: &str) -> (h2::SendStream<Bytes>, h2::RecvStream, ProcInfo) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/forkpool.v1.Executor/Execute"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut send) = client.send_request(request, false).expect("send request");
    send.send_data(grpc_frame(0, &start_msg(sh("echo ready; sleep 1000")).encode_to_vec()), false).expect("start");
    let mut body = response.await.expect("response headers").into_body();
    let mut buffer = bytes::BytesMut::new();
    let mut pid = None;
    let mut stdout = Vec::new();
    while !stdout.ends_with(b"ready\n") {
        let data = body.data().await.expect("more events").expect("data");
        let _ = body.flow_control().release_capacity(data.len());
        buffer.extend_from_slice(&data);
        while buffer.len() >= 5 {
            let length = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
            if buffer.len() < 5 + length {
                break;
            }
            buffer.advance(5);
            let message = pb::ExecuteResponse::decode(buffer.split_to(length)).expect("a response");
            match message.event {
                Some(pb::execute_response::Event::Started(s)) => pid = Some(s.pid as i32),
                Some(pb::execute_response::Event::Stdout(b)) => stdout.extend(b),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let worker = proc_info(pid.expect("started")).expect("worker");
    (send, body, worker)
}

/// `grpc-message` is percent-encoded on the wire.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the rest of a raw call; returns its `grpc-status` and `grpc-message`.
async fn raw_status(mut body: h2::RecvStream) -> (String, String) {
    while let Some(data) = body.data().await {
        let data = data.expect("data");
        let _ = body.flow_control().release_capacity(data.len());
    }
    let trailers = body.trailers().await.expect("trailers").expect("a status in the trailers");
    let get = |name: &str| trailers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    (get("grpc-status"), percent_decode(&get("grpc-message")))
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_mid_call_get_invalid_argument_and_kill_the_job() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    // A frame flagged compressed on a call that named no compression.
    let (mut send, body, worker) = raw_call(&addr).await;
    send.send_data(grpc_frame(1, &[0x12, 0x01, b'x']), false).expect("send");
    let (code, message) = raw_status(body).await;
    assert_eq!(code, "3", "INVALID_ARGUMENT: {message}");
    assert!(message.contains("compressed-flag"), "{message}");
    assert_all_gone(&[worker], Duration::from_secs(5));
    // A frame cut short by the end of the stream.
    let (mut send, body, worker) = raw_call(&addr).await;
    let frame = grpc_frame(0, &stdin_msg(b"0123456789").encode_to_vec());
    send.send_data(frame.slice(..frame.len() - 4), true).expect("send");
    let (code, message) = raw_status(body).await;
    assert_eq!(code, "3", "INVALID_ARGUMENT: {message}");
    assert!(message.to_lowercase().contains("unexpected eof"), "{message}");
    assert_all_gone(&[worker], Duration::from_secs(5));
    let mut client = server.client().await;
    assert_serving(&mut client).await;
    let status = settled_status(&mut client).await;
    assert_eq!((status.started_total, status.finished_total), (3, 3));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transport_error_mid_call_kills_the_job_and_counts_once() {
    let server = TestServer::start(&["--allow-raw-commands", "--metrics-listen", "127.0.0.1:0"]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let (mut send, body, worker) = raw_call(&addr).await;
    // The client resets its own stream with an error (not CANCEL): the request stream fails below gRPC (the
    // unit test of `StreamError` covers the classification).
    send.send_reset(h2::Reason::INTERNAL_ERROR);
    drop(body);
    assert_all_gone(&[worker], Duration::from_secs(5));
    let mut client = server.client().await;
    let status = settled_status(&mut client).await;
    assert_eq!((status.started_total, status.finished_total, status.cancelled_total), (1, 1, 1), "{status:?}");
    let text = scrape(&server.metrics_addr());
    assert_eq!(metric(&text, "forkpool_jobs_finished_total{reason=\"cancelled\"}"), Some(1.0), "{text}");
    // Which the server sees first, the broken request stream or the response stream dropped, is a race;
    // either way the client is gone and the job is ended and counted once, as its cancel.
    let log = server.log_text();
    assert!(log.contains("ending=Transport(Internal") || log.contains("ending=Cancelled"), "{log}");
    assert_serving(&mut client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spawn_stuck_before_exec_holds_only_its_own_call() {
    let root = test_cgroup_root("hung");
    let server = TestServer::with_config(
        // The cold spawn path (a warm sandbox's hand-off has no exec of its own to hang).
        &format!("allow_raw_commands = true\nworkers = 8\nwarm_sandboxes = 0\ncgroup_root = \"{}\"\n", root.display()),
        &[],
    );
    let mut client = server.client().await;
    if !cgroup_mode(&get_status(&mut client).await, "hung spawn") {
        return;
    }
    let instance = instance_cgroup(&root);
    // Every job born now is born frozen, before it can exec: its spawn hangs (as on a hung filesystem).
    std::fs::write(instance.join("cgroup.freeze"), "1").expect("freeze the instance");
    let mut stuck_client = server.client().await;
    let stuck = tokio::spawn(async move { run(&mut stuck_client, raw(&["echo", "never"])).await });
    let mut job_dir = None;
    assert!(wait_until(Duration::from_secs(10), || {
        job_dir = std::fs::read_dir(&instance).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| std::fs::read_to_string(p.join("cgroup.procs")).is_ok_and(|procs| !procs.trim().is_empty()))
        });
        job_dir.is_some()
    }));
    let job_dir = job_dir.expect("the stuck job's cgroup");
    // Keep that one frozen, thaw the rest: from now on only the stuck spawn is stuck.
    std::fs::write(job_dir.join("cgroup.freeze"), "1").expect("freeze the stuck job");
    std::fs::write(instance.join("cgroup.freeze"), "0").expect("thaw the instance");
    let child: i32 = std::fs::read_to_string(job_dir.join("cgroup.procs")).expect("procs").trim().parse().expect("pid");

    // Other jobs start, end with their own codes, are reaped, and are killed on cancel.
    let others = async {
        for code in 0..5 {
            let out = run(&mut client, sh(&format!("exit {code}"))).await;
            assert_eq!(out.code(), Some(code), "{out:?}");
        }
        let (call, tree) = OpenCall::open_tree(&mut client, sh(PAIR), 2).await;
        drop(call);
        assert_all_gone(&tree, Duration::from_secs(5));
    };
    tokio::time::timeout(Duration::from_secs(30), others).await.expect("other jobs ran while one spawn hung");
    assert!(!stuck.is_finished(), "the stuck call is still waiting for its spawn");
    let status = get_status(&mut client).await;
    assert_eq!(status.running, 1, "only the stuck call holds a slot: {status:?}");

    // Cancelling the stuck call kills its child (frozen tasks die of SIGKILL) and frees its slot.
    stuck.abort();
    assert!(wait_until(Duration::from_secs(10), || proc_info(child).is_none()), "the stuck child was not reaped");
    let status = settled_status(&mut client).await;
    assert_eq!((status.running, status.queued), (0, 0), "{status:?}");
    assert_serving(&mut client).await;
    server.assert_no_children();
    drop(client);
    drop(server);
    assert!(wait_until(Duration::from_secs(5), || std::fs::remove_dir(&root).is_ok()));
}

/// A seccomp filter that refuses `close_range` with EPERM, as older container runtimes do.
fn refuse_close_range() -> std::io::Result<()> {
    let filter = [
        // Load the syscall number; if it is close_range, return EPERM, else allow.
        libc::sock_filter { code: 0x20, jt: 0, jf: 0, k: 0 },
        libc::sock_filter { code: 0x15, jt: 0, jf: 1, k: libc::SYS_close_range as u32 },
        libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32 },
        libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: libc::SECCOMP_RET_ALLOW },
    ];
    let program = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
    // SAFETY: prctl with a pointer to a valid filter program that outlives the call (the kernel copies it).
    let r = unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program as *const _) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_close_range_inherited_fds_above_the_jobs_limit_are_closed_too() {
    use std::os::unix::process::CommandExt;
    let catalog = "allow_raw_commands = true\ncgroups = \"off\"\n[limits]\nopen_files = 16\n";
    let config = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fds-{}.toml", std::process::id()));
    std::fs::write(&config, catalog).expect("config");
    let mut command = Command::new(BIN);
    command.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&config);
    // SAFETY: between fork and exec only dup2 and prctl, both async-signal-safe, on locals.
    unsafe {
        command.pre_exec(|| {
            // An fd the server inherits without close-on-exec, far above the job's limit of 16.
            if libc::dup2(2, 100) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            refuse_close_range()
        });
    }
    let server = TestServer::start_command(command);
    assert!(fds_of(server.pid).contains(&100), "the server holds the inherited fd");
    let mut client = server.client().await;
    let out = run(&mut client, sh("ulimit -n; ls /proc/self/fd")).await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    let mut lines = out.stdout_text().lines().map(String::from).collect::<Vec<_>>();
    assert_eq!(lines.remove(0), "16", "the job's limit");
    // ls itself holds one fd for the directory it lists.
    assert!(lines.len() <= 4 && !lines.iter().any(|fd| fd == "100"), "the job inherited {lines:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_rss_describes_the_job_not_the_server() {
    for cgroups in ["auto", "off"] {
        let server = TestServer::with_config(&format!("allow_raw_commands = true\ncgroups = \"{cgroups}\"\n"), &[]);
        let mut client = server.client().await;
        let in_cgroups = get_status(&mut client).await.containment == pb::ContainmentMode::Cgroup as i32;
        if cgroups == "auto" && !cgroup_mode(&get_status(&mut client).await, "max_rss in cgroup mode") {
            continue;
        }
        let small = run(&mut client, raw(&["true"])).await;
        let small_rss = small.exited.as_ref().expect("exited").max_rss_bytes;
        let big = run(&mut client, raw(&["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"])).await;
        assert_eq!(big.code(), Some(0), "{big:?}");
        let big_rss = big.exited.as_ref().expect("exited").max_rss_bytes;
        eprintln!("{cgroups}: /bin/true {small_rss} bytes, dd with a 200 MiB buffer {big_rss} bytes");
        assert!(small_rss < 4 << 20, "{cgroups}: /bin/true reported {small_rss} bytes");
        assert!(big_rss >= 200 << 20, "{cgroups}: a 200 MiB job reported {big_rss} bytes");
        if in_cgroups {
            assert!(small_rss > 0, "cgroup mode knows the job's peak");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_written_to_a_file_have_no_colour_codes_and_plain_peers() {
    let mut command = Command::new(BIN);
    command.args(["serve", "--listen", "127.0.0.1:0", "--allow-raw-commands"]).env_remove("RUST_LOG");
    let server = TestServer::start_command(command);
    let mut client = server.client().await;
    assert_eq!(run(&mut client, raw(&["true"])).await.code(), Some(0));
    assert!(wait_until(Duration::from_secs(5), || server.log_text().contains("exited")));
    let log = server.log_text();
    assert!(!log.contains('\u{1b}'), "escape sequences in a log file:\n{log}");
    assert!(log.contains("peer=127.0.0.1:") && !log.contains("peer=Some("), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renamed_server_sharing_the_work_root_and_cgroup_root_is_recognised_as_alive() {
    let dir = std::env::temp_dir().join(format!("forkpool-test-liveness-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let renamed = dir.join("jobrunner");
    std::fs::copy(BIN, &renamed).expect("copy the binary under another name");
    let root = test_cgroup_root("liveness");
    let config = dir.join("shared.toml");
    std::fs::write(
        &config,
        format!(
            "allow_raw_commands = true\nwork_root = \"{}\"\ncgroup_root = \"{}\"\n",
            dir.join("work").display(),
            root.display()
        ),
    )
    .expect("config");
    let mut command = Command::new(&renamed);
    command.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&config).env("RUST_LOG", "forkpool=debug,info");
    let first = TestServer::start_command(command);
    let mut client = first.client().await;
    let in_cgroups = get_status(&mut client).await.containment == pb::ContainmentMode::Cgroup as i32;
    let mut call = OpenCall::open(&mut client, sh("pwd; echo ready; read line; test -d \"$PWD\" && echo kept"))
        .await
        .expect("open");
    call.started().await;
    call.wait_stdout("ready").await;
    let private_dir = PathBuf::from(call.outcome.stdout_text().lines().next().expect("pwd"));
    assert!(private_dir.starts_with(dir.join("work")), "{private_dir:?}");
    let live_instance = in_cgroups.then(|| instance_cgroup(&root));

    // A second server on the same volume and cgroup root starts and cleans leftovers: none of them are.
    let second = TestServer::with_config(&std::fs::read_to_string(&config).expect("config"), &[]);
    assert!(private_dir.exists(), "a live server's working directory was removed");
    if let Some(instance) = &live_instance {
        assert!(instance.exists(), "a live server's cgroup was removed");
    }
    call.send(stdin_msg(b"go\n")).await;
    call.half_close();
    let out = call.finish().await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout_text().ends_with("kept\n"), "{out:?}");
    drop(second);
    drop(first);
    assert!(wait_until(Duration::from_secs(5), || !root.exists() || std::fs::remove_dir(&root).is_ok()));
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_while_output_is_being_written_still_cancels_the_job() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let tag = unique_tag(3);
    // stdout is a pipe nobody reads: the CLI blocks writing the job's output.
    let mut cli = Command::new(BIN)
        .args(["run", "--server", &server.url, "--", "yes", &tag])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("forkpool run");
    assert!(wait_until(Duration::from_secs(10), || tagged(&tag).len() == 1), "the job runs");
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(cli.id() as i32), Signal::SIGINT).expect("Ctrl-C");
    let exited = wait_until(Duration::from_secs(10), || matches!(cli.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = cli.kill();
    }
    let status = cli.wait().expect("wait");
    assert!(exited, "the CLI ignored Ctrl-C while writing output");
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(wait_until(Duration::from_secs(5), || tagged(&tag).is_empty()), "the job outlived its cancelled call");
}
