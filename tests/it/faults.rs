//! Faults: a client that never reads, file descriptors running out, the job cgroup frozen or its tree
//! removed underneath, the working-directory filesystem full. Each gives a clear error to the calls it
//! affects, leaks nothing, and the server recovers once the pressure is gone.

use std::time::Duration;

use forkpool::pb;

use crate::common::*;

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
    let server = TestServer::start_in_shell("ulimit -n 64", "--allow-raw-commands --workers 40");
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
        // EMFILE is RESOURCE_EXHAUSTED whether a pipe, the job's cgroup or its directory hit it.
        let clear = status.code() == tonic::Code::ResourceExhausted
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

/// The v2 directory of `pid`'s cgroup, from `/proc/PID/cgroup`.
fn v2_cgroup_dir(pid: i32) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(|mount| std::path::PathBuf::from(format!("{mount}{path}")))
        .find(|dir| dir.join("cgroup.freeze").exists())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_cgroup_frozen_underneath_still_dies_on_cancel() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    if !cgroup_mode(&get_status(&mut client).await, "frozen cgroup") {
        return;
    }
    let (call, tree) =
        OpenCall::open_tree(&mut client, sh("setsid sleep 1000 & sleep 1000 & echo ready; wait"), 2).await;
    let dir = v2_cgroup_dir(tree[0].pid).expect("the job's cgroup");
    std::fs::write(dir.join("cgroup.freeze"), "1").expect("freeze the job's cgroup");
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(dir.join("cgroup.events")).is_ok_and(|e| e.contains("frozen 1"))
    }));
    drop(call);
    assert_all_gone(&tree, Duration::from_secs(10));
    server.assert_no_children();
    assert!(wait_until(Duration::from_secs(5), || !dir.exists()), "the frozen job's cgroup was not removed");
    assert_serving(&mut client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cgroup_tree_removed_underneath_is_made_again() {
    let root = test_cgroup_root("removed");
    // No warm sandboxes: their cgroups, populated, would keep the tree from being removed at all.
    let server = TestServer::with_config(
        &format!("allow_raw_commands = true\nwarm_sandboxes = 0\ncgroup_root = \"{}\"\n", root.display()),
        &[],
    );
    let mut client = server.client().await;
    if !cgroup_mode(&get_status(&mut client).await, "removed cgroup tree") {
        return;
    }
    assert_serving(&mut client).await;
    let instance = instance_cgroup(&root);
    // The job's cgroup, emptied, is kept for the next job: it goes too (its next job gets a new one).
    assert!(wait_until(Duration::from_secs(5), || job_cgroups(&instance)
        .iter()
        .all(|d| std::fs::remove_dir(d).is_ok())));
    std::fs::remove_dir(&instance).expect("remove the server's cgroup tree underneath it");
    let out = run(&mut client, raw(&["cat", "/proc/self/cgroup"])).await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    let inside = format!(
        "0::/{}/{}/job-",
        root.file_name().expect("name").to_string_lossy(),
        instance.file_name().expect("name").to_string_lossy()
    );
    assert!(out.stdout_text().contains(&inside), "{}", out.stdout_text());
    assert!(server.log_text().contains("recreating it"));
    // It is locked again: a server starting now leaves it alone.
    let other = TestServer::with_config(&format!("cgroup_root = \"{}\"\n", root.display()), &[]);
    assert!(instance.exists(), "a live server's instance was taken for a leftover");
    drop(other);
    drop(client);
    drop(server);
    assert!(wait_until(Duration::from_secs(5), || std::fs::remove_dir(&root).is_ok()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_working_directory_filesystem_gives_a_clear_error_and_leaks_nothing() {
    let base = std::env::temp_dir().join(format!("forkpool-test-full-fs-{}", std::process::id()));
    std::fs::create_dir_all(&base).expect("dir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,nr_inodes=32", "tmpfs", base.to_str().expect("utf8")])
        .status()
        .is_ok_and(|s| s.success());
    if !tool(mounted, "mounting a small tmpfs") {
        return;
    }
    let _unmount = Unmount(base.clone());
    let server =
        TestServer::with_config(&format!("allow_raw_commands = true\nwork_root = \"{}\"\n", base.display()), &[]);
    let mut client = server.client().await;
    // Use up every inode of the work root.
    let mut fillers = Vec::new();
    for i in 0.. {
        let file = base.join(format!("filler-{i}"));
        if std::fs::write(&file, b"").is_err() {
            break;
        }
        fillers.push(file);
    }
    let out = run(&mut client, raw(&["true"])).await;
    assert_eq!(out.error_code(), Some(tonic::Code::Unavailable), "{out:?}");
    let message = out.status.as_ref().map(|s| s.message().to_string()).unwrap_or_default();
    assert!(message.contains("No space left on device"), "{message}");
    server.assert_no_children();
    let status = settled_status(&mut client).await;
    assert_eq!((status.running, status.started_total), (0, 0), "nothing started, nothing held");
    // Space comes back: jobs run again.
    for file in fillers {
        std::fs::remove_file(file).expect("remove filler");
    }
    assert_serving(&mut client).await;
    // An input file larger than the space left: RESOURCE_EXHAUSTED, the staged directory removed, nothing run.
    let size = 2u64 << 20;
    let start = pb::StartJob {
        inputs: vec![pb::InputFile { path: "big".into(), size, mode: 0, content: Vec::new() }],
        ..raw(&["true"])
    };
    let call = OpenCall::open(&mut client, start).await.expect("open");
    let piece = vec![1u8; 256 << 10];
    for i in 0..8 {
        let chunk = pb::FileChunk { path: "big".into(), data: piece.clone(), last: i == 7, mode: 0 };
        let request = pb::ExecuteRequest { msg: Some(pb::execute_request::Msg::Input(chunk)) };
        if call.requests.as_ref().expect("open").send(request).await.is_err() {
            break;
        }
    }
    let out = call.finish().await;
    assert_eq!(out.error_code(), Some(tonic::Code::ResourceExhausted), "{out:?}");
    assert!(out.status.as_ref().is_some_and(|s| s.message().contains("No space left")), "{out:?}");
    let started = settled_status(&mut client).await.started_total;
    assert_eq!(started, 1, "only the serving check ran");
    let leftovers: Vec<_> = std::fs::read_dir(&base)
        .expect("work root")
        .flatten()
        .filter(|e| e.path().is_dir())
        .flat_map(|i| std::fs::read_dir(i.path()).into_iter().flatten().flatten())
        .collect();
    assert!(leftovers.is_empty(), "the staged upload was left behind: {leftovers:?}");
    assert_serving(&mut client).await;
    drop(client);
    drop(server);
}

/// Unmounts a test's tmpfs, even when the test fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fork_failing_at_the_process_limit_gives_clear_errors_and_recovers() {
    // The server runs in a pids cgroup of its own (v1 `pids` on hybrid hosts, else v2 with the controller).
    let v1 = std::path::Path::new("/sys/fs/cgroup/pids");
    let base = if v1.join("pids.max").exists() || v1.join("cgroup.procs").exists() {
        v1.to_path_buf()
    } else {
        std::path::PathBuf::from("/sys/fs/cgroup")
    };
    let dir = base.join(format!("forkpool-forkfail-{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() || !dir.join("pids.max").exists() {
        let _ = std::fs::remove_dir(&dir);
        assert!(!tool(false, "a pids controller to limit the server with"));
        return;
    }
    std::fs::write(dir.join("pids.max"), "1000").expect("pids.max");
    let setup = format!("echo $$ > {}/cgroup.procs", dir.display());
    let server = TestServer::start_in_shell(&setup, "--allow-raw-commands --workers 8");
    let client = server.client().await;
    let tasks: u32 =
        std::fs::read_to_string(dir.join("pids.current")).expect("pids.current").trim().parse().expect("n");
    std::fs::write(dir.join("pids.max"), (tasks + 3).to_string()).expect("squeeze pids.max");

    let (mut running, mut refused) = (Vec::new(), Vec::new());
    for _ in 0..8 {
        let mut c = client.clone();
        let mut call = OpenCall::open(&mut c, raw(&["sleep", "1000"])).await.expect("accepted");
        // Each accepted call ends in exactly one way: it starts, or it gets an error status.
        match call.next().await {
            Some(_) if call.outcome.pid.is_some() => running.push(call),
            _ => refused.push(call.outcome.status.clone().expect("an error status, not a silent end")),
        }
    }
    eprintln!("{} running, {} refused: {:?}", running.len(), refused.len(), refused.first());
    assert!(!running.is_empty() && !refused.is_empty(), "expected the limit to bite");
    for status in &refused {
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("EAGAIN"), "{status:?}");
    }
    drop(running);
    server.assert_no_children();
    std::fs::write(dir.join("pids.max"), "1000").expect("relax pids.max");
    let mut fresh = server.client().await;
    assert_serving(&mut fresh).await;
    let status = settled_status(&mut fresh).await;
    assert_eq!(status.started_total, status.finished_total);
    drop(fresh);
    drop(client);
    drop(server);
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(dir.join("pids.current")).is_ok_and(|n| n.trim() == "0")
    }));
    // The guardian removes the server's instance in the v1 hierarchy too, once its jobs are dead.
    assert!(wait_until(Duration::from_secs(5), || std::fs::remove_dir(dir.join("forkpool")).is_ok()));
    std::fs::remove_dir(&dir).expect("remove the test's pids cgroup");
}
