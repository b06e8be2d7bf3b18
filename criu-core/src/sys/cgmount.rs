//! Mounting a cgroup hierarchy (v1 or v2) on a directory of our own, and taking it
//! off again: the cgroup "yard" where the restore and the dump see every hierarchy.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn c_str(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

/// Mounts the cgroup hierarchy with these mount options (`cpu,cpuacct`,
/// `none,name=x`) on `target`; `v2` mounts the unified hierarchy (`cgroup2`).
pub fn mount_cgroup(target: &Path, v2: bool, options: &str) -> io::Result<()> {
    let target = c_str(target.as_os_str().as_bytes())?;
    let fstype = c_str(if v2 { b"cgroup2" } else { b"cgroup" })?;
    let data = c_str(options.as_bytes())?;
    let source = c_str(b"none")?;
    // SAFETY: every pointer is a NUL-terminated string alive for the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            if v2 {
                std::ptr::null()
            } else {
                data.as_ptr().cast()
            },
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches the mount on `target` (lazily: a hierarchy stays alive while in use).
pub fn umount_detach(target: &Path) -> io::Result<()> {
    let target = c_str(target.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path alive for the call.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
