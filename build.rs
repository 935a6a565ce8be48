//! Generates the gRPC code for `proto/forkpool/v1/forkpool.proto` with protox, a pure-Rust protobuf compiler,
//! so that building forkpool needs nothing but cargo (no system `protoc`). The encoded descriptor set is
//! written too, for gRPC reflection.

use std::{env, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/forkpool/v1/forkpool.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out.join("forkpool_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
