//! Everything vlm prints. Results go to stdout (or `--output`) as records through one exporter per
//! format ([`formats`]); [`ResultWriter`] writes and flushes them, so streamed formats keep every
//! finished record even when the run is killed. Messages go to stderr ([`console`]), around the
//! progress bar ([`progress`]).
//!
//! A new record type (an embedding, a search hit, an eval table) implements [`Record`]: its flat
//! rows once, and its table view; every format then writes it.

pub(crate) mod console;
pub(crate) mod draw;
pub(crate) mod formats;
pub(crate) mod npy;
pub(crate) mod overlay;
pub(crate) mod progress;
pub(crate) mod records;
pub(crate) mod resume;
pub(crate) mod sink;
pub(crate) mod table;
pub(crate) mod target;

use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;

pub use console::report_error;
pub(crate) use console::{info, warn};
pub(crate) use progress::Progress;
pub(crate) use records::*;
pub(crate) use resume::{ResumeFile, RunStamp};
pub(crate) use sink::Sink;
pub(crate) use table::{aspects_table, terminal_width};
pub(crate) use target::{Existing, Target};

/// `--format` of the image commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned, human-readable text.
    Table,
    /// One JSON document.
    Json,
    /// One JSON object per image per line, flushed as each image is done.
    Jsonl,
    /// Comma-separated values with a header row: one row per image and label.
    Csv,
}

impl Format {
    /// The format a file name's extension names (`out.csv`, `tags.jsonl`, `r.json`, `r.txt`).
    pub(crate) fn from_extension(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "json" => Some(Format::Json),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            "txt" | "table" => Some(Format::Table),
            _ => None,
        }
    }
}

/// `--format` of `vlm aspects`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ListFormat {
    /// Aligned, human-readable text.
    Table,
    /// One JSON document.
    Json,
    /// The labels of the named aspects, one per line.
    Labels,
}

/// One cell of a record's flat view.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell<'a> {
    Text(&'a str),
    /// Text made for the row (a list joined into one cell).
    Owned(String),
    Int(usize),
    Num(f32),
    Empty,
}

impl Cell<'_> {
    /// A failed input's only row: its path, empty cells, the error last.
    pub(crate) fn error_row<'a>(path: &'a str, columns: usize, error: &'a str) -> Vec<Cell<'a>> {
        let mut row = vec![Cell::Text(path)];
        row.extend(std::iter::repeat_n(Cell::Empty, columns.saturating_sub(2)));
        row.push(Cell::Text(error));
        row
    }

    /// RFC 4180: quoted when it holds a comma, quote or line break.
    pub(crate) fn csv(&self) -> String {
        match self {
            Cell::Text(s) if s.contains([',', '"', '\n', '\r']) => {
                format!("\"{}\"", s.replace('"', "\"\""))
            }
            Cell::Text(s) => s.to_string(),
            Cell::Owned(s) => Cell::Text(s).csv(),
            Cell::Int(n) => n.to_string(),
            Cell::Num(x) => x.to_string(),
            Cell::Empty => String::new(),
        }
    }
}

/// A per-input record, in the shapes the non-JSON formats need.
pub(crate) trait Record: Serialize {
    /// The names of the flat view's columns (CSV's header).
    const COLUMNS: &'static [&'static str];
    /// This record's rows, each with one cell per column.
    fn rows(&self) -> Vec<Vec<Cell<'_>>>;
    /// This record as human-readable lines, wrapped to `width` where it has long lines.
    fn table(&self, out: &mut String, width: Option<usize>);
    /// The name of the JSON document's array of records.
    const ARRAY: &'static str = "results";
    /// What a table shows before the first record, from the run's header (the JSON object the
    /// document opens with): nothing for per-image records; a report's summary for `eval`.
    fn table_preamble(_header: &serde_json::Value, _out: &mut String, _width: Option<usize>) {}
}

/// One `--format`: turns the run's header, each record and the trailer into bytes.
pub(crate) trait Exporter<R> {
    fn begin(&mut self, header: &serde_json::Value) -> io::Result<Vec<u8>>;
    fn record(&mut self, result: &R) -> io::Result<Vec<u8>>;
    fn end(&mut self) -> io::Result<Vec<u8>>;
}

/// The exporter for `format`, whose JSONL records carry `run` (the run's fingerprint, which `--resume` checks).
pub(crate) fn stamped_exporter<R: Record>(
    format: Format,
    run: Option<&str>,
) -> Box<dyn Exporter<R>> {
    match format {
        Format::Table => Box::new(formats::TableExporter {
            width: table::terminal_width(),
        }),
        Format::Json => Box::new(formats::JsonExporter::default()),
        Format::Jsonl => Box::new(formats::JsonlExporter {
            run: run.map(str::to_string),
        }),
        Format::Csv => Box::new(formats::CsvExporter),
    }
}

/// Writes an exporter's bytes and flushes after every record.
pub(crate) struct ResultWriter<W: Write, R> {
    out: W,
    exporter: Box<dyn Exporter<R>>,
}

impl<W: Write, R: Record> ResultWriter<W, R> {
    /// `header` (a JSON object) opens the JSON document; the other formats do not print it.
    pub(crate) fn begin(out: W, format: Format, header: &impl Serialize) -> io::Result<Self> {
        Self::begin_run(out, format, header, None)
    }

    /// [`ResultWriter::begin`] for a run whose JSONL records carry its fingerprint `run`.
    pub(crate) fn begin_run(
        out: W,
        format: Format,
        header: &impl Serialize,
        run: Option<&str>,
    ) -> io::Result<Self> {
        let mut w = Self {
            out,
            exporter: stamped_exporter(format, run),
        };
        let header = serde_json::to_value(header)?;
        let bytes = w.exporter.begin(&header)?;
        w.out.write_all(&bytes)?;
        Ok(w)
    }

    pub(crate) fn record(&mut self, result: &R) -> io::Result<()> {
        let bytes = self.exporter.record(result)?;
        self.out.write_all(&bytes)?;
        self.out.flush()
    }

    pub(crate) fn finish(mut self) -> io::Result<W> {
        let bytes = self.exporter.end()?;
        self.out.write_all(&bytes)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Writes a report (a header and its records) through the output layer and puts it in place.
pub(crate) fn write_report<R: Record>(
    sink: Sink,
    format: Format,
    header: &impl serde::Serialize,
    records: &[R],
) -> anyhow::Result<()> {
    let mut writer = ResultWriter::begin(sink, format, header)?;
    for r in records {
        writer.record(r)?;
    }
    writer.finish()?.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn run_info() -> RunInfo {
        RunInfo {
            model: ModelInfo {
                id: "tiny".into(),
                revision: None,
                family: "clip".into(),
                head: crate::model::HeadKind::Softmax,
            },
            labels: vec!["cat".into(), "hot, dog".into()],
            templates: vec!["a photo of a {}.".into()],
        }
    }

    fn results() -> Vec<ImageResult> {
        vec![
            ImageResult {
                path: "a \"b\".png".into(),
                predictions: vec![
                    Prediction {
                        label: "hot, dog".into(),
                        probability: 0.75,
                        cosine: 0.25,
                    },
                    Prediction {
                        label: "cat".into(),
                        probability: 0.25,
                        cosine: -0.125,
                    },
                ],
                error: None,
            },
            ImageResult {
                path: "missing.jpg".into(),
                predictions: vec![],
                error: Some("missing.jpg: no such file".into()),
            },
        ]
    }

    fn render(format: Format) -> String {
        let mut w = ResultWriter::<_, ImageResult>::begin(Vec::new(), format, &run_info()).unwrap();
        for r in results() {
            w.record(&r).unwrap();
        }
        String::from_utf8(w.finish().unwrap()).unwrap()
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        model: ModelInfo,
        labels: Vec<String>,
        templates: Vec<String>,
        results: Vec<ImageResult>,
    }

    #[test]
    fn json_is_one_document_with_the_results() {
        let doc: Doc = serde_json::from_str(&render(Format::Json)).unwrap();
        assert_eq!(doc.model, run_info().model);
        assert_eq!(doc.labels, run_info().labels);
        assert_eq!(doc.templates, run_info().templates);
        assert_eq!(doc.results, results());
        // An empty run is still a valid document.
        let w =
            ResultWriter::<_, ImageResult>::begin(Vec::new(), Format::Json, &run_info()).unwrap();
        let doc: Doc = serde_json::from_slice(&w.finish().unwrap()).unwrap();
        assert!(doc.results.is_empty());
    }

    #[test]
    fn jsonl_is_one_result_per_line() {
        let text = render(Format::Jsonl);
        let parsed: Vec<ImageResult> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(parsed, results());
    }

    #[test]
    fn csv_quotes_and_has_one_row_per_label() {
        insta::assert_snapshot!(render(Format::Csv), @r#"
        path,rank,label,probability,cosine,error
        "a ""b"".png",1,"hot, dog",0.75,0.25,
        "a ""b"".png",2,cat,0.25,-0.125,
        missing.jpg,,,,,missing.jpg: no such file
        "#);
    }

    #[test]
    fn table_aligns_labels() {
        insta::assert_snapshot!(render(Format::Table), @r#"
        a "b".png
          hot, dog   75.00%  cos +0.2500
          cat        25.00%  cos -0.1250
        missing.jpg
          error: missing.jpg: no such file
        "#);
    }
}
