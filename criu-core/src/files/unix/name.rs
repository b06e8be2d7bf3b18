//! A unix socket's name, both ways: the dump records the file a socket is bound to (its
//! permissions, whether it was deleted, the directory of a relative name) and refuses
//! one that moved since the bind; the restore binds the name again: paths, relative
//! names in their directory, abstract names, and names whose file was deleted (bound
//! in directories made for the while, then unlinked, and reached by their peers
//! through the file held open).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use criu_images::pb;

use crate::files::dump::{FileError, OpenFd};
use crate::files::restore::{FileOpener, FileRef, Result};
use crate::files::socket::in_image;
use crate::sys;

/// Opens a unix socket's bound file with `O_PATH` (linux/sockios.h, SIOCPROTOPRIVATE).
const SIOCUNIXFILE: libc::c_ulong = 0x89e0;

// --- dump ------------------------------------------------------------------------

/// Refuses a unix socket whose bound file cannot be found again: covered by a mount or
/// renamed over since the bind, or, for a relative name, moved. A file that was deleted
/// is fine (the restore binds and deletes it again), and so is one renamed or moved
/// while nothing took its name: a server that binds a temporary name and renames it into
/// place (haproxy's stats socket), which [`bound_file`] records. Changes nothing.
pub(super) fn check_bound_file(fd: &OpenFd<'_>) -> Result<(), FileError> {
    let raw = sys::socket_address(fd.raw(), false).map_err(fd.io("read the socket's name"))?;
    let name = raw.get(2..).unwrap_or_default();
    // Unnamed, or abstract (a leading NUL): no file.
    let name = name.split(|&b| b == 0).next().unwrap_or_default();
    if name.is_empty() {
        return Ok(());
    }
    moved_to(fd, name).map(|_| ())
}

/// Where the file of a socket bound to `name` (a path) is now, when it is no longer at
/// its name: `None` when it is there, deleted, or cannot be judged from here.
fn moved_to(fd: &OpenFd<'_>, name: &[u8]) -> Result<Option<Vec<u8>>, FileError> {
    // Without SIOCUNIXFILE (old kernel, no CAP_NET_ADMIN) the frozen stage says why.
    let Ok(file) = sys::ioctl_get_fd(fd.raw(), SIOCUNIXFILE) else {
        return Ok(None);
    };
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(fd.io("read the path of the socket's bound file"))?;
    let link = criu_images::path_bytes(&link);
    if link.ends_with(b" (deleted)") {
        return Ok(None);
    }
    let shown = String::from_utf8_lossy(name);
    let now = String::from_utf8_lossy(&link);
    let ino = fd.meta.ino();
    let moved = |how: &str| {
        fd.unsupported(format!(
            "unix socket {ino} bound to {shown}: {how} (its file is at {now}); the images \
             keep only the name, so the restore would make the file at the name"
        ))
    };
    if name.first() != Some(&b'/') {
        // Relative: the file's path must end with the name (the frozen stage takes the
        // directory from there).
        let mut tail = b"/".to_vec();
        tail.extend_from_slice(name);
        return if link.ends_with(&tail) {
            Ok(None)
        } else {
            Err(moved("its file was renamed or moved since the bind"))
        };
    }
    let meta = File::from(file)
        .metadata()
        .map_err(fd.io("stat the socket's bound file"))?;
    // Both paths as the task sees them, through its root.
    let in_task = |path: &[u8]| {
        let mut p = std::ffi::OsString::from(format!("/proc/{}/root", fd.pid));
        p.push(std::ffi::OsStr::from_bytes(path));
        std::fs::symlink_metadata(p)
    };
    let same = |m: &std::fs::Metadata| (m.dev(), m.ino()) == (meta.dev(), meta.ino());
    match in_task(name) {
        Ok(m) if same(&m) => Ok(None),
        Ok(_) => Err(moved(
            "its name now leads to another file (renamed over, moved, or covered by a mount)",
        )),
        // Renamed or moved, and nothing took the name: found where our path to the
        // file (the same in the task's root) says, it is recorded there.
        Err(e) if e.kind() == io::ErrorKind::NotFound => match in_task(&link) {
            Ok(m) if same(&m) => Ok(Some(link)),
            _ => Err(moved(
                "its file was renamed or moved since the bind, to where the task's root \
                 does not show it",
            )),
        },
        // Unreadable here (permissions): nothing to judge by.
        Err(_) => Ok(None),
    }
}

/// Fills the bound file's permissions, whether it was deleted, and for a relative name
/// the directory it was bound in.
pub(super) fn bound_file(
    fd: &OpenFd<'_>,
    name: &[u8],
    entry: &mut pb::UnixSkEntry,
) -> Result<(), FileError> {
    let file = sys::ioctl_get_fd(fd.raw(), SIOCUNIXFILE)
        .map_err(fd.io("open the socket's bound file (SIOCUNIXFILE)"))?;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(fd.io("read the bound file's path"))?;
    let meta = File::from(file)
        .metadata()
        .map_err(fd.io("stat the socket's bound file"))?;
    entry.file_perms = Some(pb::FilePermsEntry {
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
    });
    // Bytes: a path need not be UTF-8.
    let mut path = criu_images::path_bytes(&link);
    if let Some(stripped) = path.strip_suffix(b" (deleted)") {
        entry.deleted = Some(true);
        path = stripped.to_vec();
    }
    let name = name.strip_suffix(&[0]).unwrap_or(name);
    if entry.deleted != Some(true) {
        entry.moved_to = moved_to(fd, name)?;
    }
    if name.first() != Some(&b'/') {
        let dir = path
            .strip_suffix(name)
            .and_then(|d| d.strip_suffix(b"/"))
            .ok_or_else(|| {
                fd.unsupported(format!(
                    "unix socket bound to relative name {} whose file is now {}",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(&path)
                ))
            })?;
        entry.name_dir = Some(if dir.is_empty() {
            b"/".to_vec()
        } else {
            dir.to_vec()
        });
    }
    Ok(())
}

// --- restore ---------------------------------------------------------------------

impl FileOpener {
    /// Binds a unix socket to its saved name: removes a stale socket file at the path,
    /// binds (relative names in their directory), and sets the file's owner and mode;
    /// a name whose file was deleted is bound and unlinked again ([`Self::bind_deleted`]).
    /// Established stream sockets keep no name (as CRIU: their name is their listener's).
    pub(super) fn bind_unix(
        &mut self,
        at: &FileRef,
        s: BorrowedFd<'_>,
        ue: &pb::UnixSkEntry,
    ) -> Result<()> {
        if ue.name.is_empty()
            || (ue.r#type as i32 != libc::SOCK_DGRAM && ue.state == in_image::TCP_ESTABLISHED)
        {
            return Ok(());
        }
        let shown = show_unix_name(&ue.name);
        let addr = unix_addr(&ue.name);
        let Some(path) = unix_path(ue) else {
            // Abstract.
            return sys::bind_raw(s, &addr).map_err(at.io(format!("bind to {shown}")));
        };
        // The tree's path, as we reach it (under `--root`, or its mount namespace).
        let ours = self.at_root(&path);
        if ue.deleted == Some(true) {
            let held = self.bind_deleted(at, s, ue, &ours)?;
            self.unix.ghosts.insert(at.id, held);
            return Ok(());
        }
        match std::fs::symlink_metadata(&ours) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&ours)
                .map_err(at.io(format!("remove stale socket {}", path.display())))?,
            Ok(_) => {
                return Err(at.changed(format!(
                    "{} is in the way of the socket's name and is not a socket",
                    path.display()
                )))
            }
            Err(_) => {}
        }
        self.name_lookup(ue)
            .run(|| sys::bind_raw(s, &addr))
            .map_err(at.io(format!("bind to {shown}")))?;
        set_bound_perms(at, &ours, ue)?;
        match moved_path(ue) {
            Some(moved) => self.move_bound_file(at, &ours, &moved),
            None => Ok(()),
        }
    }

    /// Renames a socket's file, just bound at its name `bound`, to where it was when
    /// dumped (`moved`, in the tree's root), over a stale socket file left there.
    fn move_bound_file(&self, at: &FileRef, bound: &Path, moved: &Path) -> Result<()> {
        let to = self.at_root(moved);
        let undo = |e: std::io::Error| {
            let _ = std::fs::remove_file(bound);
            e
        };
        match std::fs::symlink_metadata(&to) {
            Ok(m) if !m.file_type().is_socket() => {
                let _ = std::fs::remove_file(bound);
                return Err(at.changed(format!(
                    "{} is in the way of the socket's file and is not a socket",
                    moved.display()
                )));
            }
            _ => {}
        }
        std::fs::rename(bound, &to)
            .map_err(undo)
            .map_err(at.io(format!("rename {} to {}", bound.display(), moved.display())))
    }

    /// Binds to a name whose file was unlinked after the bind, and unlinks it again, so
    /// the socket keeps its name with no file behind it, as dumped. Directories of the
    /// name that are gone (removed after the unlink) are made for the while and removed
    /// again, deepest first; whatever holds the name now (another socket, a FIFO...) is
    /// moved aside for the while and put back. Returns an `O_PATH` descriptor of the
    /// unlinked file: peers connect through it (see [`Self::unix_target`]), as nothing
    /// else can reach the socket any more.
    fn bind_deleted(
        &self,
        at: &FileRef,
        s: BorrowedFd<'_>,
        ue: &pb::UnixSkEntry,
        path: &Path,
    ) -> Result<OwnedFd> {
        let made = make_missing_dirs(path)
            .map_err(at.io(format!("make the directories of {}", path.display())))?;
        let held = self.bind_moving_aside(at, s, ue, path);
        let removed = remove_made_dirs(&made);
        let held = held?;
        removed.map_err(at.io(format!(
            "remove the directories made to bind to {}",
            path.display()
        )))?;
        Ok(held)
    }

    /// [`Self::bind_deleted`] once the name's directory exists.
    fn bind_moving_aside(
        &self,
        at: &FileRef,
        s: BorrowedFd<'_>,
        ue: &pb::UnixSkEntry,
        path: &Path,
    ) -> Result<OwnedFd> {
        let shown = show_unix_name(&ue.name);
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".criu-rs-aside-{}", std::process::id()));
        let aside = PathBuf::from(aside);
        let moved = std::fs::symlink_metadata(path).is_ok();
        if moved {
            std::fs::rename(path, &aside)
                .map_err(at.io(format!("move {} aside", path.display())))?;
        }
        let addr = unix_addr(&ue.name);
        let held = self
            .name_lookup(ue)
            .run(|| sys::bind_raw(s, &addr))
            .map_err(at.io(format!("bind to deleted {shown}")))
            .and_then(|()| {
                // The file is ours from the bind on: whatever fails, it goes again.
                let held = set_bound_perms(at, path, ue).and_then(|()| {
                    sys::ioctl_get_fd(s, SIOCUNIXFILE)
                        .map_err(at.io("hold the bound file (SIOCUNIXFILE)"))
                });
                let unlinked = std::fs::remove_file(path)
                    .map_err(at.io(format!("unlink {} again", path.display())));
                let held = held?;
                unlinked?;
                Ok(held)
            });
        if moved {
            std::fs::rename(&aside, path).map_err(at.io(format!(
                "move {} back to {}",
                aside.display(),
                path.display()
            )))?;
        }
        held
    }

    /// The address by which socket `id`, whose entry is `ue`, is reached, and where it
    /// is looked up: its name, in the tree's root (and for a relative name its
    /// directory); or for a name whose file was deleted the descriptor that holds the
    /// file (`/proc/self/fd/N`, ours: the kernel finds a socket by the inode a path
    /// leads to, and that link leads to the unlinked one).
    pub(super) fn unix_target(&self, id: u32, ue: &pb::UnixSkEntry) -> (Vec<u8>, NameLookup) {
        match self.unix.ghosts.get(&id) {
            Some(held) => (
                unix_addr(format!("/proc/self/fd/{}", held.as_raw_fd()).as_bytes()),
                NameLookup::default(),
            ),
            None => match moved_path(ue) {
                // Moved after the bind: found where it was moved to.
                Some(moved) => (
                    unix_addr(moved.as_os_str().as_bytes()),
                    NameLookup {
                        root: self.reg.root.clone(),
                        dir: None,
                    },
                ),
                None => (unix_addr(&ue.name), self.name_lookup(ue)),
            },
        }
    }

    /// Where socket `ue`'s name is looked up: in the tree's root, when it is not ours,
    /// and for a relative name in the directory it was bound in.
    fn name_lookup(&self, ue: &pb::UnixSkEntry) -> NameLookup {
        let in_tree = ue.name.first().is_some_and(|&b| b != 0);
        NameLookup {
            root: self.reg.root.clone().filter(|_| in_tree),
            dir: relative_dir(ue).map(Path::to_owned),
        }
    }
}

/// Where a unix socket name is looked up by a bind, connect or send: the kernel takes
/// the calling thread's root and cwd for it, and `sun_path` holds at most 107 bytes,
/// so the tree's names are not prefixed with our path to its root (which may not fit)
/// but looked up from a thread chrooted there: each socket gets exactly the name it
/// had, relative names too.
#[derive(Debug, Default, Clone)]
pub(in crate::files) struct NameLookup {
    /// The tree's root as we reach it (`--root`, or `/proc/ROOT/root` for a tree in a
    /// mount namespace of its own); `None`: ours.
    pub(in crate::files) root: Option<PathBuf>,
    /// The directory of a relative name, as the tree sees it.
    pub(in crate::files) dir: Option<PathBuf>,
}

impl NameLookup {
    /// Runs `f` where the name is looked up: in a thread of its own that does not share
    /// the process's root and cwd (so other threads keep theirs), chrooted to `root`
    /// and in `dir`; directly when both are ours.
    pub(in crate::files) fn run<T: Send>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send,
    ) -> io::Result<T> {
        if self.root.is_none() && self.dir.is_none() {
            return f();
        }
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    sys::unshare(libc::CLONE_FS)?;
                    if let Some(root) = &self.root {
                        std::os::unix::fs::chroot(root).map_err(|e| {
                            io::Error::new(e.kind(), format!("chroot {}: {e}", root.display()))
                        })?;
                        std::env::set_current_dir("/")?;
                    }
                    if let Some(dir) = &self.dir {
                        std::env::set_current_dir(dir).map_err(|e| {
                            io::Error::new(e.kind(), format!("chdir {}: {e}", dir.display()))
                        })?;
                    }
                    f()
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the helper thread panicked")))
        })
    }
}

/// Formats a unix socket name: `@abstract`, `/path`, or `(unnamed)`.
pub(in crate::files) fn show_unix_name(name: &[u8]) -> String {
    match name {
        [] => "(unnamed)".into(),
        [0, rest @ ..] => format!("@{}", String::from_utf8_lossy(rest)),
        path => {
            String::from_utf8_lossy(path.split(|&b| b == 0).next().unwrap_or_default()).into_owned()
        }
    }
}

/// The `sockaddr_un` bytes of a name: abstract names exactly as saved, paths with
/// their terminating NUL.
pub(in crate::files) fn unix_addr(name: &[u8]) -> Vec<u8> {
    let mut addr = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    if name.first() == Some(&0) {
        addr.extend_from_slice(name);
    } else {
        addr.extend_from_slice(name.split(|&b| b == 0).next().unwrap_or_default());
        addr.push(0);
    }
    addr
}

/// Where a named socket's file was moved after the bind (`moved_to`), if it was.
fn moved_path(ue: &pb::UnixSkEntry) -> Option<PathBuf> {
    ue.moved_to
        .as_deref()
        .filter(|p| p.first() == Some(&b'/'))
        .map(|p| criu_images::path_of(p).to_owned())
}

/// The filesystem path of a socket's name (relative names joined to their directory);
/// `None` for abstract names.
fn unix_path(ue: &pb::UnixSkEntry) -> Option<PathBuf> {
    if ue.name.first().is_none_or(|&b| b == 0) {
        return None;
    }
    let name = std::ffi::OsStr::from_bytes(ue.name.split(|&b| b == 0).next().unwrap_or_default());
    Some(match relative_dir(ue) {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    })
}

/// Sets a bound socket file's owner and mode as saved.
fn set_bound_perms(at: &FileRef, path: &Path, ue: &pb::UnixSkEntry) -> Result<()> {
    if let Some(p) = &ue.file_perms {
        std::os::unix::fs::chown(path, Some(p.uid), Some(p.gid))
            .map_err(at.io(format!("chown {}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(p.mode & 0o7777))
            .map_err(at.io(format!("chmod {}", path.display())))?;
    }
    Ok(())
}

/// Makes the directories of `path`'s parent that do not exist (mode 0700: they live only
/// while a socket is bound in them), outermost first, and returns them in that order.
/// On an error the ones made are removed again.
pub(in crate::files) fn make_missing_dirs(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut dir = path.parent();
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
        match std::fs::symlink_metadata(d) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(d.to_owned()),
            Err(e) => return Err(e),
        }
        dir = d.parent();
    }
    missing.reverse();
    let mut made = Vec::new();
    for d in missing {
        if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&d) {
            let _ = remove_made_dirs(&made);
            return Err(io::Error::new(
                e.kind(),
                format!("mkdir {}: {e}", d.display()),
            ));
        }
        made.push(d);
    }
    Ok(made)
}

/// Removes directories [`make_missing_dirs`] made, deepest first; tries them all and
/// returns the first error.
pub(in crate::files) fn remove_made_dirs(made: &[PathBuf]) -> io::Result<()> {
    let mut first = Ok(());
    for d in made.iter().rev() {
        if let Err(e) = std::fs::remove_dir(d) {
            if first.is_ok() {
                first = Err(io::Error::new(
                    e.kind(),
                    format!("rmdir {}: {e}", d.display()),
                ));
            }
        }
    }
    first
}

/// The directory a relative socket name was bound in.
fn relative_dir(ue: &pb::UnixSkEntry) -> Option<&Path> {
    if ue.name.first().is_some_and(|&b| b != 0 && b != b'/') {
        ue.name_dir.as_deref().map(criu_images::path_of)
    } else {
        None
    }
}

/// Runs `f` with `dir` as the working directory, in a thread of its own that does not
/// share the process's (so other threads keep theirs); directly when `dir` is `None`.
#[cfg(test)]
pub(in crate::files) fn in_dir<T: Send>(
    dir: Option<&Path>,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let lookup = NameLookup {
        root: None,
        dir: dir.map(Path::to_owned),
    };
    lookup.run(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn socket_names_parse() {
        assert_eq!(show_unix_name(b"\0abc"), "@abc");
        assert_eq!(show_unix_name(b"/run/x.sock\0"), "/run/x.sock");
        assert_eq!(unix_addr(b"/a\0")[2..], *b"/a\0");
        assert_eq!(unix_addr(b"\0ab")[2..], *b"\0ab");
    }

    /// The directories made for a bind to a deleted name are exactly the missing ones,
    /// and go again deepest first, leaving what existed.
    #[test]
    fn directories_made_for_a_deleted_name_go_again() {
        let dir = TempDir::new("ghost-dirs");
        let path = dir.path().join("a/b/c/sk");
        let made = make_missing_dirs(&path).unwrap();
        assert_eq!(
            made,
            vec![
                dir.path().join("a"),
                dir.path().join("a/b"),
                dir.path().join("a/b/c")
            ]
        );
        assert!(path.parent().unwrap().is_dir());
        remove_made_dirs(&made).unwrap();
        assert!(!dir.path().join("a").exists());
        assert!(dir.path().is_dir(), "what existed stays");
        assert_eq!(
            make_missing_dirs(&dir.path().join("sk")).unwrap(),
            Vec::<PathBuf>::new()
        );
        // A file where a directory should be: nothing is left made.
        std::fs::write(dir.path().join("f"), b"").unwrap();
        assert!(make_missing_dirs(&dir.path().join("f/x/sk")).is_err());
        assert!(!dir.path().join("f/x").exists());
    }
}
