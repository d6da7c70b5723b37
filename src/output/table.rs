//! Human-readable tables: entry heads, and wrapping between words to the terminal's width.

use std::io::IsTerminal;

use super::AspectInfo;
use crate::error::escape_controls;
use crate::tagging::aspects::AspectKind;

/// The width to wrap tables at: the terminal's, when stdout is one; `None` (no wrapping) when
/// results go to a file or a pipe.
pub(crate) fn terminal_width() -> Option<usize> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    terminal_size::terminal_size_of(std::io::stdout()).map(|(w, _)| usize::from(w.0).max(40))
}

/// The first lines of an image's table entry: its path, and its error if it failed. A table is for
/// reading: a file name with a newline must not split its entry.
pub(crate) fn table_entry_head(out: &mut String, path: &str, error: Option<&str>) {
    out.push_str(&format!("{}\n", escape_controls(path)));
    if let Some(err) = error {
        out.push_str(&format!("  error: {}\n", escape_controls(err)));
    }
}

/// `lead` then `items` joined by `sep`, broken between items (never inside one) so that no line is
/// wider than `width`; continuation lines are indented to where the items start. One line when
/// `width` is `None`. Ends with a newline.
pub(crate) fn wrap_items(lead: &str, items: &[String], sep: &str, width: Option<usize>) -> String {
    let indent = " ".repeat(lead.chars().count());
    let mut out = String::from(lead);
    let mut col = lead.chars().count();
    for (i, item) in items.iter().enumerate() {
        let len = item.chars().count();
        if i > 0 {
            let fits = width.is_none_or(|w| col + sep.chars().count() + len <= w);
            if fits {
                out.push_str(sep);
                col += sep.chars().count();
            } else {
                out.push('\n');
                out.push_str(&indent);
                col = indent.chars().count();
            }
        }
        out.push_str(item);
        col += len;
    }
    out.push('\n');
    out
}

/// `vlm aspects` as a table: one line per aspect, then its labels when they were asked for.
pub(crate) fn aspects_table(
    width: Option<usize>,
    aspects: &[(&AspectInfo, Option<Vec<&str>>)],
) -> String {
    let name_width = aspects
        .iter()
        .map(|(a, _)| a.name.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!(
        "{:<name_width$}  {:<6}  {:>6}  {:>9}  DESCRIPTION\n",
        "NAME", "KIND", "LABELS", "TEMPLATES"
    );
    for (a, labels) in aspects {
        let lead = format!(
            "{:<name_width$}  {:<6}  {:>6}  {:>9}  ",
            a.name,
            a.kind.to_string(),
            a.labels,
            a.templates.len(),
        );
        let words: Vec<String> = a.description.split(' ').map(str::to_string).collect();
        out.push_str(&wrap_items(&lead, &words, " ", width));
        if let Some(labels) = labels {
            out.push_str(&format!("  source: {}\n", a.source));
            for t in &a.templates {
                out.push_str(&format!("  template: {t}\n"));
            }
            let rule = match (a.top_k, a.kind) {
                (Some(k), AspectKind::Single) => format!("top {k}, score >= {}", a.threshold),
                (Some(k), AspectKind::Multi) => format!("score >= {}, at most {k}", a.threshold),
                (None, _) => format!("score >= {}", a.threshold),
            };
            out.push_str(&format!("  reports: {rule}\n"));
            if !a.label_thresholds.is_empty() {
                let items: Vec<String> = a
                    .label_thresholds
                    .iter()
                    .map(|(l, t)| format!("{l} >= {t}"))
                    .collect();
                out.push_str(&wrap_items("  own thresholds: ", &items, ", ", width));
            }
            let n = labels.len();
            let items: Vec<String> = labels
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    if i + 1 < n {
                        format!("{l},")
                    } else {
                        l.to_string()
                    }
                })
                .collect();
            out.push_str(&wrap_items("  labels: ", &items, " ", width));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_between_items_only() {
        let items: Vec<String> = ["red 90%", "dark blue 80%", "green 70%"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            wrap_items("  color  ", &items, "  ", None),
            "  color  red 90%  dark blue 80%  green 70%\n"
        );
        assert_eq!(
            wrap_items("  color  ", &items, "  ", Some(34)),
            "  color  red 90%  dark blue 80%\n         green 70%\n"
        );
        // An item wider than the line still comes whole.
        let long = vec!["a".repeat(50)];
        assert_eq!(
            wrap_items("x ", &long, " ", Some(10)),
            format!("x {}\n", "a".repeat(50))
        );
    }
}
