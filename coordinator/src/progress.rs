//! Progress of training and evaluation: an indicatif bar with samples/s and ETA when stdout is
//! a terminal, plain log lines (every tenth of the run, or half a minute; JSON with
//! --log-format json) when it is not, nothing with --quiet.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    label: &'static str,
    total: u64,
    started: Instant,
    start_pos: u64,
    last_line: Instant,
    last_pos: u64,
}

fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

impl Progress {
    /// A progress display for `total` units (steps, batches) starting at `start`.
    pub fn new(label: &'static str, total: u64, start: u64, quiet: bool) -> Progress {
        let tty = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let bar = (!quiet && tty).then(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_prefix(label);
            b.set_position(start);
            b
        });
        Progress { bar, plain: !quiet && !tty, label, total, started: Instant::now(), start_pos: start, last_line: Instant::now(), last_pos: start }
    }

    /// Moves to `pos`; `rate` is the samples/s to show.
    pub fn set(&mut self, pos: u64, rate: f64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
            b.set_message(format!("{rate:.1} samples/s"));
            return;
        }
        if !self.plain {
            return;
        }
        let tenth = (self.total / 10).max(1);
        let due = pos / tenth > self.last_pos / tenth || self.last_line.elapsed() >= Duration::from_secs(30) || pos == self.total;
        if due && pos > self.last_pos {
            let done = (pos - self.start_pos) as f64;
            let per = self.started.elapsed().as_secs_f64() / done.max(1.0);
            let eta = Duration::from_secs_f64(per * self.total.saturating_sub(pos) as f64);
            tracing::info!(
                "{} {pos}/{} ({:.0}%), {rate:.1} samples/s, ETA {}",
                self.label,
                self.total,
                100.0 * pos as f64 / self.total.max(1) as f64,
                duration(eta)
            );
            self.last_line = Instant::now();
            self.last_pos = pos;
        }
    }

    /// Runs `f` (which prints to stdout) without the bar drawn over it.
    pub fn above<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
