//! A job lives exactly as long as its call: cancel, client death, deadline, timeout, vanished peers, storms.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use forkpool::pb;
use rand::Rng;

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_the_call_kills_the_whole_tree() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let (call, tree) = OpenCall::open_tree(&mut client, sh(TREE), 3).await;
    let cancelled_at = Instant::now();
    drop(call);
    assert_all_gone(&tree, Duration::from_secs(5));
    eprintln!("cancel to all-gone: {:?}", cancelled_at.elapsed());
    server.assert_no_children();
    let status = settled_status(&mut client).await;
    assert_eq!((status.cancelled_total, status.running, status.finished_total), (1, 0, 1));
    assert_serving(&mut client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_killed_with_sigkill_kills_the_tree() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut cli = Command::new(BIN)
        .args(["run", "--server", &server.url, "--", "sh", "-c", TREE])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start forkpool run");
    let mut lines = BufReader::new(cli.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ready"));
    let workers = server.children();
    assert_eq!(workers.len(), 1, "{workers:?}");
    let tree = session_members(workers[0].pid);
    assert_eq!(tree.len(), 3, "{tree:?}");
    cli.kill().expect("SIGKILL the client");
    cli.wait().expect("reap the client");
    assert_all_gone(&tree, Duration::from_secs(5));
    server.assert_no_children();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_call_deadline_kills_the_job_with_deadline_exceeded() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let started = Instant::now();
    let mut call = OpenCall::open_with(&mut client, vec![start_msg(sh(TREE))], Some(Duration::from_millis(800)))
        .await
        .expect("open");
    let pid = call.started().await;
    call.wait_stdout("ready").await;
    let tree = session_members(pid);
    let out = call.finish().await;
    assert_eq!(out.error_code(), Some(tonic::Code::DeadlineExceeded), "{out:?}");
    assert!(started.elapsed() >= Duration::from_millis(750));
    assert_all_gone(&tree, Duration::from_secs(5));
    assert_eq!(get_status(&mut client).await.cancelled_total, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_kills_with_sigterm_and_reports_timed_out() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let mut start = raw(&["sleep", "100"]);
    start.timeout = duration(Duration::from_millis(300));
    start.kill_grace = duration(Duration::from_secs(5));
    let out = run(&mut client, start).await;
    assert_eq!(out.reason(), Some(pb::ExitReason::TimedOut));
    assert_eq!(out.signal(), Some(libc::SIGTERM));
    assert_eq!(get_status(&mut client).await.timed_out_total, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_with_zero_grace_kills_at_once() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let mut start = sh(STUBBORN);
    start.timeout = duration(Duration::from_millis(300));
    start.kill_grace = duration(Duration::ZERO);
    let began = Instant::now();
    let out = run(&mut client, start).await;
    assert_eq!(out.signal(), Some(libc::SIGKILL));
    assert_eq!(out.reason(), Some(pb::ExitReason::TimedOut));
    assert!(began.elapsed() < Duration::from_millis(1500), "took {:?}", began.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_with_grace_escalates_to_sigkill_after_the_grace() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let mut start = sh(STUBBORN);
    start.timeout = duration(Duration::from_millis(300));
    start.kill_grace = duration(Duration::from_secs(1));
    let began = Instant::now();
    let out = run(&mut client, start).await;
    assert_eq!(out.signal(), Some(libc::SIGKILL));
    assert_eq!(out.reason(), Some(pb::ExitReason::TimedOut));
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(1250) && took < Duration::from_secs(4), "took {took:?}");
    server.assert_no_children();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_stopped_itself_still_dies_on_cancel() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let mut start = sh("trap 'exit 0' TERM; sleep 1000 & echo ready; kill -STOP 0");
    start.kill_grace = duration(Duration::from_secs(10));
    let (call, tree) = OpenCall::open_tree(&mut client, start, 2).await;
    assert!(wait_until(Duration::from_secs(5), || tree
        .iter()
        .all(|p| proc_info(p.pid).is_some_and(|i| i.state == 'T'))));
    let began = Instant::now();
    drop(call);
    // SIGCONT follows SIGTERM, so the stopped group sees the SIGTERM well before the 10 s grace.
    assert_all_gone(&tree, Duration::from_secs(5));
    assert!(began.elapsed() < Duration::from_secs(5));
}

/// A TCP relay that can be made to black-hole traffic, like a dead host, without closing anything.
struct Relay {
    addr: SocketAddr,
    blackhole: Arc<AtomicBool>,
}

impl Relay {
    async fn start(target: &str) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let target: SocketAddr = target.trim_start_matches("http://").parse().expect("target");
        let blackhole = Arc::new(AtomicBool::new(false));
        let hole = Arc::clone(&blackhole);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else { return };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(copy_until_blackhole(cr, sw, Arc::clone(&hole)));
                tokio::spawn(copy_until_blackhole(sr, cw, Arc::clone(&hole)));
            }
        });
        Relay { addr, blackhole }
    }
}

async fn copy_until_blackhole(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    hole: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16384];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || hole.load(Ordering::SeqCst) {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // Keep both halves open and silent: the peer sees no FIN, no RST, just nothing.
    std::future::pending::<()>().await;
    drop((from, to));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_vanishes_silently_is_noticed_by_keepalive() {
    let server = TestServer::with_config(
        "allow_raw_commands = true\nkeepalive_interval = \"500ms\"\nkeepalive_timeout = \"500ms\"\n",
        &[],
    );
    let relay = Relay::start(&server.url).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", relay.addr))
        .expect("url")
        .connect()
        .await
        .expect("connect via relay");
    let mut client = forkpool::pb::executor_client::ExecutorClient::new(channel);
    let (call, tree) = OpenCall::open_tree(&mut client, sh(TREE), 3).await;
    relay.blackhole.store(true, Ordering::SeqCst);
    let began = Instant::now();
    assert_all_gone(&tree, Duration::from_secs(10));
    eprintln!("silent peer detected and job killed after {:?}", began.elapsed());
    std::mem::forget(call); // the client side never learns anything either
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_storm_leaves_nothing_behind_and_the_server_serving() {
    let server = TestServer::start(&["--allow-raw-commands", "--workers", "4", "--queue", "64"]);
    let client = server.client().await;
    let calls = 300;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..calls {
        let mut client = client.clone();
        tasks.spawn(async move {
            let delay = Duration::from_micros(rand::rng().random_range(0..20_000));
            let start = if i % 2 == 0 { sh(TREE) } else { raw(&["sleep", "1000"]) };
            let opened = OpenCall::open(&mut client, start);
            // Cancel at a random instant: during admission, while queued, around spawn, while running.
            let _ = tokio::time::timeout(delay, async {
                if let Ok(call) = opened.await {
                    call.finish().await;
                }
            })
            .await;
        });
        if tasks.len() >= 16 {
            tasks.join_next().await;
        }
    }
    while tasks.join_next().await.is_some() {}
    let mut client = server.client().await;
    assert!(
        wait_until_async(Duration::from_secs(10), || server.children().is_empty()).await,
        "job processes remain: {:?}",
        server.children()
    );
    let status = settled_status(&mut client).await;
    assert_eq!((status.running, status.queued), (0, 0));
    assert_eq!(status.started_total, status.finished_total);
    assert_serving(&mut client).await;
    server.assert_no_zombies();
}
