//! The resampler as it was before its memory was bounded: Pillow's structure, with a whole
//! weight table per axis and the whole intermediate image of the horizontal pass. Kept, for the
//! tests only, as the oracle the streaming resampler must equal byte for byte.

use std::ops::Range;

use image::RgbImage;

use crate::images::config::Resample;

/// Pillow's `PRECISION_BITS` for 8-bit resampling: 32 - 8 - 2.
const PRECISION_BITS: u32 = 22;

/// Fixed-point filter weights for a range of output pixels along one axis.
struct Coeffs {
    /// For each output pixel: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output pixel (only the first `taps` are used).
    weights: Vec<i32>,
    ksize: usize,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for resampling `in_size` pixels to
/// `out_size` (box = whole axis), restricted to the output indices in `out_range`. Every
/// output pixel's weights depend only on its own index, so the values equal the full resize.
fn precompute_coeffs(
    in_size: u32,
    out_size: u32,
    out_range: Range<u32>,
    filter: Resample,
) -> Coeffs {
    // Pillow receives the box as C floats and computes `(double)(in1 - in0) / outSize`.
    let in0 = 0f32;
    let in1 = in_size as f32;
    let scale = f64::from(in1 - in0) / f64::from(out_size);
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;

    let n_out = out_range.len();
    let mut bounds = Vec::with_capacity(n_out);
    let mut weights = vec![0i32; n_out * ksize];
    let mut k = vec![0f64; ksize];
    for (i, xx) in out_range.enumerate() {
        let center = f64::from(in0) + (f64::from(xx) + 0.5) * scale;
        // C `(int)` casts truncate toward zero, like Rust's `as`.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
        let taps = (xmax - xmin).clamp(0, ksize as i64) as usize;
        let xmin = xmin as usize;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(taps) {
            let w = filter.eval(((x + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[i * ksize..i * ksize + taps];
        for (out, &kx) in row.iter_mut().zip(&k[..taps]) {
            let kx = if ww != 0.0 { kx / ww } else { kx };
            let scaled = kx * f64::from(1u32 << PRECISION_BITS);
            *out = if kx < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin, taps));
    }
    Coeffs {
        bounds,
        weights,
        ksize,
    }
}

/// Pillow's `clip8`: drop the fractional bits and clamp. (The accumulator starts at half a
/// unit, so this rounds to nearest.) i64 accumulators cannot overflow; Pillow's i32 ones do
/// not overflow either for these filters, so results are identical.
#[inline]
fn clip8(ss: i64) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i64 = 1 << (PRECISION_BITS - 1);

/// `ImagingResampleHorizontal_8bpc` for RGB on source rows `rows`.
fn resample_horizontal(src: &[u8], src_w: usize, rows: Range<usize>, c: &Coeffs) -> Vec<u8> {
    let out_w = c.bounds.len();
    let mut out = Vec::with_capacity(out_w * rows.len() * 3);
    for y in rows {
        let row = &src[y * src_w * 3..(y + 1) * src_w * 3];
        for (i, &(xmin, taps)) in c.bounds.iter().enumerate() {
            let k = &c.weights[i * c.ksize..i * c.ksize + taps];
            let px = &row[xmin * 3..(xmin + taps) * 3];
            let (mut s0, mut s1, mut s2) = (HALF, HALF, HALF);
            for (p, &w) in px.chunks_exact(3).zip(k) {
                let w = i64::from(w);
                s0 += i64::from(p[0]) * w;
                s1 += i64::from(p[1]) * w;
                s2 += i64::from(p[2]) * w;
            }
            out.extend_from_slice(&[clip8(s0), clip8(s1), clip8(s2)]);
        }
    }
    out
}

/// `ImagingResampleVertical_8bpc` for RGB; `bounds` are relative to the first row of `src`.
fn resample_vertical(src: &[u8], width: usize, c: &Coeffs) -> Vec<u8> {
    let stride = width * 3;
    let mut out = Vec::with_capacity(c.bounds.len() * stride);
    let mut acc = vec![0i64; stride];
    for (i, &(ymin, taps)) in c.bounds.iter().enumerate() {
        let k = &c.weights[i * c.ksize..i * c.ksize + taps];
        acc.fill(HALF);
        for (y, &w) in (ymin..ymin + taps).zip(k) {
            let w = i64::from(w);
            let row = &src[y * stride..(y + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i64::from(p) * w;
            }
        }
        out.extend(acc.iter().map(|&s| clip8(s)));
    }
    out
}

/// The window `xr`×`yr` of `PIL.Image.resize((out_w, out_h), filter)` applied to `img`,
/// as packed RGB8 rows. Like `ImagingResampleInner`, an axis whose size does not change is
/// not resampled at all, the horizontal pass runs first (only over the source rows the
/// vertical pass needs) and the intermediate is uint8.
pub(super) fn resize_window(
    img: &RgbImage,
    out_w: u32,
    out_h: u32,
    xr: Range<u32>,
    yr: Range<u32>,
    filter: Resample,
) -> Vec<u8> {
    let (in_w, in_h) = img.dimensions();
    let src = img.as_raw().as_slice();
    let need_horizontal = out_w != in_w;
    let need_vertical = out_h != in_h;

    let vcoeffs = need_vertical.then(|| precompute_coeffs(in_h, out_h, yr.clone(), filter));
    // Source rows the vertical pass reads (all of `yr` when there is no vertical pass).
    let rows: Range<usize> = match &vcoeffs {
        Some(c) => {
            let first = c.bounds.iter().map(|b| b.0).min().unwrap_or(0);
            let last = c.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(first);
            first..last
        }
        None => yr.start as usize..yr.end as usize,
    };

    let win_w = xr.len();
    let tmp = if need_horizontal {
        let hcoeffs = precompute_coeffs(in_w, out_w, xr, filter);
        resample_horizontal(src, in_w as usize, rows.clone(), &hcoeffs)
    } else {
        let stride = in_w as usize * 3;
        let (x0, x1) = (xr.start as usize * 3, xr.end as usize * 3);
        let mut tmp = Vec::with_capacity(win_w * rows.len() * 3);
        for y in rows.clone() {
            tmp.extend_from_slice(&src[y * stride + x0..y * stride + x1]);
        }
        tmp
    };

    match vcoeffs {
        Some(mut c) => {
            for b in &mut c.bounds {
                b.0 -= rows.start;
            }
            resample_vertical(&tmp, win_w, &c)
        }
        None => tmp,
    }
}
