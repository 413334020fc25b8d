//! Generates the weft.mesh.v1 client and server with a vendored protoc, so
//! a fresh machine builds without installing anything.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of intent: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .compile_protos(&["proto/weft/mesh/v1/mesh.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/weft/mesh/v1/mesh.proto");
    Ok(())
}
