//! `crpod`: a small, daemonless, podman-like container tool built on criu-core. The
//! commands, flags and output columns are podman's, so its checkpoint tutorial works
//! with `crpod` in place of `podman`.
//!
//! Layout, each module using only those listed before it:
//! - `store`: the state on disk (containers, their config and state);
//! - `archive`: tar archives, plain, gzip or zstd, read with every entry checked;
//! - `cgroup`: where containers' cgroups are (the v2 hierarchy of this host);
//! - `userns`: the user namespace a new container asks for (`--userns`, `--uidmap`);
//! - `runtime`: starts, watches, enters and removes containers;
//! - `images`: the built-in image and those imported or loaded from archives;
//! - `checkpoint`: saves and restores containers with the engine, also as archives (it
//!   takes its flags and the containers they name, `Which` and `select`, from this file);
//! - this file: the command line, the output and the exit codes (125 for crpod's own
//!   errors, as podman; `exec` and attached `run` return the command's code). It hands
//!   `checkpoint`'s restore to the monitor in `runtime`, so `runtime` does not call back.
//!
//! No `unsafe` here: system calls go through nix and criu-core's `sys`.

#![forbid(unsafe_code)]

mod archive;
mod cgroup;
mod checkpoint;
mod images;
mod runtime;
mod store;
mod userns;

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use store::{Config, Container, Status, Store};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Msg(String),
    #[error("{path}: cannot {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("no container with name or ID {0:?} found: no such container")]
    NoSuchContainer(String),
    #[error(
        "the container name {0:?} is already in use: choose another name or remove that container"
    )]
    NameInUse(String),
    #[error("container {0} is not running")]
    NotRunning(String),
}

impl Error {
    pub fn io(path: &Path, what: &'static str, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_owned(),
            what,
            source,
        }
    }
}

#[derive(Parser)]
#[command(
    name = "crpod",
    about = "A small daemonless container tool with checkpoint/restore"
)]
struct Cli {
    /// Where containers and images are kept.
    #[arg(long, global = true, default_value = "/var/lib/crpod")]
    root: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Default)]
pub struct Which {
    /// The most recently created container.
    #[arg(short = 'l', long = "latest")]
    pub latest: bool,
    /// Every container.
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// Containers by name or ID.
    pub names: Vec<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a command in a new container.
    Run {
        #[arg(short = 'd', long = "detach")]
        detach: bool,
        #[arg(long)]
        name: Option<String>,
        /// none (own network namespace with loopback) or host.
        #[arg(long, default_value = "none")]
        network: String,
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        #[arg(short = 'w', long = "workdir", default_value = "/")]
        workdir: String,
        /// host (the default: the host's user namespace), or auto[:size=N]: one of its
        /// own, whose ids 0..N (65536 by default) are N host ids from 100000 up that no
        /// other container of this --root maps. Kept across checkpoint and restore.
        #[arg(long = "userns", value_name = "MODE")]
        userns: Option<String>,
        /// A user namespace of its own with this uid map line, CONTAINER:HOST:SIZE
        /// (repeatable; the gid map is the same unless --gidmap is given).
        #[arg(long = "uidmap", value_name = "CONTAINER:HOST:SIZE")]
        uidmap: Vec<String>,
        /// As --uidmap, for the gid map (the uid map is the same unless given).
        #[arg(long = "gidmap", value_name = "CONTAINER:HOST:SIZE")]
        gidmap: Vec<String>,
        image: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// List containers.
    Ps {
        #[arg(short = 'a', long = "all")]
        all: bool,
        #[arg(short = 'q', long = "quiet")]
        quiet: bool,
    },
    /// Print a container's output.
    Logs {
        #[arg(short = 'l', long = "latest")]
        latest: bool,
        #[arg(short = 'f', long = "follow")]
        follow: bool,
        #[arg(long)]
        tail: Option<usize>,
        name: Option<String>,
    },
    /// Run a command in a running container.
    Exec {
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Checkpoint or restore containers.
    Container {
        #[command(subcommand)]
        command: ContainerCmd,
    },
    /// Checkpoint containers (as `container checkpoint`).
    Checkpoint(checkpoint::CheckpointArgs),
    /// Restore containers (as `container restore`).
    Restore(checkpoint::RestoreArgs),
    /// Send a signal to containers (SIGKILL by default).
    Kill {
        #[arg(short = 's', long = "signal", default_value = "KILL")]
        signal: String,
        #[command(flatten)]
        which: Which,
    },
    /// Stop containers: SIGTERM, then SIGKILL after the timeout.
    Stop {
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        #[command(flatten)]
        which: Which,
    },
    /// Start stopped containers again.
    Start {
        #[command(flatten)]
        which: Which,
    },
    /// Remove containers.
    Rm {
        #[arg(short = 'f', long = "force")]
        force: bool,
        #[command(flatten)]
        which: Which,
    },
    /// Show a container's configuration and state as JSON.
    Inspect { names: Vec<String> },
    /// List images.
    Images,
    /// Import a root filesystem tarball as an image.
    Import { tarball: PathBuf, name: String },
    /// Load an image archive as `podman save` writes it (docker-archive or OCI).
    Load {
        #[arg(short = 'i', long = "input")]
        input: PathBuf,
    },
    /// Remove images.
    Rmi {
        #[arg(short = 'f', long = "force")]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    #[command(name = "_monitor", hide = true)]
    Monitor {
        id: String,
        #[arg(long)]
        restore: bool,
    },
    #[command(name = "_init", hide = true)]
    Init {
        id: String,
        #[arg(long)]
        holder: bool,
    },
}

#[derive(Subcommand)]
enum ContainerCmd {
    Checkpoint(checkpoint::CheckpointArgs),
    Restore(checkpoint::RestoreArgs),
}

fn main() -> ExitCode {
    criu_core::sys::default_sigpipe();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(125)
        }
    }
}

fn run(cli: Cli) -> Result<u8, Error> {
    let store = Store::open(&cli.root)?;
    match cli.command {
        Cmd::Run {
            detach,
            name,
            network,
            env,
            workdir,
            userns,
            uidmap,
            gidmap,
            image,
            command,
        } => {
            let userns = userns::request(userns.as_deref(), &uidmap, &gidmap)?;
            cmd_run(
                &store, detach, name, network, env, workdir, userns, image, command,
            )
        }
        Cmd::Ps { all, quiet } => cmd_ps(&store, all, quiet),
        Cmd::Logs {
            latest,
            follow,
            tail,
            name,
        } => {
            let c = match (latest, name) {
                (true, _) => store.latest()?,
                (false, Some(n)) => store.find(&n)?,
                (false, None) => {
                    return Err(Error::Msg(
                        "logs needs a container name or ID, or --latest".into(),
                    ))
                }
            };
            cmd_logs(&c, follow, tail)
        }
        Cmd::Exec { name, command } => {
            let c = store.find(&name)?;
            runtime::exec(&c, &command).map(exit_byte)
        }
        Cmd::Container { command } => match command {
            ContainerCmd::Checkpoint(a) => checkpoint::checkpoint(&store, a),
            ContainerCmd::Restore(a) => checkpoint::restore(&store, a),
        },
        Cmd::Checkpoint(a) => checkpoint::checkpoint(&store, a),
        Cmd::Restore(a) => checkpoint::restore(&store, a),
        Cmd::Kill { signal, which } => {
            let sig = parse_signal(&signal)?;
            let targets = select(&store, &which, |c| c.state().is_ok_and(|s| s.is_running()))?;
            for c in &targets {
                runtime::kill(c, sig)?;
                if sig == libc::SIGKILL {
                    // It cannot survive this: report once it is gone, so that `rm`
                    // right after finds it stopped.
                    runtime::wait_exited(c, Duration::from_secs(20))?;
                }
                println!("{}", c.config.id);
            }
            Ok(0)
        }
        Cmd::Stop { time, which } => {
            let targets = select(&store, &which, |c| c.state().is_ok_and(|s| s.is_running()))?;
            for c in &targets {
                if c.state()?.is_running() {
                    let _ = runtime::kill(c, libc::SIGTERM);
                    if runtime::wait_exited(c, Duration::from_secs(time)).is_err() {
                        let _ = runtime::kill(c, libc::SIGKILL);
                        runtime::wait_exited(c, Duration::from_secs(10))?;
                    }
                }
                println!("{}", c.config.name);
            }
            Ok(0)
        }
        Cmd::Start { which } => {
            let targets = select(&store, &which, |c| c.state().is_ok_and(|s| !s.is_running()))?;
            for c in &targets {
                if c.state()?.is_running() {
                    return Err(Error::Msg(format!("{} is already running", c.config.name)));
                }
                runtime::start_monitor(&store, c, false)?;
                println!("{}", c.config.name);
            }
            Ok(0)
        }
        Cmd::Rm { force, which } => cmd_rm(&store, force, &which),
        Cmd::Inspect { names } => cmd_inspect(&store, &names),
        Cmd::Images => {
            println!(
                "{:<24}  {:<10}  {:<12}  {:<16}  SIZE",
                "REPOSITORY", "TAG", "IMAGE ID", "CREATED"
            );
            for images::ImageRow {
                repository: repo,
                tag,
                id,
                created,
                size,
            } in images::list(&store)?
            {
                let created = if created == 0 {
                    "built in".to_owned()
                } else {
                    format!(
                        "{} ago",
                        human(store::now().saturating_sub(created)).to_lowercase()
                    )
                };
                let size = if size == 0 {
                    "-".to_owned()
                } else {
                    format!("{:.1} MB", size as f64 / 1e6)
                };
                println!(
                    "{repo:<24}  {tag:<10}  {:<12}  {created:<16}  {size}",
                    id.get(..12).unwrap_or(&id)
                );
            }
            Ok(0)
        }
        Cmd::Import { tarball, name } => {
            println!("{}", images::import(&store, &tarball, &name)?);
            Ok(0)
        }
        Cmd::Load { input } => {
            println!("Loaded image: localhost/{}", images::load(&store, &input)?);
            Ok(0)
        }
        Cmd::Rmi { force, names } => {
            for n in &names {
                for id in images::remove(&store, n, force)? {
                    println!("{id}");
                }
                println!("Untagged: localhost/{}", images::normalize(n));
            }
            Ok(0)
        }
        Cmd::Monitor { id, restore } => {
            let restorer: runtime::Restorer = checkpoint::restore_in_monitor;
            runtime::monitor(&store, &id, restore.then_some(restorer))?;
            Ok(0)
        }
        Cmd::Init { id, holder } => runtime::init(&store, &id, holder).map(|()| 0),
    }
}

fn exit_byte(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(255)
}

/// The containers `-l`, `-a` or names pick; `-a` takes those `all_filter` accepts.
pub fn select(
    store: &Store,
    which: &Which,
    all_filter: impl Fn(&Container) -> bool,
) -> Result<Vec<Container>, Error> {
    if which.all {
        return Ok(store.list()?.into_iter().filter(all_filter).collect());
    }
    if which.latest {
        return Ok(vec![store.latest()?]);
    }
    if which.names.is_empty() {
        return Err(Error::Msg(
            "give container names or IDs, --latest or --all".into(),
        ));
    }
    which.names.iter().map(|n| store.find(n)).collect()
}

fn parse_signal(s: &str) -> Result<i32, Error> {
    if let Ok(n) = s.parse::<i32>() {
        return Ok(n);
    }
    let name = s.trim_start_matches("SIG").to_ascii_uppercase();
    let sig = match name.as_str() {
        "KILL" => libc::SIGKILL,
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "QUIT" => libc::SIGQUIT,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "ALRM" => libc::SIGALRM,
        _ => return Err(Error::Msg(format!("invalid signal: {s}"))),
    };
    Ok(sig)
}

#[allow(clippy::too_many_arguments)]
fn cmd_run(
    store: &Store,
    detach: bool,
    name: Option<String>,
    network: String,
    env: Vec<String>,
    workdir: String,
    userns: userns::Request,
    image: String,
    command: Vec<String>,
) -> Result<u8, Error> {
    if network != "none" && network != "host" {
        return Err(Error::Msg(format!(
            "--network {network}: only none and host are supported"
        )));
    }
    let image = images::normalize(&image);
    store.image_rootfs(&image)?;
    let id = store::new_id()?;
    let name = match name {
        Some(n) => n,
        None => {
            let base = store::new_name(&id);
            let taken = store.list()?.iter().any(|c| c.config.name == base);
            if taken {
                format!("{base}_{}", &id[..6])
            } else {
                base
            }
        }
    };
    if name.is_empty() || name.contains('/') {
        return Err(Error::Msg(format!(
            "{name:?} is not a valid container name"
        )));
    }
    // Held until the config is written: another `run` choosing ids at once sees ours.
    let lock = userns::lock(store)?;
    let userns = userns::resolve(store, userns, &lock)?;
    let c = store.create(Config {
        id,
        name,
        image,
        command,
        env,
        workdir,
        network,
        created: store::now(),
        userns,
    })?;
    drop(lock);
    if let Err(e) = runtime::start_monitor(store, &c, false) {
        let _ = std::fs::remove_dir_all(&c.dir);
        return Err(e);
    }
    if detach {
        println!("{}", c.config.id);
        return Ok(0);
    }
    cmd_logs(&c, true, None)?;
    Ok(exit_byte(c.state()?.exit_code))
}

/// "3 seconds", "5 minutes", as podman words durations.
fn human(secs: u64) -> String {
    let (n, unit) = match secs {
        0..=1 => return "Less than a second".into(),
        2..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86399 => (secs / 3600, "hour"),
        _ => (secs / 86400, "day"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

fn status_text(s: &store::State) -> String {
    let now = store::now();
    if s.is_running() {
        return format!("Up {}", human(now.saturating_sub(s.started)).to_lowercase());
    }
    match s.status {
        Status::Created => "Created".into(),
        _ => format!(
            "Exited ({}) {} ago",
            s.exit_code,
            human(now.saturating_sub(s.finished)).to_lowercase()
        ),
    }
}

fn cmd_ps(store: &Store, all: bool, quiet: bool) -> Result<u8, Error> {
    let mut rows = Vec::new();
    for c in store.list()? {
        let s = c.state()?;
        if !all && !s.is_running() {
            continue;
        }
        rows.push((c, s));
    }
    if quiet {
        for (c, _) in &rows {
            println!("{}", c.short_id());
        }
        return Ok(0);
    }
    println!(
        "{:<12}  {:<22}  {:<20}  {:<14}  {:<34}  {:<6}  NAMES",
        "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS"
    );
    for (c, s) in rows {
        let command = fit_column(&c.config.command.join(" "), 20);
        let created = format!(
            "{} ago",
            human(store::now().saturating_sub(c.config.created)).to_lowercase()
        );
        println!(
            "{:<12}  {:<22}  {}  {:<14}  {:<34}  {:<6}  {}",
            c.short_id(),
            format!("localhost/{}:latest", c.config.image),
            command,
            created,
            status_text(&s),
            "",
            c.config.name
        );
    }
    Ok(0)
}

/// `text` as one table cell `columns` terminal columns wide: cut between characters
/// (never inside one) and ended with "..." when longer, then padded with spaces. A wide
/// character (CJK, most emoji) counts two columns; a control character (a newline in a
/// `sh -c` script) is shown as a space so the row stays one line.
fn fit_column(text: &str, columns: usize) -> String {
    use unicode_width::UnicodeWidthChar;
    let cells: Vec<(char, usize)> = text
        .chars()
        .map(|ch| if ch.is_control() { ' ' } else { ch })
        .map(|ch| (ch, ch.width().unwrap_or(0)))
        .collect();
    let full: usize = cells.iter().map(|(_, w)| w).sum();
    let (mut out, mut used) = (String::with_capacity(text.len()), 0);
    let room = if full > columns {
        columns.saturating_sub(3)
    } else {
        columns
    };
    for (ch, width) in cells {
        if used + width > room {
            break;
        }
        out.push(ch);
        used += width;
    }
    if full > columns {
        out.push_str(&"..."[..columns.min(3)]);
        used += columns.min(3);
    }
    out.extend(std::iter::repeat_n(' ', columns.saturating_sub(used)));
    out
}

fn cmd_logs(c: &Container, follow: bool, tail: Option<usize>) -> Result<u8, Error> {
    let path = c.log_path();
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(&path, "open", e)),
    };
    let mut text = Vec::new();
    file.read_to_end(&mut text)
        .map_err(|e| Error::io(&path, "read", e))?;
    let start = match tail {
        Some(n) => {
            let mut cut = text.len();
            let body = text.strip_suffix(b"\n").unwrap_or(&text);
            let mut seen = 0;
            for (i, b) in body.iter().enumerate().rev() {
                if *b == b'\n' {
                    seen += 1;
                    if seen == n {
                        cut = i + 1;
                        break;
                    }
                }
            }
            if seen < n {
                0
            } else if n == 0 {
                text.len()
            } else {
                cut
            }
        }
        None => 0,
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&text[start..]);
    let _ = out.flush();
    if !follow {
        return Ok(0);
    }
    let mut pos = file
        .stream_position()
        .map_err(|e| Error::io(&path, "read", e))?;
    loop {
        let mut more = Vec::new();
        let _ = file.read_to_end(&mut more);
        if !more.is_empty() {
            pos += more.len() as u64;
            let _ = out.write_all(&more);
            let _ = out.flush();
            continue;
        }
        let running = c.state().is_ok_and(|s| s.status == Status::Running);
        if !running {
            // One last read after the end was recorded.
            let mut rest = Vec::new();
            let _ = file.read_to_end(&mut rest);
            let _ = out.write_all(&rest);
            let _ = out.flush();
            let _ = pos;
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cmd_rm(store: &Store, force: bool, which: &Which) -> Result<u8, Error> {
    let targets = select(store, which, |_| true)?;
    for c in &targets {
        runtime::remove_container(c, force)?;
        println!("{}", c.config.id);
    }
    // The parent cgroup goes with the last container (of any crpod root).
    if let Ok(base) = cgroup::base() {
        let _ = std::fs::remove_dir(base);
    }
    Ok(0)
}

fn cmd_inspect(store: &Store, names: &[String]) -> Result<u8, Error> {
    let mut out = Vec::new();
    for n in names {
        let c = store.find(n)?;
        let s = c.state()?;
        let running = s.is_running();
        out.push(serde_json::json!({
            "Id": c.config.id,
            "Name": c.config.name,
            "Created": c.config.created,
            "ImageName": format!("localhost/{}:latest", c.config.image),
            "Path": c.config.command.first(),
            "Args": c.config.command.get(1..),
            "State": {
                "Status": if running { "running" } else if s.status == Status::Created { "created" } else { "exited" },
                "Running": running,
                "Pid": if running { s.pid } else { 0 },
                "ConmonPid": if running { s.monitor } else { 0 },
                "ExitCode": s.exit_code,
                "StartedAt": s.started,
                "FinishedAt": s.finished,
                "Checkpointed": s.checkpointed,
            },
            "Config": {
                "Hostname": c.short_id(),
                "Env": runtime::default_env(&c.config).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
                "Cmd": c.config.command,
                "WorkingDir": c.config.workdir,
            },
            "HostConfig": {
                "NetworkMode": if c.config.network == "host" { "host" } else { "none" },
                "UsernsMode": match &c.config.userns {
                    None => "host",
                    Some(u) if u.auto => "auto",
                    Some(_) => "private",
                },
                "IDMappings": c.config.userns.as_ref().map(|u| serde_json::json!({
                    "UidMap": u.uid_map.iter().map(|m| m.text()).collect::<Vec<_>>(),
                    "GidMap": u.gid_map.iter().map(|m| m.text()).collect::<Vec<_>>(),
                })),
            },
            "LogPath": c.log_path(),
            "CgroupPath": cgroup::dir(&c.config.id).ok(),
        }));
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&out).map_err(|e| Error::Msg(e.to_string()))?
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::fit_column;
    use unicode_width::UnicodeWidthStr;

    #[test]
    fn fit_column_cuts_between_characters_by_display_width() {
        assert_eq!(fit_column("sleep 10", 12), "sleep 10    ");
        assert_eq!(
            fit_column("exactly-twenty-chars", 20),
            "exactly-twenty-chars"
        );
        assert_eq!(
            fit_column("/bin/sh -c echo 123456", 20),
            "/bin/sh -c echo 1..."
        );
        // Byte 17 falls inside 'é' (the panic of `String::truncate(17)`).
        let cut = fit_column("/bin/sh -c echo ééééééé", 20);
        assert_eq!(cut, "/bin/sh -c echo é...");
        // Wide characters take two columns: the cell stays 20 columns wide.
        for text in [
            "echo 日本語のテキストです",
            "x🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀",
            "e\u{301}\u{301}\u{301}",
        ] {
            let cut = fit_column(text, 20);
            assert_eq!(cut.width(), 20, "{text:?} -> {cut:?}");
            assert!(text.starts_with(cut.trim_end().trim_end_matches("...")));
        }
        assert_eq!(fit_column("a\nb", 4), "a b ");
        assert_eq!(fit_column("abcdef", 2), "..");
    }
}
