//! The guardian: nothing of a job survives the server, however the server dies.
//!
//! A worker dies with the server (parent-death signal), but what the worker started does not: when the server
//! is SIGKILLed, OOM-killed, aborts or panics, those processes are reparented to init and live on. So at
//! start-up, while the server is still single-threaded, it forks a tiny guardian process
//! (`forkpool-guard`). The two share one end each of a `SOCK_SEQPACKET` socket pair; the server's end is
//! close-on-exec and held by no other process, so the guardian reading end-of-file means exactly "the server
//! is gone". Then the guardian kills what it was told about and exits:
//!
//! - **cgroup mode**: the server's instance cgroup (every job cgroup is inside it): one write to its
//!   `cgroup.kill` (or freeze, SIGKILL each member, thaw on kernels before 5.14) kills every process of every
//!   job, escapers included. It then waits until the cgroup is empty and removes the job cgroups and the
//!   instance cgroup (v1 hierarchies and working directories are left to the next start).
//! - **fallback mode**: the jobs' sessions. Each worker announces its own session (= its pid) between
//!   `setsid` and `exec`, so nothing it starts can precede the announcement; the server adds the sessions of
//!   escapers it adopts and removes every session when its job is over. The guardian SIGKILLs each session's
//!   process group, then scans `/proc` for any process whose session or group is one of them, deciding and
//!   signalling through a pidfd so that a reused pid is never hit.
//!
//! Rules it keeps: single-threaded; no allocation after start (the session table and every buffer exist
//! before the first message); it ignores the signals a terminal or service manager sends to a group (the
//! server drains on those, the guardian waits for it); its kill phase is bounded (it exits within about a
//! second of the server); it kills only what it was told is a job's. A session number could only be reused
//! once every process of that session is gone, so the worst a reuse race within that second could hit is a
//! process whose pid wrapped around the whole pid space in that second.
//!
//! If the guardian itself dies while the server runs, the reaper logs it as an error and `GetStatus` says so:
//! the crash guarantee then rests on the next start's leftover clean-up alone.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, RawDir, openat, unlinkat};
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use rustix::process::{Pid, PidfdFlags, Signal};

/// Most sessions the guardian can track at once (several per running job at most).
const MAX_SESSIONS: usize = 1 << 16;
/// Longest message: a cgroup path.
const MESSAGE_BYTES: usize = 4096;
/// Most v1 hierarchy directories to remove (memory, pids, cpu).
const MAX_V1_DIRS: usize = 3;
/// The kill phase ends this long after the server's death, whatever is left.
const KILL_BUDGET: Duration = Duration::from_millis(900);

/// The server's handle on its guardian.
#[derive(Debug)]
pub struct Guardian {
    socket: OwnedFd,
    pid: i32,
}

impl Guardian {
    /// Forks the guardian. Must be called while the process is single-threaded (before the async runtime
    /// starts); refuses otherwise. `json` chooses the format of the one line it logs after a crash.
    pub fn start(json: bool) -> io::Result<Guardian> {
        let (server_end, guardian_end) =
            rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
        let pid = crate::spawn::fork_guardian(guardian_end, move |socket| guard(socket, json))?;
        Ok(Guardian { socket: server_end, pid })
    }

    /// The guardian's pid (a child of the server).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The socket a worker announces its session on, between `setsid` and `exec`.
    pub(crate) fn announce_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Kill everything in this cgroup v2 directory (the server's instance cgroup) when the server dies.
    pub fn watch_cgroup(&self, dir: &Path) {
        let mut message = b"c".to_vec();
        message.extend_from_slice(dir.as_os_str().as_encoded_bytes());
        self.send(&message);
    }

    /// Remove this cgroup directory (a v1 hierarchy's instance) and its job directories once the jobs are
    /// dead.
    pub fn watch_v1_dir(&self, dir: &Path) {
        let mut message = b"r".to_vec();
        message.extend_from_slice(dir.as_os_str().as_encoded_bytes());
        self.send(&message);
    }

    /// Kill session (and group) `sid` when the server dies; counted, so announcements may repeat.
    pub fn watch_session(&self, sid: i32) {
        self.send(format!("+{sid}").as_bytes());
    }

    /// Forget one announcement of session `sid`.
    pub fn forget_session(&self, sid: i32) {
        self.send(format!("-{sid}").as_bytes());
    }

    fn send(&self, message: &[u8]) {
        if message.len() > MESSAGE_BYTES {
            tracing::error!(bytes = message.len(), "a message for the guardian is too long; not sent");
            return;
        }
        if let Err(e) = rustix::net::send(&self.socket, message, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
            tracing::error!(error = %e, "cannot tell the guardian: a crash of the server may leave this job's processes");
        }
    }
}

/// What the guardian kills when the server is gone.
struct Watch {
    /// The instance cgroup, NUL-terminated; empty if none.
    cgroup: [u8; MESSAGE_BYTES + 1],
    /// v1 instance directories to remove, NUL-terminated.
    v1_dirs: [[u8; MESSAGE_BYTES + 1]; MAX_V1_DIRS],
    v1_count: usize,
    /// Sessions with their announcement counts.
    sessions: Vec<(i32, u32)>,
    /// Announcements dropped because the table was full (logged at the end).
    overflowed: u32,
}

impl Watch {
    fn apply(&mut self, message: &[u8]) {
        match message.split_first() {
            Some((b'c', path)) if path.len() < MESSAGE_BYTES && !path.contains(&0) => {
                self.cgroup[..path.len()].copy_from_slice(path);
                self.cgroup[path.len()] = 0;
            }
            Some((b'r', path)) if path.len() < MESSAGE_BYTES && !path.contains(&0) && self.v1_count < MAX_V1_DIRS => {
                let slot = &mut self.v1_dirs[self.v1_count];
                slot[..path.len()].copy_from_slice(path);
                slot[path.len()] = 0;
                self.v1_count += 1;
            }
            Some((b'+', number)) => {
                let Some(sid) = parse_pid(number) else { return };
                if let Some(entry) = self.sessions.iter_mut().find(|(s, _)| *s == sid) {
                    entry.1 += 1;
                } else if self.sessions.len() < self.sessions.capacity() {
                    self.sessions.push((sid, 1));
                } else {
                    self.overflowed += 1;
                }
            }
            Some((b'-', number)) => {
                let Some(sid) = parse_pid(number) else { return };
                if let Some(index) = self.sessions.iter().position(|(s, _)| *s == sid) {
                    self.sessions[index].1 -= 1;
                    if self.sessions[index].1 == 0 {
                        self.sessions.swap_remove(index);
                    }
                }
            }
            _ => {}
        }
    }

    fn cgroup(&self) -> Option<&CStr> {
        CStr::from_bytes_until_nul(&self.cgroup).ok().filter(|c| !c.is_empty())
    }

    fn has_session(&self, id: i32) -> bool {
        self.sessions.iter().any(|(s, _)| *s == id)
    }
}

/// The guardian's whole life, in the forked child: record what the server says until it is gone, then kill.
/// Returning ends the process.
fn guard(socket: OwnedFd, json: bool) {
    let mut watch = Watch {
        cgroup: [0; MESSAGE_BYTES + 1],
        v1_dirs: [[0; MESSAGE_BYTES + 1]; MAX_V1_DIRS],
        v1_count: 0,
        sessions: Vec::with_capacity(MAX_SESSIONS),
        overflowed: 0,
    };
    let mut message = [0u8; MESSAGE_BYTES];
    let mut dir_buffer = [MaybeUninit::<u8>::uninit(); 32 * 1024];
    let mut text = [0u8; 64 * 1024];
    loop {
        match rustix::net::recv(&socket, &mut message[..], RecvFlags::empty()) {
            Ok((0, _)) => break,
            Ok((n, _)) => watch.apply(&message[..n.min(MESSAGE_BYTES)]),
            Err(Errno::INTR) => {}
            // Not end-of-file, so the server may be alive: never kill on a doubt; look again shortly.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let began = Instant::now();
    let mut killed = 0u32;
    if let Some(cgroup) = watch.cgroup() {
        killed += kill_cgroup(cgroup, &mut dir_buffer, &mut text);
    }
    if !watch.sessions.is_empty() {
        killed += kill_sessions(&watch, &mut dir_buffer, &mut text, began);
    }
    if let Some(cgroup) = watch.cgroup()
        && remove_cgroup(cgroup, &mut dir_buffer, &mut text, began)
    {
        for dir in &watch.v1_dirs[..watch.v1_count] {
            if let Ok(dir) = CStr::from_bytes_until_nul(dir) {
                remove_jobs_and_dir(dir, &mut dir_buffer);
            }
        }
    }
    if killed > 0 || watch.overflowed > 0 {
        log_crash(json, killed, watch.overflowed, began.elapsed());
    }
}

/// Kills every process in the cgroup tree `dir` (the instance: its job cgroups hold the processes); returns
/// how many there were.
fn kill_cgroup(dir: &CStr, dir_buffer: &mut [MaybeUninit<u8>], text: &mut [u8]) -> u32 {
    let Ok(dirfd) = openat(CWD, dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) else {
        return 0;
    };
    // One write kills the whole tree (Linux 5.14+); else freeze it so nothing can fork, SIGKILL every member
    // (frozen tasks still die of a fatal signal), thaw.
    let kill_file = openat(&dirfd, c"cgroup.kill", OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty()).ok();
    let frozen = kill_file.is_none() && write_file(&dirfd, c"cgroup.freeze", b"1");
    let mut members = 0;
    let mut names = RawDir::new(&dirfd, dir_buffer);
    while let Some(Ok(entry)) = names.next() {
        let name = entry.file_name();
        if entry.file_type() != FileType::Directory || name.to_bytes().starts_with(b".") {
            continue;
        }
        let Ok(child) = openat(&dirfd, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        else {
            continue;
        };
        let length = read_file(&child, c"cgroup.procs", text);
        for pid in text[..length].split(|b| *b == b'\n').filter_map(parse_pid) {
            members += 1;
            if kill_file.is_none()
                && let Some(pid) = Pid::from_raw(pid)
            {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
    }
    // Counted first, killed now: all at once.
    if let Some(kill_file) = kill_file {
        let _ = rustix::io::write(&kill_file, b"1");
    }
    if frozen {
        write_file(&dirfd, c"cgroup.freeze", b"0");
    }
    members
}

/// Waits (within the budget) until the cgroup tree is empty, then removes its job cgroups and itself.
/// Returns whether it was empty.
fn remove_cgroup(dir: &CStr, dir_buffer: &mut [MaybeUninit<u8>], text: &mut [u8], began: Instant) -> bool {
    let Ok(dirfd) = openat(CWD, dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) else {
        return false;
    };
    loop {
        let length = read_file(&dirfd, c"cgroup.events", text);
        if text[..length].split(|b| *b == b'\n').any(|line| line == b"populated 0") {
            break;
        }
        if began.elapsed() >= KILL_BUDGET {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(dirfd);
    remove_jobs_and_dir(dir, dir_buffer);
    true
}

/// Removes the `job-*` directories in `dir`, then `dir` (cgroup directories of dead jobs).
fn remove_jobs_and_dir(dir: &CStr, dir_buffer: &mut [MaybeUninit<u8>]) {
    let Ok(dirfd) = openat(CWD, dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) else {
        return;
    };
    let mut names = RawDir::new(&dirfd, dir_buffer);
    while let Some(Ok(entry)) = names.next() {
        if entry.file_type() == FileType::Directory && entry.file_name().to_bytes().starts_with(b"job-") {
            let _ = unlinkat(&dirfd, entry.file_name(), AtFlags::REMOVEDIR);
        }
    }
    drop(dirfd);
    let _ = unlinkat(CWD, dir, AtFlags::REMOVEDIR);
}

/// SIGKILLs every watched session's group, then every process whose session or group is watched, until a
/// scan of `/proc` finds none or the budget is spent. Returns how many processes were signalled.
fn kill_sessions(watch: &Watch, dir_buffer: &mut [MaybeUninit<u8>], text: &mut [u8], began: Instant) -> u32 {
    for (sid, _) in &watch.sessions {
        if let Some(group) = Pid::from_raw(*sid).filter(|_| *sid > 1) {
            let _ = rustix::process::kill_process_group(group, Signal::KILL);
        }
    }
    let own = rustix::process::getpid().as_raw_nonzero().get();
    let mut killed = 0;
    loop {
        let mut found = 0;
        let Ok(proc_dir) = openat(CWD, c"/proc", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        else {
            return killed;
        };
        let mut names = RawDir::new(&proc_dir, &mut *dir_buffer);
        while let Some(Ok(entry)) = names.next() {
            let Some(pid) = parse_pid(entry.file_name().to_bytes()) else { continue };
            if pid <= 1 || pid == own {
                continue;
            }
            // Pin the process first, then decide from what it is now: a pid reused after the pidfd was
            // opened makes the decision about the newcomer but the signal goes to the dead original.
            let Some(target) = Pid::from_raw(pid) else { continue };
            let pidfd = rustix::process::pidfd_open(target, PidfdFlags::empty()).ok();
            let Some((session, group)) = session_and_group(&proc_dir, entry.file_name(), text) else { continue };
            if !watch.has_session(session) && !watch.has_session(group) {
                continue;
            }
            found += 1;
            let sent = match &pidfd {
                Some(fd) => rustix::process::pidfd_send_signal(fd, Signal::KILL),
                None => rustix::process::kill_process(target, Signal::KILL),
            };
            if sent.is_ok() {
                killed += 1;
            }
        }
        if found == 0 || began.elapsed() >= KILL_BUDGET {
            return killed;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Session and process group of `/proc/<name>`, from its `stat`.
fn session_and_group(proc_dir: &OwnedFd, name: &CStr, text: &mut [u8]) -> Option<(i32, i32)> {
    let Ok(dir) = openat(proc_dir, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) else {
        return None;
    };
    let length = read_file(&dir, c"stat", text);
    let stat = &text[..length];
    // `comm` may hold spaces and parentheses: the fields start after the last `)`.
    let close = stat.iter().rposition(|b| *b == b')')?;
    let mut fields = stat[close + 1..].split(|b| *b == b' ').filter(|f| !f.is_empty());
    let _state = fields.next()?;
    let _ppid = fields.next()?;
    let group = parse_pid(fields.next()?)?;
    let session = parse_pid(fields.next()?)?;
    Some((session, group))
}

fn write_file(dir: &impl AsFd, name: &CStr, content: &[u8]) -> bool {
    match openat(dir, name, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => rustix::io::write(&fd, content).is_ok(),
        Err(_) => false,
    }
}

/// Reads as much of `name` as fits in `text`; returns the length read.
fn read_file(dir: &impl AsFd, name: &CStr, text: &mut [u8]) -> usize {
    let Ok(fd) = openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) else { return 0 };
    let mut length = 0;
    while length < text.len() {
        match rustix::io::read(&fd, &mut text[length..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => length += n,
        }
    }
    length
}

fn parse_pid(digits: &[u8]) -> Option<i32> {
    let digits = digits.strip_suffix(b"\n").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    i32::try_from(digits.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'))).ok()
}

/// One line on stderr, in the server's log format, without allocating.
fn log_crash(json: bool, killed: u32, overflowed: u32, took: Duration) {
    let mut line = [0u8; 256];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        let n = bytes.len().min(line.len() - at);
        line[at..at + n].copy_from_slice(&bytes[..n]);
        at += n;
    };
    let mut digits = [0u8; 10];
    let millis = u32::try_from(took.as_millis()).unwrap_or(u32::MAX);
    if json {
        put(b"{\"level\":\"WARN\",\"fields\":{\"message\":\"the server is gone: killed its jobs' processes\",\"killed\":");
        put(number(&mut digits, killed));
        put(b",\"untracked_sessions\":");
        put(number(&mut digits, overflowed));
        put(b",\"took_ms\":");
        put(number(&mut digits, millis));
        put(b"},\"target\":\"forkpool::guardian\"}\n");
    } else {
        put(b" WARN forkpool::guardian: the server is gone: killed its jobs' processes killed=");
        put(number(&mut digits, killed));
        put(b" untracked_sessions=");
        put(number(&mut digits, overflowed));
        put(b" took_ms=");
        put(number(&mut digits, millis));
        put(b"\n");
    }
    let _ = rustix::io::write(std::io::stderr(), &line[..at]);
}

/// `n` in decimal, written into the end of `digits`.
fn number(digits: &mut [u8; 10], mut n: u32) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_counted_and_paths_kept() {
        let mut watch = Watch {
            cgroup: [0; MESSAGE_BYTES + 1],
            v1_dirs: [[0; MESSAGE_BYTES + 1]; MAX_V1_DIRS],
            v1_count: 0,
            sessions: Vec::with_capacity(2),
            overflowed: 0,
        };
        watch.apply(b"+42");
        watch.apply(b"+42");
        watch.apply(b"-42");
        assert!(watch.has_session(42));
        watch.apply(b"-42");
        assert!(!watch.has_session(42));
        for sid in [1, 2, 3] {
            watch.apply(format!("+{sid}").as_bytes());
        }
        assert_eq!(watch.overflowed, 1, "a full table drops and counts");
        watch.apply(b"c/sys/fs/cgroup/forkpool/instance-1");
        assert_eq!(watch.cgroup().map(CStr::to_bytes), Some(&b"/sys/fs/cgroup/forkpool/instance-1"[..]));
        watch.apply(b"+not-a-pid");
        assert_eq!(parse_pid(b"12345\n"), Some(12345));
        assert_eq!(parse_pid(b"0000015460"), Some(15460), "workers announce themselves zero-padded");
        assert_eq!(parse_pid(b"9999999999"), None);
        assert_eq!(parse_pid(b""), None);
    }
}
