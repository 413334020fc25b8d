//! Generates the weft.mesh.v1 client and server with a vendored protoc, so
//! a fresh machine builds without installing anything.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Named in the config rather than through PROTOC: no environment edits.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Streams held for a proxy's life: small buffers (see src/lean.rs).
    tonic_prost_build::configure()
        .codec_path("crate::lean::LeanCodec")
        .compile_with_config(config, &["proto/weft/mesh/v1/mesh.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/weft/mesh/v1/mesh.proto");
    Ok(())
}
