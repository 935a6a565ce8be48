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
