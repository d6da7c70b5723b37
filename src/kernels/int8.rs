//! int8 linear layers (issue 24): weights quantized once at load, symmetric per output channel
//! (`w ≈ sw[j] · qw[j][k]`, `qw` in -127..=127); activations quantized per row at every call,
//! asymmetric (`x ≈ sx[i] · (qx[i][k] − zx[i])`, `qx` in 0..=255, the row's range [min(x, 0),
//! max(x, 0)] over 256 steps); products summed exactly in i32; then, per output,
//!
//! `y[i][j] = (Σₖ qx·qw − zx[i] · Σₖ qw[j][k]) as f32 · (sx[i] · sw[j]) + b[j]`
//!
//! in [`dequantize`], which every backend shares. The integer sum is exact in every kernel
//! (no i16 saturation: the AVX2 kernel multiplies with `vpmaddwd` on i16, not `vpmaddubsw`; no i32
//! overflow: `|Σ qx·qw| ≤ 255 · 127 · K < 2³¹` for K ≤ [`MAX_K`]), so every backend gives the same
//! bits, and a row's output depends on that row alone: batch-invariant by construction.
//!
//! Weights are held in one layout all int8 kernels read: panels of [`NR`] = 32 output columns
//! (two AMX tiles wide), K zero-padded to Kp, a multiple of [`KB`] = 64; in panel p, block kb of
//! 64 k, tile t, row r, column c, byte e: `W[32p + 16t + c][64kb + 4r + e]`, at
//! `kb·2048 + t·1024 + r·64 + c·4 + e`. A block's tile t is an AMX B tile (16 rows of 4-k groups ×
//! 16 columns), and its row r is what one step of the VNNI kernels reads (16 columns × 4 k).

use rayon::prelude::*;

use super::buf::Aligned;
use super::{Backend, Epilogue};

/// Output columns per panel.
pub(super) const NR: usize = 32;
/// K per block (one AMX tile row of bytes); K is padded to a multiple of it.
pub(super) const KB: usize = 64;
/// Largest K (in features) an int8 layer takes: the i32 sums cannot overflow below it.
pub(crate) const MAX_K: usize = 65_536;

/// Weights quantized and packed for the int8 kernels, with what the epilogue needs per column
/// (all padded to whole panels: scale 0, column sum 0, bias 0 past `n`).
pub(super) struct PackedInt8 {
    pub data: Aligned<i8>,
    pub panels: usize,
    /// K padded to a multiple of [`KB`].
    pub kp: usize,
    pub scale: Vec<f32>,
    /// Σₖ qw[j][k], for the activations' zero point.
    pub colsum: Vec<i32>,
    pub bias: Vec<f32>,
}

/// 1.5 · 2²³: for |y| < 2²², `(y + MAGIC) − MAGIC` is y rounded to the nearest integer, ties to
/// even (the FPU's default rounding), and the integer sits in the low mantissa bits of
/// `y + MAGIC`. `f32::round_ties_even` is a libm call per value where the build's baseline has no
/// SSE4.1 (`roundss`), which made quantizing slower than the int8 products themselves.
const MAGIC: f32 = 12_582_912.0;

/// `y` rounded to the nearest integer, ties to even, for |y| < 2²².
#[inline(always)]
fn round_even(y: f32) -> f32 {
    (y + MAGIC) - MAGIC
}

/// Quantizes one weight row to `q` (same length): symmetric, `max |w|` maps to 127, ties to even.
/// Returns the scale (0 for an all-zero row, whose values are then all 0). A row holding NaN or
/// an infinity gets a NaN scale, so its outputs are NaN as they would be in f32.
#[inline(always)]
pub(super) fn quantize_weight_row(w: &[f32], q: &mut [i8]) -> f32 {
    // 16 independent lanes and comparisons, as in `quantize_row`: a single running `f32::max`
    // is a chain of dependent, NaN-aware steps, and it was most of a one-image int8 call (the
    // whole tower is quantized at load). The maximum is the same in any order.
    let (mut m16, mut ok16) = ([0f32; 16], [true; 16]);
    let chunks = w.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..16 {
            let a = c[l].abs();
            m16[l] = if a > m16[l] { a } else { m16[l] };
            ok16[l] &= a <= f32::MAX;
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        let a = v.abs();
        m16[l] = if a > m16[l] { a } else { m16[l] };
        ok16[l] &= a <= f32::MAX;
    }
    let amax = m16.iter().fold(0f32, |m, &v| if v > m { v } else { m });
    if !ok16.iter().all(|&o| o) {
        q.fill(0);
        return f32::NAN;
    }
    if amax == 0.0 {
        q.fill(0);
        return 0.0;
    }
    let scale = amax / 127.0;
    for (q, &v) in q.iter_mut().zip(w) {
        // |v / scale| ≤ 127 (plus rounding): within round_even's range. The clamped integer
        // in -127..=127 is the low byte of its MAGIC sum (two's complement).
        let r = round_even(v / scale).clamp(-127.0, 127.0);
        *q = (r + MAGIC).to_bits() as u8 as i8;
    }
    scale
}

/// Quantizes one activation row to `q` (`q.len() ≥ x.len()`; the rest is set to 0): the range
/// [min(x, 0), max(x, 0)] over 0..=255. Returns (scale, zero point). An all-zero row gives scale
/// 0; a row holding NaN or an infinity a NaN scale (its outputs NaN, as in f32).
#[inline(always)]
pub(super) fn quantize_row(x: &[f32], q: &mut [u8]) -> (f32, i32) {
    // 16 independent lanes (a single running min is a chain the compiler cannot vectorise);
    // comparisons rather than f32::min/max, whose NaN rules cost a blend per value: NaN and the
    // infinities are caught by `finite` (|v| ≤ MAX is false for them).
    let (mut lo16, mut hi16, mut ok16) = ([0f32; 16], [0f32; 16], [true; 16]);
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..16 {
            lo16[l] = if c[l] < lo16[l] { c[l] } else { lo16[l] };
            hi16[l] = if c[l] > hi16[l] { c[l] } else { hi16[l] };
            ok16[l] &= c[l].abs() <= f32::MAX;
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        lo16[l] = if v < lo16[l] { v } else { lo16[l] };
        hi16[l] = if v > hi16[l] { v } else { hi16[l] };
        ok16[l] &= v.abs() <= f32::MAX;
    }
    let lo = lo16.iter().fold(0f32, |a, &v| if v < a { v } else { a });
    let hi = hi16.iter().fold(0f32, |a, &v| if v > a { v } else { a });
    let finite = ok16.iter().all(|&o| o);
    let (body, rest) = q.split_at_mut(x.len().min(q.len()));
    rest.fill(0);
    let scale = (hi - lo) / 255.0;
    if !finite || !scale.is_finite() {
        body.fill(0);
        return (f32::NAN, 0);
    }
    if scale == 0.0 {
        body.fill(0);
        return (0.0, 0);
    }
    let inv = 1.0 / scale;
    let zero = round_even(-lo * inv).clamp(0.0, 255.0);
    for (q, &v) in body.iter_mut().zip(x) {
        // |v · inv| ≤ 255 (plus rounding); the clamped integer in 0..=255 is the low byte of
        // its MAGIC sum.
        let r = (round_even(v * inv) + zero).clamp(0.0, 255.0);
        *q = (r + MAGIC).to_bits() as u8;
    }
    (scale, zero as i32)
}

impl PackedInt8 {
    /// Quantizes and packs the `n × k` weight made of `parts` stacked (whole rows each), with
    /// `bias` (`n` values, or none).
    pub(super) fn new(parts: &[&[f32]], bias: Option<&[f32]>, n: usize, k: usize) -> Self {
        let rows: Vec<&[f32]> = parts.iter().flat_map(|p| p.chunks_exact(k)).collect();
        debug_assert_eq!(rows.len(), n);
        let panels = n.div_ceil(NR);
        let kp = k.next_multiple_of(KB);
        let mut data = Aligned::<i8>::zeroed(panels * kp * NR);
        let mut scale = vec![0f32; panels * NR];
        let mut colsum = vec![0i32; panels * NR];
        data.as_mut_slice()
            .par_chunks_mut(kp * NR)
            .zip(rows.par_chunks(NR))
            .zip(scale.par_chunks_mut(NR).zip(colsum.par_chunks_mut(NR)))
            .for_each(|((panel, rows), (scale, colsum))| {
                let mut q = vec![0i8; k];
                for (col, row) in rows.iter().enumerate() {
                    quantize_weight(row, &mut q, &mut scale[col]);
                    colsum[col] = q.iter().map(|&v| i32::from(v)).sum();
                    let (t, c) = (col / 16, col % 16);
                    // One 4-k group (4 bytes) at a time, as one fixed-size copy (a slice of
                    // unknown length was a `memmove` call per group).
                    let groups = q.chunks_exact(4);
                    let last = groups.remainder();
                    let full = groups.len();
                    for (g, group) in groups.enumerate() {
                        let (kb, r) = (g / 16, g % 16);
                        let at = kb * 2048 + t * 1024 + r * 64 + c * 4;
                        panel[at..at + 4].copy_from_slice(group);
                    }
                    if !last.is_empty() {
                        let (kb, r) = (full / 16, full % 16);
                        let at = kb * 2048 + t * 1024 + r * 64 + c * 4;
                        panel[at..at + last.len()].copy_from_slice(last);
                    }
                }
            });
        let mut padded_bias = vec![0f32; panels * NR];
        if let Some(b) = bias {
            padded_bias[..n].copy_from_slice(b);
        }
        Self {
            data,
            panels,
            kp,
            scale,
            colsum,
            bias: padded_bias,
        }
    }

    /// Panel `p`'s weights.
    pub(super) fn panel(&self, p: usize) -> &[i8] {
        &self.data.as_slice()[p * self.kp * NR..(p + 1) * self.kp * NR]
    }
}

/// A batch's rows quantized for the kernels: row-major, `kp` values per row (zeros past K), and
/// rows padded to a multiple of 32 (zeros), so a kernel may read whole blocks of rows.
pub(super) struct QuantRows {
    pub data: QuantData,
    pub kp: usize,
    pub scale: Vec<f32>,
    pub zero: Vec<i32>,
}

pub(super) enum QuantData {
    /// The AMX, VNNI and portable kernels' input.
    U8(Aligned<u8>),
    /// The same values widened to i16, for the AVX2 kernel (`vpmaddwd`).
    I16(Aligned<i16>),
}

/// Rows padded to this multiple in [`QuantRows`] (the AMX kernel's block).
pub(super) const ROW_PAD: usize = 32;

thread_local! {
    /// The calling thread's last quantized-rows buffer, reused by its next product: a fresh one
    /// per call was fresh pages from the OS (page faults, zeroing) 48 times per batch. What a
    /// reused buffer holds past the rows written is never read into a stored output: padded
    /// rows' sums are dropped, and columns past K meet zero weights.
    static SPARE: std::cell::Cell<Option<QuantData>> = const { std::cell::Cell::new(None) };
}

impl Drop for QuantRows {
    fn drop(&mut self) {
        let data = std::mem::replace(&mut self.data, QuantData::U8(Aligned::zeroed(0)));
        SPARE.with(|s| s.set(Some(data)));
    }
}

impl QuantRows {
    /// Quantizes the `rows × k` rows of `x` in parallel, in the form `backend` reads.
    pub(super) fn new(x: &[f32], rows: usize, k: usize, kp: usize, backend: Backend) -> Self {
        let padded = rows.next_multiple_of(ROW_PAD);
        let mut scale = vec![0f32; rows];
        let mut zero = vec![0i32; rows];
        // About 32 rows per job: a few per thread, each worth starting.
        const JOB: usize = 32;
        let data = if backend == Backend::Avx2Int8 {
            let mut data = match SPARE.with(|s| s.take()) {
                Some(QuantData::I16(d)) if d.as_slice().len() >= padded * kp => d,
                _ => Aligned::<i16>::zeroed(padded * kp),
            };
            data.as_mut_slice()[..rows * kp]
                .par_chunks_mut(JOB * kp)
                .zip(x.par_chunks(JOB * k))
                .zip(scale.par_chunks_mut(JOB).zip(zero.par_chunks_mut(JOB)))
                .for_each(|((dst, src), (scale, zero))| {
                    let mut q = vec![0u8; kp];
                    for (i, (d, s)) in dst
                        .chunks_exact_mut(kp)
                        .zip(src.chunks_exact(k))
                        .enumerate()
                    {
                        (scale[i], zero[i]) = quantize_row(s, &mut q);
                        for (d, &v) in d.iter_mut().zip(&q) {
                            *d = i16::from(v);
                        }
                    }
                });
            QuantData::I16(data)
        } else {
            let mut data = match SPARE.with(|s| s.take()) {
                Some(QuantData::U8(d)) if d.as_slice().len() >= padded * kp => d,
                _ => Aligned::<u8>::zeroed(padded * kp),
            };
            data.as_mut_slice()[..rows * kp]
                .par_chunks_mut(JOB * kp)
                .zip(x.par_chunks(JOB * k))
                .zip(scale.par_chunks_mut(JOB).zip(zero.par_chunks_mut(JOB)))
                .for_each(|((dst, src), (scale, zero))| quantize_job(src, dst, scale, zero));
            QuantData::U8(data)
        };
        Self {
            data,
            kp,
            scale,
            zero,
        }
    }
}

super::elementwise::dispatch! {
    /// [`quantize_weight_row`] compiled for the CPU's vector width (the same bits on each: the
    /// steps are exact or correctly rounded), its scale into `scale`.
    fn quantize_weight(w: &[f32], q: &mut [i8], scale: &mut f32) = quantize_weight_inner;
}

#[inline(always)]
fn quantize_weight_inner(w: &[f32], q: &mut [i8], scale: &mut f32) {
    *scale = quantize_weight_row(w, q);
}

super::elementwise::dispatch! {
    /// Quantizes the rows of `x` into `dst` (as many rows, `dst.len() / scale.len()` values
    /// each), their scales and zero points into `scale` and `zero`: [`quantize_row`] compiled
    /// for the CPU's vector width (the same arithmetic, so the same values, on every CPU).
    fn quantize_job(x: &[f32], dst: &mut [u8], scale: &mut [f32], zero: &mut [i32]) = quantize_job_inner;
}

#[inline(always)]
fn quantize_job_inner(x: &[f32], dst: &mut [u8], scale: &mut [f32], zero: &mut [i32]) {
    let rows = scale.len().max(1);
    let (k, kp) = (x.len() / rows, dst.len() / rows);
    if k == 0 || kp == 0 {
        return;
    }
    for (i, (d, s)) in dst.chunks_exact_mut(kp).zip(x.chunks_exact(k)).enumerate() {
        (scale[i], zero[i]) = quantize_row(s, d);
    }
}

super::elementwise::dispatch! {
    /// One output row of [`dequantize`]: `out[j] = (acc[j] − zx·colsum[j]) as f32 ·
    /// (sx·sw[j]) + b[j]`, compiled for the CPU's vector width (the same arithmetic everywhere).
    fn dequantize_row(acc: &[i32], colsum: &[i32], sw: &[f32], bias: &[f32], sxz: (f32, i32), out: &mut [f32]) = dequantize_row_inner;
}

#[inline(always)]
fn dequantize_row_inner(
    acc: &[i32],
    colsum: &[i32],
    sw: &[f32],
    bias: &[f32],
    (sx, zx): (f32, i32),
    out: &mut [f32],
) {
    for ((((o, &a), &cs), &sw), &b) in out.iter_mut().zip(acc).zip(colsum).zip(sw).zip(bias) {
        *o = (a - zx * cs) as f32 * (sx * sw) + b;
    }
}

/// `out[i][j] = (acc[i][j] − zx[i]·colsum[j]) as f32 · (sx[i]·sw[j]) + b[j]` for a block of
/// `rows` rows from `row0` and `cols` columns from panel `p`'s first, then the epilogue on each
/// row's run, while it is in cache. `acc` is `rows × NR` (row stride NR). Every backend ends in
/// this one function, so the same sums give the same bits.
///
/// # Safety
/// `out` must point to the `· × out_dim` output, rows `row0..row0 + rows` × columns
/// `NR·p..NR·p + cols` inside it and written by no one else during the call; `cols ≤ NR`,
/// `NR·p + cols ≤ out_dim`; `row0 + rows ≤ q.scale.len()`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn dequantize(
    acc: &[i32],
    rows: usize,
    cols: usize,
    row0: usize,
    p: usize,
    q: &QuantRows,
    w: &PackedInt8,
    out: *mut f32,
    out_dim: usize,
    epilogue: Epilogue,
) {
    let c0 = p * NR;
    let (scale, colsum, bias) = (
        &w.scale[c0..c0 + NR],
        &w.colsum[c0..c0 + NR],
        &w.bias[c0..c0 + NR],
    );
    for (i, acc) in acc.chunks_exact(NR).take(rows).enumerate() {
        let r = row0 + i;
        let (sx, zx) = (q.scale[r], q.zero[r]);
        // SAFETY: row r, columns c0..c0 + cols are inside out and ours (the contract).
        let run = unsafe { std::slice::from_raw_parts_mut(out.add(r * out_dim + c0), cols) };
        dequantize_row(acc, colsum, scale, bias, (sx, zx), run);
        epilogue.apply(run, r, c0, out_dim);
    }
}

/// The portable kernel: `acc[i][j] = Σₖ qx[row0 + i][k] · qw[j][k]` for `rows` rows and the 32
/// columns of `panel`, read from the packed layout one 4-k group at a time.
pub(super) fn block_portable(
    a: &[u8],
    kp: usize,
    row0: usize,
    rows: usize,
    panel: &[i8],
    acc: &mut [i32],
) {
    for (i, acc) in acc.chunks_exact_mut(NR).take(rows).enumerate() {
        let x = &a[(row0 + i) * kp..(row0 + i + 1) * kp];
        acc.fill(0);
        for (xb, wb) in x.chunks_exact(KB).zip(panel.chunks_exact(2048)) {
            for (r, xq) in xb.chunks_exact(4).enumerate() {
                for (j, acc) in acc.iter_mut().enumerate() {
                    let (t, c) = (j / 16, j % 16);
                    let wq = &wb[t * 1024 + r * 64 + c * 4..][..4];
                    *acc += xq
                        .iter()
                        .zip(wq)
                        .map(|(&x, &w)| i32::from(x) * i32::from(w))
                        .sum::<i32>();
                }
            }
        }
    }
}

/// A 32 × 32 block of i32 sums, aligned for the AMX tile stores.
#[repr(C, align(64))]
pub(super) struct Acc(pub [i32; 32 * NR]);

/// Rows per kernel call of each int8 backend (the grid's row unit).
pub(super) fn row_unit(backend: Backend) -> usize {
    match backend {
        #[cfg(target_arch = "x86_64")]
        Backend::AmxInt8 | Backend::Avx512Vnni | Backend::AvxVnni | Backend::Avx2Int8 => {
            super::int8_x86::row_unit(backend)
        }
        _ => 8,
    }
}

/// Most rows a task takes (so its quantized rows stay in L2 while the panels pass).
pub(super) fn max_task_rows(backend: Backend, kp: usize) -> usize {
    let bytes = if backend == Backend::Avx2Int8 { 2 } else { 1 };
    (768 * 1024) / (kp * bytes).max(1)
}

/// One task of an int8 product: output rows `r0..r1` × panels `p0..p1`.
pub(super) struct Task<'a> {
    pub q: &'a QuantRows,
    pub w: &'a PackedInt8,
    pub out_dim: usize,
    pub out: *mut f32,
    pub rows: (usize, usize),
    pub panels: (usize, usize),
    pub epilogue: Epilogue<'a>,
}

impl Task<'_> {
    /// For each panel, each block of `unit` rows through `kernel` (first row, rows, panel, sums)
    /// into i32 sums, then [`dequantize`] and the epilogue.
    ///
    /// # Safety
    /// `out` must point to the `· × out_dim` output, of which no other thread touches rows
    /// `r0..r1` × columns `NR·p0..min(NR·p1, out_dim)` during the call; `r0 < r1 ≤` q's rows,
    /// `p0 < p1 ≤ w.panels`; `kernel` must fill `rows × NR` sums of `acc`.
    pub(super) unsafe fn blocks(
        &self,
        unit: usize,
        mut kernel: impl FnMut(usize, usize, &[i8], &mut [i32]),
    ) {
        let mut acc = Acc([0; 32 * NR]);
        let ((r0, r1), (p0, p1)) = (self.rows, self.panels);
        for p in p0..p1 {
            let cols = NR.min(self.out_dim - p * NR);
            let panel = self.w.panel(p);
            let mut r = r0;
            while r < r1 {
                let rows = unit.min(r1 - r);
                kernel(r, rows, panel, &mut acc.0);
                // SAFETY: rows r..r + rows ⊆ r0..r1 and columns NR·p..NR·p + cols of out are
                // this task's (the caller's contract); r + rows ≤ r1 ≤ q's rows.
                unsafe {
                    dequantize(
                        &acc.0,
                        rows,
                        cols,
                        r,
                        p,
                        self.q,
                        self.w,
                        self.out,
                        self.out_dim,
                        self.epilogue,
                    )
                };
                r += unit;
            }
        }
    }

    /// Runs the task with `backend`'s kernel.
    ///
    /// # Safety
    /// As [`Task::blocks`]; `backend` must be an int8 backend this CPU runs, `q` quantized for
    /// it by [`QuantRows::new`], `w` packed for the same K, and `r0` a multiple of the
    /// backend's [`row_unit`] (the grid's row steps are).
    pub(super) unsafe fn run(&self, backend: Backend) {
        match (&self.q.data, backend) {
            (QuantData::U8(a), Backend::PortableInt8) => {
                let (a, kp) = (a.as_slice(), self.q.kp);
                // SAFETY: forwarded; block_portable fills rows × NR sums.
                unsafe {
                    self.blocks(row_unit(backend), |r, rows, panel, acc| {
                        block_portable(a, kp, r, rows, panel, acc)
                    })
                }
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: forwarded from the caller.
            _ => unsafe { super::int8_x86::run(self, backend) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => {}
        }
    }
}
