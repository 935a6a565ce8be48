//! forkpool's integration tests, one binary: each module starts the real server binary on 127.0.0.1 with an
//! ephemeral port, talks to it over gRPC, and checks outcomes in the world (bytes, exit codes, `/proc`).
//! `common` holds the fixtures; every other module is one behaviour. The soak (`soak`) is ignored by
//! `cargo test`; CI runs it with `cargo test --test it soak -- --ignored`.

mod common;

mod bench;
mod cancel;
mod cli;
mod cli_terminal;
mod containment;
mod crash;
mod deploy;
mod edges;
mod errors;
mod execute;
mod faults;
mod files;
mod fuzz_validation;
mod grpcurl;
mod hostile;
mod isolation;
mod lifecycle;
mod metrics;
mod namespaces;
mod pool;
mod python_client;
mod scaleout;
mod security;
mod soak;
mod terminal;
