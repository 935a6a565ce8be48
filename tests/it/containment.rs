//! No process outlives its job, and every job runs inside limits: in cgroup mode and in fallback mode.
//!
//! Cgroup-mode tests need a writable cgroup v2 hierarchy. Where there is none they print `SKIPPED` and pass,
//! unless `FORKPOOL_REQUIRE_CGROUPS=1` (CI sets it), where they fail.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::*;
use forkpool::pb;
use nix::sys::signal::Signal;

/// A config file for `mode` with a fresh work root; returns (args, work root).
fn server_args(mode: Mode, extra_toml: &str, name: &str) -> (Vec<String>, PathBuf) {
    let work_root = fresh_work_root("containment", name, mode);
    let dir = work_root.parent().expect("the test's directory").to_path_buf();
    std::fs::create_dir_all(&dir).expect("test dir");
    let path = dir.join("forkpool.toml");
    std::fs::write(&path, mode.toml(&work_root, extra_toml)).expect("write config");
    (vec!["--config".into(), path.display().to_string()], work_root)
}

/// Starts a server in `mode`; `None` (after saying so) when cgroup mode is not available here.
async fn start(mode: Mode, extra_toml: &str, name: &str) -> Option<(TestServer, PathBuf)> {
    let work_root = fresh_work_root("containment", name, mode);
    let server = start_in_mode(mode, &mode.toml(&work_root, extra_toml), &[], name).await?;
    Some((server, work_root))
}

fn is_dead(p: &ProcInfo) -> bool {
    proc_info(p.pid).is_none_or(|now| now.start_time != p.start_time || now.state == 'Z')
}

/// The numbers a job printed (pids as it sees them).
fn numbers_in(text: &str) -> Vec<i32> {
    text.split_whitespace().filter_map(|w| w.parse().ok()).collect()
}

/// The processes whose pids (as the job sees them, in its pid namespace) the job of `call` printed.
fn pids_in(call: &OpenCall) -> Vec<ProcInfo> {
    let worker = call.outcome.pid.expect("started");
    numbers_in(&call.outcome.stdout_text()).into_iter().filter_map(|n| proc_info(host_pid(worker, n))).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn setsid_and_double_forked_escapers_die_with_their_job() {
    for mode in MODES {
        let Some((server, _)) = start(mode, "", "escapers").await else { continue };
        let mut client = server.client().await;
        // One escaper leaves the session (setsid) but keeps the job's stdout; one is double-forked.
        let script = "setsid sleep 1000 & echo $!; (sleep 1000 & echo $!); sleep 0.3; echo ready; sleep 0.5";
        let mut call = OpenCall::open(&mut client, sh(script)).await.expect("open");
        call.wait_stdout("ready").await;
        let escapers = pids_in(&call);
        let printed = numbers_in(&call.outcome.stdout_text());
        assert_eq!(escapers.len(), 2, "{mode:?}: {escapers:?} from {:?}", call.outcome.stdout_text());
        assert!(escapers.iter().any(|p| p.session == p.pid), "{mode:?}: setsid escaper not in its own session");
        let out = call.finish().await;
        assert_eq!(out.code(), Some(0), "{mode:?}: {out:?}");
        for p in &escapers {
            assert!(!exists(p), "{mode:?}: escaper {p:?} outlived its job");
        }
        let reaped: Vec<u32> = out.exited.expect("exited").reaped.iter().map(|r| r.pid).collect();
        // Reported as the job knew them.
        for pid in &printed {
            assert!(reaped.contains(&(*pid as u32)), "{mode:?}: {pid} not reported in {reaped:?}");
        }
        server.assert_no_children();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_detached_daemon_dies_with_its_job_in_cgroup_mode() {
    let Some((server, _)) = start(Mode::Cgroup, "", "daemon").await else { return };
    let mut client = server.client().await;
    // Leaves the session and closes every pipe: only the cgroup still knows it belongs to the job.
    let script =
        "setsid sh -c 'exec sleep 1000' </dev/null >/dev/null 2>&1 & echo $!; sleep 0.3; echo ready; sleep 0.5";
    let mut call = OpenCall::open(&mut client, sh(script)).await.expect("open");
    call.wait_stdout("ready").await;
    let daemon = pids_in(&call);
    assert_eq!(daemon.len(), 1, "{:?}", call.outcome);
    assert_eq!(daemon[0].session, daemon[0].pid, "the daemon left the job's session");
    let out = call.finish().await;
    assert_eq!(out.code(), Some(0));
    assert_all_gone(&daemon, Duration::from_secs(5));
    server.assert_no_children();
}

/// A bounded fork bomb: up to 2^11 processes if nothing holds it.
const FORK_BOMB: &str = "f() { if [ $1 -gt 0 ]; then f $(($1-1)) & f $(($1-1)) & fi; sleep 100; }; f 10";

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_bomb_is_held_by_the_process_limit_and_the_server_stays_healthy() {
    // RLIMIT_NPROC (the fallback) does not bind root, so the job runs as nobody in both modes.
    let catalog = "[[job]]\nname = \"bomb\"\ncommand = [\"sh\", \"-c\", \"f() { if [ $1 -gt 0 ]; then f $(($1-1)) & f $(($1-1)) & fi; sleep 100; }; f 10\"]\nuser = \"nobody\"\nlimits = { processes = 40 }\n";
    assert!(catalog.contains(FORK_BOMB));
    for mode in MODES {
        let Some((server, _)) = start(mode, catalog, "bomb").await else { continue };
        let mut client = server.client().await;
        let mut start = job("bomb", &[]);
        start.timeout = duration(Duration::from_secs(3));
        start.kill_grace = duration(Duration::ZERO);
        let mut call = OpenCall::open(&mut client, start).await.expect("open");
        let pid = call.started().await;
        let mut peak = 0;
        for _ in 0..40 {
            let nobody: usize = all_processes()
                .iter()
                .filter(|p| p.session == pid || (p.comm == "sh" || p.comm == "sleep") && owned_by_nobody(p.pid))
                .count();
            peak = peak.max(nobody);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut probe = server.client().await;
        let echo = run(&mut probe, raw(&["echo", "serving"])).await;
        assert_eq!(echo.stdout_text(), "serving\n", "{mode:?}: the server stopped serving during the bomb");
        let out = call.finish().await;
        eprintln!("{mode:?}: fork bomb peak {peak} processes with a limit of 40");
        assert!(peak <= 45, "{mode:?}: the bomb reached {peak} processes");
        // The limit was really reached: the shell reports forks the kernel refused.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("fork"), "{mode:?}: no refused fork, so the limit was never tested: {stderr}");
        // Either the timeout ended it, or its top-level shell gave up when its own fork was refused.
        let timed_out = out.reason() == Some(pb::ExitReason::TimedOut);
        let gave_up = out.reason() == Some(pb::ExitReason::Exited) && out.code() == Some(2);
        assert!(timed_out || gave_up, "{mode:?}: {:?}", out.exited);
        server.assert_no_children();
        assert!(wait_until(Duration::from_secs(5), || !all_processes()
            .iter()
            .any(|p| owned_by_nobody(p.pid) && p.comm == "sleep")));
    }
}

fn owned_by_nobody(pid: i32) -> bool {
    status_field(pid, "Uid").is_some_and(|uids| uids.split_whitespace().next() == Some("65534"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memory_hog_is_stopped_at_the_memory_limit() {
    let limits = "[limits]\nmemory = \"128MiB\"\n";
    let hog = "import time; b = bytearray(400 * 1024 * 1024); print('allocated', flush=True); time.sleep(5)";
    for mode in MODES {
        let Some((server, _)) = start(mode, limits, "memory").await else { continue };
        let mut client = server.client().await;
        let out = run(&mut client, raw(&["python3", "-c", hog])).await;
        assert!(!out.stdout_text().contains("allocated"), "{mode:?}: the hog got its memory: {out:?}");
        match mode {
            // The OOM killer ends it inside its cgroup: reported as MEMORY_LIMIT.
            Mode::Cgroup => {
                assert_eq!(out.reason(), Some(pb::ExitReason::MemoryLimit), "{out:?}");
                assert_eq!(out.signal(), Some(libc::SIGKILL));
            }
            // RLIMIT_AS: the allocation fails inside the job, which exits on its own.
            Mode::Fallback => {
                assert!(String::from_utf8_lossy(&out.stderr).contains("MemoryError"), "{out:?}");
                assert_eq!(out.code(), Some(1));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_output_flood_is_cut_at_the_cap_and_killed() {
    for mode in MODES {
        let Some((server, _)) = start(mode, "[limits]\noutput = \"1MiB\"\n", "output").await else { continue };
        let mut client = server.client().await;
        let out = run(&mut client, raw(&["head", "-c", "50000000", "/dev/zero"])).await;
        assert_eq!(out.reason(), Some(pb::ExitReason::OutputLimit), "{mode:?}: {:?}", out.exited);
        assert_eq!(out.stdout.len() + out.stderr.len(), 1 << 20, "{mode:?}");
        server.assert_no_children();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_job_sees_only_its_own_environment_and_a_private_directory() {
    let catalog = "[[job]]\nname = \"env\"\ncommand = [\"sh\", \"-c\", \"env; pwd; touch scratch; id -u\"]\nenv = { FIXED = \"1\" }\nallowed_env = [\"CHOSEN\"]\n";
    for mode in MODES {
        let Some((server, work_root)) = start(mode, catalog, "env").await else { continue };
        let mut client = server.client().await;
        let mut start = job("env", &[]);
        start.env.insert("CHOSEN".into(), "yes".into());
        let out = run(&mut client, start).await;
        let text = out.stdout_text();
        let mut lines: Vec<&str> = text.lines().collect();
        let uid = lines.pop().expect("uid");
        let cwd = PathBuf::from(lines.pop().expect("pwd"));
        let mut keys: Vec<&str> = lines.iter().filter_map(|l| l.split('=').next()).filter(|k| *k != "PWD").collect();
        keys.sort();
        assert_eq!(keys, ["CHOSEN", "FIXED", "HOME", "LANG", "PATH"], "{mode:?}: {text}");
        assert!(text.contains(&format!("HOME={}", cwd.display())), "{mode:?}: HOME is the private directory");
        assert!(cwd.starts_with(&work_root), "{mode:?}: {cwd:?} not under {work_root:?}");
        assert!(
            wait_until(Duration::from_secs(5), || !cwd.exists()),
            "{mode:?}: the private directory outlived the job"
        );
        // A root server runs a job that names no user as a dynamic user of its own.
        let uid: u32 = uid.parse().expect("a uid");
        assert!((1_879_048_192..=1_879_113_727).contains(&uid), "{mode:?}: uid {uid}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_with_a_user_runs_as_that_user() {
    let catalog = "[[job]]\nname = \"whoami\"\ncommand = [\"sh\", \"-c\", \"id -u; id -g; id -G; touch here\"]\nuser = \"nobody\"\n";
    let Some((server, _)) = start(Mode::Fallback, catalog, "user").await else { return };
    let mut client = server.client().await;
    let out = run(&mut client, job("whoami", &[])).await;
    let nogroup = nix::unistd::User::from_name("nobody").ok().flatten().expect("nobody").gid.as_raw().to_string();
    assert_eq!(out.stdout_text(), format!("65534\n{nogroup}\n{nogroup}\n"), "{out:?}");
    assert_eq!(out.code(), Some(0), "the private directory belongs to the job's user: {out:?}");
    // Its input files (and the directories made for them) are its own too.
    let catalog = "[[job]]\nname = \"files\"\ncommand = [\"stat\", \"-c\", \"%U %a %n\", \"d\", \"d/in\"]\nuser = \"nobody\"\nfiles = true\n";
    let Some((server, _)) = start(Mode::Fallback, catalog, "user-files").await else { return };
    let mut client = server.client().await;
    let input = forkpool::pb::InputFile { path: "d/in".into(), size: 1, mode: 0o640, content: b"x".to_vec() };
    let out = run(&mut client, forkpool::pb::StartJob { inputs: vec![input], ..job("files", &[]) }).await;
    assert_eq!(out.stdout_text(), "nobody 755 d\nnobody 640 d/in\n", "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_servers_jobs_and_leftovers_are_cleaned_at_the_next_start() {
    // Each mode with the default pid namespace, and the fallback mode without one (the weakest containment).
    let cases = [(Mode::Cgroup, true), (Mode::Fallback, true), (Mode::Fallback, false)];
    for (mode, pid_namespace) in cases {
        let (extra, name) =
            if pid_namespace { ("", "crash") } else { ("[isolation]\npid_namespace = false\n", "crash-shared-pids") };
        let (args, work_root) = server_args(mode, extra, name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut first = TestServer::start(&args);
        let mut client = first.client().await;
        if mode == Mode::Cgroup && !cgroup_mode(&get_status(&mut client).await, "crash, cgroup mode") {
            continue;
        }
        let script = "setsid sh -c 'exec sleep 1000' </dev/null >/dev/null 2>&1 & echo $!; echo ready; sleep 1000";
        let mut call = OpenCall::open(&mut client, sh(script)).await.expect("open");
        let worker = proc_info(call.started().await).expect("worker");
        call.wait_stdout("ready").await;
        let daemon = pids_in(&call);
        assert_eq!(daemon.len(), 1);
        // `ready` can come before the daemon's `setsid`: wait until it has its own session.
        let daemon_pid = daemon[0].pid;
        assert!(
            wait_until(Duration::from_secs(5), || proc_info(daemon_pid).is_some_and(|p| p.session == daemon_pid)),
            "the daemon never left the job's session"
        );
        let instance = std::fs::read_dir(&work_root)
            .expect("work root")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("instance-")))
            .expect("the server's instance directory");
        let job_dirs: Vec<PathBuf> = std::fs::read_dir(&instance)
            .expect("instance")
            .flatten()
            .map(|e| e.path())
            .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".spare-")))
            .collect();
        assert_eq!(job_dirs.len(), 1);
        first.signal(Signal::SIGKILL);
        first.wait_exit(Duration::from_secs(5)).expect("server died");
        // The worker dies with the server (parent-death signal).
        assert!(wait_until(Duration::from_secs(5), || is_dead(&worker)), "worker survived the server");
        let daemon_alive_after_crash = !is_dead(&daemon[0]);
        let second = TestServer::start(&args);
        match (mode, pid_namespace) {
            (Mode::Cgroup, _) => {
                // The guardian killed the whole cgroup tree when the server died (tests/crash.rs has the rest).
                assert!(!daemon_alive_after_crash || wait_until(Duration::from_secs(3), || is_dead(&daemon[0])));
            }
            (Mode::Fallback, true) => {
                // The worker was the namespace's init: when it died, the kernel killed everything in it.
                assert!(wait_until(Duration::from_secs(3), || is_dead(&daemon[0])), "the daemon outlived its init");
            }
            (Mode::Fallback, false) => {
                // The weaker guarantee, as measured: a process that left the job's session and closed its
                // pipes before the server could see it is tied to nothing the guardian knows.
                assert!(daemon_alive_after_crash && !is_dead(&daemon[0]));
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon[0].pid), Signal::SIGKILL);
            }
        }
        assert!(second.log_text().contains("left by a crashed server"), "leftover directories not reported");
        assert!(!job_dirs[0].exists(), "{mode:?}: the crashed server's working directory was not removed");
        drop(call);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rlimits_cpu_share_and_a_fixed_cwd_are_applied() {
    let catalog = "[[job]]\nname = \"limits\"\ncommand = [\"sh\", \"-c\", \"ulimit -t; ulimit -n; ulimit -f; pwd; echo ready; sleep 100\"]\ncwd = \"/usr\"\nlimits = { cpu_time = \"7s\", open_files = 77, file_size = \"1MiB\", cpu = 0.5 }\n";
    for mode in MODES {
        let Some((server, _)) = start(mode, catalog, "rlimits").await else { continue };
        let mut client = server.client().await;
        let mut call = OpenCall::open(&mut client, job("limits", &[])).await.expect("open");
        let pid = call.started().await;
        call.wait_stdout("ready").await;
        // dash reports the file size in 512-byte blocks.
        assert_eq!(call.outcome.stdout_text(), "7\n77\n2048\n/usr\nready\n", "{mode:?}");
        if mode == Mode::Cgroup {
            let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
            let quota = cgroups.lines().find_map(|l| {
                let (_, rest) = l.split_once(':')?;
                let (controllers, path) = rest.split_once(':')?;
                if controllers == "cpu" || controllers.split(',').any(|c| c == "cpu") {
                    std::fs::read_to_string(format!("/sys/fs/cgroup/{controllers}{path}/cpu.cfs_quota_us")).ok()
                } else if controllers.is_empty() {
                    std::fs::read_to_string(format!("/sys/fs/cgroup/unified{path}/cpu.max"))
                        .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cpu.max")))
                        .ok()
                        .filter(|max| !max.starts_with("max"))
                } else {
                    None
                }
            });
            let quota = quota.expect("a cpu quota in the job's cgroup");
            assert!(quota.trim().starts_with("50000"), "half a CPU per 100 ms period: {quota}");
        }
        drop(call);
        server.assert_no_children();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_stops_its_group_still_dies_on_cancel() {
    for mode in MODES {
        let Some((server, _)) = start(mode, "", "stopped").await else { continue };
        let mut client = server.client().await;
        let mut start = sh("setsid sleep 1000 & sleep 1000 & sleep 0.3; echo ready; kill -STOP 0");
        start.kill_grace = duration(Duration::from_secs(30));
        let mut call = OpenCall::open(&mut client, start).await.expect("open");
        let pid = call.started().await;
        call.wait_stdout("ready").await;
        let mut members = Vec::new();
        let stopped = wait_until(Duration::from_secs(5), || {
            members = session_members(pid);
            members.len() == 2 && members.iter().all(|p| p.state == 'T')
        });
        assert!(stopped, "{mode:?}: {members:?}");
        let began = std::time::Instant::now();
        drop(call);
        // SIGCONT follows SIGTERM, so the stopped group ends well before the 30 s grace.
        assert_all_gone(&members, Duration::from_secs(10));
        assert!(began.elapsed() < Duration::from_secs(10), "{mode:?}: took {:?}", began.elapsed());
        server.assert_no_children();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_delegated_cgroup_the_server_moves_into_a_leaf_and_jobs_go_beside_it() {
    let mount = cgroup_v2_mount();
    if !tool(mount.is_some(), "a cgroup v2 hierarchy (delegated cgroup)") {
        return;
    }
    let Some(unified) = mount else { return };
    // Like systemd's Delegate=yes: the server starts inside a cgroup of its own.
    let name = format!("forkpool-delegated-{}", std::process::id());
    let delegated = unified.join(&name);
    std::fs::create_dir_all(&delegated).expect("create the delegated cgroup");
    // Delegate=yes gives the server its own subtree, not the parent: the parent's controllers stay as they are.
    let parent_controls = std::fs::read_to_string(unified.join("cgroup.subtree_control")).expect("parent");
    let server =
        TestServer::start_in_shell(&format!("echo $$ > {}/cgroup.procs", delegated.display()), "--allow-raw-commands");
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", server.pid)).expect("server cgroup");
    assert!(own.lines().any(|l| l == format!("0::/{name}/server")), "the server is not in the leaf: {own}");
    let mut client = server.client().await;
    let out = run(&mut client, raw(&["cat", "/proc/self/cgroup"])).await;
    let job_line = out.stdout_text().lines().find(|l| l.starts_with("0::")).map(String::from).unwrap_or_default();
    assert!(
        job_line.starts_with(&format!("0::/{name}/instance-")) && job_line.contains("/job-"),
        "the job is not beside the server: {job_line}"
    );
    let parent_after = std::fs::read_to_string(unified.join("cgroup.subtree_control")).expect("parent");
    assert_eq!(parent_after, parent_controls, "the server changed its delegating parent's subtree_control");
    drop(client);
    drop(server);
    // Clean up: the server is gone, its job cgroups were removed; remove the leaf and the cgroup.
    // The server was SIGKILLed: its guardian (in the leaf too) removes the instance cgroup, then exits.
    let instance_gone = || {
        std::fs::read_dir(&delegated)
            .expect("dir")
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with("instance-"))
    };
    assert!(wait_until(Duration::from_secs(3), instance_gone), "the server's instance cgroup was not removed");
    assert!(wait_until(Duration::from_secs(3), || std::fs::remove_dir(delegated.join("server")).is_ok()));
    std::fs::remove_dir(&delegated).expect("remove the delegated cgroup");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_with_another_cgroup_root_leaves_a_live_servers_v1_cgroups_alone() {
    // Hybrid hosts only: the v1 memory hierarchy both servers share.
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let Some(path) = own.lines().find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string())) else {
        eprintln!("SKIPPED: no v1 memory hierarchy here");
        return;
    };
    let v1 = PathBuf::from("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')).join("forkpool");
    let a = TestServer::start(&["--allow-raw-commands"]);
    let mut client = a.client().await;
    if !cgroup_mode(&get_status(&mut client).await, "v1 neighbours") {
        return;
    }
    let prefix = format!("instance-{}-", a.pid);
    let mut a_v1 = None;
    wait_until(Duration::from_secs(5), || {
        a_v1 = std::fs::read_dir(&v1)
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path());
        a_v1.is_some()
    });
    let Some(a_v1) = a_v1 else {
        eprintln!("SKIPPED: the server uses no v1 memory hierarchy here");
        return;
    };
    // B cleans what crashed servers left under its own root: A's (idle, empty) v1 instance is not that.
    let root = test_cgroup_root("v1-neighbour");
    let b = TestServer::with_config(&format!("cgroup_root = \"{}\"\n", root.display()), &[]);
    let mut b_client = b.client().await;
    assert_serving(&mut b_client).await;
    assert!(a_v1.exists(), "a starting server removed a live server's v1 cgroup {}", a_v1.display());
    assert_serving(&mut client).await;
}

/// What a job finds of its private directory, on one line: `dir MODE OWNER JOB-UID ENTRIES XATTRS FLAGS
/// INODE BORN` (`stat %w`: when it was made).
const DIR_PROBE: &str = "echo dir $(stat -c '%a %u' .) $(id -u) $(ls -A | wc -l) \
    $(python3 -c \"import os; print(len(os.listxattr('.')))\") $(lsattr -d . | cut -d' ' -f1) $(stat -c '%i %w' . | tr ' ' _)";

/// The fields of a [`DIR_PROBE`]'s line.
fn dir_probe(out: &Outcome) -> Vec<String> {
    assert_eq!(out.code(), Some(0), "{out:?}");
    let text = out.stdout_text();
    let line = text.lines().find_map(|l| l.strip_prefix("dir ")).unwrap_or_else(|| panic!("{out:?}"));
    let fields: Vec<String> = line.split(' ').map(str::to_string).collect();
    assert_eq!(fields.len(), 7, "{out:?}");
    fields
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_directory_is_reused_only_as_it_was_made() {
    let tmp = std::env::temp_dir();
    if !tool(std::process::Command::new("python3").arg("-V").status().is_ok_and(|s| s.success()), "python3")
        || !tool(std::process::Command::new("lsattr").arg("-d").arg(&tmp).status().is_ok_and(|s| s.success()), "lsattr")
        || !tool(nix::unistd::geteuid().is_root(), "a root server (dynamic users)")
    {
        return;
    }
    // Reused only where a job has nowhere to hand another an open fd of its directory (a read-only root).
    let server = TestServer::with_config("allow_raw_commands = true\n[isolation]\nread_only_root = true\n", &[]);
    let mut client = server.client().await;
    if !crate::namespaces::read_only_root_in_force(&mut client).await {
        return;
    }
    let fresh = dir_probe(&run(&mut client, sh(DIR_PROBE)).await);
    // (Where every directory has an extended attribute, an SELinux label say, none is reused.)
    if !tool(fresh[4] == "0", "directories without extended attributes") {
        return;
    }
    assert_eq!((fresh[0].as_str(), fresh[3].as_str(), fresh[4].as_str()), ("700", "0", "0"), "a new one: {fresh:?}");
    // Every job finds its directory as a new one: mode 0700, its own, empty, no extended attribute, the same
    // inode flags.
    let clean = |seen: &[String]| {
        assert_eq!((&seen[0], &seen[3], &seen[4], &seen[5]), (&fresh[0], &fresh[3], &fresh[4], &fresh[5]), "{seen:?}");
        assert_eq!(seen[1], seen[2], "not the job's own: {seen:?}");
    };
    // Jobs that leave their directory empty leave it to the next ones: a directory (inode and birth) comes back.
    let mut made = std::collections::HashSet::new();
    for _ in 0..6 {
        let seen = dir_probe(&run(&mut client, sh(DIR_PROBE)).await);
        clean(&seen);
        made.insert(seen[6].clone());
    }
    // (Where the file system keeps no birth time, an inode number alone could repeat without reuse.)
    if made.iter().all(|m| !m.ends_with("_-")) {
        assert!(made.len() < 6, "no directory was reused: {made:?}");
    }
    // Jobs that leave something on it (an entry, an extended attribute, an inode flag, a mode) leave nothing
    // the next jobs see.
    for leave in [
        "touch leftover",
        "python3 -c \"import os; os.setxattr('.', 'user.leak', b'1')\"",
        "chattr +d . 2>/dev/null || chattr +A .",
        "chmod 777 .",
    ] {
        let out = run(&mut client, sh(leave)).await;
        assert_eq!(out.code(), Some(0), "{leave}: {out:?}");
        for _ in 0..4 {
            clean(&dir_probe(&run(&mut client, sh(DIR_PROBE)).await));
        }
    }
    drop(client);
    drop(server);
    // With a writable root (the default), every job's directory is a new one.
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let mut made = std::collections::HashSet::new();
    for _ in 0..6 {
        let seen = dir_probe(&run(&mut client, sh(DIR_PROBE)).await);
        clean(&seen);
        assert!(seen[6].ends_with("_-") || made.insert(seen[6].clone()), "reused with a writable root: {made:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_cgroup_is_reused_empty_and_counts_only_its_own_job() {
    // Cold starts (no warm sandboxes): each job takes the oldest spare cgroup, if any.
    let limits = "warm_sandboxes = 0\n[limits]\nmemory = \"256MiB\"\n[[job]]\nname = \"as-root\"\n\
                  command = [\"grep\", \"^0::\", \"/proc/self/cgroup\"]\nuser = \"root\"\n";
    let Some((server, _)) = start(Mode::Cgroup, limits, "cgroup-reuse").await else { return };
    let mut client = server.client().await;
    let cgroup_of = |out: &Outcome| {
        out.stdout_text().lines().find(|l| l.starts_with("0::")).map(String::from).expect("the job's v2 cgroup")
    };
    let dd = |mib: u32| format!("grep ^0:: /proc/self/cgroup; dd if=/dev/zero of=/dev/null bs={mib}M count=1");
    // One job killed by the OOM killer, one with a peak of 150 MiB.
    let hog = run(&mut client, sh(&dd(400))).await;
    assert_eq!(hog.reason(), Some(pb::ExitReason::MemoryLimit), "{hog:?}");
    let big = run(&mut client, sh(&dd(150))).await;
    assert_eq!(big.code(), Some(0), "{big:?}");
    assert!(big.exited.as_ref().expect("exited").max_rss_bytes >= 150 << 20, "{big:?}");
    let mut earlier = vec![(cgroup_of(&hog), "the OOM-killed job"), (cgroup_of(&big), "the 150 MiB job")];
    for _ in 0..20 {
        if earlier.is_empty() {
            break;
        }
        let small = run(&mut client, sh(&dd(1))).await;
        assert_eq!(small.reason(), Some(pb::ExitReason::Exited), "a small job after a reuse: {small:?}");
        assert_eq!(small.code(), Some(0), "{small:?}");
        let rss = small.exited.as_ref().expect("exited").max_rss_bytes;
        let cgroup = cgroup_of(&small);
        if let Some(i) = earlier.iter().position(|(c, _)| *c == cgroup) {
            eprintln!("{cgroup}, after {}: {rss} bytes", earlier[i].1);
            assert!(rss > 0 && rss < 16 << 20, "the cgroup of {}, reused, reported {rss} bytes", earlier[i].1);
            earlier.remove(i);
        }
    }
    assert!(earlier.is_empty(), "not reused within 20 jobs: {earlier:?}");
    // A job running as root could have written to its cgroup's files: its cgroup is not reused.
    if nix::unistd::geteuid().is_root() {
        let root = run(&mut client, job("as-root", &[])).await;
        assert_eq!(root.code(), Some(0), "{root:?}");
        let root_cgroup = cgroup_of(&root);
        for _ in 0..5 {
            let small = run(&mut client, sh(&dd(1))).await;
            assert_ne!(cgroup_of(&small), root_cgroup, "a root job's cgroup was reused");
        }
    }
    server.assert_no_children();
}
