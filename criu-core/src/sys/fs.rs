//! Filesystem objects the ghost files need that std has no call for: device nodes and
//! FIFOs (mknod), a symlink's target read through an `O_PATH` descriptor, a new name
//! for an open inode, and the times of a node set without following a symlink.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::check;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// mknod(2): a FIFO (`S_IFIFO`) or a device node (`S_IFCHR`, `S_IFBLK` with `rdev`)
/// at `path`; `mode` holds the type and the permission bits (the umask applies).
pub fn mknod(path: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let path = c_path(path)?;
    // SAFETY: `path` is NUL-terminated and outlives the call; no other memory is passed.
    let ret = unsafe { libc::mknod(path.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) };
    check(ret as libc::c_long)?;
    Ok(())
}

/// The target of the symlink `fd` is open on (`O_PATH | O_NOFOLLOW`): readlinkat(2)
/// with an empty path. Bytes: a target need not be UTF-8.
pub fn readlink_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    // A target is at most PATH_MAX bytes; one more tells a truncated read.
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: the empty path is a NUL-terminated static string; the kernel writes at
    // most `buf.len()` bytes into `buf`, which outlives the call.
    let n = check(unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    } as libc::c_long)? as usize;
    if n >= buf.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf.truncate(n);
    Ok(buf)
}

/// linkat(2) with `AT_EMPTY_PATH`: gives the inode `fd` is open on the new name `path`
/// (the inode must still have a name somewhere: nlink > 0).
pub fn link_fd(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    // SAFETY: both paths are NUL-terminated and outlive the call.
    check(unsafe {
        libc::linkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    } as libc::c_long)?;
    Ok(())
}

/// utimensat(2) on `path` itself (a symlink is not followed): access and modification
/// times as (seconds, nanoseconds).
pub fn set_times_nofollow(path: &Path, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let path = c_path(path)?;
    let ts = |(sec, nsec): (i64, i64)| libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as libc::c_long,
    };
    let times = [ts(atime), ts(mtime)];
    // SAFETY: `path` is NUL-terminated and `times` is an array of two timespecs, both
    // outliving the call.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } as libc::c_long)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    #[test]
    fn nodes_links_and_targets() {
        let dir = std::env::temp_dir().join(format!("criu-rs-sys-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        mknod(&fifo, libc::S_IFIFO | 0o600, 0).unwrap();
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        let link = dir.join("link");
        std::os::unix::fs::symlink("some/target", &link).unwrap();
        let fd = super::super::open_path(&link, libc::O_PATH | libc::O_NOFOLLOW, 0).unwrap();
        assert_eq!(readlink_fd(fd.as_fd()).unwrap(), b"some/target");
        set_times_nofollow(&link, (1000, 0), (2000, 0)).unwrap();
        assert_eq!(std::fs::symlink_metadata(&link).unwrap().mtime(), 2000);
        let other = dir.join("other");
        link_fd(fd.as_fd(), &other).unwrap();
        assert_eq!(
            std::fs::read_link(&other).unwrap(),
            Path::new("some/target")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
