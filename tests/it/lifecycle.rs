//! Operating the server: graceful drain, a second signal, PID 1 in its own pid namespace, structured logs.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use forkpool::pb;
use nix::sys::signal::Signal;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

async fn health(server: &TestServer, service: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Channel::from_shared(server.url.clone()).ok()?.connect().await.ok()?;
    let reply = HealthClient::new(channel).check(HealthCheckRequest { service: service.into() }).await.ok()?;
    ServingStatus::try_from(reply.into_inner().status).ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_lets_running_jobs_finish_while_health_says_not_serving() {
    let mut server = TestServer::start(&["--allow-raw-commands", "--drain-timeout", "20s"]);
    let mut client = server.client().await;
    assert_eq!(health(&server, "forkpool.v1.Executor").await, Some(ServingStatus::Serving));
    let mut call = OpenCall::open(&mut client, sh("echo started; sleep 1; echo finished")).await.expect("open");
    call.wait_stdout("started").await;
    server.signal(Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while health(&server, "").await != Some(ServingStatus::NotServing) {
        assert!(Instant::now() < deadline, "health must turn NOT_SERVING while draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health(&server, "forkpool.v1.Executor").await, Some(ServingStatus::NotServing));
    let out = call.finish().await;
    assert_eq!(out.stdout_text(), "started\nfinished\n");
    assert_eq!(out.reason(), Some(pb::ExitReason::Exited), "a job that ends within the drain timeout ends normally");
    let status = server.wait_exit(Duration::from_secs(10)).expect("the server exits after the drain");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_health_watch_sees_not_serving_then_ends_and_holds_no_shutdown_open() {
    // A watcher that keeps its Watch stream open and ignores GOAWAY (grpcio's own health checking does not:
    // it cancels the stream): the stream says NOT_SERVING at the drain, ends with UNAVAILABLE when the server
    // stops taking calls, and the server closes its connections without waiting for it.
    let mut server = TestServer::start(&["--allow-raw-commands", "--drain-timeout", "20s"]);
    let mut watch = HealthClient::new(server.channel().await)
        .watch(HealthCheckRequest { service: "forkpool.v1.Executor".into() })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("a first status").expect("not ended");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    server.signal(Signal::SIGTERM);
    let second = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.expect("in time");
    assert_eq!(second.expect("a status").expect("not ended").status, ServingStatus::NotServing as i32);
    let end = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.expect("the stream ends");
    let status = end.expect_err("it ends with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    let exit = server.wait_exit(Duration::from_secs(10)).expect("the server exits after the drain");
    assert!(exit.success(), "{exit:?}");
    let log = server.log_text();
    assert!(!log.contains("did not close in time"), "the Watch held the shutdown open: {log}");
    assert!(!log.contains(" ERROR "), "a clean stop logs no error (the guardian ends with the server): {log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_kills_every_job_at_once() {
    let mut server = TestServer::start(&["--allow-raw-commands", "--drain-timeout", "60s"]);
    let mut client = server.client().await;
    let (call, tree) = OpenCall::open_tree(&mut client, sh(PAIR), 2).await;
    server.signal(Signal::SIGTERM);
    assert!(wait_until(Duration::from_secs(5), || server.log_text().contains("draining")));
    let began = Instant::now();
    server.signal(Signal::SIGINT);
    let out = call.finish().await;
    assert_eq!(out.reason(), Some(pb::ExitReason::Shutdown), "{out:?}");
    assert!(began.elapsed() < Duration::from_secs(5), "took {:?}", began.elapsed());
    let status = server.wait_exit(Duration::from_secs(10)).expect("the server exits");
    assert!(status.success(), "{status:?}");
    assert_all_gone(&tree, Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn it_runs_as_pid_1_of_its_own_pid_namespace() {
    let mut command = Command::new("unshare");
    command
        .args(["--fork", "--pid", "--mount-proc", "--kill-child", BIN, "serve", "--listen", "127.0.0.1:0"])
        .args(["--allow-raw-commands", "--cgroups", "off"])
        .env("RUST_LOG", "forkpool=debug,info");
    let mut server = TestServer::start_command(command);
    let wrapper = server.pid;
    let inner = all_processes().into_iter().find(|p| p.ppid == wrapper).expect("the server under unshare");
    server.use_pid(inner.pid);
    let ns_pid = status_field(inner.pid, "NSpid").expect("NSpid");
    assert_eq!(ns_pid.split_whitespace().last(), Some("1"), "the server is PID 1 in its namespace: {ns_pid}");

    let mut client = server.client().await;
    let out = run(&mut client, sh("sleep 100 & sleep 100 & sleep 0.2; exit 7")).await;
    assert_eq!(out.code(), Some(7));
    assert_eq!(out.exited.expect("exited").reaped.len(), 2, "orphans reaped by PID 1");
    server.assert_no_zombies();

    let mut call = OpenCall::open(&mut client, sh(PAIR)).await.expect("open");
    let ns_worker = call.started().await;
    call.wait_stdout("ready").await;
    // `started` carries the pid as the server (PID 1 of its namespace) sees it; find it from here.
    let worker = all_processes()
        .into_iter()
        .find(|p| {
            status_field(p.pid, "NSpid").is_some_and(|ns| {
                // Host and the server's namespace; and its own, where the worker is the init of a job's.
                let ids: Vec<&str> = ns.split_whitespace().collect();
                ids.len() >= 2 && ids[1] == ns_worker.to_string() && p.ppid == server.pid
            })
        })
        .expect("the worker, seen from outside the namespace");
    let tree = session_members(worker.pid);
    assert_eq!(tree.len(), 2, "{tree:?}");
    server.signal(Signal::SIGTERM);
    // Signals of one kind coalesce while pending: send the second once the first has started the drain.
    assert!(wait_until(Duration::from_secs(5), || server.log_text().contains("draining")));
    server.signal(Signal::SIGTERM);
    let out = call.finish().await;
    assert_eq!(out.reason(), Some(pb::ExitReason::Shutdown), "{out:?}");
    let status = server.wait_exit(Duration::from_secs(10)).expect("unshare exits with the server");
    assert!(status.success(), "{status:?}");
    assert_all_gone(&tree, Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_the_jobs_span() {
    let mut command = Command::new(BIN);
    command.args(["serve", "--listen", "127.0.0.1:0", "--allow-raw-commands", "--log-format", "json"]);
    command.env_remove("RUST_LOG");
    let server = TestServer::start_command(command);
    let mut client = server.client().await;
    let out = run(&mut client, raw(&["sh", "-c", "exit 3"])).await;
    let pid = out.pid.expect("pid");
    assert!(wait_until(Duration::from_secs(5), || server.log_text().contains("\"exited\"")));
    let exited = server
        .log_text()
        .lines()
        .find(|l| l.contains("\"message\":\"exited\""))
        .map(String::from)
        .expect("an exited line");
    for needle in
        ["\"level\":\"INFO\"", "\"job\":\"raw:sh\"", "\"job_id\":", "\"peer\":", &format!("\"pid\":{pid}"), "Code(3)"]
    {
        assert!(exited.contains(needle), "{needle} missing from {exited}");
    }
}
