//! The Execute stream: output, exit status, stdin, half-close, signals, and the worker's clean state.

use std::time::Duration;

use crate::common::*;
use forkpool::pb::{self, execute_response::Event};

#[tokio::test(flavor = "multi_thread")]
async fn echo_streams_started_stdout_then_exited() {
    let server = TestServer::start(&[]);
    let mut client = server.client().await;
    let out = run(&mut client, job("echo", &["hello", "world"])).await;
    assert_eq!(out.stdout_text(), "hello world\n");
    assert_eq!(out.code(), Some(0));
    assert_eq!(out.reason(), Some(pb::ExitReason::Exited));
    assert!(out.status.is_none(), "call ended with {:?}", out.status);
    assert!(matches!(out.events.first(), Some(Event::Started(s)) if !s.job_id.is_empty() && s.pid > 1));
    assert!(matches!(out.events.last(), Some(Event::Exited(_))));
    let exited = out.exited.expect("exited");
    assert!(exited.wall_time.is_some() && exited.user_time.is_some() && exited.system_time.is_some());
    assert!(exited.max_rss_bytes > 0);
    server.assert_no_zombies();
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_code_and_stderr_are_reported() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let out = run(&mut client, sh("echo to-out; echo to-err >&2; exit 42")).await;
    assert_eq!(out.code(), Some(42));
    assert_eq!(out.stdout_text(), "to-out\n");
    assert_eq!(out.stderr, b"to-err\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_by_a_signal_reports_the_signal() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let out = run(&mut client, sh("kill -SEGV $$")).await;
    assert_eq!(out.signal(), Some(libc::SIGSEGV));
    assert_eq!(out.reason(), Some(pb::ExitReason::Exited));
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_chunks_arrive_in_order_and_close_stdin_sends_eof() {
    let server = TestServer::start(&[]);
    let mut client = server.client().await;
    let mut call = OpenCall::open(&mut client, job("cat", &[])).await.expect("open");
    call.started().await;
    for chunk in ["alpha ", "beta ", "gamma"] {
        call.send(stdin_msg(chunk.as_bytes())).await;
    }
    call.send(close_stdin_msg()).await;
    // The request stream stays open: EOF must come from close_stdin alone.
    let out = call.finish().await;
    assert_eq!(out.stdout_text(), "alpha beta gamma");
    assert_eq!(out.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn half_close_is_eof_not_cancellation() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    // Like `grpcurl -d '{...}'`: start, then half-close at once; the job must still run to its end.
    let out = run(&mut client, sh("sleep 0.5; echo done")).await;
    assert_eq!(out.stdout_text(), "done\n");
    assert_eq!(out.code(), Some(0));
    let wall = out.exited.and_then(|e| e.wall_time).expect("wall time");
    assert!(wall.seconds > 0 || wall.nanos >= 450_000_000, "ended too early: {wall:?}");

    let mut call = OpenCall::open(&mut client, job("cat", &[])).await.expect("open");
    call.send(stdin_msg(b"via half-close")).await;
    call.half_close();
    let out = call.finish().await;
    assert_eq!(out.stdout_text(), "via half-close");
}

#[tokio::test(flavor = "multi_thread")]
async fn large_output_arrives_byte_exact_in_bounded_chunks() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let out = run(&mut client, raw(&["seq", "1", "1000000"])).await;
    let expected: String = (1..=1_000_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(out.stdout.len(), expected.len());
    assert!(out.stdout == expected.as_bytes(), "output differs");
    let largest = out.events.iter().filter_map(|e| if let Event::Stdout(b) = e { Some(b.len()) } else { None }).max();
    assert!(largest.is_some_and(|n| n <= 64 * 1024), "chunk of {largest:?} bytes");
    assert_eq!(out.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn heavy_output_on_both_streams_does_not_deadlock() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let out = run(&mut client, sh("head -c 3000000 /dev/zero >&2 & head -c 3000000 /dev/zero; wait")).await;
    assert_eq!((out.stdout.len(), out.stderr.len()), (3_000_000, 3_000_000));
    assert_eq!(out.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signal_request_reaches_the_job() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let mut call =
        OpenCall::open(&mut client, sh("trap 'echo got-usr1; exit 3' USR1; echo ready; while :; do sleep 0.05; done"))
            .await
            .expect("open");
    call.wait_stdout("ready").await;
    call.send(signal_msg(pb::Signal::Usr1)).await;
    let out = call.finish().await;
    assert!(out.stdout_text().contains("got-usr1"), "{out:?}");
    assert_eq!(out.code(), Some(3));
    assert_eq!(out.reason(), Some(pb::ExitReason::Exited));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_starts_clean_in_its_own_session() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let mut call = OpenCall::open(&mut client, raw(&["sleep", "30"])).await.expect("open");
    let pid = call.started().await;
    let p = proc_info(pid).expect("worker exists");
    assert_eq!((p.session, p.pgrp, p.ppid), (pid, pid, server.pid), "own session and group, child of the server");
    // In a pid namespace the worker is forkpool's init and the program its child, in the same session.
    let pid = program_pid(pid);
    assert_eq!(proc_info(pid).expect("the program").session, p.pid, "the program is in the worker's session");
    // Right after exec the dynamic loader may briefly hold a library open; an inherited fd stays.
    let stdio_only = [0, 1, 2].into_iter().collect();
    let settled = wait_until(Duration::from_secs(2), || fds_of(pid) == stdio_only);
    let links: Vec<_> = fds_of(pid).iter().map(|fd| std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))).collect();
    assert!(settled, "inherited fds: {links:?}");
    for key in ["SigBlk", "SigIgn", "SigCgt"] {
        assert_eq!(status_field(pid, key).as_deref(), Some("0000000000000000"), "{key}");
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let mut keys: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| String::from_utf8_lossy(e).split('=').next().unwrap_or_default().to_string())
        .collect();
    keys.sort();
    assert_eq!(keys, ["HOME", "LANG", "PATH"], "only the base environment");
    drop(call);
    server.assert_no_children();
}

#[tokio::test(flavor = "multi_thread")]
async fn orphans_are_reaped_and_reported_with_their_names() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    // The worker exits (once its children have had time to exec `sleep`), leaving two background children:
    // they are killed, reaped and reported.
    let out = run(&mut client, sh("sleep 100 & sleep 100 & sleep 0.3; exit 0")).await;
    assert_eq!(out.code(), Some(0));
    let reaped = out.exited.expect("exited").reaped;
    assert_eq!(reaped.len(), 2, "{reaped:?}");
    for r in &reaped {
        assert_eq!(r.name, "sleep");
        assert_eq!(r.status, Some(pb::reaped_process::Status::Signal(libc::SIGKILL)));
        assert!(proc_info(r.pid as i32).is_none_or(|p| p.comm != "sleep"), "pid {} still exists", r.pid);
    }
    let status = get_status(&mut client).await;
    assert_eq!(status.orphans_reaped_total, 2);
    server.assert_no_children();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grandchild_holding_stdout_does_not_hang_the_call() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    // setsid puts the grandchild outside the job's group (it escapes the group kill) while it holds stdout.
    let started = std::time::Instant::now();
    let out = run(&mut client, sh("setsid sleep 3 & echo bye")).await;
    assert_eq!(out.code(), Some(0));
    assert_eq!(out.stdout_text(), "bye\n");
    assert!(started.elapsed() < Duration::from_secs(2), "call took {:?}", started.elapsed());
}
