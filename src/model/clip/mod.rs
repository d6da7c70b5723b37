//! The CLIP family: OpenAI's and LAION's `CLIPModel` checkpoints (text and vision towers), built from
//! the checkpoint's own config.
//!
//! Parameter paths mirror Hugging Face's `CLIPModel` state dict (`text_model.encoder.layers.0.self_attn.q_proj`,
//! `vision_model.pre_layrnorm`, ...), so a `VarBuilder` over the checkpoint's safetensors loads it as is.
//! Candle's stock `clip` module has fixed presets and quick_gelu only; this one reads every size, the
//! activation and the epsilons from `config.json`, so OpenAI and LAION checkpoints alike load.

pub mod config;

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub(crate) use config::{ClipConfig, TextPooling, TowerOptions, VisionPool};

use crate::model::nn::{self, causal_mask, layer_norm, Encoder, Linear, Linears};
use crate::model::tower::{self, HfConfig, Loaded, PatchEmbedding, TextTransformer};
use crate::model::{
    Family, HeadKind, ImageTextModel, LoadOptions, ModelSpec, Padding, PatchEmbeddings, ScoreHead,
    TextNormalization, TextPolicy,
};

/// The CLIP family in the list of [`crate::model::FAMILIES`].
pub(crate) const FAMILY: Family = Family {
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
        let g = self.vision.grid();
        Some((g, g))
    }
}

/// `vision_model` + `visual_projection`.
#[derive(Debug, Clone)]
pub(crate) struct VisionTower {
    patch_embedding: PatchEmbedding,
    class_embedding: Tensor,
    position_embedding: Tensor,
    /// `None` without it (OpenCLIP `no_ln_pre`).
    pre_layrnorm: Option<nn::LayerNorm>,
    encoder: Encoder,
    post_layernorm: nn::LayerNorm,
    projection: Linear,
    pool: VisionPool,
    ln_after_pool: bool,
}

impl VisionTower {
    pub(crate) fn new(cfg: &ClipConfig, vb: &VarBuilder, linear: Linears) -> Result<Self> {
        let v = &cfg.vision;
        let grid = v.grid();
        let m = vb.pp("vision_model");
        let emb = m.pp("embeddings");
        Ok(Self {
            // CLIP's patch convolution has no bias (CLIPVisionEmbeddings: bias=False).
            patch_embedding: PatchEmbedding::new(&emb, v, false, linear)?,
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
            encoder: Encoder::new(m.pp("encoder"), &v.encoder(linear))?,
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
        })
    }

    /// Image embeddings (projected, not normalised) of pixels `[batch, 3, size, size]`, as f32.
    pub(crate) fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
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
    pub(crate) fn patch_embeddings(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
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
    pub(crate) fn grid(&self) -> usize {
        self.patch_embedding.grid()
    }

    /// Patch and position embeddings and `pre_layrnorm`: the encoder's input `[b, 1 + grid², hidden]`.
    fn embed(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let patches = self.patch_embedding.forward(pixels)?;
        let (b, _, hidden) = patches.dims3()?;
        let class = self
            .class_embedding
            .reshape((1, 1, hidden))?
            .broadcast_as((b, 1, hidden))?;
        let xs = Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.position_embedding)?;
        match &self.pre_layrnorm {
            Some(norm) => norm.forward(&xs),
            None => Ok(xs),
        }
    }
}

/// `text_model` + `text_projection`, pooled at the end token behind a causal mask.
#[derive(Debug, Clone)]
pub(crate) struct TextTower {
    transformer: TextTransformer,
    pooling: TextPooling,
    pad_id: u32,
}

impl TextTower {
    pub(crate) fn new(cfg: &ClipConfig, vb: &VarBuilder, linear: Linears) -> Result<Self> {
        let t = &cfg.text;
        let projection = Linear::new(
            vb.pp("text_projection"),
            t.hidden_size,
            cfg.projection_dim,
            cfg.options.text_projection_bias,
            linear,
        )?;
        let pooling = cfg.text_pooling();
        Ok(Self {
            transformer: TextTransformer::new(&vb.pp("text_model"), t, projection, linear)?,
            pooling,
            // Padding never reaches the pooled token (the causal mask hides later positions), so any id
            // in the vocabulary would do; the end token is what CLIP's tokenizer pads with.
            pad_id: match pooling {
                TextPooling::FirstEos(eos) if (eos as usize) < t.vocab_size => eos,
                _ => 0,
            },
        })
    }

    /// Text embeddings (projected, not normalised) of token id sequences, as f32 `[n, projection_dim]`.
    /// Sequences of different lengths are padded to the longest; each must fit the context.
    pub(crate) fn forward(&self, ids: &[Vec<u32>]) -> candle_core::Result<Tensor> {
        let xs = self.transformer.embed(ids, self.pad_id)?;
        // Causal mask only. transformers also masks padding, but with a causal mask no position at or
        // before the pooled end token can see the padding after it, so the pooled output is the same.
        let mask = causal_mask(xs.dim(1)?, xs.dtype(), xs.device())?;
        self.transformer
            .pool(&xs, Some(&mask), &self.pooling.positions(ids))
    }
}

/// A loaded CLIP model: the towers that were asked for and the learned temperature.
#[derive(Debug)]
pub(crate) struct Clip {
    towers: Loaded<VisionTower, TextTower>,
    logit_scale: f32,
}

impl Clip {
    /// Loads from weight files (safetensors or PyTorch; one, or the shards of an index): only the
    /// tensors of the requested towers are read (see [`tower::open`]).
    pub(crate) fn load(
        config: ClipConfig,
        weights: &[PathBuf],
        opts: &LoadOptions,
    ) -> Result<Self> {
        Self::from_vb(config, &tower::open(weights, opts)?, opts)
    }

    /// [`Self::load`] from any source of tensors named as `CLIPModel`'s state dict (another
    /// family's checkpoint seen through a renaming backend: OpenCLIP's).
    pub(crate) fn from_vb(config: ClipConfig, vb: &VarBuilder, opts: &LoadOptions) -> Result<Self> {
        let towers = Loaded::new(
            vb,
            opts,
            |vb, linear| VisionTower::new(&config, vb, linear),
            |vb, linear| TextTower::new(&config, vb, linear),
        )?;
        // Checked with the other families' heads, at the seam (`model::checks::score_head`).
        let logit_scale = tower::head_scalar(vb, "logit_scale", "CLIPModel")?;
        Ok(Self {
            towers,
            logit_scale,
        })
    }

    /// The learned log temperature (`logit_scale` parameter); similarities are scaled by its exp.
    pub(crate) fn logit_scale(&self) -> f32 {
        self.logit_scale
    }
}

impl ImageTextModel for Clip {
    fn encode_images(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.towers.vision()?.forward(pixels)?)
    }

    fn encode_texts(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        Ok(self.towers.text()?.forward(ids)?)
    }

    fn patch_embeddings(&self, pixels: &Tensor) -> Result<Option<PatchEmbeddings>> {
        let vision = self.towers.vision()?;
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
        self.towers.device()
    }
}
