//! The x86-64 int8 kernels over the layout of `int8.rs`: each computes, for a block of rows and
//! one 32-column panel, the exact i32 sums `Σₖ qx[i][k] · qw[j][k]` (u8 × i8).
//!
//! | backend | instruction | block | needs |
//! | --- | --- | --- | --- |
//! | `AmxInt8` | `tdpbusd`, 2 × 2 tiles of 16 × 16 i32 | 32 × 32 | AMX-TILE, AMX-INT8, the tile permission |
//! | `Avx512Vnni` | `vpdpbusd zmm` | 14 × 32 | avx512f/bw/vl, avx512vnni |
//! | `AvxVnni` | `vpdpbusd ymm` (VEX) | 6 × 16, twice | avx2, avxvnni |
//! | `Avx2Int8` | `vpmovsxbw` + `vpmaddwd` + `vpaddd` | 3 × 16, twice | avx2 |
//!
//! AVX2 has no u8 × i8 product that cannot saturate: `vpmaddubsw` adds two u8 · i8 products in
//! i16, and 2 · 255 · 127 > 32767. So its kernel widens both sides to i16 (the activations when
//! they are quantized, the weights as they are loaded) and uses `vpmaddwd`, whose i32 pair sums
//! cannot overflow: exact like the others.

use std::arch::asm;
use std::arch::x86_64::*;

use super::amx::Tiles;
use super::int8::{QuantData, Task, KB, NR};
use super::Backend;

const MR_512: usize = 14;
const MR_VNNI: usize = 6;
const MR_AVX2: usize = 3;

pub(super) fn row_unit(backend: Backend) -> usize {
    match backend {
        Backend::AmxInt8 => 32,
        Backend::Avx512Vnni => MR_512,
        Backend::AvxVnni => MR_VNNI,
        _ => MR_AVX2,
    }
}

/// Runs `task` with `backend`'s kernel.
///
/// # Safety
/// As [`Task::run`]: `backend` an x86 int8 backend this CPU runs, the task's rows quantized for
/// it (i16 for AVX2, u8 otherwise; padded to 32 rows), its first row a multiple of the
/// backend's row unit.
pub(super) unsafe fn run(task: &Task, backend: Backend) {
    let kp = task.q.kp;
    let unit = row_unit(backend);
    // SAFETY: (each arm) `blocks`' contract is the caller's; each kernel closure is called with
    // rows r..r + rows (rows ≤ unit) inside the quantized rows, which exist in `a` (padded to
    // 32: for AMX, r is a multiple of 32, so the whole 32-row block exists), and fills rows × 32
    // sums of acc (which holds 32 × 32); the CPU has the kernel's features (the caller's
    // contract: the backend is available).
    unsafe {
        match (&task.q.data, backend) {
            (QuantData::U8(a), Backend::AmxInt8) => {
                let a = a.as_slice();
                let _tiles = Tiles::configure();
                task.blocks(unit, |r, _rows, panel, acc| {
                    debug_assert!((r + 32) * kp <= a.len() && acc.len() >= 32 * NR);
                    block_amx(a.as_ptr().add(r * kp), kp, panel.as_ptr(), acc.as_mut_ptr())
                });
            }
            (QuantData::U8(a), Backend::Avx512Vnni) => {
                let a = a.as_slice();
                task.blocks(unit, |r, rows, panel, acc| {
                    debug_assert!((r + rows) * kp <= a.len());
                    block_vnni512(a.as_ptr().add(r * kp), kp, rows, panel.as_ptr(), acc)
                });
            }
            (QuantData::U8(a), Backend::AvxVnni) => {
                let a = a.as_slice();
                task.blocks(unit, |r, rows, panel, acc| {
                    debug_assert!((r + rows) * kp <= a.len());
                    block_avx_vnni(a.as_ptr().add(r * kp), kp, rows, panel.as_ptr(), acc)
                });
            }
            (QuantData::I16(a), Backend::Avx2Int8) => {
                let a = a.as_slice();
                task.blocks(unit, |r, rows, panel, acc| {
                    debug_assert!((r + rows) * kp <= a.len());
                    block_avx2(a.as_ptr().add(r * kp), kp, rows, panel.as_ptr(), acc)
                });
            }
            // Rows are always quantized in the form the backend reads (QuantRows::new);
            // nothing else reaches here.
            _ => {}
        }
    }
}

/// 32 rows × 32 columns on AMX tiles: tmm0..3 the 2 × 2 i32 accumulator tiles, tmm4/5 the two
/// 16-row halves of a 64-k block of the rows, tmm6/7 the panel's two B tiles of that block.
///
/// # Safety
/// Tiles configured with amx's CONFIG (16 rows × 64 bytes each); `a` readable for 32 rows of
/// `kp` bytes at stride `kp`; `w` for `kp / 64 · 2048` bytes; `c` writable for 32 × 32 i32.
unsafe fn block_amx(a: *const u8, kp: usize, w: *const i8, c: *mut i32) {
    // SAFETY: tile zeroing touches no memory.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nomem, nostack, preserves_flags)
        );
    }
    for kb in 0..kp / KB {
        // SAFETY: the loads read rows 0..16 and 16..32 of a (64 bytes each from column 64·kb <
        // kp, stride kp) and the 2 × 1024 bytes of w's block kb: all inside the contract.
        unsafe {
            asm!(
                "tileloadd tmm4, [{a} + {lda}*1]",
                "tileloadd tmm6, [{w} + {s64}*1]",
                "tileloadd tmm7, [{w} + {s64}*1 + 1024]",
                "tdpbusd tmm0, tmm4, tmm6",
                "tileloadd tmm5, [{a16} + {lda}*1]",
                "tdpbusd tmm1, tmm4, tmm7",
                "tdpbusd tmm2, tmm5, tmm6",
                "tdpbusd tmm3, tmm5, tmm7",
                a = in(reg) a.add(kb * KB),
                a16 = in(reg) a.add(16 * kp + kb * KB),
                lda = in(reg) kp,
                w = in(reg) w.add(kb * 2048),
                s64 = in(reg) 64usize,
                options(nostack, readonly, preserves_flags),
            );
        }
    }
    // SAFETY: four 16 × 64-byte stores into c's 32 rows of 128 bytes.
    unsafe {
        asm!(
            "tilestored [{c} + {s128}*1], tmm0",
            "tilestored [{c} + {s128}*1 + 64], tmm1",
            "tilestored [{c16} + {s128}*1], tmm2",
            "tilestored [{c16} + {s128}*1 + 64], tmm3",
            c = in(reg) c,
            c16 = in(reg) c.add(16 * NR),
            s128 = in(reg) 128usize,
            options(nostack, preserves_flags),
        );
    }
}

/// Reads 4 bytes (one 4-k group of a row) as an i32.
///
/// # Safety
/// `p` readable for 4 bytes.
#[inline(always)]
unsafe fn group(p: *const u8) -> i32 {
    // SAFETY: the contract.
    unsafe { p.cast::<i32>().read_unaligned() }
}

/// `MR_512` rows × 32 columns with `vpdpbusd zmm`: per 4-k group, the panel's row of each tile
/// (16 columns × 4 k) against each row's 4 bytes broadcast. Rows past `rows` repeat the last
/// (their sums are not stored).
///
/// # Safety
/// avx512f/bw/vl/vnni; `a` readable for `rows` rows of `kp` bytes at stride `kp`, 1 ≤ rows ≤
/// MR_512; `w` for `kp / 64 · 2048` bytes; `acc` holds ≥ rows × 32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn block_vnni512(a: *const u8, kp: usize, rows: usize, w: *const i8, acc: &mut [i32]) {
    let x: [*const u8; MR_512] = std::array::from_fn(|i| a.wrapping_add(i.min(rows - 1) * kp));
    let mut c = [[_mm512_setzero_si512(); 2]; MR_512];
    for kb in 0..kp / KB {
        for r in 0..16 {
            let off = kb * KB + r * 4;
            // SAFETY: block kb's tiles 0 and 1, row r: inside w; each x[i] + off + 4 ≤ kp bytes
            // into a row of a (the contract).
            unsafe {
                let wq = w.add(kb * 2048 + r * 64);
                let w0 = _mm512_loadu_si512(wq.cast());
                let w1 = _mm512_loadu_si512(wq.add(1024).cast());
                for (c, x) in c.iter_mut().zip(&x) {
                    let av = _mm512_set1_epi32(group(x.add(off)));
                    c[0] = _mm512_dpbusd_epi32(c[0], av, w0);
                    c[1] = _mm512_dpbusd_epi32(c[1], av, w1);
                }
            }
        }
    }
    for (c, dst) in c.iter().zip(acc.chunks_exact_mut(NR)).take(rows) {
        // SAFETY: dst holds 32 i32.
        unsafe {
            _mm512_storeu_si512(dst.as_mut_ptr().cast(), c[0]);
            _mm512_storeu_si512(dst.as_mut_ptr().add(16).cast(), c[1]);
        }
    }
}

/// `MR_VNNI` rows × 32 columns with the VEX `vpdpbusd ymm`, one 16-column tile at a time.
///
/// # Safety
/// avx2, avxvnni; otherwise as [`block_vnni512`] with MR_VNNI.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn block_avx_vnni(a: *const u8, kp: usize, rows: usize, w: *const i8, acc: &mut [i32]) {
    let x: [*const u8; MR_VNNI] = std::array::from_fn(|i| a.wrapping_add(i.min(rows - 1) * kp));
    for t in 0..2 {
        let mut c = [[_mm256_setzero_si256(); 2]; MR_VNNI];
        for kb in 0..kp / KB {
            for r in 0..16 {
                let off = kb * KB + r * 4;
                // SAFETY: as in block_vnni512: tile t's row r of block kb (64 bytes) is in w.
                unsafe {
                    let wq = w.add(kb * 2048 + t * 1024 + r * 64);
                    let w0 = _mm256_loadu_si256(wq.cast());
                    let w1 = _mm256_loadu_si256(wq.add(32).cast());
                    for (c, x) in c.iter_mut().zip(&x) {
                        let av = _mm256_set1_epi32(group(x.add(off)));
                        c[0] = _mm256_dpbusd_avx_epi32(c[0], av, w0);
                        c[1] = _mm256_dpbusd_avx_epi32(c[1], av, w1);
                    }
                }
            }
        }
        for (c, dst) in c.iter().zip(acc.chunks_exact_mut(NR)).take(rows) {
            // SAFETY: dst holds 32 i32; columns 16t..16t + 16.
            unsafe {
                _mm256_storeu_si256(dst.as_mut_ptr().add(16 * t).cast(), c[0]);
                _mm256_storeu_si256(dst.as_mut_ptr().add(16 * t + 8).cast(), c[1]);
            }
        }
    }
}

/// `MR_AVX2` rows × 32 columns with `vpmaddwd`, one 16-column tile at a time, as four vectors
/// of 4 columns: a 16-byte load (4 columns × 4 k) sign-extended to 16 i16 meets the row's 4 k
/// (i16) repeated 4 times; i32 lane 2c + h holds column c's sum over k pair h, added at the end.
///
/// # Safety
/// avx2; `a` (i16) readable for `rows` rows of `kp` values at stride `kp`, 1 ≤ rows ≤ MR_AVX2;
/// `w` and `acc` as in [`block_vnni512`].
#[target_feature(enable = "avx2")]
unsafe fn block_avx2(a: *const i16, kp: usize, rows: usize, w: *const i8, acc: &mut [i32]) {
    let x: [*const i16; MR_AVX2] = std::array::from_fn(|i| a.wrapping_add(i.min(rows - 1) * kp));
    for t in 0..2 {
        let mut c = [[_mm256_setzero_si256(); 4]; MR_AVX2];
        for kb in 0..kp / KB {
            for r in 0..16 {
                let off = kb * KB + r * 4;
                // SAFETY: tile t's row r of block kb (64 bytes, read as four 16-byte pieces) is
                // in w; each x[i] + off + 4 ≤ kp values into a row of a.
                unsafe {
                    let wq = w.add(kb * 2048 + t * 1024 + r * 64);
                    let av: [__m256i; MR_AVX2] = std::array::from_fn(|i| {
                        _mm256_set1_epi64x(x[i].add(off).cast::<i64>().read_unaligned())
                    });
                    for v in 0..4 {
                        let wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(wq.add(16 * v).cast()));
                        for (c, av) in c.iter_mut().zip(&av) {
                            c[v] = _mm256_add_epi32(c[v], _mm256_madd_epi16(wv, *av));
                        }
                    }
                }
            }
        }
        for (c, dst) in c.iter().zip(acc.chunks_exact_mut(NR)).take(rows) {
            for (v, &cv) in c.iter().enumerate() {
                let mut lanes = [0i32; 8];
                // SAFETY: lanes holds 8 i32.
                unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), cv) };
                for col in 0..4 {
                    dst[16 * t + 4 * v + col] = lanes[2 * col] + lanes[2 * col + 1];
                }
            }
        }
    }
}
