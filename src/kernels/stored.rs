//! Packed layers as bytes and back, for the packed-weight cache on disk (`model/packs.rs`,
//! issue 24): a layer packed at load (int8 quantized, bf16 converted) is a few plain buffers in a
//! layout fixed by the backend and the layer's size, so a later run can map them from a file
//! instead of packing the checkpoint's weights again.
//!
//! [`PackedLinear::from_stored`] checks every buffer's length against the layout the sizes imply;
//! it cannot check the values (any bit pattern is a valid int8 or bf16 weight), which is why the
//! cache file checksums them.

use super::buf::{as_bytes, Aligned};
use super::{check_len, int8, Backend, KernelError, Packed, PackedLinear};

/// A packed layer's buffers, in the order [`PackedLinear::from_stored`] takes them.
#[derive(Debug)]
pub(crate) struct StoredLayer<'a> {
    pub backend: Backend,
    pub in_dim: usize,
    pub out_dim: usize,
    pub buffers: Vec<&'a [u8]>,
}

impl PackedLinear {
    /// The buffers of a layer packed at load (int8, bf16), or `None` for f32 layers (which are
    /// used in place and never stored).
    pub(crate) fn stored(&self) -> Option<StoredLayer<'_>> {
        let buffers = match &self.packed {
            Packed::F32 { .. } => return None,
            Packed::Int8 { weight, .. } => vec![
                weight.data.as_bytes(),
                as_bytes(&weight.scale),
                as_bytes(&weight.colsum),
                as_bytes(&weight.bias),
            ],
            #[cfg(target_arch = "x86_64")]
            Packed::Bf16 { weight, bias, .. } => vec![weight.data.as_bytes(), as_bytes(bias)],
        };
        Some(StoredLayer {
            backend: self.backend(),
            in_dim: self.in_dim,
            out_dim: self.out_dim,
            buffers,
        })
    }

    /// The layer [`PackedLinear::stored`] described, from its buffers' bytes (a mapped file's
    /// pages are used in place where they start on a 64-byte boundary). Every length is checked
    /// against the layout of `backend` for `out_dim × in_dim`.
    pub(crate) fn from_stored(
        backend: Backend,
        in_dim: usize,
        out_dim: usize,
        buffers: Vec<Vec<u8>>,
    ) -> Result<Self, KernelError> {
        if in_dim == 0 || out_dim == 0 {
            return Err(KernelError::Empty { in_dim, out_dim });
        }
        if !backend.is_available() {
            return Err(KernelError::Unavailable(backend));
        }
        let mut buffers = buffers.into_iter();
        let mut next = |what: &'static str, values: usize, size: usize| {
            let bytes = buffers.next().unwrap_or_default();
            check_len(what, bytes.len(), values.saturating_mul(size))?;
            Ok::<_, KernelError>(bytes)
        };
        let packed = if backend.is_int8() {
            if in_dim > int8::MAX_K {
                return Err(KernelError::TooWideForInt8 {
                    in_dim,
                    max: int8::MAX_K,
                });
            }
            let panels = out_dim.div_ceil(int8::NR);
            let kp = in_dim.next_multiple_of(int8::KB);
            let cols = panels * int8::NR;
            let data = next("int8 weights", panels * kp * int8::NR, 1)?;
            let scale = next("int8 scales", cols, 4)?;
            let colsum = next("int8 column sums", cols, 4)?;
            let bias = next("bias", cols, 4)?;
            Packed::Int8 {
                backend,
                weight: int8::PackedInt8 {
                    data: aligned(data)?,
                    panels,
                    kp,
                    scale: f32s(&scale),
                    colsum: colsum
                        .chunks_exact(4)
                        .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                    bias: f32s(&bias),
                },
            }
        } else {
            #[cfg(target_arch = "x86_64")]
            if backend.is_bf16() {
                let panels = out_dim.div_ceil(super::x86::NR);
                let kp = in_dim.next_multiple_of(32);
                let data = next("bf16 weights", panels * kp * super::x86::NR, 2)?;
                let bias = next("bias", panels * super::x86::NR, 4)?;
                return Ok(Self {
                    in_dim,
                    out_dim,
                    packed: Packed::Bf16 {
                        backend,
                        weight: super::x86::PackedBf16 {
                            data: aligned(data)?,
                            panels,
                        },
                        bias: f32s(&bias),
                    },
                });
            }
            // f32 layers are never stored.
            return Err(KernelError::Unavailable(backend));
        };
        Ok(Self {
            in_dim,
            out_dim,
            packed,
        })
    }
}

/// A checksum of what `backend` packs from a small fixed weight: it changes whenever the packed
/// layout or the quantization or rounding does, so a cache keyed by it can never hand a new
/// kernel bytes packed by an old one, even within one version number. `None` for backends that
/// pack nothing at load (f32) or that this CPU cannot run.
pub(crate) fn layout_fingerprint(backend: Backend) -> Option<u32> {
    // Two panels and a ragged K, so the padding is in it; values of every sign and size, and
    // rounding ties.
    let (n, k) = (40, 100);
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 64.0)
        .collect();
    let b: Vec<f32> = (0..n).map(|j| j as f32 - 20.5).collect();
    let layer = PackedLinear::with_backend(&w, Some(&b), n, k, backend).ok()?;
    let stored = layer.stored()?;
    let mut hasher = crc32fast::Hasher::new();
    for buf in stored.buffers {
        hasher.update(&(buf.len() as u64).to_le_bytes());
        hasher.update(buf);
    }
    Some(hasher.finalize())
}

fn aligned<T: super::buf::Plain>(bytes: Vec<u8>) -> Result<Aligned<T>, KernelError> {
    let got = bytes.len();
    Aligned::from_bytes(bytes).ok_or(KernelError::Length {
        what: "packed weights",
        got,
        expected: got.next_multiple_of(std::mem::size_of::<T>()),
    })
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{Precision, BACKENDS};

    fn weights(n: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
        let w = (0..n * k)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.2)
            .collect();
        let b = (0..n).map(|j| j as f32 * 0.01 - 0.3).collect();
        (w, b)
    }

    /// Every backend that packs at load, on this CPU: a layer rebuilt from its stored bytes
    /// (copied, so unaligned starts are exercised too) gives the same bits as the layer itself.
    #[test]
    fn stored_layers_come_back_bit_for_bit() {
        let (n, k, rows) = (70, 100, 5);
        let (w, b) = weights(n, k);
        let x: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut tried = 0;
        for backend in BACKENDS.into_iter().filter(|b| b.is_available()) {
            let layer = PackedLinear::with_backend(&w, Some(&b), n, k, backend).unwrap();
            let Some(stored) = layer.stored() else {
                assert!(!backend.is_int8() && !backend.is_bf16(), "{backend:?}");
                continue;
            };
            assert_eq!(
                (stored.backend, stored.in_dim, stored.out_dim),
                (backend, k, n)
            );
            // One byte in: an unaligned copy, as a buffer read from a file may be.
            let buffers: Vec<Vec<u8>> = stored
                .buffers
                .iter()
                .map(|buf| {
                    let mut v = vec![0u8; buf.len() + 1];
                    v[1..].copy_from_slice(buf);
                    v.split_off(1)
                })
                .collect();
            let back = PackedLinear::from_stored(backend, k, n, buffers).unwrap();
            let (mut y1, mut y2) = (vec![0f32; rows * n], vec![0f32; rows * n]);
            layer.forward(&x, rows, &mut y1).unwrap();
            back.forward(&x, rows, &mut y2).unwrap();
            assert_eq!(
                y1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                y2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{backend:?}"
            );
            tried += 1;
        }
        // The portable int8 backend runs everywhere, so at least one layer went through.
        assert!(tried >= 1);
    }

    #[test]
    fn fingerprints_name_the_layout() {
        for backend in BACKENDS.into_iter().filter(|b| b.is_available()) {
            let packs = backend.is_int8() || backend.is_bf16();
            let print = layout_fingerprint(backend);
            assert_eq!(print.is_some(), packs, "{backend:?}");
            // The same on every call (the cache key must be stable).
            assert_eq!(print, layout_fingerprint(backend));
        }
        // The int8 backends share one layout and compute the same bytes.
        let int8: Vec<_> = BACKENDS
            .into_iter()
            .filter(|b| b.is_int8() && b.is_available())
            .map(layout_fingerprint)
            .collect();
        assert!(int8.windows(2).all(|w| w[0] == w[1]), "{int8:?}");
    }

    #[test]
    fn wrong_lengths_and_f32_are_refused() {
        let (n, k) = (40, 64);
        let (w, b) = weights(n, k);
        let layer = PackedLinear::with_backend(&w, Some(&b), n, k, Backend::PortableInt8).unwrap();
        let stored = layer.stored().unwrap();
        let good: Vec<Vec<u8>> = stored.buffers.iter().map(|b| b.to_vec()).collect();
        // The same bytes for a layer of another size.
        let err = PackedLinear::from_stored(Backend::PortableInt8, k + 64, n, good.clone());
        assert!(
            matches!(
                err,
                Err(KernelError::Length {
                    what: "int8 weights",
                    ..
                })
            ),
            "{err:?}"
        );
        // A buffer short by one value, or missing.
        let mut short = good.clone();
        let cut = short[1].len() - 4;
        short[1].truncate(cut);
        assert!(PackedLinear::from_stored(Backend::PortableInt8, k, n, short).is_err());
        assert!(
            PackedLinear::from_stored(Backend::PortableInt8, k, n, good[..3].to_vec()).is_err()
        );
        assert!(PackedLinear::from_stored(Backend::PortableInt8, k, n, good).is_ok());
        // f32 layers have nothing stored and cannot be rebuilt from bytes.
        let f32_layer =
            PackedLinear::with_backend(&w, Some(&b), n, k, Backend::best(Precision::F32)).unwrap();
        assert!(f32_layer.stored().is_none());
        assert!(PackedLinear::from_stored(Backend::Portable, k, n, vec![]).is_err());
    }
}
