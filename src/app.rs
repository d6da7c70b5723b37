//! Runs a parsed command: resolves the model, encodes the text once, encodes images batch by batch and
//! hands every result to the output writer as soon as its batch is done.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use crate::classify::{self, LabelEmbeddings};
use crate::cli::{ClassifyArgs, Cli, Command, DTypeArg, Format, ModelArgs, RunArgs};
use crate::hub::{self, ModelFiles, ModelRequest};
use crate::model::{Clip, ClipConfig, LoadOptions, Towers};
use crate::output::{self, ImageResult, ModelInfo, ResultWriter, RunInfo};
use crate::preprocess::{self, DecodeLimits, PreprocessConfig};
use crate::text::{self, ClipTokenizer, LabelList, Template};
use crate::Error;

/// How a run ended when it did not fail as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every input was processed.
    Success,
    /// Some inputs failed; the others are in the output.
    SomeFailed,
}

pub fn run(cli: Cli) -> Result<Outcome> {
    match cli.command {
        Command::Classify(args) => classify(&args, &mut std::io::stdout().lock()),
    }
}

/// True when the error is stdout closing under us (`vlm … | head`): the user got what they wanted.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// An error as one line: anyhow's `a: b: c` chain, each part cut to its first line. Candle appends a
/// backtrace to its errors' text when `RUST_BACKTRACE` is set; users get the message, never the trace.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let first = text.lines().next().unwrap_or("").trim().to_string();
        // A wrapper error often repeats its source's text; print it once.
        if !first.is_empty() && !parts.last().is_some_and(|p| p.ends_with(&first)) {
            parts.push(first);
        }
    }
    parts.join(": ")
}

/// A model ready to score images: its files, configs, tokenizer and network.
pub struct LoadedModel {
    pub files: ModelFiles,
    pub preprocess: PreprocessConfig,
    pub tokenizer: ClipTokenizer,
    pub clip: Clip,
}

pub fn parse_device(spec: &str) -> Result<Device> {
    let cuda = |ordinal: usize| {
        Device::new_cuda(ordinal).map_err(|e| {
            if cfg!(feature = "cuda") {
                anyhow::anyhow!(Error::Usage(format!(
                    "--device {spec}: cannot open CUDA device {ordinal}: {e}"
                )))
            } else {
                anyhow::anyhow!(Error::Usage(format!(
                    "--device {spec}: this vlm was built without CUDA; rebuild with `cargo build --release --features cuda`"
                )))
            }
        })
    };
    match spec {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        // `cuda_is_available()` only says CUDA was compiled in, not that a device is present.
        "auto" if candle_core::utils::cuda_is_available() => {
            Ok(Device::new_cuda(0).unwrap_or(Device::Cpu))
        }
        "auto" => Ok(Device::Cpu),
        _ => match spec.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n),
            _ => Err(Error::Usage(format!(
                "--device {spec}: expected auto, cpu, cuda or cuda:N"
            ))
            .into()),
        },
    }
}

fn dtype(arg: DTypeArg) -> DType {
    match arg {
        DTypeArg::F32 => DType::F32,
        DTypeArg::F16 => DType::F16,
        DTypeArg::Bf16 => DType::BF16,
    }
}

pub fn load_model(args: &ModelArgs, towers: Towers, quiet: bool) -> Result<LoadedModel> {
    let device = parse_device(&args.device)?;
    let files = hub::resolve(&ModelRequest {
        model: args.model.clone(),
        revision: args.revision.clone(),
        progress: !quiet && std::io::stderr().is_terminal(),
    })?;
    let in_model = |e: anyhow::Error| {
        anyhow::anyhow!(Error::Model {
            model: files.id.clone(),
            reason: one_line(&e),
        })
    };
    let config = ClipConfig::from_file(&files.config).map_err(in_model)?;
    let preprocess = PreprocessConfig::from_file(&files.preprocessor).map_err(in_model)?;
    if let Some((w, h)) = preprocess.output_size() {
        let size = config.vision.image_size as u32;
        if (w, h) != (size, size) {
            return Err(in_model(anyhow::anyhow!(
                "{} crops images to {w}x{h} but the vision tower takes {size}x{size}",
                files.preprocessor.display()
            )));
        }
    } else {
        return Err(in_model(anyhow::anyhow!(
            "{} gives no fixed image size (no center crop and no exact resize)",
            files.preprocessor.display()
        )));
    }
    let tokenizer = ClipTokenizer::from_file(&files.tokenizer, config.text.max_position_embeddings)
        .map_err(in_model)?;
    let opts = LoadOptions {
        device,
        dtype: dtype(args.dtype),
        towers,
    };
    let clip = Clip::load(config, &files.weights, &opts).map_err(in_model)?;
    Ok(LoadedModel {
        files,
        preprocess,
        tokenizer,
        clip,
    })
}

/// Text embeddings are computed in chunks so that thousands of prompts do not become one huge batch.
const TEXT_CHUNK: usize = 256;

impl LoadedModel {
    /// One ensembled, normalised embedding per label, over all templates.
    pub fn label_embeddings(
        &self,
        labels: &[String],
        templates: &[Template],
        quiet: bool,
    ) -> Result<LabelEmbeddings> {
        let prompts: Vec<String> = labels
            .iter()
            .flat_map(|l| templates.iter().map(move |t| t.fill(l)))
            .collect();
        let tokens = self.tokenizer.encode(&prompts)?;
        if let (false, Some(&first)) = (quiet, tokens.truncated.first()) {
            output::warn(&format!(
                "{} prompt(s) longer than the model's {} tokens were cut, e.g. {:?}",
                tokens.truncated.len(),
                self.clip.config.text.max_position_embeddings,
                prompts[first]
            ));
        }
        let tower = self.clip.text()?;
        let mut embeds: Vec<Vec<f32>> = Vec::with_capacity(prompts.len());
        for chunk in tokens.ids.chunks(TEXT_CHUNK) {
            embeds.extend(tower.forward(chunk)?.to_vec2::<f32>()?);
        }
        let per_label = templates.len();
        let embeddings = embeds
            .chunks(per_label)
            .map(|c| classify::ensemble(c.iter().map(Vec::as_slice)))
            .collect();
        Ok(LabelEmbeddings {
            labels: labels.to_vec(),
            embeddings,
        })
    }

    /// Image embeddings of already preprocessed images.
    pub fn image_embeddings(&self, pixels: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        let device = self.clip.vision()?.device();
        let batch = preprocess::to_tensor(pixels, &self.preprocess, device)?;
        Ok(self.clip.vision()?.forward(&batch)?.to_vec2::<f32>()?)
    }

    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            id: self.files.id.clone(),
            revision: self.files.revision.clone(),
        }
    }
}

fn collect_labels(args: &ClassifyArgs) -> Result<Vec<String>> {
    let mut labels = LabelList::default();
    for value in &args.labels {
        labels.add_csv(value)?;
    }
    for file in &args.labels_file {
        labels.add_file(file)?;
    }
    Ok(labels.finish()?)
}

fn collect_templates(args: &ClassifyArgs) -> Result<Vec<Template>> {
    let mut templates = args
        .template
        .iter()
        .map(|t| Template::new(t).context("--template"))
        .collect::<Result<Vec<_>>>()?;
    if let Some(set) = &args.templates {
        for t in text::template_set(set)? {
            if !templates.contains(&t) {
                templates.push(t);
            }
        }
    }
    if templates.is_empty() {
        templates.push(Template::new(text::DEFAULT_TEMPLATE)?);
    }
    Ok(templates)
}

fn format_for(run: &RunArgs) -> Format {
    run.format.unwrap_or(if std::io::stdout().is_terminal() {
        Format::Table
    } else {
        Format::Json
    })
}

/// Loads and preprocesses one image; the error names the file.
fn prepare(path: &Path, limits: &DecodeLimits, cfg: &PreprocessConfig) -> Result<Vec<f32>, String> {
    let img = preprocess::load_image(path, limits).map_err(|e| e.to_string())?;
    preprocess::preprocess(&img, cfg).map_err(|e| format!("{}: {}", path.display(), one_line(&e)))
}

pub fn classify(args: &ClassifyArgs, out: &mut impl Write) -> Result<Outcome> {
    // Everything the user typed is checked before the model is touched.
    let labels = collect_labels(args)?;
    let templates = collect_templates(args)?;
    let quiet = args.run.quiet;
    let model = load_model(&args.model, Towers::BOTH, quiet)?;
    let label_embeds = model.label_embeddings(&labels, &templates, quiet)?;
    let run = RunInfo {
        model: model.info(),
        labels,
        templates: templates.iter().map(|t| t.as_str().to_string()).collect(),
    };
    let top_k = args.top_k.map(|k| k as usize);
    let limits = DecodeLimits {
        max_pixels: args.run.max_pixels,
    };
    let logit_scale = model.clip.logit_scale();
    let mut writer = ResultWriter::begin(out, format_for(&args.run), &run)?;
    let mut failed = 0usize;
    for chunk in args.images.chunks(args.run.batch_size as usize) {
        let mut pixels = Vec::with_capacity(chunk.len());
        let mut prepared: Vec<(&PathBuf, Option<String>)> = Vec::with_capacity(chunk.len());
        for path in chunk {
            match prepare(path, &limits, &model.preprocess) {
                Ok(px) => {
                    pixels.push(px);
                    prepared.push((path, None));
                }
                Err(message) => prepared.push((path, Some(message))),
            }
        }
        let mut embeds = if pixels.is_empty() {
            Vec::new()
        } else {
            model.image_embeddings(&pixels)?
        }
        .into_iter();
        for (path, prep) in prepared {
            let result = match prep {
                None => {
                    let embed = embeds.next().context("missing image embedding")?;
                    let preds = classify::scores(&embed, &label_embeds, logit_scale);
                    ImageResult {
                        path: path.to_string_lossy().into_owned(),
                        predictions: classify::rank(preds, top_k),
                        error: None,
                    }
                }
                Some(message) => {
                    failed += 1;
                    output::report_error(&message);
                    ImageResult {
                        path: path.to_string_lossy().into_owned(),
                        predictions: Vec::new(),
                        error: Some(message),
                    }
                }
            };
            writer.record(&result)?;
        }
    }
    writer.finish()?;
    Ok(if failed == 0 {
        Outcome::Success
    } else {
        Outcome::SomeFailed
    })
}
