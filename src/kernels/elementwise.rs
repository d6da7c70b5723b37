//! The encoder's work besides its matrix products, on plain f32 rows: layer norm, the MLP
//! activations and the softmax, each one pass over its data.
//!
//! Candle runs each of these as several whole-tensor passes (`x * sigmoid(1.702 * x)` is three,
//! each allocating), with the scalar `exp`/`erf` of libm. Here each is one loop, written so that
//! the compiler vectorises it, and compiled three times: for AVX-512, for AVX2 + FMA and for the
//! x86-64 baseline, chosen at run time (other targets get the baseline loop). The transcendental
//! functions are polynomial approximations accurate to a few units in the last place of f32 (the
//! tests pin each against f64), which is below the differences that summation order already makes
//! between vlm and PyTorch.

/// `dispatch!(vis fn name(args) = inner;)` defines `name`, which runs `inner` (an
/// `#[inline(always)]` function of safe code) compiled for the best instruction set the CPU has:
/// the variants differ only in what the compiler may emit.
macro_rules! dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) = $inner:path;) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
                fn avx512($($arg: $ty),*) {
                    $inner($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $inner($($arg),*)
                }
                if $crate::kernels::elementwise::has_avx512() {
                    // SAFETY: the CPU has every feature `avx512` was compiled for (checked just
                    // above); the function itself is safe code.
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::kernels::elementwise::has_avx2_fma() {
                    // SAFETY: as above, for AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $inner($($arg),*)
        }
    };
}
pub(crate) use dispatch;

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512() -> bool {
    use super::cpu;
    cpu::features().avx512 && cpu::allows(cpu::Level::Avx512)
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    use super::cpu;
    cpu::features().avx2_fma && cpu::allows(cpu::Level::Avx2)
}

/// `exp(x)` for f32: `2^n · p(r)` with `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, `p` the degree-7
/// Taylor polynomial (relative error < 2⁻²³ on that interval). Below -87.3 (where f32's normal
/// range ends) it returns 0 (and above 88.3 it saturates at e^88.3), so a `-inf` mask entry gives exactly 0.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two, so that n · LN2_HI is exact for |n| < 2^10.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 · 2²³: adding it rounds to an integer and leaves that integer in the low mantissa
    // bits, so n and 2ⁿ come from adds and shifts (a float-to-int `as` cast would not vectorise:
    // its saturation is done one lane at a time).
    const MAGIC: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.3);
    let kf = xc * LOG2E + MAGIC;
    let n = kf - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // kf's bits are MAGIC's plus n, and n is in [-126, 127] for x in [-87.3, 88.3]: so
    // (bits + 127) << 23 is 2ⁿ's exponent field (MAGIC's own bits shift out).
    let scale = f32::from_bits(kf.to_bits().wrapping_add(127) << 23);
    if x < -87.3 {
        0.0
    } else {
        p * scale
    }
}

/// `erf(x)`, Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5 · 10⁻⁷).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_72,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// `tanh(x)` from [`exp`]: `1 - 2 / (e^{2|x|} + 1)`, with the sign of `x`.
#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    let a = x.abs().min(20.0);
    let y = 1.0 - 2.0 / (exp(2.0 * a) + 1.0);
    y.copysign(x)
}

dispatch! {
    /// transformers' `QuickGELUActivation`: `x · sigmoid(1.702 · x)`, in place.
    pub(crate) fn quick_gelu(xs: &mut [f32]) = quick_gelu_row;
}

#[inline(always)]
fn quick_gelu_row(xs: &mut [f32]) {
    for v in xs.iter_mut() {
        let x = *v;
        *v = x / (1.0 + exp(-1.702 * x));
    }
}

dispatch! {
    /// PyTorch's exact GELU, `x · (1 + erf(x / √2)) / 2` (transformers' `gelu`), in place.
    pub(crate) fn gelu_erf(xs: &mut [f32]) = gelu_erf_row;
}

#[inline(always)]
fn gelu_erf_row(xs: &mut [f32]) {
    for v in xs.iter_mut() {
        let x = *v;
        *v = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

dispatch! {
    /// The tanh approximation of GELU (`gelu_new`, `gelu_pytorch_tanh`), in place.
    pub(crate) fn gelu_tanh(xs: &mut [f32]) = gelu_tanh_row;
}

#[inline(always)]
fn gelu_tanh_row(xs: &mut [f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    for v in xs.iter_mut() {
        let x = *v;
        *v = 0.5 * x * (1.0 + tanh(C * (x + 0.044_715 * x * x * x)));
    }
}

dispatch! {
    /// Softmax of one row in place: `exp(x - max) / Σ exp(x - max)`. `-inf` entries get 0; a row
    /// of only `-inf` becomes NaN, as in PyTorch.
    pub(crate) fn softmax(xs: &mut [f32]) = softmax_row;
}

/// [`softmax`]'s loop, for callers that are themselves compiled per instruction set.
#[inline(always)]
pub(crate) fn softmax_row(xs: &mut [f32]) {
    // The max and the sum over 16 lanes, so that both vectorise (a single running value is a
    // chain the compiler must keep in order).
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = m.max(x);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    xs.iter_mut().for_each(|v| *v = exp(*v - max));
    let inv = 1.0 / lane_sum(xs, |v| v);
    xs.iter_mut().for_each(|v| *v *= inv);
}

/// Lanes of the partial sums in [`layer_norm`]: one AVX-512 register's worth, so the sums
/// vectorise; the same grouping on every CPU, so the result does not depend on which variant runs.
const LANES: usize = 16;

#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(x);
    }
    acc.iter().sum()
}

dispatch! {
    /// `nn.LayerNorm` over each row of `dim` values of `x`, into `out`: `(x - mean) / sqrt(var +
    /// eps) · weight + bias`, with the biased variance, computed in two passes (mean, then the
    /// squared deviations) as PyTorch's CPU kernel does.
    pub(crate) fn layer_norm(x: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) = layer_norm_row;
}

#[inline(always)]
fn layer_norm_row(x: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let dim = weight.len();
    for (row, o) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean = lane_sum(row, |v| v) / dim as f32;
        let var = lane_sum(row, |v| (v - mean) * (v - mean)) / dim as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, &v), &w), &b) in o.iter_mut().zip(row).zip(weight).zip(bias) {
            *o = (v - mean) * inv * w + b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> impl Iterator<Item = f32> {
        (-4000..=4000).map(|i| i as f32 / 100.0)
    }

    #[test]
    fn exp_is_within_a_few_ulp() {
        for x in grid().chain([-87.0, 88.0, 0.0, -0.0, 1e-8]) {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
    }

    #[test]
    fn erf_and_tanh_are_close_to_f64() {
        for x in grid() {
            let erf_want = libm_erf(x as f64);
            assert!((erf(x) as f64 - erf_want).abs() < 3e-7, "erf({x})");
            let tanh_want = (x as f64).tanh();
            assert!((tanh(x) as f64 - tanh_want).abs() < 3e-7, "tanh({x})");
        }
    }

    /// erf in f64 by its series / continued fraction is overkill here: the A&S bound is on the
    /// exact function, and erf(x) = 1 - erfc(x) with erfc from the complementary series is what
    /// `statrs` would do; a 60-term Taylor series is exact to f64 for |x| ≤ 3 and erf saturates
    /// to ±1 within 2e-8 beyond 4.
    fn libm_erf(x: f64) -> f64 {
        if x.abs() > 4.5 {
            return x.signum();
        }
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0.0;
        while n < 200.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn activations_match_their_definitions() {
        let xs: Vec<f32> = grid().step_by(7).collect();
        let check = |name: &str, f: fn(&mut [f32]), want: &dyn Fn(f64) -> f64| {
            let mut ys = xs.clone();
            f(&mut ys);
            for (&x, &y) in xs.iter().zip(&ys) {
                let w = want(x as f64);
                assert!(
                    (y as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()),
                    "{name}({x}) = {y}, want {w}"
                );
            }
        };
        check("quick_gelu", quick_gelu, &|x| {
            x / (1.0 + (-1.702 * x).exp())
        });
        check("gelu_erf", gelu_erf, &|x| {
            0.5 * x * (1.0 + libm_erf(x / 2f64.sqrt()))
        });
        let c = (2.0 / std::f64::consts::PI).sqrt();
        check("gelu_tanh", gelu_tanh, &|x| {
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        });
    }

    /// Every instruction-set variant gives the baseline loop's numbers exactly (Rust never fuses
    /// a multiply and an add on its own, so the variants differ in width, not in rounding).
    #[test]
    fn dispatched_variants_equal_the_baseline() {
        let xs: Vec<f32> = grid().chain([f32::NEG_INFINITY, -1e30, 1e30]).collect();
        type InPlace = fn(&mut [f32]);
        let pairs: [(InPlace, InPlace); 4] = [
            (quick_gelu, quick_gelu_row),
            (gelu_erf, gelu_erf_row),
            (gelu_tanh, gelu_tanh_row),
            (softmax, softmax_row),
        ];
        for (i, (dispatched, baseline)) in pairs.into_iter().enumerate() {
            let (mut a, mut b) = (xs.clone(), xs.clone());
            dispatched(&mut a);
            baseline(&mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                    "{i}: {x} vs {y}"
                );
            }
        }
        let w: Vec<f32> = (0..40).map(|i| 1.0 + i as f32 * 0.01).collect();
        let bias: Vec<f32> = (0..40).map(|i| i as f32 * 0.1).collect();
        let x = &xs[..40 * 100];
        let (mut a, mut b) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        layer_norm(x, &mut a, &w, &bias, 1e-5);
        layer_norm_row(x, &mut b, &w, &bias, 1e-5);
        assert_eq!(a, b);
    }

    #[test]
    fn softmax_sums_to_one_and_masks() {
        let mut row = vec![1.0, 2.0, f32::NEG_INFINITY, 3.0, -50.0];
        softmax(&mut row);
        let e: Vec<f64> = [1.0f64, 2.0, 3.0, -50.0]
            .iter()
            .map(|v| (v - 3.0).exp())
            .collect();
        let s: f64 = e.iter().sum();
        let want = [e[0] / s, e[1] / s, 0.0, e[2] / s, e[3] / s];
        for (g, w) in row.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-7, "{row:?}");
        }
        assert_eq!(row[2], 0.0);
    }

    #[test]
    fn layer_norm_matches_two_pass_f64() {
        let dim = 37;
        let x: Vec<f32> = (0..3 * dim)
            .map(|i| ((i * 7919) % 101) as f32 * 0.37 - 9.0)
            .collect();
        let w: Vec<f32> = (0..dim).map(|i| 0.5 + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..dim).map(|i| i as f32 * -0.02).collect();
        let mut out = vec![0.0; x.len()];
        layer_norm(&x, &mut out, &w, &b, 1e-5);
        for (row, o) in x.chunks(dim).zip(out.chunks(dim)) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
            for i in 0..dim {
                let want = (row[i] as f64 - mean) / (var + 1e-5).sqrt() * w[i] as f64 + b[i] as f64;
                assert!((o[i] as f64 - want).abs() < 2e-6, "{} vs {want}", o[i]);
            }
        }
    }
}
