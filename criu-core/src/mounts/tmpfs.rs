//! A tmpfs's contents as CRIU saves them: a gzipped tar made and unpacked by the `tar`
//! tool with CRIU's options, so each side reads the other's
//! (`tmpfs-dev-DEV.tar.gz.img`). Also for a front-end that keeps a tmpfs of a mount
//! namespace the images do not hold (crpod's `/dev/shm`).

use std::fs::File;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

/// A gzipped tar of the tree at `at` (not crossing into other mounts), into `image`.
pub fn save(at: &Path, image: &Path) -> io::Result<()> {
    let out = File::create(image)?;
    let mut tar = Command::new("tar");
    tar.args([
        "--create",
        "--gzip",
        "--no-unquote",
        "--no-wildcards",
        "--one-file-system",
        "--check-links",
        "--preserve-permissions",
        "--sparse",
        "--numeric-owner",
        "--directory",
    ])
    .arg(at)
    .arg(".")
    .stdin(Stdio::null())
    .stdout(out);
    run(&mut tar)
}

/// Unpacks `image` (made by [`save`], or by CRIU) into the directory `dir`.
pub fn unpack(image: &File, dir: &Path) -> io::Result<()> {
    let mut tar = Command::new("tar");
    tar.args([
        "--extract",
        "--gzip",
        "--no-unquote",
        "--no-wildcards",
        "--directory",
    ])
    .arg(dir)
    .stdin(image.try_clone()?)
    .stdout(Stdio::null());
    run(&mut tar)
}

/// Runs `tar`, its error output kept for the error when it fails.
fn run(tar: &mut Command) -> io::Result<()> {
    let out = tar.stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "tar: {} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        )));
    }
    Ok(())
}
