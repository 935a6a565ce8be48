//! The guardian: nothing of a job survives the server, however the server dies.
//!
//! A worker dies with the server (parent-death signal), but what the worker started does not: when the server
//! is SIGKILLed, OOM-killed, aborts or panics, those processes are reparented to init and live on. So at
//! start-up, while the server is still single-threaded, it forks a tiny guardian process
//! (`forkpool-guard`). The two share one end each of a `SOCK_SEQPACKET` socket pair; the server's end is
//! close-on-exec and closed by every child first thing, so the guardian reading end-of-file means "the server
//! is gone"; so does the server's pidfd turning readable (a child frozen before it could close its copy
//! cannot hold the guardian back). Then the guardian kills what it was told about and exits:
//!
//! - **cgroup mode**: the server's instance cgroup (every job cgroup is inside it): one write to its
//!   `cgroup.kill` (or freeze, SIGKILL each member, thaw on kernels before 5.14) kills every process of every
//!   job, escapers included. It then waits until the cgroup is empty and removes the job cgroups and the
//!   instance cgroup (v1 hierarchies and working directories are left to the next start).
//! - **fallback mode**: the jobs' sessions. Each worker announces its own session (= its pid) between
//!   `setsid` and `exec`, so nothing it starts can precede the announcement; the server adds the sessions of
//!   escapers it adopts (at the job's end) and removes every session when its job is over. A process that
//!   calls `setsid` while its job runs is therefore not covered should the server crash. The guardian SIGKILLs each session's
//!   process group, then scans `/proc` for any live process whose session or group is one of them, deciding
//!   and signalling through a pidfd so that a reused pid is never hit.
//!
//! Rules it keeps: single-threaded; no allocation after start (the session table and every buffer exist
//! before the first message); it ignores the signals a terminal or service manager sends to a group (the
//! server drains on those, the guardian waits for it); its kill phase is bounded (it exits within about a
//! second of the server); it kills only what it was told is a job's. Session numbers are reused once every
//! process of a session is gone (on a host with `pid_max` 32768, within seconds), so it records each session
//! leader's start time when told of it: a live process with the session's number but another start time
//! means the session is over and the number belongs to someone else, and that session is left alone.
//!
//! If the guardian itself dies while the server runs, the reaper logs it as an error and `GetStatus` says so:
//! the crash guarantee then rests on the next start's leftover clean-up alone.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use rustix::process::PidfdFlags;

use crate::process::registry::SessionWatch;

mod kill;

#[cfg(test)]
use kill::parse_stat;
use kill::{kill_cgroup, kill_sessions, number, parse_pid, remove_cgroup, remove_jobs_and_dir, stat_of_pid};

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
        // Above stdio: if the server was started with fd 0, 1 or 2 closed, the pair could land there, and the
        // guardian's stdio set-up (or a worker's dup2) would clobber it.
        let server_end = rustix::io::fcntl_dupfd_cloexec(&server_end, 3)?;
        let guardian_end = rustix::io::fcntl_dupfd_cloexec(&guardian_end, 3)?;
        let pid = crate::process::spawn::fork_guardian(guardian_end, move |socket| guard(socket, json))?;
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
    pub(crate) fn watch_cgroup(&self, dir: &Path) {
        let mut message = b"c".to_vec();
        message.extend_from_slice(dir.as_os_str().as_encoded_bytes());
        self.send(&message);
    }

    /// Remove this cgroup directory (a v1 hierarchy's instance) and its job directories once the jobs are
    /// dead.
    pub(crate) fn watch_v1_dir(&self, dir: &Path) {
        let mut message = b"r".to_vec();
        message.extend_from_slice(dir.as_os_str().as_encoded_bytes());
        self.send(&message);
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

/// Sessions are counted, so announcements may repeat (a worker announces itself, the server adds escapers'
/// sessions, and forgets each when its job is over).
impl SessionWatch for Guardian {
    fn watch_session(&self, sid: i32) {
        self.send(format!("+{sid}").as_bytes());
    }

    fn forget_session(&self, sid: i32) {
        self.send(format!("-{sid}").as_bytes());
    }
}

/// A watched session: its id (the leader's pid), how many announcements are open, and the leader's start
/// time (clock ticks since boot; 0 if it could not be read), which tells the session from a later one with
/// a reused number.
#[derive(Debug, Clone, Copy)]
struct Session {
    id: i32,
    count: u32,
    leader_start: u64,
}

/// What the guardian kills when the server is gone.
struct Watch {
    /// The instance cgroup, NUL-terminated; empty if none.
    cgroup: [u8; MESSAGE_BYTES + 1],
    /// v1 instance directories to remove, NUL-terminated.
    v1_dirs: [[u8; MESSAGE_BYTES + 1]; MAX_V1_DIRS],
    v1_count: usize,
    /// Sessions watched.
    sessions: Vec<Session>,
    /// Announcements dropped because the table was full (logged at the end).
    overflowed: u32,
    /// A buffer for reading `/proc/PID/stat`.
    stat: [u8; 1024],
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
                let Some(id) = parse_pid(number) else { return };
                if let Some(entry) = self.sessions.iter_mut().find(|s| s.id == id) {
                    entry.count += 1;
                } else if self.sessions.len() < self.sessions.capacity() {
                    let leader_start = self.start_time(id).unwrap_or(0);
                    self.sessions.push(Session { id, count: 1, leader_start });
                } else {
                    self.overflowed += 1;
                }
            }
            Some((b'-', number)) => {
                let Some(id) = parse_pid(number) else { return };
                if let Some(index) = self.sessions.iter().position(|s| s.id == id) {
                    self.sessions[index].count -= 1;
                    if self.sessions[index].count == 0 {
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
        self.sessions.iter().any(|s| s.id == id)
    }

    /// The start time of process `pid`, read into the watch's own buffer.
    fn start_time(&mut self, pid: i32) -> Option<u64> {
        stat_of_pid(pid, &mut self.stat).map(|s| s.start_time)
    }

    /// Leaves out sessions whose number now belongs to another process (their own processes are all gone).
    fn drop_reused(&mut self) {
        let mut stat = [0u8; 1024];
        // A live process with the session's number is its leader only if it is the one recorded; if the
        // leader's start time could not be recorded, a live process with that number may be anyone: skip.
        // No process with the number: the leader is gone, and its session's members (if any) pin the number.
        self.sessions.retain(|s| match stat_of_pid(s.id, &mut stat) {
            Some(now) => s.leader_start != 0 && now.start_time == s.leader_start,
            None => true,
        });
    }
}

/// Waits until a message (or end-of-file) is on `socket` or the server's pidfd says it exited; at most a
/// second. Returns (a message is ready, the server exited).
fn wait_for(socket: &OwnedFd, server: Option<&OwnedFd>) -> (bool, bool) {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let second = Timespec { tv_sec: 1, tv_nsec: 0 };
    let mut fds = [PollFd::new(socket, PollFlags::IN), PollFd::new(server.unwrap_or(socket), PollFlags::IN)];
    let count = if server.is_some() { 2 } else { 1 };
    if rustix::event::poll(&mut fds[..count], Some(&second)).is_err() {
        return (false, false);
    }
    let message = !fds[0].revents().is_empty();
    let gone = server.is_some() && !fds[1].revents().is_empty();
    (message, gone)
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
        stat: [0; 1024],
    };
    let mut message = [0u8; MESSAGE_BYTES];
    let mut dir_buffer = [MaybeUninit::<u8>::uninit(); 32 * 1024];
    let mut text = [0u8; 64 * 1024];
    // The server's death is seen two ways: end-of-file on the socket (every copy of its end closed), or its
    // pidfd turning readable (it exited, even while a child frozen between clone and exec still holds a copy
    // of the socket). Without pidfds (Linux < 5.3), being reparented says the same, checked every second.
    let server = rustix::process::getppid();
    let server_fd = server.and_then(|pid| rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok());
    loop {
        let (message_ready, server_gone) = wait_for(&socket, server_fd.as_ref());
        if server_gone || rustix::process::getppid() != server {
            break;
        }
        if !message_ready {
            continue;
        }
        match rustix::net::recv(&socket, &mut message[..], RecvFlags::DONTWAIT) {
            Ok((0, _)) => break,
            Ok((n, _)) => watch.apply(&message[..n.min(MESSAGE_BYTES)]),
            Err(Errno::INTR | Errno::AGAIN) => {}
            // Not end-of-file, so the server may be alive: never kill on a doubt; look again shortly.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let began = Instant::now();
    let mut killed = 0u32;
    if let Some(cgroup) = watch.cgroup() {
        killed += kill_cgroup(cgroup, &mut dir_buffer, &mut text);
    }
    watch.drop_reused();
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
    let fields: [(&[u8], u32); 3] = [(b"killed", killed), (b"untracked_sessions", overflowed), (b"took_ms", millis)];
    // Per format: the start, then before each field's name, between name and value, and the end.
    let (start, before, between, end): (&[u8], &[u8], &[u8], &[u8]) = if json {
        (
            b"{\"level\":\"WARN\",\"fields\":{\"message\":\"the server is gone: killed its jobs' processes\"",
            b",\"",
            b"\":",
            b"},\"target\":\"forkpool::guardian\"}\n",
        )
    } else {
        (b" WARN forkpool::guardian: the server is gone: killed its jobs' processes", b" ", b"=", b"\n")
    };
    put(start);
    for (name, value) in fields {
        put(before);
        put(name);
        put(between);
        put(number(&mut digits, value));
    }
    put(end);
    let _ = rustix::io::write(std::io::stderr(), &line[..at]);
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
            stat: [0; 1024],
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
        let stat = parse_stat(b"42 (a) b (c)) S 1 40 41 0 -1 4194560 1 0 0 0 3 4 0 0 20 0 1 0 987654 12345 67")
            .expect("parses");
        assert_eq!((stat.state, stat.group, stat.session, stat.start_time), (b'S', 40, 41, 987654));
        assert_eq!(parse_pid(b"0000015460"), Some(15460), "workers announce themselves zero-padded");
        assert_eq!(parse_pid(b"9999999999"), None);
        assert_eq!(parse_pid(b""), None);
    }
}
