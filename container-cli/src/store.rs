//! crpod's state on disk, under `--root` (default `/var/lib/crpod`):
//!
//! ```text
//! containers/<id>/config.json   what `run` was asked (name, image, command, env, ...)
//! containers/<id>/state.json    what the container is doing (status, pids, exit code)
//! containers/<id>/ctr.log       its stdout and stderr
//! containers/<id>/upper, work   the writable overlay layer
//! containers/<id>/checkpoint/   images of the last checkpoint
//! images/<name>/rootfs          imported images (`host` is built in: the host's /)
//! ```
//!
//! Every change of state.json is a write to a temporary file and a rename, so a reader
//! never sees half a file, whoever (crpod or a container's monitor) writes it.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::Error;

/// The built-in image: the host's root filesystem as the read-only lower layer.
pub const HOST_IMAGE: &str = "host";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub id: String,
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    /// `none` (own network namespace, loopback only) or `host`.
    pub network: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// A user namespace of its own (`--userns`, `--uidmap`); none: the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<UserNs>,
}

/// One line of a uid or gid map: `size` ids from `container` on in the container are
/// `host` and on outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

impl IdMap {
    /// The host ids it maps, as a half-open range (u64: the end of the last one).
    pub fn host_range(&self) -> std::ops::Range<u64> {
        u64::from(self.host)..u64::from(self.host) + u64::from(self.size)
    }

    /// The container ids it maps.
    pub fn container_range(&self) -> std::ops::Range<u64> {
        u64::from(self.container)..u64::from(self.container) + u64::from(self.size)
    }

    /// `CONTAINER:HOST:SIZE`, as `--uidmap` takes it.
    pub fn text(&self) -> String {
        format!("{}:{}:{}", self.container, self.host, self.size)
    }
}

/// A container's own user namespace: its maps, as `/proc/PID/uid_map` and `gid_map`
/// show them from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNs {
    /// Chosen by crpod (`--userns=auto`), not given with `--uidmap`/`--gidmap`.
    pub auto: bool,
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
}

impl UserNs {
    /// The host id that is `id` in the container, by `map`.
    pub fn host_id(map: &[IdMap], id: u32) -> Option<u32> {
        map.iter()
            .find(|m| m.container_range().contains(&u64::from(id)))
            .map(|m| m.host + (id - m.container))
    }

    /// The host uid and gid of the container's root, when both are mapped.
    pub fn host_root(&self) -> Option<(u32, u32)> {
        Some((
            UserNs::host_id(&self.uid_map, 0)?,
            UserNs::host_id(&self.gid_map, 0)?,
        ))
    }

    /// The text written to `/proc/PID/uid_map` or `gid_map`: one line per range.
    pub fn proc_text(map: &[IdMap]) -> String {
        map.iter()
            .map(|m| format!("{} {} {}\n", m.container, m.host, m.size))
            .collect()
    }
}

impl Config {
    /// The first 12 characters of the id, as podman shows ids and uses them for the
    /// hostname (all of an id that a damaged config.json holds shorter or non-ASCII).
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub status: Status,
    /// Host pid of the container's init while it runs.
    pub pid: i32,
    /// Host pid of the monitor that waits for the init.
    pub monitor: i32,
    pub exit_code: i32,
    pub started: u64,
    pub finished: u64,
    /// The last exit was a checkpoint: images are in `checkpoint/`.
    pub checkpointed: bool,
    /// A checkpoint is being taken: the monitor records the kill it causes as one.
    #[serde(default)]
    pub checkpointing: bool,
}

impl State {
    pub fn created() -> State {
        State {
            status: Status::Created,
            pid: 0,
            monitor: 0,
            exit_code: 0,
            started: 0,
            finished: 0,
            checkpointed: false,
            checkpointing: false,
        }
    }

    /// Running, and its init is still there (a monitor killed with SIGKILL cannot
    /// record the end).
    pub fn is_running(&self) -> bool {
        self.status == Status::Running
            && self.pid > 0
            && Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

/// One container's directory and files.
#[derive(Debug, Clone)]
pub struct Container {
    pub dir: PathBuf,
    pub config: Config,
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, Error> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, "read", e))?;
    serde_json::from_slice(&text)
        .map_err(|e| Error::Msg(format!("{}: not valid crpod state: {e}", path.display())))
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let text = serde_json::to_vec_pretty(value).map_err(|e| Error::Msg(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, "write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, "replace", e))
}

impl Store {
    pub fn open(root: &Path) -> Result<Store, Error> {
        for sub in ["containers", "images"] {
            let d = root.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, "create", e))?;
        }
        Ok(Store {
            root: root.to_owned(),
        })
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    /// Every container, oldest first.
    pub fn list(&self) -> Result<Vec<Container>, Error> {
        let dir = self.containers_dir();
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, "list", e))? {
            let Ok(e) = e else { continue };
            let cfg = e.path().join("config.json");
            // A directory without config is one being created or removed.
            if !cfg.exists() {
                continue;
            }
            out.push(Container {
                dir: e.path(),
                config: read_json(&cfg)?,
            });
        }
        out.sort_by(|a, b| (a.config.created, &a.config.id).cmp(&(b.config.created, &b.config.id)));
        Ok(out)
    }

    /// A container by name, full id or unique id prefix.
    pub fn find(&self, what: &str) -> Result<Container, Error> {
        let all = self.list()?;
        if let Some(c) = all
            .iter()
            .find(|c| c.config.name == what || c.config.id == what)
        {
            return Ok(c.clone());
        }
        let by_prefix: Vec<_> = all
            .iter()
            .filter(|c| what.len() >= 3 && c.config.id.starts_with(what))
            .collect();
        match by_prefix.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::NoSuchContainer(what.to_owned())),
            _ => Err(Error::Msg(format!(
                "more than one container matches {what:?}: give more of the ID"
            ))),
        }
    }

    /// The most recently created container (`-l`).
    pub fn latest(&self) -> Result<Container, Error> {
        self.list()?
            .pop()
            .ok_or_else(|| Error::Msg("no containers to act on with --latest".into()))
    }

    /// Creates a container's directory and config; fails if the name is taken or the
    /// id or name could not be a directory's (a config from an archive is not trusted).
    pub fn create(&self, config: Config) -> Result<Container, Error> {
        if config.id.len() != 64 || !config.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Msg(format!("{:?} is not a container ID", config.id)));
        }
        if config.name.is_empty() || config.name.contains('/') || config.command.is_empty() {
            return Err(Error::Msg(format!(
                "{:?} is not a valid container (name or command)",
                config.name
            )));
        }
        if self.list()?.iter().any(|c| c.config.name == config.name) {
            return Err(Error::NameInUse(config.name));
        }
        let dir = self.containers_dir().join(&config.id);
        std::fs::create_dir(&dir).map_err(|e| Error::io(&dir, "create", e))?;
        for sub in ["upper", "work"] {
            let d = dir.join(sub);
            std::fs::create_dir(&d).map_err(|e| Error::io(&d, "create", e))?;
        }
        let c = Container { dir, config };
        c.set_state(&State::created())?;
        write_json(&c.dir.join("config.json"), &c.config)?;
        Ok(c)
    }

    /// The lower layer of an image: `/` for `host`, else the imported rootfs.
    pub fn image_rootfs(&self, image: &str) -> Result<PathBuf, Error> {
        if image == HOST_IMAGE {
            return Ok(PathBuf::from("/"));
        }
        let dir = self.root.join("images").join(image).join("rootfs");
        if image.contains('/') || image.starts_with('.') || !dir.is_dir() {
            return Err(Error::Msg(format!(
                "{image}: image not known (see `crpod images`; `host` is built in)"
            )));
        }
        Ok(dir)
    }
}

impl Container {
    pub fn state(&self) -> Result<State, Error> {
        read_json(&self.dir.join("state.json"))
    }

    pub fn set_state(&self, state: &State) -> Result<(), Error> {
        write_json(&self.dir.join("state.json"), state)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("ctr.log")
    }

    pub fn checkpoint_dir(&self) -> PathBuf {
        self.dir.join("checkpoint")
    }

    /// The first 12 characters of the id (see [`Config::short_id`]).
    pub fn short_id(&self) -> &str {
        self.config.short_id()
    }
}

/// A directory being filled (an image, an unpacked archive): removed when dropped,
/// also on an error half way, unless [`Staging::keep`] was called once it is complete.
pub struct Staging {
    dir: PathBuf,
    keep: bool,
}

impl Staging {
    pub fn new(dir: PathBuf) -> Staging {
        Staging { dir, keep: false }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps the directory: it is complete.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A new random container id: 64 hex digits, as podman's.
pub fn new_id() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    let path = Path::new("/dev/urandom");
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| Error::io(path, "read", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A generated name for a container started without `--name`.
pub fn new_name(id: &str) -> String {
    const ADJ: [&str; 8] = [
        "brave", "calm", "eager", "fond", "happy", "keen", "quiet", "wise",
    ];
    const NOUN: [&str; 8] = [
        "turing", "hopper", "lovelace", "knuth", "ritchie", "torvalds", "liskov", "dijkstra",
    ];
    let n = u8::from_str_radix(&id[..2], 16).unwrap_or(0) as usize;
    format!("{}_{}", ADJ[n % 8], NOUN[(n / 8) % 8])
}
