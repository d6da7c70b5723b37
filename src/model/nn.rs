//! Building blocks shared by the model families: a CPU-friendly linear layer, layer norm, the
//! activations transformers names in its configs, and the pre-norm transformer encoder that CLIP and
//! SigLIP both use (`layer_norm1`, `self_attn.{q,k,v,out}_proj`, `layer_norm2`, `mlp.fc1/fc2`: the
//! parameter paths of `CLIPEncoderLayer` and `SiglipEncoderLayer` alike).

use anyhow::{Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

/// The activation of the MLP blocks. OpenAI checkpoints use `quick_gelu`; LAION's use `gelu` (exact,
/// erf); SigLIP's `gelu_pytorch_tanh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    QuickGelu,
    Gelu,
    /// transformers' `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
}

/// `nn.Linear`, applied to a `[batch, seq, in]` input as one 2-D matrix product: Candle would otherwise
/// broadcast the weight into a batched product, which is slower on CPU.
#[derive(Debug, Clone)]
pub struct Linear {
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
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

    /// From a `[out, in]` weight and an optional `[out]` bias already read (e.g. slices of a packed
    /// `in_proj_weight`).
    pub fn from_weights(weight: &Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self {
            weight_t: weight.t()?,
            bias,
        })
    }

    /// Several projections of the same input fused into one, e.g. q, k and v: one wider product instead
    /// of three narrow ones.
    pub fn fused(parts: Vec<Linear>) -> Result<Self> {
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

    /// The outputs `start..start + len` of this layer as a layer of their own (e.g. v out of a
    /// fused q/k/v), copied out of the fused weight.
    pub fn output_slice(&self, start: usize, len: usize) -> candle_core::Result<Linear> {
        Ok(Linear {
            weight_t: self.weight_t.narrow(1, start, len)?.contiguous()?,
            bias: match &self.bias {
                Some(b) => Some(b.narrow(0, start, len)?.contiguous()?),
                None => None,
            },
        })
    }

    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
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

/// A scalar parameter (`logit_scale`, `logit_bias`), stored as `()` or `[1]`, read as f32.
pub fn scalar(vb: &VarBuilder, name: &str) -> Result<f32> {
    let t = vb
        .get_with_hints_dtype((), name, Default::default(), DType::F32)
        .or_else(|_| {
            vb.get_with_hints_dtype(1, name, Default::default(), DType::F32)
                .and_then(|t| t.squeeze(0))
        })
        .with_context(|| format!("cannot read {name}"))?;
    Ok(t.to_scalar::<f32>()?)
}

/// A ViT patch convolution (stride == kernel size) as one matrix over non-overlapping patches: the
/// kernel `patch_embedding.weight` `[hidden, c, p, p]` flattened and transposed to `[c*p*p, hidden]`
/// once at load. CLIP and SigLIP store it alike.
pub fn patch_kernel(
    emb: &VarBuilder,
    hidden: usize,
    channels: usize,
    patch: usize,
) -> Result<Tensor> {
    let weight = emb.get((hidden, channels, patch, patch), "patch_embedding.weight")?;
    Ok(weight
        .reshape((hidden, channels * patch * patch))?
        .t()?
        .contiguous()?)
}

/// Pixels `[b, c, g*p, g*p]` as rows of patches `[b*g*g, c*p*p]` (row-major over the grid), in
/// `dtype`, ready for [`patch_kernel`]'s matrix.
pub fn patchify(pixels: &Tensor, dtype: DType, g: usize, p: usize) -> candle_core::Result<Tensor> {
    let (b, c, _, _) = pixels.dims4()?;
    pixels
        .to_dtype(dtype)?
        .reshape((b, c, g, p, g, p))?
        .permute((0, 2, 4, 1, 3, 5))?
        .contiguous()?
        .reshape((b * g * g, c * p * p))
}

pub fn layer_norm(vb: VarBuilder, dim: usize, eps: f64) -> Result<candle_nn::LayerNorm> {
    let weight = vb.get(dim, "weight")?;
    let bias = vb.get(dim, "bias")?;
    Ok(candle_nn::LayerNorm::new(weight, bias, eps))
}

pub fn activate(act: Activation, xs: &Tensor) -> candle_core::Result<Tensor> {
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
pub struct EncoderSpec {
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub act: Activation,
    pub eps: f64,
}

#[derive(Debug, Clone)]
pub struct Attention {
    qkv: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    pub fn new(vb: VarBuilder, spec: &EncoderSpec) -> Result<Self> {
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

    /// The value path alone: `out_proj(v_proj(xs))` at every position, as if each position attended
    /// only to itself (MaskCLIP / ClearCLIP). v's weights are sliced out of the fused q/k/v on each
    /// call, so the normal path keeps its single fused product and no extra copy is held.
    fn value_path(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let d = self.heads * self.head_dim;
        let v = self.qkv.output_slice(2 * d, d)?;
        self.out_proj.forward(&v.forward(xs)?)
    }
}

#[derive(Debug, Clone)]
pub struct EncoderLayer {
    layer_norm1: candle_nn::LayerNorm,
    self_attn: Attention,
    layer_norm2: candle_nn::LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    pub fn new(vb: VarBuilder, spec: &EncoderSpec) -> Result<Self> {
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

impl EncoderLayer {
    /// The layer with self-attention replaced by its value path and without the residual or the
    /// MLP: `out_proj(v_proj(layer_norm1(xs)))` at every position.
    fn value_path(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.self_attn.value_path(&self.layer_norm1.forward(xs)?)
    }
}

#[derive(Debug, Clone)]
pub struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    pub fn new(vb: VarBuilder, spec: &EncoderSpec) -> Result<Self> {
        let layers = (0..spec.layers)
            .map(|i| EncoderLayer::new(vb.pp(format!("layers.{i}")), spec))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Hidden states after every layer, at every position: `[b, t, d]`.
    pub fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let mut xs = xs.clone();
        for layer in &self.layers {
            xs = layer.forward(&xs, mask, None)?;
        }
        Ok(xs)
    }

    /// Hidden states after the last layer at one position per sequence (`rows`, `[b]` u32):
    /// `[b, d]`. Only what feeds those positions is computed in the last layer.
    pub fn forward_pooled(
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

impl Encoder {
    /// Every layer but the last as usual, then the last one's value path
    /// ([`EncoderLayer`]'s `out_proj(v_proj(layer_norm1(x)))`, no residual, no MLP), at every
    /// position: `[b, t, d]`. The dense per-position features of MaskCLIP / ClearCLIP.
    pub fn forward_value_path(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let Some((last, body)) = self.layers.split_last() else {
            candle_core::bail!("an encoder without layers has no value path");
        };
        let mut xs = xs.clone();
        for layer in body {
            xs = layer.forward(&xs, mask, None)?;
        }
        last.value_path(&xs)
    }
}

pub fn causal_mask(t: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (t, t), device)?.to_dtype(dtype)
}
