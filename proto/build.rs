//! Compiles `proto/flamegrid/v1/*.proto` and pprof's `proto/pprof/profile.proto` with protox (a
//! pure-Rust protobuf compiler), so building flamegrid never needs a system `protoc`. The pprof
//! file has messages only, so it yields plain prost types (package `perftools.profiles`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a build script fails by panicking

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/flamegrid/v1/samples.proto",
        "proto/flamegrid/v1/agent.proto",
        "proto/flamegrid/v1/registry.proto",
        "proto/pprof/profile.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
