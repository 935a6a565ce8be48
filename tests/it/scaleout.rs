//! What several replicas and the proxies between them need from each server: heartbeats on quiet calls,
//! connections that age out (GOAWAY, running calls go on), and a CLI that spreads calls over several
//! addresses. The proxies themselves are tested with real Envoy, nginx and HAProxy in `tests/proxies/`.

use std::time::{Duration, Instant};

use crate::common::*;
use forkpool::pb::{self, execute_response::Event};

fn heartbeats(out: &Outcome) -> Vec<Duration> {
    out.events
        .iter()
        .filter_map(|e| match e {
            Event::Heartbeat(h) => h.elapsed.and_then(|d| Duration::try_from(d).ok()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_call_gets_heartbeats_and_none_after_exited() {
    let server = TestServer::start(&["--allow-raw-commands", "--heartbeat-interval", "1s"]);
    let mut client = server.client().await;
    let out = run(&mut client, sh("sleep 2.6; echo done")).await;
    assert_eq!((out.code(), out.stdout_text().as_str()), (Some(0), "done\n"), "{out:?}");
    let beats = heartbeats(&out);
    assert!(beats.len() >= 2, "{:?}", out.events);
    assert!(beats.windows(2).all(|w| w[1] > w[0]), "elapsed does not grow: {beats:?}");
    assert!(matches!(out.events.last(), Some(Event::Exited(_))), "something after exited: {:?}", out.events);
    // A busy call needs none: output resets the interval.
    let out = run(&mut client, sh("for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.25; done")).await;
    assert!(heartbeats(&out).is_empty(), "{:?}", out.events);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_may_ask_for_heartbeats_of_its_own() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let out = run(&mut client, sh("sleep 1.5")).await;
    assert!(heartbeats(&out).is_empty(), "heartbeats nobody asked for: {:?}", out.events);
    let start = pb::StartJob { heartbeat_interval: duration(Duration::from_secs(1)), ..sh("sleep 2.5") };
    let out = run(&mut client, start).await;
    assert_eq!(out.code(), Some(0));
    assert!(!heartbeats(&out).is_empty(), "{:?}", out.events);
    let start = pb::StartJob { heartbeat_interval: duration(Duration::from_millis(100)), ..sh("true") };
    let out = run(&mut client, start).await;
    assert_eq!(out.error_code(), Some(tonic::Code::InvalidArgument), "{out:?}");
    assert!(format!("{:?}", out.status).contains("heartbeat_interval"), "{out:?}");
}

/// The client-side ports of the established TCP connections to `port` on loopback.
fn client_ports(port: u16) -> std::collections::BTreeSet<u16> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
            let remote_port = u16::from_str_radix(remote.split(':').nth(1)?, 16).ok()?;
            let local_port = u16::from_str_radix(local.split(':').nth(1)?, 16).ok()?;
            (*state == "01" && remote_port == port).then_some(local_port)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_connection_is_sent_away_and_the_client_reconnects() {
    let server =
        TestServer::start(&["--allow-raw-commands", "--max-connection-age", "1s", "--max-connection-age-grace", "30s"]);
    let port: u16 = server.url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let mut client = server.client().await;
    let out = run(&mut client, sh("echo first")).await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    let before = client_ports(port);
    assert_eq!(before.len(), 1, "{before:?}");
    // Past the age, the connection is sent GOAWAY (the grace is long: it is not simply closed); the client's
    // next call goes over a new one.
    assert!(wait_until(Duration::from_secs(5), || client_ports(port) != before), "no GOAWAY at the age");
    let out = run(&mut client, sh("echo again")).await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    let after = client_ports(port);
    assert!(after.iter().any(|p| !before.contains(p)), "still the old connection: {before:?} then {after:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_spreads_calls_over_several_servers() {
    let (a, b) = (TestServer::start(&["--allow-raw-commands"]), TestServer::start(&["--allow-raw-commands"]));
    let servers = format!("{},{}", a.url, b.url);
    for _ in 0..20 {
        let out =
            std::process::Command::new(BIN).args(["run", "--server", &servers, "--", "true"]).output().expect("run");
        assert!(out.status.success(), "{out:?}");
    }
    let started = |server: &TestServer| {
        let url = server.url.clone();
        async move {
            let channel = tonic::transport::Channel::from_shared(url).expect("url").connect().await.expect("connect");
            get_status(&mut pb::executor_client::ExecutorClient::new(channel)).await.started_total
        }
    };
    let (on_a, on_b) = (started(&a).await, started(&b).await);
    assert_eq!(on_a + on_b, 20);
    assert!(on_a > 0 && on_b > 0, "all on one server: {on_a} and {on_b}");
    // One of them gone: calls go to the other.
    drop(b);
    for _ in 0..5 {
        let out =
            std::process::Command::new(BIN).args(["run", "--server", &servers, "--", "true"]).output().expect("run");
        assert!(out.status.success(), "{out:?}");
    }
    assert_eq!(started(&a).await, on_a + 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_draining_server_sends_goaway_and_its_running_call_goes_on() {
    let mut server = TestServer::with_config("allow_raw_commands = true\ndrain_goaway_delay = \"300ms\"\n", &[]);
    let address = server.url.trim_start_matches("http://").to_string();
    let mut client = server.client().await;
    let mut call = OpenCall::open(&mut client, sh("echo started; sleep 2; echo finished")).await.expect("open");
    call.wait_stdout("started").await;
    let signalled = Instant::now();
    server.signal(nix::sys::signal::Signal::SIGTERM);
    // The listener closes (and every connection gets GOAWAY) once the delay is over.
    assert!(
        wait_until(Duration::from_secs(3), || std::net::TcpStream::connect(&address).is_err()),
        "the draining server still accepts connections"
    );
    assert!(signalled.elapsed() >= Duration::from_millis(300), "GOAWAY before the delay");
    let out = call.finish().await;
    assert_eq!(out.stdout_text(), "started\nfinished\n", "{out:?}");
    assert_eq!(out.reason(), Some(pb::ExitReason::Exited));
    assert!(server.wait_exit(Duration::from_secs(10)).expect("exits").success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_running_past_the_age_and_its_grace_is_cut() {
    let server =
        TestServer::start(&["--allow-raw-commands", "--max-connection-age", "1s", "--max-connection-age-grace", "1s"]);
    let mut client = server.client().await;
    let started = Instant::now();
    let out = run(&mut client, sh("sleep 6; echo never")).await;
    assert!(out.exited.is_none() && out.status.is_some(), "not cut: {out:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "cut only after {:?}", started.elapsed());
    // The job dies with its call, as with any client gone.
    server.assert_no_children();
}
