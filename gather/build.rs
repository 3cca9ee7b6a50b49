//! Compiles the test-only proto `tests/proto/catalog.proto` (a service of a
//! proto other than mp.v1, for the drop-in tests) with protox: no system protoc.
//! The binary does not use it; integration tests include the generated code.
use prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=tests/proto/catalog.proto");
    let fds = protox::compile(["catalog.proto"], ["tests/proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("catalog_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
