//! Generates the containerd gRPC server and client code from the vendored protos in
//! `proto/` (containerd API, Apache-2.0), and a CRI v1 client for the tests. `protox`
//! parses them in-process, so no `protoc` is needed (Debian's is often older than the protos
//! expect). The
//! generated modules are nested as the proto packages (`containerd::types`,
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

    // The CRI v1 API (k8s.io/cri-api, vendored): client only, for the integration tests'
    // small CRI client (`snapshotter/tests/containerd/stack/cri.rs` includes `cri_api.rs`); nothing
    // in the library or the binary includes it, so they do not grow.
    const CRI: &str = "proto/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={CRI}");
    let fds = protox::compile([CRI], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .include_file("cri_api.rs")
        .compile_fds(fds)?;
    Ok(())
}
