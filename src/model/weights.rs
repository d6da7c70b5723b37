//! Reads tensors from weight files (safetensors, or PyTorch's `torch.save` archives) straight into
//! their final buffers.
//!
//! Candle's mmap loader maps the whole checkpoint and copies each tensor out of the map: while the model
//! is built, the mapped pages and the copies are both resident, so peak memory is twice the weights.
//! Here, in the `vlm` binary, each f32 tensor uses the mapped file's bytes in place (`crate::alloc`):
//! no copy and no fresh pages, so loading the ViT-B/32 vision tower takes 0.08 s instead of 0.27 s,
//! and only the tensors asked for are ever touched. Elsewhere (library users, other dtypes) each
//! tensor is read with one positioned read into the buffer that becomes its storage, so peak memory
//! is the weights plus one tensor in flight.
//!
//! Both formats come down to the same thing, a byte range of a file per tensor: safetensors says so
//! in its header; a PyTorch archive's pickle says which zip entry and which elements
//! ([`super::pytorch`], which reads the pickle as data and runs nothing). [`Checkpoint`] holds
//! either, or shards of both, so that no model family needs to know which format it loads.
//! PyTorch adds three cases safetensors cannot have, each read by copy instead of in place: tensors
//! sharing bytes (tied weights, views of one storage: two `Vec`s must never own the same bytes), views
//! with strides (gathered) and files written on a machine of the other byte order (swapped).

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use safetensors::tensor::{Metadata, TensorInfo as TensorLayout};
use safetensors::Dtype;

use super::{pickle, pytorch};
use crate::alloc::Mapping;
use crate::error::single_line;

#[derive(Debug)]
struct TensorInfo {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file: the tensor's elements, or for a strided one (`strides`)
    /// the span from its first element to its last.
    start: u64,
    len: u64,
    /// Element strides of a tensor that is not row-major contiguous (a PyTorch view): gathered.
    strides: Option<Vec<usize>>,
    /// The file's byte order is not this machine's: each element is reversed when read.
    swap_bytes: bool,
    /// Another tensor's bytes overlap this one's (PyTorch storages may be shared): always copied,
    /// never handed out in place.
    shared: bool,
    /// Set once the tensor has been handed out in place (mapped): a second request for it gets a
    /// copy, so that no two tensors share a buffer.
    in_place: AtomicBool,
}

/// The tensors of one checkpoint: one file, or the shards of an index, each a safetensors file
/// or a PyTorch archive.
pub(crate) struct Checkpoint {
    files: Vec<(PathBuf, File)>,
    /// Each file mapped, when the binary's allocator allows tensors to use it in place
    /// (`crate::alloc`); `None` entries are read with positioned reads.
    maps: Vec<Option<Mapping>>,
    tensors: HashMap<String, TensorInfo>,
}

/// The Candle type of a stored dtype; `None` for those the loader does not convert (sub-byte and
/// 8-bit floats, complex, ...).
fn dtype_of(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        Dtype::I64 => DType::I64,
        Dtype::U32 => DType::U32,
        Dtype::U8 => DType::U8,
        _ => return None,
    })
}

/// Header sizes above this are not safetensors (the format caps it at 100 MB; so does the
/// `safetensors` crate, which refuses such files).
const MAX_HEADER: u64 = 100_000_000;

/// One tensor as a checked header describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file: inside the file, disjoint from every other tensor's, and
    /// exactly `shape`'s element count times the dtype's size long.
    pub range: std::ops::Range<u64>,
}

impl Checkpoint {
    /// Reads and checks the headers (a PyTorch archive's zip directory and pickle); no tensor data
    /// is read yet.
    pub(crate) fn open(paths: &[PathBuf]) -> Result<Self> {
        if paths.is_empty() {
            bail!("no weight files");
        }
        let mut files = Vec::with_capacity(paths.len());
        let mut maps = Vec::with_capacity(paths.len());
        let mut tensors = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            let mut file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            let entries = if is_pytorch(path, &mut file)? {
                read_pytorch(&file, index).map_err(|e| {
                    if e.chain().any(|c| c.is::<pickle::Refused>()) {
                        e.context(format!("{} was not loaded", path.display()))
                    } else {
                        e.context(format!(
                            "{} is not a valid PyTorch checkpoint",
                            path.display()
                        ))
                    }
                })?
            } else {
                read_header(&mut file, index).with_context(|| {
                    format!("{} is not a valid safetensors file", path.display())
                })?
            };
            for (name, info) in entries {
                if tensors.insert(name.clone(), info).is_some() {
                    bail!("tensor {name} appears in two weight files");
                }
            }
            maps.push(Mapping::new(&file));
            files.push((path.clone(), file));
        }
        Ok(Self {
            files,
            maps,
            tensors,
        })
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Reads one tensor as stored, onto the CPU.
    fn read(&self, name: &str) -> Result<Tensor> {
        let info = self
            .tensors
            .get(name)
            .with_context(|| format!("the checkpoint has no tensor {name}"))?;
        let (path, file) = &self.files[info.file];
        let context = || format!("cannot read tensor {name} from {}", path.display());
        let elems: usize = info.shape.iter().product();
        let shape = Shape::from(info.shape.clone());
        let plain = info.strides.is_none() && !info.swap_bytes;
        if info.dtype == DType::F32 && plain && !info.shared {
            // The common case: the tensor uses the mapped file's bytes in place, when it can.
            let mapped = self
                .maps
                .get(info.file)
                .and_then(Option::as_ref)
                .filter(|_| !info.in_place.swap(true, Ordering::AcqRel))
                .zip(usize::try_from(info.start).ok())
                // SAFETY: tensors handed out in place do not overlap in the file (`parse_header`
                // checks safetensors; `mark_shared` excludes overlapping PyTorch tensors) and each
                // is handed out in place at most once (`in_place`), so no two Vecs share bytes.
                .and_then(|(map, start)| unsafe { map.f32s(start, elems) });
            if let Some(values) = mapped {
                return Ok(Tensor::from_vec(values, shape, &Device::Cpu)?);
            }
        }
        if info.dtype == DType::F32 && info.strides.is_none() {
            // Otherwise read into the f32 buffer the tensor will own: no second copy.
            let mut values = vec![0f32; elems];
            // SAFETY: any byte pattern is a valid f32, and the slice covers exactly the Vec's
            // initialised elements.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), elems * 4)
            };
            read_at(file, bytes, info.start).with_context(context)?;
            if info.swap_bytes {
                values
                    .iter_mut()
                    .for_each(|v| *v = f32::from_bits(v.to_bits().swap_bytes()));
            }
            return Ok(Tensor::from_vec(values, shape, &Device::Cpu)?);
        }
        let mut bytes = vec![0u8; usize::try_from(info.len).with_context(context)?];
        read_at(file, &mut bytes, info.start).with_context(context)?;
        let elem = info.dtype.size_in_bytes();
        if let Some(strides) = &info.strides {
            bytes = pytorch::gather(&bytes, &info.shape, strides, elem).with_context(context)?;
        }
        if info.swap_bytes {
            bytes.chunks_exact_mut(elem).for_each(<[u8]>::reverse);
        }
        Ok(Tensor::from_raw_buffer(
            &bytes,
            info.dtype,
            shape.dims(),
            &Device::Cpu,
        )?)
    }

    /// One tensor, checked against the shape the network expects, in `dtype` on `device`.
    pub(crate) fn get(
        &self,
        shape: &Shape,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        if let Some(info) = self.tensors.get(name) {
            if info.shape.as_slice() != shape.dims() {
                bail!(
                    "tensor {name} has shape {:?}, but config.json implies {:?}",
                    info.shape,
                    shape.dims()
                );
            }
        }
        let tensor = self.read(name)?;
        let tensor = if tensor.dtype() == dtype {
            tensor
        } else {
            tensor.to_dtype(dtype)?
        };
        Ok(if device.is_cpu() {
            tensor
        } else {
            tensor.to_device(device)?
        })
    }
}

/// A positioned read: several threads can read one file at once.
#[cfg(unix)]
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
pub(crate) fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(file, buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// Reads the header of an open safetensors file and checks it against the file's length.
fn read_header(file: &mut File, index: usize) -> Result<Vec<(String, TensorInfo)>> {
    let file_len = file.metadata()?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .context("shorter than a safetensors header")?;
    let header_len = header_length(len_bytes, file_len)?;
    let mut start = vec![0u8; 8 + header_len];
    start[..8].copy_from_slice(&len_bytes);
    file.read_exact(&mut start[8..])?;
    Ok(parse_header(&start, file_len)?
        .into_iter()
        .map(|t| {
            let info = TensorInfo {
                file: index,
                dtype: t.dtype,
                shape: t.shape,
                start: t.range.start,
                len: t.range.end - t.range.start,
                strides: None,
                // safetensors is little-endian.
                swap_bytes: cfg!(target_endian = "big") && t.dtype.size_in_bytes() > 1,
                shared: false,
                in_place: AtomicBool::new(false),
            };
            (t.name, info)
        })
        .collect())
}

/// Whether `path` is a PyTorch archive rather than safetensors: it starts as a zip file does, or
/// is named as PyTorch files are (`.bin`, `.pt`, `.pth`; then the zip reader says what is wrong
/// with it). Anything else is read as safetensors.
fn is_pytorch(path: &Path, file: &mut File) -> Result<bool> {
    let mut magic = [0u8; 4];
    let n = file
        .read(&mut magic)
        .with_context(|| format!("cannot read {}", path.display()))?;
    std::io::Seek::rewind(file).with_context(|| format!("cannot read {}", path.display()))?;
    let named = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "bin" | "pt" | "pth"));
    Ok(&magic[..n] == b"PK\x03\x04" || named)
}

/// Reads the zip directory and pickle of an open PyTorch archive.
fn read_pytorch(file: &File, index: usize) -> Result<Vec<(String, TensorInfo)>> {
    let stored = pytorch::read_tensors(std::io::BufReader::new(file))?;
    let mut entries: Vec<(String, TensorInfo)> = stored
        .into_iter()
        .map(|t| {
            let info = TensorInfo {
                file: index,
                dtype: t.dtype,
                shape: t.shape,
                start: t.range.start,
                len: t.range.end - t.range.start,
                strides: t.strides,
                swap_bytes: t.swap_bytes,
                shared: false,
                in_place: AtomicBool::new(false),
            };
            (t.name, info)
        })
        .collect();
    mark_shared(&mut entries);
    Ok(entries)
}

/// Marks every tensor whose bytes overlap another's (tied weights, views of one storage): those
/// are never used in place. Sorted by start, a tensor overlaps another exactly when one before it
/// ends after its start or the next one starts before its end.
fn mark_shared(entries: &mut [(String, TensorInfo)]) {
    let mut order: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].1.len > 0)
        .collect();
    order.sort_by_key(|&i| (entries[i].1.start, entries[i].1.len));
    let mut max_end = 0u64;
    for (k, &i) in order.iter().enumerate() {
        let (start, end) = (entries[i].1.start, entries[i].1.start + entries[i].1.len);
        let next_start = order.get(k + 1).map(|&j| entries[j].1.start);
        entries[i].1.shared = (k > 0 && max_end > start) || next_start.is_some_and(|n| n < end);
        max_end = max_end.max(end);
    }
}

/// The header's length from the file's first 8 bytes, when it is plausible: at most the format's
/// 100 MB, and inside a file of `file_len` bytes.
fn header_length(len_bytes: [u8; 8], file_len: u64) -> Result<usize> {
    let header_len = u64::from_le_bytes(len_bytes);
    let fits =
        header_len <= MAX_HEADER && header_len.checked_add(8).is_some_and(|end| end <= file_len);
    match usize::try_from(header_len) {
        Ok(len) if fits => Ok(len),
        _ => bail!("header length {header_len} does not fit the file of {file_len} bytes"),
    }
}

/// Parses and checks the start of a safetensors file (the 8-byte header length, then at least
/// that many bytes of header) whose whole length is `file_len`. The header is parsed and its
/// layout checked by the `safetensors` crate (the format's reference code, which Candle and
/// Python use too): tensors lie back to back from the start of the data, each exactly as long
/// as its shape and dtype say, with overflow-checked arithmetic. This function adds the checks
/// against the file: the data ends exactly where the file does, and every dtype is one the
/// loader converts. Nothing here can overflow or panic, whatever the bytes (fuzzed:
/// `tests/fuzz`, target `model_files`).
pub fn parse_header(file_start: &[u8], file_len: u64) -> Result<Vec<HeaderTensor>> {
    let len_bytes: [u8; 8] = file_start
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .context("shorter than a safetensors header")?;
    let header_len = header_length(len_bytes, file_len)?;
    let json = file_start
        .get(8..8 + header_len)
        .context("the header is cut short")?;
    let mut raw: HashMap<String, serde_json::Value> =
        serde_json::from_slice(json).context("the header is not a JSON object")?;
    // `__metadata__`, when present, maps strings to strings (the format says so and the crate
    // insists).
    let extra = match raw.remove("__metadata__") {
        Some(value) => Some(
            serde_json::from_value::<HashMap<String, String>>(value)
                .context("__metadata__ is not a map of strings")?,
        ),
        None => None,
    };
    let mut entries = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        let info: TensorLayout = serde_json::from_value(value).map_err(|e| {
            anyhow::anyhow!(
                "tensor {name}: malformed header entry: {}",
                single_line(&e.to_string())
            )
        })?;
        // The crate checks this too, but its error does not say which tensor.
        let elems = info.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let bits = elems.and_then(|n| n.checked_mul(info.dtype.bitsize()));
        let (begin, end) = info.data_offsets;
        if end < begin || bits.map(|b| b.div_ceil(8)) != Some(end - begin) {
            bail!(
                "tensor {name}: {} bytes for shape {:?} of {}",
                end.saturating_sub(begin),
                info.shape,
                info.dtype
            );
        }
        // Checked here too, to name the tensor and say "truncated" (the crate would only find
        // that the offsets are not contiguous, or not the file's length).
        let ends_at = u128::from(8 + header_len as u64) + end as u128;
        if ends_at > u128::from(file_len) {
            bail!(
                "tensor {name} ends at byte {ends_at} but the file has {file_len}: truncated (an interrupted download?): delete it and fetch it again"
            );
        }
        entries.push((name, info));
    }
    // The crate's own check of the layout: sorted by offset, each tensor starts where the previous
    // one ends (no overlap, no gap), with sizes checked against shapes without overflow.
    entries.sort_by_key(|(_, info)| info.data_offsets);
    let metadata = Metadata::new(extra, entries).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Both fit in u64: the header is at most 100 MB, and the data length is a usize offset.
    let data_start = 8 + header_len as u64;
    let data_len = u64::try_from(metadata.data_len()).context("tensor data too large")?;
    match data_start.checked_add(data_len) {
        Some(end) if end == file_len => {}
        Some(end) if end < file_len => bail!(
            "{} bytes follow the last tensor: not a safetensors file as the format defines it",
            file_len - end
        ),
        // Cannot happen: every tensor ends inside the file (checked above).
        _ => bail!("the tensors end past the end of the file ({file_len} bytes)"),
    }
    let tensors = metadata.tensors();
    let mut out = Vec::with_capacity(tensors.len());
    for (name, info) in tensors {
        let dtype = dtype_of(info.dtype)
            .with_context(|| format!("tensor {name}: unsupported dtype {}", info.dtype))?;
        let (begin, end) = info.data_offsets;
        // Inside the data (checked just above), so these cannot overflow.
        let range = data_start + begin as u64..data_start + end as u64;
        out.push(HeaderTensor {
            name,
            dtype,
            shape: info.shape.clone(),
            range,
        });
    }
    Ok(out)
}

/// Lets candle-nn's `VarBuilder` (and so the `new(cfg, vb)` constructors) read from [`Checkpoint`].
impl candle_nn::var_builder::SimpleBackend for Checkpoint {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        Checkpoint::get(self, &s, name, dtype, dev).map_err(candle_core::Error::wrap)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.read(name).map_err(candle_core::Error::wrap)?;
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A safetensors file with the given header JSON and data bytes.
    fn file(header: &str, data: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
        f.write_all(header.as_bytes()).unwrap();
        f.write_all(data).unwrap();
        f
    }

    fn floats(xs: &[f32]) -> Vec<u8> {
        xs.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_tensors_with_their_shapes_and_converts_dtype() {
        let data = floats(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let f = file(
            r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}}"#,
            &data,
        );
        let st = Checkpoint::open(&[f.path().to_path_buf()]).unwrap();
        let a = st
            .get(&Shape::from((2, 2)), "a", DType::F32, &Device::Cpu)
            .unwrap();
        assert_eq!(a.to_vec2::<f32>().unwrap(), [[1.0, 2.0], [3.0, 4.0]]);
        let b = st
            .get(&Shape::from(2), "b", DType::F16, &Device::Cpu)
            .unwrap();
        assert_eq!(b.dtype(), DType::F16);
        assert_eq!(
            b.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(),
            [5.0, 6.0]
        );
        let err = st
            .get(&Shape::from(3), "b", DType::F32, &Device::Cpu)
            .unwrap_err();
        assert!(err.to_string().contains("tensor b has shape [2]"), "{err}");
        let err = st
            .get(&Shape::from(3), "c", DType::F32, &Device::Cpu)
            .unwrap_err();
        assert!(err.to_string().contains("no tensor c"), "{err}");
    }

    #[test]
    fn truncated_and_malformed_files_are_refused_with_a_reason() {
        let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let cases: Vec<(tempfile::NamedTempFile, &str)> = vec![
            (file(header, &floats(&[1.0, 2.0])), "truncated"),
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#,
                    &floats(&[1.0; 4]),
                ),
                "16 bytes for shape [3]",
            ),
            (
                file(
                    r#"{"a":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}}"#,
                    &floats(&[1.0; 4]),
                ),
                "unknown variant `Q4`",
            ),
            (
                file(
                    r#"{"a":{"dtype":"I8","shape":[4],"data_offsets":[0,4]}}"#,
                    &[1, 2, 3, 4],
                ),
                "tensor a: unsupported dtype I8",
            ),
            (file("not json", b""), "not a JSON object"),
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
                    &floats(&[1.0; 4]),
                ),
                "invalid offset for tensor `b`",
            ),
            // A gap between tensors, and bytes after the last one: not the format.
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#,
                    &floats(&[1.0; 4]),
                ),
                "invalid offset for tensor `b`",
            ),
            (
                file(header, &floats(&[1.0; 5])),
                "4 bytes follow the last tensor",
            ),
            // Offsets and shapes whose arithmetic would wrap.
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[18446744073709551600,18446744073709551615]}}"#,
                    &floats(&[1.0; 4]),
                ),
                "tensor a: 15 bytes for shape [4]",
            ),
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[],"data_offsets":[18446744073709551608,18446744073709551612]}}"#,
                    &floats(&[1.0]),
                ),
                "tensor a ends at byte 18446744073709551711 but the file has 103: truncated",
            ),
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}}"#,
                    b"",
                ),
                "tensor a: 0 bytes for shape [4611686018427387904, 4]",
            ),
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[4611686018427387903],"data_offsets":[4,18446744073709551616]}}"#,
                    &floats(&[1.0; 4]),
                ),
                "tensor b: malformed header entry",
            ),
            (
                file(
                    r#"{"__metadata__":{"format":1},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                    &floats(&[1.0; 4]),
                ),
                "__metadata__ is not a map of strings",
            ),
        ];
        for (f, want) in cases {
            let err = format!(
                "{:#}",
                Checkpoint::open(&[f.path().to_path_buf()]).err().unwrap()
            );
            assert!(err.contains(want), "{err} should say {want}");
            assert!(err.contains("is not a valid safetensors file"), "{err}");
        }
        let mut tiny = tempfile::NamedTempFile::new().unwrap();
        tiny.write_all(b"\x05").unwrap();
        let err = format!(
            "{:#}",
            Checkpoint::open(&[tiny.path().to_path_buf()])
                .err()
                .unwrap()
        );
        assert!(err.contains("shorter than a safetensors header"), "{err}");
        let mut huge = tempfile::NamedTempFile::new().unwrap();
        huge.write_all(&u64::MAX.to_le_bytes()).unwrap();
        let err = format!(
            "{:#}",
            Checkpoint::open(&[huge.path().to_path_buf()])
                .err()
                .unwrap()
        );
        assert!(err.contains("does not fit the file"), "{err}");
    }

    #[test]
    fn header_lengths_near_the_top_of_u64_are_refused_without_overflow() {
        for len in [
            u64::MAX,
            u64::MAX - 7,
            u64::MAX - 8,
            1 << 63,
            MAX_HEADER + 1,
        ] {
            let mut start = len.to_le_bytes().to_vec();
            start.extend_from_slice(b"{}");
            let err = parse_header(&start, u64::MAX).unwrap_err().to_string();
            assert!(err.contains("does not fit the file"), "{len}: {err}");
        }
        // A header length that fits the file but not the bytes given.
        let err = parse_header(&10u64.to_le_bytes(), 100)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cut short"), "{err}");
        let ok = parse_header(b"\x02\0\0\0\0\0\0\0{}", 10).unwrap();
        assert!(ok.is_empty());
    }

    fn fixture(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(path)
    }

    fn all(ck: &Checkpoint, name: &str) -> Tensor {
        let shape = Shape::from(ck.tensors[name].shape.clone());
        ck.get(&shape, name, ck.tensors[name].dtype, &Device::Cpu)
            .unwrap()
    }

    /// `tests/fixtures/pytorch/small`: torch.save's archive, and the same as a big-endian machine
    /// writes it (make_pytorch_fixtures.py), read to the values PyTorch saved.
    #[test]
    fn pytorch_archives_read_to_the_values_saved_in_either_byte_order() {
        for file in ["little.bin", "big.bin"] {
            let ck = Checkpoint::open(&[fixture("pytorch/small").join(file)]).unwrap();
            let base: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
            let f32s = all(&ck, "f32");
            assert_eq!(f32s.dims(), [3, 4]);
            assert_eq!(f32s.flatten_all().unwrap().to_vec1::<f32>().unwrap(), base);
            let half = all(&ck, "f16").to_dtype(DType::F32).unwrap();
            assert_eq!(half.to_vec1::<f32>().unwrap(), [1.5, -2.25, 65504.0]);
            assert_eq!(all(&ck, "i64").to_vec1::<i64>().unwrap(), [1, -2, 1 << 40]);
            // A transposed view (strides (1, 4)) and a slice at offset 5 of f32's storage.
            let t = all(&ck, "transposed");
            assert_eq!(t.dims(), [4, 3]);
            assert_eq!(t.to_vec2::<f32>().unwrap()[1], [base[1], base[5], base[9]]);
            assert_eq!(all(&ck, "slice").to_vec1::<f32>().unwrap(), base[5..9]);
            let info = &ck.tensors["transposed"];
            assert_eq!(info.strides, Some(vec![1, 4]), "{file}");
            assert_eq!(info.swap_bytes, file == "big.bin");
            // The slice shares f32's storage: neither may be used in place.
            assert!(ck.tensors["slice"].shared && ck.tensors["f32"].shared);
            assert!(!ck.tensors["i64"].shared);
        }
    }

    /// The fixture models as PyTorch archives (single, sharded, with views, shared storages and
    /// tied names) hold exactly the safetensors fixture's tensors.
    #[test]
    fn pytorch_fixtures_hold_the_safetensors_values() {
        let reference =
            Checkpoint::open(&[fixture("models/tiny-siglip/model.safetensors")]).unwrap();
        let sharded: Vec<PathBuf> = (1..=4)
            .map(|i| {
                fixture(&format!(
                    "pytorch/tiny-siglip-sharded/pytorch_model-0000{i}-of-00004.bin"
                ))
            })
            .collect();
        for paths in [
            vec![fixture("pytorch/tiny-siglip/pytorch_model.bin")],
            sharded,
            vec![fixture("pytorch/tiny-siglip-views/pytorch_model.bin")],
        ] {
            let ck = Checkpoint::open(&paths).unwrap();
            for name in reference.tensors.keys() {
                let want = all(&reference, name).flatten_all().unwrap();
                let got = all(&ck, name).flatten_all().unwrap();
                assert_eq!(got.dtype(), want.dtype(), "{name}");
                let (want, got) = (
                    want.to_dtype(DType::F64).unwrap(),
                    got.to_dtype(DType::F64).unwrap(),
                );
                assert_eq!(
                    got.to_vec1::<f64>().unwrap(),
                    want.to_vec1::<f64>().unwrap(),
                    "{name} in {paths:?}"
                );
            }
        }
        let views =
            Checkpoint::open(&[fixture("pytorch/tiny-siglip-views/pytorch_model.bin")]).unwrap();
        let t = &views.tensors;
        assert!(t["vision_model.encoder.layers.0.mlp.fc1.weight"]
            .strides
            .is_some());
        assert!(!t["vision_model.encoder.layers.0.mlp.fc1.bias"].shared);
        assert!(t["tied.copy_of_final_layer_norm"].shared);
        assert!(t["text_model.final_layer_norm.weight"].shared);
        assert!(!t["text_model.final_layer_norm.bias"].shared);
    }

    #[test]
    fn overlapping_ranges_are_marked_shared() {
        let info = |start: u64, len: u64| {
            (
                format!("{start}+{len}"),
                TensorInfo {
                    file: 0,
                    dtype: DType::F32,
                    shape: vec![],
                    start,
                    len,
                    strides: None,
                    swap_bytes: false,
                    shared: false,
                    in_place: AtomicBool::new(false),
                },
            )
        };
        // [0,8) alone; [8,16) inside [8,32); [40,48) overlaps [44,52) which overlaps [50,60);
        // [60,64) touches but does not overlap; an empty range never counts.
        let mut entries = vec![
            info(44, 8),
            info(0, 8),
            info(8, 24),
            info(8, 8),
            info(50, 10),
            info(40, 8),
            info(60, 4),
            info(62, 0),
        ];
        mark_shared(&mut entries);
        let shared: Vec<&str> = entries
            .iter()
            .filter(|(_, i)| i.shared)
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(shared, ["44+8", "8+24", "8+8", "50+10", "40+8"]);
    }

    /// Every hostile archive (make_pytorch_fixtures.py) is refused with a reason naming the file.
    #[test]
    fn hostile_pytorch_archives_are_refused() {
        for (file, want) in [
            ("os-system.bin", "was not loaded: refused: its pickle asks for posix.system,"),
            ("offset-past-storage.bin", "tensor w (storage data/0): offset 3, sizes [4] and strides [1] reach element 6, past the storage's 4"),
            ("numel-past-entry.bin", "the pickle says 1000 elements of F32 but the entry holds 16 bytes"),
            ("bool-dtype.bin", "torch.BoolStorage, a dtype vlm does not read"),
            ("odd-entry.bin", "the pickle says 1 elements of F32 but the entry holds 6 bytes"),
            ("compressed.bin", "the zip entry archive/data/0 is compressed"),
            ("missing-storage.bin", "tensor v: its storage data/7 is not in the archive"),
        ] {
            let path = fixture("pytorch/hostile").join(file);
            let err = format!("{:#}", Checkpoint::open(std::slice::from_ref(&path)).err().unwrap());
            assert!(err.contains(want), "{file}: {err}");
            assert!(err.starts_with(&path.display().to_string()), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        // Truncated: every cut of a real archive is refused, none panics.
        let bytes = std::fs::read(fixture("pytorch/tiny-siglip/pytorch_model.bin")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cut = dir.path().join("pytorch_model.bin");
        for len in [
            0,
            3,
            4,
            100,
            bytes.len() / 2,
            bytes.len() - 30,
            bytes.len() - 1,
        ] {
            std::fs::write(&cut, &bytes[..len]).unwrap();
            let err = format!(
                "{:#}",
                Checkpoint::open(std::slice::from_ref(&cut)).err().unwrap()
            );
            assert!(
                err.contains("is not a valid PyTorch checkpoint"),
                "{len}: {err}"
            );
        }
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = format!("{:#}", Checkpoint::open(&[cut]).err().unwrap());
        assert!(
            err.contains("truncated (an interrupted download?)"),
            "{err}"
        );
    }
}
