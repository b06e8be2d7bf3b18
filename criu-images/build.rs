//! Compiles the schema in `../proto` without a system `protoc`: protox parses the files
//! into a descriptor set, prost-build turns that into Rust types, and the descriptor set
//! itself is embedded so the crit-compatible JSON code can walk messages by reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&proto_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let mut compiler = protox::Compiler::new([&proto_dir])?;
    compiler.include_imports(true).include_source_info(false);
    compiler.open_files(&files)?;
    // Encoded by protox itself: this keeps the custom `(criu)` field options, which a
    // round trip through prost_types would drop as unknown fields.
    let encoded = compiler.encode_file_descriptor_set();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("criu_descriptors.bin"), &encoded)?;

    let fds: prost_types::FileDescriptorSet = prost::Message::decode(encoded.as_slice())?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
