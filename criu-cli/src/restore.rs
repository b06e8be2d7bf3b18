//! `criu-rs restore`: CRIU's restore options mapped onto `criu_core::restore`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use criu_core::restore::{self, RestoreOptions};

use crate::logging::LogArgs;

#[derive(Args)]
pub struct RestoreArgs {
    /// Directory with the images.
    #[arg(
        short = 'D',
        long = "images-dir",
        value_name = "DIR",
        default_value = "."
    )]
    images_dir: PathBuf,
    /// Directory for the log (the images directory by default).
    #[arg(short = 'W', long = "work-dir", value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Exit once the tree runs instead of waiting for its root.
    #[arg(short = 'd', long = "restore-detached")]
    detached: bool,
    /// Restore the root as a sibling of criu-rs instead of a child (accepted; with -d the
    /// tree is reparented as soon as criu-rs exits).
    #[arg(long = "restore-sibling")]
    sibling: bool,
    /// The tree was dumped as a shell job: it joins this terminal and session.
    #[arg(short = 'j', long = "shell-job")]
    shell_job: bool,
    /// Write the root's pid to this file.
    #[arg(long = "pidfile", value_name = "FILE")]
    pidfile: Option<PathBuf>,
    /// Print the restore statistics at the end.
    #[arg(long = "display-stats")]
    display_stats: bool,
    #[command(flatten)]
    log: LogArgs,
}

pub fn run(args: RestoreArgs) -> Result<i32, String> {
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| args.images_dir.clone());
    let _log = args.log.install(&work_dir, "restore.log")?;
    let _ = args.sibling;
    let start = Instant::now();
    tracing::info!(dir = %args.images_dir.display(), "restore starts");
    let opts = RestoreOptions {
        shell_job: args.shell_job,
        ..RestoreOptions::new(&args.images_dir)
    };
    let restored = restore::restore(&opts).map_err(|e| {
        tracing::error!("restore failed: {e}");
        format!("restore from {} failed: {e}", args.images_dir.display())
    })?;
    let took = start.elapsed();
    tracing::info!(pid = restored.pid.0, ?took, "restore finished");
    if let Some(path) = &args.pidfile {
        std::fs::write(path, format!("{}\n", restored.pid.0))
            .map_err(|e| format!("pidfile {}: {e}", path.display()))?;
    }
    if args.display_stats {
        let s = &restored.stats;
        println!("Displaying restore stats:");
        println!(
            "Pages restored: {} ({:#x})",
            s.pages_restored, s.pages_restored
        );
        println!("Forking time: {} us", s.forking_time);
        println!("Restore time: {} us", s.restore_time);
        println!("Total time: {} us", took.as_micros());
    }
    if args.detached {
        return Ok(0);
    }
    // Like CRIU without -d: wait for the restored root and hand on its exit status.
    wait_for(restored.pid.0)
}

fn wait_for(pid: i32) -> Result<i32, String> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid status pointer.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(format!("waiting for {pid}: {err}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    })
}
