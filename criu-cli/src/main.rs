//! `criu-rs`: CRIU's command line. This front-end parses arguments, calls the engine and
//! the image layer, and owns output and exit codes.
//!
//! No `unsafe` here: system calls go through criu-core's `sys`, the one place for it.

#![forbid(unsafe_code)]

mod bench;
mod check;
mod compat;
mod config;
mod crit;
mod docs;
mod dump;
mod logging;
mod progress;
mod restore;
mod signals;
mod swrk;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// The CRIU release whose images, command line and RPC criu-rs speaks.
const CRIU_VERSION: &str = "4.2";

/// What `--version` prints as "GitID" and VERSION answers as `gitid`: says it is
/// criu-rs, and which.
pub const GIT_ID: &str = concat!("criu-rs-", env!("CARGO_PKG_VERSION"));

#[derive(Parser)]
#[command(
    name = "criu-rs",
    about = "Checkpoint/restore in userspace, in Rust",
    disable_version_flag = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Print the CRIU version criu-rs stands in for, in CRIU's form ("Version: 4.2",
    /// "GitID: ..."), and which criu-rs it is.
    #[arg(short = 'V', long = "version")]
    version: bool,
    /// Read neither /etc/criu/default.conf nor ~/.criu/default.conf (the file
    /// $CRIU_CONFIG_FILE names is still read, as CRIU reads it).
    #[arg(long = "no-default-config", global = true, action = clap::ArgAction::Count)]
    no_default_config: u8,
    /// Read the options in FILE (one per line, CRIU's form) instead of the default
    /// configuration files; the command line overrides them.
    #[arg(long = "config", global = true, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

/// The command line as clap sees it: every option may be given twice, the last one
/// winning (a configuration file's, then the command line's, as CRIU takes them).
fn cli_command() -> clap::Command {
    let mut cmd = Cli::command().args_override_self(true);
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in names {
        cmd = cmd.mut_subcommand(name, |s| s.args_override_self(true));
    }
    cmd
}

/// Parses the command line with the configuration files' options (see `config`).
fn parse_cli() -> Result<Cli, String> {
    let mut cmd = cli_command();
    let args = config::with_config(std::env::args_os().collect(), &cmd)?;
    let matches = cmd
        .try_get_matches_from_mut(args)
        .unwrap_or_else(|e| e.exit());
    Cli::from_arg_matches(&matches).map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum Command {
    /// Checkpoint a process tree into an image directory.
    Dump(dump::DumpArgs),
    /// Restore a process tree from an image directory.
    Restore(restore::RestoreArgs),
    /// Check that this kernel has what criu-rs needs, or one named feature.
    Check(check::CheckArgs),
    /// Save the tree's memory while it runs on; the next dump with --prev-images-dir
    /// and --track-mem saves only the pages written since.
    PreDump(dump::DumpArgs),
    /// Read, write and explore CRIU images (the same verbs and flags as CRIU's crit).
    Crit(crit::CritArgs),
    /// Serve CRIU's RPC protocol on an inherited socket (how runc, crun and go-criu
    /// run `criu swrk FD`).
    Swrk(swrk::SwrkArgs),
    /// Write man pages (section 8) for criu-rs and each of its commands into DIR.
    #[command(name = "generate-man", hide = true)]
    GenerateMan(docs::ManArgs),
    /// Print a shell completion script for criu-rs.
    #[command(hide = true)]
    Completions(docs::CompletionArgs),
    /// Measure dump and restore on built-in workloads, side by side with CRIU when
    /// `--criu` is given: a table, and optionally JSON and a PNG figure.
    Bench(bench::BenchArgs),
    /// The workload `bench` dumps (internal).
    #[command(name = "_bench-workload", hide = true)]
    BenchWorkload(bench::WorkloadArgs),
    /// Runs a command and prints its peak RSS and CPU time (internal, for `bench`).
    #[command(name = "_rusage", hide = true)]
    Rusage(bench::RusageArgs),
}

fn main() -> ExitCode {
    criu_core::sys::default_sigpipe();
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(msg) => {
            eprintln!("criu-rs: {msg}");
            return ExitCode::FAILURE;
        }
    };
    let _ = (cli.no_default_config, &cli.config);
    if cli.version {
        println!("Version: {CRIU_VERSION}");
        println!("GitID: {GIT_ID}");
        println!(
            "(criu-rs {}: CRIU's images, command line and RPC, in Rust)",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        eprintln!("criu-rs: a command is needed (see --help)");
        return ExitCode::FAILURE;
    };
    let result = match command {
        // Before any thread exists: every thread inherits the blocked stop signals.
        Command::Dump(args) => dump::run(args, &signals::Signals::catch()).map(|()| 0),
        Command::Restore(args) => restore::run(args, &signals::Signals::catch()),
        Command::Check(args) => check::run(args),
        Command::PreDump(args) => dump::run_pre_dump(args, &signals::Signals::catch()).map(|()| 0),
        Command::Crit(args) => crit::run(args).map(|()| 0),
        Command::Swrk(args) => swrk::run(args),
        Command::GenerateMan(args) => docs::man(args, cli_command()),
        Command::Completions(args) => docs::completions(args, cli_command()),
        Command::Bench(args) => bench::run(args),
        Command::BenchWorkload(args) => bench::workload(args),
        Command::Rusage(args) => bench::rusage(args),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(msg) => {
            eprintln!("criu-rs: {msg}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration file's options come before the command line's: a flag may come
    /// twice, a single value is the command line's, lists gather both.
    #[test]
    fn options_may_repeat_and_lists_gather() {
        let m = cli_command()
            .try_get_matches_from([
                "criu-rs",
                "dump",
                "--tcp-established",
                "--log-file=conf.log",
                "--external=unix[1]",
                "-t",
                "7",
                "--tcp-established",
                "--log-file",
                "argv.log",
                "--external",
                "unix[5]",
            ])
            .unwrap();
        let dump = m.subcommand_matches("dump").unwrap();
        assert_eq!(
            dump.get_one::<String>("log_file").map(String::as_str),
            Some("argv.log")
        );
        let ext: Vec<&String> = dump.get_many::<String>("external").unwrap().collect();
        assert_eq!(ext, ["unix[1]", "unix[5]"]);
    }

    /// Every option says what it does, in words of its own (no text copied from a
    /// neighbour); man pages and completions are made from the same definitions.
    #[test]
    fn every_option_has_help_of_its_own() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let mut seen = std::collections::HashMap::new();
            for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                let id = format!("{path} {}", a.get_id());
                match a.get_help().map(|h| h.to_string()) {
                    None => missing.push(format!("{id}: no help")),
                    Some(h) => {
                        if let Some(other) = seen.insert(h.clone(), id.clone()) {
                            if !a.is_global_set() {
                                missing.push(format!("{id}: same help as {other}"));
                            }
                        }
                    }
                }
            }
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cmd = cli_command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "criu-rs", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
        let dir = std::env::temp_dir().join(format!("criu-rs-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pages = docs::write_pages(&cmd, &dir, "").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            pages.iter().any(|p| p.ends_with("criu-rs-dump.8")),
            "{pages:?}"
        );
    }
}
