//! The CLIP family: OpenAI's and LAION's `CLIPModel` checkpoints (text and vision towers), built from
//! the checkpoint's own config.
//!
//! Parameter paths mirror Hugging Face's `CLIPModel` state dict (`text_model.encoder.layers.0.self_attn.q_proj`,
//! `vision_model.pre_layrnorm`, ...), so a `VarBuilder` over the checkpoint's safetensors loads it as is.
//! Candle's stock `clip` module has fixed presets and quick_gelu only; this one reads every size, the
//! activation and the epsilons from `config.json`, so OpenAI and LAION checkpoints alike load.

pub mod config;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::{ClipConfig, TextPooling, TowerOptions, VisionPool};

use crate::model::nn::{
    self, causal_mask, layer_norm, Encoder, EncoderSpec, Linear, LinearPrecision,
};
use crate::model::{
    weights, Family, HeadKind, ImageTextModel, LoadOptions, ModelSpec, Padding, PatchEmbeddings,
    ScoreHead, TextNormalization, TextPolicy,
};

/// The CLIP family in the list of [`crate::model::FAMILIES`].
pub const FAMILY: Family = Family {
    name: "clip",
    model_types: &["clip"],
    refused: &[],
    parse: |text| Ok(Box::new(ClipConfig::from_json(text)?)),
    head: Some(crate::model::HeadKind::Softmax),
    layout: &crate::model::layout::TRANSFORMERS,
    // `CLIPImageProcessor`'s defaults are the base ones (`images::PreprocessConfig::default`).
    processors: &[],
};

impl ModelSpec for ClipConfig {
    fn family(&self) -> &'static str {
        FAMILY.name
    }

    fn image_size(&self) -> usize {
        self.vision.image_size
    }

    fn text_policy(&self) -> TextPolicy {
        TextPolicy {
            context_len: self.text.max_position_embeddings,
            padding: Padding::Longest,
            normalization: TextNormalization::None,
        }
    }

    fn head_kind(&self) -> HeadKind {
        HeadKind::Softmax
    }

    /// The CLIP paper's prompt.
    fn default_template(&self) -> &'static str {
        "a photo of a {}."
    }

    fn load(&self, weights: &[PathBuf], opts: &LoadOptions) -> Result<Box<dyn ImageTextModel>> {
        Ok(Box::new(Clip::load(self.clone(), weights, opts)?))
    }

    /// transformers pools at `(ids == eos).int().argmax()`, position 0 when the id is absent:
    /// the start token, the same for every prompt.
    fn text_warning(&self, ids: &[Vec<u32>]) -> Option<String> {
        let TextPooling::FirstEos(eos) = self.text_pooling() else {
            return None;
        };
        let missing = ids.iter().filter(|seq| !seq.contains(&eos)).count();
        (missing > 0).then(|| {
            format!(
                "text_config.eos_token_id {eos} is missing from {missing} of {} tokenised prompts: those pool at their first token, so their labels all get the same embedding (does the config belong to this tokenizer?)",
                ids.len()
            )
        })
    }

    /// Every ViT checkpoint: one cell per patch.
    fn patch_grid(&self) -> Option<(usize, usize)> {
        let g = self.grid();
        Some((g, g))
    }
}

/// `vision_model` + `visual_projection`.
#[derive(Debug, Clone)]
pub struct VisionTower {
    patch_embedding: Linear,
    class_embedding: Tensor,
    position_embedding: Tensor,
    /// `None` without it (OpenCLIP `no_ln_pre`).
    pre_layrnorm: Option<nn::LayerNorm>,
    encoder: Encoder,
    post_layernorm: nn::LayerNorm,
    projection: Linear,
    pool: VisionPool,
    ln_after_pool: bool,
    patch: usize,
    grid: usize,
    hidden: usize,
    dtype: DType,
}

impl VisionTower {
    pub fn new(cfg: &ClipConfig, vb: VarBuilder, linear: LinearPrecision) -> Result<Self> {
        let v = &cfg.vision;
        let spec = EncoderSpec {
            hidden: v.hidden_size,
            heads: v.num_attention_heads,
            intermediate: v.intermediate_size,
            layers: v.num_hidden_layers,
            act: v.hidden_act,
            eps: v.layer_norm_eps,
            linear,
        };
        let grid = cfg.grid();
        let m = vb.pp("vision_model");
        let emb = m.pp("embeddings");
        let patch = nn::PatchSpec {
            hidden: v.hidden_size,
            channels: v.num_channels,
            patch: v.patch_size,
        };
        // CLIP's patch convolution has no bias (CLIPVisionEmbeddings: bias=False).
        let patch_embedding = nn::patch_embedding(&emb, &patch, false, linear)?;
        Ok(Self {
            patch_embedding,
            class_embedding: emb.get(v.hidden_size, "class_embedding")?,
            position_embedding: emb.get(
                (grid * grid + 1, v.hidden_size),
                "position_embedding.weight",
            )?,
            pre_layrnorm: if cfg.options.vision_ln_pre {
                Some(layer_norm(
                    m.pp("pre_layrnorm"),
                    v.hidden_size,
                    v.layer_norm_eps,
                )?)
            } else {
                None
            },
            encoder: Encoder::new(m.pp("encoder"), &spec)?,
            post_layernorm: layer_norm(m.pp("post_layernorm"), v.hidden_size, v.layer_norm_eps)?,
            // One row per image: f32 costs nothing here, and int8 would only add error.
            projection: Linear::new(
                vb.pp("visual_projection"),
                v.hidden_size,
                cfg.projection_dim,
                false,
                linear.unless_int8(),
            )?,
            pool: cfg.options.vision_pool,
            ln_after_pool: cfg.options.vision_ln_after_pool,
            patch: v.patch_size,
            grid,
            hidden: v.hidden_size,
            dtype: vb.dtype(),
        })
    }

    pub fn device(&self) -> &Device {
        self.class_embedding.device()
    }

    /// Image embeddings (projected, not normalised) of pixels `[batch, 3, size, size]`, as f32.
    pub fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let xs = self.embed(pixels)?;
        let b = xs.dim(0)?;
        let pooled = match self.pool {
            VisionPool::ClassToken => {
                // Pool the class token, then the final layer norm (CLIPVisionTransformer.forward;
                // the norm is per token, so before or after pooling is the same).
                let class_rows = Tensor::zeros(b, DType::U32, xs.device())?;
                let pooled = self.encoder.forward_pooled(&xs, None, &class_rows)?;
                self.post_layernorm.forward(&pooled)?
            }
            VisionPool::MeanOfPatches => {
                // open_clip VisionTransformer._pool: `ln_post` then the mean of x[:, 1:], or with
                // `final_ln_after_pool` the mean first and `ln_post` on it.
                let xs = self.encoder.forward(&xs, None)?;
                let t = xs.dim(1)?;
                if self.ln_after_pool {
                    let mean = xs.narrow(1, 1, t - 1)?.mean(1)?;
                    self.post_layernorm.forward(&mean)?
                } else {
                    let xs = self.post_layernorm.forward(&xs)?;
                    xs.narrow(1, 1, t - 1)?.mean(1)?
                }
            }
        };
        self.projection.forward(&pooled)?.to_dtype(DType::F32)
    }

    /// Per-patch embeddings (projected, not normalised) of pixels `[batch, 3, size, size]`, as f32
    /// `[batch, grid * grid, projection_dim]`, patches row-major: the tower as usual up to the last
    /// encoder layer, whose self-attention is replaced by its value path,
    /// `out_proj(v_proj(layer_norm1(x)))`, with no residual and no MLP (MaskCLIP, Zhou et al. 2022;
    /// ClearCLIP, Lan et al. 2024); then `post_layernorm` and `visual_projection` on every patch
    /// token (the class token is dropped).
    pub fn patch_embeddings(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let xs = self.embed(pixels)?;
        let t = xs.dim(1)?;
        let zs = self
            .encoder
            .forward_value_path(&xs, None)?
            .narrow(1, 1, t - 1)?;
        let zs = self.post_layernorm.forward(&zs)?;
        self.projection.forward(&zs)?.to_dtype(DType::F32)
    }

    /// The patch grid's side: `image_size / patch_size`.
    pub fn grid(&self) -> usize {
        self.grid
    }

    /// Patch and position embeddings and `pre_layrnorm`: the encoder's input `[b, 1 + grid², hidden]`.
    fn embed(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let (b, _, hgt, wid) = pixels.dims4()?;
        let (p, g) = (self.patch, self.grid);
        if hgt != p * g || wid != p * g {
            candle_core::bail!(
                "pixel tensor is {hgt}x{wid}, the model expects {}x{}",
                p * g,
                p * g
            );
        }
        let patches = self
            .patch_embedding
            .forward(&nn::patchify(pixels, self.dtype, g, p)?)?
            .reshape((b, g * g, self.hidden))?;
        let class = self
            .class_embedding
            .reshape((1, 1, self.hidden))?
            .broadcast_as((b, 1, self.hidden))?;
        let xs = Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.position_embedding)?;
        match &self.pre_layrnorm {
            Some(norm) => norm.forward(&xs),
            None => Ok(xs),
        }
    }
}

/// `text_model` + `text_projection`.
#[derive(Debug, Clone)]
pub struct TextTower {
    token_embedding: Tensor,
    position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: nn::LayerNorm,
    projection: Linear,
    pooling: TextPooling,
    max_len: usize,
    hidden: usize,
    pad_id: u32,
}

impl TextTower {
    pub fn new(cfg: &ClipConfig, vb: VarBuilder, linear: LinearPrecision) -> Result<Self> {
        let t = &cfg.text;
        let spec = EncoderSpec {
            hidden: t.hidden_size,
            heads: t.num_attention_heads,
            intermediate: t.intermediate_size,
            layers: t.num_hidden_layers,
            act: t.hidden_act,
            eps: t.layer_norm_eps,
            linear,
        };
        let m = vb.pp("text_model");
        let emb = m.pp("embeddings");
        Ok(Self {
            token_embedding: emb.get((t.vocab_size, t.hidden_size), "token_embedding.weight")?,
            position_embedding: emb.get(
                (t.max_position_embeddings, t.hidden_size),
                "position_embedding.weight",
            )?,
            encoder: Encoder::new(m.pp("encoder"), &spec)?,
            final_layer_norm: layer_norm(
                m.pp("final_layer_norm"),
                t.hidden_size,
                t.layer_norm_eps,
            )?,
            projection: Linear::new(
                vb.pp("text_projection"),
                t.hidden_size,
                cfg.projection_dim,
                cfg.options.text_projection_bias,
                linear,
            )?,
            pooling: cfg.text_pooling(),
            max_len: t.max_position_embeddings,
            hidden: t.hidden_size,
            // Padding never reaches the pooled token (the causal mask hides later positions), so any id
            // in the vocabulary would do; the end token is what CLIP's tokenizer pads with.
            pad_id: match cfg.text_pooling() {
                TextPooling::FirstEos(eos) if (eos as usize) < t.vocab_size => eos,
                _ => 0,
            },
        })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Text embeddings (projected, not normalised) of token id sequences, as f32 `[n, projection_dim]`.
    /// Sequences of different lengths are padded to the longest; each must fit the context.
    pub fn forward(&self, ids: &[Vec<u32>]) -> candle_core::Result<Tensor> {
        let device = self.token_embedding.device();
        let n = ids.len();
        let t = ids.iter().map(Vec::len).max().unwrap_or(0);
        if n == 0 || t == 0 {
            candle_core::bail!("no text to encode");
        }
        if t > self.max_len {
            candle_core::bail!(
                "sequence of {t} tokens exceeds the context of {}",
                self.max_len
            );
        }
        let positions = self.pooling.positions(ids);
        let mut flat = Vec::with_capacity(n * t);
        for seq in ids {
            flat.extend_from_slice(seq);
            flat.extend(std::iter::repeat_n(self.pad_id, t - seq.len()));
        }
        let flat = Tensor::from_vec(flat, n * t, device)?;
        let xs = self
            .token_embedding
            .index_select(&flat, 0)?
            .reshape((n, t, self.hidden))?
            .broadcast_add(&self.position_embedding.narrow(0, 0, t)?)?;
        // Causal mask only. transformers also masks padding, but with a causal mask no position at or
        // before the pooled end token can see the padding after it, so the pooled output is the same.
        let mask = causal_mask(t, xs.dtype(), device)?;
        let rows: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let rows = Tensor::from_vec(rows, n, device)?;
        // The final layer norm is per position, so pooling before it gives the same result.
        let pooled = self.encoder.forward_pooled(&xs, Some(&mask), &rows)?;
        let pooled = self.final_layer_norm.forward(&pooled)?;
        self.projection.forward(&pooled)?.to_dtype(DType::F32)
    }
}

/// A loaded CLIP model: the towers that were asked for and the learned temperature.
#[derive(Debug)]
pub struct Clip {
    pub config: ClipConfig,
    vision: Option<VisionTower>,
    text: Option<TextTower>,
    logit_scale: f32,
}

impl Clip {
    /// Loads from weight files (safetensors or PyTorch; one, or the shards of an index): only the tensors of the
    /// requested towers are read, each straight into its own buffer (see [`weights`]).
    pub fn load(config: ClipConfig, weights: &[PathBuf], opts: &LoadOptions) -> Result<Self> {
        if weights.is_empty() {
            bail!("no weight files");
        }
        let files = weights::Checkpoint::open(weights)?;
        Self::from_backend(config, Box::new(files), opts)
    }

    /// [`Self::load`] from any source of tensors named as `CLIPModel`'s state dict (another
    /// family's checkpoint seen through a renaming backend: OpenCLIP's).
    pub(crate) fn from_backend(
        config: ClipConfig,
        backend: Box<dyn candle_nn::var_builder::SimpleBackend>,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let vb = VarBuilder::from_backend(backend, opts.dtype, opts.device.clone());
        let vision = if opts.towers.vision {
            Some(
                VisionTower::new(&config, vb.clone(), opts.vision)
                    .context("cannot build the vision tower")?,
            )
        } else {
            None
        };
        let text = if opts.towers.text {
            Some(
                TextTower::new(&config, vb.clone(), opts.text)
                    .context("cannot build the text tower")?,
            )
        } else {
            None
        };
        if !vb.contains_tensor("logit_scale") {
            bail!("the checkpoint has no logit_scale tensor: is this a CLIPModel checkpoint?");
        }
        // Checked with the other families' heads, at the seam (`model::checks::score_head`).
        let logit_scale = nn::scalar(&vb, "logit_scale")?;
        Ok(Self {
            config,
            vision,
            text,
            logit_scale,
        })
    }

    /// The learned log temperature (`logit_scale` parameter); similarities are scaled by its exp.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    pub fn vision(&self) -> Result<&VisionTower> {
        self.vision
            .as_ref()
            .context("the vision tower was not loaded")
    }

    pub fn text(&self) -> Result<&TextTower> {
        self.text.as_ref().context("the text tower was not loaded")
    }
}

impl ImageTextModel for Clip {
    fn encode_images(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.vision()?.forward(pixels)?)
    }

    fn encode_texts(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        Ok(self.text()?.forward(ids)?)
    }

    fn patch_embeddings(&self, pixels: &Tensor) -> Result<Option<PatchEmbeddings>> {
        let vision = self.vision()?;
        Ok(Some(PatchEmbeddings {
            embeddings: vision.patch_embeddings(pixels)?,
            rows: vision.grid(),
            cols: vision.grid(),
        }))
    }

    fn head(&self) -> ScoreHead {
        ScoreHead {
            kind: HeadKind::Softmax,
            logit_scale: self.logit_scale,
            logit_bias: 0.0,
        }
    }

    fn device(&self) -> &Device {
        match (&self.vision, &self.text) {
            (Some(v), _) => v.device(),
            (None, Some(t)) => t.token_embedding.device(),
            (None, None) => &Device::Cpu,
        }
    }
}
