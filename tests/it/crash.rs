//! Nothing survives the server, however it dies: SIGKILL, SIGABRT, a panic, SIGKILL in the middle of a burst
//! of spawns; in cgroup mode (escapers included) and in fallback mode (everything in the jobs' sessions and
//! groups). The guardian kills only jobs' processes, ignores the signals meant for the server, and is gone
//! within a second of it. Without a guardian, the next start still cleans up.
//!
//! Each test tags its jobs' processes with a unique `sleep` argument, so that whatever is left anywhere on
//! the machine afterwards can be found by its command line.

use std::time::{Duration, Instant};

use crate::common::*;
use nix::sys::signal::Signal;

fn config(mode: Mode, name: &str, extra: &str) -> String {
    mode.toml(&fresh_work_root("crash", name, mode), &format!("workers = 16\n{extra}"))
}

/// Starts a server in `mode` and checks that it has a guardian; `None` (after saying so) where cgroup mode
/// is not available.
async fn start(mode: Mode, name: &str, extra: &str, env: &[(&str, &str)]) -> Option<TestServer> {
    let server = start_in_mode(mode, &config(mode, name, extra), env, name).await?;
    let status = get_status(&mut server.client().await).await;
    assert!(status.containment_detail.contains("a guardian kills them"), "{}", status.containment_detail);
    Some(server)
}

/// The server's guardian, which must be there.
fn guardian(server: &TestServer) -> ProcInfo {
    server.guardian().expect("the server has a guardian")
}

/// A job whose tree is three sleepers in its session, one in another process group of the same session and,
/// in cgroup mode, one that left the session (`setsid`) and closed its pipes.
fn tree_script(mode: Mode, tag: &str) -> String {
    let escaper =
        if mode == Mode::Cgroup { format!("setsid sleep {tag} </dev/null >/dev/null 2>&1 & ") } else { String::new() };
    format!(
        "sleep {tag} & sleep {tag} & sleep {tag} & (set -m; sleep {tag} & wait) & {escaper}\
         while [ $(pgrep -fxc 'sleep {tag}') -lt {} ]; do sleep 0.01; done; echo ready; wait",
        if mode == Mode::Cgroup { 5 } else { 4 }
    )
}

/// Kills the server with `signal` (or waits for it to die on its own), then checks that every tagged process
/// but `spare` is dead and its `guardian` (taken before: it leaves with the server) gone, within `limit`. Returns how long the processes took to die.
fn assert_all_die(
    server: &mut TestServer,
    guardian: ProcInfo,
    signal: Option<Signal>,
    tag: &str,
    spare: Option<i32>,
    limit: Duration,
) -> Duration {
    if let Some(signal) = signal {
        server.signal(signal);
    }
    server.wait_exit(Duration::from_secs(30)).expect("the server died");
    let died = Instant::now();
    let left = || tagged(tag).into_iter().filter(|p| Some(p.pid) != spare).collect::<Vec<_>>();
    let all_dead = wait_until(limit, || left().is_empty());
    let took = died.elapsed();
    assert!(all_dead, "processes of jobs survived the server ({signal:?}): {:?}", left());
    let gone = |g: &ProcInfo| proc_info(g.pid).is_none_or(|p| p.state == 'Z' || p.start_time != g.start_time);
    assert!(wait_until(limit, || gone(&guardian)), "the guardian outlived the server");
    took
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_and_sigabrt_of_the_server_kill_every_process_of_every_job() {
    for mode in [Mode::Cgroup, Mode::Fallback] {
        for (n, signal) in [Signal::SIGKILL, Signal::SIGABRT].into_iter().enumerate() {
            let Some(mut server) = start(mode, &format!("signal{n}"), "", &[]).await else { continue };
            let tag = unique_tag(n as u32 + if mode == Mode::Cgroup { 80 } else { 90 });
            // A bystander the guardian must not touch: the same command line, not a job's.
            let mut bystander = std::process::Command::new("sleep").arg(&tag).spawn().expect("bystander");
            let mut client = server.client().await;
            let mut calls = Vec::new();
            for _ in 0..2 {
                let mut call = OpenCall::open(&mut client, sh(&tree_script(mode, &tag))).await.expect("open");
                call.started().await;
                call.wait_stdout("ready").await;
                calls.push(call);
            }
            assert_eq!(tagged(&tag).len(), if mode == Mode::Cgroup { 11 } else { 9 });
            let guardian = guardian(&server);
            let spare = Some(bystander.id() as i32);
            let took = assert_all_die(&mut server, guardian, Some(signal), &tag, spare, Duration::from_secs(3));
            eprintln!("{mode:?}, {signal}: every job process dead {took:?} after the server");
            drop(calls);
            assert_eq!(bystander.try_wait().expect("bystander"), None, "the guardian killed a bystander");
            let _ = bystander.kill();
            let _ = bystander.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_in_the_server_aborts_it_and_its_jobs_die_with_it() {
    for mode in [Mode::Cgroup, Mode::Fallback] {
        let catalog = "[[job]]\nname = \"boom\"\ncommand = [\"true\"]\n";
        let Some(mut server) = start(mode, "panic", catalog, &[("FORKPOOL_TEST_PANIC_ON_JOB", "boom")]).await else {
            continue;
        };
        let tag = unique_tag(if mode == Mode::Cgroup { 20 } else { 30 });
        let mut client = server.client().await;
        let mut call = OpenCall::open(&mut client, sh(&tree_script(mode, &tag))).await.expect("open");
        call.started().await;
        call.wait_stdout("ready").await;
        // The job task of `boom` panics on a runtime thread: the panic must not be swallowed.
        let guardian = guardian(&server);
        let _ = run(&mut client, job("boom", &[])).await;
        let took = assert_all_die(&mut server, guardian, None, &tag, None, Duration::from_secs(3));
        assert!(server.log_text().contains("injected fault"), "the panic is in the log");
        eprintln!("{mode:?}, panic: every job process dead {took:?} after the server");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_a_burst_of_spawns_leaves_nothing() {
    for mode in [Mode::Cgroup, Mode::Fallback] {
        let Some(mut server) = start(mode, "burst", "", &[]).await else { continue };
        let tag = unique_tag(if mode == Mode::Cgroup { 40 } else { 50 });
        let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let mut client = server.client().await;
            let (tag, started) = (tag.clone(), std::sync::Arc::clone(&started));
            tasks.push(tokio::spawn(async move {
                // Calls are opened and dropped as fast as they come: spawns are always under way.
                for _ in 0..200 {
                    let script = format!("sleep {tag} & sleep {tag} & wait");
                    if let Ok(mut call) = OpenCall::open(&mut client, sh(&script)).await {
                        let _ = tokio::time::timeout(Duration::from_millis(30), call.started()).await;
                        started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        std::mem::forget(call);
                    } else {
                        return;
                    }
                }
            }));
        }
        assert!(
            wait_until_async(Duration::from_secs(20), || started.load(std::sync::atomic::Ordering::Relaxed) >= 12)
                .await
        );
        let guardian = guardian(&server);
        let took = assert_all_die(&mut server, guardian, Some(Signal::SIGKILL), &tag, None, Duration::from_secs(3));
        for task in tasks {
            task.abort();
        }
        eprintln!("{mode:?}, SIGKILL mid-burst: every job process dead {took:?} after the server");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guardian_ignores_stop_signals_and_lives_as_long_as_the_server() {
    let Some(mut server) = start(Mode::Fallback, "ignores", "", &[]).await else { return };
    let guardian = server.guardian().expect("guardian");
    assert_ne!(guardian.session, server.pid, "the guardian has its own session: a group kill misses it");
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(guardian.pid), signal).expect("signal the guardian");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(exists(&guardian) && proc_info(guardian.pid).is_some_and(|p| p.state != 'Z'), "the guardian died");
    // Its fds: stdin, stdout, stderr, its end of the socket and the server's pidfd; nothing of the server's.
    let targets: Vec<String> = fds_of(guardian.pid)
        .into_iter()
        .filter(|fd| *fd > 2)
        .filter_map(|fd| std::fs::read_link(format!("/proc/{}/fd/{fd}", guardian.pid)).ok())
        .map(|t| t.display().to_string())
        .collect();
    assert_eq!(targets.iter().filter(|t| t.starts_with("socket:")).count(), 1, "{targets:?}");
    assert!(targets.iter().all(|t| t.starts_with("socket:") || t.contains("pidfd")), "{targets:?}");
    let mut client = server.client().await;
    assert_serving(&mut client).await;
    // A clean exit takes the guardian along too.
    server.signal(Signal::SIGTERM);
    server.wait_exit(Duration::from_secs(10)).expect("the server exits");
    assert!(wait_until(Duration::from_secs(2), || proc_info(guardian.pid).is_none_or(|p| p.state == 'Z')));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_guardian_is_reported_and_the_next_start_still_cleans_up() {
    let name = "noguard";
    // A cgroup root of its own: any server starting meanwhile would clean a dead instance in a shared one.
    let root = test_cgroup_root("noguard");
    // Without a pid namespace: in one, the job's escaper would die with its init (tests/it/isolation.rs).
    let extra = format!("cgroup_root = \"{}\"\n[isolation]\npid_namespace = false\n", root.display());
    let toml = config(Mode::Cgroup, name, &extra);
    let Some(mut first) = start(Mode::Cgroup, name, &extra, &[]).await else { return };
    let mut client = first.client().await;
    let tag = unique_tag(60);
    let mut call = OpenCall::open(&mut client, sh(&tree_script(Mode::Cgroup, &tag))).await.expect("open");
    let worker = proc_info(call.started().await).expect("worker");
    call.wait_stdout("ready").await;
    let guardian = first.guardian().expect("guardian");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(guardian.pid), Signal::SIGKILL).expect("kill the guardian");
    assert!(wait_until(Duration::from_secs(5), || first.log_text().contains("the guardian died")));
    let status = get_status(&mut client).await;
    assert!(status.containment_detail.contains("guardian DIED"), "{}", status.containment_detail);
    assert_eq!(status.orphans_reaped_total, 0, "the guardian is not an orphan");
    first.signal(Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(5)).expect("died");
    // The worker (a dynamic user: its uid changed after the parent-death signal was first set) still dies with
    // the server, by that signal alone.
    assert!(wait_until(Duration::from_secs(5), || !exists(&worker)), "the worker outlived the server");
    // Nobody killed the escaper this time...
    std::thread::sleep(Duration::from_millis(300));
    assert!(!tagged(&tag).is_empty(), "without a guardian the job's escaper outlives a crash");
    // ...until the next start, which finds the dead instance unlocked.
    let second = TestServer::with_config(&toml, &[]);
    assert!(wait_until(Duration::from_secs(5), || tagged(&tag).is_empty()), "{:?}", tagged(&tag));
    assert!(second.log_text().contains("left by a crashed server"), "leftovers not reported");
    drop(call);
    drop(second);
    assert!(wait_until(Duration::from_secs(5), || std::fs::remove_dir(&root).is_ok()), "the test's cgroup root");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_frozen_before_exec_cannot_hold_the_guardian_back() {
    // A child born in a frozen cgroup has not run a single instruction of its own, so it still holds its copy
    // of the server's end of the guardian's socket: end-of-file alone would never come. The guardian watches
    // the server's pidfd too.
    let root = test_cgroup_root("frozen-birth");
    // The cold spawn path: warm sandboxes, made ahead in the same (frozen) instance, would be frozen too.
    let extra = format!("cgroup_root = \"{}\"\nwarm_sandboxes = 0\n", root.display());
    let Some(mut server) = start(Mode::Cgroup, "frozen-birth", &extra, &[]).await else { return };
    let tag = unique_tag(70);
    let mut client = server.client().await;
    let mut call = OpenCall::open(&mut client, sh(&tree_script(Mode::Cgroup, &tag))).await.expect("open");
    call.started().await;
    call.wait_stdout("ready").await;
    let instance = instance_cgroup(&root);
    std::fs::write(instance.join("cgroup.freeze"), "1").expect("freeze the instance");
    let mut frozen_client = server.client().await;
    let frozen = tokio::spawn(async move { run(&mut frozen_client, raw(&["true"])).await });
    // Every job is frozen now, the running tree and the child stuck between clone and exec alike.
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_dir(&instance).is_ok_and(|d| d.flatten().filter(|e| e.path().is_dir()).count() == 2)
    }));
    std::thread::sleep(Duration::from_millis(100));
    let guardian = guardian(&server);
    let took = assert_all_die(&mut server, guardian, Some(Signal::SIGKILL), &tag, None, Duration::from_secs(3));
    eprintln!("frozen child before exec, SIGKILL: every job process dead {took:?} after the server");
    frozen.abort();
    drop(call);
    assert!(wait_until(Duration::from_secs(5), || std::fs::remove_dir(&root).is_ok()), "the test's cgroup root");
}
