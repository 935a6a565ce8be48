//! Network namespaces reused across jobs.
//!
//! Making a network namespace is the most expensive part of a job's isolation: the kernel sets up every
//! per-namespace table (sysctls, devices, protocol state) at the clone, and tears it all down again in a
//! kernel thread after the job (measured per job: about 850 µs of the machine's CPU; see BENCHMARKS.md). A
//! namespace a job leaves exactly as it found it is as good as a new one, so it goes back to a pool and the
//! next job joins it (`setns`) instead.
//!
//! "Exactly as it found it" is checked, not assumed. A namespace is reused only when:
//! - the job could not have handed anything of the namespace to another job: it had no writable place outside
//!   its own private directory, `/tmp` and `/dev/shm` (`read_only_root`, a private directory), so no
//!   rendezvous for passing a socket or an open `/proc/net` file (which would keep a view of the namespace
//!   into the next job's use of it) to anyone; abstract unix sockets are the namespace's own;
//! - it ran as a user other than root and kept no capability: nothing but root (`net.*` sysctls are writable
//!   by uid 0 of the namespace's owner even without capabilities) or `CAP_NET_ADMIN` can change its
//!   configuration, and the seccomp filter refuses `setns`/`unshare` anyway;
//! - its pid namespace's init was reaped: every process of the job is gone;
//! - its counters (`dev`, `snmp`, `snmp6`, `netstat`), its sockets in use (`sockstat`), its unix, packet and
//!   netlink sockets and its IPv6 flow labels read exactly as they did when the namespace was new: no
//!   connection was made (a TCP `TIME_WAIT` would refuse the next job a `bind`), nothing lingers, and no
//!   counter tells the next job anything about this one.
//!
//! Anything else (a job that used its network, a root job, an init that did not go in time, a full pool) drops
//! the namespace; the kernel frees it once nothing holds it.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

/// Most namespaces kept for reuse; more are dropped. Each holds its fd and up to 8 open `/proc/net` files.
const CAPACITY: usize = 8;

/// The `/proc/net` files compared with their new namespace's: counters, unix, packet and netlink sockets, IPv6
/// flow labels. (Not the TCP, UDP and raw socket tables: reading one walks the whole host's hash table, about
/// a millisecond each. A socket of those kinds that outlived the job would need a process holding it, and none
/// of the job's is left nor could it have handed one on; and no such socket came and went without moving the
/// counters.) A file the kernel does not have is left out.
const STATE_FILES: [&str; 10] =
    ["dev", "snmp", "snmp6", "netstat", "unix", "packet", "netlink", "ip6_flowlabel", "sockstat", "sockstat6"];

/// What is compared of a state file: all of it, but for `sockstat`/`sockstat6`, whose other figures are the
/// host's, only each protocol's sockets in use in this namespace (a socket no process holds, such as one an
/// io_uring ring being torn down still has, shows there).
fn comparable(name: &str, content: Vec<u8>) -> Vec<u8> {
    if !name.starts_with("sockstat") {
        return content;
    }
    let text = String::from_utf8_lossy(&content);
    let mut kept = String::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(protocol) = words.next() else { continue };
        while let Some(word) = words.next() {
            if word == "inuse" {
                kept.push_str(&format!("{protocol} {}\n", words.next().unwrap_or_default()));
            }
        }
    }
    kept.into_bytes()
}

/// A network namespace: its fd, and its `/proc/net` state files (opened through a process in it, so they keep
/// showing that namespace) with what they read when it was new.
#[derive(Debug)]
pub(crate) struct Netns {
    ns: OwnedFd,
    state: Vec<(&'static str, File, Vec<u8>)>,
}

impl Netns {
    /// The network namespace of `pid`, a warm sandbox's init that has not had a job yet (so the namespace is as
    /// it was made). The caller checks that the process was still alive, unreaped, after this returned (its pid
    /// was not another's meanwhile).
    pub(crate) fn of_new(pid: i32) -> io::Result<Netns> {
        let ns = File::open(format!("/proc/{pid}/ns/net"))?.into();
        let mut state = Vec::with_capacity(STATE_FILES.len());
        for name in STATE_FILES {
            let Ok(file) = File::open(format!("/proc/{pid}/net/{name}")) else { continue };
            let now = comparable(name, read_all(&file)?);
            state.push((name, file, now));
        }
        if state.is_empty() {
            return Err(io::Error::other("no /proc/net state to compare"));
        }
        Ok(Netns { ns, state })
    }

    /// An fd of the namespace, for [`crate::process::spawn::Command::join_network`].
    pub(crate) fn fd(&self) -> io::Result<OwnedFd> {
        self.ns.as_fd().try_clone_to_owned()
    }

    /// Whether every state file reads as it did when the namespace was new.
    fn untouched(&self) -> bool {
        self.state.iter().all(|(name, file, new)| read_all(file).is_ok_and(|now| comparable(name, now) == *new))
    }
}

/// The whole of a `/proc` file, from its start.
fn read_all(mut file: &File) -> io::Result<Vec<u8>> {
    file.seek(io::SeekFrom::Start(0))?;
    let mut content = Vec::new();
    file.read_to_end(&mut content)?;
    Ok(content)
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
    use super::comparable;

    #[test]
    fn only_the_namespace_s_own_sockstat_figures_are_compared() {
        let sockstat = b"sockets: used 291\nTCP: inuse 0 orphan 0 tw 0 alloc 12 mem 3\nUDP: inuse 1 mem 2\nRAW: inuse 0\nFRAG: inuse 0 memory 0\n";
        assert_eq!(comparable("sockstat", sockstat.to_vec()), b"TCP: 0\nUDP: 1\nRAW: 0\nFRAG: 0\n".to_vec());
        assert_eq!(comparable("snmp", b"Ip: 1 2\n".to_vec()), b"Ip: 1 2\n".to_vec());
    }
}
