//! The progress bar: one line at the bottom of stderr while a run works, gone when it ends. Results
//! and messages printed meanwhile go through [`Progress::suspend`], so the bar is cleared before each
//! and redrawn below it, and never left frozen in the scrollback.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use super::console::{info, report_error, warn};

/// A progress bar with rate and ETA on stderr; drawn only when stderr is a terminal and the run is
/// not `--quiet`. Errors and warnings printed during a run go through it so they do not tear the bar.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// Per-input errors on stderr; off when the same terminal shows them in the table already.
    errors: bool,
}

/// `1,757`: counts people read.
pub fn thousands(n: usize) -> String {
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

/// Items per second since the first item finished: the start-up (model warm-up, filling the
/// decoding pipeline) is not a rate, and counting it makes the first ETA far too long.
fn steady_rate(state: &ProgressState, first: Option<(Instant, u64)>) -> f64 {
    match first {
        Some((at, done)) if state.pos() > done => {
            let secs = at.elapsed().as_secs_f64();
            if secs > 0.0 {
                (state.pos() - done) as f64 / secs
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
    pub fn images(total: usize, show: bool) -> Self {
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
    pub fn text(prompts: usize, labels: usize, show: bool, announce: bool) -> Self {
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
    pub fn hidden() -> Self {
        Self {
            bar: None,
            errors: true,
        }
    }

    /// Whether per-input errors go to stderr (they always go into the output's records).
    pub fn with_errors(mut self, errors: bool) -> Self {
        self.errors = errors;
        self
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: usize) {
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
    }

    /// Runs `f` (which prints) with the bar cleared, then redraws the bar below what it printed.
    pub fn suspend<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    pub fn error(&self, message: &str) {
        if self.errors {
            self.suspend(|| report_error(message));
        }
    }

    pub fn warn(&self, message: &str) {
        self.suspend(|| warn(message));
    }

    pub fn finish(&self) {
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
}
