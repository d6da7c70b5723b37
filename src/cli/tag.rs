//! `vlm tag`'s arguments and the options they become.

use clap::Args;

use super::shared::{InputArgs, ModelArgs, RunArgs};
use crate::commands::tag::TagOptions;
use crate::tagging::rules::PerAspect;

#[derive(Debug, Args)]
pub(crate) struct TagArgs {
    /// Aspects: built-in names (see `vlm aspects`), `all`, or paths to aspect files (TOML);
    /// comma-separated, repeatable.
    #[arg(short, long, value_name = "NAMES|FILES", required = true)]
    pub aspects: Vec<String>,

    /// A score (0..1, the tags' `score`; not a cosine): report tags scoring at least this. `0.3`
    /// for every aspect, or `object=0.3` for one; repeatable. Overrides the aspect file's
    /// threshold (multi aspects default to 0.5: the label beats the aspect's neutral prompt;
    /// single aspects to 0).
    #[arg(long, value_name = "[ASPECT=]SCORE", value_parser = parse_threshold)]
    pub threshold: Vec<PerAspect<f32>>,

    /// Tags per aspect: report at most K for each aspect of each image. `3`, or `scene=1` for one
    /// aspect; repeatable. Overrides the aspect file's top_k (single aspects default to 3, multi
    /// aspects to no limit).
    #[arg(short = 'k', long, value_name = "[ASPECT=]K", value_parser = parse_top_k)]
    pub top_k: Vec<PerAspect<usize>>,

    #[command(flatten)]
    pub inputs: InputArgs,

    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub run: RunArgs,
}

fn split_per_aspect(s: &str) -> (Option<String>, &str) {
    match s.split_once('=') {
        Some((name, value)) => (Some(name.trim().to_string()), value.trim()),
        None => (None, s.trim()),
    }
}

fn parse_threshold(s: &str) -> Result<PerAspect<f32>, String> {
    let (aspect, value) = split_per_aspect(s);
    match value.parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(PerAspect { aspect, value: v }),
        _ => Err(format!(
            "{} is not a score between 0 and 1",
            crate::error::quote(value)
        )),
    }
}

fn parse_top_k(s: &str) -> Result<PerAspect<usize>, String> {
    let (aspect, value) = split_per_aspect(s);
    match value.parse::<usize>() {
        Ok(v) if v >= 1 => Ok(PerAspect { aspect, value: v }),
        _ => Err(format!(
            "{} is not a whole number of at least 1",
            crate::error::quote(value)
        )),
    }
}

impl From<TagArgs> for TagOptions {
    fn from(a: TagArgs) -> Self {
        TagOptions {
            aspects: a.aspects,
            threshold: a.threshold,
            top_k: a.top_k,
            inputs: a.inputs.into(),
            model: a.model.into(),
            run: a.run.into(),
        }
    }
}
