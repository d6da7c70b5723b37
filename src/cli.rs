//! Command-line arguments (clap only; the `///` docs are the help text).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Zero-shot image classification with CLIP.
///
/// Exit codes: 0 every image was processed; 1 some images failed (the others are in the output);
/// 2 usage or model error, before any image was processed.
#[derive(Debug, Parser)]
#[command(name = "vlm", version, about, long_about = None, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Rank labels for each image by CLIP image-text similarity.
    Classify(ClassifyArgs),
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Image files to classify.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,

    /// Labels, comma-separated; repeatable.
    #[arg(short, long, value_name = "A,B,C")]
    pub labels: Vec<String>,

    /// File of labels, one per line (`#` comments and blank lines are skipped); repeatable.
    #[arg(long, value_name = "FILE")]
    pub labels_file: Vec<PathBuf>,

    /// Prompt template, `{}` standing for the label; repeatable. Default: "a photo of a {}.".
    #[arg(short, long, value_name = "TEMPLATE")]
    pub template: Vec<String>,

    /// A built-in template set (`imagenet`: the CLIP paper's 80) or a file of templates, one per
    /// line. Several templates are ensembled: their normalised embeddings are averaged per label.
    #[arg(long, value_name = "NAME|FILE")]
    pub templates: Option<String>,

    /// Report only the K most probable labels per image.
    #[arg(short = 'k', long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: Option<u32>,

    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Hugging Face Hub repo id, or a local folder with config.json, preprocessor_config.json,
    /// tokenizer.json and model.safetensors. Hub files are cached in the standard Hugging Face cache
    /// (HF_HOME, HF_HUB_CACHE, HF_TOKEN and HF_HUB_OFFLINE=1 are honoured).
    #[arg(
        short,
        long,
        value_name = "ID|DIR",
        env = "VLM_MODEL",
        default_value = "openai/clip-vit-base-patch32"
    )]
    pub model: String,

    /// Hub revision: branch, tag or commit.
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,

    /// Where to run the model: auto (CUDA if built in and present, else CPU), cpu, cuda, cuda:N.
    #[arg(long, value_name = "DEVICE", default_value = "auto")]
    pub device: String,

    /// Numeric type of the weights and activations.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Output format. Default: table on a terminal, json otherwise.
    #[arg(short, long, value_enum)]
    pub format: Option<Format>,

    /// Images encoded per forward pass.
    #[arg(short, long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch_size: u32,

    /// Refuse images with more pixels than this (decompression-bomb guard).
    #[arg(long, value_name = "N", default_value_t = crate::preprocess::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,

    /// No warnings or progress on stderr (errors are still reported).
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned, human-readable text.
    Table,
    /// One JSON document.
    Json,
    /// One JSON object per image per line, flushed as each image is done.
    Jsonl,
    /// Comma-separated values with a header row: one row per image and label.
    Csv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    F32,
    F16,
    Bf16,
}
