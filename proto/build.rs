//! Compiles the .proto files with protox (pure Rust), so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in ["api.proto", "client.proto", "bus.proto"] {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_build::configure().compile_fds(protox::compile(["api.proto"], ["."])?)?;
    tonic_build::configure().compile_fds(protox::compile(["bus.proto"], ["."])?)?;
    // Client streams are many and mostly idle: their codec keeps small buffers.
    tonic_build::configure()
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(protox::compile(["client.proto"], ["."])?)?;
    Ok(())
}
