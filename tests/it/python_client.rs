//! The Python client example runs against a real server: a job, streamed stdin, and a cancel whose
//! processes it checks are gone. Needs `pip install -r examples/python/requirements.txt`; without it the
//! test says SKIPPED, unless `FORKPOOL_REQUIRE_TOOLS=1` (CI), where it fails.

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
    for line in
        ["echo: hello from python | exit code 0", "cat: streamed through stdin", "cancelled: 3 processes gone", "ok"]
    {
        assert!(stdout.lines().any(|l| l.starts_with(line)), "{line:?} missing from:\n{stdout}");
    }
    server.assert_no_children();
}
