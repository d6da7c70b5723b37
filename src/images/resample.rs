//! Resize: a port of Pillow's `libImaging/Resample.c` for 8-bit RGB (see the module docs of
//! `images` for why not `fast_image_resize`), with Pillow's values but not its memory use.
//!
//! Pillow computes a table of weights for every output pixel of each axis, runs the horizontal
//! pass over every source row the vertical pass needs into a whole uint8 intermediate image,
//! then the vertical pass. Both grow with the image's shape rather than its pixels: shrinking
//! a 100,000,000×1 image to 224×224 needs 1.6 GB of horizontal weights, and enlarging a
//! 1×100,000,000 one to 224 columns a 67 GB intermediate image. Here the weights are computed
//! when needed (the horizontal ones kept within [`WEIGHT_BUDGET`]) and intermediate rows are
//! made one at a time and used at once, so that the resize holds, besides its output, a few
//! rows and at most a megabyte of weights. Every weight and every intermediate pixel is
//! computed exactly as Pillow computes it, and the sums are integers (the same in any order),
//! so the output is Pillow's, byte for byte (`tests` compares it with the earlier port of
//! Pillow's structure, `reference`, kept for that).

use std::collections::VecDeque;
use std::ops::Range;

use image::RgbImage;

use super::config::Resample;

impl Resample {
    /// Filter support (radius) at scale 1, from Pillow's `Resample.c`.
    fn support(self) -> f64 {
        match self {
            Self::Box => 0.5,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    /// The filter kernels, transcribed from Pillow's `Resample.c` including its evaluation
    /// order and constants (e.g. Hamming's `0.54f`/`0.46f` are C floats widened to double).
    fn eval(self, x: f64) -> f64 {
        fn sinc(x: f64) -> f64 {
            if x == 0.0 {
                return 1.0;
            }
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
        match self {
            Self::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// Pillow's `PRECISION_BITS` for 8-bit resampling: 32 - 8 - 2.
const PRECISION_BITS: u32 = 22;

/// Half a unit in fixed point: Pillow's accumulators start there, so that [`clip8`] rounds.
const HALF: i64 = 1 << (PRECISION_BITS - 1);

/// The most horizontal-pass weights held at once (1 MiB of them). Pillow keeps a table of
/// `ksize` weights for every output pixel, and `ksize` grows with the downscale factor: a
/// 100,000,000×1 image resized to 224×224 would need 1.6 GB of them (16 bytes per pixel of
/// the image). Within this budget the weights are computed in runs of output columns; a
/// column whose weights alone exceed it has them computed as they are used.
const WEIGHT_BUDGET: usize = 1 << 18;

/// Pillow's `precompute_coeffs` for one axis (box = the whole axis), without its table:
/// everything needed to compute any output pixel's filter window and weights on demand. Every
/// weight depends only on its own output index and input index, so computing them in pieces
/// or twice gives exactly the values of Pillow's table.
#[derive(Debug, Clone, Copy)]
struct Axis {
    in_size: u32,
    /// Input pixels per output pixel.
    scale: f64,
    /// Filter support (radius) in input pixels.
    support: f64,
    /// `1 / filterscale`: the filter's argument per input pixel.
    ss: f64,
    /// Pillow's bound on the taps of one output pixel.
    ksize: usize,
    filter: Resample,
}

/// The input pixels one output pixel reads (`first..first + taps`), and the sum of the filter
/// values there, which normalises its weights.
#[derive(Debug, Clone, Copy)]
struct Window {
    first: usize,
    taps: usize,
    center: f64,
    sum: f64,
}

impl Window {
    fn end(&self) -> usize {
        self.first + self.taps
    }
}

impl Axis {
    fn new(in_size: u32, out_size: u32, filter: Resample) -> Self {
        // Pillow receives the box as C floats and computes `(double)(in1 - in0) / outSize`.
        let (in0, in1) = (0f32, in_size as f32);
        let scale = f64::from(in1 - in0) / f64::from(out_size);
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = filter.support() * filterscale;
        Self {
            in_size,
            scale,
            support,
            ss: 1.0 / filterscale,
            ksize: support.ceil() as usize * 2 + 1,
            filter,
        }
    }

    /// Output pixel `xx`'s window, without its sum: `(center, first, taps)`.
    fn bounds(&self, xx: u32) -> (f64, usize, usize) {
        // Pillow's `center = in0 + (xx + 0.5) * scale`, with `in0` = 0.
        let center = (f64::from(xx) + 0.5) * self.scale;
        // C `(int)` casts truncate toward zero, like Rust's `as`.
        let xmin = ((center - self.support + 0.5) as i64).max(0);
        let xmax = ((center + self.support + 0.5) as i64).min(i64::from(self.in_size));
        let taps = (xmax - xmin).clamp(0, self.ksize as i64) as usize;
        (center, xmin as usize, taps)
    }

    fn window(&self, xx: u32) -> Window {
        let (center, first, taps) = self.bounds(xx);
        let mut sum = 0.0;
        for x in first..first + taps {
            sum += self.filter_at(x, center);
        }
        Window {
            first,
            taps,
            center,
            sum,
        }
    }

    /// The filter's value at input pixel `x` for a window centred on `center`.
    fn filter_at(&self, x: usize, center: f64) -> f64 {
        self.filter.eval((x as f64 - center + 0.5) * self.ss)
    }

    /// `normalize_coeffs_8bpc` for one weight: input pixel `x` of window `w`, in fixed point.
    fn weight(&self, w: &Window, x: usize) -> i32 {
        let k = self.filter_at(x, w.center);
        let k = if w.sum != 0.0 { k / w.sum } else { k };
        let scaled = k * f64::from(1u32 << PRECISION_BITS);
        if k < 0.0 {
            (-0.5 + scaled) as i32
        } else {
            (0.5 + scaled) as i32
        }
    }

    /// Splits the output pixels `out` into runs whose weights together stay within `budget`;
    /// a pixel whose weights alone exceed it gets a run of its own.
    fn runs(&self, out: Range<u32>, budget: usize) -> Vec<Range<u32>> {
        let mut runs = Vec::new();
        let (mut start, mut held) = (out.start, 0usize);
        for xx in out.clone() {
            let taps = self.bounds(xx).2;
            if xx > start && held.saturating_add(taps) > budget {
                runs.push(start..xx);
                (start, held) = (xx, 0);
            }
            held = held.saturating_add(taps);
        }
        if start < out.end {
            runs.push(start..out.end);
        }
        runs
    }

    /// The horizontal pass for the output columns `out`: their windows, and their weights when
    /// these fit in `budget`.
    fn columns(&self, out: Range<u32>, budget: usize) -> Columns {
        let windows: Vec<Window> = out.map(|xx| self.window(xx)).collect();
        let total = windows.iter().map(|w| w.taps).sum::<usize>();
        let weights = (total <= budget).then(|| {
            let mut weights = Vec::with_capacity(total);
            for w in &windows {
                weights.extend((w.first..w.end()).map(|x| self.weight(w, x)));
            }
            weights
        });
        Columns {
            axis: *self,
            windows,
            weights,
        }
    }
}

/// A run of output columns of the horizontal pass.
struct Columns {
    axis: Axis,
    windows: Vec<Window>,
    /// The windows' weights one after the other, or None when they are computed as used.
    weights: Option<Vec<i32>>,
}

/// Pillow's `clip8`: drop the fractional bits and clamp. (The accumulator starts at half a
/// unit, so this rounds to nearest.) i64 accumulators cannot overflow; Pillow's i32 ones do
/// not overflow either for these filters, so results are identical.
#[inline]
fn clip8(ss: i64) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One RGB pixel of the horizontal pass: `px` (the window's input pixels) times `weights`.
#[inline]
fn convolve_rgb(px: &[u8], weights: impl Iterator<Item = i32>) -> [u8; 3] {
    let (mut s0, mut s1, mut s2) = (HALF, HALF, HALF);
    for (p, w) in px.chunks_exact(3).zip(weights) {
        let w = i64::from(w);
        s0 += i64::from(p[0]) * w;
        s1 += i64::from(p[1]) * w;
        s2 += i64::from(p[2]) * w;
    }
    [clip8(s0), clip8(s1), clip8(s2)]
}

/// Rows of Pillow's intermediate image (the horizontal pass's uint8 output), restricted to some
/// output columns, made one at a time as the vertical pass needs them.
struct Rows<'a> {
    src: &'a [u8],
    /// Bytes per source row.
    stride: usize,
    columns: Horizontal,
}

enum Horizontal {
    /// No horizontal pass (the width does not change): these bytes of each source row.
    Copy(Range<usize>),
    /// `ImagingResampleHorizontal_8bpc` for RGB.
    Resample(Columns),
}

impl Rows<'_> {
    /// Writes intermediate row `y` into `out` (3 bytes per column).
    fn make(&self, y: usize, out: &mut [u8]) {
        let row = &self.src[y * self.stride..(y + 1) * self.stride];
        let c = match &self.columns {
            Horizontal::Copy(bytes) => {
                out.copy_from_slice(&row[bytes.clone()]);
                return;
            }
            Horizontal::Resample(c) => c,
        };
        let pixels = out.chunks_exact_mut(3).zip(&c.windows);
        match &c.weights {
            Some(weights) => {
                let mut offset = 0;
                for (o, w) in pixels {
                    let k = &weights[offset..offset + w.taps];
                    offset += w.taps;
                    o.copy_from_slice(&convolve_rgb(
                        &row[w.first * 3..w.end() * 3],
                        k.iter().copied(),
                    ));
                }
            }
            None => {
                for (o, w) in pixels {
                    let k = (w.first..w.end()).map(|x| c.axis.weight(w, x));
                    o.copy_from_slice(&convolve_rgb(&row[w.first * 3..w.end() * 3], k));
                }
            }
        }
    }
}

/// Where a run of output columns lands in the packed RGB8 window being produced.
struct Dest<'a> {
    out: &'a mut [u8],
    /// Bytes per output row.
    stride: usize,
    /// Byte offset of the run in a row, and its length.
    offset: usize,
    len: usize,
}

impl Dest<'_> {
    fn row(&mut self, i: usize) -> &mut [u8] {
        let start = i * self.stride + self.offset;
        &mut self.out[start..start + self.len]
    }

    fn write(&mut self, i: usize, acc: &[i64]) {
        for (o, &s) in self.row(i).iter_mut().zip(acc) {
            *o = clip8(s);
        }
    }
}

/// `acc += row * weight`, the step of `ImagingResampleVertical_8bpc`. Not inlined: as a function
/// of its own its slices are known not to overlap, and the loop is vectorised (3× faster).
#[inline(never)]
fn accumulate(acc: &mut [i64], row: &[u8], weight: i32) {
    let w = i64::from(weight);
    for (a, &p) in acc.iter_mut().zip(row) {
        *a += i64::from(p) * w;
    }
}

/// The vertical pass when enlarging (`axis.scale <= 1`): each output row reads at most
/// `ksize` consecutive intermediate rows (7 for Lanczos, the widest filter), kept in a ring of
/// that many rows.
/// Windows start and end at non-decreasing rows, so a row is made once and is still in the
/// ring while any later window needs it.
fn vertical_enlarge(rows: &Rows, axis: &Axis, windows: &[Window], dst: &mut Dest) {
    let len = dst.len;
    let slots = axis.ksize.max(1);
    let mut ring = vec![0u8; slots * len];
    let mut acc = vec![0i64; len];
    let mut next = 0;
    for (i, w) in windows.iter().enumerate() {
        for y in next.max(w.first)..w.end() {
            let slot = y % slots;
            rows.make(y, &mut ring[slot * len..(slot + 1) * len]);
        }
        next = next.max(w.end());
        acc.fill(HALF);
        for y in w.first..w.end() {
            let slot = y % slots;
            accumulate(
                &mut acc,
                &ring[slot * len..(slot + 1) * len],
                axis.weight(w, y),
            );
        }
        dst.write(i, &acc);
    }
}

/// The vertical pass when shrinking (`axis.scale > 1`): windows are long (a 1×100,000,000
/// image shrunk to 224 rows reads 1.8 million rows per output row), so instead of keeping
/// them, each intermediate row is made once and added to the accumulators of the output rows
/// whose windows hold it (windows are at most `2 × support + 1` rows long and start `scale`
/// rows apart, so at most 7 of them, for Lanczos). Integer sums do not depend on their
/// order, so the values are Pillow's.
fn vertical_shrink(rows: &Rows, axis: &Axis, windows: &[Window], dst: &mut Dest) {
    let len = dst.len;
    let mut row = vec![0u8; len];
    // Accumulators of windows `closed..opened`, oldest first, and used ones to reuse.
    let mut open: VecDeque<Vec<i64>> = VecDeque::new();
    let mut spare: Vec<Vec<i64>> = Vec::new();
    let (mut closed, mut opened) = (0, 0);
    // Windows start and end at non-decreasing rows: the last one ends last.
    let rows_read = windows.first().map_or(0, |w| w.first)..windows.last().map_or(0, Window::end);
    for y in rows_read {
        while opened < windows.len() && windows[opened].first <= y {
            let mut acc = spare.pop().unwrap_or_else(|| vec![0; len]);
            acc.fill(HALF);
            open.push_back(acc);
            opened += 1;
        }
        rows.make(y, &mut row);
        for (acc, w) in open.iter_mut().zip(&windows[closed..opened]) {
            if y < w.end() {
                accumulate(acc, &row, axis.weight(w, y));
            }
        }
        while closed < opened && windows[closed].end() <= y + 1 {
            if let Some(acc) = open.pop_front() {
                dst.write(closed, &acc);
                spare.push(acc);
            }
            closed += 1;
        }
    }
    // Windows of no rows (none in practice) are left as Pillow leaves them: half a unit, 0.
    let empty = vec![HALF; len];
    for i in closed..windows.len() {
        let acc = if i < opened { open.pop_front() } else { None };
        dst.write(i, acc.as_deref().unwrap_or(&empty));
    }
}

/// The window `xr`×`yr` of `PIL.Image.resize((out_w, out_h), filter)` applied to `img`,
/// as packed RGB8 rows. Like `ImagingResampleInner`, an axis whose size does not change is
/// not resampled at all, the horizontal pass runs first (only over the source rows the
/// vertical pass needs) and the intermediate is uint8.
///
/// Besides the output window it holds at most [`WEIGHT_BUDGET`] weights, the bounds of each
/// output pixel's window, and a ring of at most 7 intermediate rows (enlarging) or one row and
/// at most 7 rows of accumulators (shrinking), whatever the image's shape (see the module docs).
pub(super) fn resize_window(
    img: &RgbImage,
    out_w: u32,
    out_h: u32,
    xr: Range<u32>,
    yr: Range<u32>,
    filter: Resample,
) -> Vec<u8> {
    resize_window_within(img, (out_w, out_h), (xr, yr), filter, WEIGHT_BUDGET)
}

/// [`resize_window`] holding at most `budget` horizontal weights at once (the tests use tiny
/// budgets to reach every path on small images).
fn resize_window_within(
    img: &RgbImage,
    (out_w, out_h): (u32, u32),
    (xr, yr): (Range<u32>, Range<u32>),
    filter: Resample,
    budget: usize,
) -> Vec<u8> {
    let (in_w, in_h) = img.dimensions();
    let stride = xr.len() * 3;
    let mut out = vec![0u8; stride * yr.len()];
    let vertical = (out_h != in_h).then(|| {
        let axis = Axis::new(in_h, out_h, filter);
        let windows: Vec<Window> = yr.clone().map(|y| axis.window(y)).collect();
        (axis, windows)
    });
    let horizontal = (out_w != in_w).then(|| Axis::new(in_w, out_w, filter));
    let runs = match &horizontal {
        Some(axis) => axis.runs(xr.clone(), budget),
        None => vec![xr.clone()],
    };
    for run in runs {
        let columns = match &horizontal {
            Some(axis) => Horizontal::Resample(axis.columns(run.clone(), budget)),
            None => Horizontal::Copy(run.start as usize * 3..run.end as usize * 3),
        };
        let rows = Rows {
            src: img.as_raw(),
            stride: in_w as usize * 3,
            columns,
        };
        let mut dst = Dest {
            out: &mut out,
            stride,
            offset: (run.start - xr.start) as usize * 3,
            len: run.len() * 3,
        };
        match &vertical {
            None => {
                for (i, y) in yr.clone().enumerate() {
                    rows.make(y as usize, dst.row(i));
                }
            }
            Some((axis, windows)) if axis.scale <= 1.0 => {
                vertical_enlarge(&rows, axis, windows, &mut dst)
            }
            Some((axis, windows)) => vertical_shrink(&rows, axis, windows, &mut dst),
        }
    }
    out
}

#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::test_util::{fixture, load_u8_tensors};

    #[test]
    fn resampler_matches_pillow_exactly() {
        // tests/fixtures/pil-resize/make.py: PIL.Image.resize of 47x31 RGB noise, every filter,
        // up/down/one-axis sizes.
        let src = image::open(fixture("pil-resize/src.png"))
            .unwrap()
            .to_rgb8();
        let expected = load_u8_tensors(&fixture("pil-resize/expected.safetensors"));
        assert!(expected.len() >= 30);
        let mut mismatched = Vec::new();
        for (key, t) in &expected {
            let (name, size) = key.split_once('_').unwrap();
            let (w, h) = size.split_once('x').unwrap();
            let (w, h): (u32, u32) = (w.parse().unwrap(), h.parse().unwrap());
            let filter = match name {
                "lanczos" => Resample::Lanczos,
                "bilinear" => Resample::Bilinear,
                "bicubic" => Resample::Bicubic,
                "box" => Resample::Box,
                "hamming" => Resample::Hamming,
                other => panic!("{other}"),
            };
            let want = t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
            let got = resize_window(&src, w, h, 0..w, 0..h, filter);
            let diffs = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            if diffs != 0 || got.len() != want.len() {
                mismatched.push(format!("{key}: {diffs} of {} values differ", want.len()));
            }
        }
        assert!(mismatched.is_empty(), "{mismatched:#?}");
    }

    #[test]
    fn resize_window_equals_slice_of_full_resize() {
        let src = image::open(fixture("pil-resize/src.png"))
            .unwrap()
            .to_rgb8();
        for (w, h) in [(90u32, 50u32), (20, 31), (13, 200)] {
            let full = resize_window(&src, w, h, 0..w, 0..h, Resample::Bicubic);
            let (xr, yr) = (w / 3..w - w / 4, h / 5..h - 1);
            let win = resize_window(&src, w, h, xr.clone(), yr.clone(), Resample::Bicubic);
            let mut want = Vec::new();
            for y in yr.clone() {
                let row = (y * w) as usize * 3;
                want.extend_from_slice(
                    &full[row + xr.start as usize * 3..row + xr.end as usize * 3],
                );
            }
            assert_eq!(win, want, "{w}x{h}");
        }
    }

    /// Images with detail in both axes (and one-pixel-wide ones), for the comparisons below.
    fn noise(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503) ^ (x * y);
            image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
        })
    }

    #[test]
    fn streaming_resize_equals_pillows_structure() {
        let filters = [
            Resample::Lanczos,
            Resample::Bilinear,
            Resample::Bicubic,
            Resample::Box,
            Resample::Hamming,
        ];
        let mut sources = vec![image::open(fixture("pil-resize/src.png"))
            .unwrap()
            .to_rgb8()];
        for (w, h) in [(300, 7), (7, 300), (1, 500), (500, 1), (1, 1), (2, 3)] {
            sources.push(noise(w, h));
        }
        let mut checked = 0;
        for src in &sources {
            let (iw, ih) = src.dimensions();
            let sizes = |n: u32| {
                let mut s = vec![
                    1,
                    2,
                    n.div_ceil(3),
                    n.saturating_sub(1),
                    n,
                    n + 1,
                    2 * n + 3,
                    224,
                ];
                s.retain(|&v| v >= 1);
                s.sort_unstable();
                s.dedup();
                s
            };
            for &ow in &sizes(iw) {
                for &oh in &sizes(ih) {
                    let windows = [(0..ow, 0..oh), (ow / 3..ow - ow / 4, oh / 5..oh - oh / 6)];
                    for (xr, yr) in windows {
                        for &filter in &filters {
                            let want = super::reference::resize_window(
                                src,
                                ow,
                                oh,
                                xr.clone(),
                                yr.clone(),
                                filter,
                            );
                            // The default budget, one that splits the columns into runs, and
                            // one so small that every weight is computed as it is used.
                            for budget in [WEIGHT_BUDGET, 40, 1] {
                                let got = resize_window_within(
                                    src,
                                    (ow, oh),
                                    (xr.clone(), yr.clone()),
                                    filter,
                                    budget,
                                );
                                assert!(
                                    got == want,
                                    "{iw}x{ih} -> {ow}x{oh}, window {xr:?}x{yr:?}, {filter:?}, budget {budget}"
                                );
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 5_000, "{checked}");
    }

    /// The shapes that once needed Pillow's whole tables, at a size the reference can still
    /// afford: a wide image shrunk (long horizontal windows, split into runs) and a tall one
    /// (long vertical windows, accumulated row by row).
    #[test]
    fn extreme_shrinks_equal_pillows_structure() {
        for (w, h) in [(200_000, 1), (60_000, 3), (1, 20_000), (3, 60_000)] {
            let src = noise(w, h);
            for filter in [Resample::Bicubic, Resample::Lanczos] {
                let want = super::reference::resize_window(&src, 224, 224, 0..224, 0..224, filter);
                let got = resize_window(&src, 224, 224, 0..224, 0..224, filter);
                assert!(got == want, "{w}x{h}, {filter:?}");
            }
        }
    }

    #[test]
    fn weight_runs_stay_within_the_budget() {
        // 1,000,000 columns into 224: about 17,900 bicubic weights per output column.
        let axis = Axis::new(1_000_000, 224, Resample::Bicubic);
        for budget in [WEIGHT_BUDGET, 50_000, 20_000, 1] {
            let runs = axis.runs(0..224, budget);
            assert_eq!(runs.first().map(|r| r.start), Some(0));
            assert_eq!(runs.last().map(|r| r.end), Some(224));
            for pair in runs.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
            }
            for run in runs {
                let held: usize = run.clone().map(|x| axis.bounds(x).2).sum();
                assert!(
                    held <= budget || run.len() == 1,
                    "{run:?}: {held} > {budget}"
                );
                let columns = axis.columns(run.clone(), budget);
                let stored = columns.weights.as_ref().map_or(0, Vec::len);
                assert!(stored <= budget, "{run:?}: {stored} weights kept");
            }
        }
        // Pillow's table for this resize: 224 x ksize weights.
        assert_eq!(axis.ksize, 17_859);
    }

    /// What `vertical_shrink` keeps: the accumulators of the windows that hold one row.
    #[test]
    fn shrinking_holds_at_most_seven_rows_of_accumulators() {
        let filters = [
            (Resample::Lanczos, 7),
            (Resample::Bicubic, 5),
            (Resample::Bilinear, 3),
            (Resample::Hamming, 3),
            (Resample::Box, 2),
        ];
        for (filter, most) in filters {
            for (in_size, out_size) in [(1_000_000, 224), (1_000_000, 1), (12_345, 7), (225, 224)] {
                let axis = Axis::new(in_size, out_size, filter);
                // Windows start and end in order, so the most that hold one row is the most
                // that hold the first row of one of them.
                let windows: Vec<Window> = (0..out_size).map(|i| axis.window(i)).collect();
                let held = windows
                    .iter()
                    .map(|w| {
                        windows
                            .iter()
                            .filter(|v| v.first <= w.first && w.first < v.end())
                            .count()
                    })
                    .max();
                assert!(
                    held <= Some(most),
                    "{filter:?} {in_size} -> {out_size}: {held:?}"
                );
            }
        }
    }
}
