//! CRIU's configuration files: `/etc/criu/default.conf`, `$HOME/.criu/default.conf`, the
//! file `$CRIU_CONFIG_FILE` names, and `--config FILE`, read as CRIU reads them.
//!
//! Each line holds one long option without its dashes, and its value after a space
//! (`tcp-established`, `log-file dump.log`, `external "mnt[/a b]:k"`); `#` starts a
//! comment; a value may be quoted, with `\"` inside. The files are read in that order and
//! the command line comes last, so a later setting wins. `--config FILE` or
//! `--no-default-config` skip the two default files (not the environment's). CRIU's options
//! are global: a file may hold an option the command at hand does not take (a dump option
//! in a file also read by `restore`), which is then left out; an option no command knows
//! is an error naming the file and line.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// One option of a configuration file: its long name, its value, where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigOption {
    pub name: String,
    pub value: Option<String>,
    pub file: PathBuf,
    pub line: usize,
}

impl ConfigOption {
    /// "FILE:LINE".
    pub fn place(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// Parses the text of one configuration file. A syntax error names the file and line.
pub fn parse(text: &str, file: &Path) -> Result<Vec<ConfigOption>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let bad = |why: &str| format!("{}:{line}: {why}", file.display());
        let s = raw.trim_start();
        if s.is_empty() || s.starts_with('#') {
            continue;
        }
        let (name, rest) = match s.find([' ', '\t']) {
            Some(at) => (&s[..at], s[at..].trim_start()),
            None => (s, ""),
        };
        let name = name.strip_prefix("--").unwrap_or(name).to_owned();
        let (value, tail) = if rest.is_empty() || rest.starts_with('#') {
            (None, "")
        } else if let Some(quoted) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((at, c)) = chars.next() {
                match c {
                    '\\' if quoted[at + 1..].starts_with('"') => {
                        value.push('"');
                        chars.next();
                    }
                    '"' => {
                        end = Some(at + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end.ok_or_else(|| bad("a quoted value has no closing quote"))?;
            (Some(value), &quoted[end..])
        } else {
            let end = rest.find([' ', '\t', '#']).unwrap_or(rest.len());
            (Some(rest[..end].to_owned()), &rest[end..])
        };
        let tail = tail.trim_start();
        if !(tail.is_empty() || tail.starts_with('#')) {
            return Err(bad(&format!(
                "one option and one value per line are expected, not {:?}",
                raw.trim()
            )));
        }
        out.push(ConfigOption {
            name,
            value,
            file: file.to_owned(),
            line,
        });
    }
    Ok(out)
}

/// Reads `path` if it exists: `None` when it does not, as CRIU skips a missing file.
pub fn read(path: &Path) -> Result<Option<Vec<ConfigOption>>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "reading the configuration file {}: {e}",
            path.display()
        )),
    }
}

/// The default files, in CRIU's order: the system's, then the user's.
pub fn default_files() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("/etc/criu/default.conf")];
    if let Some(home) = std::env::var_os("HOME") {
        files.push(Path::new(&home).join(".criu/default.conf"));
    }
    files
}

/// What the command line says about configuration files, found before parsing it.
#[derive(Debug, Default, PartialEq, Eq)]
struct ConfigFlags {
    no_default: bool,
    file: Option<PathBuf>,
    help: bool,
}

fn scan(args: &[OsString]) -> ConfigFlags {
    let mut flags = ConfigFlags::default();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let Some(a) = a.to_str() else { continue };
        match a {
            "--" => break,
            "-h" | "--help" => flags.help = true,
            "--no-default-config" => flags.no_default = true,
            "--config" => {
                flags.file = it.next().map(PathBuf::from);
                flags.no_default = true;
            }
            _ => {
                if let Some(f) = a.strip_prefix("--config=") {
                    flags.file = Some(PathBuf::from(f));
                    flags.no_default = true;
                }
            }
        }
    }
    flags
}

/// The options of every configuration file that applies, in the order they apply.
fn options_for(flags: &ConfigFlags) -> Result<Vec<ConfigOption>, String> {
    let mut files = Vec::new();
    if !flags.no_default {
        files.extend(default_files());
    }
    if let Some(env) = std::env::var_os("CRIU_CONFIG_FILE") {
        files.push(PathBuf::from(env));
    }
    let mut out = Vec::new();
    for f in &files {
        out.extend(read(f)?.unwrap_or_default());
    }
    if let Some(f) = &flags.file {
        // Named on the command line: a missing file is an error, not a default.
        let opts = read(f)?
            .ok_or_else(|| format!("the configuration file {} does not exist", f.display()))?;
        out.extend(opts);
    }
    Ok(out)
}

/// Whether `cmd` has an option `name` (long name or alias), and whether it takes a value.
fn lookup(cmd: &clap::Command, name: &str) -> Option<bool> {
    cmd.get_arguments()
        .find(|a| {
            a.get_long() == Some(name) || a.get_all_aliases().is_some_and(|v| v.contains(&name))
        })
        .map(|a| a.get_action().takes_values())
}

/// `args` (the program's, its name first) with the options of the configuration files
/// put in front of the command's own, so that the command line wins. Unchanged when no
/// file applies, for `--help`, and when no command is named.
pub fn with_config(args: Vec<OsString>, cli: &clap::Command) -> Result<Vec<OsString>, String> {
    let flags = scan(&args);
    if flags.help {
        return Ok(args);
    }
    let options = options_for(&flags)?;
    if options.is_empty() {
        return Ok(args);
    }
    // The command: the first argument that names one (top-level flags come before it).
    let Some((at, sub)) = args.iter().enumerate().skip(1).find_map(|(i, a)| {
        let a = a.to_str()?;
        cli.find_subcommand(a).map(|s| (i, s))
    }) else {
        return Ok(args);
    };
    let mut inserted = Vec::new();
    for o in options {
        let takes_value = match lookup(sub, &o.name).or_else(|| lookup(cli, &o.name)) {
            Some(t) => t,
            None if cli.get_subcommands().any(|s| lookup(s, &o.name).is_some()) => {
                // Another command's option: CRIU's options are global, this command
                // has no use for it.
                tracing::debug!(option = %o.name, place = %o.place(), "not for this command");
                continue;
            }
            None => {
                return Err(format!(
                    "{}: unknown option {:?} (no criu-rs command takes it)",
                    o.place(),
                    o.name
                ))
            }
        };
        match (&o.value, takes_value) {
            (Some(v), true) => inserted.push(OsString::from(format!("--{}={v}", o.name))),
            (None, _) => inserted.push(OsString::from(format!("--{}", o.name))),
            (Some(v), false) => {
                return Err(format!(
                    "{}: option {:?} takes no value, the file gives it {v:?}",
                    o.place(),
                    o.name
                ))
            }
        }
    }
    let mut out = args;
    out.splice(at + 1..at + 1, inserted);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<(String, Option<String>)> {
        parse(text, Path::new("t.conf"))
            .unwrap()
            .into_iter()
            .map(|o| (o.name, o.value))
            .collect()
    }

    #[test]
    fn parses_criu_config_lines() {
        let text = "# comment\n\n  tcp-established\nlog-file dump.log # trailing\n\
                    external \"mnt[/a b]:k\"\nlsm-profile \"a\\\"b\"\n--shell-job\n";
        assert_eq!(
            names(text),
            vec![
                ("tcp-established".into(), None),
                ("log-file".into(), Some("dump.log".into())),
                ("external".into(), Some("mnt[/a b]:k".into())),
                ("lsm-profile".into(), Some("a\"b".into())),
                ("shell-job".into(), None),
            ]
        );
    }

    #[test]
    fn refuses_bad_lines_with_their_place() {
        let err = parse("ok\nlog-file a b\n", Path::new("/x.conf")).unwrap_err();
        assert!(err.starts_with("/x.conf:2:"), "{err}");
        let err = parse("root \"unterminated\n", Path::new("/x.conf")).unwrap_err();
        assert!(err.contains("closing quote"), "{err}");
    }

    #[test]
    fn finds_config_flags_on_the_command_line() {
        let args: Vec<OsString> = ["criu-rs", "dump", "--config", "/c", "-t", "1"]
            .iter()
            .map(OsString::from)
            .collect();
        let f = scan(&args);
        assert_eq!(f.file, Some(PathBuf::from("/c")));
        assert!(f.no_default && !f.help);
        let args: Vec<OsString> = ["criu-rs", "restore", "--config=/d", "--no-default-config"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(scan(&args).file, Some(PathBuf::from("/d")));
    }
}
