//! Compiles the `.proto` files under `proto/` without a system `protoc`: `protox` (a pure-Rust
//! protobuf compiler) produces the FileDescriptorSet, `tonic-prost-build` generates prost
//! messages and, when the `server`/`client` features are on, tonic service stubs. The encoded
//! descriptor set is also written to `OUT_DIR` for `FILE_DESCRIPTOR_SET`.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

/// Proto files to compile, relative to the `proto/` include directory.
const PROTOS: &[&str] = &[
    "allot/v1/allot.proto",
    "flagd/evaluation/v1/evaluation.proto",
    "flagd/evaluation/v2/evaluation.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let include = manifest_dir.join("proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    // Well-known types (google/protobuf/struct.proto) are built into protox; imports are kept
    // in the set so that reflection clients can resolve every dependency.
    let fds = protox::Compiler::new([&include])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?
        .file_descriptor_set();

    fs::write(out_dir.join("file_descriptor_set.bin"), fds.encode_to_vec())?;

    // Cargo exposes the package's enabled features to build scripts as environment variables.
    let server = env::var_os("CARGO_FEATURE_SERVER").is_some();
    let client = env::var_os("CARGO_FEATURE_CLIENT").is_some();

    tonic_prost_build::configure()
        .build_server(server)
        .build_client(client)
        .build_transport(client)
        .compile_fds(fds)?;

    Ok(())
}
