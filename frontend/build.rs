//! Compiles the gRPC service's `.proto` files (`proto/`) into Rust with
//! protox, a protobuf compiler in Rust: building needs no `protoc`. Also
//! writes the compiled descriptors (`inference.bin` in `OUT_DIR`), which
//! the tests compare with Triton's client's own.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["grpc_service.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("inference.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        // Tensor data (raw_input_contents, raw_output_contents, BYTES
        // elements) as `bytes::Bytes`: slices of the received buffer, not
        // copies of it.
        .bytes(".inference")
        .compile_fds(fds)?;
    Ok(())
}
