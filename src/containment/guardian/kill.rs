//! The guardian's kill phase, after the server is gone: kill the instance cgroup or the watched sessions,
//! then remove what is empty. Every buffer is the caller's; nothing here allocates.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, RawDir, openat, unlinkat};
use rustix::process::{Pid, PidfdFlags, Signal};

use super::{KILL_BUDGET, Watch};

/// Kills every process in the cgroup tree `dir` (the instance: its job cgroups hold the processes); returns
/// how many there were.
pub(super) fn kill_cgroup(dir: &CStr, dir_buffer: &mut [MaybeUninit<u8>], text: &mut [u8]) -> u32 {
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
pub(super) fn remove_cgroup(dir: &CStr, dir_buffer: &mut [MaybeUninit<u8>], text: &mut [u8], began: Instant) -> bool {
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
pub(super) fn remove_jobs_and_dir(dir: &CStr, dir_buffer: &mut [MaybeUninit<u8>]) {
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
/// scan of `/proc` finds none or the budget is spent. Returns how many groups and processes were signalled.
pub(super) fn kill_sessions(watch: &Watch, dir_buffer: &mut [MaybeUninit<u8>], text: &mut [u8], began: Instant) -> u32 {
    // Each group signalled counts once (it held at least one process); the scan then counts each process it
    // still finds alive.
    let mut killed = 0;
    for session in &watch.sessions {
        if let Some(group) = Pid::from_raw(session.id).filter(|_| session.id > 1)
            && rustix::process::kill_process_group(group, Signal::KILL).is_ok()
        {
            killed += 1;
        }
    }
    let own = rustix::process::getpid().as_raw_nonzero().get();
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
            let Some(stat) = stat_at(&proc_dir, entry.file_name(), text) else { continue };
            // A zombie is dead already; counting it would keep the scan going while its number could be
            // reused.
            if stat.state == b'Z' || (!watch.has_session(stat.session) && !watch.has_session(stat.group)) {
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

/// The fields of a `stat` line the guardian needs.
pub(super) struct Stat {
    pub(super) state: u8,
    pub(super) group: i32,
    pub(super) session: i32,
    pub(super) start_time: u64,
}

/// `/proc/<name>/stat`, read with `proc_dir` and `text`.
pub(super) fn stat_at(proc_dir: &OwnedFd, name: &CStr, text: &mut [u8]) -> Option<Stat> {
    let Ok(dir) = openat(proc_dir, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) else {
        return None;
    };
    let length = read_file(&dir, c"stat", text);
    parse_stat(&text[..length])
}

/// `/proc/<pid>/stat`, read into `text`.
pub(super) fn stat_of_pid(pid: i32, text: &mut [u8]) -> Option<Stat> {
    // "/proc/" + up to 10 digits + "/stat" + NUL, built without allocating.
    let mut path = [0u8; 32];
    path[..6].copy_from_slice(b"/proc/");
    let mut digits = [0u8; 10];
    let number = number(&mut digits, u32::try_from(pid).ok()?);
    let end = 6 + number.len();
    path[6..end].copy_from_slice(number);
    path[end..end + 5].copy_from_slice(b"/stat");
    let path = CStr::from_bytes_until_nul(&path).ok()?;
    let Ok(fd) = openat(CWD, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) else { return None };
    let length = rustix::io::read(&fd, &mut *text).ok()?;
    parse_stat(&text[..length])
}

/// Parses a `stat` line. `comm` may hold spaces and parentheses: the fields start after the last `)`.
pub(super) fn parse_stat(stat: &[u8]) -> Option<Stat> {
    let close = stat.iter().rposition(|b| *b == b')')?;
    let mut fields = stat[close + 1..].split(|b| *b == b' ').filter(|f| !f.is_empty());
    let state = *fields.next()?.first()?;
    let _ppid = fields.next()?;
    let group = parse_pid(fields.next()?)?;
    let session = parse_pid(fields.next()?)?;
    // tty, tpgid, flags, minflt, cminflt, majflt, cmajflt, utime, stime, cutime, cstime, priority, nice,
    // num_threads, itrealvalue: 15 fields, then starttime.
    let start = fields.nth(15)?;
    let start_time = start.iter().try_fold(0u64, |n, d| d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0')))?;
    Some(Stat { state, group, session, start_time })
}

pub(super) fn write_file(dir: &impl AsFd, name: &CStr, content: &[u8]) -> bool {
    match openat(dir, name, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => rustix::io::write(&fd, content).is_ok(),
        Err(_) => false,
    }
}

/// Reads as much of `name` as fits in `text`; returns the length read.
pub(super) fn read_file(dir: &impl AsFd, name: &CStr, text: &mut [u8]) -> usize {
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

pub(super) fn parse_pid(digits: &[u8]) -> Option<i32> {
    let digits = digits.strip_suffix(b"\n").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    i32::try_from(digits.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'))).ok()
}

/// `n` in decimal, written into the end of `digits`.
pub(super) fn number(digits: &mut [u8; 10], mut n: u32) -> &[u8] {
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
