//! The cost of each isolation level: start latency and CPU per job of `/bin/true` with every level off, each
//! level alone, the default (every level but the read-only root) and everything, all in the same run.
//!
//! CPU is the whole machine's busy time per job (`/proc/stat`): the server, the client, the job and the
//! kernel's own work (namespaces are torn down by kernel threads after the job, a network namespace's most of
//! all), which no process's own CPU time shows.

use std::time::Duration;

/// Every knob off: jobs run as root in the server's namespaces (still without capabilities and with
/// `no_new_privs`).
const NONE: &str = "dynamic_users = false\nprivate_ipc_and_hostname = false\npid_namespace = false\nprivate_tmp = false\nnetwork = \"host\"\nseccomp = false\n";

/// `(name, [isolation] table)` of each level measured; the first is the baseline.
pub(super) fn levels() -> Vec<(&'static str, String)> {
    let only = |line: &str| {
        let key = line.split(' ').next().unwrap_or_default();
        NONE.lines()
            .filter(|l| !l.starts_with(&format!("{key} ")))
            .chain(std::iter::once(line))
            .collect::<Vec<_>>()
            .join("\n")
    };
    vec![
        ("none", NONE.to_string()),
        ("dynamic users", only("dynamic_users = true")),
        ("seccomp filter", only("seccomp = true")),
        ("IPC + UTS namespaces", only("private_ipc_and_hostname = true")),
        ("pid namespace + init (+ mount namespace for /proc)", only("pid_namespace = true")),
        ("mount namespace, private /tmp", only("private_tmp = true")),
        ("network namespace", only("network = \"none\"")),
        ("default (all of the above)", String::new()),
        ("default + read-only root", "read_only_root = true\n".to_string()),
    ]
}

/// Writes the config of one level (read by its server at start-up).
pub(super) fn config(name: &str, table: &str) -> anyhow::Result<std::path::PathBuf> {
    let slug: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
    let path = std::env::temp_dir().join(format!("forkpool-bench-isolation-{slug}-{}.toml", std::process::id()));
    std::fs::write(&path, format!("[isolation]\n{table}\n"))?;
    Ok(path)
}

/// The machine's busy time so far, all CPUs (`/proc/stat`'s first line, less idle and iowait).
pub(super) fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    let busy: u64 = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    Duration::from_millis(busy * 10) // USER_HZ is 100 on Linux
}
