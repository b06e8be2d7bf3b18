//! Images: the built-in `host` (the host's `/` as the read-only lower layer) and root
//! filesystems imported from a tarball (`import`) or loaded from an archive as
//! `podman save` writes it (`load`: docker-archive or OCI layout). Each lives in
//! `images/<name>/rootfs` with an `image.json` beside it.
//!
//! Names are normalised as podman shows short names: the last path component, without
//! a `:latest` tag (`docker.io/library/alpine:latest` is `alpine`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::store::{self, Store, HOST_IMAGE};
use crate::Error;

#[derive(Serialize, Deserialize)]
struct ImageInfo {
    name: String,
    id: String,
    created: u64,
    source: String,
}

/// The storage name of an image reference.
pub fn normalize(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    last.strip_suffix(":latest").unwrap_or(last).to_owned()
}

fn image_dir(store: &Store, name: &str) -> Result<PathBuf, Error> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        return Err(Error::Msg(format!("{name:?} is not a valid image name")));
    }
    Ok(store.root.join("images").join(name))
}

/// Runs tar(1); its first error line is the error.
pub fn tar(args: &[&std::ffi::OsStr]) -> Result<(), Error> {
    let out = Command::new("tar")
        .args(args)
        .output()
        .map_err(|e| Error::Msg(format!("cannot run tar: {e}")))?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Msg(
            why.lines()
                .next()
                .unwrap_or("tar failed")
                .trim_start_matches("tar: ")
                .to_owned(),
        ));
    }
    Ok(())
}

/// A directory that is removed when dropped unless kept.
pub struct Staging {
    dir: PathBuf,
    keep: bool,
}

impl Staging {
    /// A scratch directory, always removed when dropped.
    pub fn temporary(dir: PathBuf) -> Staging {
        Staging { dir, keep: false }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn new_image(store: &Store, name: &str) -> Result<Staging, Error> {
    let dir = image_dir(store, name)?;
    if name == HOST_IMAGE || dir.exists() {
        return Err(Error::Msg(format!(
            "image {name} exists already (remove it with `crpod rmi {name}`)"
        )));
    }
    std::fs::create_dir_all(dir.join("rootfs")).map_err(|e| Error::io(&dir, "create", e))?;
    Ok(Staging { dir, keep: false })
}

fn finish(mut staging: Staging, name: &str, source: &Path) -> Result<String, Error> {
    let id = store::new_id()?;
    store::write_json(
        &staging.dir.join("image.json"),
        &ImageInfo {
            name: name.to_owned(),
            id: id.clone(),
            created: store::now(),
            source: source.display().to_string(),
        },
    )?;
    staging.keep = true;
    Ok(id)
}

/// `import TAR NAME`: a root filesystem tarball as image NAME.
pub fn import(store: &Store, tarball: &Path, name: &str) -> Result<String, Error> {
    let name = normalize(name);
    let staging = new_image(store, &name)?;
    let rootfs = staging.dir.join("rootfs");
    tar(&[
        "-xf".as_ref(),
        tarball.as_os_str(),
        "-C".as_ref(),
        rootfs.as_os_str(),
        "--numeric-owner".as_ref(),
    ])
    .map_err(|why| Error::Msg(format!("importing {}: {why}", tarball.display())))?;
    finish(staging, &name, tarball)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<OciDescriptor>,
}

#[derive(Deserialize)]
struct OciDescriptor {
    digest: String,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
}

#[derive(Deserialize)]
struct OciManifest {
    layers: Vec<OciDescriptor>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, archive: &Path) -> Result<T, Error> {
    let bytes = std::fs::read(path).map_err(|_| {
        Error::Msg(format!(
            "{}: not an image archive (no {})",
            archive.display(),
            path.file_name().unwrap_or_default().to_string_lossy()
        ))
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::Msg(format!(
            "{}: bad {}: {e}",
            archive.display(),
            path.file_name().unwrap_or_default().to_string_lossy()
        ))
    })
}

/// The blob file of an OCI digest, refusing anything but `sha256:<hex>`, and a blob
/// whose content does not have that digest.
fn blob(dir: &Path, digest: &str, archive: &Path) -> Result<PathBuf, Error> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| Error::Msg(format!("{}: bad digest {digest:?}", archive.display())))?;
    let path = dir.join("blobs/sha256").join(hex);
    let out = Command::new("sha256sum")
        .arg(&path)
        .output()
        .map_err(|e| Error::Msg(format!("cannot run sha256sum: {e}")))?;
    let actual = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || actual.split_whitespace().next() != Some(hex) {
        return Err(Error::Msg(format!(
            "{}: blob {digest} is missing or does not match its digest",
            archive.display()
        )));
    }
    Ok(path)
}

/// `load -i ARCHIVE`: an image archive as `podman save` writes it (docker-archive or
/// OCI layout, layers possibly compressed); returns the image's name.
pub fn load(store: &Store, archive: &Path) -> Result<String, Error> {
    let unpacked = store.root.join(format!("load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&unpacked);
    std::fs::create_dir_all(&unpacked).map_err(|e| Error::io(&unpacked, "create", e))?;
    let _cleanup = Staging::temporary(unpacked.clone());
    tar(&[
        "-xf".as_ref(),
        archive.as_os_str(),
        "-C".as_ref(),
        unpacked.as_os_str(),
    ])
    .map_err(|why| Error::Msg(format!("loading {}: {why}", archive.display())))?;
    let (reference, layers) = if unpacked.join("manifest.json").exists() {
        let manifests: Vec<DockerManifest> = read_json(&unpacked.join("manifest.json"), archive)?;
        let m = manifests
            .into_iter()
            .next()
            .ok_or_else(|| Error::Msg(format!("{}: empty manifest.json", archive.display())))?;
        let mut layers = Vec::new();
        for l in &m.layers {
            if l.starts_with('/') || l.split('/').any(|c| c == "..") {
                return Err(Error::Msg(format!(
                    "{}: bad layer path {l:?}",
                    archive.display()
                )));
            }
            layers.push(unpacked.join(l));
        }
        let reference = m
            .repo_tags
            .and_then(|t| t.into_iter().next())
            .unwrap_or_else(|| "loaded".into());
        (reference, layers)
    } else {
        let index: OciIndex = read_json(&unpacked.join("index.json"), archive)?;
        let desc = index
            .manifests
            .first()
            .ok_or_else(|| Error::Msg(format!("{}: empty index.json", archive.display())))?;
        let reference = desc
            .annotations
            .get("org.opencontainers.image.ref.name")
            .cloned()
            .unwrap_or_else(|| "loaded".into());
        let manifest: OciManifest = read_json(&blob(&unpacked, &desc.digest, archive)?, archive)?;
        let mut layers = Vec::new();
        for l in &manifest.layers {
            layers.push(blob(&unpacked, &l.digest, archive)?);
        }
        (reference, layers)
    };
    let name = normalize(&reference);
    let staging = new_image(store, &name)?;
    let rootfs = staging.dir.join("rootfs");
    for layer in &layers {
        apply_layer(layer, &rootfs).map_err(|e| {
            Error::Msg(format!(
                "{}: layer {}: {e}",
                archive.display(),
                layer.display()
            ))
        })?;
    }
    finish(staging, &name, archive)?;
    Ok(name)
}

/// Extracts one layer over `rootfs`, honouring its whiteouts: `.wh.NAME` removes NAME
/// of the layers below, `.wh..wh..opq` empties its directory first.
fn apply_layer(layer: &Path, rootfs: &Path) -> Result<(), Error> {
    let out = Command::new("tar")
        .arg("-tf")
        .arg(layer)
        .output()
        .map_err(|e| Error::Msg(format!("cannot run tar: {e}")))?;
    if !out.status.success() {
        return Err(Error::Msg("not a tar file".into()));
    }
    for entry in String::from_utf8_lossy(&out.stdout).lines() {
        let entry = entry.trim_start_matches("./");
        let path = Path::new(entry);
        if path.is_absolute() || path.components().any(|c| c.as_os_str() == "..") {
            return Err(Error::Msg(format!("unsafe path {entry:?}")));
        }
        // A member below a symlink of an earlier layer would be written wherever the
        // link points, outside the image perhaps: refused.
        let mut below = rootfs.to_owned();
        for dir in path.parent().into_iter().flat_map(Path::components) {
            below.push(dir);
            if std::fs::symlink_metadata(&below).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(Error::Msg(format!(
                    "{entry:?} lies below a symlink of a lower layer"
                )));
            }
        }
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        let parent = rootfs.join(path.parent().unwrap_or(Path::new("")));
        if file == ".wh..wh..opq" {
            if let Ok(dir) = std::fs::read_dir(&parent) {
                for e in dir.flatten() {
                    let _ = remove_any(&e.path());
                }
            }
        } else if let Some(gone) = file.strip_prefix(".wh.") {
            let _ = remove_any(&parent.join(gone));
        }
    }
    tar(&[
        "-xf".as_ref(),
        layer.as_os_str(),
        "-C".as_ref(),
        rootfs.as_os_str(),
        "--numeric-owner".as_ref(),
        "--exclude=.wh.*".as_ref(),
        "--exclude=*/.wh.*".as_ref(),
    ])
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// `rmi NAME`: removes an imported image that no container uses (`-f`: the containers
/// using it are removed too, as podman does).
pub fn remove(store: &Store, name: &str, force: bool) -> Result<Vec<String>, Error> {
    let name = normalize(name);
    if name == HOST_IMAGE {
        return Err(Error::Msg(
            "the host image is built in and cannot be removed".into(),
        ));
    }
    let dir = image_dir(store, &name)?;
    if !dir.join("image.json").exists() {
        return Err(Error::Msg(format!("{name}: image not known")));
    }
    let users: Vec<_> = store
        .list()?
        .into_iter()
        .filter(|c| c.config.image == name)
        .collect();
    if !users.is_empty() && !force {
        return Err(Error::Msg(format!(
            "image {name} is in use by container {}: remove it first or use --force",
            users[0].config.name
        )));
    }
    let mut removed = Vec::new();
    for c in users {
        crate::remove_container(&c, true)?;
        removed.push(c.config.id);
    }
    std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, "remove", e))?;
    Ok(removed)
}

/// A row of `images`.
pub struct ImageRow {
    pub repository: String,
    pub tag: String,
    pub id: String,
    /// Seconds since the epoch; 0 for the built-in image.
    pub created: u64,
    /// Bytes of its root filesystem; 0 for the built-in image.
    pub size: u64,
}

/// Every image, the built-in one first.
pub fn list(store: &Store) -> Result<Vec<ImageRow>, Error> {
    let mut out = vec![ImageRow {
        repository: "localhost/host".to_owned(),
        tag: "latest".to_owned(),
        id: "0".repeat(64),
        created: 0,
        size: 0,
    }];
    let dir = store.root.join("images");
    for e in std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, "list", e))?
        .flatten()
    {
        let Ok(info) = std::fs::read(e.path().join("image.json")) else {
            continue;
        };
        let Ok(info) = serde_json::from_slice::<ImageInfo>(&info) else {
            continue;
        };
        let (repo, tag) = info.name.split_once(':').unwrap_or((&info.name, "latest"));
        out.push(ImageRow {
            repository: format!("localhost/{repo}"),
            tag: tag.to_owned(),
            id: info.id,
            created: info.created,
            size: dir_size(&e.path().join("rootfs")),
        });
    }
    Ok(out)
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
