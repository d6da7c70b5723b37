//! Exact search speed on synthetic indexes (ignored by default; numbers in BENCHMARKS.md):
//!
//! ```sh
//! cargo bench --bench search_scale
//! ```
//!
//! Prints queries per second of the in-memory scan (`vlm::index::matrix`) at 10k, 100k and 1M rows
//! of 512 dimensions (CLIP ViT-B), on 1 and 2 threads; and how long writing and reading 100k rows of
//! an index file takes (reading is what every `vlm search` process pays before the scan); and how
//! long `vlm dupes`' all-pairs comparison takes at 10k and 30k rows.

use std::time::{Duration, Instant};

use vlm::index::matrix::{self, Matrix};
use vlm::index::{Db, ModelKey, NewRow, Stamp};

const DIM: usize = 512;

/// xorshift64*: deterministic pseudo-random numbers, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }

    fn unit(&mut self, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim).map(|_| self.next()).collect();
        vlm::score::normalize(&mut v);
        v
    }
}

fn synthetic(rows: usize, rng: &mut Rng) -> Matrix {
    let mut m = Matrix::new(DIM);
    m.data.reserve(rows * DIM);
    for i in 0..rows {
        let v = rng.unit(DIM);
        m.push(format!("/photos/{i:08}.jpg").as_bytes(), 1000, &v);
    }
    m
}

/// Queries per second of `scores` + top 10, run for about a second.
fn qps(m: &Matrix, queries: &[Vec<f32>], threads: usize) -> f64 {
    let started = Instant::now();
    let mut n = 0usize;
    while n < 3 || started.elapsed() < Duration::from_secs(1) {
        let q = &queries[n % queries.len()];
        let scores = matrix::scores(m, q, threads);
        let hits = matrix::best(&scores, Some(10), None);
        std::hint::black_box(hits);
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn queries_per_second() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let queries: Vec<Vec<f32>> = (0..16).map(|_| rng.unit(DIM)).collect();
    println!("dim {DIM}; each query: every row's dot product, then the top 10");
    println!("| rows | 1 thread | 2 threads | ms per query (best) | GB/s scanned (best) |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for rows in [10_000usize, 100_000, 1_000_000] {
        let m = synthetic(rows, &mut rng);
        let one = qps(&m, &queries, 1);
        let two = qps(&m, &queries, 2);
        let best = one.max(two);
        let gbs = best * (rows * DIM * 4) as f64 / 1e9;
        println!(
            "| {rows} | {one:.1} q/s | {two:.1} q/s | {:.2} | {gbs:.1} |",
            1000.0 / best
        );
    }
}

fn reading_an_index_file() {
    let mut rng = Rng(7);
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("bench.sqlite"), vlm::index::Access::Write).unwrap();
    let key = ModelKey {
        model: "bench".into(),
        revision: String::new(),
        dtype: "f32".into(),
    };
    let row = db
        .model_row(&key, "clip", Some(vlm::model::HeadKind::Softmax))
        .unwrap();
    db.set_dimension(&row, DIM).unwrap();
    let rows = 100_000usize;
    let started = Instant::now();
    let paths: Vec<String> = (0..rows).map(|i| format!("/photos/{i:08}.jpg")).collect();
    let vectors: Vec<Vec<f32>> = (0..rows).map(|_| rng.unit(DIM)).collect();
    for chunk in (0..rows).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<NewRow<'_>> = chunk
            .iter()
            .map(|&i| NewRow {
                path: paths[i].as_bytes(),
                stamp: Stamp {
                    size: 1000,
                    mtime_ns: 1,
                },
                result: Ok(&vectors[i]),
            })
            .collect();
        db.write_batch(row.id, &batch).unwrap();
    }
    let written = started.elapsed();
    let row = db.models().unwrap().remove(0);
    let started = Instant::now();
    let m = db.matrix(&row, None, |_| true).unwrap();
    let read = started.elapsed();
    assert_eq!(m.len(), rows);
    let started = Instant::now();
    let like = db.matrix(&row, Some("%/0000%"), |_| true).unwrap();
    let filtered = started.elapsed();
    let size = std::fs::metadata(dir.path().join("bench.sqlite"))
        .map(|m| m.len())
        .unwrap_or(0)
        + std::fs::metadata(dir.path().join("bench.sqlite-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    println!(
        "{rows} rows x {DIM}: written in {:.2} s (batches of 1000), file {:.0} MB; read into the matrix in {:.2} s; --where '%/0000%' ({} rows) in {:.2} s",
        written.as_secs_f64(),
        size as f64 / 1e6,
        read.as_secs_f64(),
        like.len(),
        filtered.as_secs_f64()
    );
}

fn dupes_over_all_pairs() {
    let mut rng = Rng(11);
    for rows in [10_000usize, 30_000] {
        let m = synthetic(rows, &mut rng);
        let started = Instant::now();
        let groups = matrix::groups(&m, 0.97).unwrap();
        let took = started.elapsed().as_secs_f64();
        let pairs = rows as f64 * (rows - 1) as f64 / 2.0;
        println!(
            "dupes: {rows} rows x {DIM}: {took:.2} s for {:.0} M pairs ({:.1} GFLOP/s), {} groups",
            pairs / 1e6,
            // Tiles on the diagonal compute both halves: the work done is about rows^2/2 + tiles.
            2.0 * pairs * DIM as f64 / took / 1e9,
            groups.len()
        );
    }
}

fn main() {
    queries_per_second();
    reading_an_index_file();
    dupes_over_all_pairs();
}
