//! x86-64 bf16 kernels: AVX512-BF16 `vdpbf16ps` (and the AMX tiles of `amx.rs`), the weight
//! packing they read, and the per-task loops. (f32 is in `f32.rs` and `f32_x86.rs`.)
//!
//! Weights are cut into panels of output features, zero-padded at the end:
//! - bf16: panels of NR = 32 (two AMX tiles wide); K is padded to Kp, a multiple of 32; panel p
//!   holds, for each block of 32 k (kb), two AMX B tiles of 16 rows × 64 bytes: tile t, row r
//!   holds for c in 0..16 the pair
//!   (W[32p + 16t + c][32kb + 2r], W[32p + 16t + c][32kb + 2r + 1]) ("VNNI" pairs). Row r of both
//!   tiles is also what one step of the `vdpbf16ps` kernel reads, so both bf16 backends share it.
//!
//! Each task converts its rows of x into per-thread scratch in the layout its microkernel reads, so
//! every row-block read is one contiguous stream.

use std::arch::x86_64::*;

use super::buf::{with_scratch, Aligned};
use super::{amx, Backend, Shape};

/// Panel width of the bf16 layouts: output features per panel.
pub(super) const NR: usize = 32;
/// Rows of the `vdpbf16ps` microkernel: 14 × 2 accumulators + 2 weight vectors of the 32
/// registers.
const MR: usize = 14;
/// Budget for a task's converted rows, to stay in L2 (2 MiB per core on the CPUs with AMX, 1 MiB
/// on most with AVX-512).
const TASK_BYTES: usize = 768 * 1024;

/// Rows per microkernel call, the unit a task's rows come in.
pub(super) fn row_unit(backend: Backend) -> usize {
    match backend {
        Backend::AmxBf16 => amx::ROWS,
        _ => MR,
    }
}

/// Most rows a task converts at once (the row blocks of the grid).
pub(super) fn max_task_rows(k: usize) -> usize {
    TASK_BYTES / (2 * k.next_multiple_of(32)).max(1)
}

/// bf16 weights in the panel layout the module describes.
pub(super) struct PackedBf16 {
    pub data: Aligned<u16>,
    pub panels: usize,
}

impl PackedBf16 {
    /// Packs the `n × k` row-major weight made of `parts` stacked (each a whole number of rows;
    /// one part, or q, k and v kept apart). Panels are filled in parallel, each from its 32
    /// weight rows read in order (the padding stays zero): at load this is the one pass over all
    /// the weights, so it is what a single-image call waits for.
    pub(super) fn new(parts: &[&[f32]], n: usize, k: usize) -> Self {
        use rayon::prelude::*;
        // The weight's rows, in order, wherever their part is.
        let rows: Vec<&[f32]> = parts.iter().flat_map(|p| p.chunks_exact(k)).collect();
        debug_assert_eq!(rows.len(), n);
        let panels = n.div_ceil(NR);
        let kp = k.next_multiple_of(32);
        let mut data = Aligned::<u16>::zeroed(panels * kp * NR);
        data.as_mut_slice()
            .par_chunks_mut(kp * NR)
            .zip(rows.par_chunks(NR))
            .for_each(|(panel, rows)| {
                // W[32p + 16t + c][32kb + 2r + e] goes to kb·1024 + t·512 + r·32 + c·2 + e.
                for (col, row) in rows.iter().enumerate() {
                    let (t, c) = (col / 16, col % 16);
                    for (kb, block) in row.chunks(32).enumerate() {
                        let dst = &mut panel[kb * 1024 + t * 512 + c * 2..];
                        for (r, v) in block.chunks(2).enumerate() {
                            dst[r * 32] = bf16(v[0]);
                            if let Some(&odd) = v.get(1) {
                                dst[r * 32 + 1] = bf16(odd);
                            }
                        }
                    }
                }
            });
        PackedBf16 { data, panels }
    }
}

/// f32 to bf16, rounding to nearest even (NaN stays NaN), as `vcvtneps2bf16` does for normal
/// numbers.
pub(super) fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else {
        // No overflow: the largest non-NaN pattern is 0xff80_0000 (-inf).
        ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
    }
}

/// Runs one task: output rows `r0..r1` × panels `p0..p1`.
///
/// # Safety
/// `backend` must be a bf16 backend available on this CPU, and `weight` and `bias` packed for an
/// `s.n × s.k` weight; `x` must hold `r1 × s.k` values; `out` must point to `r1 × s.n`
/// writable f32 values, of which no other thread reads or writes rows
/// `r0..r1` × columns `32·p0..min(32·p1, n)` during the call; `r0 < r1 ≤ m`, `p0 < p1 ≤ panels`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn run_task(
    backend: Backend,
    s: Shape,
    x: &[f32],
    weight: &PackedBf16,
    bias: &[f32],
    out: *mut f32,
    (r0, r1): (usize, usize),
    (p0, p1): (usize, usize),
) {
    let data = &weight.data;
    let kp = s.k.next_multiple_of(32);
    let unit = row_unit(backend);
    let rows = (r1 - r0).next_multiple_of(unit);
    let ck = if backend == Backend::AmxBf16 { 32 } else { 2 };
    with_scratch::<u16, _>(rows * kp, |a| {
        // SAFETY: the caller guarantees avx512bf16 (both bf16 backends need it) and the
        // bounds of x; a holds rows × kp values, rows a multiple of unit.
        unsafe { convert_rows(x, s.k, kp, (r0, r1), a, unit, ck) };
        if backend == Backend::AmxBf16 {
            // SAFETY: forwarded from the caller (AMX available, so its tiles are
            // permitted); `a` was just filled in amx's layout for rows r0..r1.
            unsafe { amx::task(s, a, data.as_slice(), bias, out, (r0, r1), (p0, p1)) }
        } else {
            // SAFETY: as above, in the layout of task_bf16.
            unsafe { task_bf16(s, a, data.as_slice(), bias, out, (r0, r1), (p0, p1)) }
        }
    });
}

/// Converts rows `r0..r1` of `x` (`· × k`, row-major) to bf16 in blocks of `mr` rows: in block b,
/// chunk j of `ck` columns, row i: `a[((b · kp/ck + j) · mr + i) · ck ..][..ck]`. Rows past r1 up
/// to the block's end and columns k..kp are zeros.
///
/// # Safety
/// The CPU must have avx512f, avx512bw, avx512vl and avx512bf16; `x` must hold `r1 × k` values;
/// `a` at least `(r1 - r0).next_multiple_of(mr) × kp`; `kp` a multiple of 32 and ≥ k; ck divides 32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn convert_rows(
    x: &[f32],
    k: usize,
    kp: usize,
    (r0, r1): (usize, usize),
    a: &mut [u16],
    mr: usize,
    ck: usize,
) {
    let rows = (r1 - r0).next_multiple_of(mr);
    let chunks = kp / ck;
    let mut row = [0u16; 32];
    for i in 0..rows {
        let (b, ii) = (i / mr, i % mr);
        let src = if r0 + i < r1 {
            &x[(r0 + i) * k..(r0 + i + 1) * k]
        } else {
            &[][..]
        };
        for c0 in (0..kp).step_by(32) {
            let lo = src.get(c0..).unwrap_or(&[]);
            let hi = src.get(c0 + 16..).unwrap_or(&[]);
            let (lo, hi) = (&lo[..lo.len().min(16)], &hi[..hi.len().min(16)]);
            if ck == 32 {
                // Straight to the destination: 32 values, contiguous.
                let d = ((b * chunks + c0 / 32) * mr + ii) * 32;
                let (dlo, dhi) = a[d..d + 32].split_at_mut(16);
                convert16(lo, dlo);
                convert16(hi, dhi);
            } else {
                convert16(lo, &mut row[..16]);
                convert16(hi, &mut row[16..]);
                for (t, piece) in row.chunks_exact(ck).enumerate() {
                    let d = ((b * chunks + c0 / ck + t) * mr + ii) * ck;
                    for (dst, &v) in a[d..d + ck].iter_mut().zip(piece) {
                        *dst = v;
                    }
                }
            }
        }
    }
}

/// `dst[..16]` = `src` (up to 16 values) in bf16, zero-padded.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
fn convert16(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(16).min(dst.len());
    let mask: __mmask16 = ((1u32 << n) - 1) as __mmask16;
    // SAFETY: the masked load reads only the first n ≤ src.len() values; the store writes 16
    // values to dst, checked to hold 16 (a shorter dst is left as it is).
    unsafe {
        let v = _mm512_maskz_loadu_ps(mask, src.as_ptr());
        let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
        if dst.len() >= 16 {
            _mm256_storeu_si256(dst.as_mut_ptr().cast(), h);
        }
    }
}

/// f32 task: for each K-block, every (panel, row block) through `kernel_f32`, which reads the rows
/// of `x` where they are. (Packing them first, into the k-major order a broadcast would read
/// contiguously, took 7% of a batch run with a scalar loop: the eight row streams cost the
/// kernel nothing measurable.)
///
/// # Safety
/// The first `n` (≤ 16) of 16 lanes.
fn lane_mask(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// bf16 `vdpbf16ps` task: `a` holds the task's rows converted in blocks of MR rows with pairs
/// interleaved (`convert_rows` with ck = 2); each (panel, row block) goes through `kernel_bf16`.
///
/// # Safety
/// As `run_task`, with avx512bf16 and avx512bw, `w` packed as bf16 panels, and `a` filled so.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn task_bf16(
    s: Shape,
    a: &[u16],
    w: &[u16],
    bias: &[f32],
    out: *mut f32,
    (r0, r1): (usize, usize),
    (p0, p1): (usize, usize),
) {
    let kp = s.k.next_multiple_of(32);
    let blocks = (r1 - r0).div_ceil(MR);
    for p in p0..p1 {
        let wp = &w[p * kp * NR..(p + 1) * kp * NR];
        let cols = NR.min(s.n - p * NR);
        for b in 0..blocks {
            let r = r0 + b * MR;
            let ab = &a[b * MR * kp..(b + 1) * MR * kp];
            // SAFETY: ab holds kp/2 pairs × MR rows, wp kp/32 blocks of two tiles; the kernel
            // writes this task's rows r..r + min(MR, r1 - r), columns 32p..32p + cols.
            unsafe {
                kernel_bf16(
                    kp / 32,
                    ab.as_ptr(),
                    wp.as_ptr(),
                    out.add(r * s.n + p * NR),
                    s.n,
                    MR.min(r1 - r),
                    cols,
                    bias[p * NR..].as_ptr(),
                )
            }
        }
    }
}

/// `MR × 32` bf16 microkernel over `kb` blocks of 32 k: `c[i][j] = bias[j] + Σ_k a·w`, a in pairs
/// interleaved by row (`a[(q·MR + i)·2 ..][..2]` holds row i's k = 2q, 2q + 1), w in the panel's
/// tile layout.
///
/// # Safety
/// avx512f, avx512bf16; `a` readable for `kb · 16 · MR` pairs, 4-byte aligned; `w` for
/// `kb · 1024` values; `bias` for 32; `c` as in `kernel_f32`; rows ≤ MR, cols ≤ 32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_bf16(
    kb: usize,
    a: *const u16,
    w: *const u16,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    bias: *const f32,
) {
    // SAFETY: all reads and writes stay in the ranges the contract above names; a's pairs are
    // 4-byte aligned, so reading them as i32 is aligned.
    unsafe {
        let m0 = lane_mask(cols);
        let m1 = lane_mask(cols.saturating_sub(16));
        let bias0 = _mm512_maskz_loadu_ps(m0, bias);
        let bias1 = _mm512_maskz_loadu_ps(m1, bias.wrapping_add(16));
        let mut acc = [[bias0, bias1]; MR];
        let mut a = a.cast::<i32>();
        let mut w = w;
        for _ in 0..kb {
            for r in 0..16 {
                let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(r * 32).cast()));
                let w1: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(w.add(512 + r * 32).cast()));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(i)));
                    acc[0] = _mm512_dpbf16_ps(acc[0], av, w0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], av, w1);
                }
                a = a.add(MR);
            }
            w = w.add(1024);
        }
        for (i, acc) in acc.iter().enumerate() {
            if i < rows {
                let ci = c.add(i * ldc);
                _mm512_mask_storeu_ps(ci, m0, acc[0]);
                // wrapping: past the row's end when m1 is empty (no access then).
                _mm512_mask_storeu_ps(ci.wrapping_add(16), m1, acc[1]);
            }
        }
    }
}
