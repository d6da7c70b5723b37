//! Runs a parsed command: resolves the model, encodes the text once, encodes images batch by batch and
//! hands every result to the output writer as soon as its batch is done.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use crate::aspects::{self, Aspect};
use crate::cache::TextCache;
use crate::classify::{self, LabelEmbeddings};
use crate::cli::{
    AspectsArgs, ClassifyArgs, Cli, Command, DTypeArg, Format, InputArgs, ListFormat, ModelArgs,
    PerAspect, RunArgs, TagArgs,
};
use crate::hub::{self, ModelFiles, ModelRequest};
use crate::images::{self as preprocess, DecodeLimits, PreprocessConfig};
use crate::inputs::{self, Input, InputOptions};
use crate::model::{Clip, ClipConfig, LoadOptions, Towers};
use crate::output::{
    self, AspectInfo, AspectTags, ImageResult, ModelInfo, Progress, Record, ResultWriter, RunInfo,
    Sink, TagResult, TagRunInfo,
};
use crate::pipeline::{self, Panicked, PoolOptions};
use crate::tag::{self, AspectEmbeddings, Rule};
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
        Command::Classify(args) => {
            limit_threads(&args.run);
            classify(&args)
        }
        Command::Tag(args) => {
            limit_threads(&args.run);
            tag(&args)
        }
        Command::Aspects(args) => list_aspects(&args, &mut std::io::stdout().lock()),
    }
}

/// `--threads` bounds the model's thread pool too (Candle's CPU kernels read `RAYON_NUM_THREADS`).
/// Called before any thread is started; an explicit `RAYON_NUM_THREADS` wins.
fn limit_threads(run: &RunArgs) {
    if let Some(n) = run.threads {
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
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

/// A command-line error from clap as one line: its message without the "error: " prefix, the
/// usage block and the tips, plus where to read more.
pub fn clap_one_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    // The message is the first paragraph (a list of missing arguments continues on indented lines).
    let message: Vec<&str> = text
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    if message.is_empty() {
        "invalid arguments (see --help)".into()
    } else {
        format!("{message} (see --help)")
    }
}

/// A model ready to score images: its files, configs, tokenizer and network.
pub struct LoadedModel {
    pub files: ModelFiles,
    pub preprocess: PreprocessConfig,
    /// Loaded with the text tower only.
    pub tokenizer: Option<ClipTokenizer>,
    pub clip: Clip,
}

/// A resolved model whose configs are read and checked, before any weights are loaded: enough to
/// know the text cache's key and whether the text tower is needed at all.
pub struct ModelPlan {
    pub files: ModelFiles,
    pub config: ClipConfig,
    pub preprocess: PreprocessConfig,
    pub device: Device,
    pub dtype: DTypeArg,
}

fn model_error(model: &str, e: anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!(Error::Model {
        model: model.to_string(),
        reason: one_line(&e),
    })
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

/// Resolves `--model` (local folder or Hub) and reads its configs; no weights yet.
pub fn plan_model(args: &ModelArgs, quiet: bool) -> Result<ModelPlan> {
    let device = parse_device(&args.device)?;
    let files = hub::resolve(&ModelRequest {
        model: args.model.clone(),
        revision: args.revision.clone(),
        progress: !quiet && std::io::stderr().is_terminal(),
    })?;
    let in_model = |e: anyhow::Error| model_error(&files.id, e);
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
    Ok(ModelPlan {
        files,
        config,
        preprocess,
        device,
        dtype: args.dtype,
    })
}

impl ModelPlan {
    /// Loads the towers asked for (and the tokenizer with the text tower).
    pub fn load(self, towers: Towers) -> Result<LoadedModel> {
        let in_model = |e: anyhow::Error| model_error(&self.files.id, e);
        let tokenizer = if towers.text {
            Some(
                ClipTokenizer::from_file(
                    &self.files.tokenizer,
                    self.config.text.max_position_embeddings,
                )
                .map_err(in_model)?,
            )
        } else {
            None
        };
        let opts = LoadOptions {
            device: self.device,
            dtype: dtype(self.dtype),
            towers,
        };
        let clip = Clip::load(self.config, &self.files.weights, &opts).map_err(in_model)?;
        Ok(LoadedModel {
            files: self.files,
            preprocess: self.preprocess,
            tokenizer,
            clip,
        })
    }

    /// What the text cache's entries for this model are keyed by: the Hub commit, or for a local
    /// folder the files' identity (path, size, modification time), plus the numeric type.
    pub fn cache_key(&self) -> String {
        let dtype = format!("{:?}", self.dtype).to_lowercase();
        if let Some(rev) = &self.files.revision {
            return format!("hub:{}@{rev}|{dtype}", self.files.id);
        }
        let mut key = format!("local|{dtype}");
        let files = [&self.files.config, &self.files.tokenizer]
            .into_iter()
            .chain(&self.files.weights);
        for path in files {
            let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            let (len, mtime) = std::fs::metadata(&path)
                .map(|m| {
                    let mtime = m
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos());
                    (m.len(), mtime)
                })
                .unwrap_or((0, 0));
            key.push_str(&format!("|{}:{len}:{mtime}", path.display()));
        }
        key
    }
}

pub fn load_model(args: &ModelArgs, towers: Towers, quiet: bool) -> Result<LoadedModel> {
    plan_model(args, quiet)?.load(towers)
}

/// The text cache of a run, unless `--no-cache` or no cache folder can be found.
fn text_cache(no_cache: bool) -> Option<TextCache> {
    if no_cache {
        return None;
    }
    TextCache::default_dir().map(TextCache::new)
}

/// Loads the model for a run whose text side is `units` (each the prompts of one label, whose
/// normalised embeddings are averaged). Units found in the cache are not encoded again, and when all
/// are there the text tower and tokenizer are not even loaded. Returns the model and one ensembled,
/// normalised embedding per unit.
fn load_with_text(
    plan: ModelPlan,
    units: &[Vec<String>],
    cache: Option<&TextCache>,
    run: &RunArgs,
) -> Result<(LoadedModel, Vec<Vec<f32>>)> {
    let quiet = run.quiet;
    let started = std::time::Instant::now();
    let key = plan.cache_key();
    let mut embeds: Vec<Option<Vec<f32>>> = units
        .iter()
        .map(|u| cache.and_then(|c| c.get(&key, u)))
        .collect();
    let missing: Vec<usize> = (0..units.len()).filter(|&i| embeds[i].is_none()).collect();
    let towers = Towers {
        vision: true,
        text: !missing.is_empty(),
    };
    let model = plan.load(towers)?;
    if run.verbose {
        output::info(&format!(
            "model loaded in {:.2} s ({})",
            started.elapsed().as_secs_f64(),
            if towers.text {
                "vision and text towers"
            } else {
                "vision tower only: every label was in the text cache"
            }
        ));
    }
    let started = std::time::Instant::now();
    if !missing.is_empty() {
        let prompts: Vec<String> = missing.iter().flat_map(|&i| units[i].clone()).collect();
        let raw = model.encode_prompts(&prompts, quiet)?;
        let mut raw = raw.iter();
        let mut cache_failed = false;
        for &i in &missing {
            let parts: Vec<&[f32]> = raw
                .by_ref()
                .take(units[i].len())
                .map(Vec::as_slice)
                .collect();
            let e = classify::ensemble(parts);
            if let Some(c) = cache {
                if let Err(err) = c.put(&key, &units[i], &e) {
                    if !cache_failed && !quiet {
                        output::warn(&format!(
                            "text cache not written ({}); use --no-cache to skip it",
                            one_line(&err)
                        ));
                    }
                    cache_failed = true;
                }
            }
            embeds[i] = Some(e);
        }
    }
    if run.verbose {
        output::info(&format!(
            "text: {} entries (labels and neutral prompts), {} from the cache, {} encoded ({} prompts) in {:.2} s{}",
            units.len(),
            units.len() - missing.len(),
            missing.len(),
            missing.iter().map(|&i| units[i].len()).sum::<usize>(),
            started.elapsed().as_secs_f64(),
            match cache {
                Some(c) => format!("; cache: {}", c.dir().display()),
                None => "; no cache".into(),
            }
        ));
    }
    let embeds = embeds
        .into_iter()
        .map(|e| e.context("a text embedding is missing"))
        .collect::<Result<Vec<_>>>()?;
    Ok((model, embeds))
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
        let embeds = self.encode_prompts(&prompts, quiet)?;
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

    /// Text embeddings (projected, not normalised) of prompts, in order. Prompts are encoded in
    /// chunks of similar token length, so that short prompts are not padded to long ones.
    pub fn encode_prompts(&self, prompts: &[String], quiet: bool) -> Result<Vec<Vec<f32>>> {
        let tokenizer = self
            .tokenizer
            .as_ref()
            .context("the tokenizer was not loaded")?;
        let tokens = tokenizer.encode(prompts)?;
        if let (false, Some(&first)) = (quiet, tokens.truncated.first()) {
            let example: String = prompts[first].chars().take(60).collect();
            let more = if prompts[first].chars().count() > 60 {
                "..."
            } else {
                ""
            };
            output::warn(&format!(
                "{} prompt(s) longer than the model's {} tokens were cut, e.g. {example:?}{more}",
                tokens.truncated.len(),
                self.clip.config.text.max_position_embeddings,
            ));
        }
        let tower = self.clip.text()?;
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.sort_by_key(|&i| tokens.ids[i].len());
        let mut embeds: Vec<Vec<f32>> = vec![Vec::new(); prompts.len()];
        for chunk in order.chunks(TEXT_CHUNK) {
            let ids: Vec<Vec<u32>> = chunk.iter().map(|&i| tokens.ids[i].clone()).collect();
            for (&i, e) in chunk.iter().zip(tower.forward(&ids)?.to_vec2::<f32>()?) {
                embeds[i] = e;
            }
        }
        Ok(embeds)
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
    run.format
        .unwrap_or(if run.output.is_none() && std::io::stdout().is_terminal() {
            Format::Table
        } else {
            Format::Json
        })
}

/// The inputs of a run, in order, after `--shard`; usage errors (an unreadable list) end the run.
pub fn collect_inputs(args: &InputArgs) -> Result<Vec<Input>> {
    let opts = InputOptions {
        recursive: args.recursive,
        hidden: args.hidden,
        all_files: args.all_files,
        files_from: args.files_from.clone(),
        null_separated: args.null,
        shard: args.shard,
    };
    inputs::collect(&args.paths, &opts, &mut std::io::stdin().lock())
}

/// Where the results go, and which inputs `--resume` can skip. Checked before the model loads.
pub struct Destination {
    pub sink: Sink,
    pub format: Format,
    /// Paths (as printed) that already have a result in the `--resume` file.
    pub completed: HashSet<String>,
}

pub fn open_destination(run: &RunArgs) -> Result<Destination> {
    let format = format_for(run);
    let mut completed = HashSet::new();
    if run.resume {
        if format != Format::Jsonl {
            return Err(Error::Usage(
                "--resume needs --format jsonl: only JSONL output can be appended to".into(),
            )
            .into());
        }
        if let Some(path) = &run.output {
            completed = output::read_completed(path)?;
        }
    }
    let sink = Sink::open(run.output.as_deref(), format, run.resume)?;
    Ok(Destination {
        sink,
        format,
        completed,
    })
}

/// The name of an input in the output: its path as given, lossily converted to UTF-8.
pub fn display_path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Decodes images on worker threads and encodes them batch by batch on this one, handing each
/// input's embedding (or the error that stopped it) to `emit` in input order. Returns how many
/// inputs failed.
pub fn encode_images(
    model: &LoadedModel,
    inputs: &[Input],
    run: &RunArgs,
    progress: &Progress,
    mut emit: impl FnMut(&Input, Result<Vec<f32>, String>) -> Result<()>,
) -> Result<usize> {
    let limits = DecodeLimits {
        max_pixels: run.max_pixels,
    };
    let batch_size = run.batch_size as usize;
    let threads = run.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n as usize,
    );
    let opts = PoolOptions {
        threads,
        // Room for the next whole batch while this one is encoded, and one image per worker.
        window: batch_size + threads,
    };
    let mut batch = Batch {
        model,
        pending: Vec::with_capacity(batch_size),
        ready: 0,
    };
    let mut failed = 0usize;
    let mut on_done = |i: usize, r: Result<Vec<f32>, String>| -> Result<()> {
        let input = &inputs[i];
        // The record's error and the stderr line are the same one line, whatever the file name.
        let r = r.map_err(|m| crate::error::escape_controls(&m).into_owned());
        if let Err(message) = &r {
            failed += 1;
            progress.error(message);
        }
        progress.inc();
        emit(input, r)
    };
    pipeline::ordered_map(
        inputs,
        opts,
        |input| match &input.error {
            Some(message) => Err(message.clone()),
            None if run.exact_decode => {
                preprocess::prepare_file(&input.path, &limits, &model.preprocess)
                    .map_err(|e| e.to_string())
            }
            None => preprocess::prepare_file_reduced(&input.path, &limits, &model.preprocess)
                .map_err(|e| e.to_string()),
        },
        |i, prepared| {
            let prepared = prepared.unwrap_or_else(|Panicked(message)| {
                Err(format!(
                    "{}: internal error while decoding ({message}); please report it",
                    inputs[i].path.display()
                ))
            });
            batch.ready += usize::from(prepared.is_ok());
            batch.pending.push((i, prepared));
            if batch.ready >= batch_size {
                batch.flush(&mut on_done)?;
            }
            Ok(())
        },
    )?;
    batch.flush(&mut on_done)?;
    Ok(failed)
}

/// Prepared inputs waiting for a forward pass, in input order (failed ones included, so that their
/// records keep their place).
struct Batch<'a> {
    model: &'a LoadedModel,
    pending: Vec<(usize, Result<Vec<f32>, String>)>,
    ready: usize,
}

impl Batch<'_> {
    fn flush(
        &mut self,
        emit: &mut impl FnMut(usize, Result<Vec<f32>, String>) -> Result<()>,
    ) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        self.ready = 0;
        let pixels: Vec<Vec<f32>> = pending
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok().cloned())
            .collect();
        let mut embeds = if pixels.is_empty() {
            Vec::new()
        } else {
            self.model.image_embeddings(&pixels)?
        }
        .into_iter();
        drop(pixels);
        for (i, prepared) in pending {
            let result = match prepared {
                Ok(_) => Ok(embeds.next().context("missing image embedding")?),
                Err(message) => Err(message),
            };
            emit(i, result)?;
        }
        Ok(())
    }
}

/// Inputs minus those `--resume` found done; warns how many were skipped.
fn skip_completed(inputs: Vec<Input>, completed: &HashSet<String>, quiet: bool) -> Vec<Input> {
    if completed.is_empty() {
        return inputs;
    }
    let before = inputs.len();
    let left: Vec<Input> = inputs
        .into_iter()
        .filter(|i| !completed.contains(&display_path(&i.path)))
        .collect();
    if !quiet {
        output::warn(&format!(
            "--resume: {} of {before} images already done, {} to go",
            before - left.len(),
            left.len()
        ));
    }
    left
}

pub fn classify(args: &ClassifyArgs) -> Result<Outcome> {
    // Everything the user typed is checked before the model is touched.
    let labels = collect_labels(args)?;
    let templates = collect_templates(args)?;
    let quiet = args.run.quiet;
    let inputs = collect_inputs(&args.inputs)?;
    let dest = open_destination(&args.run)?;
    let inputs = skip_completed(inputs, &dest.completed, quiet);
    let plan = plan_model(&args.model, quiet)?;
    let units: Vec<Vec<String>> = labels
        .iter()
        .map(|l| templates.iter().map(|t| t.fill(l)).collect())
        .collect();
    let cache = text_cache(args.run.no_cache);
    let (model, embeddings) = load_with_text(plan, &units, cache.as_ref(), &args.run)?;
    let label_embeds = LabelEmbeddings {
        labels: labels.clone(),
        embeddings,
    };
    let run = RunInfo {
        model: model.info(),
        labels,
        templates: templates.iter().map(|t| t.as_str().to_string()).collect(),
    };
    let top_k = args.top_k.map(|k| k as usize);
    let logit_scale = model.clip.logit_scale();
    write_results(
        &model,
        &inputs,
        &args.run,
        dest,
        &run,
        |path, embedding| match embedding {
            Ok(embed) => {
                let preds = classify::scores(&embed, &label_embeds, logit_scale);
                ImageResult {
                    path,
                    predictions: classify::rank(preds, top_k),
                    error: None,
                }
            }
            Err(message) => ImageResult {
                path,
                predictions: Vec::new(),
                error: Some(message),
            },
        },
    )
}

/// The end of every command: opens the output with `header`, encodes the inputs, turns each
/// image's embedding (or error) into a record with `record`, writes it, and puts the output in
/// place. The outcome says whether any input failed.
fn write_results<R: Record>(
    model: &LoadedModel,
    inputs: &[Input],
    run: &RunArgs,
    dest: Destination,
    header: &impl serde::Serialize,
    record: impl Fn(String, Result<Vec<f32>, String>) -> R,
) -> Result<Outcome> {
    let mut writer = ResultWriter::begin(dest.sink, dest.format, header)?;
    let progress = Progress::new(inputs.len(), show_progress(run.quiet));
    let failed = encode_images(model, inputs, run, &progress, |input, embedding| {
        Ok(writer.record(&record(display_path(&input.path), embedding))?)
    })?;
    progress.finish();
    writer.finish()?.commit()?;
    Ok(if failed == 0 {
        Outcome::Success
    } else {
        Outcome::SomeFailed
    })
}

/// The effective rule of every aspect; a per-aspect option naming an aspect that is not in the
/// run is a usage error (a typo would otherwise be silently ignored).
fn aspect_rules(aspects: &[Aspect], args: &TagArgs) -> Result<Vec<Rule>> {
    let names: Vec<&str> = aspects.iter().map(|a| a.name.as_str()).collect();
    let named = args
        .threshold
        .iter()
        .filter_map(|p| p.aspect.as_ref().map(|a| ("--threshold", a)))
        .chain(
            args.top_k
                .iter()
                .filter_map(|p| p.aspect.as_ref().map(|a| ("--top-k", a))),
        );
    for (flag, name) in named {
        if !names.contains(&name.as_str()) {
            return Err(Error::Usage(format!(
                "{flag} {name}=...: no aspect {name:?} in this run (aspects: {})",
                names.join(", ")
            ))
            .into());
        }
    }
    Ok(aspects
        .iter()
        .map(|a| {
            Rule::resolve(
                a.kind,
                (a.top_k, a.threshold),
                (
                    PerAspect::lookup(&args.top_k, &a.name),
                    PerAspect::lookup(&args.threshold, &a.name),
                ),
            )
        })
        .collect())
}

pub fn tag(args: &TagArgs) -> Result<Outcome> {
    let quiet = args.run.quiet;
    let aspects = aspects::resolve(&args.aspects)?;
    let rules = aspect_rules(&aspects, args)?;
    let inputs = collect_inputs(&args.inputs)?;
    let dest = open_destination(&args.run)?;
    let inputs = skip_completed(inputs, &dest.completed, quiet);
    let plan = plan_model(&args.model, quiet)?;

    // One text unit per label, then the neutral prompt of a multi aspect.
    let mut units: Vec<Vec<String>> = Vec::new();
    for a in &aspects {
        units.extend(a.labels.iter().map(|l| a.prompts_for(l)));
        if let Some(n) = &a.neutral {
            units.push(a.prompts_for(n));
        }
    }
    let cache = text_cache(args.run.no_cache);
    let (model, mut embeds) = load_with_text(plan, &units, cache.as_ref(), &args.run)?;
    let mut prepared = Vec::with_capacity(aspects.len());
    let mut rest = embeds.drain(..);
    for (a, rule) in aspects.iter().zip(&rules) {
        let embeddings: Vec<Vec<f32>> = rest.by_ref().take(a.labels.len()).collect();
        let neutral = match &a.neutral {
            Some(_) => Some(rest.next().context("missing neutral embedding")?),
            None => None,
        };
        prepared.push(AspectEmbeddings {
            name: a.name.clone(),
            kind: a.kind,
            labels: LabelEmbeddings {
                labels: a.labels.iter().map(|l| l.name.clone()).collect(),
                embeddings,
            },
            neutral,
            rule: *rule,
        });
    }
    drop(rest);
    let header = TagRunInfo {
        model: model.info(),
        aspects: aspects
            .iter()
            .zip(&rules)
            .map(|(a, r)| aspect_info(a, r))
            .collect(),
    };
    let logit_scale = model.clip.logit_scale();
    write_results(
        &model,
        &inputs,
        &args.run,
        dest,
        &header,
        |path, embedding| match embedding {
            Ok(embed) => TagResult {
                path,
                aspects: prepared
                    .iter()
                    .map(|a| AspectTags {
                        aspect: a.name.clone(),
                        kind: a.kind,
                        tags: tag::tag(&embed, a, logit_scale),
                    })
                    .collect(),
                error: None,
            },
            Err(message) => TagResult {
                path,
                aspects: Vec::new(),
                error: Some(message),
            },
        },
    )
}

fn aspect_info(a: &Aspect, rule: &Rule) -> AspectInfo {
    AspectInfo {
        name: a.name.clone(),
        kind: a.kind,
        description: a.description.clone(),
        source: a.source.clone(),
        labels: a.labels.len(),
        templates: a.templates.iter().map(|t| t.as_str().to_string()).collect(),
        top_k: rule.top_k,
        threshold: rule.threshold,
    }
}

/// One aspect in `vlm aspects --format json`: its description, rule and (when asked for) labels.
#[derive(Debug, serde::Serialize)]
struct AspectListing {
    #[serde(flatten)]
    info: AspectInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    neutral: Option<Vec<String>>,
    /// Each label with its prompts; only when aspects are named.
    #[serde(skip_serializing_if = "Option::is_none")]
    label_prompts: Option<Vec<LabelListing>>,
}

#[derive(Debug, serde::Serialize)]
struct LabelListing {
    label: String,
    prompts: Vec<String>,
}

/// `vlm aspects`: a summary of the built-ins, or the named aspects in full.
pub fn list_aspects(args: &AspectsArgs, out: &mut impl std::io::Write) -> Result<Outcome> {
    let detailed = !args.aspects.is_empty();
    let list = if detailed {
        aspects::resolve(&args.aspects)?
    } else {
        aspects::builtins()
    };
    let format = args.format.unwrap_or(if std::io::stdout().is_terminal() {
        ListFormat::Table
    } else {
        ListFormat::Json
    });
    let listings: Vec<AspectListing> = list
        .iter()
        .map(|a| {
            let rule = Rule::resolve(a.kind, (a.top_k, a.threshold), (None, None));
            AspectListing {
                info: aspect_info(a, &rule),
                neutral: a.neutral.as_ref().map(|n| a.prompts_for(n)),
                label_prompts: detailed.then(|| {
                    a.labels
                        .iter()
                        .map(|l| LabelListing {
                            label: l.name.clone(),
                            prompts: a.prompts_for(l),
                        })
                        .collect()
                }),
            }
        })
        .collect();
    let bytes = match format {
        ListFormat::Json => {
            let mut b = serde_json::to_vec_pretty(&serde_json::json!({ "aspects": listings }))?;
            b.push(b'\n');
            b
        }
        ListFormat::Table => output::aspects_table(
            &listings
                .iter()
                .map(|l| {
                    (
                        &l.info,
                        l.label_prompts
                            .as_ref()
                            .map(|p| p.iter().map(|x| x.label.as_str()).collect::<Vec<_>>()),
                    )
                })
                .collect::<Vec<_>>(),
        )
        .into_bytes(),
    };
    out.write_all(&bytes)?;
    out.flush()?;
    Ok(Outcome::Success)
}

fn show_progress(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}
