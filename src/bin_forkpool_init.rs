//! `forkpool-init`: the init of a job's pid namespace, a small executable of its own (the server's is large,
//! and slower to exec). Everything is in `src/process/spawn/init.rs`, shared with the server, which execs
//! itself under this name where this executable is missing.

#[allow(dead_code, unreachable_pub)]
#[path = "process/spawn/init.rs"]
mod init;

fn main() {
    init::main(std::env::args_os().collect())
}
