//! Outcomes in the world, from `/proc`: processes, sessions, fds, memory, and tagged job processes.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::BTreeSet;
use std::time::Duration;

use super::server::wait_until;

/// One process, from `/proc/PID/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub start_time: u64,
}

pub fn proc_info(pid: i32) -> Option<ProcInfo> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 2..].split_whitespace().collect();
    Some(ProcInfo {
        pid,
        comm,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

pub fn all_processes() -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).filter_map(proc_info).collect()
}

/// The job's processes in session `sid` (a job's worker pid). In a pid namespace, the worker is forkpool's init,
/// which is not the job's: it is left out (the tests check it is gone with `assert_no_children`).
pub fn session_members(sid: i32) -> Vec<ProcInfo> {
    all_processes().into_iter().filter(|p| p.session == sid && p.comm != "forkpool-init").collect()
}

/// The job's program: the worker itself, or, where the worker is forkpool's init (a pid namespace), the
/// init's first child.
pub fn program_pid(worker: i32) -> i32 {
    if proc_info(worker).is_none_or(|p| p.comm != "forkpool-init") {
        return worker;
    }
    let mut found = -1;
    wait_until(Duration::from_secs(5), || {
        found =
            all_processes().into_iter().filter(|p| p.ppid == worker).min_by_key(|p| p.start_time).map_or(-1, |p| p.pid);
        found > 0
    });
    found
}

/// The pid, as the host sees it, of the process a job knows as `ns_pid` (what `$$` and `$!` print in a job
/// in a pid namespace), in the pid namespace of worker `worker` (its init); `ns_pid` itself when the worker
/// is in the host's namespace.
pub fn host_pid(worker: i32, ns_pid: i32) -> i32 {
    let ns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let Some(job_ns) = ns(worker) else { return ns_pid };
    if ns(std::process::id() as i32).as_ref() == Some(&job_ns) {
        return ns_pid;
    }
    all_processes()
        .into_iter()
        .find(|p| {
            ns(p.pid).as_ref() == Some(&job_ns)
                && status_field(p.pid, "NSpid")
                    .and_then(|v| v.split_whitespace().last().and_then(|n| n.parse::<i32>().ok()))
                    == Some(ns_pid)
        })
        .map_or(-1, |p| p.pid)
}

/// Whether the very process `p` (same pid and start time) still exists (a zombie counts as existing).
pub fn exists(p: &ProcInfo) -> bool {
    proc_info(p.pid).is_some_and(|now| now.start_time == p.start_time)
}

/// Asserts every process in `procs` is gone (reaped) within `timeout`.
pub fn assert_all_gone(procs: &[ProcInfo], timeout: Duration) {
    let ok = wait_until(timeout, || procs.iter().all(|p| !exists(p)));
    let left: Vec<_> = procs.iter().filter(|p| exists(p)).collect();
    assert!(ok, "processes still exist: {left:?}");
}

/// Resident memory of `pid`, KiB.
pub fn rss_kib(pid: i32) -> u64 {
    status_field(pid, "VmRSS").and_then(|v| v.trim_end_matches(" kB").trim().parse().ok()).unwrap_or(0)
}

/// The worker's stdio, signal state and identity, from `/proc`.
pub fn fds_of(pid: i32) -> BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

pub fn status_field(pid: i32, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(&format!("{key}:")).map(|v| v.trim().to_string()))
}

/// Live (not zombie) processes whose first argument is `tag` (`sleep <tag>`, `yes <tag>`): tests tag their
/// jobs' processes with a unique argument to find whatever of them is left anywhere on the machine.
pub fn tagged(tag: &str) -> Vec<ProcInfo> {
    all_processes()
        .into_iter()
        .filter(|p| p.state != 'Z')
        .filter(|p| {
            std::fs::read(format!("/proc/{}/cmdline", p.pid))
                .is_ok_and(|c| c.split(|b| *b == 0).nth(1).is_some_and(|arg| arg == tag.as_bytes()))
        })
        .collect()
}

/// A tag for [`tagged`], unique to this test process and `salt` (0 to 99). Tests run in parallel: each test
/// takes salts no other test uses (edges 1-3, terminal 11, cli_terminal 12-13, crash 20-91).
pub fn unique_tag(salt: u32) -> String {
    format!("{}", 7_000_000 + (std::process::id() % 10_000) * 100 + salt)
}
