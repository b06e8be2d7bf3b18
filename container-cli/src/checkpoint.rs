//! `container checkpoint` and `container restore`: the whole container saved with the
//! engine (frozen through its cgroup) and brought back in new namespaces.
//!
//! Checkpoint: the dump takes the tree from the container's init (pid 1 of its pid
//! namespace, so the images hold the pids the container sees), freezing the cgroup
//! first. The mount and network namespaces are external to the images: crpod builds
//! them again from the container's config, as it did for `run`. Its one tmpfs,
//! `/dev/shm`, is saved beside the images while the tree is still frozen (`DEV_SHM`), and
//! unpacked into the new one before the tree is rebuilt. The log the container
//! writes to is a file of ours, not of the container: its dumped path is recorded so a
//! restore hands our log in its place (`--inherit-fd`), even under another `--root`.
//!
//! Restore, in the container's new monitor: a holder process builds the mount (overlay
//! root, /sys, /dev), uts, ipc and net namespaces; the monitor joins the container's
//! cgroup, and the engine recreates the pid namespace (the init is pid 1 again), joins
//! the holder's namespaces, mounts /proc of the new pid namespace, and rebuilds the tree
//! as the monitor's child, so the monitor waits for it as for a started one. Then the
//! monitor leaves the cgroup and the holder goes. A container with a user namespace of
//! its own (`run --userns`) has it dumped with its maps, and its pid, uts and ipc
//! namespaces, which it owns; the holder builds only the mount and net namespaces (owned
//! by the host's, as at `run`), and the engine makes the user namespace again with the
//! same maps and those it owns in it.
//!
//! `--export FILE` writes config.json, checkpoint/ and upper/ to one tar archive,
//! compressed as FILE's name says (`.tar.zst`, `.tar.gz`); `--import FILE` unpacks one
//! (any compression, told by its first bytes) into a new container, exited and
//! checkpointed, and restores it.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use criu_core::dump::{dump, DumpOptions};
use criu_core::restore::RestoreOptions;
use criu_core::sys::Pid;
use serde::{Deserialize, Serialize};

use crate::runtime::{self, Started};
use crate::store::{self, Config, Container, Status, Store};
use crate::{select, Error, Which};

#[derive(Args)]
pub struct CheckpointArgs {
    /// Keep the container running after the checkpoint.
    #[arg(short = 'R', long = "leave-running")]
    pub leave_running: bool,
    /// Write the checkpoint to one archive file.
    #[arg(short = 'e', long = "export")]
    pub export: Option<PathBuf>,
    /// Print the dump's statistics.
    #[arg(long = "print-stats")]
    pub print_stats: bool,
    /// Checkpoint established TCP connections (CRIU's --tcp-established): they come
    /// back connected, the peer none the wiser. Without it a container holding one is
    /// refused and runs on.
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// Checkpoint file locks the container holds (CRIU's --file-locks).
    #[arg(long = "file-locks")]
    pub file_locks: bool,
    #[command(flatten)]
    pub which: Which,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// Restore from an archive written by `checkpoint --export`.
    #[arg(short = 'i', long = "import")]
    pub import: Option<PathBuf>,
    /// The name of the container restored from an archive.
    #[arg(short = 'n', long = "name")]
    pub name: Option<String>,
    /// Keep the checkpoint images after the restore.
    #[arg(long)]
    pub keep: bool,
    /// Accepted as podman takes it: a checkpoint made with --tcp-established is
    /// restored with its connections whether it is given or not.
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// Accepted as podman takes it: as --tcp-established, for --file-locks.
    #[arg(long = "file-locks")]
    pub file_locks: bool,
    #[command(flatten)]
    pub which: Which,
}

/// What crpod keeps beside the images.
#[derive(Serialize, Deserialize)]
struct Meta {
    /// The log file's path as the dump saved it (the key to hand our log in for).
    log_key: String,
    /// Dumped with --tcp-established: the restore rebuilds the connections (and
    /// lifts the network lock the dump left).
    #[serde(default)]
    tcp_established: bool,
    /// Dumped with --file-locks.
    #[serde(default)]
    file_locks: bool,
}

/// What a checkpoint was asked to take besides the processes.
#[derive(Clone, Copy, Default)]
struct Taken {
    tcp_established: bool,
    file_locks: bool,
}

const META: &str = "crpod-checkpoint.json";
/// The contents of the container's `/dev/shm` (a tmpfs of its mount namespace, which the
/// images do not hold): POSIX shared memory and semaphores its programs keep there
/// (PostgreSQL's dynamic shared memory, Python's multiprocessing locks) and may have
/// mapped, which the restore opens again by name.
const DEV_SHM: &str = "crpod-dev-shm.tar.gz";

pub fn checkpoint(store: &Store, args: CheckpointArgs) -> Result<u8, Error> {
    let targets = select(store, &args.which, |c| {
        c.state().is_ok_and(|s| s.is_running())
    })?;
    if let Some(path) = &args.export {
        if targets.len() != 1 {
            return Err(Error::Msg("--export takes exactly one container".into()));
        }
        // A name crpod cannot write is refused before the container is stopped.
        crate::archive::Compression::for_name(path)?;
    }
    for c in &targets {
        let started = Instant::now();
        let taken = Taken {
            tcp_established: args.tcp_established,
            file_locks: args.file_locks,
        };
        let stats = checkpoint_one(c, args.leave_running, taken)?;
        if let Some(path) = &args.export {
            export(c, path)?;
        }
        if args.print_stats {
            let out = serde_json::json!({
                "podman_checkpoint_duration": started.elapsed().as_micros() as u64,
                "container_statistics": [{
                    "Id": c.config.id,
                    "Name": c.config.name,
                    "criu_statistics": {
                        "freezing_time": stats.freezing_time,
                        "frozen_time": stats.frozen_time,
                        "memdump_time": stats.memdump_time,
                        "memwrite_time": stats.memwrite_time,
                        "pages_scanned": stats.pages_scanned,
                        "pages_written": stats.pages_written,
                    }
                }]
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        } else {
            println!("{}", c.config.id);
        }
    }
    Ok(0)
}

fn checkpoint_one(
    c: &Container,
    leave_running: bool,
    taken: Taken,
) -> Result<criu_core::dump::DumpStats, Error> {
    let mut state = c.state()?;
    if !state.is_running() {
        return Err(Error::NotRunning(c.config.name.clone()));
    }
    let images = c.checkpoint_dir();
    let staging = c.dir.join("checkpoint.new");
    let _ = std::fs::remove_dir_all(&staging);
    // 0700, kept by the rename to checkpoint/: the images hold the container's memory.
    criu_core::images::create_image_dir(&staging).map_err(|e| Error::io(&staging, "create", e))?;
    if progress_on_terminal() {
        eprint!("Checkpointing {}...", c.config.name);
    }
    state.checkpointing = !leave_running;
    c.set_state(&state)?;
    // /dev/shm is saved once the images are written, while the tree is still frozen
    // (it is gone with the mount namespace once the tree is killed).
    let dev_shm = PathBuf::from(format!("/proc/{}/root/dev/shm", state.pid));
    let dev_shm_image = staging.join(DEV_SHM);
    let notify = criu_core::notify::Notifier::new(move |event| match event {
        criu_core::notify::Event::PostDump => {
            criu_core::mounts::tmpfs::save(&dev_shm, &dev_shm_image)
                .map_err(|e| format!("saving the container's /dev/shm: {e}"))
        }
        _ => Ok(()),
    });
    let opts = DumpOptions {
        leave_running,
        tcp_established: taken.tcp_established,
        file_locks: taken.file_locks,
        freeze_cgroup: Some(crate::cgroup::dir(&c.config.id)?),
        external_namespaces: vec!["net".into(), "mnt".into()],
        notify,
        ..DumpOptions::new(Pid(state.pid), &staging)
    };
    let stats = match dump(&opts) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            if let Ok(mut s) = c.state() {
                s.checkpointing = false;
                let _ = c.set_state(&s);
            }
            return Err(Error::Msg(format!(
                "checkpointing {} failed (it runs on unchanged): {e}",
                c.config.name
            )));
        }
    };
    let meta = Meta {
        log_key: c.log_path().display().to_string(),
        tcp_established: taken.tcp_established,
        file_locks: taken.file_locks,
    };
    store::write_json(&staging.join(META), &meta)?;
    restrict_images(&staging)?;
    let _ = std::fs::remove_dir_all(&images);
    std::fs::rename(&staging, &images).map_err(|e| Error::io(&images, "replace", e))?;
    if !leave_running {
        runtime::wait_exited(c, Duration::from_secs(30))?;
    }
    if progress_on_terminal() {
        eprintln!(" done");
    }
    Ok(stats)
}

fn progress_on_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

pub fn restore(store: &Store, args: RestoreArgs) -> Result<u8, Error> {
    let targets = match &args.import {
        Some(archive) => vec![import(store, archive, args.name.as_deref())?],
        None => {
            if args.name.is_some() {
                return Err(Error::Msg("--name is for restores with --import".into()));
            }
            select(store, &args.which, |c| {
                c.state().is_ok_and(|s| !s.is_running() && s.checkpointed)
            })?
        }
    };
    for c in &targets {
        let state = c.state()?;
        if state.is_running() {
            return Err(Error::Msg(format!(
                "container {} is running: only a checkpointed container can be restored",
                c.config.name
            )));
        }
        if !c.checkpoint_dir().join(META).exists() {
            return Err(Error::Msg(format!(
                "container {} has no checkpoint to restore (checkpoint it first)",
                c.config.name
            )));
        }
        if progress_on_terminal() {
            eprint!("Restoring {}...", c.config.name);
        }
        runtime::start_monitor(store, c, true)?;
        if progress_on_terminal() {
            eprintln!(" done");
        }
        if !args.keep {
            let _ = std::fs::remove_dir_all(c.checkpoint_dir());
            let mut s = c.state()?;
            s.checkpointed = false;
            c.set_state(&s)?;
        }
        println!("{}", c.config.id);
    }
    Ok(0)
}

/// In the container's new monitor: see the module comment.
pub fn restore_in_monitor(store: &Store, c: &Container) -> Result<Started, Error> {
    let images = c.checkpoint_dir();
    let meta: Meta = store::read_json(&images.join(META))?;
    let mut holder = runtime::spawn_holder(store, c)?;
    let result = restore_with_holder(c, &images, &meta, holder.id() as i32);
    let _ = holder.kill();
    let _ = holder.wait();
    result
}

fn restore_with_holder(
    c: &Container,
    images: &Path,
    meta: &Meta,
    holder: i32,
) -> Result<Started, Error> {
    let log = runtime::open_log(c)?;
    // The init's stdin, opened by the monitor outside the container like the log.
    let null = std::fs::File::open("/dev/null")
        .map_err(|e| Error::io(Path::new("/dev/null"), "open", e))?;
    let ns = |kind: &str| {
        (
            kind.to_owned(),
            PathBuf::from(format!("/proc/{holder}/ns/{kind}")),
        )
    };
    // With a user namespace of its own the holder made only mnt (and net): the engine
    // makes the user namespace and those it owns (pid, uts, ipc) from the images.
    let mut join_ns = vec![ns("mnt")];
    if c.config.userns.is_none() {
        join_ns.extend([ns("uts"), ns("ipc")]);
    }
    if c.config.network != "host" {
        join_ns.push(ns("net"));
    }
    let opts = RestoreOptions {
        join_ns,
        root: Some(PathBuf::from(format!("/proc/{holder}/root"))),
        inherit_fds: vec![
            (meta.log_key.clone(), log.as_raw_fd()),
            ("/dev/null".to_owned(), null.as_raw_fd()),
        ],
        proc_mount: Some(PathBuf::from("/proc")),
        tcp_established: meta.tcp_established,
        file_locks: meta.file_locks,
        ..RestoreOptions::new(images)
    };
    // The holder's /dev/shm is a new tmpfs: it gets what the container's held.
    let dev_shm_image = images.join(DEV_SHM);
    if let Ok(saved) = std::fs::File::open(&dev_shm_image) {
        let dev_shm = PathBuf::from(format!("/proc/{holder}/root/dev/shm"));
        criu_core::mounts::tmpfs::unpack(&saved, &dev_shm)
            .map_err(|e| Error::io(&dev_shm_image, "unpack into /dev/shm", e))?;
    }
    crate::cgroup::move_self(Some(&c.config.id))?;
    let restored = criu_core::restore::restore(&opts);
    let left = crate::cgroup::move_self(None);
    let restored =
        restored.map_err(|e| Error::Msg(format!("restoring {} failed: {e}", c.config.name)))?;
    left?;
    Ok(Started::child(restored.pid.0))
}

/// The archive `--export` writes: a tar of the container's config, its checkpoint and
/// its writable layer, compressed as the file's name says (`.tar.gz`, `.tar.zst`). It is
/// created 0600 before anything is written: it holds the images.
fn export(c: &Container, path: &Path) -> Result<(), Error> {
    crate::archive::write(
        path,
        &[
            ("config.json", c.dir.join("config.json")),
            ("checkpoint", c.checkpoint_dir()),
            ("upper", c.dir.join("upper")),
        ],
    )
    .map_err(|why| Error::Msg(format!("writing {} failed: {why}", path.display())))
}

/// Recreates a container from an `--export` archive: same config (a new ID and the
/// given name with `--name`), its writable layer and checkpoint, state exited and
/// checkpointed.
fn import(store: &Store, archive: &Path, name: Option<&str>) -> Result<Container, Error> {
    let tmp = store.root.join(format!("import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    criu_core::images::create_image_dir(&tmp).map_err(|e| Error::io(&tmp, "create", e))?;
    let cleanup = store::Staging::new(tmp.clone());
    // Compression is found from the archive's first bytes, whatever its name.
    crate::archive::unpack(archive, &tmp, crate::archive::Kind::Tree)
        .map_err(|why| Error::Msg(format!("restoring from {}: {why}", archive.display())))?;
    // The parts are taken only as what they claim to be: a symlink `upper` to the host's
    // / would become the container's writable layer.
    let is = |part: &str, dir: bool| {
        std::fs::symlink_metadata(tmp.join(part)).is_ok_and(|m| {
            if dir {
                m.is_dir()
            } else {
                m.is_file()
            }
        })
    };
    let cfg_path = tmp.join("config.json");
    if !is("config.json", false) {
        return Err(Error::Msg(format!(
            "{} is not a crpod checkpoint archive: it has no config.json",
            archive.display()
        )));
    }
    let mut config: Config = serde_json::from_slice(&std::fs::read(&cfg_path).map_err(|_| {
        Error::Msg(format!(
            "{} is not a crpod checkpoint archive: it has no config.json",
            archive.display()
        ))
    })?)
    .map_err(|e| Error::Msg(format!("{}: bad config.json: {e}", archive.display())))?;
    if !is("checkpoint", true) || !is(&format!("checkpoint/{META}"), false) || !is("upper", true) {
        return Err(Error::Msg(format!(
            "{} is not a complete crpod checkpoint archive",
            archive.display()
        )));
    }
    store.image_rootfs(&config.image)?;
    if let Some(n) = name {
        config.name = n.to_owned();
        config.id = store::new_id()?;
    }
    if store.find(&config.id).is_ok() {
        return Err(Error::Msg(format!(
            "a container with ID {} exists already: restore with --name NEW",
            config.id.get(..12).unwrap_or(&config.id)
        )));
    }
    config.created = store::now();
    let c = store.create(config)?;
    for part in ["checkpoint", "upper"] {
        let target = c.dir.join(part);
        let _ = std::fs::remove_dir_all(&target);
        std::fs::rename(tmp.join(part), &target).map_err(|e| Error::io(&target, "move", e))?;
    }
    // An archive of an older crpod holds images readable by all.
    restrict_images(&c.checkpoint_dir())?;
    let mut state = c.state()?;
    state.status = Status::Exited;
    state.checkpointed = true;
    c.set_state(&state)?;
    drop(cleanup);
    Ok(c)
}

/// Narrows a checkpoint directory to the owner: the directory 0700, every file in it
/// 0600 (the images hold the container's memory and secrets).
fn restrict_images(dir: &Path) -> Result<(), Error> {
    use criu_core::images::{IMAGE_DIR_MODE, IMAGE_FILE_MODE};
    use std::os::unix::fs::PermissionsExt;
    let set = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(path, "restrict", e))
    };
    set(dir, IMAGE_DIR_MODE)?;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, "read", e))? {
        let entry = entry.map_err(|e| Error::io(dir, "read", e))?;
        let file_type = entry
            .file_type()
            .map_err(|e| Error::io(&entry.path(), "stat", e))?;
        if file_type.is_file() {
            set(&entry.path(), IMAGE_FILE_MODE)?;
        } else if file_type.is_dir() {
            restrict_images(&entry.path())?;
        }
    }
    Ok(())
}
