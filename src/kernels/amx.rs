//! bf16 matrix products on Intel AMX tiles (Sapphire Rapids and later), in `asm!`: Rust's AMX
//! intrinsics and `amx-*` target features are not stable.
//!
//! Tiles: one configuration for the whole task, all eight tiles 16 rows × 64 bytes. tmm0..3 are
//! the 32 × 32 f32 accumulator (2 × 2 tiles of 16 × 16), tmm4/5 the two 16-row halves of a
//! 32-row × 32-k block of x in bf16, tmm6/7 the two 16-column halves of a 32-k × 32-column block
//! of weights in VNNI pairs (see x86.rs). Each 32-k step is 4 tile loads and 4 `tdpbf16ps`.
//! Accumulators start from the bias (a tile load with stride 0 repeats one row), and go straight
//! straight to the output with `tilestored` when the block is whole (its lines prefetched for
//! writing when the block starts), through a scratch block otherwise.
//!
//! Linux keeps the 8 KiB tile state off until a process asks for it:
//! `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, once per process ([`tiles_usable`], called
//! once by [`super::cpu::features`]). Where
//! that fails (older kernels, seccomp, other OSes) the AMX backend is reported unavailable and
//! `Backend::best` picks the next one.

use std::arch::asm;

use super::x86::NR;
use super::Shape;

/// Rows per block of the AMX kernel (two tiles of 16).
pub(super) const ROWS: usize = 32;

/// Which AMX kinds the CPU has with the tile state usable (the OS saves it and granted this
/// process permission, asked for once): read once into [`super::cpu::features`].
pub(super) struct TileSupport {
    pub bf16: bool,
    pub int8: bool,
}

pub(super) fn tiles_usable() -> TileSupport {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    let none = TileSupport {
        bf16: false,
        int8: false,
    };
    if __cpuid(0).eax < 7 {
        return none;
    }
    let edx = __cpuid_count(7, 0).edx;
    // CPUID.(EAX=7,ECX=0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE, bit 25 AMX-INT8.
    let (bf16, tile, int8) = (
        edx & (1 << 22) != 0,
        edx & (1 << 24) != 0,
        edx & (1 << 25) != 0,
    );
    if !tile || !(bf16 || int8) || !os_enables_tiles() || !request_permission() {
        return none;
    }
    TileSupport { bf16, int8 }
}

/// XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA): the OS manages the tile state.
fn os_enables_tiles() -> bool {
    use std::arch::x86_64::__cpuid;
    // CPUID.1:ECX bit 27 OSXSAVE: XGETBV is usable.
    if __cpuid(1).ecx & (1 << 27) == 0 {
        return false;
    }
    let xcr0: u64;
    // SAFETY: XGETBV with ECX = 0 reads XCR0; it is valid whenever OSXSAVE is set (checked above),
    // touches no memory and only writes EAX and EDX.
    unsafe {
        let (lo, hi): (u32, u32);
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
        xcr0 = (u64::from(hi) << 32) | u64::from(lo);
    }
    xcr0 & (3 << 17) == 3 << 17
}

#[cfg(target_os = "linux")]
fn request_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, 18) takes two integers, touches no memory of ours,
    // and only changes which state the kernel lets this process use; it fails cleanly (non-zero)
    // on kernels without it.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// Other OSes: not tried (Windows enables AMX differently; not supported here yet).
#[cfg(not(target_os = "linux"))]
fn request_permission() -> bool {
    false
}

/// The tile configuration (palette 1): 8 tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1; // palette
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64; // colsb[t] = 64 bytes (u16, little-endian)
        c[48 + t] = 16; // rows[t]
        t += 1;
    }
    TileConfig(c)
};

/// Releases the tiles when a task ends, however it ends.
pub(super) struct Tiles;

impl Tiles {
    /// # Safety
    /// AMX must be usable ([`tiles_usable`]).
    pub(super) unsafe fn configure() -> Tiles {
        // SAFETY: tiles_usable() established the CPU has AMX-TILE and the OS lets this process use
        // the tile state; CONFIG is a valid palette-1 configuration (rows ≤ 16, colsb ≤ 64).
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly, preserves_flags))
        };
        Tiles
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: only built by configure(), so the CPU has AMX-TILE; TILERELEASE returns the
        // tiles to their initial state and touches no memory.
        unsafe { asm!("tilerelease", options(nomem, nostack, preserves_flags)) };
    }
}

/// One task of the AMX backend: output rows `r0..r1` × panels `p0..p1`, for every panel every
/// 32-row block, the panel's weights staying in L1/L2 while the rows pass.
///
/// # Safety
/// AMX usable ([`tiles_usable`]); `a` the task's rows converted by `convert_rows` with mr = 32, ck = 32 (blocks
/// of 32 rows, for each 32-k chunk 32 rows × 64 bytes); `w` bf16 panels for `s.n × s.k`; `bias`
/// padded to whole panels; `out` as in `run_task`.
pub(super) unsafe fn task(
    s: Shape,
    a: &[u16],
    w: &[u16],
    bias: &[f32],
    out: *mut f32,
    (r0, r1): (usize, usize),
    (p0, p1): (usize, usize),
) {
    let kp = s.k.next_multiple_of(32);
    let kb = kp / 32;
    let blocks = (r1 - r0).div_ceil(ROWS);
    // SAFETY: the caller guarantees AMX is available.
    let _tiles = unsafe { Tiles::configure() };
    let mut scratch = Block([0.0; ROWS * NR]);
    for p in p0..p1 {
        let wp = &w[p * kp * NR..(p + 1) * kp * NR];
        let bp = &bias[p * NR..(p + 1) * NR];
        let cols = NR.min(s.n - p * NR);
        for b in 0..blocks {
            let r = r0 + b * ROWS;
            let rows = ROWS.min(r1 - r);
            let ab = &a[b * ROWS * kp..(b + 1) * ROWS * kp];
            // The first block of a panel asks for the next panel's weights into L2 (32 lines per
            // 32-k step), so they are not fetched from L3 at the pace of the tile loads; later
            // blocks re-prefetch their own panel (in cache already: no traffic).
            let pf = if b == 0 && p + 1 < p1 {
                w[(p + 1) * kp * NR..].as_ptr()
            } else {
                wp.as_ptr()
            };
            let whole = cols == NR && (rows == ROWS || rows == 16);
            // SAFETY: r < r1 ≤ m and 32p < n: inside out.
            let dst = unsafe { out.add(r * s.n + p * NR) };
            if whole {
                // Ask for the output's cache lines now, so that the tile stores at the end of
                // the block (which wait for each line) find them in L1.
                for i in 0..rows {
                    // SAFETY: prefetches never fault; the addresses are inside out anyway.
                    unsafe { prefetch_write(dst.add(i * s.n)) };
                }
            }
            let (c, ldc) = if whole {
                (dst, s.n)
            } else {
                (scratch.0.as_mut_ptr(), NR)
            };
            // SAFETY: ab holds kb chunks of 32 rows × 32 values, wp kb chunks of two B tiles, bp
            // 32 values; c is this task's block of out (whole: rows × 32 values, all inside out
            // and this task's) or the 32 × 32 scratch, with ldc its row length.
            unsafe {
                if rows > 16 {
                    block32(kb, ab.as_ptr(), wp.as_ptr(), pf, bp.as_ptr(), c, ldc);
                } else {
                    block16(kb, ab.as_ptr(), wp.as_ptr(), pf, bp.as_ptr(), c, ldc);
                }
            }
            if !whole {
                // SAFETY: rows r..r + rows (≤ r1 ≤ m) and columns 32p..32p + cols (≤ n) of out
                // belong to this task (caller's contract); the scratch holds rows × 32 values.
                unsafe { copy_block(&scratch.0, rows, cols, dst, s.n) };
            }
        }
    }
}

/// Prefetches the two cache lines of 32 f32 at `p` for writing.
///
/// # Safety
/// None beyond the call (prefetches do not fault); `unsafe` for the pointer arithmetic.
#[inline(always)]
unsafe fn prefetch_write(p: *mut f32) {
    // SAFETY: PREFETCHW is a hint: it never faults and changes no architectural state.
    unsafe {
        asm!("prefetchw [{0}]", "prefetchw [{0} + 64]", in(reg) p, options(nostack, preserves_flags, readonly));
    }
}

/// 32 × 32 f32, aligned for the tile stores and the vector loads.
#[repr(C, align(64))]
struct Block([f32; ROWS * NR]);

/// Copies `rows` rows of `cols` (≤ 32) values from `src` (row length 32) to `dst` (row length `ld`).
///
/// # Safety
/// avx512f (implied by AMX's requirement here of avx512bf16); `dst + i·ld + j` writable for
/// i < rows, j < cols; rows ≤ 32.
#[target_feature(enable = "avx512f")]
unsafe fn copy_block(src: &[f32; ROWS * NR], rows: usize, cols: usize, dst: *mut f32, ld: usize) {
    use std::arch::x86_64::*;
    let m0 = ((1u32 << cols.min(16)) - 1) as __mmask16;
    let m1 = ((1u32 << cols.saturating_sub(16).min(16)) - 1) as __mmask16;
    for (i, row) in src.chunks_exact(NR).take(rows.min(ROWS)).enumerate() {
        // SAFETY: row holds 32 values; the masked stores write columns < cols of dst's row i,
        // which the contract makes writable.
        unsafe {
            let d = dst.add(i * ld);
            _mm512_mask_storeu_ps(d, m0, _mm512_loadu_ps(row.as_ptr()));
            // wrapping: past the row's end when m1 is empty (no access then).
            _mm512_mask_storeu_ps(
                d.wrapping_add(16),
                m1,
                _mm512_loadu_ps(row.as_ptr().add(16)),
            );
        }
    }
}

/// 32 rows × 32 columns: `c = bias + a · w` over `kb` chunks of 32 k.
///
/// Tiles are not renamed: a tile load waits until the products reading the tile's previous
/// contents are done. So each step's operands are loaded right after their last reader, and
/// steps alternate the order of their four products (00 01 11 10, then 01 00 10 11) so that
/// every product's operands were loaded at least one product (16 cycles) earlier, hiding L2
/// latency. The main loop runs two steps and loads the next step's operands, never past the
/// last step; `pf`, 4 KiB per loop, is prefetched into L2.
///
/// # Safety
/// Tiles configured with CONFIG; `a` readable for kb × 2048 bytes, `w` for kb × 2048, `bias` for
/// 128; `c` writable for 32 rows of 128 bytes at a row stride of `ldc` f32; kb ≥ 1.
#[allow(clippy::too_many_arguments)]
unsafe fn block32(
    kb: usize,
    a: *const u16,
    w: *const u16,
    pf: *const u16,
    bias: *const f32,
    c: *mut f32,
    ldc: usize,
) {
    let pairs = (kb - 1) / 2;
    let (mut a, mut w) = (a.cast::<u8>(), w.cast::<u8>());
    // SAFETY: (every asm! block below) tile loads read a and w only within the first kb × 2048
    // bytes (the main loop loads steps ≤ 2·pairs ≤ kb - 1; the tail one step further only when
    // two steps remain), and the 128 bias bytes (stride 0: 16 times the same 64 bytes);
    // prefetches never fault; the stores write 32 rows × 128 bytes of c at stride ldc·4. Only
    // tile registers, the named registers and flags change.
    unsafe {
        asm!(
            "tileloadd tmm0, [{bias} + {zero}*1]",
            "tileloadd tmm1, [{bias} + {zero}*1 + 64]",
            "tileloadd tmm2, [{bias} + {zero}*1]",
            "tileloadd tmm3, [{bias} + {zero}*1 + 64]",
            "tileloadd tmm4, [{a} + {s64}*1]",
            "tileloadd tmm6, [{w} + {s64}*1]",
            "tileloadd tmm7, [{w} + {s64}*1 + 1024]",
            "tileloadd tmm5, [{a} + {s64}*1 + 1024]",
            a = in(reg) a,
            w = in(reg) w,
            bias = in(reg) bias,
            zero = in(reg) 0usize,
            s64 = in(reg) 64usize,
            options(nostack, readonly, preserves_flags),
        );
        if pairs > 0 {
            asm!(
                "2:",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm4, [{a} + {s64}*1 + 2048]",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm7, [{w} + {s64}*1 + 3072]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tileloadd tmm6, [{w} + {s64}*1 + 2048]",
                "tileloadd tmm5, [{a} + {s64}*1 + 3072]",
            "prefetcht1 [{pf} + 0]",
            "prefetcht1 [{pf} + 64]",
            "prefetcht1 [{pf} + 128]",
            "prefetcht1 [{pf} + 192]",
            "prefetcht1 [{pf} + 256]",
            "prefetcht1 [{pf} + 320]",
            "prefetcht1 [{pf} + 384]",
            "prefetcht1 [{pf} + 448]",
            "prefetcht1 [{pf} + 512]",
            "prefetcht1 [{pf} + 576]",
            "prefetcht1 [{pf} + 640]",
            "prefetcht1 [{pf} + 704]",
            "prefetcht1 [{pf} + 768]",
            "prefetcht1 [{pf} + 832]",
            "prefetcht1 [{pf} + 896]",
            "prefetcht1 [{pf} + 960]",
            "prefetcht1 [{pf} + 1024]",
            "prefetcht1 [{pf} + 1088]",
            "prefetcht1 [{pf} + 1152]",
            "prefetcht1 [{pf} + 1216]",
            "prefetcht1 [{pf} + 1280]",
            "prefetcht1 [{pf} + 1344]",
            "prefetcht1 [{pf} + 1408]",
            "prefetcht1 [{pf} + 1472]",
            "prefetcht1 [{pf} + 1536]",
            "prefetcht1 [{pf} + 1600]",
            "prefetcht1 [{pf} + 1664]",
            "prefetcht1 [{pf} + 1728]",
            "prefetcht1 [{pf} + 1792]",
            "prefetcht1 [{pf} + 1856]",
            "prefetcht1 [{pf} + 1920]",
            "prefetcht1 [{pf} + 1984]",
            "prefetcht1 [{pf} + 2048]",
            "prefetcht1 [{pf} + 2112]",
            "prefetcht1 [{pf} + 2176]",
            "prefetcht1 [{pf} + 2240]",
            "prefetcht1 [{pf} + 2304]",
            "prefetcht1 [{pf} + 2368]",
            "prefetcht1 [{pf} + 2432]",
            "prefetcht1 [{pf} + 2496]",
            "prefetcht1 [{pf} + 2560]",
            "prefetcht1 [{pf} + 2624]",
            "prefetcht1 [{pf} + 2688]",
            "prefetcht1 [{pf} + 2752]",
            "prefetcht1 [{pf} + 2816]",
            "prefetcht1 [{pf} + 2880]",
            "prefetcht1 [{pf} + 2944]",
            "prefetcht1 [{pf} + 3008]",
            "prefetcht1 [{pf} + 3072]",
            "prefetcht1 [{pf} + 3136]",
            "prefetcht1 [{pf} + 3200]",
            "prefetcht1 [{pf} + 3264]",
            "prefetcht1 [{pf} + 3328]",
            "prefetcht1 [{pf} + 3392]",
            "prefetcht1 [{pf} + 3456]",
            "prefetcht1 [{pf} + 3520]",
            "prefetcht1 [{pf} + 3584]",
            "prefetcht1 [{pf} + 3648]",
            "prefetcht1 [{pf} + 3712]",
            "prefetcht1 [{pf} + 3776]",
            "prefetcht1 [{pf} + 3840]",
            "prefetcht1 [{pf} + 3904]",
            "prefetcht1 [{pf} + 3968]",
            "prefetcht1 [{pf} + 4032]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm4, [{a} + {s64}*1 + 4096]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tileloadd tmm6, [{w} + {s64}*1 + 4096]",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm7, [{w} + {s64}*1 + 5120]",
                "tileloadd tmm5, [{a} + {s64}*1 + 5120]",
                "add {a}, 4096",
                "add {w}, 4096",
                "add {pf}, 4096",
                "dec {n}",
                "jnz 2b",
                a = inout(reg) a,
                w = inout(reg) w,
                pf = inout(reg) pf => _,
                n = inout(reg) pairs => _,
                s64 = in(reg) 64usize,
                options(nostack, readonly),
            );
        }
        if kb - 2 * pairs == 2 {
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm4, [{a} + {s64}*1 + 2048]",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm7, [{w} + {s64}*1 + 3072]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tileloadd tmm6, [{w} + {s64}*1 + 2048]",
                "tileloadd tmm5, [{a} + {s64}*1 + 3072]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a = in(reg) a,
                w = in(reg) w,
                s64 = in(reg) 64usize,
                options(nostack, readonly, preserves_flags),
            );
        } else {
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                options(nomem, nostack, preserves_flags),
            );
        }
        asm!(
            "tilestored [{c} + {ldc}*1], tmm0",
            "tilestored [{c} + {ldc}*1 + 64], tmm1",
            "tilestored [{c16} + {ldc}*1], tmm2",
            "tilestored [{c16} + {ldc}*1 + 64], tmm3",
            c = in(reg) c,
            c16 = in(reg) c.add(16 * ldc),
            ldc = in(reg) ldc * 4,
            options(nostack, preserves_flags),
        );
    }
}

/// 16 rows × 32 columns: as [`block32`] with the first 16 rows of each chunk of `a`.
///
/// # Safety
/// As [`block32`], `c` writable for 16 rows.
unsafe fn block16(
    kb: usize,
    a: *const u16,
    w: *const u16,
    pf: *const u16,
    bias: *const f32,
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: as in block32, reading the first 1024 bytes of each 2048-byte chunk of a and
    // writing 16 rows of c.
    unsafe {
        asm!(
            "tileloadd tmm0, [{bias} + {zero}*1]",
            "tileloadd tmm1, [{bias} + {zero}*1 + 64]",
            "2:",
            "tileloadd tmm4, [{a} + {s64}*1]",
            "tileloadd tmm6, [{w} + {s64}*1]",
            "tileloadd tmm7, [{w} + {s64}*1 + 1024]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "prefetcht1 [{pf} + 0]",
            "prefetcht1 [{pf} + 64]",
            "prefetcht1 [{pf} + 128]",
            "prefetcht1 [{pf} + 192]",
            "prefetcht1 [{pf} + 256]",
            "prefetcht1 [{pf} + 320]",
            "prefetcht1 [{pf} + 384]",
            "prefetcht1 [{pf} + 448]",
            "prefetcht1 [{pf} + 512]",
            "prefetcht1 [{pf} + 576]",
            "prefetcht1 [{pf} + 640]",
            "prefetcht1 [{pf} + 704]",
            "prefetcht1 [{pf} + 768]",
            "prefetcht1 [{pf} + 832]",
            "prefetcht1 [{pf} + 896]",
            "prefetcht1 [{pf} + 960]",
            "prefetcht1 [{pf} + 1024]",
            "prefetcht1 [{pf} + 1088]",
            "prefetcht1 [{pf} + 1152]",
            "prefetcht1 [{pf} + 1216]",
            "prefetcht1 [{pf} + 1280]",
            "prefetcht1 [{pf} + 1344]",
            "prefetcht1 [{pf} + 1408]",
            "prefetcht1 [{pf} + 1472]",
            "prefetcht1 [{pf} + 1536]",
            "prefetcht1 [{pf} + 1600]",
            "prefetcht1 [{pf} + 1664]",
            "prefetcht1 [{pf} + 1728]",
            "prefetcht1 [{pf} + 1792]",
            "prefetcht1 [{pf} + 1856]",
            "prefetcht1 [{pf} + 1920]",
            "prefetcht1 [{pf} + 1984]",
            "add {a}, 2048",
            "add {w}, 2048",
            "add {pf}, 2048",
            "dec {kb}",
            "jnz 2b",
            "tilestored [{c} + {ldc}*1], tmm0",
            "tilestored [{c} + {ldc}*1 + 64], tmm1",
            a = inout(reg) a => _,
            w = inout(reg) w => _,
            pf = inout(reg) pf => _,
            kb = inout(reg) kb => _,
            bias = in(reg) bias,
            zero = in(reg) 0usize,
            s64 = in(reg) 64usize,
            c = in(reg) c,
            ldc = in(reg) ldc * 4,
            options(nostack),
        );
    }
}
