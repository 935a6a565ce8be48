//! The benchmark cannot rot: a short smoke run of `forkpool bench --quick` (seconds, no thresholds) must
//! print every row of the table with a figure in it.

use std::process::Command;

#[test]
fn the_quick_benchmark_prints_the_whole_table() {
    let out = Command::new(crate::common::BIN).args(["bench", "--quick"]).output().expect("run forkpool bench");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed: {}\n{table}", String::from_utf8_lossy(&out.stderr));
    for figure in [
        "start latency",
        "unary gRPC round trip",
        "throughput, 8 in flight",
        "throughput, 64 in flight",
        "cancel a 3-process tree",
        "stdout",
        "memory per call",
        "server size",
        "input file",
        "output file",
    ]
    .into_iter()
    .chain([
        "isolation: none",
        "isolation: dynamic users",
        "isolation: seccomp filter",
        "isolation: IPC + UTS namespaces",
        "isolation: pid namespace",
        "isolation: mount namespace",
        "isolation: network namespace",
        "isolation: default",
        "isolation: default + read-only root",
    ]) {
        let row =
            table.lines().find(|l| l.contains(figure)).unwrap_or_else(|| panic!("no {figure:?} row in:\n{table}"));
        assert!(row.chars().any(|c| c.is_ascii_digit()), "no figure in {row:?}");
    }
    println!("{table}");
}

#[test]
fn the_benchmark_drives_a_running_server_and_runs_a_load() {
    let server = crate::common::TestServer::start(&["--allow-raw-commands"]);
    let out = Command::new(crate::common::BIN)
        .args(["bench", "--target", &server.url, "--jobs", "40", "--concurrency", "4", "--", "sh", "-c", "exit 0"])
        .output()
        .expect("run forkpool bench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for line in ["jobs         40 (40 ok, 0 failed), 4 in flight", "rate ", "latency      p50 "] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    // An error status is counted, not fatal, and named.
    let out = Command::new(crate::common::BIN)
        .args(["bench", "--target", &server.url, "--jobs", "3", "--job", "no-such-job"])
        .output()
        .expect("run forkpool bench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && text.contains("3 × NotFound"), "{text}");
    let out = Command::new(crate::common::BIN)
        .args(["bench", "--target", &server.url, "--quick"])
        .output()
        .expect("run forkpool bench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for row in [
        "start-to-exited latency",
        "unary gRPC round trip",
        "throughput, 8 in flight",
        "throughput, 64 in flight",
        "stdout",
    ] {
        assert!(text.lines().any(|l| l.contains(row) && l.chars().any(|c| c.is_ascii_digit())), "{row}: {text}");
    }
    server.assert_no_children();
}
