//! Ground-truth files for `vlm calibrate`: which labels of one aspect each image has.
//!
//! - **CSV**: a header row naming a `path` and a `labels` column (others are ignored), then one row
//!   per image; labels separated by `;` inside the field (`dog;ball`), empty for an image with none.
//!   Fields may be quoted as RFC 4180 has it (`"a, b.jpg"`, `""` for a quote).
//! - **JSONL**: one object per line, `{"path": "a.jpg", "labels": ["dog", "ball"]}`.
//!
//! `.jsonl`/`.ndjson`/`.json` files are JSONL, `.csv` files CSV, others by their first character
//! (`{`: JSONL). Relative paths are relative to the truth file's folder. Every error names the file
//! and line: `truth.csv:7: ...`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use crate::error::escape_controls;
use crate::Error;

/// The separator of labels inside a CSV `labels` field.
pub(crate) const CSV_LABEL_SEPARATOR: char = ';';

/// One image of a ground truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TruthRow {
    /// As written in the file.
    pub given: String,
    /// Resolved against the truth file's folder.
    pub path: PathBuf,
    /// Without repeats, in the order written.
    pub labels: Vec<String>,
    /// 1-based line of the row.
    pub line: usize,
}

/// Reads a truth file; see the module docs for the formats.
pub(crate) fn read(path: &Path) -> Result<Vec<TruthRow>> {
    let text = crate::text::read_text_file(path)?;
    let base = path.parent().unwrap_or(Path::new(""));
    parse(
        &text,
        &path.display().to_string(),
        &jsonl_by_name(path),
        base,
    )
}

fn jsonl_by_name(path: &Path) -> Option<bool> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" | "ndjson" | "json" => Some(true),
        "csv" => Some(false),
        _ => None,
    }
}

/// Parses a truth file's text; `source` names it in errors, `base` is what relative paths are
/// relative to; `jsonl` is the format when the name says it.
pub(crate) fn parse(
    text: &str,
    source: &str,
    jsonl: &Option<bool>,
    base: &Path,
) -> Result<Vec<TruthRow>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let is_jsonl = jsonl.unwrap_or_else(|| text.trim_start().starts_with('{'));
    let raw = if is_jsonl {
        parse_jsonl(text, source)?
    } else {
        parse_csv(text, source)?
    };
    if raw.is_empty() {
        return Err(Error::Usage(format!("{source}: no images in this ground truth")).into());
    }
    let mut rows: Vec<TruthRow> = Vec::with_capacity(raw.len());
    for (line, given, labels) in raw {
        let given = given.trim().to_string();
        if given.is_empty() {
            return Err(at(source, line, "empty path"));
        }
        let path = base.join(&given);
        let mut clean: Vec<String> = Vec::new();
        for l in labels {
            let l = l.trim();
            if l.is_empty() {
                continue;
            }
            if !clean.iter().any(|c| c == l) {
                clean.push(l.to_string());
            }
        }
        rows.push(TruthRow {
            given,
            path,
            labels: clean,
            line,
        });
    }
    // The same path written twice; by reference, so that a large truth costs no second copy of
    // its paths. The same file by two paths is [`locate`]'s to find.
    let mut seen: std::collections::HashMap<&Path, usize> = Default::default();
    for row in &rows {
        if let Some(first) = seen.insert(&row.path, row.line) {
            return Err(at(
                source,
                row.line,
                &format!(
                    "{} appears twice (first on line {first})",
                    crate::error::quote(&row.given)
                ),
            ));
        }
    }
    Ok(rows)
}

/// How many paths that do not exist [`Located`] keeps, to name them.
pub(crate) const MISSING_LISTED: usize = 10;

/// A truth's rows split by whether their file exists.
#[derive(Debug)]
pub(crate) struct Located {
    /// The rows whose file exists, in order.
    pub rows: Vec<TruthRow>,
    /// How many paths do not exist (or cannot be read).
    pub missing: usize,
    /// The first [`MISSING_LISTED`] of them. The rest are counted, not kept: a truth of a million
    /// rows for another machine's files must not cost a million error records (issue 20).
    pub missing_rows: Vec<TruthRow>,
}

/// Finds each row's file by identity (device and inode, [`crate::inputs::FileId`]): two rows
/// that reach one file (`./a.png` and `a.png`, `x/../x/a.png`, a symlink) are an error naming
/// both lines, as a path written twice is; rows whose file does not exist are counted.
pub(crate) fn locate(rows: Vec<TruthRow>, source: &str) -> Result<Located> {
    let mut located = Located {
        rows: Vec::new(),
        missing: 0,
        missing_rows: Vec::new(),
    };
    let mut seen: std::collections::HashMap<crate::inputs::FileId, usize> = Default::default();
    for row in rows {
        let Some(id) = crate::inputs::FileId::of_path(&row.path) else {
            located.missing += 1;
            if located.missing_rows.len() < MISSING_LISTED {
                located.missing_rows.push(row);
            }
            continue;
        };
        if let Some(&first) = seen.get(&id) {
            let first: &TruthRow = &located.rows[first];
            return Err(at(
                source,
                row.line,
                &format!(
                    "{} is the same file as {} (line {})",
                    crate::error::quote(&row.given),
                    crate::error::quote(&first.given),
                    first.line
                ),
            ));
        }
        seen.insert(id, located.rows.len());
        located.rows.push(row);
    }
    located.rows.shrink_to_fit();
    Ok(located)
}

fn at(source: &str, line: usize, message: &str) -> anyhow::Error {
    Error::Usage(format!("{source}:{line}: {}", escape_controls(message))).into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRow {
    path: String,
    labels: Vec<String>,
}

fn parse_jsonl(text: &str, source: &str) -> Result<Vec<(usize, String, Vec<String>)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: JsonRow = serde_json::from_str(line)
            .map_err(|e| at(source, i + 1, &crate::error::single_line(&e.to_string())))?;
        out.push((i + 1, row.path, row.labels));
    }
    Ok(out)
}

/// RFC 4180 records with the line each starts on; a quoted field may hold commas, quotes (`""`)
/// and line breaks. Blank lines are skipped.
fn csv_records(text: &str, source: &str) -> Result<Vec<(usize, Vec<String>)>> {
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    loop {
        // Skip blank lines between records.
        while let Some(&c) = chars.peek() {
            if c == '\n' {
                line += 1;
                chars.next();
            } else if c == '\r' {
                chars.next();
            } else {
                break;
            }
        }
        if chars.peek().is_none() {
            break;
        }
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut was_quoted = false;
        loop {
            let c = chars.next();
            match (c, quoted) {
                (None, true) => return Err(at(source, start, "a quoted field is not closed")),
                (None, false) => {
                    fields.push(std::mem::take(&mut field));
                    break;
                }
                (Some('"'), true) => {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        field.push('"');
                    } else {
                        quoted = false;
                    }
                }
                (Some(c), true) => {
                    if c == '\n' {
                        line += 1;
                    }
                    field.push(c);
                }
                (Some('"'), false) if field.trim().is_empty() && !was_quoted => {
                    field.clear();
                    quoted = true;
                    was_quoted = true;
                }
                (Some(','), false) => {
                    fields.push(std::mem::take(&mut field));
                    was_quoted = false;
                }
                (Some('\r'), false) if chars.peek() == Some(&'\n') => {}
                (Some('\n'), false) => {
                    line += 1;
                    fields.push(std::mem::take(&mut field));
                    break;
                }
                (Some(c), false) => {
                    if was_quoted && !c.is_whitespace() {
                        return Err(at(
                            source,
                            line,
                            "text after a closing quote (a quote inside a quoted field is written \"\")",
                        ));
                    }
                    field.push(c);
                }
            }
        }
        records.push((start, fields));
    }
    Ok(records)
}

fn parse_csv(text: &str, source: &str) -> Result<Vec<(usize, String, Vec<String>)>> {
    let records = csv_records(text, source)?;
    let Some(((header_line, header), rows)) = records.split_first() else {
        return Ok(Vec::new());
    };
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                at(
                    source,
                    *header_line,
                    &format!(
                        "the header row must name a {name:?} column (a CSV ground truth starts with `path,labels`)"
                    ),
                )
            })
    };
    let (path_col, labels_col) = (column("path")?, column("labels")?);
    let mut out = Vec::with_capacity(rows.len());
    for (line, fields) in rows {
        if fields.len() != header.len() {
            return Err(at(
                source,
                *line,
                &format!(
                    "{} fields where the header has {} (quote a field holding a comma)",
                    fields.len(),
                    header.len()
                ),
            ));
        }
        let labels = fields[labels_col]
            .split(CSV_LABEL_SEPARATOR)
            .map(str::to_string)
            .collect();
        out.push((*line, fields[path_col].clone(), labels));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> Result<Vec<TruthRow>> {
        parse(text, "truth.csv", &Some(false), Path::new("/data"))
    }

    fn jsonl(text: &str) -> Result<Vec<TruthRow>> {
        parse(text, "truth.jsonl", &None, Path::new("/data"))
    }

    fn labels(rows: &[TruthRow]) -> Vec<Vec<&str>> {
        rows.iter()
            .map(|r| r.labels.iter().map(String::as_str).collect())
            .collect()
    }

    #[test]
    fn csv_with_quotes_separators_and_blank_labels() {
        let rows = csv(
            "\u{feff}path,labels\r\na.jpg,dog;ball\r\n\r\n\"b, c.jpg\",\"dog; \"\n\"say \"\"hi\"\".png\",\n/abs/d.png,ball;ball\n",
        )
        .unwrap();
        let paths: Vec<&str> = rows.iter().map(|r| r.given.as_str()).collect();
        assert_eq!(paths, ["a.jpg", "b, c.jpg", "say \"hi\".png", "/abs/d.png"]);
        assert_eq!(rows[0].path, Path::new("/data/a.jpg"));
        assert_eq!(rows[3].path, Path::new("/abs/d.png"));
        assert_eq!(
            labels(&rows),
            [vec!["dog", "ball"], vec!["dog"], vec![], vec!["ball"]]
        );
        let lines: Vec<usize> = rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, [2, 4, 5, 6]);
        // Columns in another order, extra columns ignored; a line break inside quotes.
        let rows = csv("labels,note,path\n\"dog\",\"two\nlines\",x.png\ncat,,y.png\n").unwrap();
        assert_eq!(rows[1].line, 4);
        assert_eq!(labels(&rows), [vec!["dog"], vec!["cat"]]);
    }

    #[test]
    fn csv_errors_name_the_line() {
        let e = |t: &str| csv(t).unwrap_err().to_string();
        assert!(
            e("file,tags\na,b\n").starts_with("truth.csv:1: the header row must name a \"path\"")
        );
        assert_eq!(
            e("path,labels\na.jpg,dog,cat\n"),
            "truth.csv:2: 3 fields where the header has 2 (quote a field holding a comma)"
        );
        assert_eq!(
            e("path,labels\na.jpg,dog\n./b.jpg,x\na.jpg,cat\n"),
            "truth.csv:4: \"a.jpg\" appears twice (first on line 2)"
        );
        assert_eq!(
            e("path,labels\n\"a.jpg,dog\n"),
            "truth.csv:2: a quoted field is not closed"
        );
        assert!(e("path,labels\n\"a\"b.jpg,dog\n")
            .starts_with("truth.csv:2: text after a closing quote"));
        assert_eq!(e("path,labels\n,dog\n"), "truth.csv:2: empty path");
        assert_eq!(
            e("path,labels\n"),
            "truth.csv: no images in this ground truth"
        );
    }

    #[test]
    fn jsonl_rows_and_errors() {
        let rows = jsonl("{\"path\": \"a.jpg\", \"labels\": [\"dog\", \"ball\"]}\n\n{\"path\": \"b.jpg\", \"labels\": []}\n").unwrap();
        assert_eq!(labels(&rows), [vec!["dog", "ball"], vec![]]);
        assert_eq!(rows[1].line, 3);
        let e =
            jsonl("{\"path\": \"a.jpg\", \"labels\": []}\n{\"path\": \"b.jpg\", \"lables\": []}\n")
                .unwrap_err()
                .to_string();
        assert!(
            e.starts_with("truth.jsonl:2: unknown field `lables`"),
            "{e}"
        );
        let e = jsonl("{\"path\": \"a.jpg\", \"labels\": \"dog\"}\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("truth.jsonl:1: invalid type"), "{e}");
    }

    #[test]
    fn the_format_comes_from_the_name_or_the_first_character() {
        assert_eq!(jsonl_by_name(Path::new("t.JSONL")), Some(true));
        assert_eq!(jsonl_by_name(Path::new("t.csv")), Some(false));
        assert_eq!(jsonl_by_name(Path::new("t.txt")), None);
        let rows = parse(
            "{\"path\": \"a.jpg\", \"labels\": [\"x\"]}",
            "t",
            &None,
            Path::new(""),
        )
        .unwrap();
        assert_eq!(rows[0].path, Path::new("a.jpg"));
        let rows = parse("path,labels\na.jpg,x\n", "t", &None, Path::new("")).unwrap();
        assert_eq!(labels(&rows), [vec!["x"]]);
    }
}
