//! The SigLIP family: Google's `SiglipModel` checkpoints, SigLIP (v1: `google/siglip-*`) and the
//! fixed-resolution SigLIP 2 ones (`google/siglip2-*-patch16-224` ..., also `model_type` "siglip"),
//! built from the checkpoint's own config.
//!
//! Parameter paths mirror transformers' `SiglipModel` state dict (`text_model.head`,
//! `vision_model.head.attention.in_proj_weight`, ...). The encoder layers are CLIP's
//! ([`nn::Encoder`]); what differs:
//!
//! - **Text**: no attention mask at all. Every text is padded to the full 64 positions (by the
//!   tokenizer, [`Padding::Full`]) and the model attends to the padding; the embedding is the
//!   *last* position's hidden state after `final_layer_norm`, through the `head` linear layer.
//! - **Vision**: a patch convolution with a bias, no class token and no pre-layernorm; after the
//!   encoder and `post_layernorm`, a multi-head attention-pooling head (one learned `probe` query
//!   attends over all patches, then a residual MLP) gives the embedding. No projection.
//! - **Scores**: `sigmoid(exp(logit_scale) · cos + logit_bias)` per label ([`HeadKind::Sigmoid`]).
//!
//! NaFlex SigLIP 2 checkpoints (`model_type` "siglip2": variable resolution and aspect ratio) are a
//! different architecture and are refused by name.

pub(crate) mod config;
pub mod text;

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub(crate) use config::SiglipConfig;

use crate::model::nn::{self, layer_norm, Activation, Encoder, Linear, Linears};
use crate::model::tower::{self, HfConfig, Loaded, PatchEmbedding, TextTransformer};
use crate::model::{
    Family, HeadKind, ImageTextModel, LoadOptions, ModelSpec, Padding, ScoreHead, TextPolicy,
};

/// The SigLIP family in the list of [`crate::model::FAMILIES`].
pub(crate) const FAMILY: Family = Family {
    name: "siglip",
    model_types: &["siglip"],
    refused: &[(
        "siglip2",
        "is SigLIP 2 NaFlex (variable resolution and aspect ratio), which vlm does not run; use a fixed-resolution SigLIP 2 checkpoint such as google/siglip2-base-patch16-224 (model_type \"siglip\")",
    )],
    parse: |text| Ok(Box::new(SiglipConfig::from_json(text)?)),
    head: Some(crate::model::HeadKind::Sigmoid),
    layout: &crate::model::layout::TRANSFORMERS,
    processors: &[config::IMAGE_PROCESSOR],
};

impl ModelSpec for SiglipConfig {
    fn family(&self) -> &'static str {
        FAMILY.name
    }

    fn image_size(&self) -> usize {
        self.vision.image_size
    }

    fn text_policy(&self) -> TextPolicy {
        TextPolicy {
            context_len: self.text.max_position_embeddings,
            padding: Padding::Full,
            normalization: self.text_normalization(),
        }
    }

    fn head_kind(&self) -> HeadKind {
        HeadKind::Sigmoid
    }

    /// transformers' zero-shot-image-classification pipeline's default for SigLIP.
    fn default_template(&self) -> &'static str {
        "This is a photo of {}."
    }

    fn load(&self, weights: &[PathBuf], opts: &LoadOptions) -> Result<Box<dyn ImageTextModel>> {
        Ok(Box::new(Siglip::load(self.clone(), weights, opts)?))
    }
}

/// `fc1`, the activation, `fc2`: `SiglipMLP`.
#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    fn new(vb: VarBuilder, v: &config::VisionConfig, linear: Linears) -> Result<Self> {
        let (hidden, intermediate) = (v.hidden_size, v.intermediate_size);
        Ok(Self {
            fc1: Linear::new(vb.pp("fc1"), hidden, intermediate, true, linear)?,
            fc2: Linear::new(vb.pp("fc2"), intermediate, hidden, true, linear)?,
            act: v.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.fc2
            .forward(&nn::activate(self.act, &self.fc1.forward(xs)?)?)
    }
}

/// `SiglipMultiheadAttentionPoolingHead`: `x = MultiheadAttention(probe, h, h)`, then
/// `x + mlp(layernorm(x))`, at the probe's one position.
#[derive(Debug, Clone)]
struct PoolingHead {
    /// The probe's query projection, `[heads, 1, head_dim]`: the same for every image, so it is
    /// computed once at load.
    query: Tensor,
    /// Keys and values of the patches, from the packed `in_proj_weight`'s last two thirds.
    kv: Linear,
    out_proj: Linear,
    layernorm: nn::LayerNorm,
    mlp: Mlp,
    heads: usize,
    head_dim: usize,
}

impl PoolingHead {
    fn new(vb: VarBuilder, v: &config::VisionConfig, linear: Linears) -> Result<Self> {
        let d = v.hidden_size;
        let heads = v.num_attention_heads;
        let head_dim = d / heads;
        let attn = vb.pp("attention");
        // nn.MultiheadAttention packs q, k and v: rows [0, d) are q, [d, 2d) k, [2d, 3d) v.
        let in_w = attn.get((3 * d, d), "in_proj_weight")?;
        let in_b = attn.get(3 * d, "in_proj_bias")?;
        let probe = vb.get((1, 1, d), "probe")?;
        // Computed once, for one row: f32 costs nothing here.
        let q_proj = Linear::from_weights(
            &format!("{}.in_proj.q", attn.prefix()),
            &in_w.narrow(0, 0, d)?,
            Some(&in_b.narrow(0, 0, d)?),
            Linears::F32,
        )?;
        let query = q_proj
            .forward(&probe)?
            .reshape((1, heads, head_dim))?
            .transpose(0, 1)?
            .contiguous()?;
        let kv = Linear::from_weights(
            &format!("{}.in_proj.kv", attn.prefix()),
            &in_w.narrow(0, d, 2 * d)?,
            Some(&in_b.narrow(0, d, 2 * d)?),
            linear,
        )?;
        Ok(Self {
            query,
            kv,
            // One row per image from here on: under 1% of the tower's work, so f32 whatever the
            // precision (bf16 would only add rounding).
            out_proj: Linear::new(attn.pp("out_proj"), d, d, true, Linears::F32)?,
            layernorm: layer_norm(vb.pp("layernorm"), d, v.layer_norm_eps)?,
            mlp: Mlp::new(vb.pp("mlp"), v, Linears::F32)?,
            heads,
            head_dim,
        })
    }

    /// `[b, t, d]` hidden states to `[b, d]`.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, d) = xs.dims3()?;
        let (h, hd) = (self.heads, self.head_dim);
        // [b, t, 2d] -> [2, b, h, t, hd]
        let kv = self
            .kv
            .forward(xs)?
            .reshape((b, t, 2, h, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let k = kv.get(0)?.reshape((b * h, t, hd))?;
        let v = kv.get(1)?.reshape((b * h, t, hd))?;
        let q = self
            .query
            .unsqueeze(0)?
            .broadcast_as((b, h, 1, hd))?
            .contiguous()?
            .reshape((b * h, 1, hd))?;
        // nn.MultiheadAttention scales by head_dim ** -0.5, as the encoder layers do.
        let scores = (q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.reshape((b, 1, d))?;
        let x = self.out_proj.forward(&ctx)?;
        let x = (&x + self.mlp.forward(&self.layernorm.forward(&x)?)?)?;
        x.squeeze(1)
    }
}

/// `vision_model`: patch embedding, encoder, `post_layernorm`, attention-pooling head.
#[derive(Debug, Clone)]
pub(crate) struct VisionTower {
    patch_embedding: PatchEmbedding,
    position_embedding: Tensor,
    encoder: Encoder,
    post_layernorm: nn::LayerNorm,
    head: PoolingHead,
}

impl VisionTower {
    pub(crate) fn new(cfg: &SiglipConfig, vb: &VarBuilder, linear: Linears) -> Result<Self> {
        let v = &cfg.vision;
        let grid = v.grid();
        let m = vb.pp("vision_model");
        let emb = m.pp("embeddings");
        Ok(Self {
            patch_embedding: PatchEmbedding::new(&emb, v, true, linear)?,
            position_embedding: emb
                .get((grid * grid, v.hidden_size), "position_embedding.weight")?,
            encoder: Encoder::new(m.pp("encoder"), &v.encoder(linear))?,
            post_layernorm: layer_norm(m.pp("post_layernorm"), v.hidden_size, v.layer_norm_eps)?,
            head: PoolingHead::new(m.pp("head"), v, linear)?,
        })
    }

    /// Image embeddings (not normalised) of pixels `[batch, 3, size, size]`, as f32.
    pub(crate) fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let xs = self
            .patch_embedding
            .forward(pixels)?
            .broadcast_add(&self.position_embedding)?;
        // The pooling head attends to every position, so the whole last layer is needed.
        let xs = self.encoder.forward(&xs, None)?;
        let xs = self.post_layernorm.forward(&xs)?;
        self.head.forward(&xs)?.to_dtype(DType::F32)
    }
}

/// `text_model`: embeddings, encoder without a mask, `final_layer_norm`, `head`.
#[derive(Debug, Clone)]
pub(crate) struct TextTower {
    transformer: TextTransformer,
}

impl TextTower {
    pub(crate) fn new(cfg: &SiglipConfig, vb: &VarBuilder, linear: Linears) -> Result<Self> {
        let t = &cfg.text;
        let m = vb.pp("text_model");
        let head = Linear::new(
            m.pp("head"),
            t.hidden_size,
            t.projection_size(),
            true,
            linear,
        )?;
        Ok(Self {
            transformer: TextTransformer::new(&m, t, head, linear)?,
        })
    }

    /// Text embeddings (not normalised) of token id sequences, each already padded to the full
    /// context (the model sees the padding, so it must be the tokenizer's), as f32
    /// `[n, projection_size]`.
    pub(crate) fn forward(&self, ids: &[Vec<u32>]) -> candle_core::Result<Tensor> {
        let t = self.transformer.context();
        if let Some(seq) = ids.iter().find(|s| s.len() != t) {
            candle_core::bail!(
                "a SigLIP text must be padded to exactly {t} tokens, got a sequence of {}",
                seq.len()
            );
        }
        // Nothing to pad: every sequence is the context long.
        let xs = self.transformer.embed(ids, 0)?;
        // No mask: SigLIP's text attends to its padding (transformers passes no attention_mask).
        // Pooled at the last position.
        self.transformer.pool(&xs, None, &vec![t - 1; ids.len()])
    }
}

/// A loaded SigLIP model: the towers that were asked for and the learned sigmoid parameters.
#[derive(Debug)]
pub(crate) struct Siglip {
    towers: Loaded<VisionTower, TextTower>,
    logit_scale: f32,
    logit_bias: f32,
}

impl Siglip {
    /// Loads from weight files (safetensors or PyTorch; one, or the shards of an index): only the
    /// tensors of the requested towers are read (see [`tower::open`]).
    pub(crate) fn load(
        config: SiglipConfig,
        weights: &[PathBuf],
        opts: &LoadOptions,
    ) -> Result<Self> {
        let vb = tower::open(weights, opts)?;
        let towers = Loaded::new(
            &vb,
            opts,
            |vb, linear| VisionTower::new(&config, vb, linear),
            |vb, linear| TextTower::new(&config, vb, linear),
        )?;
        // Checked with the other families' heads, at the seam (`model::checks::score_head`).
        let logit_scale = tower::head_scalar(&vb, "logit_scale", "SiglipModel")?;
        let logit_bias = tower::head_scalar(&vb, "logit_bias", "SiglipModel")?;
        Ok(Self {
            towers,
            logit_scale,
            logit_bias,
        })
    }
}

impl ImageTextModel for Siglip {
    fn encode_images(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.towers.vision()?.forward(pixels)?)
    }

    fn encode_texts(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        Ok(self.towers.text()?.forward(ids)?)
    }

    fn head(&self) -> ScoreHead {
        ScoreHead {
            kind: HeadKind::Sigmoid,
            logit_scale: self.logit_scale,
            logit_bias: self.logit_bias,
        }
    }

    fn device(&self) -> &Device {
        self.towers.device()
    }
}
