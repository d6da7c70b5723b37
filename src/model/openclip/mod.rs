//! The OpenCLIP family: checkpoints in open_clip's own format (`open_clip_config.json` +
//! `open_clip_model.safetensors`), the format of Apple's DFN, DataComp, MetaCLIP, LAION and the
//! `timm/` mirrors of OpenAI's models.
//!
//! open_clip's `CLIP` with its own `VisionTransformer` and `TextTransformer` computes what
//! transformers' `CLIPModel` computes (pre-norm blocks, class token, QuickGELU or GELU, a final
//! norm, linear projections), so this family runs the CLIP family's towers: [`config`] maps the
//! config onto [`ClipConfig`] (plus the tower options OpenCLIP adds: no `ln_pre`, average
//! pooling, the final norm after pooling, a text projection bias), and [`OpenClipWeights`] shows
//! the checkpoint to those towers under `CLIPModel`'s tensor names. The preprocessing
//! (`preprocess_cfg`) and the tokenizer (open_clip's `SimpleTokenizer`, [`tokenizer`]) are the
//! family's own.

pub(crate) mod config;
pub(crate) mod tokenizer;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

pub use config::{Clean, OpenClipConfig};

use crate::images::PreprocessConfig;
use crate::model::clip::Clip;
use crate::model::{
    nn, weights, Family, HeadKind, ImageTextModel, Layout, LoadOptions, ModelSpec, Normalizer,
    Padding, PatchEmbeddings, ScoreHead, TextNormalization, TextPolicy, WeightFile,
};

/// The file that marks an OpenCLIP checkpoint.
pub(crate) const CONFIG_FILE: &str = "open_clip_config.json";

/// An OpenCLIP checkpoint (issue 22): its one config is its model, preprocessing and tokenizer
/// config (the tokenizer itself is built in), beside its weights in open_clip's order of
/// preference (`factory.py`: safetensors first); the `.bin` is read as data, as
/// `pytorch_model.bin` is. Any `open_clip_config.json` is taken for one: what it lacks, its
/// parser says.
pub(crate) static LAYOUT: Layout = Layout {
    config: CONFIG_FILE,
    claims: |_| true,
    preprocessor: None,
    tokenizer: None,
    tokenizer_sidecars: &[],
    weights: &[
        WeightFile::Single("open_clip_model.safetensors"),
        WeightFile::Single("open_clip_pytorch_model.bin"),
    ],
};

/// The OpenCLIP family in the list of [`crate::model::FAMILIES`]. Its config has no
/// `model_type`: `model::parse_config` knows it by its `model_cfg` ([`is_config`]).
pub(crate) const FAMILY: Family = Family {
    name: "openclip",
    model_types: &[],
    refused: &[],
    parse: |text| Ok(Box::new(OpenClipConfig::from_json(text)?)),
    head: None,
    layout: &LAYOUT,
    processors: &[],
};

pub(crate) use config::is_config;

const LOWER: Normalizer = Normalizer {
    name: "openclip-clean-lower",
    apply: tokenizer::clean_lower,
};
const WHITESPACE: Normalizer = Normalizer {
    name: "openclip-clean-whitespace",
    apply: tokenizer::clean_whitespace,
};
const CANONICALIZE: Normalizer = Normalizer {
    name: "openclip-clean-canonicalize",
    apply: tokenizer::clean_canonicalize,
};

impl ModelSpec for OpenClipConfig {
    fn family(&self) -> &'static str {
        FAMILY.name
    }

    fn image_size(&self) -> usize {
        self.clip.vision.image_size
    }

    fn text_policy(&self) -> TextPolicy {
        TextPolicy {
            context_len: self.clip.text.max_position_embeddings,
            // The text is pooled at the end token (argmax / eos) behind a causal mask: padding
            // after it changes nothing (open_clip pads to the context with 0).
            padding: Padding::Longest,
            normalization: TextNormalization::Family(match self.clean {
                Clean::Lower => LOWER,
                Clean::Whitespace => WHITESPACE,
                Clean::Canonicalize => CANONICALIZE,
            }),
        }
    }

    fn head_kind(&self) -> HeadKind {
        if self.logit_bias {
            HeadKind::Sigmoid
        } else {
            HeadKind::Softmax
        }
    }

    /// The CLIP paper's prompt, as for the CLIP family.
    fn default_template(&self) -> &'static str {
        "a photo of a {}."
    }

    fn load(&self, weights: &[PathBuf], opts: &LoadOptions) -> Result<Box<dyn ImageTextModel>> {
        Ok(Box::new(OpenClip::load(self, weights, opts)?))
    }

    fn patch_grid(&self) -> Option<(usize, usize)> {
        let g = self.clip.vision.grid();
        Some((g, g))
    }

    fn preprocess(&self) -> Option<PreprocessConfig> {
        Some(self.preprocess.clone())
    }

    fn builtin_tokenizer(&self) -> Result<Option<tokenizers::Tokenizer>> {
        Ok(Some(tokenizer::build()?))
    }
}

/// A loaded OpenCLIP model: the CLIP towers, and the head (softmax, or sigmoid with the
/// checkpoint's `logit_bias`).
pub(crate) struct OpenClip {
    clip: Clip,
    head: ScoreHead,
}

impl OpenClip {
    pub(crate) fn load(
        cfg: &OpenClipConfig,
        files: &[PathBuf],
        opts: &LoadOptions,
    ) -> Result<Self> {
        let backend = OpenClipWeights {
            files: weights::Checkpoint::open(files)?,
            cfg: cfg.clone(),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), opts.dtype, opts.device.clone());
        let clip = Clip::from_vb(cfg.clip.clone(), &vb, opts)?;
        // Both parameters are checked with the other families' heads, at the seam
        // (`model::checks::score_head`).
        let head = if cfg.logit_bias {
            if !vb.contains_tensor("logit_bias") {
                bail!("init_logit_bias is set but the checkpoint has no logit_bias");
            }
            ScoreHead {
                kind: HeadKind::Sigmoid,
                logit_scale: clip.logit_scale(),
                logit_bias: nn::scalar(&vb, "logit_bias")?,
            }
        } else {
            ScoreHead {
                kind: HeadKind::Softmax,
                logit_scale: clip.logit_scale(),
                logit_bias: 0.0,
            }
        };
        Ok(Self { clip, head })
    }
}

impl ImageTextModel for OpenClip {
    fn encode_images(&self, pixels: &Tensor) -> Result<Tensor> {
        self.clip.encode_images(pixels)
    }

    fn encode_texts(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        self.clip.encode_texts(ids)
    }

    fn head(&self) -> ScoreHead {
        self.head
    }

    fn device(&self) -> &Device {
        self.clip.device()
    }

    fn patch_embeddings(&self, pixels: &Tensor) -> Result<Option<PatchEmbeddings>> {
        self.clip.patch_embeddings(pixels)
    }
}

/// How one `CLIPModel` tensor is made from the checkpoint's.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// The tensor under another name, as it is.
    Same(String),
    /// The transpose of a `[in, out]` matrix (`visual.proj`, `text_projection` without bias).
    Transposed(String),
    /// Rows `part * n / 3 ..` of a fused `in_proj_weight` / `in_proj_bias` (q, k, v stacked).
    Third(String, usize),
    /// Scaled per output row by a layer scale `gamma` (`ls_1` after attention, `ls_2` after the
    /// MLP): `x + gamma * (W y + b)` is `x + (gamma W) y + gamma b`, so folding it into the last
    /// linear layer of the branch leaves the encoder as it is.
    Scaled(String, String),
}

/// The checkpoint seen under `CLIPModel`'s tensor names (open_clip's `convert.py` and
/// transformers' `convert_clip_original_pytorch_to_hf.py` name the same correspondence).
struct OpenClipWeights {
    files: weights::Checkpoint,
    cfg: OpenClipConfig,
}

impl OpenClipWeights {
    /// The checkpoint tensor(s) behind a `CLIPModel` name, or `None` for a name OpenCLIP has no
    /// counterpart of.
    fn source(&self, name: &str) -> Option<Source> {
        let t = self.cfg.text_prefix;
        let fixed = match name {
            "logit_scale" | "logit_bias" => Some(Source::Same(name.into())),
            "vision_model.embeddings.patch_embedding.weight" => {
                Some(Source::Same("visual.conv1.weight".into()))
            }
            "vision_model.embeddings.class_embedding" => {
                Some(Source::Same("visual.class_embedding".into()))
            }
            "vision_model.embeddings.position_embedding.weight" => {
                Some(Source::Same("visual.positional_embedding".into()))
            }
            "visual_projection.weight" => Some(Source::Transposed("visual.proj".into())),
            "text_model.embeddings.token_embedding.weight" => {
                Some(Source::Same(format!("{t}token_embedding.weight")))
            }
            "text_model.embeddings.position_embedding.weight" => {
                Some(Source::Same(format!("{t}positional_embedding")))
            }
            "text_projection.weight" if self.cfg.clip.options.text_projection_bias => {
                Some(Source::Same(format!("{t}text_projection.weight")))
            }
            "text_projection.weight" => Some(Source::Transposed(format!("{t}text_projection"))),
            "text_projection.bias" => Some(Source::Same(format!("{t}text_projection.bias"))),
            _ => None,
        };
        if fixed.is_some() {
            return fixed;
        }
        for (hf, oc) in [
            ("vision_model.pre_layrnorm.", "visual.ln_pre."),
            ("vision_model.post_layernorm.", "visual.ln_post."),
        ] {
            if let Some(rest) = name.strip_prefix(hf) {
                return Some(Source::Same(format!("{oc}{rest}")));
            }
        }
        if let Some(rest) = name.strip_prefix("text_model.final_layer_norm.") {
            return Some(Source::Same(format!("{t}ln_final.{rest}")));
        }
        let (tower, rest, scaled) =
            if let Some(rest) = name.strip_prefix("vision_model.encoder.layers.") {
                (
                    "visual.transformer.resblocks.".to_string(),
                    rest,
                    self.cfg.vision_layer_scale,
                )
            } else if let Some(rest) = name.strip_prefix("text_model.encoder.layers.") {
                (
                    format!("{t}transformer.resblocks."),
                    rest,
                    self.cfg.text_layer_scale,
                )
            } else {
                return None;
            };
        let (layer, param) = rest.split_once('.')?;
        let block = format!("{tower}{layer}.");
        let (kind, leaf) = param.rsplit_once('.')?;
        let gamma = |ls: &str| format!("{block}{ls}.gamma");
        Some(match kind {
            "layer_norm1" => Source::Same(format!("{block}ln_1.{leaf}")),
            "layer_norm2" => Source::Same(format!("{block}ln_2.{leaf}")),
            "self_attn.q_proj" | "self_attn.k_proj" | "self_attn.v_proj" => {
                let part = match kind {
                    "self_attn.q_proj" => 0,
                    "self_attn.k_proj" => 1,
                    _ => 2,
                };
                Source::Third(format!("{block}attn.in_proj_{leaf}"), part)
            }
            "self_attn.out_proj" if scaled => {
                Source::Scaled(format!("{block}attn.out_proj.{leaf}"), gamma("ls_1"))
            }
            "self_attn.out_proj" => Source::Same(format!("{block}attn.out_proj.{leaf}")),
            "mlp.fc1" => Source::Same(format!("{block}mlp.c_fc.{leaf}")),
            "mlp.fc2" if scaled => {
                Source::Scaled(format!("{block}mlp.c_proj.{leaf}"), gamma("ls_2"))
            }
            "mlp.fc2" => Source::Same(format!("{block}mlp.c_proj.{leaf}")),
            _ => return None,
        })
    }

    /// One checkpoint tensor as stored, on the CPU.
    fn read(&self, name: &str) -> Result<Tensor> {
        if !self.files.contains(name) {
            bail!("the checkpoint has no tensor {name}: is this an OpenCLIP checkpoint of the model open_clip_config.json describes?");
        }
        Ok(SimpleBackend::get_unchecked(
            &self.files,
            name,
            DType::F32,
            &Device::Cpu,
        )?)
    }

    /// The `CLIPModel` tensor `name`, built from the checkpoint, as f32 on the CPU (or straight
    /// from the file for a plain rename).
    fn build(
        &self,
        name: &str,
        shape: Option<&Shape>,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let source = self
            .source(name)
            .with_context(|| format!("OpenCLIP checkpoints have no counterpart of {name}"))?;
        let tensor = match &source {
            // Read where it lies (f32 tensors in place from the mapped file, see `weights`).
            Source::Same(from) => self.read(from)?,
            Source::Transposed(from) => {
                let t = self.read(from)?;
                if t.rank() != 2 {
                    bail!("tensor {from} has shape {:?}, expected a matrix", t.dims());
                }
                t.t()?.contiguous()?
            }
            Source::Third(from, part) => {
                let t = self.read(from)?;
                let n = t.dim(0)?;
                if n % 3 != 0 {
                    bail!("tensor {from} has {n} rows, not q, k and v stacked");
                }
                t.narrow(0, part * n / 3, n / 3)?.copy()?
            }
            Source::Scaled(from, gamma) => {
                let t = self.read(from)?;
                let g = self.read(gamma)?;
                if g.dims() != [t.dim(0)?] {
                    bail!(
                        "tensor {gamma} has shape {:?}, expected [{}] for {from}",
                        g.dims(),
                        t.dim(0)?
                    );
                }
                match t.rank() {
                    1 => (t * g)?,
                    _ => t.broadcast_mul(&g.unsqueeze(1)?)?,
                }
            }
        };
        if let Some(shape) = shape {
            if tensor.dims() != shape.dims() {
                let from = match &source {
                    Source::Same(f) | Source::Transposed(f) | Source::Third(f, _) => f,
                    Source::Scaled(f, _) => f,
                };
                bail!(
                    "tensor {from} gives {name} the shape {:?}, but open_clip_config.json implies {:?}",
                    tensor.dims(),
                    shape.dims()
                );
            }
        }
        Ok(tensor.to_dtype(dtype)?.to_device(dev)?)
    }
}

impl SimpleBackend for OpenClipWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.build(name, Some(&s), dtype, dev)
            .map_err(candle_core::Error::wrap)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.build(name, None, dtype, dev)
            .map_err(candle_core::Error::wrap)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match self.source(name) {
            Some(Source::Same(from) | Source::Transposed(from) | Source::Third(from, _)) => {
                self.files.contains(&from)
            }
            Some(Source::Scaled(from, gamma)) => {
                self.files.contains(&from) && self.files.contains(&gamma)
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_onto_open_clips() {
        let cfg = OpenClipConfig::from_json(
            r#"{"model_cfg": {"embed_dim": 8, "custom_text": true,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "head_width": 8, "patch_size": 16, "ls_init_value": 0.1},
                "text_cfg": {"width": 8, "heads": 2, "layers": 1, "proj_bias": true}}}"#,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        candle_core::safetensors::save(
            &std::collections::HashMap::from([(
                "x".to_string(),
                Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
            )]),
            &path,
        )
        .unwrap();
        let w = OpenClipWeights {
            files: weights::Checkpoint::open(&[path]).unwrap(),
            cfg,
        };
        let same = |s: &str| Some(Source::Same(s.to_string()));
        assert_eq!(
            w.source("vision_model.encoder.layers.3.self_attn.k_proj.bias"),
            Some(Source::Third(
                "visual.transformer.resblocks.3.attn.in_proj_bias".into(),
                1
            ))
        );
        assert_eq!(
            w.source("vision_model.encoder.layers.0.mlp.fc2.weight"),
            Some(Source::Scaled(
                "visual.transformer.resblocks.0.mlp.c_proj.weight".into(),
                "visual.transformer.resblocks.0.ls_2.gamma".into()
            ))
        );
        assert_eq!(
            w.source("text_model.encoder.layers.1.mlp.fc2.bias"),
            same("text.transformer.resblocks.1.mlp.c_proj.bias")
        );
        assert_eq!(
            w.source("text_model.final_layer_norm.weight"),
            same("text.ln_final.weight")
        );
        assert_eq!(
            w.source("text_projection.weight"),
            same("text.text_projection.weight")
        );
        assert_eq!(
            w.source("visual_projection.weight"),
            Some(Source::Transposed("visual.proj".into()))
        );
        assert_eq!(w.source("vision_model.something_else"), None);
    }
}
