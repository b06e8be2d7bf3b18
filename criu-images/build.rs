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

    let fds = protox::compile(&files, [&proto_dir])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("criu_descriptors.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
