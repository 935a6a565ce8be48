//! Nothing a worker does or receives can touch the server; workers die with the server and never before.

use std::time::Duration;

use crate::common::*;
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
        let mut call = OpenCall::open(&mut client, sh(PAIR)).await.expect("open");
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
async fn signals_that_hit_a_worker_between_clone_and_exec_never_reach_the_server() {
    // The seed bug: a child signalled between clone and exec must not run the server's handlers. Made
    // deterministic: every child born in a frozen cgroup stops right after the clone, before a single line of
    // its setup has run, so SIGTERM and SIGINT are sure to land exactly there; then it is thawed.
    let root = test_cgroup_root("between");
    let mut server =
        TestServer::with_config(&format!("allow_raw_commands = true\ncgroup_root = \"{}\"\n", root.display()), &[]);
    let mut client = server.client().await;
    if !cgroup_mode(&get_status(&mut client).await, "signals between clone and exec") {
        return;
    }
    let instance = instance_cgroup(&root);
    for round in 0..3 {
        std::fs::write(instance.join("cgroup.freeze"), "1").expect("freeze");
        let mut call_client = client.clone();
        let call = tokio::spawn(async move { run(&mut call_client, raw(&["sleep", "1000"])).await });
        let mut child = None;
        assert!(wait_until(Duration::from_secs(10), || {
            child = std::fs::read_dir(&instance).ok().and_then(|d| {
                d.flatten().find_map(|e| {
                    std::fs::read_to_string(e.path().join("cgroup.procs")).ok()?.trim().parse::<i32>().ok()
                })
            });
            child.is_some()
        }));
        let child = child.expect("the child, frozen between clone and exec");
        assert_eq!(proc_info(child).map(|p| p.ppid), Some(server.pid), "a child of the server");
        for signal in [Signal::SIGTERM, Signal::SIGINT] {
            kill(Pid::from_raw(child), signal).expect("signal the child before its exec");
        }
        std::fs::write(instance.join("cgroup.freeze"), "0").expect("thaw");
        let out = call.await.expect("call");
        // The child reset every disposition to the default before unblocking: a pending signal killed it.
        assert!(matches!(out.signal(), Some(2 | 15)), "round {round}: {out:?}");
    }
    assert!(server.is_running(), "the server died");
    assert!(!server.log_text().contains("shutdown requested"), "a worker's signal reached the server's handler");
    assert_serving(&mut client).await;
    let status = settled_status(&mut client).await;
    assert_eq!(status.started_total, status.finished_total);
    server.assert_no_children();
    drop(client);
    drop(server);
    assert!(wait_until(Duration::from_secs(5), || std::fs::remove_dir(&root).is_ok()));
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_die_when_the_server_dies() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let mut call = OpenCall::open(&mut client, sh(PAIR)).await.expect("open");
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
