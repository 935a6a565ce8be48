//! Test fixtures: [`server`] starts a real forkpool server and stops it for real; [`call`] drives calls over
//! gRPC; [`procfs`] checks outcomes in `/proc`; [`skip`] decides once how a test without cgroups or a tool
//! behaves.
#![allow(dead_code, unreachable_pub, unused_imports, missing_docs)]

pub mod call;
pub mod procfs;
pub mod server;
pub mod skip;

pub use call::*;
pub use procfs::*;
pub use server::*;
pub use skip::*;
