//! `vlm eval`'s arguments and the options they become.

use std::path::PathBuf;

use clap::Args;

use super::shared::{EncodeArgs, ModelArgs, TemplateArgs};
use crate::commands::eval::EvalOptions;
use crate::commands::{OutputOptions, RunOptions};
use crate::output::Format;

#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    /// The dataset: a folder with one sub-folder per class (the ImageFolder layout). Images in a
    /// class folder's own sub-folders count for that class.
    #[arg(value_name = "FOLDER")]
    pub root: PathBuf,

    /// The class labels, one per line, in sorted folder order (as CLIP_benchmark's class-name
    /// files are). Default: the folder names.
    #[arg(long, value_name = "FILE", conflicts_with = "label_map")]
    pub labels_file: Option<PathBuf>,

    /// The class labels as `folder=label` lines, one for every class folder.
    #[arg(long, value_name = "FILE")]
    pub label_map: Option<PathBuf>,

    #[command(flatten)]
    pub templates: TemplateArgs,

    /// Also score each template on its own, and the ensemble of all: one `sweep` row each, best
    /// first. The text of every template is encoded once.
    #[arg(long)]
    pub sweep: bool,

    /// Include hidden class folders and files (names starting with `.`).
    #[arg(short = 'H', long)]
    pub hidden: bool,

    /// Output format: the summary and one row per class. Default: from --output's extension, else
    /// table on a terminal and json otherwise.
    #[arg(short, long, value_enum)]
    pub format: Option<Format>,

    /// Write the report to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Overwrite an existing --output file (without it an existing file is refused).
    #[arg(long, requires = "output")]
    pub force: bool,

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

impl From<EvalArgs> for EvalOptions {
    fn from(a: EvalArgs) -> Self {
        EvalOptions {
            root: a.root,
            labels_file: a.labels_file,
            label_map: a.label_map,
            templates: a.templates.template,
            template_set: a.templates.templates,
            sweep: a.sweep,
            hidden: a.hidden,
            model: a.model.into(),
            run: RunOptions {
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
            },
        }
    }
}
