//! `.npy` output (`vlm embed -f npy`, `vlm index --export`): a float32 matrix, one row per input,
//! and its names file, as clip-retrieval and numpy read them.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::target::WholeFile;
use super::{Existing, Target};

/// The `.npy`'s companion file: `emb.npy` -> `emb.paths.txt` (or `emb.texts.txt`).
pub(crate) fn names_file(npy: &Path, texts: bool) -> PathBuf {
    let stem = npy
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let kind = if texts { "texts" } else { "paths" };
    npy.with_file_name(format!("{stem}.{kind}.txt"))
}

/// Bytes of the `.npy` header, magic included: room for any shape, and a multiple of 64 as the
/// format asks, so the data starts aligned.
const NPY_HEADER: usize = 128;

/// A float32 `.npy` matrix written row by row and its names file, both put in place at the end
/// (the shape, unknown until then, is written last), each checked as an output beforehand.
pub(crate) struct NpyWriter {
    data: std::io::BufWriter<WholeFile>,
    names: std::io::BufWriter<WholeFile>,
    rows: usize,
    dim: Option<usize>,
}

fn npy_header(rows: usize, dim: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    let len = NPY_HEADER - 10;
    out.extend_from_slice(&(len as u16).to_le_bytes());
    let mut text = dict.into_bytes();
    text.resize(len - 1, b' ');
    text.push(b'\n');
    out.extend_from_slice(&text);
    out
}

impl NpyWriter {
    /// The matrix file, for what the run says about its output.
    pub(crate) fn data_target(&self) -> &Target {
        self.data.get_ref().target()
    }

    /// The names file.
    pub(crate) fn names_target(&self) -> &Target {
        self.names.get_ref().target()
    }

    pub(crate) fn create(target: &Path, texts: bool, existing: Existing) -> Result<NpyWriter> {
        let data = Target::check("--output", target, existing)?;
        let names = Target::check("--output", &names_file(target, texts), existing)?;
        let mut data = std::io::BufWriter::new(WholeFile::create(&data, true)?);
        data.write_all(&npy_header(0, 0))?;
        let names = std::io::BufWriter::new(WholeFile::create(&names, false)?);
        Ok(NpyWriter {
            data,
            names,
            rows: 0,
            dim: None,
        })
    }

    pub(crate) fn push(&mut self, name: &[u8], embedding: &[f32]) -> Result<()> {
        match self.dim {
            Some(d) if d != embedding.len() => {
                anyhow::bail!(
                    "embeddings of different lengths ({d} and {})",
                    embedding.len()
                )
            }
            _ => self.dim = Some(embedding.len()),
        }
        let bytes: Vec<u8> = embedding.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.data.write_all(&bytes)?;
        self.names
            .write_all(name)
            .and_then(|()| self.names.write_all(b"\n"))?;
        self.rows += 1;
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<()> {
        let mut data = self.data.into_inner().map_err(|e| e.into_error())?;
        data.seek(SeekFrom::Start(0))?;
        data.write_all(&npy_header(self.rows, self.dim.unwrap_or(0)))?;
        data.flush()?;
        let names = self.names.into_inner().map_err(|e| e.into_error())?;
        data.commit()?;
        names.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_fits_any_shape() {
        for (r, d) in [(0, 0), (3, 48), (usize::MAX, usize::MAX)] {
            let h = npy_header(r, d);
            assert_eq!(h.len(), NPY_HEADER);
            assert_eq!(h[NPY_HEADER - 1], b'\n');
            let text = String::from_utf8_lossy(&h[10..]);
            assert!(text.contains(&format!("'shape': ({r}, {d})")), "{text}");
        }
    }

    #[test]
    fn companion_names() {
        assert_eq!(
            names_file(Path::new("out/emb.npy"), false),
            Path::new("out/emb.paths.txt")
        );
        assert_eq!(
            names_file(Path::new("emb.npy"), true),
            Path::new("emb.texts.txt")
        );
    }
}
