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
    // The cold spawn path: a child cloned for each call, frozen at birth.
    let mut server = TestServer::with_config(
        &format!("allow_raw_commands = true\nwarm_sandboxes = 0\ncgroup_root = \"{}\"\n", root.display()),
        &[],
    );
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

/// The lines of `/proc/self/status` about privileges, as a job prints them.
const PRIVILEGES: &str = "grep -E '^(Uid|NoNewPrivs|CapEff|CapBnd|CapAmb):' /proc/self/status";

#[tokio::test(flavor = "multi_thread")]
async fn a_job_cannot_signal_the_server_or_read_what_it_was_not_given() {
    if !tool(nix::unistd::geteuid().is_root(), "a root server (dynamic users)") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    // A file only root may read, like the server's TLS key; beside it, one anybody may (the control); and a
    // setuid-root copy of `id`. Not under /tmp, which each job has a private one of: the permissions are tested.
    let dir = std::path::Path::new("/var/tmp").join(format!("forkpool-test-isolation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o755)).expect("chmod");
    let secret = dir.join("secret");
    std::fs::write(&secret, "TOP SECRET").expect("write");
    std::fs::set_permissions(&secret, PermissionsExt::from_mode(0o600)).expect("chmod");
    std::fs::write(dir.join("public"), "PUBLIC").expect("write");
    std::fs::set_permissions(dir.join("public"), PermissionsExt::from_mode(0o644)).expect("chmod");
    std::fs::copy("/usr/bin/id", dir.join("suid-id")).expect("copy id");
    std::fs::set_permissions(dir.join("suid-id"), PermissionsExt::from_mode(0o4755)).expect("setuid");
    let mut server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    // Job A keeps a file in its private directory.
    let mut a = OpenCall::open(&mut client, sh("echo mine > private; echo \"$HOME $(id -u)\"; echo ready; sleep 1000"))
        .await
        .expect("open");
    let a_pid = a.started().await;
    a.wait_stdout("ready").await;
    let first = a.outcome.stdout_text();
    let (a_home, a_uid) = first.lines().next().and_then(|l| l.split_once(' ')).expect("home and uid");
    // Job B tries everything a hostile script would.
    let script = format!(
        "kill -9 {server} && echo KILLED-SERVER; pkill -9 -x forkpool; cat {secret} && echo READ-SECRET; \
         cat {dir}/public; echo; ls {a_home} && echo LISTED-OTHER; cat {a_home}/private && echo READ-OTHER; \
         kill -9 {a_pid} && echo KILLED-OTHER; echo setuid=$({dir}/suid-id -u); {PRIVILEGES}; echo uid=$(id -u)",
        server = server.pid,
        secret = secret.display(),
        dir = dir.display(),
    );
    let out = run(&mut client, sh(&script)).await;
    let text = out.stdout_text();
    assert!(text.contains("PUBLIC"), "the control file was not readable: {text}");
    for forbidden in ["KILLED-SERVER", "READ-SECRET", "TOP SECRET", "LISTED-OTHER", "READ-OTHER", "KILLED-OTHER"] {
        assert!(!text.contains(forbidden), "{forbidden}: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    for line in
        ["NoNewPrivs:\t1", "CapEff:\t0000000000000000", "CapBnd:\t0000000000000000", "CapAmb:\t0000000000000000"]
    {
        assert!(text.contains(line), "{line:?} missing: {text}");
    }
    let b_uid = text.lines().find_map(|l| l.strip_prefix("uid=")).expect("uid");
    // The setuid bit gives nothing (no_new_privs).
    assert_eq!(text.lines().find_map(|l| l.strip_prefix("setuid=")), Some(b_uid), "{text}");
    assert_ne!(b_uid, a_uid, "two running jobs share a uid");
    assert_ne!(b_uid, "0");
    assert!(server.is_running(), "a job killed the server");
    assert!(proc_info(a_pid).is_some(), "a job killed another job");
    drop(a);
    assert_serving(&mut client).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_job_has_no_capabilities_but_those_its_entry_keeps() {
    if !tool(nix::unistd::geteuid().is_root(), "a root server") {
        return;
    }
    let catalog = format!(
        "allow_raw_commands = true\n[isolation]\ndynamic_users = false\n[[job]]\nname = \"bind\"\ncommand = [\"sh\", \"-c\", \"{PRIVILEGES}\"]\nkeep_capabilities = [\"CAP_NET_BIND_SERVICE\"]\n"
    );
    let server = TestServer::with_config(&catalog, &[]);
    let mut client = server.client().await;
    let raw = run(&mut client, sh(PRIVILEGES)).await.stdout_text();
    assert!(raw.contains("Uid:\t0\t0\t0\t0"), "{raw}");
    assert!(raw.contains("CapEff:\t0000000000000000") && raw.contains("NoNewPrivs:\t1"), "{raw}");
    let kept = run(&mut client, job("bind", &[])).await.stdout_text();
    assert!(kept.contains("CapEff:\t0000000000000400") && kept.contains("CapBnd:\t0000000000000400"), "{kept}");
    let status = get_status(&mut client).await;
    assert!(status.containment_detail.contains("no_new_privs and no capabilities"), "{}", status.containment_detail);
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_do_not_share_sysv_ipc_with_each_other_or_the_server() {
    if !tool(nix::unistd::geteuid().is_root(), "a root server (namespaces)") {
        return;
    }
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    // Job A makes a shared memory segment and keeps running.
    let mut a = OpenCall::open(&mut client, sh("ipcmk -M 4096 && echo ready; readlink /proc/self/ns/ipc; sleep 1000"))
        .await
        .expect("open");
    a.started().await;
    a.wait_stdout("ready").await;
    a.wait_stdout("ipc:[").await;
    let out =
        run(&mut client, sh("ipcs -m | grep -c '^0x' || true; readlink /proc/self/ns/ipc /proc/self/ns/uts")).await;
    let text = out.stdout_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"0"), "job B sees job A's segment: {text}");
    let server_ipc = std::fs::read_link(format!("/proc/{}/ns/ipc", server.pid)).expect("server ns");
    let server_uts = std::fs::read_link(format!("/proc/{}/ns/uts", server.pid)).expect("server ns");
    assert!(!lines.contains(&server_ipc.to_str().unwrap_or_default()), "job B shares the server's IPC: {text}");
    assert!(!lines.contains(&server_uts.to_str().unwrap_or_default()), "job B shares the server's UTS: {text}");
    let a_ipc = a.outcome.stdout_text().lines().find(|l| l.starts_with("ipc:")).map(String::from).expect("ipc");
    assert!(!lines.contains(&a_ipc.as_str()), "jobs A and B share an IPC namespace: {text}");
    let status = get_status(&mut client).await;
    assert!(status.containment_detail.contains("IPC and UTS namespaces"), "{}", status.containment_detail);
}
