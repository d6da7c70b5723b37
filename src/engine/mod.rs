//! The engine every command runs on: it resolves and loads a model of any family, owns its text side
//! (tokenising, the embedding cache: [`text`]) and turns image files into embeddings batch by batch
//! ([`images`]). Commands only say which texts they need and what to do with each embedding.

pub(crate) mod images;
pub(crate) mod patches;
pub(crate) mod text;

use std::io::IsTerminal;

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use crate::hub::{self, ModelFiles, ModelRequest};
use crate::images::PreprocessConfig;
use crate::kernels;
use crate::model::nn::LinearPrecision;
use crate::model::{self, ImageTextModel, LoadOptions, ModelSpec, ScoreHead, Towers};
use crate::output::ModelInfo;
use crate::text::Tokenizer;
use crate::Error;

/// Numeric type of the weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    F32,
    F16,
    Bf16,
    /// int8 linear layers on the CPU (issue 24); f32 elsewhere.
    Int8,
}

impl Precision {
    pub(crate) fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
            // Weights and activations are quantized inside the linear layers only; the tensors
            // between them stay f32.
            Precision::Int8 => DType::F32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }

    /// How a model computes at this precision on `device`. On the CPU, tensors stay f32 and only
    /// the image tower's linear layers (almost all of its work) run in bf16, and only where the
    /// CPU multiplies bf16 natively (AMX or AVX512-BF16): anywhere else bf16 would be emulated,
    /// slower than f32 and less exact, so f32 runs instead and the note says so. The text tower
    /// stays f32: each label is encoded once and cached, so bf16 would save little time there,
    /// and on the SigLIP 2 fixture most of bf16's error came from the text side (tests/it/bf16.rs).
    /// There is no f16 CPU kernel: f16 computes in f32. On a GPU, the tensors take the
    /// precision's dtype.
    ///
    /// int8 (issue 24) quantizes the image tower's encoder layers (q/k/v, out_proj, fc1, fc2;
    /// SigLIP's pooling head's k/v): weights once at load, per output channel; activations per
    /// row at every call. The patch embedding and the projection stay f32 (a few percent of the
    /// work, and the first reads raw pixels); so do attention, softmax, layer norms and the
    /// text tower, for the reasons given for bf16. On a CPU without an int8 kernel (AVX2, VNNI,
    /// AMX) the run is f32 and the note says so; on a GPU, f32.
    pub(crate) fn compute(self, device: &Device) -> Compute {
        if !device.is_cpu() {
            return Compute {
                dtype: self.dtype(),
                vision: LinearPrecision::F32,
                text: LinearPrecision::F32,
                note: (self == Precision::Int8)
                    .then_some("--dtype int8: vlm's int8 kernels are for the CPU; on this device it computes in f32"),
            };
        }
        let native_bf16 = kernels::Backend::native_bf16();
        let (linear, note) = match self {
            Precision::F32 => (LinearPrecision::F32, None),
            Precision::Bf16 if native_bf16 => (LinearPrecision::Bf16, None),
            Precision::Bf16 => (
                LinearPrecision::F32,
                Some("--dtype bf16: this CPU has no bf16 arithmetic (AMX or AVX512-BF16), so vlm computes in f32, which is faster here"),
            ),
            Precision::Int8 if kernels::Backend::native_int8() => (LinearPrecision::Int8, None),
            Precision::Int8 => (
                LinearPrecision::F32,
                Some("--dtype int8: this CPU has no int8 kernel of vlm's (AVX2, AVX-VNNI, AVX512-VNNI or AMX), so vlm computes in f32"),
            ),
            Precision::F16 => (
                LinearPrecision::F32,
                Some(if native_bf16 {
                    "--dtype f16: vlm has no f16 kernel for the CPU, so it computes in f32; --dtype bf16 is the fast choice on this CPU"
                } else {
                    "--dtype f16: vlm has no f16 kernel for the CPU, so it computes in f32"
                }),
            ),
        };
        Compute {
            dtype: DType::F32,
            vision: linear,
            text: LinearPrecision::F32,
            note,
        }
    }
}

/// How a run computes: see [`Precision::compute`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Compute {
    /// The tensors' dtype.
    pub dtype: DType,
    /// How the image tower's linear layers multiply on the CPU.
    pub vision: LinearPrecision,
    /// How the text tower's linear layers multiply on the CPU.
    pub text: LinearPrecision,
    /// Why the run computes otherwise than asked, for stderr.
    pub note: Option<&'static str>,
}

/// Which model to run, where.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Hub repo id or local folder.
    pub model: String,
    /// Hub branch, tag or commit.
    pub revision: Option<String>,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub precision: Precision,
}

/// A model ready to score images: its files, configs, tokenizer and network.
pub struct Engine {
    pub files: ModelFiles,
    pub spec: Box<dyn ModelSpec>,
    pub preprocess: PreprocessConfig,
    /// Loaded with the text tower only.
    pub tokenizer: Option<Tokenizer>,
    pub model: Box<dyn ImageTextModel>,
}

/// A resolved model whose configs are read and checked, before any weights are loaded: enough to
/// know the text cache's key and whether the text tower is needed at all.
pub struct ModelPlan {
    pub files: ModelFiles,
    pub spec: Box<dyn ModelSpec>,
    pub preprocess: PreprocessConfig,
    pub device: Device,
    pub precision: Precision,
    /// The vlm cache folder, where layers packed at load (int8, bf16) are kept for the next run
    /// (`model/packs.rs`); `None` with `--no-cache` ([`ModelPlan::without_caches_if`]).
    pub(crate) weight_cache: Option<std::path::PathBuf>,
    /// No warnings on stderr.
    pub(crate) quiet: bool,
}

/// An error about the model as a whole: exit code 2, one line naming it.
pub(crate) fn model_error(model: &str, e: anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!(Error::Model {
        model: model.to_string(),
        reason: crate::error::one_line(&e),
    })
}

pub(crate) fn parse_device(spec: &str) -> Result<Device> {
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

/// Resolves `--model` (local folder or Hub) and reads its configs; no weights yet.
pub fn plan_model(opts: &ModelOptions, quiet: bool) -> Result<ModelPlan> {
    let device = parse_device(&opts.device)?;
    if let Some(note) = opts.precision.compute(&device).note {
        if !quiet {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| crate::output::warn(note));
        }
    }
    let files = hub::resolve(&ModelRequest {
        model: opts.model.clone(),
        revision: opts.revision.clone(),
        progress: !quiet && std::io::stderr().is_terminal(),
    })?;
    let in_model = |e: anyhow::Error| model_error(&files.id, e);
    let spec = model::read_config(&files.config).map_err(in_model)?;
    let preprocess = match spec.preprocess() {
        Some(own) => own,
        None => PreprocessConfig::from_file_with(&files.preprocessor, &model::processor_classes())
            .map_err(in_model)?,
    };
    let size = spec.image_size();
    match preprocess.output_size() {
        Some((w, h)) if (w as usize, h as usize) == (size, size) => {}
        Some((w, h)) => {
            return Err(in_model(anyhow::anyhow!(
                "{} makes images {w}x{h} but the vision tower takes {size}x{size}",
                files.preprocessor.display()
            )))
        }
        None => {
            return Err(in_model(anyhow::anyhow!(
                "{} gives no fixed image size (no center crop and no exact resize)",
                files.preprocessor.display()
            )))
        }
    }
    Ok(ModelPlan {
        files,
        spec,
        preprocess,
        device,
        precision: opts.precision,
        weight_cache: crate::cache::default_dir(),
        quiet,
    })
}

impl ModelPlan {
    /// Loads the towers asked for (and the tokenizer with the text tower).
    pub(crate) fn load(self, towers: Towers) -> Result<Engine> {
        let in_model = |e: anyhow::Error| model_error(&self.files.id, e);
        let tokenizer = if towers.text {
            let policy = self.spec.text_policy();
            let tokenizer = match self.spec.builtin_tokenizer().map_err(in_model)? {
                Some(own) => Tokenizer::new(own, policy, &self.files.tokenizer),
                None => Tokenizer::from_file(&self.files.tokenizer, policy),
            };
            Some(tokenizer.map_err(in_model)?)
        } else {
            None
        };
        let compute = self.precision.compute(&self.device);
        let packs = self.packs(&compute).map(std::sync::Arc::new);
        let opts = LoadOptions {
            device: self.device,
            dtype: compute.dtype,
            vision: compute.vision,
            text: compute.text,
            towers,
            packs: packs.clone(),
        };
        let model = self
            .spec
            .load(&self.files.weights, &opts)
            .map_err(in_model)?;
        if let Some(packs) = &packs {
            // Like the text cache, an optimisation only: a cache that cannot be written is a
            // warning, and the run goes on.
            if let Err(e) = packs.save() {
                if !self.quiet {
                    crate::output::warn(&format!(
                        "cannot keep the packed weights for the next run: {}",
                        crate::error::one_line(&e)
                    ));
                }
            }
        }
        // Every family's head, checked once here: a non-finite scale or bias is a model error in
        // every command, not `"probability": null` (issue 21).
        crate::model::checks::score_head(model.head()).map_err(in_model)?;
        Ok(Engine {
            files: self.files,
            spec: self.spec,
            preprocess: self.preprocess,
            tokenizer,
            model,
        })
    }

    /// The same plan, reading and writing no cache when `no_cache` (`--no-cache`).
    pub(crate) fn without_caches_if(mut self, no_cache: bool) -> Self {
        if no_cache {
            self.weight_cache = None;
        }
        self
    }

    /// The packed-weight cache of this load: on the CPU, when some tower packs its layers at
    /// load (int8; bf16 where the CPU multiplies it natively). Its key is the weight files'
    /// identity (canonical path, size, modification time: a Hub blob's path is its content
    /// hash), and the kernels that read the packed layers with a checksum of their packing
    /// ([`kernels::layout_fingerprint`]), so another CPU kind or `VLM_KERNELS` cap gets a file
    /// of its own, and a vlm whose packing changed never reads an old one.
    fn packs(&self, compute: &Compute) -> Option<model::packs::PackStore> {
        let dir = self.weight_cache.as_ref()?;
        if !self.device.is_cpu() {
            return None;
        }
        let packed = [compute.vision, compute.text]
            .into_iter()
            .filter(|p| p.packs_at_load())
            .map(|p| {
                let backend = kernels::Backend::best(p);
                let layout = kernels::layout_fingerprint(backend).unwrap_or(0);
                format!("{backend:?}:{layout:08x}")
            })
            .collect::<Vec<_>>();
        if packed.is_empty() {
            return None;
        }
        let key = format!(
            "packed|{}|{}{}",
            env!("CARGO_PKG_VERSION"),
            packed.join("+"),
            files_identity(&self.files.weights)
        );
        Some(model::packs::PackStore::open(dir, &key))
    }

    /// What the text cache's entries for this model are keyed by: the Hub commit, or for a local
    /// folder the files' identity (path, size, modification time), plus the numeric type and the
    /// family's text policy (everything that changes a text embedding).
    pub fn cache_key(&self) -> String {
        let tail = format!(
            "{}|{}|{}",
            self.precision.name(),
            self.spec.family(),
            self.spec.text_policy().cache_tag()
        );
        if let Some(rev) = &self.files.revision {
            return format!("hub:{}@{rev}|{tail}", self.files.id);
        }
        let files = [&self.files.config, &self.files.tokenizer]
            .into_iter()
            .chain(&self.files.weights);
        format!("local|{tail}{}", files_identity(files))
    }

    /// What an index's embeddings of this model are keyed by beyond its name (issue 20.2): the
    /// Hub commit, or for a local folder the identity of the files an image embedding depends on
    /// (config, whose `projection_dim` is the embedding size, preprocessor and weights), as
    /// [`ModelPlan::cache_key`] takes it, plus the numeric type and family. Replacing the weights
    /// at the same path changes it, so an index never mixes embeddings of two models.
    pub(crate) fn index_fingerprint(&self) -> String {
        let tail = format!("{}|{}", self.precision.name(), self.spec.family());
        if let Some(rev) = &self.files.revision {
            return format!("hub:{}@{rev}|{tail}", self.files.id);
        }
        let files = [&self.files.config, &self.files.preprocessor]
            .into_iter()
            .chain(&self.files.weights);
        format!("local|{tail}{}", files_identity(files))
    }
}

/// Files' identity as the text cache and the index take it: each one's canonical path, size and
/// modification time (ns), as `|path:len:mtime`.
fn files_identity<'a>(files: impl IntoIterator<Item = &'a std::path::PathBuf>) -> String {
    let mut key = String::new();
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

impl Engine {
    /// Resolves and loads a model in one step.
    pub fn load(opts: &ModelOptions, towers: Towers, quiet: bool) -> Result<Engine> {
        plan_model(opts, quiet)?.load(towers)
    }

    pub fn head(&self) -> ScoreHead {
        self.model.head()
    }

    pub(crate) fn info(&self) -> ModelInfo {
        ModelInfo {
            id: self.files.id.clone(),
            revision: self.files.revision.clone(),
            family: self.spec.family().to_string(),
            head: self.model.head().kind,
        }
    }

    /// Image embeddings of already preprocessed images.
    pub fn image_embeddings(&self, pixels: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        let batch = crate::images::to_tensor(pixels, &self.preprocess, self.model.device())?;
        let embeds = self
            .model
            .encode_images(&batch)?
            .to_vec2::<f32>()
            .context("cannot read the image embeddings")?;
        crate::model::checks::finite_embeddings("image", &embeds)
            .map_err(|e| model_error(&self.files.id, e))?;
        Ok(embeds)
    }
}
