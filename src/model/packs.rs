//! The packed-weight cache (issue 24): the layers an int8 or bf16 run packs at load (quantized
//! or converted from the checkpoint's f32 weights) kept on disk, so that the next run maps them
//! instead of packing again. Packing ViT-B/32's image tower for int8 reads all 350 MB of its
//! weights and writes 88 MB of fresh pages, most of a one-image call; mapping the packed file
//! costs a few milliseconds.
//!
//! One file per model and kernel kind, `<cache>/packed-v1/<hash>.bin`, where the hash is of the
//! key the engine gives (the weight files' canonical paths, sizes and modification times, and
//! the backends: see `ModelPlan::load`). File, integers little-endian:
//!
//! ```text
//! b"VLMPACK1"           magic and format version
//! u64 header length
//! header                JSON: the key, then per layer its name (the tensor path), backend,
//!                       sizes, sampled weight values, and each buffer's offset, length, CRC-32
//! buffers               each at a multiple of 4096 bytes
//! ```
//!
//! A layer is used only when everything matches: the key (in the file, not only its hash), the
//! layer's name, backend and sizes, 16 of its weight values sampled across the checkpoint's
//! tensors (so a file rewritten in place with the same size and time is still noticed), and the
//! CRC-32 of each buffer. Anything else is a miss: that layer is packed from the checkpoint as
//! before. As with the text cache, the cache is an optimisation only: an unreadable, corrupt or
//! stale file is never an error, and a run that packed anything writes the file again
//! (atomically: a temporary file renamed into place), keeping the layers it did not load.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use candle_core::{IndexOp, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::weights::read_at;
use crate::alloc::Mapping;
use crate::kernels::{self, Backend, PackedLinear, Precision};

const MAGIC: &[u8; 8] = b"VLMPACK1";
/// Folder of this format under the cache dir.
const FORMAT_DIR: &str = "packed-v1";
/// Buffers start on page boundaries: mapped in place, each owns its pages.
const ALIGN: u64 = 4096;
/// Weight values sampled per layer.
const SAMPLES: usize = 16;
/// The longest header read: far above a real one (a few hundred bytes per layer).
const MAX_HEADER: u64 = 64 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    key: String,
    layers: Vec<LayerHeader>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerHeader {
    name: String,
    backend: String,
    in_dim: usize,
    out_dim: usize,
    /// Bits of the f32 weight values at [`sample_positions`].
    samples: Vec<u32>,
    buffers: Vec<BufferHeader>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BufferHeader {
    offset: u64,
    len: u64,
    crc32: u32,
}

/// The packed layers of one model load: those found in the cache file, and those packed now.
pub(crate) struct PackStore {
    path: PathBuf,
    key: String,
    /// The file as it was when the load began, if it was readable and its key matched.
    old: Option<OldFile>,
    /// Every layer built or found during this load, in order, for [`PackStore::save`].
    layers: Mutex<Vec<Built>>,
}

/// A layer of this load, as [`PackStore::save`] writes it.
struct Built {
    name: String,
    samples: Vec<u32>,
    layer: Arc<kernels::Linear>,
    /// Packed by this load (not found in the file): the file is then written again.
    packed: bool,
}

struct OldFile {
    file: File,
    /// The whole file mapped, when the binary allows tensors in mapped memory (`crate::alloc`);
    /// else buffers are read with positioned reads.
    map: Option<Mapping>,
    layers: HashMap<String, LayerHeader>,
}

impl std::fmt::Debug for PackStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PackStore {
    /// The store for `key` under the cache folder `dir`; reads the existing file's header, if
    /// there is a valid one for this key. Never fails: a missing or bad file is an empty store.
    pub(crate) fn open(dir: &Path, key: &str) -> Self {
        let hash = crate::cache::hex(&Sha256::digest(key.as_bytes())[..16]);
        let path = dir.join(FORMAT_DIR).join(format!("{hash}.bin"));
        let old = read_old(&path, key);
        Self {
            path,
            key: key.to_string(),
            old,
            layers: Mutex::new(Vec::new()),
        }
    }

    /// The file this store reads and writes.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The layer named `name` (`weights` stacked, `bias`, for `precision`, which packs at
    /// load): from the cache file when it holds exactly this layer, else packed from the
    /// weights (and kept for [`PackStore::save`]).
    pub(crate) fn layer(
        &self,
        name: &str,
        weights: &[Tensor],
        bias: Option<&Tensor>,
        precision: Precision,
    ) -> Result<Arc<kernels::Linear>> {
        let samples = sample(weights)?;
        let backend = Backend::best(precision);
        let found = self
            .old
            .as_ref()
            .and_then(|old| old.layer(name, backend, weights, &samples));
        let packed = found.is_none();
        let layer = Arc::new(match found {
            Some(packed) => kernels::Linear::from_packed(packed),
            None => kernels::Linear::new_parts(weights, bias, precision)?,
        });
        lock(&self.layers).push(Built {
            name: name.to_string(),
            samples,
            layer: Arc::clone(&layer),
            packed,
        });
        Ok(layer)
    }

    /// Writes the file again if this load packed any layer: every layer of this load, then the
    /// old file's layers this load did not ask for. Returns whether it wrote.
    pub(crate) fn save(&self) -> Result<bool> {
        let layers = lock(&self.layers);
        if !layers.iter().any(|b| b.packed) {
            return Ok(false);
        }
        // Each layer: its header (offsets filled below) and its buffers' bytes.
        let mut entries: Vec<(LayerHeader, Vec<OwnedOrRef>)> = Vec::new();
        for Built {
            name,
            samples,
            layer,
            ..
        } in layers.iter()
        {
            let Some(stored) = layer.packed().and_then(PackedLinear::stored) else {
                continue;
            };
            let head = LayerHeader {
                name: name.clone(),
                backend: format!("{:?}", stored.backend),
                in_dim: stored.in_dim,
                out_dim: stored.out_dim,
                samples: samples.clone(),
                buffers: Vec::new(),
            };
            entries.push((
                head,
                stored.buffers.into_iter().map(OwnedOrRef::Ref).collect(),
            ));
        }
        if let Some(old) = &self.old {
            let mut kept: Vec<&LayerHeader> = old
                .layers
                .values()
                .filter(|l| !entries.iter().any(|(h, _)| h.name == l.name))
                .collect();
            kept.sort_by(|a, b| a.name.cmp(&b.name));
            for l in kept {
                let bufs = l
                    .buffers
                    .iter()
                    .map(|b| old.read(b).map(OwnedOrRef::Owned))
                    .collect::<Option<Vec<_>>>();
                if let Some(bufs) = bufs {
                    entries.push((l.clone(), bufs));
                }
            }
        }
        write_file(&self.path, &self.key, entries)?;
        Ok(true)
    }
}

enum OwnedOrRef<'a> {
    Ref(&'a [u8]),
    Owned(Vec<u8>),
}

impl OwnedOrRef<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            OwnedOrRef::Ref(b) => b,
            OwnedOrRef::Owned(b) => b,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl OldFile {
    /// The packed layer `name` for `backend`, if the file holds it with these sizes, samples
    /// and intact buffers.
    fn layer(
        &self,
        name: &str,
        backend: Backend,
        weights: &[Tensor],
        samples: &[u32],
    ) -> Option<PackedLinear> {
        let head = self.layers.get(name)?;
        let out_dim: usize = weights
            .iter()
            .map(|w| w.dims2().map(|d| d.0))
            .sum::<candle_core::Result<usize>>()
            .ok()?;
        let in_dim = weights.first()?.dims2().ok()?.1;
        if head.backend != format!("{backend:?}")
            || (head.in_dim, head.out_dim) != (in_dim, out_dim)
            || head.samples != samples
        {
            return None;
        }
        let buffers = head
            .buffers
            .iter()
            .map(|b| {
                self.read(b)
                    .filter(|bytes| crc32fast::hash(bytes) == b.crc32)
            })
            .collect::<Option<Vec<_>>>()?;
        PackedLinear::from_stored(backend, in_dim, out_dim, buffers).ok()
    }

    /// One buffer's bytes: the mapped pages in place, or read.
    fn read(&self, b: &BufferHeader) -> Option<Vec<u8>> {
        let (offset, len) = (
            usize::try_from(b.offset).ok()?,
            usize::try_from(b.len).ok()?,
        );
        if let Some(map) = &self.map {
            // SAFETY: the header's buffers were checked not to overlap (read_old), and each is
            // handed out once per load: a layer is looked up once by name, and `save` reads
            // only the layers no lookup took.
            return unsafe { map.bytes(offset, len) };
        }
        let mut buf = vec![0u8; len];
        read_at(&self.file, &mut buf, b.offset).ok()?;
        Some(buf)
    }
}

/// The old file's header, if it is this format, for `key`, and its buffers lie inside the file,
/// page-aligned and apart.
fn read_old(path: &Path, key: &str) -> Option<OldFile> {
    let file = File::open(path).ok()?;
    let file_len = file.metadata().ok()?.len();
    let mut start = [0u8; 16];
    read_at(&file, &mut start, 0).ok()?;
    if &start[..8] != MAGIC {
        return None;
    }
    let header_len = u64::from_le_bytes(start[8..16].try_into().ok()?);
    if header_len > MAX_HEADER || 16 + header_len > file_len {
        return None;
    }
    let mut json = vec![0u8; usize::try_from(header_len).ok()?];
    read_at(&file, &mut json, 16).ok()?;
    let header: Header = serde_json::from_slice(&json).ok()?;
    if header.key != key {
        return None;
    }
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for b in header.layers.iter().flat_map(|l| &l.buffers) {
        let end = b.offset.checked_add(b.len)?;
        if end > file_len || b.offset % ALIGN != 0 || b.offset < 16 + header_len {
            return None;
        }
        ranges.push((b.offset, end));
    }
    ranges.sort_unstable();
    if ranges.windows(2).any(|w| w[0].1 > w[1].0) {
        return None;
    }
    let mut layers = HashMap::new();
    for l in header.layers {
        if layers.insert(l.name.clone(), l).is_some() {
            return None;
        }
    }
    let map = Mapping::new(&file);
    Some(OldFile { file, map, layers })
}

fn write_file(
    path: &Path,
    key: &str,
    mut entries: Vec<(LayerHeader, Vec<OwnedOrRef>)>,
) -> Result<()> {
    // Offsets depend on the header's length, which depends on the offsets' digits: lay the
    // buffers out after a header bound found by laying out with zero offsets and rounding up.
    let mut header = Header {
        key: key.to_string(),
        layers: Vec::new(),
    };
    for (head, bufs) in &mut entries {
        head.buffers = bufs
            .iter()
            .map(|b| BufferHeader {
                offset: u64::MAX,
                len: b.bytes().len() as u64,
                crc32: crc32fast::hash(b.bytes()),
            })
            .collect();
        header.layers.push(head.clone());
    }
    // u64::MAX has the most digits any offset can have: the real header is no longer.
    let bound = serde_json::to_vec(&header)?.len() as u64;
    let mut at = (16 + bound).next_multiple_of(ALIGN);
    for l in &mut header.layers {
        for b in &mut l.buffers {
            b.offset = at;
            at = (at + b.len).next_multiple_of(ALIGN);
        }
    }
    let json = serde_json::to_vec(&header)?;
    crate::cache::replace(path, |w| {
        w.write_all(MAGIC)?;
        w.write_all(&(json.len() as u64).to_le_bytes())?;
        w.write_all(&json)?;
        let mut written = 16 + json.len() as u64;
        for ((_, bufs), l) in entries.iter().zip(&header.layers) {
            for (b, h) in bufs.iter().zip(&l.buffers) {
                // Offsets were laid out above from these lengths, so never behind `written`.
                let pad = usize::try_from(h.offset - written).map_err(std::io::Error::other)?;
                w.write_all(&vec![0u8; pad])?;
                w.write_all(b.bytes())?;
                written = h.offset + h.len;
            }
        }
        Ok(())
    })
}

/// Positions of the sampled values in `n` values: spread evenly, the first and the last
/// included.
fn sample_positions(n: usize) -> impl Iterator<Item = usize> {
    (0..SAMPLES).map(move |i| {
        if n <= 1 {
            0
        } else {
            i * (n - 1) / (SAMPLES - 1)
        }
    })
}

/// The bits of [`SAMPLES`] values of `weights` stacked (f32, as the layer reads them).
fn sample(weights: &[Tensor]) -> Result<Vec<u32>> {
    let flat: Vec<Tensor> = weights
        .iter()
        .map(|w| w.flatten_all())
        .collect::<candle_core::Result<_>>()?;
    let total: usize = flat.iter().map(Tensor::elem_count).sum();
    let mut out = Vec::with_capacity(SAMPLES);
    for mut pos in sample_positions(total) {
        for t in &flat {
            let n = t.elem_count();
            if pos < n {
                let v = t
                    .i(pos)?
                    .to_dtype(candle_core::DType::F32)?
                    .to_scalar::<f32>()?;
                out.push(v.to_bits());
                break;
            }
            pos -= n;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn tensors(n: usize, k: usize, seed: f32) -> (Tensor, Tensor) {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i as f32 + seed) * 0.37).sin())
            .collect();
        let b: Vec<f32> = (0..n).map(|j| j as f32 * 0.01).collect();
        (
            Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap(),
            Tensor::from_vec(b, n, &Device::Cpu).unwrap(),
        )
    }

    fn forward(layer: &kernels::Linear, k: usize) -> Vec<u32> {
        let x = Tensor::from_vec(
            (0..3 * k)
                .map(|i| (i as f32 * 0.11).cos())
                .collect::<Vec<f32>>(),
            (3, k),
            &Device::Cpu,
        )
        .unwrap();
        candle_core::Module::forward(layer, &x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect()
    }

    /// Whether the store had to pack any layer (a miss).
    fn packed(store: &PackStore) -> bool {
        lock(&store.layers).iter().any(|b| b.packed)
    }

    const P: Precision = Precision::Int8;

    #[test]
    fn a_second_load_reads_the_same_layers_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (w, b) = tensors(40, 70, 0.0);
        let first = PackStore::open(dir.path(), "model");
        let fresh = first
            .layer("enc.fc1", std::slice::from_ref(&w), Some(&b), P)
            .unwrap();
        assert!(packed(&first));
        assert!(!first.path().exists());
        assert!(first.save().unwrap());
        assert!(first.path().exists());

        let second = PackStore::open(dir.path(), "model");
        let cached = second.layer("enc.fc1", &[w], Some(&b), P).unwrap();
        assert!(!packed(&second), "the layer should come from the file");
        // Nothing packed, nothing written.
        let written = std::fs::metadata(second.path())
            .unwrap()
            .modified()
            .unwrap();
        assert!(!second.save().unwrap());
        assert_eq!(
            std::fs::metadata(second.path())
                .unwrap()
                .modified()
                .unwrap(),
            written
        );
        assert_eq!(forward(&fresh, 70), forward(&cached, 70));
    }

    #[test]
    fn another_key_other_weights_or_a_damaged_file_are_misses_that_give_fresh_layers() {
        let dir = tempfile::tempdir().unwrap();
        let (w, b) = tensors(40, 70, 0.0);
        let store = PackStore::open(dir.path(), "model");
        store
            .layer("l", std::slice::from_ref(&w), Some(&b), P)
            .unwrap();
        store.save().unwrap();
        let path = store.path().to_path_buf();

        // Another key (other weight files, another kernel): another file.
        let other = PackStore::open(dir.path(), "model, replaced");
        other
            .layer("l", std::slice::from_ref(&w), Some(&b), P)
            .unwrap();
        assert!(packed(&other));

        // Other weights at the same key (a file rewritten in place with the same size and
        // time): the sampled values differ.
        let (w2, _) = tensors(40, 70, 1.0);
        let changed = PackStore::open(dir.path(), "model");
        let layer = changed
            .layer("l", std::slice::from_ref(&w2), Some(&b), P)
            .unwrap();
        assert!(packed(&changed));
        let direct = kernels::Linear::new_parts(&[w2], Some(&b), P).unwrap();
        assert_eq!(forward(&layer, 70), forward(&direct, 70));

        // Another size under the same name.
        let (w3, b3) = tensors(40, 64, 0.0);
        let resized = PackStore::open(dir.path(), "model");
        resized.layer("l", &[w3], Some(&b3), P).unwrap();
        assert!(packed(&resized));

        // One byte of the packed weights flipped: its checksum fails.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 100;
        bytes[at] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let damaged = PackStore::open(dir.path(), "model");
        let layer = damaged
            .layer("l", std::slice::from_ref(&w), Some(&b), P)
            .unwrap();
        assert!(packed(&damaged));
        let direct = kernels::Linear::new_parts(std::slice::from_ref(&w), Some(&b), P).unwrap();
        assert_eq!(forward(&layer, 70), forward(&direct, 70));
        // Saving repairs the file.
        assert!(damaged.save().unwrap());
        let repaired = PackStore::open(dir.path(), "model");
        repaired.layer("l", &[w], Some(&b), P).unwrap();
        assert!(!packed(&repaired));
    }

    #[test]
    fn unreadable_files_are_empty_stores() {
        let dir = tempfile::tempdir().unwrap();
        let (w, b) = tensors(8, 16, 0.0);
        let path = PackStore::open(dir.path(), "k").path().to_path_buf();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut valid = Vec::new();
        {
            let s = PackStore::open(dir.path(), "k");
            s.layer("l", std::slice::from_ref(&w), Some(&b), P).unwrap();
            s.save().unwrap();
            valid.extend(std::fs::read(&path).unwrap());
        }
        let header_len = u64::from_le_bytes(valid[8..16].try_into().unwrap());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("other magic", b"VLMPACK0\0\0\0\0\0\0\0\0".to_vec()),
            ("header past the end", {
                let mut v = valid[..16].to_vec();
                v[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
                v
            }),
            (
                "truncated in the buffers",
                valid[..valid.len() - 1].to_vec(),
            ),
            ("header not JSON", {
                let mut v = valid.clone();
                v[16] = b'!';
                v
            }),
            ("header only", valid[..16 + header_len as usize].to_vec()),
        ];
        for (what, bytes) in cases {
            std::fs::write(&path, &bytes).unwrap();
            let s = PackStore::open(dir.path(), "k");
            s.layer("l", std::slice::from_ref(&w), Some(&b), P)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(packed(&s), "{what}");
        }
    }

    /// A header whose buffers overlap, start off a page or start inside the header is refused
    /// as a whole: two layers must never be handed the same mapped bytes.
    #[test]
    fn headers_with_overlapping_or_misplaced_buffers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (wa, ba) = tensors(40, 70, 0.0);
        let (wb, bb) = tensors(40, 70, 3.0);
        let s = PackStore::open(dir.path(), "m");
        s.layer("a", std::slice::from_ref(&wa), Some(&ba), P)
            .unwrap();
        s.layer("b", std::slice::from_ref(&wb), Some(&bb), P)
            .unwrap();
        s.save().unwrap();
        let path = s.path().to_path_buf();
        let valid = std::fs::read(&path).unwrap();
        let header_len = u64::from_le_bytes(valid[8..16].try_into().unwrap()) as usize;
        let header: Header = serde_json::from_slice(&valid[16..16 + header_len]).unwrap();
        assert!(read_old(&path, "m").is_some());
        let first = header.layers[0].buffers[0].offset;
        let with = |edit: &dyn Fn(&mut Header)| {
            let mut h: Header = serde_json::from_slice(&valid[16..16 + header_len]).unwrap();
            edit(&mut h);
            let json = serde_json::to_vec(&h).unwrap();
            // The writer leaves room for offsets of 20 digits: an edited header still ends
            // before the first buffer, which stays where it was.
            assert!(16 + json.len() as u64 <= first);
            let mut bytes = valid.clone();
            bytes[8..16].copy_from_slice(&(json.len() as u64).to_le_bytes());
            bytes[16..first as usize].fill(0);
            bytes[16..16 + json.len()].copy_from_slice(&json);
            std::fs::write(&path, bytes).unwrap();
            read_old(&path, "m").is_none()
        };
        let b0 = header.layers[1].buffers[0].offset;
        assert!(with(
            &|h| h.layers[1].buffers[0].offset = h.layers[0].buffers[0].offset
        ));
        assert!(with(&|h| h.layers[1].buffers[0].offset = b0 + 64));
        assert!(with(&|h| h.layers[0].buffers[0].offset = 0));
        assert!(with(&|h| h.layers[0].buffers[0].len = u64::MAX));
        assert!(with(&|h| h.layers[1].name = "a".into()));
        // And the unedited header is accepted (the edits, not the rewriting, were refused).
        assert!(!with(&|_| {}));
    }

    #[test]
    fn saving_keeps_the_layers_this_load_did_not_ask_for() {
        let dir = tempfile::tempdir().unwrap();
        let (wa, ba) = tensors(40, 70, 0.0);
        let (wb, bb) = tensors(33, 64, 2.0);
        let both = PackStore::open(dir.path(), "m");
        let b_first = both
            .layer("b", std::slice::from_ref(&wb), Some(&bb), P)
            .unwrap();
        both.layer("a", std::slice::from_ref(&wa), Some(&ba), P)
            .unwrap();
        both.save().unwrap();

        // A load that asks for "a" only, and must pack it again (its weights changed).
        let (wa2, _) = tensors(40, 70, 5.0);
        let only_a = PackStore::open(dir.path(), "m");
        only_a
            .layer("a", std::slice::from_ref(&wa2), Some(&ba), P)
            .unwrap();
        assert!(only_a.save().unwrap());

        let after = PackStore::open(dir.path(), "m");
        let b_again = after.layer("b", &[wb], Some(&bb), P).unwrap();
        after.layer("a", &[wa2], Some(&ba), P).unwrap();
        assert!(
            !packed(&after),
            "both layers should be in the rewritten file"
        );
        assert_eq!(forward(&b_first, 64), forward(&b_again, 64));
    }

    /// q, k and v stacked as one layer: the samples span the parts.
    #[test]
    fn stacked_parts_are_one_layer() {
        let dir = tempfile::tempdir().unwrap();
        let parts: Vec<Tensor> = (0..3).map(|i| tensors(16, 32, i as f32).0).collect();
        let bias = Tensor::zeros(48, candle_core::DType::F32, &Device::Cpu).unwrap();
        let s = PackStore::open(dir.path(), "m");
        let fresh = s.layer("qkv", &parts, Some(&bias), P).unwrap();
        s.save().unwrap();
        let again = PackStore::open(dir.path(), "m");
        let cached = again.layer("qkv", &parts, Some(&bias), P).unwrap();
        assert!(!packed(&again));
        assert_eq!(forward(&fresh, 32), forward(&cached, 32));
        // The last part changed: a miss.
        let mut changed = parts.clone();
        changed[2] = tensors(16, 32, 9.0).0;
        let third = PackStore::open(dir.path(), "m");
        third.layer("qkv", &changed, Some(&bias), P).unwrap();
        assert!(packed(&third));
    }
}
