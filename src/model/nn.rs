//! Building blocks shared by the model families: a CPU-friendly linear layer, layer norm, the
//! activations transformers names in its configs, and the pre-norm transformer encoder that CLIP and
//! SigLIP both use (`layer_norm1`, `self_attn.{q,k,v,out}_proj`, `layer_norm2`, `mlp.fc1/fc2`: the
//! parameter paths of `CLIPEncoderLayer` and `SiglipEncoderLayer` alike).

use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::packs::PackStore;
use crate::kernels::attention::{attention, AttentionShape, Queries};
use crate::kernels::{self, elementwise, Epilogue};

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

/// How the linear layers of a model multiply on the CPU (ignored on other devices, where Candle
/// multiplies in the tensors' own dtype).
pub(crate) use crate::kernels::Precision as LinearPrecision;

/// How a tower's linear layers are made: their precision, and the packed-weight cache that
/// layers packed at load are read from and kept for (`None`: packed from the checkpoint).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Linears<'a> {
    pub precision: LinearPrecision,
    pub packs: Option<&'a PackStore>,
}

impl Linears<'_> {
    /// f32 layers (nothing packed at load, so nothing cached).
    pub(crate) const F32: Linears<'static> = Linears {
        precision: LinearPrecision::F32,
        packs: None,
    };

    /// The same, in f32 where the precision is int8 (see [`LinearPrecision::unless_int8`]).
    pub(crate) fn unless_int8(self) -> Self {
        Self {
            precision: self.precision.unless_int8(),
            ..self
        }
    }
}

/// `nn.Linear`: on the CPU through [`kernels::Linear`](crate::kernels::Linear): f32 over the
/// weights where they are (packed on first use by a batch), bf16 (where the CPU multiplies it
/// natively) over weights packed once at load; elsewhere Candle's matmul, as one 2-D product
/// over all leading dimensions.
#[derive(Debug, Clone)]
pub(crate) struct Linear(Arc<kernels::Linear>);

impl Linear {
    /// `weight` and (if `bias`) `bias` under `vb`, `[out_dim, in_dim]` and `[out_dim]`.
    pub(crate) fn new(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        linear: Linears,
    ) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Self::from_weights(&vb.prefix(), &weight, bias.as_ref(), linear)
    }

    /// From a `[out, in]` weight and an optional `[out]` bias already read (e.g. slices of a packed
    /// `in_proj_weight`); `name` identifies the layer in the packed-weight cache (its path in the
    /// checkpoint).
    pub(crate) fn from_weights(
        name: &str,
        weight: &Tensor,
        bias: Option<&Tensor>,
        linear: Linears,
    ) -> Result<Self> {
        Self::from_parts(name, std::slice::from_ref(weight), bias, linear)
    }

    /// Several projections of the same input as one wider layer (q, k and v: one product
    /// instead of three narrow ones), from each part's `weight` and `bias` under `vb`.
    pub(crate) fn fused(
        vb: &VarBuilder,
        parts: &[&str],
        in_dim: usize,
        out_dim: usize,
        linear: Linears,
    ) -> Result<Self> {
        let mut weights = Vec::with_capacity(parts.len());
        let mut biases = Vec::with_capacity(parts.len());
        for part in parts {
            weights.push(vb.pp(part).get((out_dim, in_dim), "weight")?);
            biases.push(vb.pp(part).get(out_dim, "bias")?);
        }
        let bias = Tensor::cat(&biases, 0)?;
        // Each part read where it is (in place, or packed from there): concatenating them copied
        // 85 MB for ViT-B/32's vision tower, a tenth of a single-image call.
        let name = format!("{}.{}", vb.prefix(), parts.join("+"));
        Self::from_parts(&name, &weights, Some(&bias), linear)
    }

    /// The layer whose weight is `weights` stacked. f32 multiplies the weights where they are
    /// (a single-image call would otherwise wait for a pass over every weight) until a product
    /// has PACK_ROWS rows (kernels/tensor.rs), when the layer packs them for its kernel; bf16 on
    /// a CPU without native bf16 does the same. bf16 with AMX or AVX512-BF16 packs (and
    /// converts) once at load, and int8 quantizes once at load: those come from the
    /// packed-weight cache when it holds them (issue 24).
    fn from_parts(
        name: &str,
        weights: &[Tensor],
        bias: Option<&Tensor>,
        linear: Linears,
    ) -> Result<Self> {
        let precision = linear.precision;
        if !precision.packs_at_load() {
            return Ok(Self(Arc::new(kernels::Linear::in_place_parts(
                weights, bias,
            )?)));
        }
        match linear.packs {
            // The engine gives a cache only to CPU loads (`ModelPlan::load`).
            Some(packs) => Ok(Self(
                packs
                    .layer(name, weights, bias, precision)
                    .with_context(|| format!("cannot build layer {name}"))?,
            )),
            _ => Ok(Self(Arc::new(kernels::Linear::new_parts(
                weights, bias, precision,
            )?))),
        }
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward(xs)
    }

    /// `out = x · Wᵀ + b`, then `epilogue`, on CPU buffers of `rows` rows.
    fn forward_slice(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        epilogue: Epilogue,
    ) -> candle_core::Result<()> {
        self.0.forward_slice(x, rows, out, epilogue)
    }

    fn out_dim(&self) -> candle_core::Result<usize> {
        Ok(self.0.dims()?.0)
    }
}

/// A scalar parameter (`logit_scale`, `logit_bias`), stored as `()` or `[1]`, read as f32.
pub(crate) fn scalar(vb: &VarBuilder, name: &str) -> Result<f32> {
    let t = vb
        .get_with_hints_dtype((), name, Default::default(), DType::F32)
        .or_else(|_| {
            vb.get_with_hints_dtype(1, name, Default::default(), DType::F32)
                .and_then(|t| t.squeeze(0))
        })
        .with_context(|| format!("cannot read {name}"))?;
    Ok(t.to_scalar::<f32>()?)
}

/// `nn.LayerNorm` over the last dimension: on the CPU one vectorised pass per row (rows split
/// across threads), elsewhere Candle's.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    candle: candle_nn::LayerNorm,
    /// The weight and bias as f32, for the CPU path.
    cpu: Option<Arc<(Vec<f32>, Vec<f32>)>>,
    eps: f32,
}

impl LayerNorm {
    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        if self.cpu.is_none() || !xs.device().is_cpu() {
            return self.candle.forward(xs);
        }
        let dims = xs.dims().to_vec();
        let x = xs.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0.0; x.len()];
        self.forward_slice(&x, &mut out)?;
        Tensor::from_vec(out, dims, &Device::Cpu)?.to_dtype(xs.dtype())
    }

    /// Rows of `x` (`[.., dim]`, row-major) into `out`, on the CPU path.
    fn forward_slice(&self, x: &[f32], out: &mut [f32]) -> candle_core::Result<()> {
        use rayon::prelude::*;
        let Some(params) = &self.cpu else {
            candle_core::bail!("layer norm: no CPU parameters");
        };
        let (weight, bias) = (&params.0, &params.1);
        let dim = weight.len();
        if x.len() != out.len() || !x.len().is_multiple_of(dim) {
            candle_core::bail!("layer norm: {} values are not rows of {dim}", x.len());
        }
        // About 64 rows per task: enough work to be worth a task, enough tasks to share.
        let chunk = 64 * dim;
        x.par_chunks(chunk)
            .zip(out.par_chunks_mut(chunk))
            .for_each(|(x, o)| elementwise::layer_norm(x, o, weight, bias, self.eps));
        Ok(())
    }
}

pub(crate) fn layer_norm(vb: VarBuilder, dim: usize, eps: f64) -> Result<LayerNorm> {
    let weight = vb.get(dim, "weight")?;
    let bias = vb.get(dim, "bias")?;
    let cpu = if weight.device().is_cpu() {
        let read = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec1::<f32>();
        Some(Arc::new((read(&weight)?, read(&bias)?)))
    } else {
        None
    };
    Ok(LayerNorm {
        candle: candle_nn::LayerNorm::new(weight, bias, eps),
        cpu,
        eps: eps as f32,
    })
}

pub(crate) fn activate(act: Activation, xs: &Tensor) -> candle_core::Result<Tensor> {
    match act {
        // transformers' QuickGELUActivation: x * sigmoid(1.702 * x).
        Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
        // transformers' "gelu" is PyTorch's exact, erf-based GELU.
        Activation::Gelu => xs.gelu_erf(),
        Activation::GeluTanh => xs.gelu(),
    }
}

/// The activation on a CPU buffer, in place (the same functions as [`activate`]).
fn activate_slice(act: Activation, xs: &mut [f32]) {
    match act {
        Activation::QuickGelu => elementwise::quick_gelu(xs),
        Activation::Gelu => elementwise::gelu_erf(xs),
        Activation::GeluTanh => elementwise::gelu_tanh(xs),
    }
}

/// Sizes shared by the encoder layers of one tower, and how their linear layers multiply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EncoderSpec<'a> {
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub act: Activation,
    pub eps: f64,
    pub linear: Linears<'a>,
}

#[derive(Debug, Clone)]
pub(crate) struct Attention {
    qkv: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    pub(crate) fn new(vb: VarBuilder, spec: &EncoderSpec) -> Result<Self> {
        let h = spec.hidden;
        let head_dim = h / spec.heads;
        Ok(Self {
            qkv: Linear::fused(&vb, &["q_proj", "k_proj", "v_proj"], h, h, spec.linear)?,
            out_proj: Linear::new(vb.pp("out_proj"), h, h, true, spec.linear)?,
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
    /// only to itself (MaskCLIP / ClearCLIP). v is taken from the fused q/k/v product, so no
    /// separate copy of its weights is held (q and k are computed for nothing, in one layer).
    fn value_path(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let d = self.heads * self.head_dim;
        let v = self
            .qkv
            .forward(xs)?
            .narrow(D::Minus1, 2 * d, d)?
            .contiguous()?;
        self.out_proj.forward(&v)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    pub(crate) fn new(vb: VarBuilder, spec: &EncoderSpec) -> Result<Self> {
        Ok(Self {
            layer_norm1: layer_norm(vb.pp("layer_norm1"), spec.hidden, spec.eps)?,
            self_attn: Attention::new(vb.pp("self_attn"), spec)?,
            layer_norm2: layer_norm(vb.pp("layer_norm2"), spec.hidden, spec.eps)?,
            fc1: Linear::new(
                vb.pp("mlp.fc1"),
                spec.hidden,
                spec.intermediate,
                true,
                spec.linear,
            )?,
            fc2: Linear::new(
                vb.pp("mlp.fc2"),
                spec.intermediate,
                spec.hidden,
                true,
                spec.linear,
            )?,
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
pub(crate) struct Encoder {
    layers: Vec<EncoderLayer>,
    /// Every layer's weights are on the CPU (packed linears, f32 norms): [`CpuEncoder`] runs it.
    cpu: bool,
}

impl Encoder {
    pub(crate) fn new(vb: VarBuilder, spec: &EncoderSpec) -> Result<Self> {
        let layers = (0..spec.layers)
            .map(|i| EncoderLayer::new(vb.pp(format!("layers.{i}")), spec))
            .collect::<Result<Vec<_>>>()?;
        let cpu = layers.iter().all(EncoderLayer::on_cpu);
        Ok(Self { layers, cpu })
    }

    /// The CPU path for this input and mask, when it applies: weights and input on the CPU, and
    /// a mask (if any) of `[t, t]`.
    fn cpu_path<'a>(
        &'a self,
        xs: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Option<CpuEncoder<'a>>> {
        if !self.cpu || !xs.device().is_cpu() || mask.is_some_and(|m| m.rank() != 2) {
            return Ok(None);
        }
        let (b, t, d) = xs.dims3()?;
        let mask = match mask {
            Some(m) => Some(read_f32(m)?),
            None => None,
        };
        if mask.as_ref().is_some_and(|m| m.len() != t * t) {
            candle_core::bail!("the attention mask is not {t} x {t}");
        }
        Ok(Some(CpuEncoder {
            layers: &self.layers,
            b,
            t,
            d,
            mask,
        }))
    }

    /// Hidden states after every layer, at every position: `[b, t, d]`.
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        if let Some(cpu) = self.cpu_path(xs, mask)? {
            let (b, t, d) = (cpu.b, cpu.t, cpu.d);
            let out = cpu.run(read_f32(xs)?, Last::Full)?;
            return Tensor::from_vec(out, (b, t, d), &Device::Cpu)?.to_dtype(xs.dtype());
        }
        let mut xs = xs.clone();
        for layer in &self.layers {
            xs = layer.forward(&xs, mask, None)?;
        }
        Ok(xs)
    }

    /// Hidden states after the last layer at one position per sequence (`rows`, `[b]` u32):
    /// `[b, d]`. Only what feeds those positions is computed in the last layer.
    pub(crate) fn forward_pooled(
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
        if let Some(cpu) = self.cpu_path(xs, mask)? {
            let (b, d) = (cpu.b, cpu.d);
            let rows: Vec<usize> = rows
                .to_vec1::<u32>()?
                .into_iter()
                .map(|r| r as usize)
                .collect();
            let out = cpu.run(read_f32(xs)?, Last::Pooled(&rows))?;
            return Tensor::from_vec(out, (b, d), &Device::Cpu)?.to_dtype(xs.dtype());
        }
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
    pub(crate) fn forward_value_path(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let Some((last, body)) = self.layers.split_last() else {
            candle_core::bail!("an encoder without layers has no value path");
        };
        if let Some(cpu) = self.cpu_path(xs, mask)? {
            let (b, t, d) = (cpu.b, cpu.t, cpu.d);
            let out = cpu.run(read_f32(xs)?, Last::ValuePath)?;
            return Tensor::from_vec(out, (b, t, d), &Device::Cpu)?.to_dtype(xs.dtype());
        }
        let mut xs = xs.clone();
        for layer in body {
            xs = layer.forward(&xs, mask, None)?;
        }
        last.value_path(&xs)
    }
}

impl EncoderLayer {
    fn on_cpu(&self) -> bool {
        [
            &self.self_attn.qkv,
            &self.self_attn.out_proj,
            &self.fc1,
            &self.fc2,
        ]
        .iter()
        .all(|l| l.0.is_cpu())
            && self.layer_norm1.cpu.is_some()
            && self.layer_norm2.cpu.is_some()
    }
}

/// A tensor's values as one f32 vector, row-major.
fn read_f32(xs: &Tensor) -> candle_core::Result<Vec<f32>> {
    xs.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// What the last layer computes.
#[derive(Debug, Clone, Copy)]
enum Last<'a> {
    /// Every position, as the other layers: `[b, t, d]`.
    Full,
    /// One position per sequence: `[b, d]`.
    Pooled(&'a [usize]),
    /// `out_proj(v_proj(layer_norm1(x)))` at every position: `[b, t, d]`.
    ValuePath,
}

/// The encoder on the CPU, on plain f32 buffers: per layer, layer norm, the fused q/k/v product,
/// attention read straight from it ([`kernels::attention`]), `out_proj` with the residual added
/// as each output block is written, layer norm, `fc1` with the activation applied the same way,
/// and `fc2` with the residual. Candle's path makes each of those steps (and the reshapes between
/// them) a pass over the whole tensor, most of them into a new allocation. Same operations in the
/// same order as [`EncoderLayer::forward`]; the numbers differ only by rounding.
struct CpuEncoder<'a> {
    layers: &'a [EncoderLayer],
    b: usize,
    t: usize,
    d: usize,
    mask: Option<Vec<f32>>,
}

/// A kernel error as Candle's, for the tensor-level callers.
fn kernel_err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl CpuEncoder<'_> {
    fn run(&self, mut x: Vec<f32>, last: Last) -> candle_core::Result<Vec<f32>> {
        let (b, t, d) = (self.b, self.t, self.d);
        let n = b * t;
        if x.len() != n * d {
            candle_core::bail!("encoder input has {} values, expected {n} x {d}", x.len());
        }
        // Every layer runs whole, except the last one when it computes less (one row per
        // sequence, or the value path alone).
        let (whole, last_layer) = match (last, self.layers.split_last()) {
            (Last::Full, _) | (_, None) => (self.layers, None),
            (_, Some((layer, body))) => (body, Some(layer)),
        };
        let mut ln = vec![0.0f32; n * d];
        let mut qkv = vec![0.0f32; n * 3 * d];
        let mut ctx = vec![0.0f32; n * d];
        let mut y = vec![0.0f32; n * d];
        let mut hidden = Vec::new();
        for layer in whole {
            self.attention_block(layer, &x, &mut ln, &mut qkv, &mut ctx, Queries::All)?;
            layer
                .self_attn
                .out_proj
                .forward_slice(&ctx, n, &mut y, Epilogue::Add(&x))?;
            std::mem::swap(&mut x, &mut y);
            self.mlp_block(layer, &x, n, &mut ln, &mut hidden, &mut y)?;
            std::mem::swap(&mut x, &mut y);
        }
        match (last, last_layer) {
            (Last::Full, _) => Ok(x),
            (Last::Pooled(rows), None) => Ok(gather_rows(&x, rows, t, d)),
            (Last::ValuePath, None) => {
                candle_core::bail!("an encoder without layers has no value path")
            }
            (Last::Pooled(rows), Some(last_layer)) => {
                self.attention_block(
                    last_layer,
                    &x,
                    &mut ln,
                    &mut qkv,
                    &mut ctx,
                    Queries::Rows(rows),
                )?;
                let residual = gather_rows(&x, rows, t, d);
                let mut xb = vec![0.0f32; b * d];
                last_layer.self_attn.out_proj.forward_slice(
                    &ctx[..b * d],
                    b,
                    &mut xb,
                    Epilogue::Add(&residual),
                )?;
                let mut out = vec![0.0f32; b * d];
                self.mlp_block(last_layer, &xb, b, &mut ln, &mut hidden, &mut out)?;
                Ok(out)
            }
            (Last::ValuePath, Some(last_layer)) => {
                last_layer.layer_norm1.forward_slice(&x, &mut ln)?;
                last_layer
                    .self_attn
                    .qkv
                    .forward_slice(&ln, n, &mut qkv, Epilogue::None)?;
                for (v, row) in ctx.chunks_exact_mut(d).zip(qkv.chunks_exact(3 * d)) {
                    v.copy_from_slice(&row[2 * d..]);
                }
                last_layer
                    .self_attn
                    .out_proj
                    .forward_slice(&ctx, n, &mut y, Epilogue::None)?;
                Ok(y)
            }
        }
    }

    /// `ctx = attention(qkv(layer_norm1(x)))` for the query rows asked for.
    fn attention_block(
        &self,
        layer: &EncoderLayer,
        x: &[f32],
        ln: &mut [f32],
        qkv: &mut [f32],
        ctx: &mut [f32],
        queries: Queries,
    ) -> candle_core::Result<()> {
        let (b, t, d) = (self.b, self.t, self.d);
        layer.layer_norm1.forward_slice(x, ln)?;
        layer
            .self_attn
            .qkv
            .forward_slice(ln, b * t, qkv, Epilogue::None)?;
        let rows = match queries {
            Queries::All => b * t,
            Queries::Rows(_) => b,
        };
        let shape = AttentionShape {
            batch: b,
            seq: t,
            heads: layer.self_attn.heads,
            head_dim: layer.self_attn.head_dim,
        };
        attention(
            qkv,
            shape,
            queries,
            self.mask.as_deref(),
            &mut ctx[..rows * d],
        )
        .map_err(kernel_err)
    }

    /// `out = x + fc2(act(fc1(layer_norm2(x))))` over `rows` rows of `x`.
    fn mlp_block(
        &self,
        layer: &EncoderLayer,
        x: &[f32],
        rows: usize,
        ln: &mut [f32],
        hidden: &mut Vec<f32>,
        out: &mut [f32],
    ) -> candle_core::Result<()> {
        let d = self.d;
        let ln = &mut ln[..rows * d];
        layer.layer_norm2.forward_slice(x, ln)?;
        hidden.resize(rows * layer.fc1.out_dim()?, 0.0);
        let act = layer.act;
        let activate = move |run: &mut [f32]| activate_slice(act, run);
        layer
            .fc1
            .forward_slice(ln, rows, hidden, Epilogue::Map(&activate))?;
        layer.fc2.forward_slice(hidden, rows, out, Epilogue::Add(x))
    }
}

/// Row `rows[i]` of each sequence `i` of `x` (`[b, t, d]`): `[b, d]`.
fn gather_rows(x: &[f32], rows: &[usize], t: usize, d: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * d);
    for (i, &r) in rows.iter().enumerate() {
        let start = (i * t + r) * d;
        out.extend_from_slice(&x[start..start + d]);
    }
    out
}

pub(crate) fn causal_mask(t: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (t, t), device)?.to_dtype(dtype)
}
