//! The only writers to stderr besides the progress bar: one line each, control characters escaped.

use crate::error::escape_controls;

/// A warning on stderr (suppressed by `--quiet` at the call site).
pub(crate) fn warn(message: &str) {
    eprintln!("vlm: warning: {}", escape_controls(message));
}

/// What the run did (`--verbose`), on stderr.
pub(crate) fn info(message: &str) {
    eprintln!("vlm: {}", escape_controls(message));
}

/// An error on stderr, one line: a per-input error (the run goes on) or, from `main`, the error
/// that stopped the run. `warn`, `info` and this are the only writers to stderr besides the
/// progress bar, so escaping control characters here keeps every line one line.
pub fn report_error(message: &str) {
    eprintln!("vlm: {}", escape_controls(message));
}
