//! Compiles the integration tests' own proto (`tests/proto/echo.proto`, a
//! service unrelated to mp's contract: the drop-in proxy tests need one) with
//! protox, so no system protoc is needed. Only the tests include the output.
use prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=tests/proto/echo.proto");
    let fds = protox::compile(["echo.proto"], ["tests/proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("echo_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
