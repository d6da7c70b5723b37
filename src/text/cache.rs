//! A disk cache of text embeddings: the prompts of built-in aspects are the same on every run, so
//! a second run with the same model encodes no text.
//!
//! One small file per (model, prompts) entry under `<dir>/text-v1/<model hash>/<key hash>.bin`, where
//! the model hash is the first 16 hex digits of SHA-256 of the model key (one folder per model, so
//! entries of a model are easy to find and delete) and the key hash is the full SHA-256 of the entry's
//! key. Entry file, all integers little-endian:
//!
//! ```text
//! b"VLMTXT01"            magic and format version
//! u32 key length, key    the full key (below), so a hash collision can never return a wrong vector
//! u32 dim, dim x f32     the ensembled, normalised embedding
//! u64 checksum           first 8 bytes of SHA-256 over everything before it
//! ```
//!
//! The key is the model key and then each prompt, each written as u32 length + UTF-8 bytes: length
//! prefixes rather than separators, so no prompt text can make two different keys equal.
//!
//! A cache is an optimisation only: `get` answers `None` for anything missing, unreadable or corrupt
//! (the caller recomputes and `put`s, which repairs the entry), and the caller reports a failing `put`
//! as a warning.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// First bytes of every entry; the digits are the format version.
const MAGIC: &[u8; 8] = b"VLMTXT01";
/// Folder of this format under the cache dir, so a future format can live beside it.
const FORMAT_DIR: &str = "text-v1";
/// Folder name length for a model: 64 bits of its key's hash are plenty to keep models apart.
const MODEL_DIR_HEX: usize = 16;

/// Text embeddings on disk, keyed by model and exact prompts.
#[derive(Debug, Clone)]
pub(crate) struct TextCache {
    dir: PathBuf,
}

impl TextCache {
    /// A cache in `dir`; nothing is created until the first `put`.
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The folder given to `new`.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The stored embedding of `prompts` under `model_key` (model, revision and dtype, built by the
    /// caller), or `None` when there is none or it is unreadable or corrupt.
    pub(crate) fn get(&self, model_key: &str, prompts: &[String]) -> Option<Vec<f32>> {
        let key = entry_key(model_key, prompts);
        let bytes = std::fs::read(self.entry_path(model_key, &key)).ok()?;
        decode(&bytes, &key)
    }

    /// Stores the embedding of `prompts` under `model_key`, replacing any entry atomically: readers
    /// see the old file or the new one, never a part, and concurrent writers of one key are safe
    /// (the last rename wins, with the same content).
    pub(crate) fn put(&self, model_key: &str, prompts: &[String], embedding: &[f32]) -> Result<()> {
        // `get` would refuse these; better to say so now than to write an entry that never hits.
        if embedding.is_empty() {
            bail!("cannot cache an empty text embedding");
        }
        if embedding.iter().any(|x| !x.is_finite()) {
            bail!("cannot cache a text embedding with NaN or infinite values");
        }
        let key = entry_key(model_key, prompts);
        let path = self.entry_path(model_key, &key);
        let bytes = encode(&key, embedding)?;
        // No fsync: a torn entry after a crash fails its checksum and is recomputed.
        crate::cache::replace(&path, |w| w.write_all(&bytes))
    }

    fn entry_path(&self, model_key: &str, key: &[u8]) -> PathBuf {
        let model_hash = crate::cache::hex(&Sha256::digest(model_key.as_bytes()));
        self.dir
            .join(FORMAT_DIR)
            .join(&model_hash[..MODEL_DIR_HEX])
            .join(format!("{}.bin", crate::cache::hex(&Sha256::digest(key))))
    }
}

/// The entry's full key: model key, then each prompt, each as u32 LE length + bytes.
fn entry_key(model_key: &str, prompts: &[String]) -> Vec<u8> {
    let mut key = Vec::new();
    for part in std::iter::once(model_key).chain(prompts.iter().map(String::as_str)) {
        // A prompt over 4 GiB cannot reach here (the tokenizer would have to hold it); saturating
        // keeps this total, and the full key bytes still decide equality.
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        key.extend_from_slice(&len.to_le_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key
}

fn checksum(bytes: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(bytes);
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

fn encode(key: &[u8], embedding: &[f32]) -> Result<Vec<u8>> {
    let key_len = u32::try_from(key.len()).context("cache key too long")?;
    let dim = u32::try_from(embedding.len()).context("text embedding too long to cache")?;
    let mut out = Vec::with_capacity(8 + 4 + key.len() + 4 + 4 * embedding.len() + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&dim.to_le_bytes());
    for x in embedding {
        out.extend_from_slice(&x.to_le_bytes());
    }
    let sum = checksum(&out);
    out.extend_from_slice(&sum);
    Ok(out)
}

/// Reads an entry, or `None` unless every part checks out.
fn decode(bytes: &[u8], key: &[u8]) -> Option<Vec<f32>> {
    let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(8)?)?;
    if checksum(body) != sum {
        return None;
    }
    let mut rest = body.strip_prefix(MAGIC)?;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let u32_at = |b: &[u8]| b.try_into().ok().map(u32::from_le_bytes);
    let key_len = usize::try_from(u32_at(take(4)?)?).ok()?;
    if take(key_len)? != key {
        return None;
    }
    let dim = usize::try_from(u32_at(take(4)?)?).ok()?;
    let values = take(dim.checked_mul(4)?)?;
    if dim == 0 || !rest.is_empty() {
        return None;
    }
    let embedding: Vec<f32> = values
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    embedding.iter().all(|x| x.is_finite()).then_some(embedding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const MODEL: &str = "openai/clip-vit-base-patch32@abc123:f32";

    fn cache() -> (tempfile::TempDir, TextCache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = TextCache::new(dir.path().join("cache"));
        (dir, cache)
    }

    /// The one entry file in the cache.
    fn only_entry(cache: &TextCache) -> PathBuf {
        let models: Vec<_> = std::fs::read_dir(cache.dir().join(FORMAT_DIR))
            .unwrap()
            .collect();
        assert_eq!(models.len(), 1);
        let model_dir = models.into_iter().next().unwrap().unwrap().path();
        let entries: Vec<_> = std::fs::read_dir(model_dir).unwrap().collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        entries.into_iter().next().unwrap().unwrap().path()
    }

    #[test]
    fn miss_then_round_trip() {
        let (_tmp, cache) = cache();
        let p = prompts(&["a photo of a cat.", "a bad photo of a cat."]);
        assert_eq!(cache.get(MODEL, &p), None);
        // Nothing is created by a miss.
        assert!(!cache.dir().exists());
        let e = vec![0.6f32, -0.8, 0.0, 1e-30];
        cache.put(MODEL, &p, &e).unwrap();
        assert_eq!(cache.get(MODEL, &p), Some(e.clone()));
        // Overwriting is fine and leaves no temporary files behind.
        cache.put(MODEL, &p, &[1.0, 0.0]).unwrap();
        assert_eq!(cache.get(MODEL, &p), Some(vec![1.0, 0.0]));
        let path = only_entry(&cache);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(name.ends_with(".bin") && name.len() == 64 + 4, "{name}");
    }

    #[test]
    fn other_model_or_prompts_miss() {
        let (_tmp, cache) = cache();
        let p = prompts(&["a photo of a cat."]);
        cache.put(MODEL, &p, &[1.0, 2.0]).unwrap();
        assert_eq!(cache.get("other-model", &p), None);
        assert_eq!(cache.get(MODEL, &prompts(&["a photo of a dog."])), None);
        assert_eq!(cache.get(MODEL, &prompts(&[])), None);
        assert_eq!(
            cache.get(MODEL, &prompts(&["a photo of a cat.", "a photo of a cat."])),
            None
        );
        // Length prefixes: moving text between the model key and a prompt is another key.
        assert_ne!(
            entry_key("ab", &prompts(&["c"])),
            entry_key("a", &prompts(&["bc"]))
        );
        assert_ne!(
            entry_key("a", &prompts(&["b\0c"])),
            entry_key("a", &prompts(&["b", "c"]))
        );
    }

    #[test]
    fn a_wrong_key_in_the_file_is_a_miss() {
        // As if two keys' hashes collided: the file holds another key's vector.
        let bytes = encode(&entry_key(MODEL, &prompts(&["x"])), &[1.0]).unwrap();
        assert_eq!(
            decode(&bytes, &entry_key(MODEL, &prompts(&["x"]))),
            Some(vec![1.0])
        );
        assert_eq!(decode(&bytes, &entry_key(MODEL, &prompts(&["y"]))), None);
    }

    #[test]
    fn corrupt_entries_miss_and_put_repairs_them() {
        let p = prompts(&["a photo of a cat."]);
        let e = vec![0.25f32, 0.5, -0.75];
        type Damage = fn(&mut Vec<u8>);
        let damages: &[(&str, Damage)] = &[
            ("truncated", |b| b.truncate(b.len() - 3)),
            ("truncated to the header", |b| b.truncate(10)),
            ("flipped byte", |b| b[20] ^= 0x01),
            ("flipped value byte", |b| {
                let n = b.len();
                b[n - 10] ^= 0x80
            }),
            ("wrong magic", |b| b[7] = b'2'),
            ("zero length", |b| b.clear()),
            ("extra byte", |b| b.push(0)),
        ];
        for (what, damage) in damages {
            let (_tmp, cache) = cache();
            cache.put(MODEL, &p, &e).unwrap();
            let path = only_entry(&cache);
            let mut bytes = std::fs::read(&path).unwrap();
            damage(&mut bytes);
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(cache.get(MODEL, &p), None, "{what}");
            cache.put(MODEL, &p, &e).unwrap();
            assert_eq!(cache.get(MODEL, &p), Some(e.clone()), "{what}");
        }
    }

    #[test]
    fn a_wrong_magic_with_a_valid_checksum_still_misses() {
        let key = entry_key(MODEL, &prompts(&["x"]));
        let mut bytes = encode(&key, &[1.0]).unwrap();
        let n = bytes.len();
        bytes[0] = b'X';
        let sum = checksum(&bytes[..n - 8]);
        bytes[n - 8..].copy_from_slice(&sum);
        assert_eq!(decode(&bytes, &key), None);
    }

    #[test]
    fn non_finite_values_are_refused_both_ways() {
        let (_tmp, cache) = cache();
        let p = prompts(&["x"]);
        assert!(cache.put(MODEL, &p, &[f32::NAN]).is_err());
        assert!(cache.put(MODEL, &p, &[]).is_err());
        let key = entry_key(MODEL, &p);
        let bytes = encode(&key, &[1.0, f32::INFINITY]).unwrap();
        assert_eq!(decode(&bytes, &key), None);
    }

    #[test]
    fn an_unusable_dir_misses_and_put_fails_without_panicking() {
        let tmp = tempfile::tempdir().unwrap();
        // A file where the cache folder should be: no user, root included, can create under it.
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let cache = TextCache::new(file.join("cache"));
        let p = prompts(&["x"]);
        assert_eq!(cache.get(MODEL, &p), None);
        let e = format!("{:#}", cache.put(MODEL, &p, &[1.0]).unwrap_err());
        assert!(
            e.contains("cannot create cache folder") && e.contains("not-a-dir"),
            "{e}"
        );

        // A missing folder is created by the first put.
        let cache = TextCache::new(tmp.path().join("a/b/c"));
        assert_eq!(cache.get(MODEL, &p), None);
        cache.put(MODEL, &p, &[1.0]).unwrap();
        assert_eq!(cache.get(MODEL, &p), Some(vec![1.0]));
    }

    #[cfg(unix)]
    #[test]
    fn a_read_only_dir_fails_put_unless_root() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ro");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        let cache = TextCache::new(dir.clone());
        let p = prompts(&["x"]);
        assert_eq!(cache.get(MODEL, &p), None);
        let put = cache.put(MODEL, &p, &[1.0]);
        // Root ignores permission bits; anyone else must get an error naming the folder.
        let writable = std::fs::File::create(dir.join("probe")).is_ok();
        if !writable {
            let e = format!("{:#}", put.unwrap_err());
            assert!(e.contains(&dir.display().to_string()), "{e}");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn concurrent_writers_of_one_key_leave_a_valid_entry() {
        let (_tmp, cache) = cache();
        let p = prompts(&["a photo of a cat."]);
        let e: Vec<f32> = (0..512).map(|i| i as f32 / 512.0).collect();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..20 {
                        let put = cache.put(MODEL, &p, &e);
                        // Windows refuses to replace a file another thread has open; the caller
                        // turns that into a warning. Elsewhere the rename always succeeds.
                        if cfg!(unix) {
                            put.unwrap();
                        }
                        assert_eq!(cache.get(MODEL, &p).as_ref(), Some(&e));
                    }
                });
            }
        });
        only_entry(&cache);
    }
}
