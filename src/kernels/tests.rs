//! Every backend this CPU has against a float64 reference, on shapes that are not multiples of any
//! tile (M, N, K), M = 1, K across K-blocks, and every way of cutting the work into tasks.
//!
//! Tolerances, with S = Σₖ |xₖ·wₖ| + |b| for each output (the scale of the sum's rounding error):
//! - f32 backends: |y − exact| ≤ 1e-5 · S.
//! - bf16 backends: against the product of the bf16-rounded x and W (what they compute):
//!   |y − exact̃| ≤ 1e-5 · S̃ (f32 accumulation); against the exact product: ≤ 8e-3 · S (each of
//!   x and w is off by at most 2⁻⁹ relative, so each product by about 2⁻⁸ = 3.9e-3).

use super::*;

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| {
            let b = x.to_bits();
            f32::from_bits(((b + 0x7fff + ((b >> 16) & 1)) >> 16) << 16)
        })
        .collect()
}

/// (exact y, S) per output, in f64.
fn reference(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) -> Vec<(f64, f64)> {
    let mut r = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let bias = b.map_or(0.0, |b| f64::from(b[j]));
            let (mut y, mut s) = (bias, bias.abs());
            for kk in 0..k {
                let p = f64::from(x[i * k + kk]) * f64::from(w[j * k + kk]);
                y += p;
                s += p.abs();
            }
            r.push((y, s));
        }
    }
    r
}

fn check(what: &str, y: &[f32], r: &[(f64, f64)], tol: f64) {
    assert_eq!(y.len(), r.len());
    for (idx, (&y, &(exact, scale))) in y.iter().zip(r).enumerate() {
        let err = (f64::from(y) - exact).abs();
        assert!(
            err <= tol * scale + 1e-30,
            "{what}: output {idx}: {y} vs {exact} (error {err:e}, allowed {:e})",
            tol * scale
        );
    }
}

/// The float backends (the int8 ones are held to their own, exact, reference: `int8` below).
const ALL: [Backend; 5] = [
    Backend::Avx512F32,
    Backend::Avx2F32,
    Backend::AmxBf16,
    Backend::Avx512Bf16,
    Backend::Portable,
];

/// A backend this CPU cannot run is not silently passed (issue 21): it must be refused by name
/// when asked for, and it is reported on stderr. With `VLM_REQUIRE_KERNELS=all` (or a list of
/// backend names, e.g. `AmxInt8,Avx2Int8`), as on a machine known to have them, it fails instead.
/// Returns whether the backend can be tested here.
fn testable(backend: Backend) -> bool {
    if backend.is_available() {
        return true;
    }
    let w = values(6, 1);
    assert_eq!(
        PackedLinear::with_backend(&w, None, 2, 3, backend).unwrap_err(),
        KernelError::Unavailable(backend)
    );
    let required = std::env::var("VLM_REQUIRE_KERNELS").unwrap_or_default();
    let name = format!("{backend:?}");
    assert!(
        !(required.trim() == "all" || required.split(',').any(|r| r.trim() == name)),
        "{name} is required (VLM_REQUIRE_KERNELS={required}) but this CPU cannot run it"
    );
    eprintln!("NOT TESTED: this CPU cannot run backend {name}; only its refusal was checked");
    false
}

/// (M, K, N): odd sizes around the tiles (14, 16 or 8 rows, 32 or 48 columns, 32 k for bf16, 768 k
/// per f32 block), M = 1, one of each dimension, and one encoder layer's K and N at batch 1.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 5, 3),
    (1, 768, 70),
    (2, 33, 17),
    (13, 31, 33),
    (14, 32, 32),
    (15, 64, 47),
    (16, 40, 64),
    (17, 300, 31),
    (29, 100, 65),
    (32, 32, 32),
    (33, 129, 96),
    (50, 600, 45),
    (67, 65, 97),
    (9, 1000, 50),
];

fn run_backend(backend: Backend) {
    if !testable(backend) {
        return;
    }
    for (si, &(m, k, n)) in SHAPES.iter().enumerate() {
        let x = values(m * k, 3 * si as u64 + 1);
        let w = values(n * k, 3 * si as u64 + 2);
        let b = values(n, 3 * si as u64 + 3);
        for bias in [Some(&b[..]), None] {
            let lin = PackedLinear::with_backend(&w, bias, n, k, backend).unwrap();
            assert_eq!(lin.backend(), backend);
            let exact = reference(&x, &w, bias, m, k, n);
            let rounded = backend
                .is_bf16()
                .then(|| reference(&round_bf16(&x), &round_bf16(&w), bias, m, k, n));
            for threads in [1, 2, 3, 5] {
                // NaN-filled, so an output the kernel misses fails the check.
                let mut y = vec![f32::NAN; m * n];
                lin.forward_threads(&x, m, &mut y, Epilogue::None, threads)
                    .unwrap();
                let what = format!(
                    "{backend:?} {m}x{k}x{n} bias {} threads {threads}",
                    bias.is_some()
                );
                match &rounded {
                    None => check(&what, &y, &exact, 1e-5),
                    Some(r) => {
                        check(&format!("{what} (bf16-rounded inputs)"), &y, r, 1e-5);
                        check(&format!("{what} (exact)"), &y, &exact, 8e-3);
                    }
                }
            }
        }
    }
}

/// Every backend, every split: `Map` sees each output value exactly once and `Add` adds the
/// residual at the right place (both against the plain product, which they must equal exactly
/// after the same elementwise step).
#[test]
fn epilogues_apply_once_to_every_value() {
    for backend in BACKENDS.into_iter().filter(|&b| testable(b)) {
        for &(m, k, n) in &[(1, 7, 5), (33, 129, 96), (67, 65, 97), (700, 64, 40)] {
            let x = values(m * k, 21);
            let w = values(n * k, 22);
            let b = values(n, 23);
            let residual = values(m * n, 24);
            let lin = PackedLinear::with_backend(&w, Some(&b), n, k, backend).unwrap();
            for threads in [1, 2, 3] {
                let mut plain = vec![f32::NAN; m * n];
                lin.forward_threads(&x, m, &mut plain, Epilogue::None, threads)
                    .unwrap();
                // Applied twice, x -> 2x + 1 would give 4x + 3: each value must be mapped once.
                let map = |run: &mut [f32]| run.iter_mut().for_each(|v| *v = 2.0 * *v + 1.0);
                let mut mapped = vec![f32::NAN; m * n];
                lin.forward_threads(&x, m, &mut mapped, Epilogue::Map(&map), threads)
                    .unwrap();
                let mut added = vec![f32::NAN; m * n];
                lin.forward_threads(&x, m, &mut added, Epilogue::Add(&residual), threads)
                    .unwrap();
                for i in 0..m * n {
                    assert_eq!(mapped[i], 2.0 * plain[i] + 1.0, "{backend:?} map {i}");
                    assert_eq!(added[i], plain[i] + residual[i], "{backend:?} add {i}");
                }
            }
            let mut y = vec![0.0; m * n];
            let short = vec![0.0; m * n - 1];
            assert!(matches!(
                lin.forward_with(&x, m, &mut y, Epilogue::Add(&short)),
                Err(KernelError::Length {
                    what: "residual",
                    ..
                })
            ));
        }
    }
}

#[test]
fn avx512_f32_matches_reference() {
    run_backend(Backend::Avx512F32);
}

#[test]
fn amx_bf16_matches_reference() {
    run_backend(Backend::AmxBf16);
}

#[test]
fn avx512_bf16_matches_reference() {
    run_backend(Backend::Avx512Bf16);
}

#[test]
fn avx2_f32_matches_reference() {
    run_backend(Backend::Avx2F32);
}

#[test]
fn portable_matches_reference() {
    run_backend(Backend::Portable);
}

/// Issue 24: every f32 backend gives exactly the bits of `f32::reference` (one order of
/// summation, fixed by K alone), packed at load or packed as it runs, whatever the number of rows
/// and threads; so a row's output never depends on the rows beside it, and the backends agree.
#[test]
fn f32_backends_follow_one_order_bit_for_bit() {
    // K across one, two and four K-blocks (768 per block at most), N around the 48-wide panels.
    let shapes: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (7, 5, 3),
        (9, 768, 49),
        (13, 769, 97),
        (50, 1000, 48),
        (3, 3072, 20),
        (130, 77, 50),
    ];
    for backend in [Backend::Avx512F32, Backend::Avx2F32, Backend::Portable] {
        if !testable(backend) {
            continue;
        }
        for (si, &(m, k, n)) in shapes.iter().enumerate() {
            let x = values(m * k, 5 * si as u64 + 1);
            let w = values(n * k, 5 * si as u64 + 2);
            let b = values(n, 5 * si as u64 + 3);
            for bias in [Some(&b[..]), None] {
                let want = f32::reference(&x, &w, bias, m, k, n);
                let lin = PackedLinear::with_backend(&w, bias, n, k, backend).unwrap();
                for threads in [1, 2, 3] {
                    let mut y = vec![f32::NAN; m * n];
                    lin.forward_threads(&x, m, &mut y, Epilogue::None, threads)
                        .unwrap();
                    assert_bits(
                        &y,
                        &want,
                        &format!("{backend:?} packed {m}x{k}x{n} t{threads}"),
                    );
                }
                // Each row alone, through the packed layer.
                for i in [0, m / 2, m - 1] {
                    let mut y = vec![f32::NAN; n];
                    lin.forward(&x[i * k..(i + 1) * k], 1, &mut y).unwrap();
                    assert_bits(
                        &y,
                        &want[i * n..(i + 1) * n],
                        &format!("{backend:?} row {i}"),
                    );
                }
                if backend == Backend::best(Precision::F32) {
                    // In place, the weight in three parts (as q, k and v), all rows and one.
                    let cut = [0, n / 3, 2 * n / 3, n];
                    let parts: Vec<&[f32]> =
                        cut.windows(2).map(|c| &w[c[0] * k..c[1] * k]).collect();
                    let mut y = vec![f32::NAN; m * n];
                    forward_in_place(&parts, bias, k, (&x, m), &mut y, Epilogue::None).unwrap();
                    assert_bits(&y, &want, &format!("{backend:?} in place {m}x{k}x{n}"));
                    let mut y = vec![f32::NAN; n];
                    forward_in_place(&parts, bias, k, (&x[..k], 1), &mut y, Epilogue::None)
                        .unwrap();
                    assert_bits(&y, &want[..n], &format!("{backend:?} in place row 0"));
                }
            }
        }
    }
}

/// Issue 24: a bf16 backend's row is the same bits alone or among others (no exact reference
/// here: the rounding to bf16 and the instructions' internal order are the hardware's).
#[test]
fn bf16_rows_do_not_depend_on_their_company() {
    for backend in [Backend::AmxBf16, Backend::Avx512Bf16] {
        if !testable(backend) {
            continue;
        }
        for &(m, k, n) in &[(1, 5, 3), (50, 768, 97), (67, 1000, 33), (130, 64, 64)] {
            let x = values(m * k, 41);
            let w = values(n * k, 42);
            let b = values(n, 43);
            let lin = PackedLinear::with_backend(&w, Some(&b), n, k, backend).unwrap();
            let mut all = vec![f32::NAN; m * n];
            lin.forward(&x, m, &mut all).unwrap();
            for threads in [1, 3] {
                let mut again = vec![f32::NAN; m * n];
                lin.forward_threads(&x, m, &mut again, Epilogue::None, threads)
                    .unwrap();
                assert_bits(&again, &all, &format!("{backend:?} {m}x{k}x{n} t{threads}"));
            }
            for i in 0..m {
                let mut y = vec![f32::NAN; n];
                lin.forward(&x[i * k..(i + 1) * k], 1, &mut y).unwrap();
                assert_bits(
                    &y,
                    &all[i * n..(i + 1) * n],
                    &format!("{backend:?} row {i}"),
                );
            }
            // A row inside a batch of a different size, at another position.
            let rows = m.min(5);
            let mut some = vec![f32::NAN; rows * n];
            lin.forward(&x[(m - rows) * k..], rows, &mut some).unwrap();
            assert_bits(
                &some,
                &all[(m - rows) * n..],
                &format!("{backend:?} last {rows}"),
            );
        }
    }
}

fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (idx, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}: output {idx}: {g:e} ({:#x}) vs {w:e} ({:#x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

#[test]
fn default_backends_are_available_and_bf16_never_worse_than_f32() {
    let f32b = Backend::best(Precision::F32);
    let bf16b = Backend::best(Precision::Bf16);
    let int8b = Backend::best(Precision::Int8);
    assert!(f32b.is_available() && bf16b.is_available() && int8b.is_available());
    assert!(int8b.is_int8());
    for b in BACKENDS {
        eprintln!(
            "{b:?}: {}",
            if b.is_available() {
                "runs here"
            } else {
                "NOT AVAILABLE on this CPU"
            }
        );
    }
    assert!(!f32b.is_bf16());
    // Without native bf16, the bf16 precision computes exactly as f32 does.
    if !bf16b.is_bf16() {
        assert_eq!(bf16b, f32b);
    }
    eprintln!("f32: {f32b:?}, bf16: {bf16b:?}, int8: {int8b:?}");
}

#[test]
fn large_rows_use_several_row_tasks() {
    // 700 rows × K 2048: more rows than one task holds, on every backend; spot-checked rows.
    let (m, k, n) = (700, 2048, 40);
    let x = values(m * k, 11);
    let w = values(n * k, 12);
    for backend in ALL.into_iter().filter(|b| b.is_available()) {
        let lin = PackedLinear::with_backend(&w, None, n, k, backend).unwrap();
        let mut y = vec![f32::NAN; m * n];
        lin.forward_threads(&x, m, &mut y, Epilogue::None, 2)
            .unwrap();
        for i in [0, 1, 31, 32, 333, 698, 699] {
            let xi = &x[i * k..(i + 1) * k];
            let (xr, wr) = if backend.is_bf16() {
                (round_bf16(xi), round_bf16(&w))
            } else {
                (xi.to_vec(), w.clone())
            };
            let r = reference(&xr, &wr, None, 1, k, n);
            check(
                &format!("{backend:?} row {i}"),
                &y[i * n..(i + 1) * n],
                &r,
                1e-5,
            );
        }
    }
}

#[test]
fn grid_covers_the_output_once() {
    for rows in [1, 2, 13, 14, 15, 50, 100, 700, 1600] {
        for panels in [1, 2, 3, 24, 72] {
            for threads in [1, 2, 3, 4, 7] {
                for (unit, max_rows) in [(14, 448), (32, 512), (14, 14), (32, 100)] {
                    let g = grid(rows, panels, threads, unit, max_rows);
                    let mut seen = vec![0u8; rows * panels];
                    for t in 0..g.tasks() {
                        let (r0, r1, p0, p1) = g.task(t, rows, panels);
                        assert!(r0 < r1 && r1 <= rows && p0 < p1 && p1 <= panels, "{g:?}");
                        for r in r0..r1 {
                            for p in p0..p1 {
                                seen[r * panels + p] += 1;
                            }
                        }
                    }
                    assert!(
                        seen.iter().all(|&s| s == 1),
                        "{rows} rows {panels} panels {threads} threads: {g:?}"
                    );
                    // Row blocks in whole microkernel heights, except the last.
                    assert_eq!(g.row_step % unit, 0);
                }
            }
        }
    }
}

#[test]
fn errors_are_reported_not_panicked() {
    let w = values(6, 1);
    assert_eq!(
        PackedLinear::new(&w, None, 2, 4, Precision::F32).unwrap_err(),
        KernelError::Length {
            what: "weight",
            got: 6,
            expected: 8
        }
    );
    assert!(matches!(
        PackedLinear::new(&w, Some(&[0.0]), 2, 3, Precision::F32),
        Err(KernelError::Length { what: "bias", .. })
    ));
    assert!(matches!(
        PackedLinear::new(&[], None, 0, 3, Precision::F32),
        Err(KernelError::Empty { .. })
    ));
    let lin = PackedLinear::new(&w, None, 2, 3, Precision::Bf16).unwrap();
    let mut y = vec![0.0; 4];
    assert!(matches!(
        lin.forward(&[0.0; 5], 2, &mut y),
        Err(KernelError::Length { what: "input", .. })
    ));
    assert!(matches!(
        lin.forward(&[0.0; 6], 2, &mut y[..3]),
        Err(KernelError::Length { what: "output", .. })
    ));
    lin.forward(&[], 0, &mut []).unwrap();
    for b in BACKENDS.into_iter().filter(|b| !b.is_available()) {
        assert_eq!(
            PackedLinear::with_backend(&w, None, 2, 3, b).unwrap_err(),
            KernelError::Unavailable(b)
        );
    }
}

#[test]
fn bf16_rounding_is_to_nearest_even() {
    #[cfg(target_arch = "x86_64")]
    {
        use super::x86::bf16;
        assert_eq!(bf16(1.0), 0x3f80);
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: ties to even (1.0).
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2⁻⁸ is halfway between 1 + 2⁻⁷ (odd) and 1 + 2⁻⁶: up.
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16(-2.5), 0xc020);
        assert_eq!(bf16(f32::INFINITY), 0x7f80);
        assert!(f32::from_bits(u32::from(bf16(f32::NAN)) << 16).is_nan());
        assert_eq!(bf16(f32::MAX), 0x7f80, "rounds up to infinity");
    }
}

mod candle {
    use super::values;
    use crate::kernels::{Linear, Precision};
    use candle_core::{DType, Device, Module, Tensor};

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let s = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        d / s
    }

    #[test]
    fn linear_matches_candle_matmul() {
        let dev = Device::Cpu;
        let (inp, out) = (75, 50);
        let w = Tensor::from_vec(values(out * inp, 1), (out, inp), &dev).unwrap();
        let b = Tensor::from_vec(values(out, 2), out, &dev).unwrap();
        let x = Tensor::from_vec(values(2 * 3 * inp, 3), (2, 3, inp), &dev).unwrap();
        let want = x
            .reshape((6, inp))
            .unwrap()
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap()
            .reshape((2, 3, out))
            .unwrap();
        let layers = [
            (
                "f32 packed",
                Linear::new(&w, Some(&b), Precision::F32).unwrap(),
                1e-5,
            ),
            (
                "bf16",
                Linear::new(&w, Some(&b), Precision::Bf16).unwrap(),
                1e-2,
            ),
            (
                "f32 in place",
                Linear::in_place(&w, Some(&b)).unwrap(),
                1e-5,
            ),
        ];
        for (precision, lin, tol) in layers {
            assert!(lin.backend().is_some());
            let got = lin.forward(&x).unwrap();
            assert_eq!(got.dims(), &[2, 3, out]);
            assert!(max_rel_diff(&got, &want) < tol, "{precision:?}");
            // A non-contiguous input (a transposed view) gives the same.
            let xt = x.transpose(0, 1).unwrap();
            let got_t = lin.forward(&xt).unwrap();
            let want_t = want.transpose(0, 1).unwrap().contiguous().unwrap();
            assert!(
                max_rel_diff(&got_t, &want_t) < tol,
                "{precision:?} transposed"
            );
        }
        // In place: no copy of the weight, and its slice path equals its tensor path.
        let lin = Linear::in_place(&w, Some(&b)).unwrap();
        let best = crate::kernels::Backend::best(Precision::F32);
        assert_eq!(lin.backend(), Some(best));
        let flat: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let mut out_slice = vec![0.0; 6 * out];
        lin.forward_slice(&flat, 6, &mut out_slice, crate::kernels::Epilogue::None)
            .unwrap();
        let via_tensor: Vec<f32> = lin
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(out_slice, via_tensor);
        assert!(Linear::in_place(&w, Some(&w)).is_err());
        // From PACK_ROWS rows on, an in-place layer packs its weight and keeps giving the same
        // products, tall or short, bit for bit (one summation order, issue 24).
        let rows = super::super::tensor::PACK_ROWS + 3;
        let tall = Tensor::randn(0f32, 1.0, (rows, inp), &dev).unwrap();
        let want_tall = tall
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        let lin = Linear::in_place(&w, Some(&b)).unwrap();
        let before = lin.forward(&x).unwrap();
        assert!(max_rel_diff(&lin.forward(&tall).unwrap(), &want_tall) < 1e-5);
        assert!(lin.packed().is_none());
        assert_eq!(lin.backend(), Some(best));
        let after: Vec<f32> = lin
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let before: Vec<f32> = before.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(after, before);
        // Stacked parts (q, k, v kept apart) equal the layer over their concatenation, in place
        // (short: packed per panel as the product runs) and packed (tall).
        let parts: Vec<Tensor> = (0..3)
            .map(|_| Tensor::randn(0f32, 1.0, (out, inp), &dev).unwrap())
            .collect();
        let stacked_w = Tensor::cat(&parts, 0).unwrap();
        let stacked_b = Tensor::randn(0f32, 1.0, 3 * out, &dev).unwrap();
        let whole = Linear::in_place(&stacked_w, Some(&stacked_b)).unwrap();
        let split = Linear::in_place_parts(&parts, Some(&stacked_b)).unwrap();
        assert_eq!(split.dims().unwrap(), (3 * out, inp));
        let flat_x = x.reshape((6, inp)).unwrap();
        for input in [&flat_x, &tall] {
            let want = input
                .matmul(&stacked_w.t().unwrap())
                .unwrap()
                .broadcast_add(&stacked_b)
                .unwrap();
            assert!(max_rel_diff(&split.forward(input).unwrap(), &want) < 1e-5);
            assert!(max_rel_diff(&whole.forward(input).unwrap(), &want) < 1e-5);
        }
        // Packed from the parts: the same packing as from their concatenation, so the same
        // products, bit for bit, in both precisions.
        for precision in [Precision::F32, Precision::Bf16] {
            let from_parts = Linear::new_parts(&parts, Some(&stacked_b), precision).unwrap();
            let from_cat = Linear::new(&stacked_w, Some(&stacked_b), precision).unwrap();
            let values = |lin: &Linear, input: &Tensor| -> Vec<f32> {
                let y = lin.forward(input).unwrap();
                y.flatten_all().unwrap().to_vec1().unwrap()
            };
            for input in [&flat_x, &tall] {
                assert_eq!(
                    values(&from_parts, input),
                    values(&from_cat, input),
                    "{precision:?}"
                );
            }
        }
        assert!(Linear::new_parts(&[], None, Precision::F32).is_err());
        assert!(Linear::in_place_parts(&[], None).is_err());
        assert!(Linear::in_place_parts(&[w.clone(), w.t().unwrap()], None).is_err());
        // Other dtypes go through f32 and come back in their own.
        let lin = Linear::new(&w, None, Precision::F32).unwrap();
        let got = lin.forward(&x.to_dtype(DType::F16).unwrap()).unwrap();
        assert_eq!(got.dtype(), DType::F16);
        // Mismatched features are an error.
        assert!(lin
            .forward(&Tensor::zeros((2, inp + 1), DType::F32, &dev).unwrap())
            .is_err());
        assert!(Linear::new(&w, Some(&w), Precision::F32).is_err());
    }
}

mod int8 {
    //! The int8 backends against a scalar reference written here from the definition in
    //! `int8.rs` (quantize, sum in i64, dequantize): every output bit-identical, on every backend
    //! this CPU runs, every split into tasks; and the result within the quantization's own error
    //! bound of the exact f64 product.

    use super::{testable, values};
    use crate::kernels::int8::{quantize_row, quantize_weight_row, MAX_K};
    use crate::kernels::{Backend, Epilogue, KernelError, PackedLinear, BACKENDS};

    const INT8: [Backend; 5] = [
        Backend::AmxInt8,
        Backend::Avx512Vnni,
        Backend::AvxVnni,
        Backend::Avx2Int8,
        Backend::PortableInt8,
    ];

    /// The int8 product as `int8.rs` defines it, one output at a time, sums in i64.
    fn reference(
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<f32> {
        let mut qw = vec![0i8; n * k];
        let sw: Vec<f32> = (0..n)
            .map(|j| quantize_weight_row(&w[j * k..(j + 1) * k], &mut qw[j * k..(j + 1) * k]))
            .collect();
        let mut y = Vec::with_capacity(m * n);
        let mut qx = vec![0u8; k];
        for i in 0..m {
            let (sx, zx) = quantize_row(&x[i * k..(i + 1) * k], &mut qx);
            for j in 0..n {
                let dot: i64 = (0..k)
                    .map(|kk| i64::from(qx[kk]) * i64::from(qw[j * k + kk]))
                    .sum();
                let colsum: i64 = qw[j * k..(j + 1) * k].iter().map(|&v| i64::from(v)).sum();
                let exact = dot - i64::from(zx) * colsum;
                let exact = i32::try_from(exact).unwrap();
                y.push(exact as f32 * (sx * sw[j]) + b.map_or(0.0, |b| b[j]));
            }
        }
        y
    }

    fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits(),
                "{what}: output {i}: {g} vs reference {w}"
            );
        }
    }

    /// (M, K, N): K below, at and across the 64-k blocks, N across the 32-column panels, M
    /// across every kernel's row block (3, 6, 14, 32) and the tasks' row steps.
    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (1, 5, 3),
        (1, 768, 70),
        (2, 33, 17),
        (3, 64, 32),
        (7, 65, 33),
        (13, 31, 96),
        (14, 128, 31),
        (15, 100, 65),
        (31, 200, 64),
        (32, 64, 32),
        (33, 129, 96),
        (50, 768, 45),
        (67, 65, 97),
        (9, 1000, 50),
    ];

    #[test]
    fn every_int8_backend_equals_the_reference_bit_for_bit() {
        for backend in INT8 {
            if !testable(backend) {
                continue;
            }
            for (si, &(m, k, n)) in SHAPES.iter().enumerate() {
                // Mixed signs and scales, and a row of zeros, a constant row and an all-positive
                // row (zero points 0 and > 0).
                let mut x = values(m * k, 7 * si as u64 + 1);
                if m > 3 {
                    x[..k].fill(0.0);
                    x[k..2 * k].fill(0.25);
                    x[2 * k..3 * k].iter_mut().for_each(|v| *v = v.abs() * 40.0);
                }
                let mut w = values(n * k, 7 * si as u64 + 2);
                w[..k].iter_mut().for_each(|v| *v *= 1e-3);
                let b = values(n, 7 * si as u64 + 3);
                for bias in [Some(&b[..]), None] {
                    let lin = PackedLinear::with_backend(&w, bias, n, k, backend).unwrap();
                    assert_eq!(lin.backend(), backend);
                    let want = reference(&x, &w, bias, m, k, n);
                    for threads in [1, 2, 3, 5] {
                        let mut y = vec![f32::NAN; m * n];
                        lin.forward_threads(&x, m, &mut y, Epilogue::None, threads)
                            .unwrap();
                        let what = format!("{backend:?} {m}x{k}x{n} threads {threads}");
                        assert_bits(&what, &y, &want);
                    }
                    // A row alone gives the bits it has in the batch (batch invariance).
                    let i = m / 2;
                    let mut alone = vec![f32::NAN; n];
                    lin.forward(&x[i * k..(i + 1) * k], 1, &mut alone).unwrap();
                    assert_bits(
                        &format!("{backend:?} row {i} alone"),
                        &alone,
                        &want[i * n..(i + 1) * n],
                    );
                }
            }
        }
    }

    /// The extremes: every activation at 0 or 255, every weight at ±127, K = MAX_K: the largest
    /// sums the i32 accumulators must hold (255 · 127 · 65536 < 2³¹), and the pairs that would
    /// saturate `vpmaddubsw`'s i16 (2 · 255 · 127 > 32767).
    #[test]
    fn int8_extremes_neither_saturate_nor_overflow() {
        let (m, k, n) = (3, MAX_K, 33);
        // Row 0: all 1 (q = 255, zero point 0); row 1: ±1 alternating (q 0 and 255); row 2: a
        // ramp.
        let mut x = vec![1.0f32; m * k];
        for (i, v) in x[k..2 * k].iter_mut().enumerate() {
            *v = if i % 2 == 0 { 1.0 } else { -1.0 };
        }
        for (i, v) in x[2 * k..].iter_mut().enumerate() {
            *v = (i % 255) as f32;
        }
        let w: Vec<f32> = (0..n * k)
            .map(|i| match (i / k) % 3 {
                0 => 1.0,
                1 => -1.0,
                _ => {
                    if i % 2 == 0 {
                        1.0
                    } else {
                        -1.0
                    }
                }
            })
            .collect();
        let want = reference(&x, &w, None, m, k, n);
        // Row 0 against all-+1 weights: exactly K (scales 1/255 and 1/127, sums 255·127·K).
        assert!((want[0] - k as f32).abs() <= 1e-6 * k as f32, "{}", want[0]);
        for backend in INT8 {
            if !testable(backend) {
                continue;
            }
            let lin = PackedLinear::with_backend(&w, None, n, k, backend).unwrap();
            let mut y = vec![f32::NAN; m * n];
            lin.forward_threads(&x, m, &mut y, Epilogue::None, 2)
                .unwrap();
            assert_bits(&format!("{backend:?} extremes"), &y, &want);
        }
        assert_eq!(
            PackedLinear::with_backend(
                &[0.0; MAX_K + 1],
                None,
                1,
                MAX_K + 1,
                Backend::PortableInt8
            )
            .unwrap_err(),
            KernelError::TooWideForInt8 {
                in_dim: MAX_K + 1,
                max: MAX_K
            }
        );
    }

    /// The int8 product is within the quantization's error of the exact one: per output,
    /// |Σ x·w − Σ x̃·w̃| ≤ Σₖ (|xₖ|·sw/2 + |wₖ|·sx/2 + sx·sw/4), with f32 rounding on top
    /// (1e-5 of Σ|x·w|).
    #[test]
    fn int8_is_within_its_quantization_error() {
        let (m, k, n) = (9, 300, 40);
        let x = values(m * k, 31);
        let w = values(n * k, 32);
        let lin = PackedLinear::with_backend(
            &w,
            None,
            n,
            k,
            Backend::best(crate::kernels::Precision::Int8),
        )
        .unwrap();
        let mut y = vec![f32::NAN; m * n];
        lin.forward(&x, m, &mut y).unwrap();
        for i in 0..m {
            let xr = &x[i * k..(i + 1) * k];
            let (lo, hi) = xr
                .iter()
                .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
            let sx = f64::from((hi - lo) / 255.0);
            for j in 0..n {
                let wr = &w[j * k..(j + 1) * k];
                let sw = f64::from(wr.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0);
                let (mut exact, mut bound, mut scale) = (0f64, 0f64, 0f64);
                for (&a, &b) in xr.iter().zip(wr) {
                    let (a, b) = (f64::from(a), f64::from(b));
                    exact += a * b;
                    scale += (a * b).abs();
                    bound += a.abs() * sw / 2.0 + b.abs() * sx / 2.0 + sx * sw / 4.0;
                }
                let err = (f64::from(y[i * n + j]) - exact).abs();
                assert!(
                    err <= bound + 1e-5 * scale,
                    "output ({i}, {j}): {} vs {exact}: error {err:e} over the bound {bound:e}",
                    y[i * n + j]
                );
            }
        }
    }

    #[test]
    fn quantization_of_rows_and_weights() {
        let mut q = [0u8; 6];
        // Range [-1, 3] (0 included) over 255 steps: zero point round(255/4) = 64.
        let (s, z) = quantize_row(&[-1.0, 0.0, 3.0, 1.0], &mut q);
        assert_eq!((s, z), (4.0 / 255.0, 64));
        assert_eq!(q, [0, 64, 255, 128, 0, 0]);
        // All positive: the range starts at 0 (zero point 0); all zero: scale 0.
        assert_eq!(quantize_row(&[2.0, 1.0], &mut q).1, 0);
        assert_eq!(quantize_row(&[0.0, 0.0], &mut q), (0.0, 0));
        assert!(quantize_row(&[f32::NAN, 1.0], &mut q).0.is_nan());
        assert!(quantize_row(&[f32::INFINITY, 1.0], &mut q).0.is_nan());
        let mut qw = [0i8; 3];
        assert_eq!(quantize_weight_row(&[-2.0, 1.0, 0.0], &mut qw), 2.0 / 127.0);
        // 1.0 / (2/127) = 63.5: ties to even.
        assert_eq!(qw, [-127, 64, 0]);
        assert_eq!(quantize_weight_row(&[0.0; 3], &mut qw), 0.0);
        assert!(quantize_weight_row(&[f32::NAN, 1.0, 0.0], &mut qw).is_nan());
        // A NaN input row gives NaN outputs, as f32 would.
        let lin =
            PackedLinear::with_backend(&[1.0, 2.0], None, 1, 2, Backend::PortableInt8).unwrap();
        let mut y = [0.0];
        lin.forward(&[f32::NAN, 1.0], 1, &mut y).unwrap();
        assert!(y[0].is_nan());
        assert!(BACKENDS.iter().filter(|b| b.is_int8()).count() == INT8.len());
    }
}
