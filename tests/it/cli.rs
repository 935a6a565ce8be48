//! The `forkpool` CLI as a person uses it: exit codes, and the queue position shown on stderr only when
//! stderr is a terminal (a real pty from `script(1)`).

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn run_shows_the_queue_position_only_on_a_terminal() {
    let server = TestServer::start(&["--allow-raw-commands", "--workers", "1"]);
    let mut client = server.client().await;
    let mut busy = OpenCall::open(&mut client, raw(&["sleep", "1000"])).await.expect("open");
    busy.started().await;
    let run = format!("{BIN} run --server {} --job echo -- queued-then-ran", server.url);

    // On a terminal: the position appears while the call waits.
    let on_tty = Command::new("script")
        .args(["-q", "-e", "-c", &run, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script(1)");
    // Through pipes: no position, only the job's output.
    let piped = Command::new(BIN)
        .args(["run", "--server", &server.url, "--job", "echo", "--", "queued-then-ran"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("forkpool run");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get_status(&mut client).await.queued < 2 {
        assert!(std::time::Instant::now() < deadline, "the two CLI calls never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(busy); // frees the worker: both queued calls run
    let tty_out = on_tty.wait_with_output().expect("script output");
    let tty_text = String::from_utf8_lossy(&tty_out.stdout);
    assert!(tty_out.status.success(), "{tty_text}");
    assert!(tty_text.contains("forkpool: queued, position"), "no position on the terminal: {tty_text:?}");
    assert!(tty_text.contains("queued-then-ran"), "{tty_text:?}");
    let piped_out = piped.wait_with_output().expect("output");
    assert_eq!(String::from_utf8_lossy(&piped_out.stdout), "queued-then-ran\n");
    assert!(piped_out.stderr.is_empty(), "stderr is not a terminal: {:?}", String::from_utf8_lossy(&piped_out.stderr));
}

#[test]
fn run_exits_with_the_jobs_code_or_128_plus_its_signal() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let code = |args: &[&str]| {
        Command::new(BIN).args(["run", "--server", &server.url, "--"]).args(args).status().expect("run").code()
    };
    assert_eq!(code(&["sh", "-c", "exit 42"]), Some(42));
    assert_eq!(code(&["sh", "-c", "kill -TERM $$"]), Some(128 + 15));
    assert_eq!(code(&["/nonexistent/program"]), Some(127));
}

#[test]
fn run_sends_input_files_and_writes_output_files_locally() {
    let server = TestServer::start(&["--allow-raw-commands"]);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::write(dir.join("notes.txt"), "pear\napple\nfig\n").expect("write");
    let run = |args: &[&str]| {
        Command::new(BIN).current_dir(&dir).args(["run", "--server", &server.url]).args(args).output().expect("run")
    };
    // The demo conversion: a local file in, the result written locally, one summary line.
    let out = run(&["--job", "sort", "--input", "notes.txt:input.txt", "--output", "sorted.txt:out"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::read_to_string(dir.join("out/sorted.txt")).expect("sorted.txt written"), "apple\nfig\npear\n");
    assert!(stderr.contains("forkpool: output sorted.txt: 15 bytes -> out/sorted.txt"), "{stderr}");
    // A pattern, nested paths, a missing output; a symlink planted locally is never followed.
    std::fs::create_dir_all(dir.join("pngs")).expect("mkdir");
    std::os::unix::fs::symlink("/tmp", dir.join("pngs/evil")).expect("symlink");
    let escaped = format!("forkpool-escaped-{}.txt", std::process::id());
    let script =
        format!("mkdir -p pages evil; echo one > pages/1.txt; echo two > pages/2.txt; echo x > evil/{escaped}");
    let out = run(&["--output", "pages/*.txt:pngs", "--output", "nope.txt", "--", "sh", "-c", &script]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::read_to_string(dir.join("pngs/pages/2.txt")).expect("written"), "two\n");
    assert!(stderr.contains("forkpool: output nope.txt: missing"), "{stderr}");
    let out = run(&["--output", &format!("evil/{escaped}:pngs"), "--", "sh", "-c", &script]);
    assert!(!out.status.success(), "wrote through a local symlink: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!std::path::Path::new("/tmp").join(&escaped).exists());
    // Bad paths are refused before anything is sent.
    let out = run(&["--input", "notes.txt:../x", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}
