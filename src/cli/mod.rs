//! Command-line arguments (clap only; the `///` docs are the help text): one file per command's
//! arguments with a `From` into its typed options, the arguments several commands share in
//! [`shared`], and the one-line clap error in [`error`]. Commands never see clap's types.

mod aspects;
mod calibrate;
mod classify;
mod dupes;
mod embed;
mod error;
pub use error::clap_one_line;
mod eval;
mod explain;
mod index;
mod search;
mod shared;
mod tag;

pub(crate) use aspects::AspectsArgs;
pub(crate) use calibrate::CalibrateArgs;
pub(crate) use classify::ClassifyArgs;
pub(crate) use dupes::DupesArgs;
pub(crate) use embed::EmbedArgs;
pub(crate) use eval::EvalArgs;
pub(crate) use explain::ExplainArgs;
pub(crate) use index::IndexArgs;
pub(crate) use search::SearchArgs;
pub(crate) use tag::TagArgs;

use clap::{Parser, Subcommand};

use crate::commands::Request;

/// Zero-shot image classification with CLIP, SigLIP and OpenCLIP models.
///
/// Exit codes: 0 every image was processed; 1 some images failed (the others are in the output);
/// 2 usage or model error, before any image was processed.
#[derive(Debug, Parser)]
#[command(
    name = "vlm",
    version,
    about,
    long_about = None,
    max_term_width = 100,
    after_help = EXIT_CODES,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

const EXIT_CODES: &str =
    "Exit codes: 0 every image was processed; 1 some images failed (the others \
are in the output); 2 usage or model error, or no input is an image, before any image was processed.";

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Rank labels for each image by image-text similarity (CLIP, SigLIP).
    #[command(after_help = EXIT_CODES)]
    Classify(ClassifyArgs),
    /// Tag each image along several aspects at once (color, scene, object, ...).
    #[command(after_help = EXIT_CODES)]
    Tag(TagArgs),
    /// List the built-in aspects, or show the labels of some.
    Aspects(AspectsArgs),
    /// Write each image's embedding (L2-normalised), or each --text's, as JSON, JSONL or .npy.
    #[command(after_help = EXIT_CODES)]
    Embed(EmbedArgs),
    /// Add images to the search index (only new and changed files are embedded); without paths,
    /// show what it holds.
    #[command(after_help = INDEX_HELP)]
    Index(IndexArgs),
    /// Find indexed images by a text or an image, best first.
    #[command(after_help = INDEX_FILE_HELP)]
    Search(SearchArgs),
    /// Find groups of copies in the index: byte copies, re-encoded and resized images.
    #[command(after_help = INDEX_FILE_HELP)]
    Dupes(DupesArgs),
    /// Show where in each image each label is seen: patch heat maps as numbers or pictures.
    #[command(after_help = EXIT_CODES)]
    Explain(ExplainArgs),
    /// Measure zero-shot accuracy on a folder with one sub-folder per class.
    #[command(after_help = EXIT_CODES)]
    Eval(EvalArgs),
    /// Choose per-label thresholds of an aspect from a ground truth, for `vlm tag`.
    #[command(after_help = EXIT_CODES)]
    Calibrate(CalibrateArgs),
}

const INDEX_FILE_HELP: &str =
    "The index is index.sqlite in $VLM_DATA_DIR, else $XDG_DATA_HOME/vlm, \
else ~/.local/share/vlm (or --db FILE). Exit codes: 0 success; 2 usage, model or index error.";

const INDEX_HELP: &str = "The index is index.sqlite in $VLM_DATA_DIR, else $XDG_DATA_HOME/vlm, \
else ~/.local/share/vlm (or --db FILE); it holds one index per model (id, revision, dtype). \
Without paths, `vlm index` shows where the index is, its size, and each model's images and \
failures (a table on a terminal, JSON otherwise). When a local model's files change (new weights \
at the same path), its old embeddings are dropped and the files embedded again. \
Exit codes: 0 every image was processed; 1 some images failed (the others are indexed); 2 usage, \
model or index error.";

impl Cli {
    /// Runs the command (its arguments turned into the library's typed options first).
    pub fn run(self) -> anyhow::Result<crate::commands::Outcome> {
        crate::commands::run(self.into_request())
    }

    /// The command as the library runs it: typed options, no clap types.
    pub(crate) fn into_request(self) -> Request {
        match self.command {
            Command::Classify(a) => Request::Classify(a.into()),
            Command::Tag(a) => Request::Tag(a.into()),
            Command::Aspects(a) => Request::Aspects(a.into()),
            Command::Embed(a) => Request::Embed(a.into()),
            Command::Index(a) => Request::Index(a.into()),
            Command::Search(a) => Request::Search(a.into()),
            Command::Dupes(a) => Request::Dupes(a.into()),
            Command::Explain(a) => Request::Explain(a.into()),
            Command::Eval(a) => Request::Eval(a.into()),
            Command::Calibrate(a) => Request::Calibrate(a.into()),
        }
    }
}
