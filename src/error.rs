//! The error kinds that callers and tests match on; everything else travels as `anyhow` context.

use std::borrow::Cow;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad arguments or bad label/template input: exit code 2, before any image is processed.
    #[error("{0}")]
    Usage(String),
    /// The model could not be found, fetched or loaded: exit code 2.
    #[error("model {model}: {reason}")]
    Model { model: String, reason: String },
    /// One input image failed; the batch goes on.
    #[error("{}: {reason}", path.display())]
    Image { path: PathBuf, reason: String },
}

/// `text` with its control characters escaped (`\n`, `\r`, `\t`, `\u{1b}`, ...). Messages quote
/// file names, keys and labels, and Linux file names may hold any byte but `/` and NUL: an escaped
/// one can never split a message over two lines of stderr or a table, nor move a terminal's cursor.
/// Idempotent: escaped text has no control characters left.
pub(crate) fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The most characters of user text an error quotes ([`quote`]).
pub(crate) const EXCERPT_CHARS: usize = 60;

/// `text` as an error quotes it: Rust-quoted (so control characters are escaped and the quote's
/// end is visible), cut to its first [`EXCERPT_CHARS`] characters with `...` and the whole
/// length after the closing quote when longer. A 500 KB label or a 300-digit number in an
/// error is a line of noise that buries the message (issue 20); the start says which one it is.
pub(crate) fn quote(text: &str) -> String {
    let mut chars = text.char_indices();
    match chars.nth(EXCERPT_CHARS) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!(
            "{:?} ({} characters)",
            format!("{}...", &text[..cut]),
            text.chars().count()
        ),
    }
}

/// [`quote`] without the quotes: for text already set off by its place in the message.
pub(crate) fn excerpt(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_CHARS) {
        None => escape_controls(text).into_owned(),
        Some((cut, _)) => format!(
            "{}... ({} characters)",
            escape_controls(&text[..cut]),
            text.chars().count()
        ),
    }
}

/// A multi-line message from a library (a decoder, the toml parser) as one line: its non-blank
/// lines trimmed and joined with "; ", control characters escaped (`lines` leaves a lone `\r`,
/// and the toml crate quotes keys as written: `"a\rb" = 1` is an unknown field whose name holds
/// a carriage return, found by the aspect_file fuzz target).
pub(crate) fn single_line(message: &str) -> String {
    let joined = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    escape_controls(&joined).into_owned()
}

/// True when the error is stdout closing under us (`vlm … | head`): the user got what they wanted.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// An error as one line: anyhow's `a: b: c` chain, each part cut to its first line. Candle appends a
/// backtrace to its errors' text when `RUST_BACKTRACE` is set; users get the message, never the trace.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let first = text.lines().next().unwrap_or("").trim().to_string();
        // A wrapper error often repeats its source's text; print it once.
        if !first.is_empty() && !parts.last().is_some_and(|p| p.ends_with(&first)) {
            parts.push(first);
        }
    }
    parts.join(": ")
}

/// The candidate nearest `word` when it is near enough to be a typo of it, for "did you mean"
/// hints (issue 23: `-a colour` names no aspect, `color` does). Nearness is the edit distance
/// (Levenshtein, over characters, ignoring ASCII case): at most 1 for words up to 4 characters,
/// 2 up to 8, 3 beyond. Ties go to the first candidate.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word: Vec<char> = word.to_ascii_lowercase().chars().collect();
    let limit = match word.len() {
        0 => return None,
        1..=4 => 1,
        5..=8 => 2,
        _ => 3,
    };
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        let c: Vec<char> = candidate.to_ascii_lowercase().chars().collect();
        let d = edit_distance(&word, &c);
        if d <= limit && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// Levenshtein distance: insertions, deletions and substitutions, one row at a time.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `" (did you mean \"x\"?)"` when [`did_you_mean`] finds one, else nothing.
pub(crate) fn hint(word: &str, candidates: &[&str]) -> String {
    did_you_mean(word, candidates.iter().copied())
        .map(|c| format!(" (did you mean {c:?}?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::{did_you_mean, escape_controls, single_line};

    #[test]
    fn single_line_joins_lines_and_escapes_the_rest() {
        assert_eq!(
            single_line("invalid string\n  expected `\"`\n\n"),
            "invalid string; expected `\"`"
        );
        assert_eq!(single_line("unknown field `a\rb`"), "unknown field `a\\rb`");
    }

    #[test]
    fn long_text_is_quoted_as_a_short_excerpt() {
        use super::{excerpt, quote, EXCERPT_CHARS};
        assert_eq!(quote("a cat"), "\"a cat\"");
        assert_eq!(quote("a\ncat"), "\"a\\ncat\"");
        let long = "x".repeat(500_000);
        let q = quote(&long);
        assert_eq!(
            q,
            format!("\"{}...\" (500000 characters)", "x".repeat(EXCERPT_CHARS))
        );
        let digits = "9".repeat(300);
        assert!(quote(&digits).len() < 100, "{}", quote(&digits));
        // Multi-byte characters are cut on a character boundary.
        let cats = "猫".repeat(100);
        assert!(quote(&cats).starts_with(&format!("\"{}...\"", "猫".repeat(EXCERPT_CHARS))));
        assert_eq!(excerpt("a\tb"), "a\\tb");
        assert_eq!(
            excerpt(&long),
            format!("{}... (500000 characters)", "x".repeat(EXCERPT_CHARS))
        );
    }

    #[test]
    fn control_characters_are_escaped_and_nothing_else() {
        assert_eq!(escape_controls("a/b c.jpg: é 猫"), "a/b c.jpg: é 猫");
        assert_eq!(
            escape_controls("bad\nname\r.jpg\t\u{1b}[2J\u{7f}"),
            "bad\\nname\\r.jpg\\t\\u{1b}[2J\\u{7f}"
        );
        let once = escape_controls("x\ny").into_owned();
        assert_eq!(escape_controls(&once), once);
    }

    #[test]
    fn typos_get_the_nearest_name_and_strangers_none() {
        let aspects = ["color", "scene", "object", "time_of_day"];
        assert_eq!(did_you_mean("colour", aspects), Some("color"));
        assert_eq!(did_you_mean("Scene", aspects), Some("scene"));
        assert_eq!(did_you_mean("objects", aspects), Some("object"));
        assert_eq!(did_you_mean("time-of-day", aspects), Some("time_of_day"));
        assert_eq!(did_you_mean("vehicle", aspects), None);
        assert_eq!(did_you_mean("", aspects), None);
        assert_eq!(did_you_mean("cat", ["car", "cut"]), Some("car"));
        assert_eq!(super::hint("colr", &aspects), " (did you mean \"color\"?)");
    }
}
