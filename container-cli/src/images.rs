//! Images: the built-in `host` (the host's `/` as the read-only lower layer) and root
//! filesystems imported from a tarball (`import`) or loaded from an archive as
//! `podman save` writes it (`load`: docker-archive or OCI layout). Each lives in
//! `images/<name>/rootfs` with an `image.json` beside it.
//!
//! Archives and layers are unpacked by `archive` (plain, gzip or zstd; every entry
//! checked). The OCI index and manifest are oci-spec's types; every blob is checked
//! against its sha256 digest and size, and no name from an archive's JSON is followed
//! through a symlink.
//!
//! Names are normalised as podman shows short names: the last path component, without
//! a `:latest` tag (`docker.io/library/alpine:latest` is `alpine`).

use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, DigestAlgorithm, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::archive::{self, Kind};
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

fn new_image(store: &Store, name: &str) -> Result<store::Staging, Error> {
    let dir = image_dir(store, name)?;
    if name == HOST_IMAGE || dir.exists() {
        return Err(Error::Msg(format!(
            "image {name} exists already (remove it with `crpod rmi {name}`)"
        )));
    }
    std::fs::create_dir_all(dir.join("rootfs")).map_err(|e| Error::io(&dir, "create", e))?;
    Ok(store::Staging::new(dir))
}

fn finish(mut staging: store::Staging, name: &str, source: &Path) -> Result<String, Error> {
    let id = store::new_id()?;
    store::write_json(
        &staging.dir().join("image.json"),
        &ImageInfo {
            name: name.to_owned(),
            id: id.clone(),
            created: store::now(),
            source: source.display().to_string(),
        },
    )?;
    staging.keep();
    Ok(id)
}

/// `import TAR NAME`: a root filesystem tarball as image NAME.
pub fn import(store: &Store, tarball: &Path, name: &str) -> Result<String, Error> {
    let name = normalize(name);
    let staging = new_image(store, &name)?;
    let rootfs = staging.dir().join("rootfs");
    archive::unpack(tarball, &rootfs, Kind::Tree)
        .map_err(|why| Error::Msg(format!("importing {}: {why}", tarball.display())))?;
    finish(staging, &name, tarball)
}

/// One image of a docker-archive's `manifest.json` (Docker's own format, which the OCI
/// types do not cover).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
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

/// A regular file at `rel` (a name from the archive's own JSON) inside the unpacked
/// archive `dir`, reached through no symlink: an archive cannot make crpod read a host
/// file as one of its layers.
fn member(dir: &Path, rel: &str, archive: &Path) -> Result<PathBuf, Error> {
    let bad = |why: &str| Error::Msg(format!("{}: bad member {rel:?}: {why}", archive.display()));
    let mut path = dir.to_owned();
    for c in rel.split('/') {
        match c {
            "" | "." => continue,
            ".." => return Err(bad("`..` in the path")),
            _ => path.push(c),
        }
        let meta = std::fs::symlink_metadata(&path).map_err(|_| bad("it is missing"))?;
        if meta.file_type().is_symlink() {
            return Err(bad("it lies at or below a symlink"));
        }
    }
    if rel.starts_with('/') || !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
        return Err(bad("not a file of the archive"));
    }
    Ok(path)
}

/// The blob of an OCI descriptor, refusing any digest but sha256 and a blob whose
/// content does not have that digest and size.
fn blob(dir: &Path, desc: &Descriptor, archive: &Path) -> Result<PathBuf, Error> {
    let digest = desc.digest();
    if *digest.algorithm() != DigestAlgorithm::Sha256 {
        return Err(Error::Msg(format!(
            "{}: digest {digest} is not sha256",
            archive.display()
        )));
    }
    let path = member(dir, &format!("blobs/sha256/{}", digest.digest()), archive)?;
    let mut file = std::fs::File::open(&path).map_err(|e| Error::io(&path, "open", e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io(&path, "read", e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if actual != digest.digest() || size != desc.size() {
        return Err(Error::Msg(format!(
            "{}: blob {digest} does not match its digest or size",
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
    let _cleanup = store::Staging::new(unpacked.clone());
    archive::unpack(archive, &unpacked, Kind::Tree)
        .map_err(|why| Error::Msg(format!("loading {}: {why}", archive.display())))?;
    // The JSON files too are read only when no symlink leads to them.
    let json = |name: &str| match std::fs::symlink_metadata(unpacked.join(name)) {
        Ok(_) => member(&unpacked, name, archive),
        Err(_) => Ok(unpacked.join(name)),
    };
    let (reference, layers) = if std::fs::symlink_metadata(unpacked.join("manifest.json")).is_ok() {
        let manifests: Vec<DockerManifest> = read_json(&json("manifest.json")?, archive)?;
        let m = manifests
            .into_iter()
            .next()
            .ok_or_else(|| Error::Msg(format!("{}: empty manifest.json", archive.display())))?;
        let layers = m
            .layers
            .iter()
            .map(|l| member(&unpacked, l, archive))
            .collect::<Result<Vec<_>, _>>()?;
        let reference = m
            .repo_tags
            .and_then(|t| t.into_iter().next())
            .unwrap_or_else(|| "loaded".into());
        (reference, layers)
    } else {
        let index: ImageIndex = read_json(&json("index.json")?, archive)?;
        let desc = index
            .manifests()
            .first()
            .ok_or_else(|| Error::Msg(format!("{}: empty index.json", archive.display())))?;
        let reference = desc
            .annotations()
            .as_ref()
            .and_then(|a| a.get("org.opencontainers.image.ref.name"))
            .cloned()
            .unwrap_or_else(|| "loaded".into());
        let manifest: ImageManifest = read_json(&blob(&unpacked, desc, archive)?, archive)?;
        let layers = manifest
            .layers()
            .iter()
            .map(|l| blob(&unpacked, l, archive))
            .collect::<Result<Vec<_>, _>>()?;
        (reference, layers)
    };
    let name = normalize(&reference);
    let staging = new_image(store, &name)?;
    let rootfs = staging.dir().join("rootfs");
    for (n, layer) in layers.iter().enumerate() {
        apply_layer(layer, &rootfs).map_err(|e| {
            Error::Msg(format!(
                "{}: layer {} of {}: {e}",
                archive.display(),
                n + 1,
                layers.len()
            ))
        })?;
    }
    finish(staging, &name, archive)?;
    Ok(name)
}

/// Unpacks one layer over `rootfs`, honouring its whiteouts (see `archive::Kind::Layer`).
fn apply_layer(layer: &Path, rootfs: &Path) -> Result<(), Error> {
    archive::unpack(layer, rootfs, Kind::Layer)
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
        crate::runtime::remove_container(&c, true)?;
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
