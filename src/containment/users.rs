//! Dynamic users: when the server runs as root, each job that names no `user` runs as a uid of its own from a
//! configured range (its gid the same number, no supplementary groups), like systemd's `DynamicUser`. Two jobs
//! running at once never share one, so neither can signal the other, read its private directory (0700) or
//! the server's own files; and none can signal the server.
//!
//! Uids are handed out round-robin through the range, skipping those in use, so a uid comes back only after
//! the whole range has been used once: a file a job left in a shared place (`/tmp`) is not readable by the next
//! job that happens to get a freed uid soon after.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// The range and the uids in use.
#[derive(Debug)]
pub(crate) struct DynamicUsers {
    first: u32,
    last: u32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    next: u32,
    in_use: BTreeSet<u32>,
}

/// A job's dynamic user; the uid is free again once this is dropped (after the job's end).
#[derive(Debug)]
pub(crate) struct DynamicUser {
    uid: u32,
    users: Arc<DynamicUsers>,
}

impl DynamicUser {
    /// `(uid, gid)`: the same number.
    pub(crate) fn ids(&self) -> (u32, u32) {
        (self.uid, self.uid)
    }
}

impl Drop for DynamicUser {
    fn drop(&mut self) {
        self.users.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).in_use.remove(&self.uid);
    }
}

impl DynamicUsers {
    /// Uids `first..=last`, handed out from a point that differs at each start (a process or a file an earlier
    /// server's job left behind is unlikely to meet a job with its uid soon).
    pub(crate) fn new(first: u32, last: u32) -> Arc<Self> {
        let size = u64::from(last - first) + 1;
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()).rotate_left(32);
        let next = first + (seed % size) as u32;
        Arc::new(DynamicUsers { first, last, state: Mutex::new(State { next, in_use: BTreeSet::new() }) })
    }

    /// `first-last`, for logs and `GetStatus`.
    pub(crate) fn describe(&self) -> String {
        format!("{}-{}", self.first, self.last)
    }

    /// A uid no running job has, or `None` if every one in the range is taken.
    pub(crate) fn allocate(self: &Arc<Self>) -> Option<DynamicUser> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let size = u64::from(self.last - self.first) + 1;
        if state.in_use.len() as u64 >= size {
            return None;
        }
        loop {
            let uid = state.next;
            state.next = if uid >= self.last { self.first } else { uid + 1 };
            if state.in_use.insert(uid) {
                return Some(DynamicUser { uid, users: Arc::clone(self) });
            }
        }
    }
}

/// Whether uids `first..=last` all map to real uids in this user namespace (`/proc/self/uid_map`: a server
/// in a user namespace, rootless Podman say, can only switch to mapped uids).
pub(crate) fn range_is_mapped(first: u32, last: u32) -> bool {
    let Ok(map) = std::fs::read_to_string("/proc/self/uid_map") else { return true };
    map.lines().any(|line| {
        let numbers: Vec<u64> = line.split_whitespace().filter_map(|n| n.parse().ok()).collect();
        matches!(numbers.as_slice(), [inside, _, count] if *inside <= u64::from(first) && u64::from(last) < inside + count)
    })
}

/// The first directory on the way to `path` that other users cannot pass (no `o+x`): dynamic users could not
/// reach their working directories below it.
pub(crate) fn closed_ancestor(path: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors()
        .filter(|dir| !dir.as_os_str().is_empty())
        .find(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
        .map(std::path::Path::to_path_buf)
}

/// Whether this process has capability `cap` in its effective set (`/proc/self/status`, `CapEff`).
pub(crate) fn has_effective_capability(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & (1 << cap) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_distinct_while_held_and_come_back_round_robin() {
        let users = DynamicUsers::new(5000, 5002);
        users.state.lock().expect("state").next = 5000;
        let a = users.allocate().expect("a");
        let b = users.allocate().expect("b");
        let c = users.allocate().expect("c");
        assert_eq!((a.uid, b.uid, c.uid), (5000, 5001, 5002));
        assert!(users.allocate().is_none(), "the range is exhausted");
        drop(b);
        assert_eq!(users.allocate().expect("again").uid, 5001);
        drop((a, c));
        // Round robin: after 5001 comes 5002, not the lowest free uid.
        assert_eq!(users.allocate().expect("next").uid, 5002);
    }
}
