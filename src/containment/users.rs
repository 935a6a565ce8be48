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
    /// Uids `first..=last`.
    pub(crate) fn new(first: u32, last: u32) -> Arc<Self> {
        Arc::new(DynamicUsers { first, last, state: Mutex::new(State { next: first, in_use: BTreeSet::new() }) })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_distinct_while_held_and_come_back_round_robin() {
        let users = DynamicUsers::new(5000, 5002);
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
