//! `vlm embed`'s arguments and the options they become.

use std::path::PathBuf;

use clap::Args;

use super::shared::{EncodeArgs, InputArgs, ModelArgs};
use crate::commands::embed::{EmbedFormat, EmbedOptions};

#[derive(Debug, Args)]
#[command(mut_arg("paths", |a| a.required_unless_present_any(["files_from", "text"])))]
pub(crate) struct EmbedArgs {
    /// Embed this text instead of images, through the templates as classify embeds a label;
    /// repeatable.
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["paths", "files_from"])]
    pub text: Vec<String>,

    /// Prompt template for --text, `{}` standing for the text; repeatable. Default: the model's
    /// ("a photo of a {}." for CLIP); `--template '{}'` embeds the text as it is.
    #[arg(short, long, value_name = "TEMPLATE")]
    pub template: Vec<String>,

    /// A built-in template set (`imagenet`) or a file of templates, one per line; several
    /// templates are ensembled.
    #[arg(long, value_name = "NAME|FILE")]
    pub templates: Option<String>,

    /// Output format. Default: from --output's extension (.json, .jsonl, .npy), else json.
    #[arg(short, long, value_enum)]
    pub format: Option<EmbedFormat>,

    /// Write to FILE instead of stdout; with npy, the paths (or texts) go to FILE's name with
    /// .paths.txt (.texts.txt) beside it. Failed images are left out of the .npy.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Overwrite an existing --output file (without it an existing file is refused).
    #[arg(long, requires = "output")]
    pub force: bool,

    #[command(flatten)]
    pub inputs: InputArgs,

    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub encode: EncodeArgs,

    /// Do not read or write the caches (text embeddings, and the weights packed for int8/bf16).
    #[arg(long)]
    pub no_cache: bool,

    /// Report on stderr how long loading took and where text embeddings came from.
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,

    /// No warnings or progress on stderr (errors are still reported).
    #[arg(short, long)]
    pub quiet: bool,
}

impl From<EmbedArgs> for EmbedOptions {
    fn from(a: EmbedArgs) -> Self {
        EmbedOptions {
            texts: a.text,
            templates: a.template,
            template_set: a.templates,
            inputs: a.inputs.into(),
            model: a.model.into(),
            format: a.format,
            output: a.output,
            force: a.force,
            batch: a.encode.into(),
            no_cache: a.no_cache,
            verbose: a.verbose,
            quiet: a.quiet,
        }
    }
}
