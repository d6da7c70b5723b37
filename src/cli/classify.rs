//! `vlm classify`'s arguments and the options they become.

use std::path::PathBuf;

use clap::Args;

use super::shared::{InputArgs, ModelArgs, RunArgs, TemplateArgs};
use crate::commands::classify::ClassifyOptions;

#[derive(Debug, Args)]
pub(crate) struct ClassifyArgs {
    /// Labels, comma-separated; repeatable.
    #[arg(short, long, value_name = "A,B,C")]
    pub labels: Vec<String>,

    /// File of labels, one per line (`#` comments and blank lines are skipped); repeatable.
    #[arg(long, value_name = "FILE")]
    pub labels_file: Vec<PathBuf>,

    #[command(flatten)]
    pub templates: TemplateArgs,

    /// Labels per image: report only the K most probable.
    #[arg(short = 'k', long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: Option<u32>,

    #[command(flatten)]
    pub inputs: InputArgs,

    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub run: RunArgs,
}

impl From<ClassifyArgs> for ClassifyOptions {
    fn from(a: ClassifyArgs) -> Self {
        ClassifyOptions {
            labels: a.labels,
            labels_files: a.labels_file,
            templates: a.templates.template,
            template_set: a.templates.templates,
            top_k: a.top_k.map(|k| k as usize),
            inputs: a.inputs.into(),
            model: a.model.into(),
            run: a.run.into(),
        }
    }
}
