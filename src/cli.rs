//! Command-line arguments (clap only; the `///` docs are the help text).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::commands::aspects::AspectsOptions;
use crate::commands::calibrate::CalibrateOptions;
use crate::commands::classify::ClassifyOptions;
use crate::commands::dupes::{DupesOptions, DEFAULT_THRESHOLD};
use crate::commands::embed::{EmbedFormat, EmbedOptions};
use crate::commands::eval::EvalOptions;
use crate::commands::explain::ExplainOptions;
use crate::commands::index::IndexOptions;
use crate::commands::search::SearchOptions;
use crate::commands::tag::TagOptions;
use crate::commands::{InputSpec, OutputOptions, Request, RunOptions};
use crate::engine::images::BatchOptions;
use crate::engine::{ModelOptions, Precision};
use crate::index::choose::IndexSpec;
use crate::index::choose::ModelWanted;
use crate::inputs::InputOptions;
use crate::output::{Format, ListFormat};
use crate::tagging::rules::PerAspect;

/// Zero-shot image classification with CLIP, SigLIP and OpenCLIP models.
///
/// Exit codes: 0 every image was processed; 1 some images failed (the others are in the output);
/// 2 usage or model error, before any image was processed.
#[derive(Debug, Parser)]
#[command(
    name = "vlm",
    version,
    about,
    long_about = None,
    max_term_width = 100,
    after_help = EXIT_CODES,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

const EXIT_CODES: &str =
    "Exit codes: 0 every image was processed; 1 some images failed (the others \
are in the output); 2 usage or model error, or no input is an image, before any image was processed.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Rank labels for each image by image-text similarity (CLIP, SigLIP).
    #[command(after_help = EXIT_CODES)]
    Classify(ClassifyArgs),
    /// Tag each image along several aspects at once (color, scene, object, ...).
    #[command(after_help = EXIT_CODES)]
    Tag(TagArgs),
    /// List the built-in aspects, or show the labels of some.
    Aspects(AspectsArgs),
    /// Write each image's embedding (L2-normalised), or each --text's, as JSON, JSONL or .npy.
    #[command(after_help = EXIT_CODES)]
    Embed(EmbedArgs),
    /// Add images to the search index (only new and changed files are embedded); without paths,
    /// show what it holds.
    #[command(after_help = INDEX_HELP)]
    Index(IndexArgs),
    /// Find indexed images by a text or an image, best first.
    #[command(after_help = INDEX_FILE_HELP)]
    Search(SearchArgs),
    /// Find groups of copies in the index: byte copies, re-encoded and resized images.
    #[command(after_help = INDEX_FILE_HELP)]
    Dupes(DupesArgs),
    /// Show where in each image each label is seen: patch heat maps as numbers or pictures.
    #[command(after_help = EXIT_CODES)]
    Explain(ExplainArgs),
    /// Measure zero-shot accuracy on a folder with one sub-folder per class.
    #[command(after_help = EXIT_CODES)]
    Eval(EvalArgs),
    /// Choose per-label thresholds of an aspect from a ground truth, for `vlm tag`.
    #[command(after_help = EXIT_CODES)]
    Calibrate(CalibrateArgs),
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
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

    /// Do not read or write the text-embedding cache.
    #[arg(long, help_heading = "Run")]
    pub no_cache: bool,

    /// Report on stderr how long loading took and how many labels came from the text cache.
    #[arg(short, long, conflicts_with = "quiet", help_heading = "Run")]
    pub verbose: bool,

    /// No warnings or progress on stderr (errors are still reported).
    #[arg(short, long, help_heading = "Run")]
    pub quiet: bool,
}

const INDEX_FILE_HELP: &str =
    "The index is index.sqlite in $VLM_DATA_DIR, else $XDG_DATA_HOME/vlm, \
else ~/.local/share/vlm (or --db FILE). Exit codes: 0 success; 2 usage, model or index error.";

const INDEX_HELP: &str = "The index is index.sqlite in $VLM_DATA_DIR, else $XDG_DATA_HOME/vlm, \
else ~/.local/share/vlm (or --db FILE); it holds one index per model (id, revision, dtype). \
Without paths, `vlm index` shows where the index is, its size, and each model's images and \
failures (a table on a terminal, JSON otherwise). When a local model's files change (new weights \
at the same path), its old embeddings are dropped and the files embedded again. \
Exit codes: 0 every image was processed; 1 some images failed (the others are indexed); 2 usage, \
model or index error.";

#[derive(Debug, Args)]
pub struct TagArgs {
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

/// A cosine for `search`/`dupes --threshold`: finite and in [-1, 1] (issue 20.7; NaN, inf or 2
/// would match nothing without a word).
fn parse_cosine(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (-1.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a cosine between -1 and 1")),
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

/// Which index file, and which model's index in it (`index`, `search`, `dupes`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Index")]
pub struct IndexDbArgs {
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

/// How images are decoded and batched (`embed`, `index`, `search --image`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Run")]
pub struct EncodeArgs {
    /// Threads for decoding images and running the model. Default: all cores.
    #[arg(short = 'j', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// Images encoded per forward pass (`vlm index` also commits to the index per batch).
    #[arg(short, long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch_size: u32,

    /// Decode every pixel of large JPEGs, as transformers does (default: DCT-scaled decoding of
    /// JPEGs more than 8 times the model's input size).
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

#[derive(Debug, Args)]
#[command(mut_arg("paths", |a| a.required_unless_present_any(["files_from", "text"])))]
pub struct EmbedArgs {
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

    /// Do not read or write the text-embedding cache.
    #[arg(long)]
    pub no_cache: bool,

    /// Report on stderr how long loading took and where text embeddings came from.
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,

    /// No warnings or progress on stderr (errors are still reported).
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
// Paths are optional: without any (and without --merge, --prune or --export) `vlm index` shows
// the index (issue 23.10).
#[command(mut_arg("paths", |a| a.required_unless_present(clap::builder::Resettable::<clap::Id>::Reset)))]
pub struct IndexArgs {
    #[command(flatten)]
    pub inputs: InputArgs,

    /// Copy these index files into this one first (e.g. ones made on several machines with
    /// --shard K/N); a file in both keeps the copy indexed last. Put paths to index before it.
    #[arg(long, value_name = "DB", num_args = 1..)]
    pub merge: Vec<PathBuf>,

    /// Write the model's embeddings, as stored, to FILE.npy (float32 N x D) and the paths to
    /// FILE.paths.txt, as `vlm embed -f npy` does: a library indexed once need not be embedded
    /// again. After indexing the paths given, if any.
    #[arg(long, value_name = "FILE.npy")]
    pub export: Option<PathBuf>,

    /// Overwrite an existing --export file (without it an existing file is refused).
    #[arg(long, requires = "export")]
    pub force: bool,

    /// Also remove every file of this model's index that no longer exists, wherever it was indexed
    /// from. (Files gone from under the folders given are always removed.)
    #[arg(long)]
    pub prune: bool,

    #[command(flatten)]
    pub index: IndexDbArgs,

    #[command(flatten)]
    pub encode: EncodeArgs,

    /// Report on stderr whether the model was loaded and how long it took.
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,

    /// No summary, warnings or progress on stderr (errors are still reported).
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
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

    /// Do not read or write the text-embedding cache.
    #[arg(long)]
    pub no_cache: bool,

    /// Report on stderr how the query was embedded and how long the search took.
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,

    /// No warnings on stderr (errors are still reported).
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct DupesArgs {
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

#[derive(Debug, Args)]
pub struct AspectsArgs {
    /// Aspects to show in full, with their labels: built-in names, `all`, or aspect files. Without
    /// any, a summary of the built-in aspects.
    #[arg(value_name = "NAME|FILE")]
    pub aspects: Vec<String>,

    /// Output format. Default: table on a terminal, json otherwise; `labels` prints the named
    /// aspects' labels one per line.
    #[arg(short, long, value_enum)]
    pub format: Option<ListFormat>,
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
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

/// The prompt templates of `classify` and `eval`.
#[derive(Debug, Args)]
pub struct TemplateArgs {
    /// Prompt template, `{}` standing for the label; repeatable. Default: the model's ("a photo of
    /// a {}." for CLIP, "This is a photo of {}." for SigLIP).
    #[arg(short, long, value_name = "TEMPLATE")]
    pub template: Vec<String>,

    /// A built-in template set (`imagenet`: the CLIP paper's 80) or a file of templates, one per
    /// line. Several templates are ensembled: their normalised embeddings are averaged per label.
    #[arg(long, value_name = "NAME|FILE")]
    pub templates: Option<String>,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
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

    /// Do not read or write the text-embedding cache.
    #[arg(long)]
    pub no_cache: bool,

    /// Report on stderr how long loading took and how many labels came from the text cache.
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,

    /// No warnings or progress on stderr (errors are still reported).
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct CalibrateArgs {
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

    /// Do not read or write the text-embedding cache.
    #[arg(long)]
    pub no_cache: bool,

    /// Report on stderr how long loading took and how many labels came from the text cache.
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,

    /// No warnings or progress on stderr (errors are still reported).
    #[arg(short, long)]
    pub quiet: bool,
}

/// Which images a run processes.
#[derive(Debug, Args)]
#[command(next_help_heading = "Inputs")]
pub struct InputArgs {
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

#[derive(Debug, Args)]
#[command(next_help_heading = "Model")]
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

    /// Numeric type of the weights and activations. On the CPU, bf16 and int8 apply to the
    /// image tower's linear layers (int8: weights quantized at load, activations per row);
    /// see the README's Precision section.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Run")]
pub struct RunArgs {
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

    /// Threads for decoding images and running the model. Default: all cores.
    #[arg(short = 'j', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// Images encoded per forward pass.
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

    /// Do not read or write the text-embedding cache (in $VLM_CACHE_DIR, else $XDG_CACHE_HOME/vlm,
    /// else ~/.cache/vlm), which spares later runs encoding the same labels again.
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

impl Cli {
    /// The command as the library runs it: typed options, no clap types.
    pub fn into_request(self) -> Request {
        match self.command {
            Command::Classify(a) => Request::Classify(ClassifyOptions {
                labels: a.labels,
                labels_files: a.labels_file,
                templates: a.templates.template,
                template_set: a.templates.templates,
                top_k: a.top_k.map(|k| k as usize),
                inputs: a.inputs.into(),
                model: a.model.into(),
                run: a.run.into(),
            }),
            Command::Tag(a) => Request::Tag(TagOptions {
                aspects: a.aspects,
                threshold: a.threshold,
                top_k: a.top_k,
                inputs: a.inputs.into(),
                model: a.model.into(),
                run: a.run.into(),
            }),
            Command::Aspects(a) => Request::Aspects(AspectsOptions {
                aspects: a.aspects,
                format: a.format,
            }),
            Command::Embed(a) => Request::Embed(EmbedOptions {
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
            }),
            Command::Index(a) => Request::Index(IndexOptions {
                inputs: a.inputs.into(),
                index: a.index.into(),
                batch: a.encode.into(),
                prune: a.prune,
                merge: a.merge,
                export: a.export,
                force: a.force,
                verbose: a.verbose,
                quiet: a.quiet,
            }),
            Command::Search(a) => Request::Search(SearchOptions {
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
            }),
            Command::Dupes(a) => Request::Dupes(DupesOptions {
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
            }),
            Command::Eval(a) => Request::Eval(EvalOptions {
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
            }),
            Command::Calibrate(a) => Request::Calibrate(CalibrateOptions {
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
            }),
            Command::Explain(a) => Request::Explain(ExplainOptions {
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
            }),
        }
    }
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

impl From<RunArgs> for RunOptions {
    fn from(a: RunArgs) -> Self {
        RunOptions {
            output: OutputOptions {
                format: a.format,
                output: a.output,
                resume: a.resume,
                force: a.force,
            },
            batch: BatchOptions {
                threads: a.threads.map(|n| n as usize),
                batch_size: a.batch_size as usize,
                exact_decode: a.exact_decode,
                max_pixels: a.max_pixels,
            },
            no_cache: a.no_cache,
            verbose: a.verbose,
            quiet: a.quiet,
        }
    }
}

/// A command-line error from clap as one line: its message without the "error: " prefix and the
/// usage block, clap's suggestion kept (`did you mean '--labels'?`), plus where to read more.
pub fn clap_one_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    // The message is the first paragraph (a list of missing arguments continues on indented lines).
    let message: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let mut message = message.join(" ");
    // clap quotes the value it refused whole: a 300-digit number or a pasted page would bury the
    // message, so it is cut to an excerpt (issue 20).
    if let Some(clap::error::ContextValue::String(value)) =
        err.get(clap::error::ContextKind::InvalidValue)
    {
        if value.chars().count() > crate::error::EXCERPT_CHARS {
            message = message.replacen(value.as_str(), &crate::error::excerpt(value), 1);
        }
    }
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    // clap's tips ("a similar argument exists: '--labels'", "a similar subcommand exists:
    // 'classify'") name the likely fix.
    let suggestion = text.lines().find_map(|l| {
        let tip = l.trim().strip_prefix("tip: ")?;
        let (_, name) = tip.split_once("exists: ")?;
        Some(format!("; did you mean {name}?"))
    });
    let suggestion = suggestion.unwrap_or_default();
    if message.is_empty() {
        "invalid arguments (see --help)".into()
    } else {
        format!("{message}{suggestion} (see --help)")
    }
}
