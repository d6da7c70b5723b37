//! The commands, one file each, over the [`crate::engine`]. Each takes typed options (the command
//! line's are converted in `cli`), and the run-wide parts live here: inputs, the destination,
//! `--resume`, and writing every record through the output layer.

pub(crate) mod aspects;
pub(crate) mod calibrate;
pub(crate) mod classify;
pub mod dupes;
pub(crate) mod embed;
pub(crate) mod eval;
pub(crate) mod explain;
pub(crate) mod index;
pub(crate) mod search;
pub(crate) mod tag;

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::engine::images::{self, BatchOptions};
use crate::engine::Engine;
use crate::inputs::{self, Input, InputOptions};
use crate::output::sink::interrupt;
use crate::output::{
    self, Existing, Format, Progress, Record, ResultWriter, ResumeFile, RunStamp, Sink, Target,
};
use crate::Error;

/// How a run ended when it did not fail as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every input was processed.
    Success,
    /// Some inputs failed; the others are in the output.
    SomeFailed,
}

/// One command with its options, as the library runs it.
#[derive(Debug)]
pub(crate) enum Request {
    Classify(classify::ClassifyOptions),
    Tag(tag::TagOptions),
    Aspects(aspects::AspectsOptions),
    Embed(embed::EmbedOptions),
    Index(index::IndexOptions),
    Search(search::SearchOptions),
    Dupes(dupes::DupesOptions),
    Explain(explain::ExplainOptions),
    Eval(eval::EvalOptions),
    Calibrate(calibrate::CalibrateOptions),
}

pub(crate) fn run(request: Request) -> Result<Outcome> {
    match request {
        Request::Classify(opts) => {
            limit_threads(&opts.run);
            classify::run(&opts)
        }
        Request::Tag(opts) => {
            limit_threads(&opts.run);
            tag::run(&opts)
        }
        Request::Aspects(opts) => aspects::run(&opts, &mut output::sink::StdoutSink::new()),
        Request::Embed(opts) => {
            limit_batch_threads(&opts.batch);
            embed::run(&opts)
        }
        Request::Index(opts) => {
            limit_batch_threads(&opts.batch);
            index::run(&opts)
        }
        Request::Search(opts) => {
            limit_batch_threads(&opts.batch);
            search::run(&opts)
        }
        Request::Dupes(opts) => dupes::run(&opts),
        Request::Explain(opts) => {
            limit_threads(&opts.run);
            explain::run(&opts)
        }
        Request::Eval(opts) => {
            limit_threads(&opts.run);
            eval::run(&opts)
        }
        Request::Calibrate(opts) => {
            limit_threads(&opts.run);
            calibrate::run(&opts)
        }
    }
}

/// Which images a run processes.
#[derive(Debug, Clone, Default)]
pub(crate) struct InputSpec {
    /// Files, folders and glob patterns, in order.
    pub paths: Vec<PathBuf>,
    pub options: InputOptions,
}

/// Where results go.
#[derive(Debug, Clone, Default)]
pub(crate) struct OutputOptions {
    /// `None`: from `--output`'s extension, else table on a terminal and JSON otherwise.
    pub format: Option<Format>,
    pub output: Option<PathBuf>,
    /// Append to the JSONL `output`, skipping the images it already has.
    pub resume: bool,
    /// Write over an existing `output` (without it, or `resume`, an existing file is refused).
    pub force: bool,
}

/// The options every image command shares.
#[derive(Debug, Clone)]
pub(crate) struct RunOptions {
    pub output: OutputOptions,
    pub batch: BatchOptions,
    /// Neither read nor write the text-embedding cache.
    pub no_cache: bool,
    pub verbose: bool,
    pub quiet: bool,
}

/// `--threads` bounds the model's thread pool too (Candle's CPU kernels read `RAYON_NUM_THREADS`).
/// Called before any thread is started; an explicit `RAYON_NUM_THREADS` wins.
fn limit_threads(run: &RunOptions) {
    limit_batch_threads(&run.batch);
}

/// [`limit_threads`] for the commands whose options hold only the batch part.
fn limit_batch_threads(batch: &BatchOptions) {
    if let Some(n) = batch.threads {
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
    }
}

/// The format of a run: `--format`, else `--output`'s extension, else JSONL for `--resume`, else
/// a table on a terminal and JSON otherwise.
pub(crate) fn format_for(out: &OutputOptions) -> Format {
    if let Some(f) = out.format {
        return f;
    }
    if let Some(f) = out.output.as_deref().and_then(Format::from_extension) {
        return f;
    }
    if out.resume {
        return Format::Jsonl;
    }
    if out.output.is_none() && std::io::stdout().is_terminal() {
        Format::Table
    } else {
        Format::Json
    }
}

/// The inputs of a run, in order, after `--shard`; usage errors (an unreadable list) end the run,
/// and so do inputs of which none can be an image ([`require_usable`]), before any model is
/// touched.
pub(crate) fn collect_inputs(spec: &InputSpec) -> Result<Vec<Input>> {
    let inputs = collect_all_inputs(spec)?;
    require_usable(&inputs)?;
    Ok(inputs)
}

/// [`collect_inputs`] without the check that one of them is usable (`vlm index`, where a folder
/// that is now empty is how its files leave the index).
pub(crate) fn collect_all_inputs(spec: &InputSpec) -> Result<Vec<Input>> {
    inputs::collect(&spec.paths, &spec.options, &mut std::io::stdin().lock())
}

/// Issue 23: `vlm tag nosuch.jpg -a all` loaded the model and encoded 1,955 prompts before saying
/// "No such file". When there are inputs but none of them can be an image (missing, a folder
/// without images, empty, no image signature: [`crate::images::sniff`]), the run is a usage error
/// (exit 2, nothing processed) naming the first problem, before anything is loaded. The check
/// stops at the first input that may be an image, so a normal run reads one file header more.
/// No inputs at all (an empty `--files-from` list, a `--shard` that got none) is not an error.
pub(crate) fn require_usable(inputs: &[Input]) -> Result<()> {
    let mut first: Option<String> = None;
    for input in inputs {
        let problem = match &input.error {
            Some(error) => error.clone(),
            None => match crate::images::sniff(&input.path) {
                Ok(()) => return Ok(()),
                Err(e) => e.to_string(),
            },
        };
        first.get_or_insert(problem);
    }
    let Some(first) = first else {
        return Ok(());
    };
    let rest = match inputs.len() {
        1 => String::new(),
        n => format!(" (and {} more inputs, none of them an image)", n - 1),
    };
    Err(Error::Usage(format!("nothing to process: {first}{rest}")).into())
}

/// Where the results go, and which inputs `--resume` can skip. Checked before the model loads.
pub(crate) struct Destination {
    pub sink: Sink,
    pub format: Format,
    /// Paths (as printed) that already have a result in the `--resume` file.
    pub completed: HashSet<String>,
    /// The run's fingerprint, carried by each JSONL record (see [`output::resume`]).
    pub stamp: Option<RunStamp>,
}

/// The destination of a command without `--resume` (its records carry no fingerprint).
pub(crate) fn open_destination(out: &OutputOptions) -> Result<Destination> {
    open_destination_for(out, None)
}

/// The destination of a run whose JSONL records carry `stamp`; `--resume` appends only to records
/// with the same one (issue 20 item 4), and an existing `--output` is written only with `--force`
/// or `--resume` (item 16). Nothing at the output changes when this fails.
pub(crate) fn open_destination_for(
    out: &OutputOptions,
    stamp: Option<RunStamp>,
) -> Result<Destination> {
    let format = format_for(out);
    if out.resume && format != Format::Jsonl {
        return Err(Error::Usage(
            "--resume needs --format jsonl: only JSONL output can be appended to".into(),
        )
        .into());
    }
    let Some(path) = &out.output else {
        return Ok(Destination {
            sink: Sink::open(None, format, Existing::Replace)?,
            format,
            completed: HashSet::new(),
            stamp,
        });
    };
    let existing = Existing::of(
        out.force,
        out.resume,
        stamp.is_some() && format == Format::Jsonl,
    );
    let target = Target::check("--output", path, existing)?;
    let mut completed = HashSet::new();
    if out.resume {
        let file = ResumeFile::read(&target)?;
        match &stamp {
            Some(s) => file.accept(s)?,
            None => return Err(Error::Usage("--resume: this command cannot resume".into()).into()),
        }
        completed = file.completed().clone();
    }
    Ok(Destination {
        sink: Sink::to(&target, format)?,
        format,
        completed,
        stamp,
    })
}

/// The name of an input in the output: its path as given, lossily converted to UTF-8.
pub(crate) fn display_path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Inputs minus those `--resume` found done; warns how many were skipped.
pub(crate) fn skip_completed(
    inputs: Vec<Input>,
    completed: &HashSet<String>,
    quiet: bool,
) -> Vec<Input> {
    if completed.is_empty() {
        return inputs;
    }
    let before = inputs.len();
    let left: Vec<Input> = inputs
        .into_iter()
        .filter(|i| !completed.contains(&display_path(&i.path)))
        .collect();
    // A note, not a warning: resuming is what the user asked for (issue 23).
    if !quiet {
        output::info(&format!(
            "--resume: {} of {before} images already done, {} to go",
            before - left.len(),
            left.len()
        ));
    }
    left
}

/// The end of every image command: opens the output with `header`, encodes the inputs, turns each
/// image's embedding (or error) into a record with `record`, writes it, and puts the output in
/// place. The outcome says whether any input failed.
pub(crate) fn write_results<R: Record>(
    engine: &Engine,
    inputs: &[Input],
    run: &RunOptions,
    dest: Destination,
    header: &impl serde::Serialize,
    record: impl Fn(String, Result<Vec<f32>, String>) -> R,
) -> Result<Outcome> {
    // A failed image is in the table; when that table is on the terminal, the stderr line would
    // show the same error twice.
    let to_stdout = matches!(dest.sink, Sink::Stdout(_));
    let table_on_terminal =
        dest.format == Format::Table && to_stdout && std::io::stdout().is_terminal();
    let bar = output::progress::bar_allowed(run.quiet, to_stdout, dest.format != Format::Json);
    let progress = Progress::images(inputs.len(), bar).with_errors(!table_on_terminal);
    let report = dest.sink.target().map(|t| interrupt::Report {
        output: t.shown().to_string(),
        noun: "results",
        streamed: matches!(dest.format, Format::Jsonl | Format::Csv),
        resumable: dest.format == Format::Jsonl && dest.stamp.is_some(),
        before: dest.completed.len(),
    });
    if let (Some(r), false) = (&report, run.quiet) {
        interrupt::report(r.clone());
    }
    let stamp = dest.stamp.as_ref().map(RunStamp::as_str);
    let mut writer =
        progress.suspend(|| ResultWriter::begin_run(dest.sink, dest.format, header, stamp))?;
    let mut written = 0usize;
    let failed = images::encode_images(
        engine,
        inputs,
        &run.batch,
        &progress,
        |_, input, embedding| {
            let ok = embedding.is_ok();
            let rec = record(display_path(&input.path), embedding);
            interrupt::record(ok, || progress.suspend(|| writer.record(&rec)))?;
            written += 1;
            Ok(())
        },
    )?;
    progress.finish();
    let sink = writer.finish()?;
    sink.commit()?;
    if let (Some(r), false) = (&report, run.quiet) {
        output::info(&interrupt::finished(r, written, failed));
    }
    Ok(if failed == 0 {
        Outcome::Success
    } else {
        Outcome::SomeFailed
    })
}

pub(crate) fn show_progress(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}
