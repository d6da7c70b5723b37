//! `vlm calibrate`'s arguments and the options they become.

use std::path::PathBuf;

use clap::Args;

use super::shared::{EncodeArgs, ModelArgs};
use crate::commands::calibrate::CalibrateOptions;
use crate::commands::{OutputOptions, RunOptions};
use crate::output::Format;

#[derive(Debug, Args)]
pub(crate) struct CalibrateArgs {
    /// The aspect to calibrate: a built-in name or an aspect file (TOML).
    #[arg(short, long, value_name = "NAME|FILE")]
    pub aspect: String,

    /// The ground truth: CSV with a `path,labels` header (labels separated by `;`) or JSONL of
    /// {"path": ..., "labels": [...]}; relative paths are relative to the file's folder.
    #[arg(long, value_name = "FILE")]
    pub truth: PathBuf,

    /// Write the aspect file again with the thresholds chosen, one per label. Never over the
    /// aspect file given, nor over an existing file without --force.
    #[arg(short, long, value_name = "FILE.toml")]
    pub output: Option<PathBuf>,

    /// Overwrite the --output file.
    #[arg(long)]
    pub force: bool,

    /// Choose the lowest threshold whose precision is at least P (0..1), instead of the highest
    /// F1.
    #[arg(long, value_name = "P")]
    pub precision: Option<f64>,

    /// Labels with fewer positives than this keep their threshold.
    #[arg(long, value_name = "N", default_value_t = crate::commands::calibrate::DEFAULT_MIN_POSITIVES as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub min_positives: u32,

    /// Format of the report (stdout). Default: table on a terminal, json otherwise. The table
    /// lists the calibrated labels first and leaves out those without an image in the truth
    /// (see --all); json, jsonl and csv always list every label, in the aspect's order.
    #[arg(short, long, value_enum)]
    pub format: Option<Format>,

    /// List every label of the aspect in the table, also those without an image in the truth.
    #[arg(long)]
    pub all: bool,

    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub encode: EncodeArgs,

    /// Do not read or write the caches (text embeddings, and the weights packed for int8/bf16).
    #[arg(long)]
    pub no_cache: bool,

    /// Report on stderr how long loading took and how many labels came from the text cache.
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,

    /// No warnings or progress on stderr (errors are still reported).
    #[arg(short, long)]
    pub quiet: bool,
}

impl From<CalibrateArgs> for CalibrateOptions {
    fn from(a: CalibrateArgs) -> Self {
        CalibrateOptions {
            aspect: a.aspect,
            truth: a.truth,
            output: a.output,
            force: a.force,
            precision: a.precision,
            min_positives: a.min_positives as usize,
            all: a.all,
            model: a.model.into(),
            run: RunOptions {
                output: OutputOptions {
                    format: a.format,
                    output: None,
                    resume: false,
                    force: false,
                },
                batch: a.encode.into(),
                no_cache: a.no_cache,
                verbose: a.verbose,
                quiet: a.quiet,
            },
        }
    }
}
