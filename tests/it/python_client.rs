//! The Python client examples run against a real server: a job, streamed stdin, and a cancel whose
//! processes it checks are gone; and terminal jobs driven pexpect-style from asyncio. Needs `pip install -r
//! examples/python/requirements.txt`; without it the tests say SKIPPED, unless `FORKPOOL_REQUIRE_TOOLS=1`
//! (CI), where they fail.

use std::process::Command;

use crate::common::*;

#[test]
fn the_python_example_runs_a_job_streams_stdin_and_cancels() {
    let available = Command::new("python3").args(["-c", "import grpc, grpc_tools"]).status().is_ok_and(|s| s.success());
    if !tool(available, "grpcio / grpcio-tools") {
        return;
    }
    let server = TestServer::start(&["--allow-raw-commands"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/forkpool_client.py");
    let out = Command::new("python3")
        .args([script, "--server", server.url.trim_start_matches("http://")])
        .output()
        .expect("run the Python example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "echo: hello from python | exit code 0",
        "cat: streamed through stdin",
        "cancelled: 3 processes gone",
        "sort: ['apple', 'fig', 'pear'] | {'sorted.txt': 'OUTPUT_STATE_SENT'}",
        "ok",
    ] {
        assert!(stdout.lines().any(|l| l.starts_with(line)), "{line:?} missing from:\n{stdout}");
    }
    server.assert_no_children();
}

#[test]
fn the_python_terminal_example_answers_prompts_like_pexpect() {
    let available = Command::new("python3").args(["-c", "import grpc, grpc_tools"]).status().is_ok_and(|s| s.success());
    if !tool(available, "grpcio / grpcio-tools") {
        return;
    }
    let server = TestServer::start(&["--allow-raw-commands"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/terminal_session.py");
    let out = Command::new("python3")
        .args([script, "--server", server.url.trim_start_matches("http://")])
        .output()
        .expect("run the Python terminal example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "prompt: greeted alice, 7-character password, password echoed: False, exit code 0",
        "shell: Ctrl-C ended sleep with status 130, resized to 50x132, exit code 7",
        "ok",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} missing from:\n{stdout}");
    }
    server.assert_no_children();
}
