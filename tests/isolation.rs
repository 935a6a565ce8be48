//! Nothing a worker does or receives can touch the server; workers die with the server and never before.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use forkpool::pb;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_to_a_worker_by_pid_and_by_group_leaves_the_server_serving() {
    let mut server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    for (by_group, signal) in
        [(false, Signal::SIGTERM), (true, Signal::SIGTERM), (false, Signal::SIGINT), (true, Signal::SIGHUP)]
    {
        let mut call = OpenCall::open(&mut client, sh("sleep 1000 & echo ready; wait")).await.expect("open");
        let pid = call.started().await;
        call.wait_stdout("ready").await;
        if by_group {
            killpg(Pid::from_raw(pid), signal).expect("killpg");
        } else {
            kill(Pid::from_raw(pid), signal).expect("kill");
        }
        let out = call.finish().await;
        assert_eq!(out.signal(), Some(signal as i32), "{out:?}");
        assert!(server.is_running(), "the server died after {signal} to a worker");
        assert_serving(&mut client).await;
    }
    server.assert_no_children();
}

#[tokio::test(flavor = "multi_thread")]
async fn signals_aimed_at_workers_during_spawn_never_reach_the_server() {
    // The seed bug: a child signalled between clone and exec must not run the server's handlers. Fire
    // SIGTERM and SIGINT at every child of the server, as fast as possible, while 300 jobs are spawned.
    let mut server = TestServer::start(&["--allow-raw-commands", "--workers", "4"]);
    let client = server.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let server_pid = server.pid;
    let sniper = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut shots = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for p in all_processes().into_iter().filter(|p| p.ppid == server_pid) {
                    let signal = if shots.is_multiple_of(2) { Signal::SIGTERM } else { Signal::SIGINT };
                    if kill(Pid::from_raw(p.pid), signal).is_ok() {
                        shots += 1;
                    }
                }
            }
            shots
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let mut client = client.clone();
        tasks.spawn(async move { run(&mut client, raw(&["sleep", "0.05"])).await });
        if tasks.len() >= 8 {
            let out = tasks.join_next().await.expect("task").expect("join");
            assert!(out.exited.is_some(), "every job ends with exited: {out:?}");
        }
    }
    while let Some(out) = tasks.join_next().await {
        assert!(out.expect("join").exited.is_some());
    }
    stop.store(true, Ordering::Relaxed);
    let shots = sniper.join().expect("sniper");
    eprintln!("signals delivered to spawning/running workers: {shots}");
    assert!(shots > 0);
    assert!(server.is_running(), "the server died");
    let mut client = server.client().await;
    assert_serving(&mut client).await;
    let status = get_status(&mut client).await;
    assert_eq!(status.started_total, status.finished_total);
    server.assert_no_children();
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_die_when_the_server_dies() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let mut call = OpenCall::open(&mut client, sh("sleep 1000 & echo ready; wait")).await.expect("open");
    let pid = call.started().await;
    call.wait_stdout("ready").await;
    let worker = proc_info(pid).expect("worker");
    server.signal(Signal::SIGKILL);
    // The worker gets SIGKILL from PR_SET_PDEATHSIG; it may linger as a zombie of whoever adopts it.
    let dead = wait_until(Duration::from_secs(5), || {
        proc_info(pid).is_none_or(|p| p.state == 'Z' || p.start_time != worker.start_time)
    });
    assert!(dead, "worker survived the server: {:?}", proc_info(pid));
    drop(call);
}

#[tokio::test(flavor = "multi_thread")]
async fn long_jobs_outlive_idle_runtime_threads() {
    // Tokio's blocking threads exit after 10 s idle; a worker whose death signal were tied to one would be
    // SIGKILLed. The spawner thread lives as long as the server.
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let mut start = raw(&["sleep", "12"]);
    start.kill_grace = duration(Duration::ZERO);
    let out = run(&mut client, start).await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(out.reason(), Some(pb::ExitReason::Exited));
}
