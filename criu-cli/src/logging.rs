//! CRIU's logging options: `-o FILE` (in the work directory) and `-v[LEVEL]`.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use clap::Args;
use tracing_subscriber::filter::LevelFilter;

#[derive(Args)]
pub struct LogArgs {
    /// Log file, relative to the work directory ("-" for stderr).
    #[arg(short = 'o', long = "log-file", value_name = "FILE")]
    log_file: Option<String>,
    /// Verbosity 0..4 (CRIU's -v0 .. -v4, --verbosity=N); -v alone is 4.
    #[arg(
        short = 'v',
        long = "verbosity",
        value_name = "LEVEL",
        num_args = 0..=1,
        default_missing_value = "4",
        value_parser = criu_verbosity
    )]
    verbosity: Option<u8>,
}

/// A verbosity as CRIU reads it: `-v4`, `--verbosity=4`, `-vvv` (the most),
/// and whatever else as C's atoi would (so `-verbosity=0`, which CRIU's own test suite
/// passes and getopt reads as `-v` with the value `erbosity=0`, is level 0).
fn criu_verbosity(value: &str) -> Result<u8, String> {
    if !value.is_empty() && value.bytes().all(|b| b == b'v') {
        return Ok(4);
    }
    let digits: String = value
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Ok(digits.parse::<u32>().unwrap_or(0).min(4) as u8)
}

/// Keeps the log set up for the life of the command.
pub struct LogGuard;

impl LogArgs {
    /// Sends the engine's log to the chosen file (default `default_name` in `work_dir`).
    pub fn install(&self, work_dir: &Path, default_name: &str) -> Result<LogGuard, String> {
        let name = self.log_file.as_deref().unwrap_or(default_name);
        let path = (name != "-").then(|| work_dir.join(name));
        install(path.as_deref(), self.verbosity.unwrap_or(2))
    }

    /// Whether the log goes to stderr (`-o -`) at info level or more: often enough to
    /// tear a progress bar drawn there.
    pub fn info_on_stderr(&self) -> bool {
        self.log_file.as_deref() == Some("-") && self.verbosity.unwrap_or(2) >= 3
    }
}

/// Where the log goes now: a file, or stderr when `None`. A process installs its
/// subscriber once (tracing's global default); a later request of the same process
/// (swrk: a DUMP after a PRE_DUMP on one socket) points it at its own file.
static LOG_FILE: Mutex<Option<File>> = Mutex::new(None);

/// Writes a log line where `LOG_FILE` says.
struct CurrentLog;

impl std::io::Write for CurrentLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match LOG_FILE.lock().ok().as_mut().and_then(|f| f.as_mut()) {
            Some(file) => file.write(buf),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends the engine's log to the file `path` (stderr when `None`), at CRIU's
/// verbosity 0..4 (the first one a process asks for: the level cannot change later).
pub fn install(path: Option<&Path>, verbosity: u8) -> Result<LogGuard, String> {
    let level = match verbosity {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        _ => LevelFilter::TRACE,
    };
    let file = match path {
        None => None,
        // 0600 as CRIU's log: it names the tree's files and addresses.
        Some(path) => Some(
            File::options()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("log file {}: {e}", path.display()))?,
        ),
    };
    if let Ok(mut current) = LOG_FILE.lock() {
        *current = file;
    }
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        result = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_target(false)
            .with_writer(|| CurrentLog)
            .try_init()
            .map_err(|e| format!("setting up the log: {e}"));
    });
    result?;
    Ok(LogGuard)
}

#[cfg(test)]
mod tests {
    use super::criu_verbosity;

    #[test]
    fn verbosity_reads_as_criu_does() {
        assert_eq!(criu_verbosity("4"), Ok(4));
        assert_eq!(criu_verbosity("0"), Ok(0));
        assert_eq!(criu_verbosity("9"), Ok(4));
        assert_eq!(criu_verbosity("vv"), Ok(4));
        assert_eq!(criu_verbosity("erbosity=0"), Ok(0));
    }
}

/// `-D` and `-W`, as dump and restore both take them.
#[derive(clap::Args)]
pub struct DirArgs {
    /// Directory of the images.
    #[arg(
        short = 'D',
        long = "images-dir",
        value_name = "DIR",
        default_value = "."
    )]
    pub images_dir: std::path::PathBuf,
    /// Directory for the log, and for the dump's stats file (the images directory by
    /// default).
    #[arg(short = 'W', long = "work-dir", value_name = "DIR")]
    pub work_dir: Option<std::path::PathBuf>,
}

impl DirArgs {
    /// Where the log and stats go: `-W`, else the images directory.
    pub fn work_dir(&self) -> &Path {
        self.work_dir.as_deref().unwrap_or(&self.images_dir)
    }
}
