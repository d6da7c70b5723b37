//! Exact search over an index held in memory: every embedding in one contiguous row-major `f32`
//! matrix, scored against a query with dot products (the rows and the query are L2-normalised, so a
//! dot product is the cosine), and near-duplicate groups from all pairwise cosines.

use anyhow::Result;
use candle_core::{Device, Tensor};

/// A model's embeddings, one row per file, with the files' paths and sizes.
#[derive(Debug, Clone, Default)]
pub struct Matrix {
    pub dim: usize,
    /// `len() * dim` values, row after row.
    pub data: Vec<f32>,
    /// Each row's path, as stored (bytes).
    pub paths: Vec<Vec<u8>>,
    /// Each row's file size in bytes, when it was indexed.
    pub sizes: Vec<u64>,
}

impl Matrix {
    pub fn new(dim: usize) -> Self {
        Matrix {
            dim,
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub(crate) fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    pub fn push(&mut self, path: &[u8], size: u64, embedding: &[f32]) {
        self.data.extend_from_slice(embedding);
        self.paths.push(path.to_vec());
        self.sizes.push(size);
    }

    /// Appends a row stored as little-endian `f32` bytes (`dim * 4` of them).
    pub(crate) fn push_le(&mut self, path: &[u8], size: u64, bytes: &[u8]) {
        self.data.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        self.paths.push(path.to_vec());
        self.sizes.push(size);
    }
}

/// Lanes of independent partial sums: floating-point addition is not associative, so the compiler
/// vectorises a dot product only when the code itself keeps several sums (16 = four SSE registers,
/// two AVX ones). The scan is bound by memory bandwidth, not arithmetic, from about 10,000 rows of
/// 512 on: an AVX2 build of the same loop measured no faster (BENCHMARKS.md), so there is none.
const LANES: usize = 16;

/// The dot product of two equally long vectors.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in ca.by_ref().zip(cb.by_ref()) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    // Pairwise, so that the lanes add up in a fixed order.
    let mut width = LANES / 2;
    while width > 0 {
        let (low, high) = acc.split_at_mut(width);
        for (s, x) in low.iter_mut().zip(high.iter()) {
            *s += x;
        }
        width /= 2;
    }
    acc[0] + tail
}

fn scores_chunk(data: &[f32], dim: usize, query: &[f32], out: &mut [f32]) {
    for (row, score) in data.chunks_exact(dim).zip(out.iter_mut()) {
        *score = dot(row, query);
    }
}

/// The dot product of `query` with every row, on up to `threads` threads.
pub fn scores(m: &Matrix, query: &[f32], threads: usize) -> Vec<f32> {
    let mut out = vec![0f32; m.len()];
    if m.is_empty() || m.dim == 0 || query.len() != m.dim {
        return out;
    }
    // A thread is worth starting for a few megabytes of rows, not for a handful.
    const MIN_ROWS_PER_THREAD: usize = 16_384;
    let threads = threads.clamp(1, m.len().div_ceil(MIN_ROWS_PER_THREAD).max(1));
    if threads == 1 {
        scores_chunk(&m.data, m.dim, query, &mut out);
        return out;
    }
    let rows_per = m.len().div_ceil(threads);
    std::thread::scope(|s| {
        for (data, out) in m
            .data
            .chunks(rows_per * m.dim)
            .zip(out.chunks_mut(rows_per))
        {
            s.spawn(move || scores_chunk(data, m.dim, query, out));
        }
    });
    out
}

/// One search result: a row and its cosine with the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub row: usize,
    pub score: f32,
}

/// The best rows: scoring at least `threshold`, at most `k` of them, best first (ties in row
/// order, i.e. by path).
pub fn best(scores: &[f32], k: Option<usize>, threshold: Option<f32>) -> Vec<Hit> {
    let mut hits: Vec<Hit> = scores
        .iter()
        .enumerate()
        .filter(|(_, &s)| threshold.is_none_or(|t| s >= t))
        .map(|(row, &score)| Hit { row, score })
        .collect();
    let order = |a: &Hit, b: &Hit| b.score.total_cmp(&a.score).then(a.row.cmp(&b.row));
    if let Some(k) = k {
        if k == 0 {
            return Vec::new();
        }
        if hits.len() > k {
            hits.select_nth_unstable_by(k - 1, order);
            hits.truncate(k);
        }
    }
    hits.sort_unstable_by(order);
    hits
}

/// Rows in one tile of the pairwise comparison: 2048 x 2048 cosines are 16 MiB.
const TILE: usize = 2048;

/// Groups of rows whose cosine is at least `threshold`, linked transitively (single linkage: a
/// copy of a copy joins the group), each group's rows in row order, groups of one left out.
/// All pairs are compared exactly, tile by tile, with the model library's matrix product.
pub fn groups(m: &Matrix, threshold: f32) -> Result<Vec<Vec<usize>>> {
    let n = m.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    if n > 1 && m.dim > 0 {
        let dim = m.dim;
        let tile = |start: usize| -> Result<(usize, Tensor)> {
            let rows = TILE.min(n - start);
            let t = Tensor::from_slice(
                &m.data[start * dim..(start + rows) * dim],
                (rows, dim),
                &Device::Cpu,
            )?;
            Ok((rows, t))
        };
        for a in (0..n).step_by(TILE) {
            let (rows_a, ta) = tile(a)?;
            for b in (a..n).step_by(TILE) {
                let (_, tb) = tile(b)?;
                let cos: Vec<Vec<f32>> = ta.matmul(&tb.t()?)?.to_vec2()?;
                for (i, line) in cos.iter().enumerate().take(rows_a) {
                    for (j, &c) in line.iter().enumerate() {
                        let (x, y) = (a + i, b + j);
                        if y > x && c >= threshold {
                            let (rx, ry) = (find(&mut parent, x), find(&mut parent, y));
                            if rx != ry {
                                parent[rx.max(ry)] = rx.min(ry);
                            }
                        }
                    }
                }
            }
        }
    }
    let mut by_root: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for i in 0..n {
        let r = find(&mut parent, i);
        by_root.entry(r).or_default().push(i);
    }
    Ok(by_root.into_values().filter(|g| g.len() > 1).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn matrix(rows: &[&[f32]]) -> Matrix {
        let mut m = Matrix::new(rows[0].len());
        for (i, r) in rows.iter().enumerate() {
            m.push(format!("{i}").as_bytes(), 0, r);
        }
        m
    }

    #[test]
    fn dot_matches_the_naive_sum_at_every_length() {
        for n in [0, 1, 15, 16, 17, 48, 512, 769] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            assert!((dot(&a, &b) - naive(&a, &b)).abs() < 1e-4, "{n}");
        }
    }

    #[test]
    fn threads_agree() {
        let dim = 40;
        let mut m = Matrix::new(dim);
        for i in 0..40_000 {
            let row: Vec<f32> = (0..dim).map(|j| ((i * 7 + j) as f32).sin()).collect();
            m.push(b"x", 0, &row);
        }
        let q: Vec<f32> = (0..dim).map(|j| (j as f32).cos()).collect();
        let one = scores(&m, &q, 1);
        assert_eq!(scores(&m, &q, 3), one);
        assert!((one[5] - naive(m.row(5), &q)).abs() < 1e-4);
    }

    #[test]
    fn best_ranks_filters_and_cuts() {
        let s = [0.1, 0.9, 0.5, 0.9, -0.2];
        let rows = |h: Vec<Hit>| h.iter().map(|h| h.row).collect::<Vec<_>>();
        assert_eq!(rows(best(&s, None, None)), vec![1, 3, 2, 0, 4]);
        assert_eq!(rows(best(&s, Some(2), None)), vec![1, 3]);
        assert_eq!(rows(best(&s, Some(3), Some(0.6))), vec![1, 3]);
        assert!(best(&s, Some(0), None).is_empty());
    }

    #[test]
    fn groups_link_transitively_and_drop_singletons() {
        let m = matrix(&[
            &[1.0, 0.0, 0.0],
            &[0.0, 1.0, 0.0],
            &[0.999, 0.0447, 0.0],
            &[0.0, 0.0, 1.0],
            &[1.0, 0.0, 0.0],
        ]);
        assert_eq!(groups(&m, 0.99).unwrap(), vec![vec![0, 2, 4]]);
        assert!(groups(&m, 1.5).unwrap().is_empty());
    }
}
