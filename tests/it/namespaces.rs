//! Each job in namespaces of its own: it sees and signals only its own processes, under forkpool's init; its
//! own /tmp and /dev/shm; no network but its own loopback; optionally a read-only system; a seccomp deny list;
//! and all of it from a server that is not root, through a user namespace.

use std::io::Read;
use std::time::Duration;

use crate::common::*;
use forkpool::pb;
use nix::sys::signal::Signal;

/// Whether this test can run: the server must be root to make namespaces itself (the non-root test makes them
/// through a user namespace).
fn root(what: &str) -> bool {
    tool(nix::unistd::geteuid().is_root(), what)
}

/// A catalog of one job, `name`, running `script` with the `isolation` table `table` (TOML inline table).
fn catalog(name: &str, script: &str, table: &str) -> String {
    format!(
        "allow_raw_commands = true\n[[job]]\nname = \"{name}\"\ncommand = [\"sh\", \"-c\", {script:?}]\nisolation = {table}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_sees_and_signals_only_its_own_processes() {
    if !root("a root server (namespaces)") {
        return;
    }
    let mut server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let mut other = OpenCall::open(&mut client, sh(PAIR)).await.expect("open");
    let other_worker = other.started().await;
    other.wait_stdout("ready").await;
    let other_tree = session_members(other_worker);
    // Every process the job can see, then the server from inside, then a signal to every process it may
    // signal: `kill -9 -1` (everything but the caller and PID 1) reaches only its own namespace.
    let script = format!(
        "sleep 1000 & S=$!; for p in /proc/[0-9]*; do echo \"seen $(cat $p/comm)\"; done; \
         cat /proc/{server}/status >/dev/null 2>&1 && echo SEES-SERVER; kill -9 {server} 2>/dev/null && echo KILLED-SERVER; \
         pkill -9 -x forkpool && echo KILLED-BY-NAME; echo pid=$$; kill -9 -1; wait $S; echo sleeper=$?",
        server = server.pid
    );
    let out = run(&mut client, sh(&script)).await;
    let text = out.stdout_text();
    let seen: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("seen ")).collect();
    // The init, the shell, the sleeper and the `cat`s the loop runs: nothing of the server or the other job.
    assert!(seen.contains(&"forkpool-init") && seen.contains(&"sh") && seen.contains(&"sleep"), "{text}");
    assert!(seen.iter().all(|c| ["forkpool-init", "sh", "sleep", "cat"].contains(c)), "{text}");
    assert_eq!(seen.iter().filter(|c| **c == "sleep").count(), 1, "the other job's sleeper is visible: {text}");
    for forbidden in ["SEES-SERVER", "KILLED-SERVER", "KILLED-BY-NAME"] {
        assert!(!text.contains(forbidden), "{forbidden}: {text}");
    }
    assert_eq!(text.lines().find_map(|l| l.strip_prefix("pid=")), Some("2"), "the shell is PID 2, the init PID 1");
    assert!(text.contains(&format!("sleeper={}", 128 + libc::SIGKILL)), "kill -1 missed the job's own: {text}");
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(server.is_running(), "a job killed the server");
    assert!(other_tree.iter().all(exists), "a job killed another job's processes");
    drop(other);
    assert_all_gone(&other_tree, Duration::from_secs(5));
    server.assert_no_children();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_init_forwards_sigterm_and_the_grace_ends_with_sigkill() {
    if !root("a root server (namespaces)") {
        return;
    }
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    // A shell under the init gets the SIGTERM of a timeout, and its trap runs (a shell as PID 1 would not).
    let start = pb::StartJob {
        timeout: duration(Duration::from_millis(300)),
        kill_grace: duration(Duration::from_secs(10)),
        ..sh("trap 'echo got-term; exit 5' TERM; while :; do sleep 0.05; done")
    };
    let out = run(&mut client, start).await;
    assert_eq!((out.reason(), out.code()), (Some(pb::ExitReason::TimedOut), Some(5)), "{out:?}");
    assert!(out.stdout_text().contains("got-term"), "{out:?}");
    // One that ignores it is killed when the grace is over; a job killed by a signal reports that signal.
    let start = pb::StartJob {
        timeout: duration(Duration::from_millis(300)),
        kill_grace: duration(Duration::from_millis(300)),
        ..sh(STUBBORN)
    };
    let out = run(&mut client, start).await;
    assert_eq!((out.reason(), out.signal()), (Some(pb::ExitReason::TimedOut), Some(libc::SIGKILL)), "{out:?}");
    let out = run(&mut client, sh("kill -USR1 $$")).await;
    assert_eq!(out.signal(), Some(libc::SIGUSR1), "{out:?}");
    let out = run(&mut client, sh("exit 42")).await;
    assert_eq!(out.code(), Some(42), "{out:?}");
    server.assert_no_children();
}

#[tokio::test(flavor = "multi_thread")]
async fn escapers_die_with_their_job_without_cgroups_even_when_the_server_crashes() {
    if !root("a root server (namespaces)") {
        return;
    }
    let work_root = fresh_work_root("namespaces", "escapers", Mode::Fallback);
    let toml = Mode::Fallback.toml(&work_root, "");
    let tag = unique_tag(92);
    // A setsid escaper, a double fork, and a daemon that also closed every fd: none of them tied to the job
    // by its session, group or pipes; only its pid namespace holds them.
    let escapers = format!(
        "setsid sleep {tag} & (sleep {tag} &); setsid sh -c 'exec sleep {tag}' </dev/null >/dev/null 2>&1 & \
         sleep 0.3; echo ready"
    );
    let server = TestServer::with_config(&toml, &[]);
    let mut client = server.client().await;
    let out = run(&mut client, sh(&format!("{escapers}; exit 3"))).await;
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(tagged(&tag).is_empty(), "escapers outlived their job: {:?}", tagged(&tag));
    let reaped = out.exited.expect("exited").reaped;
    assert_eq!(reaped.iter().filter(|r| r.name == "sleep").count(), 3, "{reaped:?}");
    drop(server);
    // The same escapers, then the server killed with its guardian gone first: the init dies with the server
    // (its parent-death signal), and the kernel kills its namespace.
    let mut server = TestServer::with_config(&toml, &[]);
    let mut client = server.client().await;
    let mut call = OpenCall::open(&mut client, sh(&format!("{escapers}; sleep 1000"))).await.expect("open");
    call.wait_stdout("ready").await;
    assert!(wait_until(Duration::from_secs(5), || tagged(&tag).len() == 3), "{:?}", tagged(&tag));
    let guardian = server.guardian().expect("guardian");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(guardian.pid), Signal::SIGKILL).expect("kill the guardian");
    server.signal(Signal::SIGKILL);
    server.wait_exit(Duration::from_secs(5)).expect("died");
    assert!(wait_until(Duration::from_secs(5), || tagged(&tag).is_empty()), "escapers outlived the server");
    drop(call);
}

#[tokio::test(flavor = "multi_thread")]
async fn tmp_and_dev_shm_are_private_to_each_job() {
    if !root("a root server (namespaces)") {
        return;
    }
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let name = format!("forkpool-private-{}", std::process::id());
    let out = run(
        &mut client,
        sh(&format!(
            "echo one > /tmp/{name} && echo two > /dev/shm/{name} && ls /tmp /dev/shm && pwd && cat /tmp/{name}"
        )),
    )
    .await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout_text().ends_with("one\n"), "{out:?}");
    let out =
        run(&mut client, sh(&format!("ls -a /tmp /dev/shm; test -e /tmp/{name} || test -e /dev/shm/{name}"))).await;
    assert_eq!(out.code(), Some(1), "the next job sees the first one's files: {}", out.stdout_text());
    assert!(!std::path::Path::new("/tmp").join(&name).exists(), "a job's /tmp file is on the host's /tmp");
    assert!(!std::path::Path::new("/dev/shm").join(&name).exists(), "a job's /dev/shm file is on the host's");
    // Shared where a catalog job asks for it.
    let toml = catalog("shared", &format!("echo shared > /tmp/{name}"), "{ private_tmp = false }");
    let shared = TestServer::with_config(&toml, &[]);
    let out = run(&mut shared.client().await, job("shared", &[])).await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(std::fs::read_to_string(std::path::Path::new("/tmp").join(&name)).ok().as_deref(), Some("shared\n"));
    let _ = std::fs::remove_file(std::path::Path::new("/tmp").join(&name));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_network_a_job_reaches_only_its_own_loopback() {
    if !root("a root server (namespaces)")
        || !tool(std::process::Command::new("python3").arg("-V").status().is_ok_and(|s| s.success()), "python3")
    {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    // Connects to the host's listener, then to one of its own.
    let script = format!(
        "import socket\n\
         try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2); print('host: connected')\n\
         except OSError as e:\n    print('host: failed', e.errno)\n\
         own = socket.socket(); own.bind(('127.0.0.1', 0)); own.listen()\n\
         socket.create_connection(own.getsockname(), timeout=2); print('own: connected')\n"
    );
    let toml = format!(
        "allow_raw_commands = true\n[[job]]\nname = \"online\"\ncommand = [\"python3\", \"-c\", {script:?}]\nisolation = {{ network = \"host\" }}\n"
    );
    let server = TestServer::with_config(&toml, &[]);
    let mut client = server.client().await;
    let out = run(&mut client, raw(&["python3", "-c", &script])).await;
    let text = out.stdout_text();
    assert!(text.contains(&format!("host: failed {}", libc::ECONNREFUSED)), "{out:?}");
    assert!(text.contains("own: connected"), "{out:?}");
    let mut accepted = listener.accept();
    assert!(accepted.is_err(), "the host's listener was reached");
    // The catalog job asks for the host's network, and gets it.
    let out = run(&mut client, job("online", &[])).await;
    assert!(out.stdout_text().contains("host: connected"), "{out:?}");
    assert!(wait_until(Duration::from_secs(2), || {
        accepted = listener.accept();
        accepted.is_ok()
    }));
    if let Ok((mut stream, _)) = accepted {
        let _ = stream.read(&mut [0u8; 1]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_root_leaves_only_the_job_directory_tmp_and_shm_writable() {
    if !root("a root server (namespaces)") {
        return;
    }
    let script = "for d in /var/tmp /usr /etc . /tmp /dev/shm; do touch $d/forkpool-ro-probe 2>/dev/null && echo \"writable $d\"; done; \
                  pwd";
    let server = TestServer::with_config(&catalog("ro", script, "{ read_only_root = true }"), &[]);
    let out = run(&mut server.client().await, job("ro", &[])).await;
    let text = out.stdout_text();
    let writable: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("writable ")).collect();
    assert_eq!(writable, [".", "/tmp", "/dev/shm"], "{out:?}");
    assert!(!std::path::Path::new("/var/tmp/forkpool-ro-probe").exists());
    // The working directory is where it always is, and files written there reach the server.
    let cwd = text.lines().last().expect("pwd");
    assert!(cwd.contains("instance-"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seccomp_filter_denies_what_no_job_needs() {
    if !root("a root server (namespaces)") {
        return;
    }
    let script = "grep Seccomp: /proc/self/status; unshare -U true 2>&1; echo unshare=$?; \
                  python3 -c 'import ctypes; l=ctypes.CDLL(None, use_errno=True); print(\"keyctl\", l.syscall(250, 0, 0, 0, 0, 0), ctypes.get_errno())' 2>&1";
    let server = TestServer::with_config(&catalog("unfiltered", script, "{ seccomp = false }"), &[]);
    let mut client = server.client().await;
    let out = run(&mut client, sh(script)).await;
    let text = out.stdout_text();
    assert!(text.contains("Seccomp:\t2"), "{text}");
    assert!(text.contains("Operation not permitted") && text.contains("unshare=1"), "{text}");
    if cfg!(target_arch = "x86_64") && text.contains("keyctl") {
        assert!(text.contains(&format!("keyctl -1 {}", libc::EPERM)), "{text}");
    }
    let out = run(&mut client, job("unfiltered", &[])).await;
    let text = out.stdout_text();
    assert!(text.contains("Seccomp:\t0") && text.contains("unshare=0"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_is_not_root_isolates_its_jobs_in_a_user_namespace() {
    let root = nix::unistd::geteuid().is_root();
    let setpriv = std::process::Command::new("setpriv").arg("--version").output().is_ok_and(|o| o.status.success());
    let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").is_ok_and(|n| n.trim() != "0");
    if !tool(root && setpriv && userns, "root to start a server as nobody (setpriv), and user namespaces") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("forkpool-test-nonroot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    nix::unistd::chown(&dir, Some(65534.into()), Some(65534.into())).expect("chown");
    let config = dir.join("forkpool.toml");
    std::fs::write(
        &config,
        format!("allow_raw_commands = true\ncgroups = \"off\"\nwork_root = \"{}/work\"\n", dir.display()),
    )
    .expect("config");
    let mut command = std::process::Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN, "serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("RUST_LOG", "forkpool=debug,info");
    // setpriv execs the server: its pid is the server's.
    let mut server = TestServer::start_command(command);
    let mut client = server.client().await;
    let status = get_status(&mut client).await;
    assert!(status.containment_detail.contains("inside a user namespace"), "{}", status.containment_detail);
    let script = format!(
        "sleep 1000 & for p in /proc/[0-9]*; do echo \"seen $(cat $p/comm)\"; done; id -u; \
         kill -9 {server} 2>/dev/null && echo KILLED-SERVER; readlink /proc/self/ns/net; echo ready; wait",
        server = server.pid
    );
    let (call, tree) = OpenCall::open_tree(&mut client, sh(&script), 2).await;
    let text = call.outcome.stdout_text();
    let seen: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("seen ")).collect();
    assert!(seen.iter().all(|c| ["forkpool-init", "sh", "sleep", "cat"].contains(c)), "{text}");
    assert!(text.lines().any(|l| l == "65534"), "the job runs as the server's user: {text}");
    assert!(!text.contains("KILLED-SERVER"), "{text}");
    let server_net = std::fs::read_link(format!("/proc/{}/ns/net", server.pid)).expect("the server's namespace");
    assert!(!text.contains(server_net.to_str().unwrap_or("-")), "the job shares the server's network: {text}");
    drop(call);
    assert_all_gone(&tree, Duration::from_secs(5));
    assert!(server.is_running());
    server.assert_no_children();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_init_outside_a_pid_namespace_refuses_to_run() {
    use std::os::unix::process::CommandExt;
    if !tool(nix::unistd::geteuid().is_root(), "root (to run the init as nobody beside a bystander)") {
        return;
    }
    // As nobody, so that a regression (the init's `kill(-1)`) could only reach nobody's processes: the
    // bystander.
    let mut bystander = std::process::Command::new("sleep").arg("30").uid(65534).gid(65534).spawn().expect("sleep");
    let out = std::process::Command::new(BIN)
        .arg0("forkpool-init")
        .args(["/bin/true", "true"])
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run the init");
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a command"), "{out:?}");
    assert!(bystander.try_wait().expect("bystander").is_none(), "the init killed a bystander");
    let _ = bystander.kill();
    let _ = bystander.wait();
}

/// The job's network namespace (its never-reused cookie) and what its loopback shows: up, and how many packets
/// it has passed.
const NETNS_PROBE: &str = "import fcntl, socket, struct\n\
s = socket.socket()\n\
cookie = struct.unpack('Q', s.getsockopt(socket.SOL_SOCKET, 71, 8))[0]\n\
flags = struct.unpack('16sH14x', fcntl.ioctl(s, 0x8913, struct.pack('16sH14x', b'lo', 0)))[1]\n\
lo = [l.split(':', 1)[1].split() for l in open('/proc/net/dev') if l.strip().startswith('lo:')][0]\n\
print('netns', cookie, 'up' if flags & 1 else 'down', int(lo[1]) + int(lo[9]))\n";

/// The same, after a connection over the loopback (which leaves a socket in TIME_WAIT behind).
const NETNS_PROBE_AFTER_TRAFFIC: &str = "import socket\n\
own = socket.socket(); own.bind(('127.0.0.1', 0)); own.listen()\n\
c = socket.create_connection(own.getsockname(), timeout=2); a, _ = own.accept(); a.close(); c.close()\n";

/// Runs `job` (a probe printing `netns COOKIE up|down PACKETS`) and returns the cookie, checking that the
/// namespace it got looked new: loopback up, no packet passed before the job's own (`own`: their count, or
/// `None` for some).
async fn netns_of(
    client: &mut pb::executor_client::ExecutorClient<tonic::transport::Channel>,
    start: pb::StartJob,
    own: Option<&str>,
) -> u64 {
    let out = run(client, start).await;
    let text = out.stdout_text();
    let line = text.lines().find_map(|l| l.strip_prefix("netns ")).unwrap_or_else(|| panic!("{out:?}"));
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(fields[1], "up", "the job's loopback is down: {out:?}");
    match own {
        Some(own) => assert_eq!(fields[2], own, "packets before the job's own: {out:?}"),
        None => assert_ne!(fields[2], "0", "the job's own traffic is not counted: {out:?}"),
    }
    fields[0].parse().expect("cookie")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_network_namespace_is_reused_only_as_it_was_made() {
    if !root("a root server (namespaces)")
        || !tool(std::process::Command::new("python3").arg("-V").status().is_ok_and(|s| s.success()), "python3")
    {
        return;
    }
    let clean = || raw(&["python3", "-c", NETNS_PROBE]);
    let busy = || raw(&["python3", "-c", &format!("{NETNS_PROBE_AFTER_TRAFFIC}{NETNS_PROBE}")]);
    let catalog = format!(
        "allow_raw_commands = true\n[[job]]\nname = \"as-root\"\nuser = \"root\"\ncommand = [\"python3\", \"-c\", {NETNS_PROBE:?}]\n"
    );
    // Where jobs have nowhere to hand another job anything of their namespace (a read-only root), jobs that
    // leave it as they found it share a few namespaces, each found pristine.
    let server = TestServer::with_config(&format!("{catalog}[isolation]\nread_only_root = true\n"), &[]);
    let mut client = server.client().await;
    if !read_only_root_in_force(&mut client).await {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        seen.insert(netns_of(&mut client, clean(), Some("0")).await);
    }
    assert!(seen.len() <= 4, "no namespace was reused: {seen:?}");
    // A namespace whose loopback passed packets, or that a root job had, is never seen again.
    let mut spent = std::collections::HashSet::new();
    for _ in 0..3 {
        spent.insert(netns_of(&mut client, busy(), None).await);
        spent.insert(netns_of(&mut client, job("as-root", &[]), Some("0")).await);
    }
    for _ in 0..8 {
        let cookie = netns_of(&mut client, clean(), Some("0")).await;
        assert!(!spent.contains(&cookie), "a used namespace came back: {cookie}");
    }
    drop(client);
    drop(server);
    // With a writable root (the default), where a job could hand a socket or an open /proc/net file to another
    // job, every job gets a new one.
    let server = TestServer::with_config(&catalog, &[]);
    let mut client = server.client().await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        assert!(seen.insert(netns_of(&mut client, clean(), Some("0")).await), "reused with a writable root: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_job_is_ended_by_its_init_which_reaps_and_reports_the_rest() {
    if !root("a root server (namespaces)") {
        return;
    }
    let tag = unique_tag(93);
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let init = run(&mut client, sh("cat /proc/1/comm")).await;
    if !tool(init.stdout_text().trim() == "forkpool-init", "a pid namespace under forkpool's init") {
        return;
    }
    // A timeout with no grace: SIGKILL. It goes to the program (the init's child), not the init, which then kills
    // the two sleepers, reaps them and reports them: killing the init would have left the reaping to the
    // kernel's teardown of the namespace, and no report.
    let mut start = sh(&format!("sleep {tag} & sleep {tag} & echo ready; wait"));
    start.timeout = Some(prost_types::Duration { seconds: 1, nanos: 0 });
    start.kill_grace = Some(prost_types::Duration { seconds: 0, nanos: 0 });
    let out = run(&mut client, start).await;
    let exited = out.exited.clone().expect("exited");
    assert_eq!(exited.status, Some(pb::exited::Status::Signal(libc::SIGKILL)), "{out:?}");
    assert_eq!(exited.reaped.iter().filter(|r| r.name == "sleep").count(), 2, "{:?}", exited.reaped);
    assert!(tagged(&tag).is_empty(), "the sleepers outlived their job: {:?}", tagged(&tag));
    assert!(server.children().is_empty(), "a job process is left: {:?}", server.children());
}

/// Whether jobs of the server behind `client` get a read-only root (the kernel may lack `mount_setattr`); says
/// SKIPPED if not.
pub(crate) async fn read_only_root_in_force(
    client: &mut pb::executor_client::ExecutorClient<tonic::transport::Channel>,
) -> bool {
    let script =
        "python3 -c \"print([l.split()[5] for l in open('/proc/self/mountinfo') if l.split()[4] == '/'][-1])\"";
    let out = run(client, sh(script)).await;
    tool(out.stdout_text().trim().split(',').any(|o| o == "ro"), "a read-only root for jobs")
}
