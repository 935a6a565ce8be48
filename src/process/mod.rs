//! Processes: creating workers, knowing which children are whose, waiting for them, signalling them.
//!
//! - [`spawn`]: the spawner threads and what runs between clone and exec (the only fork-time unsafe code).
//! - [`registry`]: which children are workers, of which job; spawns in flight; the lock that pins pids.
//! - [`reaper`]: the only place that waits for children (the server is a child subreaper).
//! - [`kill`]: ending a job's process group (SIGTERM, SIGCONT, SIGKILL) and hunting escapers without
//!   cgroups; [`signal`]: the one safe way to signal a group.
//! - [`procfs`]: what `/proc` says about a process; [`wait`]: `wait4` with rusage.

pub(crate) mod init_report;
pub(crate) mod kill;
pub mod procfs;
pub(crate) mod reaper;
pub(crate) mod registry;
pub(crate) mod signal;
pub(crate) mod spawn;

pub use spawn::init::{ARGV0 as INIT_ARGV0, main as init_main};
pub(crate) mod wait;
