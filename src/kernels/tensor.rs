//! [`Linear`]: `nn.Linear` for Candle tensors, through [`PackedLinear`] on the CPU and Candle's own
//! matmul elsewhere.

use candle_core::{DType, Device, Module, Result, Storage, Tensor};

use super::{Backend, PackedLinear, Precision};

/// `y = x · Wᵀ + b` on `[.., in]` tensors. On the CPU the weight is packed at construction for the
/// fastest backend of the precision (see the module docs); on other devices the layer keeps the
/// weight tensor and multiplies with Candle, as one 2-D product over all leading dimensions.
#[derive(Debug)]
pub struct Linear {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Cpu(PackedLinear),
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
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, precision: Precision) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
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
        let w = weight
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let b = match bias {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        let packed = PackedLinear::new(&w, b.as_deref(), out_dim, in_dim, precision)
            .map_err(candle_core::Error::wrap)?;
        Ok(Self {
            inner: Inner::Cpu(packed),
        })
    }

    /// The CPU backend, or `None` on another device (Candle's matmul).
    pub fn backend(&self) -> Option<Backend> {
        match &self.inner {
            Inner::Cpu(p) => Some(p.backend()),
            Inner::Device { .. } => None,
        }
    }

    pub fn packed(&self) -> Option<&PackedLinear> {
        match &self.inner {
            Inner::Cpu(p) => Some(p),
            Inner::Device { .. } => None,
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
            Inner::Cpu(p) => {
                if in_dim != p.in_dim() {
                    candle_core::bail!(
                        "linear: input has {in_dim} features, the layer takes {}",
                        p.in_dim()
                    );
                }
                if !xs.device().is_cpu() {
                    candle_core::bail!("linear: the layer was built on the CPU, the input is not");
                }
                let x = xs.to_dtype(DType::F32)?.contiguous()?;
                let mut out = vec![0f32; rows * p.out_dim()];
                {
                    let (storage, layout) = x.storage_and_layout();
                    let Storage::Cpu(cpu) = &*storage else {
                        candle_core::bail!("linear: the input is not in CPU memory");
                    };
                    let start = layout.start_offset();
                    let Some(data) = cpu.as_slice::<f32>()?.get(start..start + rows * in_dim)
                    else {
                        candle_core::bail!("linear: input storage is shorter than its layout");
                    };
                    p.forward(data, rows, &mut out)
                        .map_err(candle_core::Error::wrap)?;
                }
                let mut out_dims = lead.to_vec();
                out_dims.push(p.out_dim());
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
