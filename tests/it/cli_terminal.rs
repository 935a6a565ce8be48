//! `forkpool run -t` through a real local pty (opened here, the CLI's controlling terminal through
//! `setsid -c`): a prompt answered, the window size sent at start and on SIGWINCH, Ctrl-C reaching the job
//! and not the CLI, and the local terminal restored on every way out.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{LocalModes, Termios, Winsize, tcgetattr, tcsetwinsize};

use crate::common::*;

/// A local terminal, as a person's: the test holds the master (the keyboard and screen), the CLI gets the
/// slave as its stdio and controlling terminal.
struct LocalTerminal {
    master: std::fs::File,
    slave: OwnedFd,
    screen: Arc<Mutex<Vec<u8>>>,
}

impl LocalTerminal {
    fn open(rows: u16, cols: u16) -> LocalTerminal {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let flags = rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC;
        let slave = rustix::fs::open(name.as_c_str(), flags, rustix::fs::Mode::empty()).expect("open the slave");
        tcsetwinsize(&master, Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 }).expect("size");
        let master = std::fs::File::from(master);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, keep) = (master.try_clone().expect("dup the master"), Arc::clone(&screen));
        // Reads until EIO (the slave closed everywhere, at the end of the test).
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                keep.lock().expect("screen").extend_from_slice(&buf[..n]);
            }
        });
        LocalTerminal { master, slave, screen }
    }

    /// Starts `forkpool run -t ARGS` with this terminal as its stdio and controlling terminal.
    fn run(&self, args: &[&str]) -> Child {
        let stdio = || Stdio::from(self.slave.try_clone().expect("dup the slave"));
        Command::new("setsid")
            .args(["-c", BIN, "run", "-t"])
            .args(args)
            .env("TERM", "xterm-test")
            .stdin(stdio())
            .stdout(stdio())
            .stderr(stdio())
            .spawn()
            .expect("setsid -c forkpool run -t")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().expect("screen")).into_owned()
    }

    fn wait_for(&self, needle: &str) {
        assert!(
            wait_until(Duration::from_secs(10), || self.screen().contains(needle)),
            "{needle:?} never appeared in {:?}",
            self.screen()
        );
    }

    fn type_keys(&self, keys: &[u8]) {
        (&self.master).write_all(keys).expect("type");
    }

    fn settings(&self) -> Termios {
        tcgetattr(&self.slave).expect("tcgetattr")
    }

    fn resize(&self, rows: u16, cols: u16) {
        tcsetwinsize(&self.master, Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 }).expect("resize");
    }
}

/// The parts of the settings raw mode changes.
fn modes(t: &Termios) -> impl PartialEq + std::fmt::Debug {
    (t.input_modes, t.output_modes, t.local_modes, t.control_modes)
}

fn wait_exit(child: &mut Child) -> i32 {
    let mut status = None;
    assert!(
        wait_until(Duration::from_secs(15), || {
            status = child.try_wait().expect("wait");
            status.is_some()
        }),
        "the CLI did not exit"
    );
    status.and_then(|s| s.code()).expect("an exit code")
}

#[test]
fn a_prompt_is_answered_and_the_window_size_follows_the_local_terminal() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let local = LocalTerminal::open(30, 100);
    let cooked = local.settings();
    let script = "stty size; echo TERM=$TERM; printf 'Name: '; read -r n; echo \"hi $n\"
        trap 'stty size; exit 5' WINCH; echo waiting; while :; do sleep 0.05; done";
    let mut cli = local.run(&["--server", &server.url, "--", "sh", "-c", script]);
    local.wait_for("Name: ");
    let screen = local.screen();
    assert!(screen.contains("30 100\r\n") && screen.contains("TERM=xterm-test\r\n"), "{screen:?}");
    // Raw mode while the job runs: no local echo, no local line editing.
    let raw = local.settings();
    assert!(!raw.local_modes.intersects(LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG), "{raw:?}");
    // Enter in raw mode is a carriage return; the job's terminal turns it into a newline.
    local.type_keys(b"bob\r");
    local.wait_for("hi bob\r\n");
    local.wait_for("waiting");
    local.resize(40, 120);
    assert_eq!(wait_exit(&mut cli), 5, "{:?}", local.screen());
    // What the CLI wrote before it exited reaches this side's reader a moment later.
    local.wait_for("40 120\r\n");
    assert_eq!(modes(&local.settings()), modes(&cooked), "the terminal was not restored");
    server.assert_no_children();
}

#[test]
fn ctrl_c_interrupts_the_jobs_program_not_the_cli_and_the_terminal_is_restored() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let local = LocalTerminal::open(24, 80);
    let cooked = local.settings();
    let tag = unique_tag(13);
    let script = format!("trap 'echo caught-int' INT; sleep {tag}; echo after-sleep; exit 3");
    let mut cli = local.run(&["--server", &server.url, "--", "sh", "-c", &script]);
    // Ctrl-C once `sleep` runs in the foreground (before, it would only reach the shell).
    assert!(wait_until(Duration::from_secs(10), || tagged(&tag).len() == 1), "sleep never started");
    local.type_keys(b"\x03");
    // The CLI did not die of it (that would be 130): the job's sleep did, and the job went on to exit 3.
    assert_eq!(wait_exit(&mut cli), 3, "{:?}", local.screen());
    local.wait_for("caught-int\r\nafter-sleep\r\n");
    assert_eq!(modes(&local.settings()), modes(&cooked), "the terminal was not restored");
    server.assert_no_children();
}

#[test]
fn a_signal_to_the_cli_cancels_the_job_and_restores_the_terminal() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let local = LocalTerminal::open(24, 80);
    let cooked = local.settings();
    let tag = unique_tag(12);
    let script = format!("echo ready; exec sleep {tag}");
    let mut cli = local.run(&["--server", &server.url, "--", "sh", "-c", &script]);
    local.wait_for("ready");
    assert!(wait_until(Duration::from_secs(5), || tagged(&tag).len() == 1), "the job is not running");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(cli.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM the CLI");
    assert_eq!(wait_exit(&mut cli), 128 + 15);
    assert_eq!(modes(&local.settings()), modes(&cooked), "the terminal was left raw");
    assert!(wait_until(Duration::from_secs(5), || tagged(&tag).is_empty()), "the job outlived its call");
}

#[test]
fn a_server_that_dies_mid_call_leaves_the_terminal_restored() {
    let mut server = TestServer::start(&["--allow-raw-commands"]);
    let local = LocalTerminal::open(24, 80);
    let cooked = local.settings();
    let mut cli = local.run(&["--server", &server.url, "--", "sh", "-c", "echo ready; sleep 1000"]);
    local.wait_for("ready");
    assert!(wait_until(Duration::from_secs(5), || !local.settings().local_modes.contains(LocalModes::ICANON)));
    server.signal(nix::sys::signal::Signal::SIGKILL);
    server.wait_exit(Duration::from_secs(5)).expect("the server died");
    // The call failed under the CLI: 125, and the terminal is itself again.
    assert_eq!(wait_exit(&mut cli), 125, "{:?}", local.screen());
    assert_eq!(modes(&local.settings()), modes(&cooked), "the terminal was left raw");
}

#[test]
fn dash_t_without_a_local_terminal_is_a_clear_error() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let out = Command::new(BIN)
        .args(["run", "-t", "--server", &server.url, "--", "true"])
        .stdin(Stdio::null())
        .output()
        .expect("forkpool run -t");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("-t needs a terminal"), "{stderr}");
}
