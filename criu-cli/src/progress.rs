//! Progress bars (issue 15): a dump or restore that takes over a second on a terminal
//! shows how far its page copy has come on stderr, and clears the bar when it ends.
//!
//! The engine only counts (`criu_core::Progress`); this thread reads the counts every
//! tick and draws them with indicatif, which handles the terminal, formats sizes, rate
//! and ETA, and clears its lines cleanly. Nothing is drawn when stderr is not a terminal,
//! with `--no-progress`, when the log itself goes to stderr at info level or more (its
//! lines would tear the bar), for a shell job (the tree writes to this terminal), and in
//! swrk mode (its requests never start a bar).

use std::io::IsTerminal;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Args;
use criu_core::progress::{Phase, Progress, ProgressNow};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::logging::LogArgs;

/// How long a command runs before its bar shows: one that ends sooner shows nothing.
const SHOW_AFTER: Duration = Duration::from_secs(1);

/// Test hook: `CRIU_RS_PROGRESS_AFTER_MS=N` shows the bar after N ms instead, so a test
/// sees it without a command that is slow on purpose.
const SHOW_AFTER_ENV: &str = "CRIU_RS_PROGRESS_AFTER_MS";

/// How often the bar is brought up to date.
const TICK: Duration = Duration::from_millis(100);

#[derive(Args)]
pub struct ProgressArgs {
    /// Never show a progress bar (otherwise one shows on a terminal when the command
    /// takes over a second).
    #[arg(long = "no-progress")]
    no_progress: bool,
}

/// The command whose progress is shown: it names what each phase does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    Dump,
    PreDump,
    Restore,
}

impl Shown {
    /// What the bar says in `phase`.
    fn label(self, phase: Phase) -> &'static str {
        match (self, phase) {
            (Shown::Dump, Phase::Preparing) => "dumping",
            (Shown::PreDump, Phase::Preparing) => "pre-dumping",
            (Shown::Restore, Phase::Preparing) => "restoring",
            (Shown::Dump, Phase::Pages) => "dumping pages",
            (Shown::PreDump, Phase::Pages) => "pre-dumping pages",
            (Shown::Restore, Phase::Pages) => "restoring pages",
            (_, Phase::Snapshot) => "copying snapshot",
        }
    }
}

impl ProgressArgs {
    /// Starts showing `progress` if this command may (see the module's doc); the bar is
    /// cleared when the returned guard drops.
    pub fn show(
        &self,
        progress: &Progress,
        shown: Shown,
        log: &LogArgs,
        shell_job: bool,
    ) -> Option<ProgressDisplay> {
        let wanted = !self.no_progress
            && !shell_job
            && !log.info_on_stderr()
            && std::io::stderr().is_terminal();
        wanted.then(|| ProgressDisplay::start(progress.clone(), shown, show_after()))
    }
}

fn show_after() -> Duration {
    std::env::var(SHOW_AFTER_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(SHOW_AFTER, Duration::from_millis)
}

/// The thread that draws the bar; dropping this stops it and clears the bar.
pub struct ProgressDisplay {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl ProgressDisplay {
    fn start(progress: Progress, shown: Shown, after: Duration) -> ProgressDisplay {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopped = Arc::clone(&stop);
        let started = Instant::now();
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || draw(&progress, shown, after, started, &stopped))
            // No thread, no bar: the command itself goes on.
            .ok();
        ProgressDisplay { stop, thread }
    }
}

impl Drop for ProgressDisplay {
    fn drop(&mut self) {
        let (flag, wake) = &*self.stop;
        if let Ok(mut stopped) = flag.lock() {
            *stopped = true;
        }
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits up to `timeout` for the stop; true once stopped.
fn stopped_within(stop: &(Mutex<bool>, Condvar), timeout: Duration) -> bool {
    let (flag, wake) = stop;
    let Ok(guard) = flag.lock() else {
        return true;
    };
    match wake.wait_timeout_while(guard, timeout, |stopped| !*stopped) {
        Ok((stopped, _)) => *stopped,
        Err(_) => true,
    }
}

/// The bar's thread: nothing until `after` has passed since `started`, then the counts
/// every tick until stopped, then the bar cleared.
fn draw(
    progress: &Progress,
    shown: Shown,
    after: Duration,
    started: Instant,
    stop: &(Mutex<bool>, Condvar),
) {
    if stopped_within(stop, after) {
        return;
    }
    let first = progress.now();
    let mut shown_phase = first.phase;
    let mut bar = bar_for(first, shown, started);
    loop {
        let now = progress.now();
        if now.phase != shown_phase {
            bar.finish_and_clear();
            shown_phase = now.phase;
            bar = bar_for(now, shown, started);
        }
        if now.phase == Phase::Preparing {
            bar.tick();
        } else {
            set_counts(&bar, now);
        }
        if stopped_within(stop, TICK) {
            break;
        }
    }
    bar.finish_and_clear();
}

/// A bar for the phase of `now`, set up while hidden: its first frame is already of this
/// phase, and its rate and ETA count from now (what was copied before it showed took
/// time it did not see).
fn bar_for(now: ProgressNow, shown: Shown, started: Instant) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    if now.phase == Phase::Preparing {
        bar.set_style(style("{spinner} {msg} ({elapsed})"));
        bar.set_elapsed(started.elapsed());
    } else {
        // Fixed widths: the bar does not jump as the numbers grow.
        bar.set_style(style(
            "{msg} [{wide_bar}] {binary_bytes:>10} / {binary_total_bytes}, \
             {binary_bytes_per_sec:>12}, ETA {eta:>3}",
        ));
        set_counts(&bar, now);
        bar.reset_eta();
        bar.reset_elapsed();
    }
    bar.set_message(shown.label(now.phase));
    bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(10));
    bar
}

/// Both counts in one update (one frame, one sample for the rate).
fn set_counts(bar: &ProgressBar, now: ProgressNow) {
    bar.update(|state| {
        // The counts are read one by one: never more done than planned.
        state.set_len(now.planned.max(now.done));
        state.set_pos(now.done);
    });
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command that ends before the bar is due stops the thread at once: it waits on
    /// the stop, not a whole sleep (bounded by the delay in any case).
    #[test]
    fn a_command_shorter_than_the_delay_stops_the_thread() {
        let display = ProgressDisplay::start(Progress::new(), Shown::Dump, Duration::from_secs(60));
        drop(display);
    }

    #[test]
    fn each_phase_has_its_words() {
        assert_eq!(Shown::Dump.label(Phase::Pages), "dumping pages");
        assert_eq!(Shown::Dump.label(Phase::Snapshot), "copying snapshot");
        assert_eq!(Shown::Restore.label(Phase::Pages), "restoring pages");
    }
}
