//! Generates the containerd gRPC server and client code from the vendored protos in
//! `proto/` (containerd API, Apache-2.0). `protox` parses them in-process, so no `protoc` is
//! needed (Debian's is often older than the protos expect). The generated modules are nested as the proto packages (`containerd::types`,
//! `containerd::services::snapshots::v1`, ...) through `include_file`, so cross-package
//! paths such as `super::super::super::types::Mount` resolve as generated.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const API: &str = "proto/github.com/containerd/containerd/api";
    let files = [
        "services/snapshots/v1/snapshots.proto",
        "services/content/v1/content.proto",
        "services/images/v1/images.proto",
        "services/leases/v1/leases.proto",
        "services/diff/v1/diff.proto",
        "types/mount.proto",
        "types/descriptor.proto",
    ]
    .map(|f| format!("{API}/{f}"));
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(&files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .include_file("containerd_api.rs")
        .compile_fds(fds)?;

    Ok(())
}
