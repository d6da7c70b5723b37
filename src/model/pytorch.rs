//! PyTorch checkpoints (`pytorch_model.bin`, OpenCLIP's `open_clip_pytorch_model.bin`): the zip
//! archive `torch.save` writes, read as data.
//!
//! The archive holds `<name>/data.pkl` (the pickle: which tensors, their shapes and where their
//! bytes are), `<name>/data/<key>` (one entry per storage, raw elements, stored uncompressed and
//! aligned to 64 bytes so that they can be mapped), `<name>/byteorder` (`little` or `big`; absent
//! in files older than PyTorch 1.10, which are little-endian) and `<name>/version`. The pickle is
//! interpreted by [`super::pickle`], which runs nothing; every tensor it describes is then checked
//! against the entry its storage points into: the entry exists, is stored, lies inside the file
//! and is exactly the storage's element count long, and the tensor's offset, sizes and strides
//! stay inside it. What comes out is, for each tensor, a byte range of the file, as for
//! safetensors, so that `weights::Checkpoint` can map it in place.
//!
//! The zip directory is read by the `zip` crate (the one Candle already uses for the same files,
//! without its decompressors: entries that are not stored are refused).

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;

use anyhow::{bail, Context, Result};
use candle_core::DType;

use super::pickle::{self, TensorRef};
use crate::error::{escape_controls, single_line};

/// A `data.pkl` larger than this is not a state dict's (ViT-B/32's is 40 kB; see
/// [`pickle`]'s value cap for what a pickle may cost).
const MAX_PICKLE: u64 = 64 << 20;

/// One tensor of the archive, checked against the file.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Element strides, when the tensor is not row-major contiguous (a view PyTorch saved as it
    /// was): it must be gathered. `None`: its bytes are `range`, in order.
    pub strides: Option<Vec<usize>>,
    /// Absolute byte range in the file from the tensor's first element to the end of its last:
    /// inside its storage's entry. For a contiguous tensor, exactly its elements.
    pub range: Range<u64>,
    /// The file's byte order is not this machine's: each element's bytes must be reversed.
    pub swap_bytes: bool,
}

/// A stored zip entry's data, as an absolute byte range of the file.
struct Entry {
    start: u64,
    len: u64,
}

fn entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    file_len: u64,
) -> Result<Option<Entry>> {
    let Some(index) = zip.index_for_name(name) else {
        return Ok(None);
    };
    let file = zip
        .by_index_raw(index)
        .with_context(|| format!("cannot read the zip entry {name}"))?;
    if file.compression() != zip::CompressionMethod::Stored {
        bail!(
            "the zip entry {name} is compressed ({}); torch.save stores entries as they are",
            file.compression()
        );
    }
    let (len, start) = (file.size(), file.data_start());
    let start = start.with_context(|| format!("the zip entry {name} has no data offset"))?;
    if file.compressed_size() != len {
        bail!(
            "the zip entry {name} says {len} bytes but stores {}",
            file.compressed_size()
        );
    }
    match start.checked_add(len) {
        Some(end) if end <= file_len => Ok(Some(Entry { start, len })),
        _ => bail!(
            "the zip entry {name} ends past the end of the file ({file_len} bytes): truncated (an interrupted download?)"
        ),
    }
}

/// The whole (small) entry `name`, read through the zip crate, which checks its CRC.
fn small_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    max: u64,
) -> Result<Vec<u8>> {
    let file = zip
        .by_name(name)
        .with_context(|| format!("cannot read the zip entry {name}"))?;
    if file.size() > max {
        bail!(
            "the zip entry {name} holds {} bytes, more than the {max} it may",
            file.size()
        );
    }
    let mut bytes = Vec::new();
    file.take(max)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot read the zip entry {name}: {e}"))?;
    Ok(bytes)
}

/// Reads and checks the archive's directory, byte order, version and pickle: no tensor data is
/// read. Nothing here can panic or allocate more than the pickle's length allows, whatever the
/// bytes (fuzzed: `tests/fuzz`, target `pytorch_bin`).
pub fn read_tensors<R: Read + Seek>(mut reader: R) -> Result<Vec<StoredTensor>> {
    let file_len = reader.seek(SeekFrom::End(0))?;
    reader.seek(SeekFrom::Start(0))?;
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| {
        anyhow::anyhow!(
            "not a zip archive as torch.save writes ({}): truncated (an interrupted download?) or not a PyTorch checkpoint",
            single_line(&e.to_string())
        )
    })?;
    // The archive's folder: the one holding data.pkl (`archive/` or the file's stem).
    let prefixes: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok()?.strip_suffix("/data.pkl").map(str::to_string))
        .filter(|p| !p.is_empty() && !p.contains('/'))
        .take(2)
        .collect();
    let prefix = match prefixes.as_slice() {
        [] => bail!("no data.pkl in the zip archive: not a torch.save checkpoint"),
        [one] => one.clone(),
        _ => bail!("the zip archive holds more than one data.pkl"),
    };
    let version = small_entry(&mut zip, &format!("{prefix}/version"), 16)
        .context("no readable version record: not a torch.save checkpoint")?;
    // caffe2/serialize/versions.h: kMinSupportedFileFormatVersion 1 to kMaxSupportedFileFormatVersion 10.
    match std::str::from_utf8(&version)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
    {
        Some(1..=10) => {}
        _ => bail!(
            "unknown archive version \"{}\"",
            escape_controls(&String::from_utf8_lossy(&version))
        ),
    }
    let byteorder = match zip.index_for_name(&format!("{prefix}/byteorder")) {
        None => "little".to_string(),
        Some(_) => {
            let bytes = small_entry(&mut zip, &format!("{prefix}/byteorder"), 16)?;
            String::from_utf8_lossy(&bytes).trim().to_string()
        }
    };
    let big_endian = match byteorder.as_str() {
        "little" => false,
        "big" => true,
        other => bail!(
            "byteorder \"{}\" is neither little nor big",
            escape_controls(other)
        ),
    };
    let swap = big_endian != cfg!(target_endian = "big");
    let pkl = small_entry(&mut zip, &format!("{prefix}/data.pkl"), MAX_PICKLE)?;
    let tensors = pickle::state_dict(&pkl)?;
    let mut out = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let shown = escape_controls(&name).into_owned();
        let key = &tensor.storage.key;
        if key.is_empty() || key.contains(['/', '\\']) || key.starts_with('.') {
            bail!(
                "tensor {shown}: storage key {:?} is not a plain name",
                escape_controls(key)
            );
        }
        let entry_name = format!("{prefix}/data/{key}");
        let entry = entry(&mut zip, &entry_name, file_len)?.with_context(|| {
            format!("tensor {shown}: its storage data/{key} is not in the archive")
        })?;
        let stored = locate(&tensor, &entry)
            .with_context(|| format!("tensor {shown} (storage data/{key})"))?;
        out.push(StoredTensor {
            name,
            dtype: tensor.storage.dtype,
            swap_bytes: swap && tensor.storage.dtype.size_in_bytes() > 1,
            ..stored
        });
    }
    Ok(out)
}

/// Checks one tensor against its storage's entry: the byte range it spans, and its strides
/// when it is not contiguous.
fn locate(tensor: &TensorRef, entry: &Entry) -> Result<StoredTensor> {
    let storage = &tensor.storage;
    let elem = storage.dtype.size_in_bytes() as u64;
    let bytes = storage.numel.checked_mul(elem);
    if bytes != Some(entry.len) {
        bail!(
            "the pickle says {} elements of {:?} but the entry holds {} bytes",
            storage.numel,
            storage.dtype,
            entry.len
        );
    }
    let numel = tensor
        .size
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .context("its element count overflows")?;
    let shape = tensor
        .size
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()?;
    let start = |elements: u64| -> Result<u64> {
        elements
            .checked_mul(elem)
            .and_then(|b| b.checked_add(entry.start))
            .context("its offset overflows")
    };
    if numel == 0 {
        let at = start(tensor.offset.min(storage.numel))?;
        return Ok(StoredTensor {
            name: String::new(),
            dtype: storage.dtype,
            shape,
            strides: None,
            range: at..at,
            swap_bytes: false,
        });
    }
    // The last element's index: offset + sum((size - 1) * stride), in u128 (each term fits).
    let last = tensor
        .size
        .iter()
        .zip(&tensor.stride)
        .try_fold(u128::from(tensor.offset), |at, (&size, &stride)| {
            at.checked_add(u128::from(size - 1) * u128::from(stride))
        })
        .context("its extent overflows")?;
    if last >= u128::from(storage.numel) {
        bail!(
            "offset {}, sizes {:?} and strides {:?} reach element {last}, past the storage's {}",
            tensor.offset,
            tensor.size,
            tensor.stride,
            storage.numel
        );
    }
    // `last` < numel of the storage, which fits in u64.
    let range = start(tensor.offset)?..start(last as u64 + 1)?;
    // Contiguous as PyTorch defines it: row-major strides, where dimensions of size 1 may have any.
    let mut expected = 1u64;
    let mut contiguous = true;
    for (&size, &stride) in tensor.size.iter().zip(&tensor.stride).rev() {
        if size != 1 {
            contiguous &= stride == expected;
            expected = expected.saturating_mul(size);
        }
    }
    let strides = if contiguous {
        None
    } else {
        // Gathered into a buffer of its own: no bigger than the storage, so never more than the
        // file backs (a stride of 0 could otherwise ask for any number of copies).
        if numel > storage.numel {
            bail!(
                "sizes {:?} with strides {:?} repeat elements: {numel} from a storage of {}",
                tensor.size,
                tensor.stride,
                storage.numel
            );
        }
        Some(
            tensor
                .stride
                .iter()
                .map(|&s| usize::try_from(s))
                .collect::<Result<Vec<_>, _>>()?,
        )
    };
    Ok(StoredTensor {
        name: String::new(),
        dtype: storage.dtype,
        shape,
        strides,
        range,
        swap_bytes: false,
    })
}

/// The elements of a strided tensor, gathered in row-major order from `bytes` (the range from
/// its first element to its last, as [`StoredTensor::range`]): `elem` bytes each.
pub fn gather(bytes: &[u8], shape: &[usize], strides: &[usize], elem: usize) -> Result<Vec<u8>> {
    let numel: usize = shape.iter().product();
    let mut out = Vec::with_capacity(numel * elem);
    if numel == 0 {
        return Ok(out);
    }
    let mut index = vec![0usize; shape.len()];
    loop {
        let at = index.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>() * elem;
        let element = bytes
            .get(at..at + elem)
            .context("a strided element lies outside the tensor's range")?;
        out.extend_from_slice(element);
        // Odometer: the last dimension moves fastest.
        let mut dim = shape.len();
        loop {
            if dim == 0 {
                return Ok(out);
            }
            dim -= 1;
            index[dim] += 1;
            if index[dim] < shape[dim] {
                break;
            }
            index[dim] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pickle::StorageRef;

    fn tensor(numel: u64, offset: u64, size: &[u64], stride: &[u64]) -> TensorRef {
        TensorRef {
            storage: StorageRef {
                key: "0".into(),
                dtype: DType::F32,
                numel,
            },
            offset,
            size: size.to_vec(),
            stride: stride.to_vec(),
        }
    }

    const ENTRY: Entry = Entry { start: 64, len: 48 };

    #[test]
    fn contiguous_views_are_byte_ranges() {
        let t = locate(&tensor(12, 2, &[2, 5], &[5, 1]), &ENTRY).unwrap();
        assert_eq!(t.range, 72..112);
        assert_eq!(t.strides, None);
        assert_eq!(t.shape, [2, 5]);
        // Size-1 dimensions may have any stride (PyTorch's is_contiguous).
        let t = locate(&tensor(12, 0, &[1, 3, 1], &[99, 1, 7]), &ENTRY).unwrap();
        assert_eq!((t.range, t.strides), (64..76, None));
        // Empty tensors span nothing.
        let t = locate(&tensor(12, 5, &[0, 3], &[3, 1]), &ENTRY).unwrap();
        assert_eq!(t.range, 84..84);
        // A scalar.
        let t = locate(&tensor(12, 11, &[], &[]), &ENTRY).unwrap();
        assert_eq!(t.range, 108..112);
    }

    #[test]
    fn strided_views_are_gathered() {
        // A transposed 3x4 matrix: sizes [4, 3], strides [1, 4].
        let t = locate(&tensor(12, 0, &[4, 3], &[1, 4]), &ENTRY).unwrap();
        assert_eq!(t.strides, Some(vec![1, 4]));
        assert_eq!(t.range, 64..112);
        let bytes: Vec<u8> = (0u8..12).collect();
        let got = gather(&bytes, &[4, 3], &[1, 4], 1).unwrap();
        assert_eq!(got, [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]);
        // Two-byte elements, every other one.
        let bytes: Vec<u8> = (0u8..8).collect();
        assert_eq!(gather(&bytes, &[2], &[2], 2).unwrap(), [0, 1, 4, 5]);
        assert!(gather(&bytes, &[3], &[2], 2).is_err());
        assert!(gather(&bytes, &[0, 5], &[1, 1], 2).unwrap().is_empty());
    }

    #[test]
    fn views_outside_their_storage_are_refused() {
        let cases = [
            (tensor(11, 0, &[12], &[1]), "the entry holds 48 bytes"),
            (
                tensor(12, 1, &[12], &[1]),
                "reach element 12, past the storage's 12",
            ),
            (tensor(12, 0, &[2, 7], &[7, 1]), "reach element 13"),
            (tensor(12, 0, &[4, 4], &[1, 3]), "reach element 12"),
            (tensor(12, u64::MAX, &[1], &[1]), "past the storage's 12"),
            (
                tensor(12, 0, &[u64::MAX, u64::MAX], &[1, 1]),
                "element count overflows",
            ),
            (tensor(12, 0, &[1 << 40], &[0]), "repeat elements"),
            (tensor(12, 0, &[13], &[0]), "repeat elements"),
            (tensor(u64::MAX, 0, &[1], &[1]), "elements of F32"),
        ];
        for (t, want) in cases {
            let err = format!("{:#}", locate(&t, &ENTRY).unwrap_err());
            assert!(err.contains(want), "{t:?}: {err} should say {want}");
        }
        // A repeated element within the storage's count is fine (an expanded view).
        let t = locate(&tensor(12, 0, &[3, 4], &[0, 1]), &ENTRY).unwrap();
        assert_eq!(t.strides, Some(vec![0, 1]));
        let bytes: Vec<u8> = (0u8..4).collect();
        assert_eq!(
            gather(&bytes, &[3, 4], &[0, 1], 1).unwrap(),
            [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]
        );
    }

    /// A zip archive as torch.save lays it out, written by hand: stored entries, `prefix/...`.
    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        use std::io::Write;
        let mut out = std::io::Cursor::new(Vec::new());
        {
            let mut zip = zip::ZipWriter::new(&mut out);
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
                .with_alignment(64);
            for (name, bytes) in entries {
                zip.start_file(*name, opts).unwrap();
                zip.write_all(bytes).unwrap();
            }
            zip.finish().unwrap();
        }
        out.into_inner()
    }

    #[test]
    fn archives_missing_records_are_refused() {
        let read = |bytes: Vec<u8>| {
            format!(
                "{:#}",
                read_tensors(std::io::Cursor::new(bytes)).unwrap_err()
            )
        };
        assert!(read(b"PK\x03\x04 not really".to_vec())
            .contains("not a zip archive as torch.save writes"));
        assert!(read(archive(&[("a/version", b"3\n")])).contains("no data.pkl"));
        assert!(
            read(archive(&[("a/data.pkl", b"}."), ("b/data.pkl", b"}.")]))
                .contains("more than one data.pkl")
        );
        assert!(read(archive(&[("a/data.pkl", b"}.")])).contains("no readable version record"));
        assert!(
            read(archive(&[("a/data.pkl", b"}."), ("a/version", b"99\n")]))
                .contains("unknown archive version \"99\\n\"")
        );
        assert!(read(archive(&[
            ("a/data.pkl", b"}."),
            ("a/version", b"3\n"),
            ("a/byteorder", b"middle")
        ]))
        .contains("byteorder \"middle\""));
        // An empty state dict reads as no tensors; without a byteorder record, little-endian.
        let ok = read_tensors(std::io::Cursor::new(archive(&[
            ("a/data.pkl", b"}."),
            ("a/version", b"3\n"),
        ])))
        .unwrap();
        assert!(ok.is_empty());
    }
}
