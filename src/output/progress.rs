//! The progress bar: one line at the bottom of stderr while a run works, gone when it ends. Results
//! and messages printed meanwhile go through [`Progress::suspend`], so the bar is cleared before each
//! and redrawn below it, and never left frozen in the scrollback.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use super::console::{info, report_error, warn};

/// A progress bar with rate and ETA on stderr; drawn only when stderr is a terminal and the run is
/// not `--quiet`. Errors and warnings printed during a run go through it so they do not tear the bar.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    /// Per-input errors on stderr; off when the same terminal shows them in the table already.
    errors: bool,
}

/// Whether a run's bar may be drawn (issue 23 item 5): on a terminal, not `--quiet`, and never
/// where results would tear it or it them. Results on stdout that is the terminal too are written
/// with the bar cleared around each record, which works for formats whose records end their line
/// (`whole_lines`), not for a JSON document, whose separators begin the next record; results on a
/// pipe are most likely printed on this terminal by its reader (`| head`, `| jq`), which the bar
/// cannot clear itself around.
pub(crate) fn bar_allowed(quiet: bool, results_on_stdout: bool, whole_lines: bool) -> bool {
    if quiet || !std::io::stderr().is_terminal() {
        return false;
    }
    if !results_on_stdout {
        return true;
    }
    if std::io::stdout().is_terminal() {
        return whole_lines;
    }
    !stdout_is_pipe()
}

/// Whether stdout is a pipe or socket (not a file, `/dev/null` or a terminal).
#[cfg(unix)]
fn stdout_is_pipe() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    let Ok(fd) = std::io::stdout().as_fd().try_clone_to_owned() else {
        return true;
    };
    std::fs::File::from(fd).metadata().is_ok_and(|m| {
        let t = m.file_type();
        t.is_fifo() || t.is_socket()
    })
}

#[cfg(not(unix))]
fn stdout_is_pipe() -> bool {
    false
}

/// `1,757`: counts people read.
pub(crate) fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Rate with a unit and sensible precision: `5.3 img/s`, `0.42 img/s`, `120 img/s`.
fn rate(per_sec: f64, unit: &str) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        format!("- {unit}/s")
    } else if per_sec < 1.0 {
        format!("{per_sec:.2} {unit}/s")
    } else if per_sec < 100.0 {
        format!("{per_sec:.1} {unit}/s")
    } else {
        format!("{per_sec:.0} {unit}/s")
    }
}

/// How long after the first item finished a rate is shown: before that it rests on a batch or two
/// finishing close together, and reads like `6884 img/s  ETA 0:00` (issue 23 item 5).
const MIN_RATE_WINDOW: Duration = Duration::from_secs(1);

/// Items per second since the first item finished: the start-up (model warm-up, filling the
/// decoding pipeline) is not a rate, and counting it makes the first ETA far too long. NaN (shown
/// as `-`) until [`MIN_RATE_WINDOW`] has passed.
fn steady_rate(state: &ProgressState, first: Option<(Instant, u64)>) -> f64 {
    rate_at(state.pos(), first, Instant::now())
}

fn rate_at(pos: u64, first: Option<(Instant, u64)>, now: Instant) -> f64 {
    match first {
        Some((at, done)) if pos > done => {
            let window = now.saturating_duration_since(at);
            if window >= MIN_RATE_WINDOW {
                (pos - done) as f64 / window.as_secs_f64()
            } else {
                f64::NAN
            }
        }
        _ => f64::NAN,
    }
}

fn bar(total: usize, template: &str, unit: &'static str) -> ProgressBar {
    let first: std::sync::Arc<std::sync::Mutex<Option<(Instant, u64)>>> = Default::default();
    let (first_rate, first_eta) = (first.clone(), first.clone());
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let first = mark_first(&first_rate, state);
                let _ = w.write_str(&rate(steady_rate(state, first), unit));
            },
        )
        .with_key(
            "eta2",
            move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let first = mark_first(&first_eta, state);
                let r = steady_rate(state, first);
                let left = state.len().unwrap_or(0).saturating_sub(state.pos()) as f64;
                let _ = if r.is_finite() && r > 0.0 {
                    let secs = (left / r).round() as u64;
                    w.write_str(&format!("ETA {}:{:02}", secs / 60, secs % 60))
                } else {
                    w.write_str("ETA -")
                };
            },
        )
        .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
        .with_style(style)
}

/// Remembers when the first item finished (and how many had then).
fn mark_first(
    first: &std::sync::Mutex<Option<(Instant, u64)>>,
    state: &ProgressState,
) -> Option<(Instant, u64)> {
    let mut guard = match first.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if guard.is_none() && state.pos() > 0 {
        *guard = Some((Instant::now(), state.pos()));
    }
    *guard
}

impl Progress {
    /// The images of a run.
    pub(crate) fn images(total: usize, show: bool) -> Self {
        let bar = show.then(|| {
            bar(
                total,
                "{elapsed_precise} [{wide_bar}] {pos}/{len} images  {rate}  {eta2}",
                "img",
            )
        });
        Self { bar, errors: true }
    }

    /// The prompts a run encodes before its first image (first runs only: they are cached after).
    /// A bar on a terminal; otherwise one line when `announce` (`--verbose`).
    pub(crate) fn text(prompts: usize, labels: usize, show: bool, announce: bool) -> Self {
        let what = format!(
            "encoding {} prompts for {} labels (first run only: they are cached)",
            thousands(prompts),
            thousands(labels)
        );
        let terminal = std::io::stderr().is_terminal();
        if show && terminal {
            let b = bar(
                prompts,
                "{msg}\n{elapsed_precise} [{wide_bar}] {pos}/{len} prompts  {rate}  {eta2}",
                "prompt",
            );
            b.set_message(what);
            b.tick();
            Self {
                bar: Some(b),
                errors: true,
            }
        } else {
            if announce {
                info(&what);
            }
            Self::hidden()
        }
    }

    /// No bar at all (tests, library callers).
    pub(crate) fn hidden() -> Self {
        Self {
            bar: None,
            errors: true,
        }
    }

    /// Whether per-input errors go to stderr (they always go into the output's records).
    pub(crate) fn with_errors(mut self, errors: bool) -> Self {
        self.errors = errors;
        self
    }

    pub(crate) fn inc(&self) {
        self.add(1);
    }

    pub(crate) fn add(&self, n: usize) {
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
    }

    /// Runs `f` (which prints) with the bar cleared, then redraws the bar below what it printed.
    pub(crate) fn suspend<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    pub(crate) fn error(&self, message: &str) {
        if self.errors {
            self.suspend(|| report_error(message));
        }
    }

    pub(crate) fn warn(&self, message: &str) {
        self.suspend(|| warn(message));
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_rates_read_well() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(1757), "1,757");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(rate(5.2889, "img"), "5.3 img/s");
        assert_eq!(rate(0.4213, "img"), "0.42 img/s");
        assert_eq!(rate(231.7, "img"), "232 img/s");
        assert_eq!(rate(f64::NAN, "img"), "- img/s");
    }

    #[test]
    fn no_rate_until_a_second_of_items_is_seen() {
        let t0 = Instant::now();
        // Two batches of 8 a millisecond apart: no rate yet, not 8,000 img/s.
        assert!(rate_at(16, Some((t0, 8)), t0 + Duration::from_millis(1)).is_nan());
        assert!(rate_at(8, Some((t0, 8)), t0 + Duration::from_secs(5)).is_nan());
        assert!(rate_at(16, None, t0).is_nan());
        let r = rate_at(16, Some((t0, 8)), t0 + Duration::from_secs(2));
        assert!((r - 4.0).abs() < 1e-9, "{r}");
    }
}
