//! Faults: a client that never reads, file descriptors running out, the job cgroup frozen or its tree
//! removed underneath, the working-directory filesystem full. Each gives a clear error to the calls it
//! affects, leaks nothing, and the server recovers once the pressure is gone.

mod common;

use std::time::Duration;

use common::*;

fn rss_kib(pid: i32) -> u64 {
    status_field(pid, "VmRSS").and_then(|v| v.trim_end_matches(" kB").trim().parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_holds_memory_flat_and_cancel_kills_its_flood() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    assert_serving(&mut client).await;
    let before = rss_kib(server.pid);
    // 4 GiB of output that nobody reads: flow control must stop the job, not grow the server.
    let mut call = OpenCall::open(&mut client, raw(&["head", "-c", "4294967296", "/dev/zero"])).await.expect("open");
    let pid = call.started().await;
    let worker = proc_info(pid).expect("worker");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = rss_kib(server.pid);
    // The job is blocked writing (state S) rather than racing ahead.
    let state = proc_info(pid).map(|p| p.state);
    eprintln!("server RSS {before} KiB before, {during} KiB with an unread 4 GiB flood; worker state {state:?}");
    assert!(during < before + 16 * 1024, "server RSS grew from {before} KiB to {during} KiB");
    assert_eq!(state, Some('S'), "the flood is not held back by flow control");
    drop(call);
    assert_all_gone(&[worker], Duration::from_secs(5));
    assert_serving(&mut client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn running_out_of_fds_gives_clear_errors_and_the_server_recovers() {
    let mut command = std::process::Command::new("sh");
    command
        .args([
            "-c",
            &format!("ulimit -n 64 && exec {BIN} serve --listen 127.0.0.1:0 --allow-raw-commands --workers 40"),
        ])
        .env("RUST_LOG", "forkpool=debug,info");
    let server = TestServer::start_command(command);
    let client = server.client().await;
    // Each running job holds three pipe ends in the server; 30 of them cannot fit in 64 fds.
    let mut opened = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..30 {
        let mut c = client.clone();
        match OpenCall::open(&mut c, raw(&["sleep", "1000"])).await {
            Ok(mut call) => match call.next().await {
                Some(_) if call.outcome.status.is_none() => opened.push(call),
                _ => refused.push(call.outcome.status.clone().expect("an error status")),
            },
            Err(status) => refused.push(status),
        }
    }
    eprintln!("{} jobs running, {} refused: {:?}", opened.len(), refused.len(), refused.first());
    assert!(!opened.is_empty() && !refused.is_empty(), "expected both running and refused calls");
    for status in &refused {
        let clear = matches!(status.code(), tonic::Code::ResourceExhausted | tonic::Code::Unavailable)
            && (status.message().contains("EMFILE") || status.message().contains("open files"));
        assert!(clear, "not a clear error: {status:?}");
    }
    // The pressure goes away: every job is cancelled and reaped, and the server serves again, on a new
    // connection too.
    drop(opened);
    server.assert_no_children();
    let mut fresh = server.client().await;
    let status = settled_status(&mut fresh).await;
    assert_eq!((status.running, status.started_total), (0, status.finished_total));
    assert_serving(&mut fresh).await;
}
