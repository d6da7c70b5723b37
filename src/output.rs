//! Everything vlm prints. Results go to stdout (or the writer given) through one exporter per format;
//! each exporter turns records into bytes, and [`ResultWriter`] writes and flushes them, so streamed
//! formats keep every finished record even when the run is killed. Warnings go to stderr.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::aspects::AspectKind;
use crate::classify::Prediction;
use crate::cli::Format;
use crate::error::escape_controls;
use crate::tag::Tag;

/// Which model produced the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// The Hub id or local folder given with `--model`.
    pub id: String,
    /// The Hub commit the weights came from; null for a local folder.
    pub revision: Option<String>,
}

/// What a `classify` run is about, known before the first image: the JSON document's header.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub model: ModelInfo,
    pub labels: Vec<String>,
    pub templates: Vec<String>,
}

/// The outcome of `classify` for one input image: ranked predictions, or the error that stopped it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageResult {
    /// The path as given (lossily converted to UTF-8 if it is not).
    pub path: String,
    /// Best first; empty when the image failed.
    pub predictions: Vec<Prediction>,
    /// Why the image failed; null when it succeeded.
    pub error: Option<String>,
}

/// One aspect of a `tag` run, as the JSON document's header describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AspectInfo {
    pub name: String,
    pub kind: AspectKind,
    pub description: String,
    /// "built-in", or the aspect file's path.
    pub source: String,
    /// Number of labels.
    pub labels: usize,
    pub templates: Vec<String>,
    /// The rule in force (command line over aspect file over defaults).
    pub top_k: Option<usize>,
    pub threshold: f32,
}

/// What a `tag` run is about: the JSON document's header.
#[derive(Debug, Clone, Serialize)]
pub struct TagRunInfo {
    pub model: ModelInfo,
    pub aspects: Vec<AspectInfo>,
}

/// One aspect's tags for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AspectTags {
    pub aspect: String,
    pub kind: AspectKind,
    /// Best first; may be empty when nothing passes the threshold.
    pub tags: Vec<Tag>,
}

/// The outcome of `tag` for one input image: its tags grouped by aspect, in `--aspects` order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagResult {
    pub path: String,
    /// Empty when the image failed.
    pub aspects: Vec<AspectTags>,
    pub error: Option<String>,
}

/// A per-image result, in the shapes the non-JSON formats need.
pub trait Record: Serialize {
    /// The CSV header row, with its newline.
    fn csv_header() -> &'static str
    where
        Self: Sized;
    /// This result's CSV rows.
    fn csv_rows(&self, out: &mut String);
    /// This result as human-readable lines.
    fn table(&self, out: &mut String);
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The first lines of an image's table entry: its path, and its error if it failed. A table is for
/// reading: a file name with a newline must not split its entry.
fn table_entry_head(out: &mut String, path: &str, error: Option<&str>) {
    out.push_str(&format!("{}\n", escape_controls(path)));
    if let Some(err) = error {
        out.push_str(&format!("  error: {}\n", escape_controls(err)));
    }
}

impl Record for ImageResult {
    /// One row per image and label; a failed image has one row with only the error.
    fn csv_header() -> &'static str {
        "path,rank,label,probability,cosine,error\n"
    }

    fn csv_rows(&self, out: &mut String) {
        let path = csv_field(&self.path);
        if let Some(err) = &self.error {
            out.push_str(&format!("{path},,,,,{}\n", csv_field(err)));
        }
        for (i, p) in self.predictions.iter().enumerate() {
            out.push_str(&format!(
                "{path},{},{},{},{},\n",
                i + 1,
                csv_field(&p.label),
                p.probability,
                p.cosine
            ));
        }
    }

    /// The path, then the labels aligned with probability and cosine.
    fn table(&self, out: &mut String) {
        table_entry_head(out, &self.path, self.error.as_deref());
        let width = self
            .predictions
            .iter()
            .map(|p| p.label.chars().count())
            .max()
            .unwrap_or(5)
            .clamp(5, 40);
        for p in &self.predictions {
            out.push_str(&format!(
                "  {:<width$}  {:>6.2}%  cos {:+.4}\n",
                p.label,
                p.probability * 100.0,
                p.cosine,
            ));
        }
    }
}

impl Record for TagResult {
    /// One row per image, aspect and tag; a failed image has one row with only the error.
    fn csv_header() -> &'static str {
        "path,aspect,rank,label,score,cosine,error\n"
    }

    fn csv_rows(&self, out: &mut String) {
        let path = csv_field(&self.path);
        if let Some(err) = &self.error {
            out.push_str(&format!("{path},,,,,,{}\n", csv_field(err)));
        }
        for group in &self.aspects {
            let aspect = csv_field(&group.aspect);
            for (i, t) in group.tags.iter().enumerate() {
                out.push_str(&format!(
                    "{path},{aspect},{},{},{},{},\n",
                    i + 1,
                    csv_field(&t.label),
                    t.score,
                    t.cosine
                ));
            }
        }
    }

    /// The path, then one line per aspect with its tags and scores.
    fn table(&self, out: &mut String) {
        table_entry_head(out, &self.path, self.error.as_deref());
        let width = self
            .aspects
            .iter()
            .map(|a| a.aspect.chars().count())
            .max()
            .unwrap_or(0);
        for group in &self.aspects {
            let tags: Vec<String> = group
                .tags
                .iter()
                .map(|t| format!("{} {:.0}%", t.label, t.score * 100.0))
                .collect();
            // Two spaces between tags: a label may contain a comma ("hot, dog").
            let tags = if tags.is_empty() {
                "-".to_string()
            } else {
                tags.join("  ")
            };
            out.push_str(&format!("  {:<width$}  {tags}\n", group.aspect));
        }
    }
}

/// One `--format`: turns the run's header, each record and the trailer into bytes.
pub trait Exporter<R> {
    fn begin(&mut self, header: &serde_json::Value) -> io::Result<Vec<u8>>;
    fn record(&mut self, result: &R) -> io::Result<Vec<u8>>;
    fn end(&mut self) -> io::Result<Vec<u8>>;
}

pub fn exporter<R: Record>(format: Format) -> Box<dyn Exporter<R>> {
    match format {
        Format::Table => Box::new(TableExporter),
        Format::Json => Box::new(JsonExporter::default()),
        Format::Jsonl => Box::new(JsonlExporter),
        Format::Csv => Box::new(CsvExporter),
    }
}

/// Writes an exporter's bytes and flushes after every record.
pub struct ResultWriter<W: Write, R> {
    out: W,
    exporter: Box<dyn Exporter<R>>,
}

impl<W: Write, R: Record> ResultWriter<W, R> {
    /// `header` (a JSON object) opens the JSON document; the other formats do not print it.
    pub fn begin(out: W, format: Format, header: &impl Serialize) -> io::Result<Self> {
        let mut w = Self {
            out,
            exporter: exporter(format),
        };
        let header = serde_json::to_value(header)?;
        let bytes = w.exporter.begin(&header)?;
        w.out.write_all(&bytes)?;
        Ok(w)
    }

    pub fn record(&mut self, result: &R) -> io::Result<()> {
        let bytes = self.exporter.record(result)?;
        self.out.write_all(&bytes)?;
        self.out.flush()
    }

    pub fn finish(mut self) -> io::Result<W> {
        let bytes = self.exporter.end()?;
        self.out.write_all(&bytes)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A JSON document: the header's fields, then `"results": [...]`, streamed record by record so
/// that memory does not grow with the number of images.
#[derive(Default)]
struct JsonExporter {
    count: usize,
}

impl<R: Record> Exporter<R> for JsonExporter {
    fn begin(&mut self, header: &serde_json::Value) -> io::Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec(header)?;
        // Reopen the header object to append the results array.
        match bytes.pop() {
            Some(b'}') if bytes.len() > 1 => bytes.push(b','),
            Some(b'}') => {}
            _ => return Err(io::Error::other("the JSON header must be an object")),
        }
        bytes.extend_from_slice(b"\"results\":[");
        Ok(bytes)
    }

    fn record(&mut self, result: &R) -> io::Result<Vec<u8>> {
        let mut bytes = if self.count == 0 {
            b"\n".to_vec()
        } else {
            b",\n".to_vec()
        };
        self.count += 1;
        serde_json::to_writer(&mut bytes, result)?;
        Ok(bytes)
    }

    fn end(&mut self) -> io::Result<Vec<u8>> {
        Ok(b"\n]}\n".to_vec())
    }
}

/// One JSON object per line, the same object as in the JSON document's `results`.
struct JsonlExporter;

impl<R: Record> Exporter<R> for JsonlExporter {
    fn begin(&mut self, _: &serde_json::Value) -> io::Result<Vec<u8>> {
        Ok(Vec::new())
    }

    fn record(&mut self, result: &R) -> io::Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec(result)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    fn end(&mut self) -> io::Result<Vec<u8>> {
        Ok(Vec::new())
    }
}

/// RFC 4180 CSV with a header row; the rows are the record's own.
struct CsvExporter;

impl<R: Record> Exporter<R> for CsvExporter {
    fn begin(&mut self, _: &serde_json::Value) -> io::Result<Vec<u8>> {
        Ok(R::csv_header().as_bytes().to_vec())
    }

    fn record(&mut self, result: &R) -> io::Result<Vec<u8>> {
        let mut out = String::new();
        result.csv_rows(&mut out);
        Ok(out.into_bytes())
    }

    fn end(&mut self) -> io::Result<Vec<u8>> {
        Ok(Vec::new())
    }
}

/// For people: each image's path, then its results.
struct TableExporter;

impl<R: Record> Exporter<R> for TableExporter {
    fn begin(&mut self, _: &serde_json::Value) -> io::Result<Vec<u8>> {
        Ok(Vec::new())
    }

    fn record(&mut self, result: &R) -> io::Result<Vec<u8>> {
        let mut out = String::new();
        result.table(&mut out);
        Ok(out.into_bytes())
    }

    fn end(&mut self) -> io::Result<Vec<u8>> {
        Ok(Vec::new())
    }
}

/// `vlm aspects` as a table: one line per aspect, then its labels when they were asked for.
pub fn aspects_table(aspects: &[(&AspectInfo, Option<Vec<&str>>)]) -> String {
    let width = aspects
        .iter()
        .map(|(a, _)| a.name.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!(
        "{:<width$}  {:<6}  {:>6}  {:>9}  DESCRIPTION\n",
        "NAME", "KIND", "LABELS", "TEMPLATES"
    );
    for (a, labels) in aspects {
        out.push_str(&format!(
            "{:<width$}  {:<6}  {:>6}  {:>9}  {}\n",
            a.name,
            a.kind.to_string(),
            a.labels,
            a.templates.len(),
            a.description
        ));
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
            out.push_str(&format!("  labels: {}\n", labels.join(", ")));
        }
    }
    out
}

/// A warning on stderr (suppressed by `--quiet` at the call site).
pub fn warn(message: &str) {
    eprintln!("vlm: warning: {}", escape_controls(message));
}

/// What the run did (`--verbose`), on stderr.
pub fn info(message: &str) {
    eprintln!("vlm: {}", escape_controls(message));
}

/// An error on stderr, one line: a per-input error (the run goes on) or, from `main`, the error
/// that stopped the run. `warn`, `info` and this are the only writers to stderr besides the
/// progress bar, so escaping control characters here keeps every line one line.
pub fn report_error(message: &str) {
    eprintln!("vlm: {}", escape_controls(message));
}

/// Where results go: stdout, or `--output FILE`.
pub enum Sink {
    Stdout(io::StdoutLock<'static>),
    /// Streamed formats: the file is opened (truncated, or appended to with `--resume`) at the first
    /// flush, i.e. when the first result is ready, so a run that fails before any result leaves an
    /// existing file as it was.
    Lazy(LazyFile),
    /// Whole-document formats: written to a temporary file beside the target and renamed over it
    /// when the run is done; a run that fails leaves the target untouched.
    Atomic {
        file: tempfile::NamedTempFile,
        target: PathBuf,
    },
}

pub struct LazyFile {
    path: PathBuf,
    append: bool,
    pending: Vec<u8>,
    file: Option<File>,
}

impl LazyFile {
    fn open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .append(self.append)
                .truncate(!self.append)
                .open(&self.path)?;
            self.file = Some(file);
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("output file not open"))
    }
}

impl Write for LazyFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => {
                self.pending.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let file = self.open()?;
        file.write_all(&pending)?;
        file.flush()
    }
}

impl Sink {
    /// Checks `--output` and prepares it; nothing existing is modified yet.
    pub fn open(output: Option<&Path>, format: Format, append: bool) -> Result<Sink> {
        let Some(path) = output else {
            return Ok(Sink::Stdout(io::stdout().lock()));
        };
        let context = || format!("--output {}", path.display());
        if path.is_dir() {
            return Err(anyhow::anyhow!("is a folder")).with_context(context);
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match format {
            Format::Jsonl | Format::Csv => {
                // Fail now, before the model loads, if the file cannot be written at all.
                if path.exists() {
                    OpenOptions::new()
                        .append(true)
                        .open(path)
                        .with_context(context)?;
                } else if !dir.is_dir() {
                    return Err(anyhow::anyhow!("folder {} does not exist", dir.display()))
                        .with_context(context);
                }
                Ok(Sink::Lazy(LazyFile {
                    path: path.to_path_buf(),
                    append,
                    pending: Vec::new(),
                    file: None,
                }))
            }
            Format::Json | Format::Table => {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let file = tempfile::Builder::new()
                    .prefix(&format!(".{name}."))
                    .suffix(".vlm-partial")
                    .tempfile_in(&dir)
                    .with_context(|| format!("cannot create a temporary file in {}", dir.display()))
                    .with_context(context)?;
                Ok(Sink::Atomic {
                    file,
                    target: path.to_path_buf(),
                })
            }
        }
    }

    /// Puts a finished output in place.
    pub fn commit(self) -> Result<()> {
        match self {
            Sink::Stdout(mut out) => Ok(out.flush()?),
            Sink::Lazy(mut file) => Ok(file
                .flush()
                .with_context(|| format!("--output {}", file.path.display()))?),
            Sink::Atomic { file, target } => {
                file.persist(&target)
                    .map_err(|e| e.error)
                    .with_context(|| {
                        format!("--output {}: cannot rename into place", target.display())
                    })?;
                Ok(())
            }
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Stdout(out) => out.write(buf),
            Sink::Lazy(file) => file.write(buf),
            Sink::Atomic { file, .. } => file.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush(),
            Sink::Lazy(file) => file.flush(),
            Sink::Atomic { file, .. } => file.flush(),
        }
    }
}

/// The part of any vlm JSONL record that `--resume` reads.
#[derive(Deserialize)]
struct ResumeRecord {
    path: String,
    error: Option<String>,
}

/// Reads an existing JSONL output for `--resume`: the paths that already have a result. The file is
/// tidied first (atomically) when it needs it: records of failed images are dropped so that those
/// images are tried again, and a last line cut short by a killed run is removed. A line that is not a
/// vlm record stops the run: appending to someone else's file would corrupt it.
pub fn read_completed(path: &Path) -> Result<HashSet<String>> {
    let context = || format!("--resume {}", path.display());
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e).with_context(context),
    };
    let mut reader = io::BufReader::new(file);
    let mut done = HashSet::new();
    let mut kept: Vec<u8> = Vec::new();
    let mut changed = false;
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).with_context(context)? == 0 {
            break;
        }
        number += 1;
        let complete = line.last() == Some(&b'\n');
        if line.iter().all(u8::is_ascii_whitespace) {
            changed = true;
            continue;
        }
        match serde_json::from_slice::<ResumeRecord>(&line) {
            Ok(record) if record.error.is_none() => {
                done.insert(record.path);
                kept.extend_from_slice(&line);
                if !complete {
                    kept.push(b'\n');
                    changed = true;
                }
            }
            Ok(_) => changed = true,
            // Only the last line can be a record cut short.
            Err(_) if !complete => changed = true,
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "{}:{number}: not a vlm JSONL record ({e}); refusing to append to it",
                    path.display()
                ))
            }
        }
    }
    if changed {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(context)?;
        tmp.write_all(&kept).with_context(context)?;
        tmp.persist(path)
            .map_err(|e| e.error)
            .with_context(context)?;
    }
    Ok(done)
}

/// A progress bar with rate and ETA on stderr; drawn only when stderr is a terminal and the run is
/// not `--quiet`. Errors and warnings printed during a run go through it so they do not tear the bar.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub fn new(total: usize, show: bool) -> Self {
        let bar = show.then(|| {
            let style = indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {pos}/{len} images  {per_sec}  ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            indicatif::ProgressBar::with_draw_target(
                Some(total as u64),
                indicatif::ProgressDrawTarget::stderr(),
            )
            .with_style(style)
        });
        Self { bar }
    }

    /// No bar at all (tests, library callers).
    pub fn hidden() -> Self {
        Self { bar: None }
    }

    pub fn inc(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    pub fn error(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| report_error(message)),
            None => report_error(message),
        }
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

    fn run_info() -> RunInfo {
        RunInfo {
            model: ModelInfo {
                id: "tiny".into(),
                revision: None,
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
