//! Network namespaces reused across jobs.
//!
//! Making a network namespace is the most expensive part of a job's isolation: the kernel sets up every
//! per-namespace table (sysctls, devices, protocol state) at the clone, and tears it all down again in a
//! kernel thread after the job (measured per job: about 850 µs of the machine's CPU, most of the isolation's
//! cost; see BENCHMARKS.md). A namespace a job leaves exactly as it found it is as good as a new one, so it
//! goes back to a pool and the next job joins it (`setns`) instead.
//!
//! "Exactly as it found it" is checked, not assumed. A namespace is reused only when:
//! - the job ran as a user other than root and kept no capability: nothing but root (`net.*` sysctls are
//!   writable by uid 0 of the namespace's owner even without capabilities) or `CAP_NET_ADMIN` can change its
//!   configuration, and the seccomp filter refuses `setns`/`unshare` anyway;
//! - its pid namespace's init was reaped: every process of the job, and so every socket it had, is gone;
//! - its loopback interface never passed a packet (a new namespace's has passed none; bringing it up sends
//!   none): no connection was made in it, so no socket state outlives the job (a TCP `TIME_WAIT`, which would
//!   refuse the next job a `bind`), and no counter of `/proc/net/snmp` or `/proc/net/dev` tells the next job
//!   anything about this one. (Counting from zero, not from when the server first looked, leaves no moment
//!   in which a job's packets could go unseen.)
//!
//! Anything else (a job that used its loopback, a root job, an init that did not go in time, a full pool) drops
//! the namespace; the kernel frees it once nothing holds it.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// Most namespaces kept for reuse; more are dropped.
const CAPACITY: usize = 32;

/// A network namespace: its fd, and its `/proc/net/dev` (opened through a process in it, so it keeps showing
/// that namespace).
#[derive(Debug)]
pub(crate) struct Netns {
    ns: OwnedFd,
    dev: File,
}

impl Netns {
    /// The network namespace of the live process `pid` (a worker or a sandbox's init, just started).
    pub(crate) fn of(pid: i32) -> io::Result<Netns> {
        let ns = File::open(format!("/proc/{pid}/ns/net"))?.into();
        let dev = File::open(format!("/proc/{pid}/net/dev"))?;
        Ok(Netns { ns, dev })
    }

    /// An fd of the namespace, for [`crate::process::spawn::Command::join_network`].
    pub(crate) fn fd(&self) -> io::Result<OwnedFd> {
        self.ns.as_fd().try_clone_to_owned()
    }

    /// Whether the loopback never passed a packet.
    fn untouched(&self) -> bool {
        loopback_packets(&self.dev).is_ok_and(|packets| packets == 0)
    }
}

/// Packets received plus sent by `lo`, from a `/proc/net/dev` file.
fn loopback_packets(dev: &File) -> io::Result<u64> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        let n = dev.read_at(&mut buf[len..], len as u64)?;
        if n == 0 {
            break;
        }
        len += n;
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
    }
    parse_loopback_packets(&String::from_utf8_lossy(&buf[..len]))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no `lo` line in /proc/net/dev"))
}

/// `lo:` rx bytes, rx packets, 6 more rx fields, tx bytes, tx packets, ...: the sum of the two packet counts.
fn parse_loopback_packets(dev: &str) -> Option<u64> {
    let line = dev.lines().find_map(|l| l.trim_start().strip_prefix("lo:"))?;
    let fields: Vec<u64> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>().ok()?;
    Some(fields.get(1)? + fields.get(9)?)
}

/// The namespaces ready for reuse.
#[derive(Debug, Default)]
pub(crate) struct NetPool {
    spare: Mutex<Vec<Netns>>,
}

impl NetPool {
    fn spare(&self) -> std::sync::MutexGuard<'_, Vec<Netns>> {
        // A panic while holding the lock leaves a valid list.
        self.spare.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A namespace to join, if one is ready.
    pub(crate) fn take(&self) -> Option<Netns> {
        self.spare().pop()
    }

    /// Takes back the namespace of a finished job whose every process is gone (see the module's rules; the
    /// caller checked the job's user and capabilities). Returns whether it is kept.
    pub(crate) fn give_back(&self, ns: Netns) -> bool {
        if !ns.untouched() {
            return false;
        }
        let mut spare = self.spare();
        if spare.len() >= CAPACITY {
            return false;
        }
        spare.push(ns);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::parse_loopback_packets;

    #[test]
    fn the_loopback_line_is_read() {
        let dev = "Inter-|   Receive                                                |  Transmit\n \
                   face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                   lo:     140       2    0    0    0     0          0         0      140       3    0    0    0     0       0          0\n  \
                   eth0: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n";
        assert_eq!(parse_loopback_packets(dev), Some(5));
        assert_eq!(parse_loopback_packets("eth0: 1 2 3"), None);
        assert_eq!(parse_loopback_packets("lo: 1 2"), None);
    }
}
