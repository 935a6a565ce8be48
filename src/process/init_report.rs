//! What a pid namespace's init reports on its pipe (see [`crate::process::spawn::init`]): the program's wait
//! status, its resource usage and every orphan the init reaped. The job reads it as the init writes it, once
//! the program's tree is dead and reaped, before the init has exited: the namespace's teardown (unmounting, a
//! network namespace's cleanup) is then off the call's path.

use std::os::fd::OwnedFd;
use std::time::Duration;

use nix::errno::Errno;
use tracing::warn;

use super::registry::{ExitStatus, ReapedOrphan, WorkerExit};

/// An init's report.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct InitReport {
    /// The program's end, as the init's `wait4` saw it (with the usage of everything the init reaped).
    pub(crate) program: Option<WorkerExit>,
    /// Orphans the init reaped inside, by their pid in the namespace.
    pub(crate) orphans: Vec<ReapedOrphan>,
    /// Orphans beyond the list.
    pub(crate) dropped: u64,
}

/// Most bytes read from an init's report (1000 orphans with long names fit).
const MAX_INIT_REPORT: usize = 1 << 20;

impl InitReport {
    /// Reads the report from the init's pipe until its last line (`job ...`) or the end of the pipe: an init
    /// killed (SIGKILL) says nothing, and its own exit, from the reaper, stands.
    pub(crate) async fn watch(fd: OwnedFd) -> InitReport {
        let Ok(fd) = crate::process::spawn::watch(fd) else { return InitReport::default() };
        let mut bytes = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        while bytes.len() < MAX_INIT_REPORT {
            let Ok(mut ready) = fd.readable().await else { break };
            match ready.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(std::io::Error::from)) {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => {
                    bytes.extend_from_slice(&buf[..n]);
                    // The last line is the program's status.
                    if bytes.ends_with(b"\n")
                        && bytes.split(|b| *b == b'\n').rev().nth(1).is_some_and(|l| l.starts_with(b"job "))
                    {
                        break;
                    }
                }
                Ok(Err(e)) if e.raw_os_error() == Some(Errno::EINTR as i32) => {}
                Ok(Err(_)) => break,
                Err(_would_block) => {}
            }
        }
        InitReport::parse(&String::from_utf8_lossy(&bytes))
    }

    pub(crate) fn parse(text: &str) -> InitReport {
        let decode = |raw: &str| {
            let raw: i32 = raw.parse().ok()?;
            Some(if libc::WIFSIGNALED(raw) {
                ExitStatus::Signal(libc::WTERMSIG(raw))
            } else {
                ExitStatus::Code(libc::WEXITSTATUS(raw))
            })
        };
        let mut report = InitReport::default();
        let mut usage = (Duration::ZERO, Duration::ZERO, 0u64);
        // Only whole lines: an init killed while writing leaves a cut one ("job 25" of "job 256").
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        for line in whole.lines() {
            let mut fields = line.splitn(4, ' ');
            match (fields.next(), fields.next(), fields.next(), fields.next()) {
                (Some("job"), Some(raw), None, None) => {
                    report.program = decode(raw).map(|status| WorkerExit {
                        status,
                        user_time: usage.0,
                        system_time: usage.1,
                        max_rss_bytes: usage.2,
                    });
                }
                (Some("usage"), Some(user), Some(system), Some(rss)) => {
                    let micros = |v: &str| Duration::from_micros(v.parse().unwrap_or(0));
                    usage = (micros(user), micros(system), rss.parse::<u64>().unwrap_or(0) * 1024);
                }
                (Some("dropped"), Some(n), None, None) => report.dropped = n.parse().unwrap_or(0),
                (Some("orphan"), Some(pid), Some(raw), name) => {
                    if let (Ok(pid), Some(status)) = (pid.parse(), decode(raw)) {
                        let name = name.unwrap_or_default().to_string();
                        report.orphans.push(ReapedOrphan { pid, name, status });
                    }
                }
                _ => warn!(line, "unreadable line in an init's report"),
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_init_report_gives_the_program_status_its_usage_and_the_orphans() {
        let report =
            InitReport::parse("orphan 7 9 sleep\norphan 9 256 my daemon\ndropped 2\nusage 1500 250 2048\njob 15\n");
        let program = report.program.expect("program");
        assert_eq!(program.status, ExitStatus::Signal(15));
        assert_eq!((program.user_time, program.system_time), (Duration::from_micros(1500), Duration::from_micros(250)));
        assert_eq!(program.max_rss_bytes, 2 << 20);
        assert_eq!(report.dropped, 2);
        assert_eq!(
            report.orphans,
            vec![
                ReapedOrphan { pid: 7, name: "sleep".into(), status: ExitStatus::Signal(9) },
                ReapedOrphan { pid: 9, name: "my daemon".into(), status: ExitStatus::Code(1) },
            ]
        );
        assert_eq!(InitReport::parse("orphan 3 0 x\n").program, None);
        assert_eq!(InitReport::parse("usage 1 1 1\njob 25").program, None, "a cut last line");
    }
}
