//! What this CPU (and OS) lets the kernels use, detected once per process (issue 21: the probes
//! were spread over three files), and `VLM_KERNELS`, which caps the instruction sets
//! [`Backend::best`](super::Backend::best) and the elementwise kernels may choose, so a machine
//! with AMX can also run (and time) its AVX2 and portable paths end to end.

use std::sync::OnceLock;

/// Instruction-set levels, lowest first. A cap at a level allows it and every lower one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// No SIMD of vlm's own (the `gemm` crate still dispatches itself; the int8 scalar kernel).
    Portable,
    /// AVX2 + FMA.
    Avx2,
    /// AVX2 + AVX-VNNI (256-bit `vpdpbusd`).
    AvxVnni,
    /// AVX-512 (F, BW, VL, DQ; BF16 and VNNI where present).
    Avx512,
    /// AMX tiles.
    Amx,
}

impl Level {
    /// The names `VLM_KERNELS` takes.
    pub(crate) const NAMES: [(&'static str, Level); 5] = [
        ("portable", Level::Portable),
        ("avx2", Level::Avx2),
        ("avx-vnni", Level::AvxVnni),
        ("avx512", Level::Avx512),
        ("amx", Level::Amx),
    ];

    fn parse(s: &str) -> Option<Level> {
        Level::NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s.trim()))
            .map(|&(_, l)| l)
    }
}

/// The features vlm's kernels test for; all false on other architectures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    pub avx2_fma: bool,
    /// AVX-VNNI (VEX-encoded `vpdpbusd`, Alder Lake, Sapphire Rapids, Zen 5) with AVX2.
    pub avx_vnni: bool,
    /// avx512f.
    pub avx512f: bool,
    /// avx512f + bw + vl + dq: the elementwise and attention kernels.
    pub avx512: bool,
    /// avx512f + bw + vl + bf16.
    pub avx512_bf16: bool,
    /// avx512f + bw + vl + vnni.
    pub avx512_vnni: bool,
    /// AMX-TILE + AMX-BF16, the OS saves the tile state and this process may use it.
    pub amx_bf16: bool,
    /// AMX-TILE + AMX-INT8, likewise.
    pub amx_int8: bool,
}

/// The CPU's features, probed on first use.
pub fn features() -> &'static Features {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    FEATURES.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Features {
    use std::arch::is_x86_feature_detected as has;
    let avx2_fma = has!("avx2") && has!("fma");
    let avx512f = has!("avx512f");
    let avx512 = avx512f && has!("avx512bw") && has!("avx512vl") && has!("avx512dq");
    let avx512_bf16 = avx512f && has!("avx512bw") && has!("avx512vl") && has!("avx512bf16");
    let avx512_vnni = avx512f && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni");
    let tiles = super::amx::tiles_usable();
    Features {
        avx2_fma,
        avx_vnni: avx2_fma && has!("avxvnni"),
        avx512f,
        avx512,
        avx512_bf16,
        // The AMX kernels convert and copy with AVX-512 (bf16: vcvtneps2bf16).
        amx_bf16: tiles.bf16 && avx512_bf16,
        amx_int8: tiles.int8 && avx512,
        avx512_vnni,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Features {
    Features::default()
}

/// The cap `VLM_KERNELS` sets (read once; unset or `auto`: none). An unknown value is reported on
/// stderr once and ignored, so a typo never silently changes which kernels run.
pub(crate) fn cap() -> Level {
    static CAP: OnceLock<Level> = OnceLock::new();
    *CAP.get_or_init(|| match std::env::var("VLM_KERNELS") {
        Ok(v) if v.trim().is_empty() || v.trim().eq_ignore_ascii_case("auto") => Level::Amx,
        Ok(v) => Level::parse(&v).unwrap_or_else(|| {
            let names: Vec<&str> = Level::NAMES.iter().map(|(n, _)| *n).collect();
            eprintln!(
                "vlm: warning: VLM_KERNELS={v:?} is not one of auto, {}; ignored",
                names.join(", ")
            );
            Level::Amx
        }),
        Err(_) => Level::Amx,
    })
}

/// Whether the cap lets kernels of `level` run.
pub(crate) fn allows(level: Level) -> bool {
    level <= cap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(Level::parse("AVX2"), Some(Level::Avx2));
        assert_eq!(Level::parse(" avx-vnni "), Some(Level::AvxVnni));
        assert_eq!(Level::parse("sse"), None);
        assert!(Level::Portable < Level::Avx2 && Level::Avx512 < Level::Amx);
        // Detected once: the same object every time.
        assert!(std::ptr::eq(features(), features()));
        let f = features();
        // Implications the backends rely on.
        assert!(!f.avx512_vnni || f.avx512f);
        assert!(!f.amx_int8 || f.avx512);
        assert!(!f.avx_vnni || f.avx2_fma);
        eprintln!("{f:?}");
    }
}
