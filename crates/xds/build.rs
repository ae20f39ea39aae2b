//! Compiles sluice's Istio schema (`proto/`, in istio/api's layout) without protoc: protox parses it into a
//! descriptor set, prost-build generates the message types, pbjson-build their proto3 JSON
//! (serde) impls. The descriptor set itself is kept too: `src/schema.rs` reads it at run time
//! to walk messages by field (JSON fix-ups, unknown-field checks).

use std::env;
use std::error::Error;
use std::fs;
use std::path::PathBuf;

const FILES: &[&str] = &[
    "mcp/v1alpha1/resource.proto",
    "type/v1beta1/selector.proto",
    "networking/v1alpha3/networking.proto",
    "security/v1beta1/security.proto",
    "mesh/v1alpha1/mesh.proto",
    "telemetry/v1alpha1/telemetry.proto",
    "security/v1alpha1/ca.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["proto"])?;
    // The well-known types come along so the run-time schema knows every field's type.
    compiler.include_imports(true).include_source_info(false);
    for file in FILES {
        compiler.open_file(file)?;
    }
    let descriptors = compiler.encode_file_descriptor_set();
    fs::write(out.join("descriptors.bin"), &descriptors)?;

    prost_build::Config::new()
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types")
        // Ordered maps: deterministic encoding and JSON, and what McpObject holds anyway.
        .btree_map(["."])
        .compile_fds(compiler.file_descriptor_set())?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .btree_map(["."])
        .build(&[".istio"])?;
    Ok(())
}
