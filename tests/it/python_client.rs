//! The Python client examples run against a real server: a job, streamed stdin, a cancel whose processes it
//! checks are gone, and a file conversion; and terminal jobs driven pexpect-style from asyncio. Needs `pip
//! install -r examples/python/requirements.txt`; without it the tests say SKIPPED, unless
//! `FORKPOOL_REQUIRE_TOOLS=1` (CI), where they fail.

use std::process::Command;

use crate::common::*;

/// Runs `examples/python/<example>` against a fresh server and checks that it succeeds and prints every line
/// that starts with one of `lines`; `false` if the Python packages are missing (and allowed to be).
fn run_example(example: &str, lines: &[&str]) -> bool {
    let available = Command::new("python3").args(["-c", "import grpc, grpc_tools"]).status().is_ok_and(|s| s.success());
    if !tool(available, "grpcio / grpcio-tools") {
        return false;
    }
    let server = TestServer::start(&["--allow-raw-commands"]);
    let script = format!("{}/examples/python/{example}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .args([script.as_str(), "--server", server.url.trim_start_matches("http://")])
        .output()
        .expect("run the Python example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{example}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    for line in lines {
        assert!(stdout.lines().any(|l| l.starts_with(line)), "{example}: {line:?} missing from:\n{stdout}");
    }
    server.assert_no_children();
    true
}

#[test]
fn the_python_example_runs_a_job_streams_stdin_cancels_and_converts_a_file() {
    run_example(
        "forkpool_client.py",
        &[
            "echo: hello from python | exit code 0",
            "cat: streamed through stdin",
            "cancelled: 3 processes gone",
            "sort: ['apple', 'fig', 'pear'] | {'sorted.txt': 'OUTPUT_STATE_SENT'}",
            "ok",
        ],
    );
}

#[test]
fn the_python_terminal_example_answers_prompts_like_pexpect() {
    run_example(
        "terminal_session.py",
        &[
            "prompt: greeted alice, 7-character password, password echoed: False, exit code 0",
            "shell: Ctrl-C ended sleep with status 130, resized to 50x132, exit code 7",
            "ok",
        ],
    );
}
