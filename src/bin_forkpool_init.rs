//! `forkpool-init`: the init of a job's pid namespace, a small executable of its own (the server's is large,
//! and slower to exec). Everything is in `src/process/spawn/init.rs`, shared with the server, which execs
//! itself under this name where this executable is missing.
//!
//! Its `main` is the C one: Rust's runtime start-up would find the main thread's stack for its guard page
//! through `pthread_getattr_np`, which reads all of `/proc/self/maps` (measured: 4 % of the server's CPU at
//! saturation, once per job), and the init needs none of it (the arguments come from the C library).

#![no_main]

#[allow(dead_code, unreachable_pub)]
#[path = "process/spawn/init.rs"]
mod init;

/// The process's entry from the C library's start-up.
#[unsafe(no_mangle)]
pub extern "C" fn main(_argc: std::ffi::c_int, _argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    init::main(std::env::args_os().collect())
}
