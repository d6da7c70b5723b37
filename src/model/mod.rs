//! The CLIP network (text and vision towers), built from a checkpoint's own config.
//!
//! Parameter paths mirror Hugging Face's `CLIPModel` state dict (`text_model.encoder.layers.0.self_attn.q_proj`,
//! `vision_model.pre_layrnorm`, ...), so a `VarBuilder` over the checkpoint's safetensors loads it as is.
//! Candle's stock `clip` module has fixed presets and quick_gelu only; this one reads every size, the
//! activation and the epsilons from `config.json`, so OpenAI and LAION checkpoints alike load.

pub mod checks;
pub mod config;
pub mod weights;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

pub use config::{Activation, ClipConfig, TextPooling};

/// `nn.Linear`, applied to a `[batch, seq, in]` input as one 2-D matrix product: Candle would otherwise
/// broadcast the weight into a batched product, which is slower on CPU.
#[derive(Debug, Clone)]
struct Linear {
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn new(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight_t: weight.t()?,
            bias,
        })
    }

    /// Several projections of the same input fused into one, e.g. q, k and v: one wider product instead
    /// of three narrow ones.
    fn fused(parts: Vec<Linear>) -> Result<Self> {
        let weights: Vec<&Tensor> = parts.iter().map(|l| &l.weight_t).collect();
        let weight_t = Tensor::cat(&weights, 1)?;
        let bias = match parts
            .iter()
            .map(|l| l.bias.as_ref())
            .collect::<Option<Vec<_>>>()
        {
            Some(biases) => Some(Tensor::cat(&biases, 0)?),
            None => None,
        };
        Ok(Self { weight_t, bias })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let dims = xs.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let ys = xs.reshape((rows, in_dim))?.matmul(&self.weight_t)?;
        let ys = match &self.bias {
            Some(b) => ys.broadcast_add(b)?,
            None => ys,
        };
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = ys.dim(1)?;
        ys.reshape(out_dims)
    }
}

fn layer_norm(vb: VarBuilder, dim: usize, eps: f64) -> Result<candle_nn::LayerNorm> {
    let weight = vb.get(dim, "weight")?;
    let bias = vb.get(dim, "bias")?;
    Ok(candle_nn::LayerNorm::new(weight, bias, eps))
}

fn activate(act: Activation, xs: &Tensor) -> candle_core::Result<Tensor> {
    match act {
        // transformers' QuickGELUActivation: x * sigmoid(1.702 * x).
        Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
        // transformers' "gelu" is PyTorch's exact, erf-based GELU.
        Activation::Gelu => xs.gelu_erf(),
        Activation::GeluTanh => xs.gelu(),
    }
}

/// Sizes shared by the encoder layers of one tower.
#[derive(Debug, Clone, Copy)]
struct EncoderSpec {
    hidden: usize,
    heads: usize,
    intermediate: usize,
    layers: usize,
    act: Activation,
    eps: f64,
}

#[derive(Debug, Clone)]
struct Attention {
    qkv: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    fn new(vb: VarBuilder, spec: &EncoderSpec) -> Result<Self> {
        let h = spec.hidden;
        let q = Linear::new(vb.pp("q_proj"), h, h, true)?;
        let k = Linear::new(vb.pp("k_proj"), h, h, true)?;
        let v = Linear::new(vb.pp("v_proj"), h, h, true)?;
        let head_dim = h / spec.heads;
        Ok(Self {
            qkv: Linear::fused(vec![q, k, v])?,
            out_proj: Linear::new(vb.pp("out_proj"), h, h, true)?,
            heads: spec.heads,
            head_dim,
            // CLIPAttention: scale = head_dim ** -0.5, applied to the q·k products.
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// Self-attention for the query positions `rows` (every position when `None`), over keys and
    /// values from every position. The last encoder layer only needs the pooled token's output,
    /// so asking for that one row skips almost all of that layer's work with the same result.
    fn forward(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
        rows: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, d) = xs.dims3()?;
        let (h, hd) = (self.heads, self.head_dim);
        // [b, t, 3d] -> [3, b, h, t, hd]
        let qkv = self
            .qkv
            .forward(xs)?
            .reshape((b, t, 3, h, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let mut q = qkv.get(0)?;
        let mut mask = mask.cloned();
        if let Some(rows) = rows {
            // [b, h, t, hd] -> [b, h, 1, hd]: each sequence's own query row.
            q = q.gather(
                &rows
                    .reshape((b, 1, 1, 1))?
                    .broadcast_as((b, h, 1, hd))?
                    .contiguous()?,
                2,
            )?;
            if let Some(m) = mask {
                // [t, t] -> [b, 1, 1, t]: the mask rows of those queries.
                mask = Some(
                    m.index_select(&rows.flatten_all()?, 0)?
                        .reshape((b, 1, 1, t))?,
                );
            }
        }
        let tq = q.dim(2)?;
        let q = q.reshape((b * h, tq, hd))?;
        let k = qkv.get(1)?.reshape((b * h, t, hd))?;
        let v = qkv.get(2)?.reshape((b * h, t, hd))?;
        let scores = (q.matmul(&k.t()?)? * self.scale)?;
        let scores = match &mask {
            Some(m) if m.rank() == 2 => scores.broadcast_add(m)?,
            Some(m) => scores
                .reshape((b, h, tq, t))?
                .broadcast_add(m)?
                .reshape((b * h, tq, t))?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs
            .matmul(&v)?
            .reshape((b, h, tq, hd))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, tq, d))?;
        self.out_proj.forward(&ctx)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: candle_nn::LayerNorm,
    self_attn: Attention,
    layer_norm2: candle_nn::LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, spec: &EncoderSpec) -> Result<Self> {
        Ok(Self {
            layer_norm1: layer_norm(vb.pp("layer_norm1"), spec.hidden, spec.eps)?,
            self_attn: Attention::new(vb.pp("self_attn"), spec)?,
            layer_norm2: layer_norm(vb.pp("layer_norm2"), spec.hidden, spec.eps)?,
            fc1: Linear::new(vb.pp("mlp.fc1"), spec.hidden, spec.intermediate, true)?,
            fc2: Linear::new(vb.pp("mlp.fc2"), spec.intermediate, spec.hidden, true)?,
            act: spec.act,
        })
    }

    /// The layer's output at `rows` (one position per sequence, `[b]` u32), or everywhere.
    fn forward(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
        rows: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let attn = self
            .self_attn
            .forward(&self.layer_norm1.forward(xs)?, mask, rows)?;
        let residual = match rows {
            Some(rows) => {
                let (b, _, d) = xs.dims3()?;
                xs.gather(
                    &rows
                        .reshape((b, 1, 1))?
                        .broadcast_as((b, 1, d))?
                        .contiguous()?,
                    1,
                )?
            }
            None => xs.clone(),
        };
        let xs = (residual + attn)?;
        let hidden = self.fc1.forward(&self.layer_norm2.forward(&xs)?)?;
        let mlp = self.fc2.forward(&activate(self.act, &hidden)?)?;
        xs + mlp
    }
}

#[derive(Debug, Clone)]
struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    fn new(vb: VarBuilder, spec: &EncoderSpec) -> Result<Self> {
        let layers = (0..spec.layers)
            .map(|i| EncoderLayer::new(vb.pp(format!("layers.{i}")), spec))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Hidden states after the last layer at one position per sequence (`rows`, `[b]` u32):
    /// `[b, d]`. Only what feeds those positions is computed in the last layer.
    fn forward_pooled(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
        rows: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let Some((last, body)) = self.layers.split_last() else {
            let (b, _, d) = xs.dims3()?;
            return xs
                .gather(
                    &rows
                        .reshape((b, 1, 1))?
                        .broadcast_as((b, 1, d))?
                        .contiguous()?,
                    1,
                )?
                .squeeze(1);
        };
        let mut xs = xs.clone();
        for layer in body {
            xs = layer.forward(&xs, mask, None)?;
        }
        last.forward(&xs, mask, Some(rows))?.squeeze(1)
    }
}

/// `vision_model` + `visual_projection`.
#[derive(Debug, Clone)]
pub struct VisionTower {
    patch_weight_t: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: candle_nn::LayerNorm,
    encoder: Encoder,
    post_layernorm: candle_nn::LayerNorm,
    projection: Linear,
    patch: usize,
    grid: usize,
    hidden: usize,
    dtype: DType,
}

impl VisionTower {
    pub fn new(cfg: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        let v = &cfg.vision;
        let spec = EncoderSpec {
            hidden: v.hidden_size,
            heads: v.num_attention_heads,
            intermediate: v.intermediate_size,
            layers: v.num_hidden_layers,
            act: v.hidden_act,
            eps: v.layer_norm_eps,
        };
        let grid = cfg.grid();
        let m = vb.pp("vision_model");
        let emb = m.pp("embeddings");
        let patch_weight = emb.get(
            (v.hidden_size, v.num_channels, v.patch_size, v.patch_size),
            "patch_embedding.weight",
        )?;
        // The patch convolution has stride == kernel size, so it is one matrix product over
        // non-overlapping patches: flatten the kernel to [hidden, c*p*p] once here.
        let patch_weight_t = patch_weight
            .reshape((v.hidden_size, v.num_channels * v.patch_size * v.patch_size))?
            .t()?
            .contiguous()?;
        Ok(Self {
            patch_weight_t,
            class_embedding: emb.get(v.hidden_size, "class_embedding")?,
            position_embedding: emb.get(
                (grid * grid + 1, v.hidden_size),
                "position_embedding.weight",
            )?,
            pre_layrnorm: layer_norm(m.pp("pre_layrnorm"), v.hidden_size, v.layer_norm_eps)?,
            encoder: Encoder::new(m.pp("encoder"), &spec)?,
            post_layernorm: layer_norm(m.pp("post_layernorm"), v.hidden_size, v.layer_norm_eps)?,
            projection: Linear::new(
                vb.pp("visual_projection"),
                v.hidden_size,
                cfg.projection_dim,
                false,
            )?,
            patch: v.patch_size,
            grid,
            hidden: v.hidden_size,
            dtype: vb.dtype(),
        })
    }

    pub fn device(&self) -> &Device {
        self.patch_weight_t.device()
    }

    /// Image embeddings (projected, not normalised) of pixels `[batch, 3, size, size]`, as f32.
    pub fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, hgt, wid) = pixels.dims4()?;
        let (p, g) = (self.patch, self.grid);
        if hgt != p * g || wid != p * g {
            candle_core::bail!(
                "pixel tensor is {hgt}x{wid}, the model expects {}x{}",
                p * g,
                p * g
            );
        }
        let patches = pixels
            .to_dtype(self.dtype)?
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        let patches = patches
            .matmul(&self.patch_weight_t)?
            .reshape((b, g * g, self.hidden))?;
        let class = self
            .class_embedding
            .reshape((1, 1, self.hidden))?
            .broadcast_as((b, 1, self.hidden))?;
        let xs = Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.position_embedding)?;
        let xs = self.pre_layrnorm.forward(&xs)?;
        // Pool the class token, then the final layer norm (CLIPVisionTransformer.forward).
        let class_rows = Tensor::zeros(b, DType::U32, xs.device())?;
        let pooled = self.encoder.forward_pooled(&xs, None, &class_rows)?;
        let pooled = self.post_layernorm.forward(&pooled)?;
        self.projection.forward(&pooled)?.to_dtype(DType::F32)
    }
}

/// `text_model` + `text_projection`.
#[derive(Debug, Clone)]
pub struct TextTower {
    token_embedding: Tensor,
    position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: candle_nn::LayerNorm,
    projection: Linear,
    pooling: TextPooling,
    max_len: usize,
    hidden: usize,
    pad_id: u32,
}

impl TextTower {
    pub fn new(cfg: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        let t = &cfg.text;
        let spec = EncoderSpec {
            hidden: t.hidden_size,
            heads: t.num_attention_heads,
            intermediate: t.intermediate_size,
            layers: t.num_hidden_layers,
            act: t.hidden_act,
            eps: t.layer_norm_eps,
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
                false,
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

fn causal_mask(t: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (t, t), device)?.to_dtype(dtype)
}

/// Which towers to materialise: a run whose text embeddings are all known needs no text tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Towers {
    pub vision: bool,
    pub text: bool,
}

impl Towers {
    pub const BOTH: Towers = Towers {
        vision: true,
        text: true,
    };
}

/// Where and how to run the network.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
    pub towers: Towers,
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
    /// Loads from safetensors files (one, or the shards of an index): only the tensors of the
    /// requested towers are read, each straight into its own buffer (see [`weights`]).
    pub fn load(config: ClipConfig, weights: &[PathBuf], opts: &LoadOptions) -> Result<Self> {
        if weights.is_empty() {
            bail!("no weight files");
        }
        let files = weights::Safetensors::open(weights)?;
        let vb = VarBuilder::from_backend(Box::new(files), opts.dtype, opts.device.clone());
        let vision = if opts.towers.vision {
            Some(VisionTower::new(&config, vb.clone()).context("cannot build the vision tower")?)
        } else {
            None
        };
        let text = if opts.towers.text {
            Some(TextTower::new(&config, vb.clone()).context("cannot build the text tower")?)
        } else {
            None
        };
        let logit_scale = if vb.contains_tensor("logit_scale") {
            vb.get_with_hints_dtype((), "logit_scale", Default::default(), DType::F32)
                .or_else(|_| {
                    vb.get_with_hints_dtype(1, "logit_scale", Default::default(), DType::F32)
                        .and_then(|t| t.squeeze(0))
                })
                .context("cannot read logit_scale")?
                .to_scalar::<f32>()?
        } else {
            bail!("the checkpoint has no logit_scale tensor: is this a CLIPModel checkpoint?");
        };
        let logit_scale = checks::logit_scale(logit_scale)?;
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
