//! Bad input gets a precise status and a clear message, and the server keeps serving.

use std::time::Duration;

use crate::common::*;
use forkpool::pb::{self, execute_request::Msg};
use tonic::Code;

/// Sends `first` and half-closes, then returns the error the call ends with.
async fn refused(
    client: &mut pb::executor_client::ExecutorClient<tonic::transport::Channel>,
    first: Vec<pb::ExecuteRequest>,
) -> tonic::Status {
    let mut responses = match client.execute(tokio_stream::iter(first)).await {
        Err(status) => return status,
        Ok(response) => response.into_inner(),
    };
    loop {
        match responses.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("expected an error, the call succeeded"),
            Err(status) => return status,
        }
    }
}

fn with(mut start: pb::StartJob, f: impl FnOnce(&mut pb::StartJob)) -> pb::StartJob {
    f(&mut start);
    start
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_start_gets_its_own_code_and_message() {
    let raw_server = TestServer::start(&["--allow-raw-commands"]);
    let catalog_server = TestServer::start(&[]);
    let mut raw_client = raw_server.client().await;
    let mut catalog_client = catalog_server.client().await;
    let neg = Some(prost_types::Duration { seconds: -1, nanos: 0 });
    // Not under /tmp: each job has a private one.
    let not_executable =
        std::path::Path::new("/var/tmp").join(format!("forkpool-not-executable-{}", std::process::id()));
    std::fs::write(&not_executable, "#!/bin/sh\n").expect("write file");
    let not_executable = not_executable.to_str().expect("utf8").to_string();
    let cases: Vec<(&str, bool, Vec<pb::ExecuteRequest>, Code, &str)> = vec![
        ("empty stream", true, vec![], Code::InvalidArgument, "empty request stream"),
        ("stdin first", true, vec![stdin_msg(b"x")], Code::InvalidArgument, "must be `start`"),
        (
            "message with no field",
            true,
            vec![pb::ExecuteRequest { msg: None }],
            Code::InvalidArgument,
            "must be `start`",
        ),
        ("neither job nor command", true, vec![start_msg(pb::StartJob::default())], Code::InvalidArgument, "set `job`"),
        (
            "both job and command",
            true,
            vec![start_msg(with(job("echo", &[]), |s| s.command = vec!["ls".into()]))],
            Code::InvalidArgument,
            "both",
        ),
        ("NUL in an argument", true, vec![start_msg(raw(&["echo", "a\0b"]))], Code::InvalidArgument, "NUL"),
        (
            "NUL in env",
            true,
            vec![start_msg(with(raw(&["true"]), |s| {
                s.env.insert("K".into(), "v\0".into());
            }))],
            Code::InvalidArgument,
            "NUL",
        ),
        (
            "empty env key",
            true,
            vec![start_msg(with(raw(&["true"]), |s| {
                s.env.insert(String::new(), "v".into());
            }))],
            Code::InvalidArgument,
            "empty name",
        ),
        (
            "env key with =",
            true,
            vec![start_msg(with(raw(&["true"]), |s| {
                s.env.insert("A=B".into(), "v".into());
            }))],
            Code::InvalidArgument,
            "`=`",
        ),
        (
            "negative timeout",
            true,
            vec![start_msg(with(raw(&["true"]), |s| s.timeout = neg))],
            Code::InvalidArgument,
            "timeout is negative",
        ),
        (
            "negative kill grace",
            true,
            vec![start_msg(with(raw(&["true"]), |s| s.kill_grace = neg))],
            Code::InvalidArgument,
            "kill_grace is negative",
        ),
        ("unknown job", true, vec![start_msg(job("nope", &[]))], Code::NotFound, "no job named `nope`"),
        (
            "raw command not allowed",
            false,
            vec![start_msg(raw(&["ls"]))],
            Code::PermissionDenied,
            "raw commands are not allowed",
        ),
        (
            "args to a job without args",
            false,
            vec![start_msg(job("cat", &["/etc/shadow"]))],
            Code::PermissionDenied,
            "does not accept arguments",
        ),
        (
            "env a job does not allow",
            false,
            vec![start_msg(with(job("echo", &[]), |s| {
                s.env.insert("LD_PRELOAD".into(), "x".into());
            }))],
            Code::PermissionDenied,
            "LD_PRELOAD",
        ),
        (
            "program not found",
            true,
            vec![start_msg(raw(&["/nonexistent/program"]))],
            Code::FailedPrecondition,
            "/nonexistent/program",
        ),
        (
            "program not in PATH",
            true,
            vec![start_msg(raw(&["no-such-program-anywhere"]))],
            Code::FailedPrecondition,
            "not found",
        ),
        ("program not executable", true, vec![start_msg(raw(&[&not_executable]))], Code::FailedPrecondition, "EACCES"),
    ];
    for (name, on_raw, first, code, needle) in cases {
        let client = if on_raw { &mut raw_client } else { &mut catalog_client };
        let status = refused(client, first).await;
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(status.message().contains(needle), "{name}: message {:?} lacks {needle:?}", status.message());
        assert_serving(client).await;
    }
    raw_server.assert_no_zombies();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_start_kills_the_running_job() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let mut call = OpenCall::open(&mut client, raw(&["sleep", "1000"])).await.expect("open");
    let pid = call.started().await;
    let worker = proc_info(pid).expect("worker");
    call.send(start_msg(raw(&["true"]))).await;
    let out = call.finish().await;
    assert_eq!(out.error_code(), Some(Code::InvalidArgument), "{out:?}");
    assert!(out.status.as_ref().is_some_and(|s| s.message().contains("second `start`")));
    assert_all_gone(&[worker], Duration::from_secs(5));
    assert_serving(&mut client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unspecified_signal_is_invalid_and_ends_the_job() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let mut call = OpenCall::open(&mut client, raw(&["sleep", "1000"])).await.expect("open");
    call.started().await;
    call.send(pb::ExecuteRequest { msg: Some(Msg::Signal(pb::SendSignal { signal: 0 })) }).await;
    let out = call.finish().await;
    assert_eq!(out.error_code(), Some(Code::InvalidArgument));
    server.assert_no_children();
}

#[tokio::test(flavor = "multi_thread")]
async fn draining_refuses_new_and_queued_calls_with_unavailable() {
    let mut server = TestServer::start(&["--allow-raw-commands", "--workers", "1", "--drain-timeout", "2s"]);
    let mut client = server.client().await;
    let mut running = OpenCall::open(&mut client, raw(&["sleep", "1000"])).await.expect("open");
    running.started().await;
    let mut queued = OpenCall::open(&mut client, job("echo", &["x"])).await.expect("open");
    queued.next().await;
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let out = queued.finish().await;
    assert_eq!(out.error_code(), Some(Code::Unavailable), "{out:?}");
    let refused = OpenCall::open(&mut client, job("echo", &["y"])).await.err().expect("refused");
    assert_eq!(refused.code(), Code::Unavailable);
    // After the drain timeout the running job is killed and reported with reason SHUTDOWN.
    let out = running.finish().await;
    assert_eq!(out.reason(), Some(pb::ExitReason::Shutdown), "{out:?}");
    let status = server.wait_exit(Duration::from_secs(10)).expect("server exits");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_durations_are_handled_not_overflowed() {
    let server = TestServer::with_config(
        "allow_raw_commands = true\ndefault_kill_grace = \"500ms\"\nmax_kill_grace = \"1s\"\n",
        &[],
    );
    let mut client = server.client().await;
    let huge = Some(prost_types::Duration { seconds: i64::MAX, nanos: 999_999_999 });
    let mut start = raw(&["echo", "survived"]);
    start.timeout = huge;
    start.kill_grace = huge;
    let out = run(&mut client, start).await;
    assert_eq!(out.stdout_text(), "survived\n", "{out:?}");
    assert_eq!(out.code(), Some(0));
    // And a cancelled job with a huge grace is still capped by the server's maximum.
    let mut start = sh(STUBBORN);
    start.timeout = Some(prost_types::Duration { seconds: 0, nanos: 200_000_000 });
    start.kill_grace = huge;
    let began = std::time::Instant::now();
    let out = run(&mut client, start).await;
    assert_eq!(out.reason(), Some(pb::ExitReason::TimedOut));
    assert_eq!(out.signal(), Some(libc::SIGKILL), "it ignores SIGTERM, so the capped grace ends in SIGKILL");
    assert!(began.elapsed() < Duration::from_secs(5), "grace not capped: {:?}", began.elapsed());
    assert_serving(&mut client).await;
}
