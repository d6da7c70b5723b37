//! f32 products with one summation order for every backend, batch size and tiling (issue 24).
//!
//! Each output is `y[i][j] = (((s₀ + b[j]) + s₁) + s₂) …`, where the K-blocks of [`kc`]`(K)` values
//! each give `s = fma(x[i][k], w[j][k], s)` for k ascending from `s = 0`. That order depends on K
//! alone: not on how many rows a call has, where a row falls in a tile or task, how many threads
//! share the work, or whether the weight was packed at load or is packed panel by panel as the
//! product runs. So an image's embedding is the same bits alone or in a batch of any size, and a
//! label's the same encoded alone or with others. Every f32 backend follows it (the AVX-512 and
//! AVX2 microkernels lane by lane, the portable one with `f32::mul_add`), so they also agree with
//! each other bit for bit; `tests.rs` checks each against [`reference`].
//!
//! Weights are cut into panels of [`NRF`] output features, zero-padded at the end; panel p holds,
//! for k in 0..K, the 48 values `W[48p + j][k]` (k-major), so a K-block of a panel is contiguous.
//! Held that way once a batch is tall enough ([`PackedF32`]); before that the product packs each
//! panel's K-block into per-thread scratch just before it is used ([`F32Weights::Rows`]), which
//! is what the `gemm` crate does on every call, and it then reads the same layout.

use super::buf::{with_scratch, Aligned};
use super::{Backend, Shape};

/// Output features per panel: three 16-lane AVX-512 vectors, six AVX2 ones.
pub(super) const NRF: usize = 48;
/// Largest K-block: a 768 × 48 f32 panel block (144 KiB) stays in L2 while it meets every row
/// block of a task, and the partial sums go through memory once per block.
const KC: usize = 768;

/// The K-block length for `k`: `k` split into equal blocks of at most [`KC`] (the last shorter
/// by the remainder). A function of `k` only, which is what makes the order batch-invariant.
pub(super) fn kc(k: usize) -> usize {
    let blocks = k.div_ceil(KC).max(1);
    k.div_ceil(blocks).max(1)
}

/// Rows per microkernel call on `backend` (the unit a task's rows come in).
pub(super) fn row_unit(backend: Backend) -> usize {
    match backend {
        Backend::Avx512F32 => 8,
        Backend::Avx2F32 => 6,
        _ => 4,
    }
}

/// Most rows a task takes at once, so that its rows of x (one K-block of each) stay in L2.
pub(super) fn max_task_rows(k: usize) -> usize {
    (768 * 1024) / (4 * k.min(KC)).max(1)
}

/// An f32 weight packed into panels, zero-padded to whole panels.
pub(super) struct PackedF32 {
    pub data: Aligned<f32>,
    pub panels: usize,
}

impl PackedF32 {
    /// Packs the `n × k` row-major weight made of `parts` stacked (each a whole number of rows;
    /// one part, or q, k and v kept apart). Panels are filled in parallel, each from its 48
    /// weight rows read in order: at load this is the one pass over all the weights.
    pub(super) fn new(parts: &[&[f32]], n: usize, k: usize) -> Self {
        use rayon::prelude::*;
        let rows: Vec<&[f32]> = parts.iter().flat_map(|p| p.chunks_exact(k)).collect();
        debug_assert_eq!(rows.len(), n);
        let panels = n.div_ceil(NRF);
        let mut data = Aligned::<f32>::zeroed(panels * k * NRF);
        data.as_mut_slice()
            .par_chunks_mut(k * NRF)
            .zip(rows.par_chunks(NRF))
            .for_each(|(panel, rows)| pack_block(rows, 0, k, panel));
        PackedF32 { data, panels }
    }
}

/// Writes columns `k0..k0 + klen` of the (up to 48) weight rows `rows` into `dst` in panel
/// layout (`dst[kk·48 + j] = rows[j][k0 + kk]`), zeros for the missing rows of a last panel.
fn pack_block(rows: &[&[f32]], k0: usize, klen: usize, dst: &mut [f32]) {
    let dst = &mut dst[..klen * NRF];
    if rows.len() < NRF {
        dst.fill(0.0);
    }
    // 16 k at a time per row: the writes of one row go to 16 lines that the next rows fill too,
    // and the reads stay sequential.
    for (j, row) in rows.iter().enumerate() {
        for (d, &v) in dst[j..].iter_mut().step_by(NRF).zip(&row[k0..k0 + klen]) {
            *d = v;
        }
    }
}

/// Where a product's weight is.
#[derive(Clone, Copy)]
pub(super) enum F32Weights<'a> {
    /// Packed at load ([`PackedF32`]'s data).
    Packed(&'a [f32]),
    /// The `[out, in]` rows as given (the parts stacked, e.g. q, k and v), packed a panel's
    /// K-block at a time into scratch.
    Rows(&'a [&'a [f32]]),
}

/// The `n` rows of the stacked `parts` (each `[out_i, k]`) for panel `p`.
fn panel_rows<'a>(parts: &[&'a [f32]], k: usize, p: usize, n: usize) -> Vec<&'a [f32]> {
    let (j0, j1) = (p * NRF, ((p + 1) * NRF).min(n));
    let mut rows = Vec::with_capacity(j1 - j0);
    let mut base = 0;
    for part in parts {
        let len = part.len() / k.max(1);
        let (lo, hi) = (j0.max(base), j1.min(base + len));
        for j in lo..hi {
            rows.push(&part[(j - base) * k..(j - base + 1) * k]);
        }
        base += len;
    }
    rows
}

/// One microkernel call: `c[i][j] = init[i][j] + Σ_{kk < klen} a[i][kk] · b[kk·48 + j]` for
/// i < rows, j < cols, the sum taken as [the module says](self); init is `bias[j]` when given,
/// else `c[i][j]` (the sum of the K-blocks so far).
///
/// # Safety
/// Each `a[i]` (i < [`row_unit`] of the backend) readable for `klen` values, `b` for `klen · 48`,
/// `c` row i (i < rows) writable at `c + i·ldc + j` for j < cols, `bias` (if given) readable for
/// 48 values; 1 ≤ rows ≤ the backend's row unit, 1 ≤ cols ≤ 48; the CPU has the backend's
/// features.
pub(super) struct Micro<'a> {
    pub klen: usize,
    pub a: &'a [*const f32; 8],
    pub b: *const f32,
    pub c: *mut f32,
    pub ldc: usize,
    pub rows: usize,
    pub cols: usize,
    pub bias: Option<*const f32>,
}

/// Runs rows `r0..r1` × panels `p0..p1` of `y = x · Wᵀ + b` on `backend` (an f32 one). `bias` is
/// zero-padded to whole panels.
///
/// # Safety
/// `backend` must be an f32 backend this CPU runs; `x` must hold `r1 × s.k` values; `w` the
/// `s.n × s.k` weight (packed: `panels × s.k × 48`); `out` must point to `r1 × s.n` writable
/// values of which no other thread reads or writes rows `r0..r1` × columns
/// `48·p0..min(48·p1, n)` during the call; `r0 < r1`, `p0 < p1 ≤ panels`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn run_task(
    backend: Backend,
    s: Shape,
    x: &[f32],
    w: F32Weights,
    bias: &[f32],
    out: *mut f32,
    (r0, r1): (usize, usize),
    (p0, p1): (usize, usize),
) {
    let kc = kc(s.k);
    let unit = row_unit(backend);
    let body = |scratch: &mut [f32]| {
        let mut k0 = 0;
        while k0 < s.k {
            let klen = kc.min(s.k - k0);
            for p in p0..p1 {
                let wp: &[f32] = match w {
                    F32Weights::Packed(data) => {
                        &data[(p * s.k + k0) * NRF..(p * s.k + k0 + klen) * NRF]
                    }
                    F32Weights::Rows(parts) => {
                        pack_block(&panel_rows(parts, s.k, p, s.n), k0, klen, scratch);
                        &scratch[..klen * NRF]
                    }
                };
                let cols = NRF.min(s.n - p * NRF);
                let mut r = r0;
                while r < r1 {
                    let rows = unit.min(r1 - r);
                    // Rows past r1 read row r1 - 1 again (their sums are never stored).
                    let a: [*const f32; 8] =
                        std::array::from_fn(|i| x[(r + i.min(rows - 1)) * s.k + k0..].as_ptr());
                    let call = Micro {
                        klen,
                        a: &a,
                        b: wp.as_ptr(),
                        // SAFETY: row r < r1 and column 48p < n: inside out.
                        c: unsafe { out.add(r * s.n + p * NRF) },
                        ldc: s.n,
                        rows,
                        cols,
                        bias: (k0 == 0).then(|| bias[p * NRF..].as_ptr()),
                    };
                    // SAFETY: each a[i] starts a run of ≥ klen values of x (row < r1, and
                    // k0 + klen ≤ k); wp holds klen × 48 values; the call writes rows r..r + rows
                    // and columns 48p..48p + cols of out (this task's rectangle, in bounds by the
                    // caller's contract); bias holds 48 values from 48p (padded); the backend
                    // runs on this CPU (the caller's contract).
                    unsafe { micro(backend, &call) };
                    r += unit;
                }
            }
            k0 += klen;
        }
    };
    match w {
        F32Weights::Packed(_) => body(&mut []),
        F32Weights::Rows(_) => with_scratch::<f32, _>(kc * NRF, |s| body(s)),
    }
}

/// Dispatches one microkernel call.
///
/// # Safety
/// As [`Micro`] says, for `backend`.
unsafe fn micro(backend: Backend, m: &Micro) {
    match backend {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded (the caller's contract includes the CPU's features).
        Backend::Avx512F32 => unsafe { super::f32_x86::avx512(m) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Backend::Avx2F32 => unsafe { super::f32_x86::avx2(m) },
        // SAFETY: as above (no features needed).
        _ => unsafe { portable(m) },
    }
}

/// The microkernel in plain Rust, for any CPU: `f32::mul_add` is the fused multiply-add the
/// vector kernels do per lane (a hardware instruction wherever the target has one).
///
/// # Safety
/// As [`Micro`] says (row unit 4).
unsafe fn portable(m: &Micro) {
    let mut init = [0.0f32; NRF];
    if let Some(bias) = m.bias {
        // SAFETY: bias is readable for 48 values (contract).
        init.copy_from_slice(unsafe { std::slice::from_raw_parts(bias, NRF) });
    }
    // SAFETY: b is readable for klen · 48 values (contract).
    let b = unsafe { std::slice::from_raw_parts(m.b, m.klen * NRF) };
    for (i, &ai) in m.a.iter().enumerate().take(m.rows) {
        // SAFETY: a[i] is readable for klen values (contract).
        let a = unsafe { std::slice::from_raw_parts(ai, m.klen) };
        let mut acc = [0.0f32; NRF];
        for (&av, bk) in a.iter().zip(b.chunks_exact(NRF)) {
            for (acc, &bv) in acc.iter_mut().zip(bk) {
                *acc = av.mul_add(bv, *acc);
            }
        }
        // SAFETY: row i < rows of c is writable for cols values (contract).
        let c = unsafe { std::slice::from_raw_parts_mut(m.c.add(i * m.ldc), m.cols) };
        for (j, c) in c.iter_mut().enumerate() {
            let i0 = if m.bias.is_some() { init[j] } else { *c };
            *c = acc[j] + i0;
        }
    }
}

/// The order every f32 backend follows, spelled out one output at a time: `y = x · Wᵀ + b` for
/// `m` rows (`x` `m × k`, `w` `n × k`), for tests to hold the kernels to, bit for bit.
#[cfg(test)]
pub(super) fn reference(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    let kc = kc(k);
    let mut y = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let mut r = bias.map_or(0.0, |b| b[j]);
            for k0 in (0..k).step_by(kc) {
                let mut s = 0.0f32;
                for kk in k0..(k0 + kc).min(k) {
                    s = x[i * k + kk].mul_add(w[j * k + kk], s);
                }
                r += s;
            }
            y.push(r);
        }
    }
    y
}
