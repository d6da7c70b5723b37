//! `vlm embed`: the L2-normalised embedding of each image (the vector `classify` scores labels
//! with), or of each `--text` (through the templates, as `classify` embeds a label), as JSON,
//! JSONL, or a float32 `.npy` matrix with the paths beside it.
//!
//! JSON: `{"model", "dtype", "dimension", "normalized", "results": [...]}`, the header written once
//! the first vector's length is known. JSONL: one record per line and no header, as every
//! command's JSONL (issue 23).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{collect_inputs, display_path, InputSpec, Outcome};
use crate::engine::images::{self, BatchOptions};
use crate::engine::text::{
    load_text_only, prompt_units, templates_or_default, text_cache, TextReport,
};
use crate::engine::{plan_model, ModelOptions};
use crate::model::Towers;
use crate::output::npy::NpyWriter;
use crate::output::sink::interrupt;
use crate::output::{
    self, EmbedInfo, Existing, Format, ImageEmbedding, Progress, Record, ResultWriter, Sink,
    TextEmbedding,
};
use crate::score;
use crate::text::templates_from;
use crate::Error;

/// `--format` of `vlm embed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum EmbedFormat {
    /// One JSON document: the header, then `results`.
    Json,
    /// One record per line, as json's `results` (no header line, like every command's JSONL).
    Jsonl,
    /// A float32 N x D NumPy array (needs --output), and the paths (or texts) in the same order,
    /// one per line, in a `.paths.txt` (`.texts.txt`) file beside it.
    Npy,
}

impl EmbedFormat {
    fn from_extension(path: &Path) -> Option<EmbedFormat> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "json" => Some(EmbedFormat::Json),
            "jsonl" | "ndjson" => Some(EmbedFormat::Jsonl),
            "npy" => Some(EmbedFormat::Npy),
            _ => None,
        }
    }
}

/// Everything `vlm embed` needs.
#[derive(Debug, Clone)]
pub(crate) struct EmbedOptions {
    /// `--text` values: embed these instead of images.
    pub texts: Vec<String>,
    pub templates: Vec<String>,
    pub template_set: Option<String>,
    pub inputs: InputSpec,
    pub model: ModelOptions,
    pub format: Option<EmbedFormat>,
    pub output: Option<PathBuf>,
    /// Write over an existing `output` (and its names file).
    pub force: bool,
    pub batch: BatchOptions,
    pub no_cache: bool,
    pub verbose: bool,
    pub quiet: bool,
}

pub(crate) fn run(opts: &EmbedOptions) -> Result<Outcome> {
    let format = opts
        .format
        .or_else(|| opts.output.as_deref().and_then(EmbedFormat::from_extension))
        .unwrap_or(EmbedFormat::Json);
    if format == EmbedFormat::Npy && opts.output.is_none() {
        return Err(Error::Usage("-f npy needs --output FILE.npy".into()).into());
    }
    if opts.texts.is_empty() {
        embed_images(opts, format)
    } else {
        embed_texts(opts, format)
    }
}

/// Where the vectors go: a JSON/JSONL sink, or the `.npy` pair.
enum Out {
    Doc {
        /// Taken when the document begins.
        sink: Option<Sink>,
        format: Format,
    },
    Npy(NpyWriter),
}

fn open_out(opts: &EmbedOptions, format: EmbedFormat) -> Result<Out> {
    Ok(match format {
        EmbedFormat::Json | EmbedFormat::Jsonl => {
            let format = if format == EmbedFormat::Json {
                Format::Json
            } else {
                Format::Jsonl
            };
            Out::Doc {
                sink: Some(Sink::open(
                    opts.output.as_deref(),
                    format,
                    Existing::of(opts.force, false, false),
                )?),
                format,
            }
        }
        EmbedFormat::Npy => {
            let target = opts.output.as_deref().context("-f npy needs --output")?;
            Out::Npy(NpyWriter::create(
                target,
                !opts.texts.is_empty(),
                Existing::of(opts.force, false, false),
            )?)
        }
    })
}

impl Out {
    /// What Ctrl-C and the end of the run say about an `--output` file (issue 23 item 6).
    fn report(&self) -> Option<interrupt::Report> {
        let (output, streamed) = match self {
            Out::Doc {
                sink: Some(sink),
                format,
            } => (sink.target()?.shown().to_string(), *format == Format::Jsonl),
            Out::Doc { sink: None, .. } => return None,
            Out::Npy(npy) => (
                format!(
                    "{} (and {})",
                    npy.data_target().shown(),
                    npy.names_target().shown()
                ),
                false,
            ),
        };
        Some(interrupt::Report {
            output,
            noun: "embeddings",
            streamed,
            resumable: false,
            before: 0,
        })
    }
}

/// Opens a JSON document with `info` as its header, or JSONL, which has none: every line is a
/// record, as in classify, tag and search (issue 23; the header used to be JSONL's first line).
fn begin_doc<R: Record>(
    sink: Sink,
    format: Format,
    info: &EmbedInfo,
) -> Result<ResultWriter<Sink, R>> {
    Ok(ResultWriter::begin(sink, format, info)?)
}

fn embed_texts(opts: &EmbedOptions, format: EmbedFormat) -> Result<Outcome> {
    let templates = templates_from(&opts.templates, opts.template_set.as_deref())?;
    if format == EmbedFormat::Npy {
        if let Some(t) = opts.texts.iter().find(|t| t.contains(['\n', '\r'])) {
            return Err(Error::Usage(format!(
                "--text {t:?}: holds a line break, which a .texts.txt file cannot list; use -f jsonl"
            ))
            .into());
        }
    }
    let out = open_out(opts, format)?;
    let last_word = out.report().filter(|_| !opts.quiet);
    let plan = plan_model(&opts.model, opts.quiet)?;
    let templates = templates_or_default(&plan, templates)?;
    let units = prompt_units(&opts.texts, &templates);
    let cache = text_cache(opts.no_cache);
    let report = TextReport {
        quiet: opts.quiet,
        verbose: opts.verbose,
    };
    let precision = plan.precision;
    let (engine, embeds) = load_text_only(plan, &units, cache.as_ref(), report)?;
    let info = EmbedInfo {
        model: engine.info(),
        dtype: precision.name().into(),
        dimension: embeds.first().map(Vec::len),
        normalized: true,
        templates: Some(templates.iter().map(|t| t.as_str().to_string()).collect()),
    };
    match out {
        Out::Doc { sink, format } => {
            let sink = sink.context("the output was already begun")?;
            let mut writer = begin_doc::<TextEmbedding>(sink, format, &info)?;
            for (text, embedding) in opts.texts.iter().zip(embeds) {
                writer.record(&TextEmbedding {
                    text: text.clone(),
                    embedding,
                })?;
            }
            writer.finish()?.commit()?;
        }
        Out::Npy(mut npy) => {
            for (text, embedding) in opts.texts.iter().zip(&embeds) {
                npy.push(text.as_bytes(), embedding)?;
            }
            npy.finish()?;
        }
    }
    if let Some(r) = &last_word {
        output::info(&interrupt::finished(r, opts.texts.len(), 0));
    }
    Ok(Outcome::Success)
}

fn embed_images(opts: &EmbedOptions, format: EmbedFormat) -> Result<Outcome> {
    let inputs = collect_inputs(&opts.inputs)?;
    let mut out = open_out(opts, format)?;
    let plan = plan_model(&opts.model, opts.quiet)?;
    let plan = plan.without_caches_if(opts.no_cache);
    let precision = plan.precision;
    let engine = plan.load(Towers {
        vision: true,
        text: false,
    })?;
    let mut info = EmbedInfo {
        model: engine.info(),
        dtype: precision.name().into(),
        dimension: None,
        normalized: true,
        templates: None,
    };
    let to_stdout = matches!(
        &out,
        Out::Doc {
            sink: Some(Sink::Stdout(_)),
            ..
        }
    );
    let whole_lines = matches!(
        &out,
        Out::Doc {
            format: Format::Jsonl,
            ..
        }
    );
    let bar = output::progress::bar_allowed(opts.quiet, to_stdout, whole_lines);
    let progress = Progress::images(inputs.len(), bar);
    let last_word = out.report().filter(|_| !opts.quiet);
    if let Some(r) = &last_word {
        interrupt::report(r.clone());
    }
    let mut written = 0usize;
    // JSON/JSONL: records wait until the first vector gives the header its dimension.
    let mut writer: Option<ResultWriter<Sink, ImageEmbedding>> = None;
    let mut waiting: Vec<ImageEmbedding> = Vec::new();
    let mut refused = 0usize;
    let failed = images::encode_images(&engine, &inputs, &opts.batch, &progress, |_, input, r| {
        let r = r.map(|mut e| {
            score::normalize(&mut e);
            e
        });
        match &mut out {
            Out::Doc { sink, format } => {
                let record = match r {
                    Ok(e) => ImageEmbedding {
                        path: display_path(&input.path),
                        embedding: Some(e),
                        error: None,
                    },
                    Err(message) => ImageEmbedding {
                        path: display_path(&input.path),
                        embedding: None,
                        error: Some(message),
                    },
                };
                if writer.is_none() {
                    match &record.embedding {
                        Some(e) => {
                            info.dimension = Some(e.len());
                            let s = sink.take().context("the output was already begun")?;
                            let mut w = progress.suspend(|| begin_doc(s, *format, &info))?;
                            for earlier in waiting.drain(..) {
                                interrupt::record(false, || {
                                    progress.suspend(|| w.record(&earlier))
                                })?;
                                written += 1;
                            }
                            writer = Some(w);
                        }
                        None => {
                            waiting.push(record);
                            return Ok(());
                        }
                    }
                }
                if let Some(w) = writer.as_mut() {
                    let ok = record.error.is_none();
                    interrupt::record(ok, || progress.suspend(|| w.record(&record)))?;
                    written += 1;
                }
            }
            Out::Npy(npy) => {
                if let Ok(e) = r {
                    let name = input.path.as_os_str().as_encoded_bytes();
                    if name.contains(&b'\n') {
                        refused += 1;
                        progress.error(&format!(
                            "{}: its name holds a line break, which a .paths.txt file cannot list; left out (use -f jsonl)",
                            display_path(&input.path)
                        ));
                    } else {
                        npy.push(name, &e)?;
                        written += 1;
                    }
                }
            }
        }
        Ok(())
    })?;
    progress.finish();
    match out {
        Out::Doc { sink, format } => {
            let w = match writer {
                Some(w) => w,
                None => {
                    let sink = sink.context("the output was already begun")?;
                    let mut w = begin_doc(sink, format, &info)?;
                    for earlier in waiting.drain(..) {
                        w.record(&earlier)?;
                        written += 1;
                    }
                    w
                }
            };
            w.finish()?.commit()?;
        }
        Out::Npy(npy) => npy.finish()?,
    }
    if let Some(r) = &last_word {
        output::info(&interrupt::finished(r, written, failed + refused));
    }
    Ok(if failed + refused == 0 {
        Outcome::Success
    } else {
        Outcome::SomeFailed
    })
}
