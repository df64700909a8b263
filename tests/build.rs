//! Generates the tests' CRI v1 client (`runtime.v1`, the kubelet's API) from the vendored
//! k8s.io/cri-api `api.proto` in `proto/` (Apache-2.0). `protox` parses it in-process, so no
//! `protoc` is needed; only the client is built.

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
