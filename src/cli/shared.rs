//! Arguments more than one command takes, flattened into each (`#[command(flatten)]`), and their
//! conversions into the library's options.

use std::path::PathBuf;

use clap::Args;

use crate::commands::{InputSpec, OutputOptions, RunOptions};
use crate::engine::images::BatchOptions;
use crate::engine::{ModelOptions, Precision};
use crate::index::choose::{IndexSpec, ModelWanted};
use crate::inputs::InputOptions;
use crate::output::Format;

/// Which images a run processes.
#[derive(Debug, Args)]
#[command(next_help_heading = "Inputs")]
pub(crate) struct InputArgs {
    /// Image files, folders (their images, sorted by name) or glob patterns (for shells that do not
    /// expand them). Inputs are deduplicated; results follow the order of the inputs.
    #[arg(value_name = "PATH", required_unless_present = "files_from")]
    pub paths: Vec<PathBuf>,

    /// Read more inputs from FILE, one per line; `-` reads stdin. Repeatable.
    #[arg(short = 'T', long, value_name = "FILE")]
    pub files_from: Vec<PathBuf>,

    /// --files-from lists are NUL-separated, as `find -print0` writes them.
    #[arg(short = '0', long = "null")]
    pub null: bool,

    /// Walk folders recursively, following symbolic links (loops are skipped).
    #[arg(short, long)]
    pub recursive: bool,

    /// Include hidden files and folders (names starting with `.`) from folders and globs.
    #[arg(short = 'H', long)]
    pub hidden: bool,

    /// Take every file from folders and globs, not only image extensions (jpg, png, webp, ...).
    /// Files named on the command line or in a list are always taken.
    #[arg(long)]
    pub all_files: bool,

    /// Process only part K of N (1 <= K <= N): a file's part is a hash of its path as given, so N
    /// jobs given the same inputs split them with no overlap and no gap.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<crate::inputs::Shard>,
}

impl From<InputArgs> for InputSpec {
    fn from(a: InputArgs) -> Self {
        InputSpec {
            paths: a.paths,
            options: InputOptions {
                recursive: a.recursive,
                hidden: a.hidden,
                all_files: a.all_files,
                files_from: a.files_from,
                null_separated: a.null,
                shard: a.shard,
            },
        }
    }
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Model")]
pub(crate) struct ModelArgs {
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

    /// Numeric type of the weights and activations. On the CPU, bf16 and int8 apply to the
    /// image tower's linear layers (int8: weights quantized at load, activations per row);
    /// see the README's Precision section.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
}

impl From<ModelArgs> for ModelOptions {
    fn from(a: ModelArgs) -> Self {
        ModelOptions {
            model: a.model,
            revision: a.revision,
            device: a.device,
            precision: a.dtype,
        }
    }
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Run")]
pub(crate) struct RunArgs {
    /// Output format. Default: from --output's extension (.json, .jsonl, .csv, .txt), jsonl with
    /// --resume, else table on a terminal and json otherwise.
    #[arg(short, long, value_enum)]
    pub format: Option<Format>,

    /// Write results to FILE instead of stdout. json and table files are written to a temporary
    /// file and renamed into place at the end; jsonl and csv stream into FILE, which is created (or
    /// truncated) only when the first result is ready.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Skip images that already have a result in the --output JSONL file, and append the rest.
    /// Records of images that failed are dropped from the file and those images are tried again.
    /// Refused when the file's records are from another command, model, labels or templates.
    #[arg(long, requires = "output")]
    pub resume: bool,

    /// Overwrite an existing --output file (without it, or --resume, an existing file is refused).
    #[arg(long, requires = "output", conflicts_with = "resume")]
    pub force: bool,

    #[command(flatten)]
    pub encode: EncodeArgs,

    /// Do not read or write the caches (in $VLM_CACHE_DIR, else $XDG_CACHE_HOME/vlm, else
    /// ~/.cache/vlm): text embeddings, which spare later runs encoding the same labels again, and
    /// the weights packed for --dtype int8/bf16, which spare them packing the model again.
    #[arg(long)]
    pub no_cache: bool,

    /// Report on stderr what the run did besides images: how many prompts came from the text cache
    /// and how many were encoded, and how long loading took.
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,

    /// No warnings or progress on stderr (errors are still reported).
    #[arg(short, long)]
    pub quiet: bool,
}

impl From<RunArgs> for RunOptions {
    fn from(a: RunArgs) -> Self {
        RunOptions {
            output: OutputOptions {
                format: a.format,
                output: a.output,
                resume: a.resume,
                force: a.force,
            },
            batch: a.encode.into(),
            no_cache: a.no_cache,
            verbose: a.verbose,
            quiet: a.quiet,
        }
    }
}

/// How images are decoded and batched (every command that encodes images; `RunArgs` holds it).
#[derive(Debug, Args)]
#[command(next_help_heading = "Run")]
pub(crate) struct EncodeArgs {
    /// Threads for decoding images and running the model. Default: all cores.
    #[arg(short = 'j', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// Images encoded per forward pass (`vlm index` also commits each batch to the index).
    #[arg(short, long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch_size: u32,

    /// Decode every pixel of large JPEGs, as transformers does. By default a JPEG more than 8
    /// times the model's input size is decoded at 1/2, 1/4 or 1/8 scale (DCT scaling), still 4
    /// times the input: much faster on camera photos, within a few grey levels of the exact pixels.
    #[arg(long)]
    pub exact_decode: bool,

    /// Refuse images with more pixels than this (decompression-bomb guard).
    #[arg(long, value_name = "N", default_value_t = crate::images::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

impl From<EncodeArgs> for BatchOptions {
    fn from(a: EncodeArgs) -> Self {
        BatchOptions {
            threads: a.threads.map(|n| n as usize),
            batch_size: a.batch_size as usize,
            exact_decode: a.exact_decode,
            max_pixels: a.max_pixels,
        }
    }
}

/// The prompt templates of `classify` and `eval`.
#[derive(Debug, Args)]
pub(crate) struct TemplateArgs {
    /// Prompt template, `{}` standing for the label; repeatable. Default: the model's ("a photo of
    /// a {}." for CLIP, "This is a photo of {}." for SigLIP).
    #[arg(short, long, value_name = "TEMPLATE")]
    pub template: Vec<String>,

    /// A built-in template set (`imagenet`: the CLIP paper's 80) or a file of templates, one per
    /// line. Several templates are ensembled: their normalised embeddings are averaged per label.
    #[arg(long, value_name = "NAME|FILE")]
    pub templates: Option<String>,
}

/// Which index file, and which model's index in it (`index`, `search`, `dupes`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Index")]
pub(crate) struct IndexDbArgs {
    /// The index file. Default: index.sqlite in $VLM_DATA_DIR, else $XDG_DATA_HOME/vlm, else
    /// ~/.local/share/vlm.
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,

    /// The model whose index to use: Hub repo id or local folder. Default: the only model in the
    /// index (`vlm index` on a new index: openai/clip-vit-base-patch32).
    #[arg(short, long, value_name = "ID|DIR", env = "VLM_MODEL")]
    pub model: Option<String>,

    /// Hub revision of the model (an index records the commit it was made with).
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,

    /// Numeric type of the model (part of what identifies an index). Default: the index's; f32
    /// for a new one.
    #[arg(long, value_enum)]
    pub dtype: Option<Precision>,

    /// Where to run the model when one is needed: auto, cpu, cuda, cuda:N.
    #[arg(long, value_name = "DEVICE", default_value = "auto")]
    pub device: String,
}

impl From<IndexDbArgs> for IndexSpec {
    fn from(a: IndexDbArgs) -> Self {
        IndexSpec {
            db: a.db,
            model: ModelWanted {
                model: a.model,
                revision: a.revision,
                dtype: a.dtype,
            },
            device: a.device,
        }
    }
}

/// A cosine for `search`/`dupes --threshold`: finite and in [-1, 1] (issue 20.7; NaN, inf or 2
/// would match nothing without a word).
pub(super) fn parse_cosine(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (-1.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a cosine between -1 and 1")),
    }
}
