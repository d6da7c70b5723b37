//! `vlm dupes`'s arguments and the options they become.

use std::path::PathBuf;

use clap::Args;

use super::shared::{parse_cosine, IndexDbArgs};
use crate::commands::dupes::{DupesOptions, DEFAULT_THRESHOLD};
use crate::commands::OutputOptions;
use crate::output::Format;

#[derive(Debug, Args)]
pub(crate) struct DupesArgs {
    /// Only indexed images under these folders (or these files). Default: the whole index.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// A cosine (-1..1, not a probability): images whose embeddings have at least this cosine
    /// are copies (linked transitively). The
    /// default catches byte copies, re-encoded and resized copies; lower it to also group crops
    /// and near-identical shots.
    #[arg(long, value_name = "COSINE", default_value_t = DEFAULT_THRESHOLD, allow_negative_numbers = true, value_parser = parse_cosine)]
    pub threshold: f64,

    /// Only paths matching this SQL LIKE pattern (see `vlm search --help`).
    #[arg(long = "where", value_name = "PATTERN")]
    pub where_: Option<String>,

    /// Output format. Default: from --output's extension, else table on a terminal and json
    /// otherwise.
    #[arg(short, long, value_enum)]
    pub format: Option<Format>,

    /// Write results to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Overwrite an existing --output file (without it an existing file is refused).
    #[arg(long, requires = "output")]
    pub force: bool,

    #[command(flatten)]
    pub index: IndexDbArgs,

    /// No messages on stderr (errors are still reported).
    #[arg(short, long)]
    pub quiet: bool,
}

impl From<DupesArgs> for DupesOptions {
    fn from(a: DupesArgs) -> Self {
        DupesOptions {
            paths: a.paths,
            threshold: a.threshold,
            where_: a.where_,
            index: a.index.into(),
            output: OutputOptions {
                format: a.format,
                output: a.output,
                resume: false,
                force: a.force,
            },
            quiet: a.quiet,
        }
    }
}
