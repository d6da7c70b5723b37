//! `vlm explain`'s arguments and the options they become.

use std::path::PathBuf;

use clap::Args;

use super::shared::{InputArgs, ModelArgs};
use crate::commands::explain::ExplainOptions;
use crate::commands::{OutputOptions, RunOptions};
use crate::engine::images::BatchOptions;
use crate::output::Format;

#[derive(Debug, Args)]
pub(crate) struct ExplainArgs {
    /// Labels, comma-separated; repeatable.
    #[arg(short, long, value_name = "A,B,C")]
    pub labels: Vec<String>,

    /// File of labels, one per line (`#` comments and blank lines are skipped); repeatable.
    #[arg(long, value_name = "FILE")]
    pub labels_file: Vec<PathBuf>,

    /// Prompt template, `{}` standing for the label; repeatable. Default: "a photo of a {}.".
    #[arg(short, long, value_name = "TEMPLATE")]
    pub template: Vec<String>,

    /// A built-in template set (`imagenet`) or a file of templates, one per line; ensembled as
    /// in classify.
    #[arg(long, value_name = "NAME|FILE")]
    pub templates: Option<String>,

    /// Write one picture per image and label into DIR (created if needed):
    /// DIR/<image name>.<label>.png, the original's size, the map drawn over the region the model
    /// saw, the rest dimmed. Existing files are never overwritten without --force.
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,

    /// Overwrite existing pictures (-o) and contact sheet (--montage).
    #[arg(long)]
    pub force: bool,

    /// Also put every image's pictures on one contact sheet (a PNG): a row per image, its photo
    /// then one tile per label.
    #[arg(long, value_name = "FILE.png")]
    pub montage: Option<PathBuf>,

    /// Which cosines are the two ends of the colour map (viridis) in the pictures: `map` (each
    /// map's own minimum and maximum), `image` (shared by an image's labels, so they compare), or
    /// a fixed cosine range `LOW:HIGH` (e.g. 0.1:0.3, comparable across images).
    #[arg(long, value_name = "map|image|LOW:HIGH", default_value = "map")]
    pub range: crate::output::overlay::MapRange,

    /// Output format of the numbers. Default: table on a terminal, json otherwise.
    #[arg(short, long, value_enum)]
    pub format: Option<Format>,

    #[command(flatten)]
    pub inputs: InputArgs,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Threads for decoding images and running the model. Default: all cores.
    #[arg(short = 'j', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024), help_heading = "Run")]
    pub threads: Option<u32>,

    /// Images per forward pass.
    #[arg(short, long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096), help_heading = "Run")]
    pub batch_size: u32,

    /// Refuse images with more pixels than this (decompression-bomb guard).
    #[arg(long, value_name = "N", default_value_t = crate::images::DEFAULT_MAX_PIXELS, help_heading = "Run")]
    pub max_pixels: u64,

    /// Do not read or write the caches (text embeddings, and the weights packed for int8/bf16).
    #[arg(long, help_heading = "Run")]
    pub no_cache: bool,

    /// Report on stderr how long loading took and how many labels came from the text cache.
    #[arg(short, long, conflicts_with = "quiet", help_heading = "Run")]
    pub verbose: bool,

    /// No warnings or progress on stderr (errors are still reported).
    #[arg(short, long, help_heading = "Run")]
    pub quiet: bool,
}

impl From<ExplainArgs> for ExplainOptions {
    fn from(a: ExplainArgs) -> Self {
        ExplainOptions {
            labels: a.labels,
            labels_files: a.labels_file,
            templates: a.template,
            template_set: a.templates,
            overlay_dir: a.output,
            force: a.force,
            montage: a.montage,
            range: a.range,
            inputs: a.inputs.into(),
            model: a.model.into(),
            run: RunOptions {
                output: OutputOptions {
                    format: a.format,
                    output: None,
                    resume: false,
                    force: false,
                },
                batch: BatchOptions {
                    threads: a.threads.map(|n| n as usize),
                    batch_size: a.batch_size as usize,
                    // explain always decodes every pixel (see engine::patches).
                    exact_decode: true,
                    max_pixels: a.max_pixels,
                },
                no_cache: a.no_cache,
                verbose: a.verbose,
                quiet: a.quiet,
            },
        }
    }
}
