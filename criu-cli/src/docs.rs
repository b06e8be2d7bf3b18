//! Man pages and shell completions, generated from the command line's own definitions
//! so they always list the options this binary takes: `criu-rs generate-man DIR` writes
//! `criu-rs.8` and one page per command (`criu-rs-dump.8`...), `criu-rs completions
//! SHELL` prints a completion script for bash, zsh, fish, elvish or PowerShell.

use std::path::{Path, PathBuf};

use clap::Args;

#[derive(Args)]
pub struct ManArgs {
    /// Directory to write the pages into (made if missing).
    #[arg(value_name = "DIR", default_value = ".")]
    dir: PathBuf,
}

#[derive(Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_name = "SHELL")]
    shell: clap_complete::Shell,
}

/// Writes the page of `cmd` and of each of its commands; returns the files written.
pub(crate) fn write_pages(
    cmd: &clap::Command,
    dir: &Path,
    prefix: &str,
) -> Result<Vec<PathBuf>, String> {
    let name = if prefix.is_empty() {
        cmd.get_name().to_owned()
    } else {
        format!("{prefix}-{}", cmd.get_name())
    };
    let path = dir.join(format!("{name}.8"));
    let page = cmd.clone().display_name(name.clone());
    let mut bytes = Vec::new();
    clap_mangen::Man::new(page)
        .title(name.to_uppercase())
        .section("8")
        .render(&mut bytes)
        .map_err(|e| format!("rendering {}: {e}", path.display()))?;
    std::fs::write(&path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
    let mut written = vec![path];
    // clap's own `help` command needs no page: `--help` is on each.
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        written.extend(write_pages(sub, dir, &name)?);
    }
    Ok(written)
}

pub fn man(args: ManArgs, cmd: clap::Command) -> Result<i32, String> {
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("making {}: {e}", args.dir.display()))?;
    let mut cmd = cmd;
    cmd.build();
    for path in write_pages(&cmd, &args.dir, "")? {
        println!("{}", path.display());
    }
    Ok(0)
}

pub fn completions(args: CompletionArgs, cmd: clap::Command) -> Result<i32, String> {
    let mut cmd = cmd;
    let name = cmd.get_name().to_owned();
    clap_complete::generate(args.shell, &mut cmd, name, &mut std::io::stdout());
    Ok(0)
}
