//! `vlm search`'s arguments and the options they become.

use std::path::PathBuf;

use clap::Args;

use super::shared::{parse_cosine, EncodeArgs, IndexDbArgs};
use crate::commands::search::SearchOptions;
use crate::commands::OutputOptions;
use crate::output::Format;

#[derive(Debug, Args)]
pub(crate) struct SearchArgs {
    /// What to look for, in words. Encoded as typed ("a red bicycle on a beach"), unless
    /// -t/--templates are given: then put through them as classify puts a label.
    // Not `required_unless_present`: clap's message would name only <TEXT>; `search::run` says
    // "give a text ... or --image FILE" (issue 23).
    #[arg(value_name = "TEXT", conflicts_with = "image")]
    pub query: Option<String>,

    /// Find images like this one instead (an indexed, unchanged file needs no model).
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,

    /// Images: report the K best. Default: 10, or every image above --threshold.
    #[arg(short = 'k', long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: Option<u32>,

    /// A cosine (-1..1, the hits' `score`; not a probability): report only images whose cosine
    /// with the query is at least this.
    #[arg(long, value_name = "COSINE", allow_negative_numbers = true, value_parser = parse_cosine)]
    pub threshold: Option<f64>,

    /// Only paths matching this SQL LIKE pattern: `%` any run of characters, `_` one, `\` escapes
    /// them; ASCII letters match either case. E.g. --where '%/2023/%'.
    #[arg(long = "where", value_name = "PATTERN")]
    pub where_: Option<String>,

    /// Prompt template, `{}` standing for the text; repeatable. Default: none, the text is
    /// encoded as typed (`-t "a photo of a {}."` gives a bare noun the model's label template).
    #[arg(short, long, value_name = "TEMPLATE")]
    pub template: Vec<String>,

    /// A built-in template set (`imagenet`) or a file of templates; several are ensembled.
    #[arg(long, value_name = "NAME|FILE")]
    pub templates: Option<String>,

    /// Output format. Default: from --output's extension, else table on a terminal and json
    /// otherwise.
    #[arg(short, long, value_enum)]
    pub format: Option<Format>,

    /// Write results to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Also draw the hits on one contact sheet (a PNG): best first, five to a row, each with its
    /// rank, file name and cosine.
    #[arg(long, value_name = "FILE.png")]
    pub montage: Option<PathBuf>,

    /// Overwrite an existing --output or --montage file (without it an existing file is
    /// refused).
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub index: IndexDbArgs,

    #[command(flatten)]
    pub encode: EncodeArgs,

    /// Do not read or write the caches (text embeddings, and the weights packed for int8/bf16).
    #[arg(long)]
    pub no_cache: bool,

    /// Report on stderr how the query was embedded and how long the search took.
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,

    /// No warnings on stderr (errors are still reported).
    #[arg(short, long)]
    pub quiet: bool,
}

impl From<SearchArgs> for SearchOptions {
    fn from(a: SearchArgs) -> Self {
        SearchOptions {
            text: a.query,
            image: a.image,
            templates: a.template,
            template_set: a.templates,
            top_k: a.top_k.map(|k| k as usize),
            threshold: a.threshold,
            where_: a.where_,
            montage: a.montage,
            force: a.force,
            index: a.index.into(),
            output: OutputOptions {
                format: a.format,
                output: a.output,
                resume: false,
                force: a.force,
            },
            batch: a.encode.into(),
            no_cache: a.no_cache,
            verbose: a.verbose,
            quiet: a.quiet,
        }
    }
}
