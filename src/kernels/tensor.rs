//! [`Linear`]: `nn.Linear` for Candle tensors, through [`PackedLinear`] on the CPU and Candle's own
//! matmul elsewhere.

use std::sync::RwLock;

use candle_core::{DType, Device, Module, Result, Storage, Tensor};

use super::{forward_in_place, Backend, Epilogue, PackedLinear, Precision};

/// `y = x · Wᵀ + b` on `[.., in]` tensors. On the CPU the weight is packed at construction for the
/// fastest backend of the precision (see the module docs); on other devices the layer keeps the
/// weight tensor and multiplies with Candle, as one 2-D product over all leading dimensions.
#[derive(Debug)]
pub(crate) struct Linear {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Cpu(PackedLinear),
    /// f32 weights used where they are (for a checkpoint, the mapped file), packed a panel at a
    /// time as each product runs: nothing to pack at load. Packed once the first time a product
    /// is tall enough to pay for it (see [`PACK_ROWS`]); the same bits either way.
    CpuInPlace(InPlace),
    Device {
        /// `[in, out]`, a transposed view of the `[out, in]` weight.
        weight_t: Tensor,
        bias: Option<Tensor>,
    },
}

impl Linear {
    /// `weight` is `[out, in]` (PyTorch's layout), `bias` `[out]`, both on the same device, of
    /// any float dtype. On the CPU they are read once, converted to f32 and packed; the tensors can
    /// be dropped afterwards.
    pub(crate) fn new(
        weight: &Tensor,
        bias: Option<&Tensor>,
        precision: Precision,
    ) -> Result<Self> {
        let (out_dim, _) = weight.dims2()?;
        if let Some(b) = bias {
            let n = b.dims1()?;
            if n != out_dim {
                candle_core::bail!("linear: bias has {n} values for {out_dim} outputs");
            }
        }
        if !weight.device().is_cpu() {
            return Ok(Self {
                inner: Inner::Device {
                    weight_t: weight.t()?,
                    bias: bias.cloned(),
                },
            });
        }
        Self::new_parts(std::slice::from_ref(weight), bias, precision)
    }

    /// [`Linear::new`] for the weight made of several `[out_i, in]` weights stacked (q, k and v
    /// as one layer), packed without concatenating them first; `bias` is the stacked bias. Other
    /// devices: the weights concatenated.
    pub(crate) fn new_parts(
        weights: &[Tensor],
        bias: Option<&Tensor>,
        precision: Precision,
    ) -> Result<Self> {
        let s = match Stacked::prepare(weights, bias, precision)? {
            Prepared::Device(layer) => return Ok(layer),
            Prepared::Cpu(s) => s,
        };
        // Packed straight from the tensors' memory (for a checkpoint, the mapped file) when they
        // are contiguous f32: a copy of every weight first would be the slowest part of loading.
        let packed = with_cpu_f32_parts(&s.parts, s.in_dim, |slices| {
            PackedLinear::from_parts(
                slices,
                s.bias.as_deref(),
                s.out_dim,
                s.in_dim,
                Backend::best(precision),
            )
            .map_err(candle_core::Error::wrap)
        })?;
        Ok(Self {
            inner: Inner::Cpu(packed),
        })
    }

    /// A CPU layer over weights packed already (read back from the packed-weight cache).
    pub(crate) fn from_packed(packed: PackedLinear) -> Self {
        Self {
            inner: Inner::Cpu(packed),
        }
    }

    #[cfg(test)]
    /// An f32 layer over `weight` as it is, on the CPU: no copy and no packing at load (see
    /// [`forward_in_place`]). Other devices: as [`Linear::new`].
    pub(crate) fn in_place(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        Self::in_place_parts(std::slice::from_ref(weight), bias)
    }

    /// [`Linear::in_place`] over several `[out_i, in]` weights as one layer whose weight is them
    /// stacked (q, k and v: one product, one `[.., Σ out_i]` output), without copying them into
    /// one; `bias` is the stacked `[Σ out_i]` bias. Other devices: the weights concatenated, as
    /// [`Linear::new`].
    pub(crate) fn in_place_parts(weights: &[Tensor], bias: Option<&Tensor>) -> Result<Self> {
        let s = match Stacked::prepare(weights, bias, Precision::F32)? {
            Prepared::Device(layer) => return Ok(layer),
            Prepared::Cpu(s) => s,
        };
        Ok(Self {
            inner: Inner::CpuInPlace(InPlace {
                state: RwLock::new(InPlaceState::Weights(s.parts)),
                bias: s.bias,
                out_dim: s.out_dim,
                in_dim: s.in_dim,
            }),
        })
    }

    /// The CPU backend, or `None` on another device (Candle's matmul).
    #[cfg(test)]
    pub(crate) fn backend(&self) -> Option<Backend> {
        match &self.inner {
            Inner::Cpu(p) => Some(p.backend()),
            Inner::CpuInPlace(layer) => Some(match &*layer.read() {
                InPlaceState::Weights(_) => Backend::best(Precision::F32),
                InPlaceState::Packed(p) => p.backend(),
            }),
            Inner::Device { .. } => None,
        }
    }

    /// The packed layer, for a layer packed at load on the CPU.
    pub(crate) fn packed(&self) -> Option<&PackedLinear> {
        match &self.inner {
            Inner::Cpu(p) => Some(p),
            _ => None,
        }
    }

    /// Whether the layer multiplies on the CPU (so [`Linear::forward_slice`] works).
    pub(crate) fn is_cpu(&self) -> bool {
        !matches!(self.inner, Inner::Device { .. })
    }

    /// `(out_features, in_features)`.
    pub(crate) fn dims(&self) -> Result<(usize, usize)> {
        match &self.inner {
            Inner::Cpu(p) => Ok((p.out_dim(), p.in_dim())),
            Inner::CpuInPlace(layer) => Ok((layer.out_dim, layer.in_dim)),
            Inner::Device { weight_t, .. } => {
                let (i, o) = weight_t.dims2()?;
                Ok((o, i))
            }
        }
    }

    /// `out = x · Wᵀ + b`, then `epilogue`, on CPU slices of `rows` rows.
    pub(crate) fn forward_slice(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        epilogue: Epilogue,
    ) -> Result<()> {
        match &self.inner {
            Inner::Cpu(p) => p
                .forward_with(x, rows, out, epilogue)
                .map_err(candle_core::Error::wrap),
            Inner::CpuInPlace(layer) => layer.forward_slice(x, rows, out, epilogue),
            Inner::Device { .. } => candle_core::bail!("linear: the layer is not on the CPU"),
        }
    }
}

impl Module for Linear {
    /// `xs` is `[.., in]`; the result `[.., out]`, of `xs`'s dtype.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims().to_vec();
        let Some((&in_dim, lead)) = dims.split_last() else {
            candle_core::bail!("linear: input is a scalar");
        };
        let rows: usize = lead.iter().product();
        match &self.inner {
            Inner::Device { weight_t, bias } => {
                let ys = xs.reshape((rows, in_dim))?.matmul(weight_t)?;
                let ys = match bias {
                    Some(b) => ys.broadcast_add(b)?,
                    None => ys,
                };
                let mut out_dims = lead.to_vec();
                out_dims.push(ys.dim(1)?);
                ys.reshape(out_dims)
            }
            Inner::Cpu(_) | Inner::CpuInPlace(_) => {
                let (out_dim, layer_in) = self.dims()?;
                if in_dim != layer_in {
                    candle_core::bail!(
                        "linear: input has {in_dim} features, the layer takes {layer_in}"
                    );
                }
                if !xs.device().is_cpu() {
                    candle_core::bail!("linear: the layer was built on the CPU, the input is not");
                }
                let x = xs.to_dtype(DType::F32)?.contiguous()?;
                let mut out = vec![0f32; rows * out_dim];
                with_cpu_f32(&x, "input", rows * in_dim, |data| {
                    self.forward_slice(data, rows, &mut out, Epilogue::None)
                })?;
                let mut out_dims = lead.to_vec();
                out_dims.push(out_dim);
                let ys = Tensor::from_vec(out, out_dims, &Device::Cpu)?;
                if xs.dtype() == DType::F32 {
                    Ok(ys)
                } else {
                    ys.to_dtype(xs.dtype())
                }
            }
        }
    }
}

/// A layer made of `[out_i, in]` weights stacked, read for the CPU: each part as contiguous f32
/// (the tensor itself where it already is), the stacked bias as f32, and the checked sizes.
struct Stacked {
    parts: Vec<Tensor>,
    bias: Option<Vec<f32>>,
    out_dim: usize,
    in_dim: usize,
}

enum Prepared {
    /// Not on the CPU: Candle's layer over the concatenated weights.
    Device(Linear),
    Cpu(Stacked),
}

impl Stacked {
    fn prepare(
        weights: &[Tensor],
        bias: Option<&Tensor>,
        precision: Precision,
    ) -> Result<Prepared> {
        let Some(first) = weights.first() else {
            candle_core::bail!("linear: no weights");
        };
        if !first.device().is_cpu() {
            return Ok(Prepared::Device(Linear::new(
                &Tensor::cat(weights, 0)?,
                bias,
                precision,
            )?));
        }
        let in_dim = first.dims2()?.1;
        let mut parts = Vec::with_capacity(weights.len());
        let mut out_dim = 0;
        for w in weights {
            let (o, i) = w.dims2()?;
            if i != in_dim {
                candle_core::bail!("linear: stacked weights take {in_dim} and {i} features");
            }
            out_dim += o;
            parts.push(w.to_dtype(DType::F32)?.contiguous()?);
        }
        let bias = match bias {
            Some(b) => {
                let b = b.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                if b.len() != out_dim {
                    candle_core::bail!("linear: bias has {} values for {out_dim} outputs", b.len());
                }
                Some(b)
            }
            None => None,
        };
        Ok(Prepared::Cpu(Stacked {
            parts,
            bias,
            out_dim,
            in_dim,
        }))
    }
}

/// Rows from which an in-place f32 layer packs its weight for [`Backend::Avx512F32`] (once; the
/// packed copy then serves every later call and the in-place weight is dropped, which gives its
/// mapped pages back). Below it, the weight is used where it is, each panel packed into scratch
/// as the product reaches it: a single-image call (50 rows for ViT-B/32) must not wait for a pass
/// over every weight. From it, packing once costs less than packing on every call (measured with
/// the `gemm` crate, which did that: 9% of a 240-image f32 run). Both give the same bits.
pub(super) const PACK_ROWS: usize = 128;

#[derive(Debug)]
struct InPlace {
    state: RwLock<InPlaceState>,
    bias: Option<Vec<f32>>,
    out_dim: usize,
    in_dim: usize,
}

#[derive(Debug)]
enum InPlaceState {
    /// `[out_i, in]` parts (one unless stacked), contiguous f32.
    Weights(Vec<Tensor>),
    Packed(PackedLinear),
}

impl InPlace {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, InPlaceState> {
        // A panic while packing leaves the old state (the assignment is the last step).
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn forward_slice(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        epilogue: Epilogue,
    ) -> Result<()> {
        if rows >= PACK_ROWS && matches!(*self.read(), InPlaceState::Weights(_)) {
            self.pack()?;
        }
        match &*self.read() {
            InPlaceState::Packed(p) => p
                .forward_with(x, rows, out, epilogue)
                .map_err(candle_core::Error::wrap),
            InPlaceState::Weights(parts) => with_cpu_f32_parts(parts, self.in_dim, |slices| {
                forward_in_place(
                    slices,
                    self.bias.as_deref(),
                    self.in_dim,
                    (x, rows),
                    out,
                    epilogue,
                )
                .map_err(candle_core::Error::wrap)
            }),
        }
    }

    /// Replaces the in-place weights by their packed copy (a no-op if another call did it first).
    fn pack(&self) -> Result<()> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let InPlaceState::Weights(parts) = &*state else {
            return Ok(());
        };
        let packed = with_cpu_f32_parts(parts, self.in_dim, |slices| {
            PackedLinear::from_parts(
                slices,
                self.bias.as_deref(),
                self.out_dim,
                self.in_dim,
                Backend::best(Precision::F32),
            )
            .map_err(candle_core::Error::wrap)
        })?;
        *state = InPlaceState::Packed(packed);
        Ok(())
    }
}

/// Calls `f` with each part's values (contiguous f32 `[out_i, in_dim]` CPU tensors) as slices, read
/// in place.
fn with_cpu_f32_parts<R>(
    parts: &[Tensor],
    in_dim: usize,
    f: impl FnOnce(&[&[f32]]) -> Result<R>,
) -> Result<R> {
    let guards: Vec<_> = parts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(parts.len());
    for (t, (storage, layout)) in parts.iter().zip(&guards) {
        let Storage::Cpu(cpu) = &**storage else {
            candle_core::bail!("linear: the weight is not in CPU memory");
        };
        let len = t.dim(0)? * in_dim;
        let start = layout.start_offset();
        let Some(values) = cpu.as_slice::<f32>()?.get(start..start + len) else {
            candle_core::bail!("linear: weight storage is shorter than its layout");
        };
        slices.push(values);
    }
    f(&slices)
}

/// Calls `f` with the first `len` values of `t` (contiguous f32 in CPU memory) as a slice, read
/// in place: for a checkpoint's weight that is the mapped file itself. `what` names `t` in errors.
fn with_cpu_f32<R>(
    t: &Tensor,
    what: &str,
    len: usize,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("linear: the {what} is not in CPU memory");
    };
    let start = layout.start_offset();
    let Some(values) = cpu.as_slice::<f32>()?.get(start..start + len) else {
        candle_core::bail!("linear: {what} storage is shorter than its layout");
    };
    f(values)
}
