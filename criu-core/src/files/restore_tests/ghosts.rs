//! Restore tests of deleted files other than regular ones: a directory, a FIFO with its
//! data, a device node and a symlink dumped from a child and made again; ghost and
//! link-remap images that lie, refused with the image's name.

use super::*;

/// A child held each kind of deleted node; each comes back as the same kind, deleted,
/// with its data, device number or target, and no name is left in the directory.
#[test]
fn deleted_nodes_come_back_deleted() {
    let dir = TempDir::new("ghost-nodes");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let at = |name: &str| work.join(name);

    std::fs::create_dir(at("dir")).unwrap();
    let dir_fd = sys::open_path(&at("dir"), libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
    std::fs::remove_dir(at("dir")).unwrap();
    sys::mknod(&at("fifo"), libc::S_IFIFO | 0o600, 0).unwrap();
    let fifo = sys::open_path(&at("fifo"), libc::O_RDWR | libc::O_NONBLOCK, 0).unwrap();
    File::from(fifo.try_clone().unwrap())
        .write_all(b"queued")
        .unwrap();
    std::fs::remove_file(at("fifo")).unwrap();
    sys::mknod(&at("null"), libc::S_IFCHR | 0o600, libc::makedev(1, 3)).unwrap();
    let null = sys::open_path(&at("null"), libc::O_RDWR, 0).unwrap();
    std::fs::remove_file(at("null")).unwrap();
    std::os::unix::fs::symlink("a/target", at("link")).unwrap();
    let link_fd = sys::open_path(&at("link"), libc::O_PATH | libc::O_NOFOLLOW, 0).unwrap();
    std::fs::remove_file(at("link")).unwrap();

    let held = [raw(&dir_fd), raw(&fifo), raw(&null), raw(&link_fd)];
    let fdinfo = dump_fds(&held, &images);
    drop((dir_fd, fifo, null, link_fd));

    let mut opener = FileOpener::load(&images).unwrap();
    let fds = open_all(&mut opener, &fdinfo);
    let [d, f, n, l] = held.map(|fd| &fds[&fd]);
    for (fd, name) in [(d, "dir"), (f, "fifo"), (n, "null"), (l, "link")] {
        assert_eq!(link(fd), format!("{} (deleted)", at(name).display()));
    }
    let meta = |fd: &OwnedFd| file(fd).metadata().unwrap();
    assert!(meta(d).is_dir() && meta(d).nlink() == 0);
    assert!(meta(f).file_type().is_fifo() && meta(f).nlink() == 0);
    let mut queued = [0u8; 16];
    let got = file(f).read(&mut queued).unwrap();
    assert_eq!(&queued[..got], b"queued");
    assert!(meta(n).file_type().is_char_device());
    assert_eq!(meta(n).rdev(), libc::makedev(1, 3));
    assert_eq!(meta(n).mode() & 0o7777, 0o600);
    assert!(meta(l).file_type().is_symlink());
    assert_eq!(sys::readlink_fd(l.as_fd()).unwrap(), b"a/target");
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0, "names left");
}

/// Ghost images without what their type needs, of a type no ghost is made of, and a
/// link remap to a file that is not there: each refused, naming the image or the file.
#[test]
fn ghost_and_link_remap_images_that_lie_are_refused() {
    let dir = TempDir::new("ghost-lies");
    let d = dir.path();
    let gone = d.join("gone");
    write_files(
        d,
        &[entry(pb::FdTypes::Reg, 3, |e| {
            e.reg = Some(pb::RegFileEntry {
                id: 3,
                name: gone.as_os_str().as_encoded_bytes().to_vec(),
                flags: libc::O_RDONLY as u32,
                ..Default::default()
            })
        })],
    );
    let remap = |remap_type: pb::RemapType, remap_id: u32| {
        let mut w = writer(d, "REMAP_FPATH");
        w.write_entry(&pb::RemapFilePathEntry {
            orig_id: 3,
            remap_id,
            remap_type: Some(remap_type as i32),
        })
        .unwrap();
        w.finish().unwrap();
    };
    let ghost = |mode: u32| {
        let k = ImageKind::by_name("GHOST_FILE").unwrap();
        let mut w = ImageWriter::create(d.join("ghost-file-9.img"), k).unwrap();
        w.write_entry(&pb::GhostFileEntry {
            mode,
            ..Default::default()
        })
        .unwrap();
        w.finish().unwrap();
    };
    let open = || {
        let mut opener = FileOpener::load(d).unwrap();
        opener.open(3, &[]).err().map(|e| e.to_string())
    };
    remap(pb::RemapType::Ghost, 9);
    ghost(libc::S_IFCHR | 0o600);
    assert_eq!(
        open().unwrap(),
        "ghost-file-9.img: has a device node without its device number"
    );
    ghost(libc::S_IFLNK | 0o777);
    assert_eq!(
        open().unwrap(),
        "ghost-file-9.img: has a symlink without its target"
    );
    ghost(libc::S_IFSOCK | 0o777);
    let err = open().unwrap();
    assert!(err.contains("of a type no ghost is made of"), "{err}");
    // Nothing was made along the way.
    assert!(!gone.exists());
    remap(pb::RemapType::Linked, 77);
    let err = open().unwrap();
    assert_eq!(
        err,
        "remap-fpath.img: links file 3 to file 77, which is not a regular file entry"
    );
}
