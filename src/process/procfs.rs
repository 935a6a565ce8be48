//! What `/proc` says about a process: its stat line, its cgroup, the server's children, the stdio it holds.
//! Read-only helpers, safe to call on zombies (their `/proc` entry lives until they are reaped).

/// The last component of a process's cgroup v2 path (readable for zombies too).
pub(crate) fn v2_cgroup_name(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(path.rsplit('/').next()?.to_string())
}

/// The fields of `/proc/PID/stat` the reaper needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// Command name (`comm`).
    pub comm: String,
    /// State letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Parent pid.
    pub ppid: i32,
    /// Process group id.
    pub pgrp: i32,
    /// Session id.
    pub session: i32,
}

impl ProcStat {
    /// Reads `/proc/PID/stat`; `None` if the process is gone.
    pub fn read(pid: i32) -> Option<ProcStat> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Parses the text of a stat file. `comm` may contain spaces and parentheses, so it is delimited by the
    /// first `(` and the last `)`.
    pub fn parse(text: &str) -> Option<ProcStat> {
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let comm = text.get(open + 1..close)?.to_string();
        let mut rest = text.get(close + 1..)?.split_whitespace();
        let state = rest.next()?.chars().next()?;
        let ppid = rest.next()?.parse().ok()?;
        let pgrp = rest.next()?.parse().ok()?;
        let session = rest.next()?.parse().ok()?;
        Some(ProcStat { comm, state, ppid, pgrp, session })
    }
}

/// The server's children, from `/proc/self/task/*/children` (an orphan is adopted by one of its threads).
pub(crate) fn server_children() -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| text.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<i32>>())
        .collect()
}

/// Whether `pid`'s stdin, stdout or stderr is one of `links` (as `/proc/PID/fd/N` reads: `pipe:[INODE]`,
/// `/dev/pts/N`). A pipe's inode is never reused while the pipe is open; a pty's number is not reused while
/// its master is (the server holds a terminal job's master until the job's end is complete).
pub(crate) fn holds_stdio(pid: i32, links: &[String]) -> bool {
    (0..3).any(|fd| {
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .is_ok_and(|target| target.to_str().is_some_and(|t| links.iter().any(|l| l == t)))
    })
}

#[cfg(test)]
mod tests {
    use super::ProcStat;

    #[test]
    fn stat_with_awkward_comm_parses() {
        let s = ProcStat::parse("42 (a) b (c)) Z 1 40 41 0 -1").expect("parses");
        assert_eq!(s, ProcStat { comm: "a) b (c)".into(), state: 'Z', ppid: 1, pgrp: 40, session: 41 });
    }
}
