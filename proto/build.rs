//! Compiles the .proto files with protox (pure Rust), so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["api.proto", "client.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    tonic_build::configure().compile_fds(fds)?;
    Ok(())
}
