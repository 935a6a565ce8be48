//! Hostile input: oversized messages, too many streams on one connection, garbage on the port, a flood of
//! connections. The server answers precisely and keeps serving everyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;

fn addr(server: &TestServer) -> String {
    server.url.trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_message_gets_resource_exhausted_and_the_server_serves_on() {
    let server = TestServer::with_config("allow_raw_commands = true\nmax_message_size = \"64KiB\"\n", &[]);
    let mut client = server.client().await;

    let big = "x".repeat(100 * 1024);
    let out = run(&mut client, raw(&["echo", &big])).await;
    assert_eq!(out.error_code(), Some(tonic::Code::ResourceExhausted), "{:?}", out.status);
    let message = out.status.as_ref().map(|s| s.message().to_string()).unwrap_or_default();
    assert!(message.contains("too large") && message.contains("65536"), "{message}");

    // Mid-call: an oversized stdin chunk ends the job with the same code.
    let mut call = OpenCall::open(&mut client, raw(&["cat"])).await.expect("open");
    let pid = call.started().await;
    let worker = proc_info(pid).expect("worker");
    call.send(stdin_msg(&vec![b'y'; 100 * 1024])).await;
    let out = call.finish().await;
    assert_eq!(out.error_code(), Some(tonic::Code::ResourceExhausted), "{:?}", out.status);
    assert_all_gone(&[worker], Duration::from_secs(5));
    assert_serving(&mut client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_beyond_the_per_connection_limit_wait_and_others_are_served() {
    let server = TestServer::with_config("allow_raw_commands = true\nworkers = 16\nmax_concurrent_streams = 4\n", &[]);
    let greedy = server.client().await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut client = greedy.clone();
        tasks.push(tokio::spawn(async move { run(&mut client, raw(&["sleep", "1000"])).await }));
    }
    // Only 4 of the greedy connection's calls reach the server; a second connection is served meanwhile.
    let mut other = server.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = get_status(&mut other).await;
        if s.running + s.queued == 4 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "expected 4 admitted calls, status {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = get_status(&mut other).await;
    assert_eq!(s.running + s.queued, 4, "the limit held: {s:?}");
    assert_serving(&mut other).await;
    for task in tasks {
        task.abort();
    }
    server.assert_no_children();
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_and_a_connection_flood_do_not_stop_the_server() {
    let server = TestServer::start(&[]);
    let address = addr(&server);
    // Garbage instead of an HTTP/2 preface: the server closes that connection.
    let mut garbage = TcpStream::connect(&address).expect("connect");
    garbage.write_all(b"\x00\xffGARBAGE\r\n\r\nnot http/2 at all\x16\x03\x01").expect("write");
    garbage.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut sink = Vec::new();
    // EOF or a reset both mean the server dropped it; only a read timeout would mean it kept it open.
    let read = garbage.read_to_end(&mut sink);
    let kept_open =
        matches!(&read, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
    assert!(!kept_open, "the server kept a garbage connection open");
    // A bounded flood: 300 idle connections held open at once.
    let flood: Vec<TcpStream> = (0..300).filter_map(|_| TcpStream::connect(&address).ok()).collect();
    assert_eq!(flood.len(), 300);
    let mut client = server.client().await;
    assert_serving(&mut client).await;
    let status = get_status(&mut client).await;
    assert_eq!(status.started_total, 1);
    drop(flood);
    assert_serving(&mut client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_and_trickling_connections_are_dropped_at_the_handshake_deadline() {
    let server = TestServer::with_config("handshake_timeout = \"1s\"\n", &[]);
    let address = addr(&server);
    let began = std::time::Instant::now();
    let silent = TcpStream::connect(&address).expect("connect");
    // A slowloris: one byte of the preface every 300 ms.
    let mut trickle = TcpStream::connect(&address).expect("connect");
    let trickler = std::thread::spawn(move || {
        for byte in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
            if trickle.write_all(&[*byte]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        false
    });
    let closed = |mut stream: &TcpStream| {
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut sink = Vec::new();
        !matches!(stream.read_to_end(&mut sink), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    };
    assert!(closed(&silent), "a silent connection was kept");
    let waited = began.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(4), "dropped after {waited:?}");
    assert!(trickler.join().expect("trickler"), "a trickling connection was kept past the deadline");
    // Real clients are unaffected.
    let mut client = server.client().await;
    assert_serving(&mut client).await;
}
