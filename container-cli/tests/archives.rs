//! crpod's archives end to end: images imported and loaded (docker-archive, OCI
//! layout), checkpoints exported compressed and restored elsewhere, and hostile
//! archives refused, with real containers under a `--root` per test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{mode_of, output_within, state_of, Pod, LOOP};
use criu_rs_suite::{numbers, wait_until};

/// `--export` compresses as the name says (zstd, podman's default, and gzip), the
/// system `tar` reads what it writes, and `restore --import` brings the container back
/// from each, finding the compression from the bytes, not the name.
#[test]
fn compressed_exports_are_read_by_tar_and_restore_elsewhere() {
    let pod = Pod::new("compressed");
    let _archives = Cleanup(pod.root.with_extension("archives"));
    let dir = &_archives.0;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    pod.ok(&[
        "run", "-d", "--name", "looper", "host", "/bin/sh", "-c", LOOP,
    ]);
    wait_until("output", Duration::from_secs(10), || {
        numbers(&pod.ok(&["logs", "looper"])).len() >= 2
    });
    // (extension, the magic at its start, tar's flag for it)
    let formats: [(&str, &[u8], &str); 2] = [
        ("tar.zst", &[0x28, 0xb5, 0x2f, 0xfd], "--zstd"),
        ("tar.gz", &[0x1f, 0x8b], "-z"),
    ];
    for (ext, magic, flag) in formats {
        let archive = dir.join(format!("looper.{ext}"));
        pod.ok(&[
            "container",
            "checkpoint",
            "--export",
            archive.to_str().unwrap(),
            "looper",
        ]);
        assert_eq!(
            mode_of(&archive),
            0o600,
            "{ext}: the archive holds the images"
        );
        let bytes = std::fs::read(&archive).unwrap();
        assert!(bytes.starts_with(magic), "{ext} is compressed");
        let mut tar = Command::new("tar");
        tar.arg(flag).arg("-tf").arg(&archive);
        let listing = output_within(tar, Duration::from_secs(60));
        assert!(
            listing.status.success(),
            "tar {flag} -tf {ext}: {}",
            String::from_utf8_lossy(&listing.stderr)
        );
        let listing = String::from_utf8_lossy(&listing.stdout);
        for member in ["config.json", "checkpoint/pstree.img", "upper"] {
            assert!(
                listing.lines().any(|l| l.trim_end_matches('/') == member),
                "{ext}: no {member} in {listing}"
            );
        }
        let last = *numbers(&pod.ok(&["logs", "looper"])).last().unwrap();
        // Under another name that says nothing (or lies) about the compression.
        let renamed = dir.join(format!("renamed-{ext}.tar"));
        std::fs::copy(&archive, &renamed).unwrap();
        for (n, from) in [&archive, &renamed].into_iter().enumerate() {
            let other = Pod::new(&format!("compressed-{n}-{}", ext.replace('.', "-")));
            other.ok(&[
                "container",
                "restore",
                "--import",
                from.to_str().unwrap(),
                "--name",
                "moved",
            ]);
            wait_until(
                "output of the imported container",
                Duration::from_secs(10),
                || numbers(&other.ok(&["logs", "moved"])).len() >= 2,
            );
            let moved = numbers(&other.ok(&["logs", "moved"]));
            assert_eq!(moved[0], last + 1, "{ext}: {moved:?}");
            assert!(moved.windows(2).all(|w| w[1] == w[0] + 1), "{moved:?}");
        }
        // The original comes back from its own checkpoint for the next format.
        pod.ok(&["container", "restore", "looper"]);
        wait_until("counting on", Duration::from_secs(10), || {
            numbers(&pod.ok(&["logs", "looper"])).len() > (last + 2) as usize
        });
    }
    // Names of compressions crpod does not write are refused before anything runs.
    let xz = dir.join("looper.tar.xz");
    let err = pod.fails(&["checkpoint", "--export", xz.to_str().unwrap(), "looper"]);
    assert!(err.contains(".xz"), "{err}");
    assert!(!xz.exists());
    assert_eq!(state_of(&pod, "looper")["Status"], "running");
}

/// (name, type, link target) of an entry with a raw name: the tar crate's setters
/// refuse the `..` and absolute names a hostile archive has.
type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8]);

fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, link) in entries {
        let mut header = tar::Header::new_gnu();
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname[..link.len()].copy_from_slice(link);
        header.set_entry_type(*kind);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1);
        header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        let data: &[u8] = if kind.is_file() { b"pwned\n" } else { b"" };
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(bytes).unwrap();
    z.finish().unwrap()
}

/// Hostile archives, as an image (`import`, `load`) or a checkpoint (`restore
/// --import`), are refused with the entry named, and nothing is unpacked outside.
#[test]
fn hostile_archives_are_refused_and_leave_nothing_outside() {
    use tar::EntryType as T;
    let pod = Pod::new("hostile");
    let work = Cleanup(pod.root.with_extension("work"));
    let _ = std::fs::remove_dir_all(&work.0);
    let outside = work.0.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let out = outside.as_os_str().as_encoded_bytes();
    let abs = outside.join("abs");
    // From images/NAME/rootfs (or the import's staging directory) up to `outside`.
    let dots = format!(
        "../../../../{}/outside/dots",
        work.0.file_name().unwrap().to_str().unwrap()
    );
    let cases: Vec<(Vec<RawEntry>, &str)> = vec![
        (
            vec![(abs.as_os_str().as_encoded_bytes(), T::Regular, b"")],
            "absolute path",
        ),
        (vec![(dots.as_bytes(), T::Regular, b"")], "`..` in the path"),
        (
            vec![(b"esc", T::Symlink, out), (b"esc/pwned", T::Regular, b"")],
            r#"entry "esc/pwned": it lies below the symlink "esc""#,
        ),
        (
            vec![(b"nl\n", T::Symlink, out), (b"nl\n/pwned", T::Regular, b"")],
            r#"entry "nl\n/pwned": it lies below the symlink "nl\n""#,
        ),
        (
            vec![(b"\xff", T::Symlink, out), (b"\xff/pwned", T::Regular, b"")],
            r#"entry "\xff/pwned": it lies below the symlink "\xff""#,
        ),
        (
            vec![(b"lib/up", T::Symlink, b"../../..")],
            r#"entry "lib/up": a symlink to "../../.." escapes the root"#,
        ),
        (
            vec![(b"hard", T::Link, b"../../../../etc/passwd")],
            r#"entry "hard": a hard link to "../../../../etc/passwd""#,
        ),
    ];
    for (n, (entries, expected)) in cases.iter().enumerate() {
        let bytes = raw_tar(entries);
        // Plain and compressed: the checks do not depend on how the bytes came.
        for (kind, data) in [("tar", bytes.clone()), ("tar.gz", gzip(&bytes))] {
            let archive = work.0.join(format!("case{n}.{kind}"));
            std::fs::write(&archive, &data).unwrap();
            let name = format!("hostile{n}");
            let err = pod.fails(&["import", archive.to_str().unwrap(), &name]);
            assert!(err.contains(expected), "case {n} {kind} import: {err}");
            assert!(err.contains(archive.to_str().unwrap()), "{err}");
            assert!(!pod.root.join("images").join(&name).exists(), "case {n}");
            let err = pod.fails(&[
                "container",
                "restore",
                "--import",
                archive.to_str().unwrap(),
                "--name",
                &name,
            ]);
            assert!(err.contains(expected), "case {n} {kind} restore: {err}");
            assert_eq!(
                std::fs::read_dir(&outside).unwrap().count(),
                0,
                "case {n} {kind}: written outside"
            );
        }
        // As the second layer of a docker-archive, over a harmless first one.
        let layers = work.0.join(format!("layers{n}"));
        std::fs::create_dir_all(&layers).unwrap();
        std::fs::write(
            layers.join("1.tar"),
            raw_tar(&[(b"etc", T::Directory, b"")]),
        )
        .unwrap();
        std::fs::write(layers.join("2.tar"), &bytes).unwrap();
        std::fs::write(
            layers.join("manifest.json"),
            format!(r#"[{{"RepoTags":["hostile{n}:latest"],"Layers":["1.tar","2.tar"]}}]"#),
        )
        .unwrap();
        let loaded = work.0.join(format!("load{n}.tar"));
        tar_dir(&layers, &loaded, &[]);
        let err = pod.fails(&["load", "-i", loaded.to_str().unwrap()]);
        assert!(
            err.contains("layer 2 of 2") && err.contains(expected),
            "case {n} load: {err}"
        );
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "case {n} load"
        );
    }
    assert_eq!(
        pod.ok(&["images"]).lines().count(),
        2,
        "only the built-in image"
    );
    assert_eq!(
        pod.ok(&["ps", "-a", "-q"]).lines().count(),
        0,
        "no container"
    );
    // Nothing left behind in the store either (staging directories are removed).
    let left: Vec<_> = std::fs::read_dir(&pod.root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");

    // Odd names are names, not attacks: a rootfs with them is imported byte for byte.
    let odd: [&[u8]; 3] = [b"etc/new\nline", b"etc/caf\xe9", "etc/日本".as_bytes()];
    let mut entries: Vec<RawEntry> = vec![(b"etc", T::Directory, b"")];
    entries.extend(odd.iter().map(|n| (*n, T::Regular, &b""[..])));
    let archive = work.0.join("odd.tar");
    std::fs::write(&archive, raw_tar(&entries)).unwrap();
    pod.ok(&["import", archive.to_str().unwrap(), "odd"]);
    let rootfs = pod.root.join("images/odd/rootfs");
    for name in odd {
        use std::os::unix::ffi::OsStrExt;
        let path = rootfs.join(std::ffi::OsStr::from_bytes(name));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"pwned\n",
            "{}",
            path.display()
        );
    }
}

/// A minimal root filesystem from the host's dash and libc, with /etc/marker and
/// /etc/gone.
fn mini_rootfs(dir: &Path, marker: &str) {
    for (from, to) in [
        ("/bin/dash", "bin/sh"),
        (
            "/lib/x86_64-linux-gnu/libc.so.6",
            "lib/x86_64-linux-gnu/libc.so.6",
        ),
        ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
    ] {
        let to = dir.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).unwrap();
    }
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/marker"), format!("{marker}\n")).unwrap();
    std::fs::write(dir.join("etc/gone"), "bye").unwrap();
}

fn tar_dir(dir: &Path, out: &Path, extra: &[&str]) {
    let mut tar = Command::new("tar");
    tar.arg("-C")
        .arg(dir)
        .args(extra)
        .arg("-cf")
        .arg(out)
        .arg(".");
    let done = output_within(tar, Duration::from_secs(60));
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(std::fs::read(path).unwrap());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stores `bytes` as a blob of an OCI layout; returns its descriptor's digest and size.
fn oci_blob(blobs: &Path, file: &Path) -> (String, u64) {
    let digest = sha256(file);
    std::fs::copy(file, blobs.join(&digest)).unwrap();
    (digest, std::fs::metadata(file).unwrap().len())
}

#[test]
fn import_load_images_and_rmi() {
    let pod = Pod::new("images");
    let work = pod.root.with_extension("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let _cleanup = Cleanup(work.clone());

    // import: a rootfs tarball.
    let base = work.join("base");
    mini_rootfs(&base, "marker-1");
    let base_tar = work.join("base.tar");
    tar_dir(&base, &base_tar, &[]);
    pod.ok(&["import", base_tar.to_str().unwrap(), "mini"]);
    assert!(pod.ok(&["images"]).contains("localhost/mini"));
    let out = pod.ok(&[
        "run",
        "--name",
        "m",
        "mini",
        "/bin/sh",
        "-c",
        "read m </etc/marker; echo $m; echo $$",
    ]);
    assert_eq!(out, "marker-1\n1\n");

    // load: a docker-archive with a second layer that changes a file and whites one out.
    let top = work.join("top");
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::fs::write(top.join("etc/marker"), "marker-2\n").unwrap();
    std::fs::write(top.join("etc/.wh.gone"), "").unwrap();
    let docker = work.join("docker");
    std::fs::create_dir_all(docker.join("l1")).unwrap();
    std::fs::create_dir_all(docker.join("l2")).unwrap();
    std::fs::copy(&base_tar, docker.join("l1/layer.tar")).unwrap();
    tar_dir(&top, &docker.join("l2/layer.tar"), &[]);
    std::fs::write(
        docker.join("manifest.json"),
        r#"[{"Config":"config.json","RepoTags":["docker.io/library/tiny:latest"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#,
    )
    .unwrap();
    std::fs::write(docker.join("config.json"), "{}").unwrap();
    let docker_tar = work.join("docker.tar");
    tar_dir(&docker, &docker_tar, &[]);
    assert_eq!(
        pod.ok(&["load", "-i", docker_tar.to_str().unwrap()]).trim(),
        "Loaded image: localhost/tiny"
    );
    let out = pod.ok(&[
        "run",
        "tiny",
        "/bin/sh",
        "-c",
        "read m </etc/marker; echo $m; test -e /etc/gone || echo gone",
    ]);
    assert_eq!(out, "marker-2\ngone\n");

    // load: an OCI layout with a compressed layer.
    let oci = work.join("oci");
    let blobs = oci.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let layer = work.join("layer.tar.gz");
    tar_dir(&base, &layer, &["-z"]);
    // Descriptors as the OCI image spec has them (podman save writes them so): media
    // type, digest and size each, and a config.
    let (layer_digest, layer_size) = oci_blob(&blobs, &layer);
    let config_path = work.join("config");
    std::fs::write(
        &config_path,
        r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
    )
    .unwrap();
    let (config_digest, config_size) = oci_blob(&blobs, &config_path);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{layer_digest}","size":{layer_size}}}]}}"#
    );
    let manifest_path = work.join("manifest");
    std::fs::write(&manifest_path, &manifest).unwrap();
    let (manifest_digest, manifest_size) = oci_blob(&blobs, &manifest_path);
    std::fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        oci.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_digest}","size":{manifest_size},"annotations":{{"org.opencontainers.image.ref.name":"ocitiny"}}}}]}}"#
        ),
    )
    .unwrap();
    let oci_tar = work.join("oci.tar");
    tar_dir(&oci, &oci_tar, &[]);
    pod.ok(&["load", "-i", oci_tar.to_str().unwrap()]);
    assert_eq!(
        pod.ok(&[
            "run",
            "ocitiny",
            "/bin/sh",
            "-c",
            "read m </etc/marker; echo $m"
        ]),
        "marker-1\n"
    );

    // An OCI blob that does not match its digest.
    std::fs::write(blobs.join(&layer_digest), b"tampered").unwrap();
    let bad_oci = work.join("bad-oci.tar");
    tar_dir(&oci, &bad_oci, &[]);
    let err = pod.fails(&["load", "-i", bad_oci.to_str().unwrap()]);
    assert!(err.contains("digest"), "{err}");

    // A hostile archive: a layer's file below a lower layer's symlink to outside.
    let outside = work.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let evil = work.join("evil");
    let (l1, l2) = (evil.join("l1"), evil.join("l2"));
    std::fs::create_dir_all(&l1).unwrap();
    std::fs::create_dir_all(l2.join("escape")).unwrap();
    std::os::unix::fs::symlink(&outside, l1.join("escape")).unwrap();
    std::fs::write(l2.join("escape/pwned"), "x").unwrap();
    let layers = evil.join("layers");
    std::fs::create_dir_all(&layers).unwrap();
    tar_dir(&l1, &layers.join("1.tar"), &[]);
    tar_dir(&l2, &layers.join("2.tar"), &[]);
    std::fs::write(
        layers.join("manifest.json"),
        r#"[{"RepoTags":["evil:latest"],"Layers":["1.tar","2.tar"]}]"#,
    )
    .unwrap();
    let evil_tar = work.join("evil.tar");
    tar_dir(&layers, &evil_tar, &[]);
    let err = pod.fails(&["load", "-i", evil_tar.to_str().unwrap()]);
    assert!(err.contains("symlink"), "{err}");
    assert!(
        !outside.join("pwned").exists(),
        "nothing written outside the image"
    );
    assert!(!pod.ok(&["images"]).contains("localhost/evil"));

    // Mistakes: a broken archive, a name taken, an image in use, the built-in one.
    let junk = work.join("junk.tar");
    std::fs::write(&junk, b"junk").unwrap();
    pod.fails(&["load", "-i", junk.to_str().unwrap()]);
    pod.fails(&["import", base_tar.to_str().unwrap(), "mini"]);
    let err = pod.fails(&["rmi", "mini"]);
    assert!(err.contains("in use"), "{err}");
    pod.fails(&["rmi", "host"]);
    pod.ok(&["rmi", "-f", "mini"]);
    assert!(!pod.ok(&["images"]).contains("localhost/mini"));
    assert!(!pod.ok(&["ps", "-a"]).contains(" m\n"));
    pod.fails(&["run", "mini", "/bin/sh"]);
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
