//! The f32 microkernels for x86-64: AVX-512 (8 rows × 48 columns) and AVX2 (6 rows × 16 columns,
//! three times across a panel). Both broadcast one x value per row and k against the panel's
//! weight vectors, so each lane is one output's chain of fused multiply-adds in k order: the
//! order `f32.rs` defines, the same bits from either kernel and from the portable one.

use std::arch::x86_64::*;

use super::f32::{Micro, NRF};

/// AVX-512 vectors per panel row.
const NV: usize = NRF / 16;

/// [`Micro`] on AVX-512: 8 × 3 accumulators. Measured against 14 × 2, 12 × 2, 6 × 4 and 4 × 4:
/// 14 × 2 reads the weights least per FMA (best when they stream from L3, M ≈ 50, by ~10%), 8 × 3
/// and 6 × 4 run ~10% faster once rows are many (M = 1600), where weights come from L2.
///
/// # Safety
/// avx512f; the rest as [`Micro`] says, with a row unit of 8.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn avx512(m: &Micro) {
    const MR: usize = 8;
    let Micro {
        klen: k,
        a,
        b,
        c,
        ldc,
        rows,
        cols,
        bias,
    } = *m;
    // SAFETY: all reads and writes stay in the ranges the contract names.
    unsafe {
        // The output rows are read (later K-blocks) and written only after the K loop; ask for
        // their lines now, so that the epilogue does not wait for L3 one row at a time.
        for i in 0..rows {
            let ci = c.add(i * ldc);
            let mut j = 0;
            while j < cols {
                _mm_prefetch::<_MM_HINT_ET0>(ci.add(j).cast());
                j += 16;
            }
            _mm_prefetch::<_MM_HINT_ET0>(ci.add(cols - 1).cast());
        }
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        // One k: NV weight vectors, each row's value broadcast against them.
        let step = |acc: &mut [[__m512; NV]; MR], kk: usize| {
            let bk = b.add(kk * NRF);
            let bv: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(bk.add(16 * v)));
            for (acc, ai) in acc.iter_mut().zip(a) {
                let av = _mm512_set1_ps(*ai.add(kk));
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm512_fmadd_ps(av, bv, *acc);
                }
            }
        };
        // Unrolled by 4: ~10% faster than one k per iteration (loop overhead and scheduling
        // freedom), measured on Sapphire Rapids. Each accumulator still sees k in order.
        let mut kk = 0;
        while kk + 4 <= k {
            step(&mut acc, kk);
            step(&mut acc, kk + 1);
            step(&mut acc, kk + 2);
            step(&mut acc, kk + 3);
            kk += 4;
        }
        while kk < k {
            step(&mut acc, kk);
            kk += 1;
        }
        let masks: [__mmask16; NV] =
            std::array::from_fn(|v| lane_mask(cols.saturating_sub(16 * v)));
        let mut init = [_mm512_setzero_ps(); NV];
        if let Some(p) = bias {
            for (v, init) in init.iter_mut().enumerate() {
                *init = _mm512_maskz_loadu_ps(masks[v], p.add(16 * v));
            }
        }
        for (i, acc) in acc.iter().enumerate().take(rows) {
            let ci = c.add(i * ldc);
            for (v, &acc) in acc.iter().enumerate() {
                // wrapping: past the row's end when the mask is empty (no access then).
                let cv = ci.wrapping_add(16 * v);
                let i0 = if bias.is_some() {
                    init[v]
                } else {
                    _mm512_maskz_loadu_ps(masks[v], cv)
                };
                _mm512_mask_storeu_ps(cv, masks[v], _mm512_add_ps(acc, i0));
            }
        }
    }
}

/// The first `n` (≤ 16) of 16 lanes.
fn lane_mask(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// [`Micro`] on AVX2 + FMA: for each 16-column third of the panel, 6 rows × 2 vectors (12 of
/// the 16 registers accumulate, 2 hold the weights, 1 the broadcast value), k unrolled by 2.
///
/// # Safety
/// avx2 and fma; the rest as [`Micro`] says, with a row unit of 6.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn avx2(m: &Micro) {
    const MR: usize = 6;
    let Micro {
        klen: k,
        a,
        b,
        c,
        ldc,
        rows,
        cols,
        bias,
    } = *m;
    let mut c0 = 0;
    while c0 < cols {
        let width = 16.min(cols - c0);
        // SAFETY: all reads and writes stay in the ranges the contract names: b + c0 + kk·48
        // + 16 stays within row kk of the panel block (c0 + 16 ≤ 48), c's columns c0..c0 + width
        // are < cols, and bias is read for 48 values at most.
        unsafe {
            let bp = b.add(c0);
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            let step = |acc: &mut [[__m256; 2]; MR], kk: usize| {
                let bk = bp.add(kk * NRF);
                let b0 = _mm256_loadu_ps(bk);
                let b1 = _mm256_loadu_ps(bk.add(8));
                for (acc, ai) in acc.iter_mut().zip(a) {
                    let av = _mm256_broadcast_ss(&*ai.add(kk));
                    acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
                }
            };
            let mut kk = 0;
            while kk + 2 <= k {
                step(&mut acc, kk);
                step(&mut acc, kk + 1);
                kk += 2;
            }
            if kk < k {
                step(&mut acc, kk);
            }
            let masks = [lane_mask8(width), lane_mask8(width.saturating_sub(8))];
            let mut init = [_mm256_setzero_ps(); 2];
            if let Some(p) = bias {
                for (v, init) in init.iter_mut().enumerate() {
                    *init = _mm256_maskload_ps(p.add(c0 + 8 * v), masks[v]);
                }
            }
            for (i, acc) in acc.iter().enumerate().take(rows) {
                let ci = c.add(i * ldc + c0);
                for (v, &acc) in acc.iter().enumerate() {
                    // wrapping: past the row's end when the mask is empty (no access then).
                    let cv = ci.wrapping_add(8 * v);
                    let i0 = if bias.is_some() {
                        init[v]
                    } else {
                        _mm256_maskload_ps(cv, masks[v])
                    };
                    _mm256_maskstore_ps(cv, masks[v], _mm256_add_ps(acc, i0));
                }
            }
        }
        c0 += 16;
    }
}

/// The AVX2 lane mask enabling the first `n` (≤ 8) of 8 lanes (sign bit set).
fn lane_mask8(n: usize) -> __m256i {
    let n = n.min(8) as i32;
    // Built in memory, not with intrinsics: this function has no target features of its own.
    let lanes: [i32; 8] = std::array::from_fn(|l| if (l as i32) < n { -1 } else { 0 });
    // SAFETY: [i32; 8] and __m256i have the same size and any bit pattern is valid for both.
    unsafe { std::mem::transmute::<[i32; 8], __m256i>(lanes) }
}
