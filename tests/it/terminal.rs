//! Terminal jobs (`StartJob.terminal`): a real pty as the job's stdio and controlling terminal, its size,
//! echo and line discipline, resizes, EOF, complete output, the usual lifetime guarantees, no pty fd left
//! in the server, and the limits on terminals.

use std::time::Duration;

use forkpool::pb::{self, execute_request::Msg};

use crate::common::*;

/// A raw `sh -c SCRIPT` under a terminal of the default size.
fn tty_sh(script: &str) -> pb::StartJob {
    pb::StartJob { terminal: Some(pb::Terminal::default()), ..sh(script) }
}

fn resize_msg(rows: u32, cols: u32) -> pb::ExecuteRequest {
    pb::ExecuteRequest { msg: Some(Msg::Resize(pb::Resize { rows, cols })) }
}

/// The server's open fds that are a pty (a master is `/dev/ptmx`, a slave `/dev/pts/N`).
fn pty_fds(pid: i32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| t.to_str().map(String::from))
        .filter(|t| t == "/dev/ptmx" || t.starts_with("/dev/pts/"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_job_runs_on_its_own_terminal_of_the_requested_size() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let script = "for fd in 0 1 2; do [ -t $fd ] && echo tty$fd; done
        echo hello > /dev/tty && echo devtty-ok
        stty size; echo TERM=$TERM; echo to-stderr >&2
        for f in /proc/$$/fd/*; do echo \"fd $(readlink $f)\"; done; tty";
    let start =
        pb::StartJob { terminal: Some(pb::Terminal { rows: 33, cols: 101, ..Default::default() }), ..sh(script) };
    let out = run(&mut client, start).await;
    let text = out.stdout_text();
    assert_eq!(out.code(), Some(0), "{out:?}");
    for line in ["tty0", "tty1", "tty2", "hello", "devtty-ok", "33 101", "TERM=xterm-256color", "to-stderr"] {
        assert!(text.contains(&format!("{line}\r\n")), "{line:?} missing (with the terminal's \\r\\n) from {text:?}");
    }
    // One output stream: what the job wrote to stderr came as stdout.
    assert!(out.stderr.is_empty(), "a terminal job sent stderr events: {:?}", out.stderr);
    assert!(!out.events.iter().any(|e| matches!(e, pb::execute_response::Event::Stderr(_))));
    // The job holds its terminal's slave and nothing of the server's: no master (`/dev/ptmx`) at all.
    let fds: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("fd ")).map(str::trim_end).collect();
    assert!(fds.iter().filter(|f| f.starts_with("/dev/pts/")).count() == 3, "{fds:?}");
    assert!(!fds.iter().any(|f| f.contains("ptmx")), "the master leaked into the job: {fds:?}");
    // `tty` names a pty of its own, not the server's (which has none: its stdin is /dev/null).
    let name = text.lines().last().unwrap_or_default().trim_end();
    assert!(name.starts_with("/dev/pts/"), "tty printed {name:?}");

    // Defaults: 24x80, and the requested TERM.
    let start = pb::StartJob {
        terminal: Some(pb::Terminal { term: "vt100".into(), ..Default::default() }),
        ..sh("stty size; echo $TERM")
    };
    let out = run(&mut client, start).await;
    assert_eq!(out.stdout_text(), "24 80\r\nvt100\r\n");
    server.assert_no_children();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resize_reaches_the_job_as_sigwinch_with_the_new_size() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let script = "trap 'stty size; exit 0' WINCH; echo ready; while :; do sleep 0.05; done";
    let mut call = OpenCall::open(&mut client, tty_sh(script)).await.expect("open");
    call.wait_stdout("ready").await;
    call.send(resize_msg(50, 132)).await;
    let out = call.finish().await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout_text().ends_with("ready\r\n50 132\r\n"), "{:?}", out.stdout_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_prompt_is_answered_through_stdin_without_echo() {
    // The demo catalog's interactive job, as a person would meet it.
    let server = TestServer::start(&[]);
    let mut client = server.client().await;
    let start = pb::StartJob { terminal: Some(pb::Terminal::default()), ..job("prompt", &[]) };
    let mut call = OpenCall::open(&mut client, start).await.expect("open");
    call.wait_stdout("Name: ").await;
    call.send(stdin_msg(b"alice\n")).await;
    call.wait_stdout("Password: ").await;
    call.send(stdin_msg(b"hunter2\n")).await;
    let out = call.finish().await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    // The name is echoed as typed; the password is not.
    assert_eq!(
        out.stdout_text(),
        "Name: alice\r\nPassword: \r\nHello, alice. Your password has 7 characters.\r\n",
        "{out:?}"
    );

    // Without a terminal the job refuses, as such programs do.
    let out = run(&mut client, job("prompt", &[])).await;
    assert_eq!(out.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a terminal"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bash_read_s_takes_a_password_without_echo() {
    let has_bash = std::process::Command::new("bash").arg("-c").arg("true").status().is_ok_and(|s| s.success());
    if !tool(has_bash, "bash") {
        return;
    }
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let script = "read -r -s -p 'Password: ' pw; echo; echo \"got ${#pw}: $pw\"";
    let start = pb::StartJob { terminal: Some(pb::Terminal::default()), ..raw(&["bash", "-c", script]) };
    let mut call = OpenCall::open(&mut client, start).await.expect("open");
    call.wait_stdout("Password: ").await;
    call.send(stdin_msg(b"hunter2\n")).await;
    let out = call.finish().await;
    assert_eq!(out.code(), Some(0), "{out:?}");
    // Only the job itself shows the password; the terminal never echoed it.
    assert_eq!(out.stdout_text(), "Password: \r\ngot 7: hunter2\r\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_echo_starts_the_terminal_with_echo_off() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let script = "echo ready; read -r line; echo \"line=$line\"";
    for (no_echo, expected) in [(true, "ready\r\nline=secret\r\n"), (false, "ready\r\nsecret\r\nline=secret\r\n")] {
        let terminal = Some(pb::Terminal { no_echo, ..Default::default() });
        let mut call = OpenCall::open(&mut client, pb::StartJob { terminal, ..sh(script) }).await.expect("open");
        call.wait_stdout("ready").await;
        call.send(stdin_msg(b"secret\n")).await;
        let out = call.finish().await;
        assert_eq!(out.stdout_text(), expected, "no_echo = {no_echo}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_interrupts_the_foreground_program_and_the_shell_survives() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let mut call =
        OpenCall::open(&mut client, pb::StartJob { terminal: Some(pb::Terminal::default()), ..raw(&["sh", "-i"]) })
            .await
            .expect("open");
    let shell = call.started().await;
    call.send(stdin_msg(b"sleep 1000\n")).await;
    let mut sleeper = None;
    assert!(
        wait_until_async(Duration::from_secs(10), || {
            sleeper = session_members(shell).into_iter().find(|p| p.comm == "sleep");
            sleeper.is_some()
        })
        .await,
        "the shell never started sleep: {:?}",
        call.outcome
    );
    let sleeper = sleeper.expect("found above");
    call.send(stdin_msg(b"\x03")).await;
    assert_all_gone(&[sleeper], Duration::from_secs(5));
    call.send(stdin_msg(b"echo alive $?\n")).await;
    call.wait_stdout("alive 130").await;
    call.send(stdin_msg(b"exit 7\n")).await;
    let out = call.finish().await;
    assert_eq!(out.code(), Some(7), "the shell did not survive Ctrl-C: {out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn close_stdin_types_eof_once_and_the_terminal_stays() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    // The first `cat` ends at the EOF key; the terminal is not hung up, so the shell goes on writing to it; a
    // second EOF would end the second `cat` too (nothing more is typed: the job times out there).
    let script = "cat; echo cat-done; [ -t 1 ] && echo still-a-tty; cat; echo second-eof";
    for half_close in [false, true] {
        let start = pb::StartJob { timeout: duration(Duration::from_secs(3)), ..tty_sh(script) };
        let mut call = OpenCall::open(&mut client, start).await.expect("open");
        call.started().await;
        call.send(stdin_msg(b"hello\n")).await;
        if half_close {
            call.half_close();
        } else {
            call.send(close_stdin_msg()).await;
        }
        let out = call.finish().await;
        assert_eq!(out.reason(), Some(pb::ExitReason::TimedOut), "half_close = {half_close}: {out:?}");
        // Echoed, then copied by cat, then the shell carries on.
        assert_eq!(out.stdout_text(), "hello\r\nhello\r\ncat-done\r\nstill-a-tty\r\n", "half_close = {half_close}");
    }
    // A job that ends on its own gets no EOF key typed after it: its terminal is left as it was.
    let out = run(&mut client, pb::StartJob { timeout: duration(Duration::from_secs(5)), ..tty_sh("echo done") }).await;
    assert_eq!(out.stdout_text(), "done\r\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_megabyte_written_just_before_exit_arrives_complete() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    // 65536 lines of 16 bytes, then an immediate exit: nothing may be lost between the exit and EIO.
    let out = run(&mut client, tty_sh("yes 0123456789abcde | head -c 1048576; exit 3")).await;
    assert_eq!(out.code(), Some(3), "{:?}", out.status);
    let expected = "0123456789abcde\r\n".repeat(65536);
    assert_eq!(out.stdout.len(), expected.len(), "bytes lost or added");
    assert!(out.stdout == expected.as_bytes(), "output differs");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_read_holds_the_job_back_not_the_server_memory() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    assert_serving(&mut client).await;
    let before = rss_kib(server.pid);
    let mut call = OpenCall::open(&mut client, tty_sh("exec cat /dev/zero")).await.expect("open");
    let pid = program_pid(call.started().await);
    let worker = proc_info(pid).expect("worker");
    // However long nobody reads, the job stays blocked in its write to the terminal.
    let blocked = wait_until_async(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/wchan"))
            .is_ok_and(|w| w.contains("tty") || w.contains("wait_woken"))
            && proc_info(pid).is_some_and(|p| p.state == 'S')
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = rss_kib(server.pid);
    eprintln!("server RSS {before} KiB before, {during} KiB with an unread terminal flood");
    assert!(blocked, "the flood is not held back");
    assert!(during < before + 16 * 1024, "server RSS grew from {before} KiB to {during} KiB");
    drop(call);
    assert_all_gone(&[worker], Duration::from_secs(5));
    assert_serving(&mut client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_kills_a_three_process_tree_started_from_the_terminal() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let (call, tree) = OpenCall::open_tree(&mut client, tty_sh(TREE), 3).await;
    drop(call);
    assert_all_gone(&tree, Duration::from_secs(5));
    server.assert_no_zombies();
    assert_serving(&mut client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn timeouts_and_signals_work_as_for_pipe_jobs() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let start = pb::StartJob { timeout: duration(Duration::from_millis(300)), ..tty_sh("exec sleep 1000") };
    let out = run(&mut client, start).await;
    assert_eq!(out.reason(), Some(pb::ExitReason::TimedOut), "{out:?}");
    let mut call = OpenCall::open(
        &mut client,
        tty_sh("trap 'echo got-usr1; exit 4' USR1; echo ready; while :; do sleep 0.05; done"),
    )
    .await
    .expect("open");
    call.wait_stdout("ready").await;
    call.send(signal_msg(pb::Signal::Usr1)).await;
    let out = call.finish().await;
    assert_eq!(out.code(), Some(4), "{out:?}");
    assert!(out.stdout_text().contains("got-usr1\r\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_that_left_the_session_but_holds_the_terminal_is_killed_without_cgroups() {
    let server = TestServer::start(&["--allow-raw-commands", "--cgroups", "off"]);
    let mut client = server.client().await;
    let tag = unique_tag(11);
    let script = format!("setsid sleep {tag} & echo ready; wait");
    let mut call = OpenCall::open(&mut client, tty_sh(&script)).await.expect("open");
    let worker = call.started().await;
    call.wait_stdout("ready").await;
    let mut escaper = Vec::new();
    assert!(wait_until(Duration::from_secs(5), || {
        escaper = tagged(&tag);
        escaper.len() == 1
    }));
    assert_ne!(escaper[0].session, worker, "the escaper did not leave the job's session");
    call.send(signal_msg(pb::Signal::Kill)).await;
    let out = call.finish().await;
    assert_eq!(out.signal(), Some(9), "{out:?}");
    // The escaper is in a session of its own, but its stdio is the job's terminal.
    assert!(wait_until(Duration::from_secs(5), || tagged(&tag).is_empty()), "escaper survived: {:?}", tagged(&tag));
    server.assert_no_children();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_terminal_jobs_leave_no_pty_fd_in_the_server() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let mut client = server.client().await;
    let before = pty_fds(server.pid);
    assert!(before.is_empty(), "the server holds ptys before any job: {before:?}");
    for i in 0..200 {
        let out = run(&mut client, tty_sh("echo x")).await;
        assert_eq!(out.stdout_text(), "x\r\n", "job {i}: {out:?}");
    }
    // The last job's master is closed just after its report: wait for that, never longer.
    assert!(wait_until(Duration::from_secs(5), || pty_fds(server.pid).is_empty()), "{:?}", pty_fds(server.pid));
    server.assert_no_children();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_terminal_requests_get_precise_statuses() {
    let server = TestServer::with_config(
        "allow_raw_commands = true\nmax_terminals = 1\n[[job]]\nname = \"plain\"\ncommand = [\"true\"]\nterminal = false\n",
        &[],
    );
    let mut client = server.client().await;
    // A size the kernel cannot hold.
    let start = pb::StartJob { terminal: Some(pb::Terminal { rows: 70_000, ..Default::default() }), ..sh("true") };
    assert_eq!(run(&mut client, start).await.error_code(), Some(tonic::Code::InvalidArgument));
    // A catalog job that says `terminal = false`; `ListJobs` says so too.
    let start = pb::StartJob { terminal: Some(pb::Terminal::default()), ..job("plain", &[]) };
    let out = run(&mut client, start).await;
    assert_eq!(out.error_code(), Some(tonic::Code::PermissionDenied), "{out:?}");
    let jobs = client.list_jobs(pb::ListJobsRequest {}).await.expect("ListJobs").into_inner().jobs;
    assert_eq!(jobs.iter().map(|j| (j.name.as_str(), j.terminal_allowed)).collect::<Vec<_>>(), [("plain", false)]);
    // `resize` to a job without a terminal, and a zero size to one with.
    for (start, resize) in
        [(sh("echo ready; sleep 1000"), resize_msg(30, 90)), (tty_sh("echo ready; sleep 1000"), resize_msg(0, 80))]
    {
        let mut call = OpenCall::open(&mut client, start).await.expect("open");
        let pid = call.started().await;
        let worker = proc_info(pid).expect("worker");
        call.wait_stdout("ready").await;
        call.send(resize).await;
        let out = call.finish().await;
        assert_eq!(out.error_code(), Some(tonic::Code::InvalidArgument), "{out:?}");
        assert_all_gone(&[worker], Duration::from_secs(5));
    }
    // One terminal job at most (max_terminals = 1): a second is refused at once, a pipe job is not. (The
    // last call's terminal is given back with its slot.)
    settled_status(&mut client).await;
    let mut first = OpenCall::open(&mut client, tty_sh("echo ready; sleep 1000")).await.expect("open");
    first.wait_stdout("ready").await;
    let second = run(&mut client, tty_sh("true")).await;
    assert_eq!(second.error_code(), Some(tonic::Code::ResourceExhausted), "{second:?}");
    assert!(second.status.as_ref().is_some_and(|s| s.message().contains("max_terminals")), "{second:?}");
    assert_eq!(run(&mut client, sh("echo pipes")).await.stdout_text(), "pipes\n");
    drop(first);
    // Its terminal is given back with the end of its call.
    let again = run_until_it_runs(&mut client, tty_sh("echo again")).await;
    assert_eq!(again.stdout_text(), "again\r\n", "{again:?}");
    server.assert_no_children();
}

/// Runs `start` until it runs (the resource it needs is given back just after another call ended), for up
/// to 5 s; returns the last outcome.
async fn run_until_it_runs(
    client: &mut forkpool::pb::executor_client::ExecutorClient<tonic::transport::Channel>,
    start: pb::StartJob,
) -> Outcome {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let out = run(client, start.clone()).await;
        if out.exited.is_some() || std::time::Instant::now() >= deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn running_out_of_ptys_is_resource_exhausted_and_the_server_recovers() {
    if !tool(
        std::process::Command::new("unshare").arg("--help").output().is_ok_and(|o| o.status.success()),
        "unshare(1)",
    ) {
        return;
    }
    // The server alone gets a devpts instance of two ptys (a private mount namespace): the shortage is
    // real, and nothing else on the machine feels it.
    let setup = "mount -t devpts -o newinstance,ptmxmode=0666,max=2 devpts /dev/pts \
                 && mount --bind /dev/pts/ptmx /dev/ptmx";
    let mut command = std::process::Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("{setup} && exec {BIN} serve --listen 127.0.0.1:0 --allow-raw-commands --workers 4"))
        .env("RUST_LOG", "forkpool=debug,info");
    let server = TestServer::start_command(command);
    let mut client = server.client().await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut call = OpenCall::open(&mut client, tty_sh("echo ready; sleep 1000")).await.expect("open");
        call.wait_stdout("ready").await;
        held.push(call);
    }
    let refused = run(&mut client, tty_sh("true")).await;
    assert_eq!(refused.error_code(), Some(tonic::Code::ResourceExhausted), "{refused:?}");
    assert!(refused.status.as_ref().is_some_and(|s| s.message().contains("pseudo-terminal")), "{refused:?}");
    assert_serving(&mut client).await;
    held.pop();
    let again = run_until_it_runs(&mut client, tty_sh("echo again")).await;
    assert_eq!(again.stdout_text(), "again\r\n", "{again:?}");
}
