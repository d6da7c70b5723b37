//! Reduced-scale JPEG decoding (DCT scaling), for photos far larger than the model input.
//!
//! A JPEG stores 8×8 blocks of DCT coefficients, so it can be decoded at 1/2, 1/4 or 1/8 of its
//! size by running a 4×4, 2×2 or 1×1 inverse DCT on each block: that is libjpeg's
//! `scale_num/scale_denom` and Pillow's `Image.draft()`. The IDCT, chroma upsampling and colour
//! conversion then shrink with the pixel count, and so does the resize that follows. The
//! entropy (Huffman) decoding does not: every coefficient is still read, so on a 12 MP photo
//! the decode is 1.1–4× faster rather than 4–64×, and decode plus preprocess 1.3–4.5×
//! (measured on 4000×3000 quality-90 JPEGs; progressive and 4:4:4 files gain least).
//!
//! This is a deliberate deviation from transformers, which decodes every pixel (Pillow opens
//! images without `draft`) and then resizes with an antialiased bicubic filter: a DCT-scaled
//! decode is close to an 8×8 (4×4, 2×2) box average, so the final pixels differ a little. How
//! much depends on how much reduction is left to the bicubic resize, which is what
//! `min_short_side` controls (see the measurements in the commit adding this module).
//!
//! The `image` crate's JPEG decoder (zune-jpeg) has no scaled decode, so this uses
//! `jpeg-decoder`, only for the reduced decode; the full-size path is unchanged. Anything
//! jpeg-decoder refuses (including truncated files, which zune-jpeg decodes as far as they go)
//! gives None, and the caller's full decode handles it as before.

use image::RgbImage;
use jpeg_decoder::{CodingProcess, Decoder, PixelFormat};

use super::decode::DEFAULT_MAX_PIXELS;

/// The smallest `scale` (in eighths: 1, 2 or 4) whose output keeps the shorter side at least
/// `min_short_side` pixels and whose factor (8/`scale`) divides both sides, or None when only
/// 8/8 (no reduction) does.
///
/// The divisibility rule matters: with a partial last block (say 1411 pixels at 1/2) the last
/// output column stands for fewer source pixels than the others, so the reduced image is not
/// the full one at a uniform scale, and the caller's resize, which assumes it is, misplaces
/// content by up to a few tenths of an output pixel near the far edges. On the 1411×1411
/// retina fixture that made sharp edges differ by 35 levels from the full decode's pixels,
/// against 4 levels for the same image cropped to 1408 or 1404 pixels.
fn choose_scale(width: u32, height: u32, min_short_side: u32) -> Option<u32> {
    [1, 2, 4].into_iter().find(|&scale| {
        let factor = 8 / scale;
        width.is_multiple_of(factor)
            && height.is_multiple_of(factor)
            && (width / factor).min(height / factor) >= min_short_side
    })
}

/// Decodes a JPEG at the largest DCT scale-down (1/2, 1/4, 1/8) that keeps its shorter side at
/// least `min_short_side` pixels, when that is a real reduction; None when no reduction applies
/// (small image, not a baseline/progressive JPEG that jpeg-decoder handles, CMYK/YCCK, or any
/// decode error — the caller then falls back to its normal full decode, which also reports
/// errors).
///
/// A scale is only used when its factor divides both sides exactly (see [`choose_scale`]):
/// 4000×3000, 4032×3024 or 1920×1080 reduce to 1/8, a 4000×2250 image only to 1/2 and an
/// odd-sized one not at all.
///
/// The image is returned in its stored orientation (the caller applies the EXIF orientation)
/// and as RGB8; greyscale is replicated into the three channels, like Pillow's
/// `convert("RGB")`. Images over [`DEFAULT_MAX_PIXELS`] also give None, so that the caller's
/// own size check reports them.
pub fn decode_reduced(bytes: &[u8], min_short_side: u32) -> Option<image::RgbImage> {
    // jpeg-decoder is fuzzed, but the callers promise never to panic on any input: a panic in
    // it only means "no reduced decode".
    crate::pool::catch(|| decode_reduced_inner(bytes, min_short_side))
        .ok()
        .flatten()
}

fn decode_reduced_inner(bytes: &[u8], min_short_side: u32) -> Option<RgbImage> {
    // Not a JPEG at all: don't even build a decoder.
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut decoder = Decoder::new(bytes);
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    if !matches!(
        info.coding_process,
        CodingProcess::DctSequential | CodingProcess::DctProgressive
    ) || !matches!(info.pixel_format, PixelFormat::L8 | PixelFormat::RGB24)
    {
        return None;
    }
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    if width == 0 || height == 0 || u64::from(width) * u64::from(height) > DEFAULT_MAX_PIXELS {
        return None;
    }
    let scale = choose_scale(width, height, min_short_side)?;
    let (want_w, want_h) = (width * scale / 8, height * scale / 8);
    // jpeg-decoder picks the smallest scale whose output reaches the request in either axis;
    // asking for exactly the output size of `scale` gives `scale` (smaller ones are smaller
    // in both axes).
    let (out_w, out_h) = decoder
        .scale(u16::try_from(want_w).ok()?, u16::try_from(want_h).ok()?)
        .ok()?;
    let (out_w, out_h) = (u32::from(out_w), u32::from(out_h));
    if (out_w, out_h) != (want_w, want_h) {
        return None;
    }
    let data = decoder.decode().ok()?;
    let n = out_w as usize * out_h as usize;
    let rgb = match info.pixel_format {
        PixelFormat::RGB24 if data.len() == 3 * n => data,
        PixelFormat::L8 if data.len() == n => data.iter().flat_map(|&l| [l, l, l]).collect(),
        _ => return None,
    };
    RgbImage::from_raw(out_w, out_h, rgb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::{GrayImage, Luma, Rgb};

    fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, quality)
            .encode_image(img)
            .unwrap();
        out
    }

    /// A smooth gradient with some texture, so that the reduced decode can be compared.
    fn test_image(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([
                (x * 255 / width) as u8,
                (y * 255 / height) as u8,
                (((x / 16 + y / 16) % 2) * 100 + 50) as u8,
            ])
        })
    }

    /// Mean |difference| of luma between `reduced` and `full` averaged over the blocks that
    /// each reduced pixel covers (`full.width() / reduced.width()` rounded up, clipped at the
    /// edges). Luma, because with 4:2:0 chroma a reduced decode averages chroma over twice the
    /// block size, so per-channel RGB differs where chroma has detail.
    fn luma_diff_vs_block_mean(reduced: &RgbImage, full: &RgbImage) -> f64 {
        let luma = |p: &Rgb<u8>| {
            0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2])
        };
        let f = full.width().div_ceil(reduced.width());
        let mut total = 0.0;
        for (x, y, p) in reduced.enumerate_pixels() {
            let (mut sum, mut n) = (0.0, 0.0);
            for yy in y * f..(y * f + f).min(full.height()) {
                for xx in x * f..(x * f + f).min(full.width()) {
                    sum += luma(full.get_pixel(xx, yy));
                    n += 1.0;
                }
            }
            total += (luma(p) - sum / n).abs();
        }
        total / f64::from(reduced.width() * reduced.height())
    }

    #[test]
    fn large_jpeg_is_reduced_to_the_expected_size() {
        let img = test_image(1000, 800);
        let bytes = jpeg(&img, 90);
        let full = image::load_from_memory(&bytes).unwrap().to_rgb8();
        for (min_short, want) in [
            (0, (125, 100)),
            (1, (125, 100)),
            (100, (125, 100)),
            (101, (250, 200)),
            (200, (250, 200)),
            (201, (500, 400)),
            (224, (500, 400)),
            (400, (500, 400)),
        ] {
            let got = decode_reduced(&bytes, min_short)
                .unwrap_or_else(|| panic!("min_short_side {min_short}: no reduction"));
            assert_eq!(got.dimensions(), want, "min_short_side {min_short}");
            // Close to the full decode averaged over the same blocks.
            let diff = luma_diff_vs_block_mean(&got, &full);
            assert!(
                diff < 1.0,
                "min_short_side {min_short}: mean luma diff {diff}"
            );
        }
        assert!(decode_reduced(&bytes, 401).is_none());
        assert!(decode_reduced(&bytes, 800).is_none());
        assert!(decode_reduced(&bytes, u32::MAX).is_none());
    }

    #[test]
    fn only_scales_that_divide_both_sides_are_used() {
        // 1004x804 = 4 x (251x201): 1/8 would leave partial blocks, so 1/4 is the most.
        let bytes = jpeg(&test_image(1004, 804), 90);
        assert_eq!(decode_reduced(&bytes, 1).unwrap().dimensions(), (251, 201));
        assert_eq!(
            decode_reduced(&bytes, 202).unwrap().dimensions(),
            (502, 402)
        );
        // 16:9 from a 4:3 sensor width: 2250 = 2 x 1125.
        let bytes = jpeg(&test_image(4000, 2250), 75);
        assert_eq!(
            decode_reduced(&bytes, 224).unwrap().dimensions(),
            (2000, 1125)
        );
        // Odd sides: no reduction at all.
        for (w, h) in [(1001, 800), (1000, 803)] {
            assert!(
                decode_reduced(&jpeg(&test_image(w, h), 90), 1).is_none(),
                "{w}x{h}"
            );
        }
    }

    fn fixture(rel: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(rel);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn progressive_and_portrait_jpegs_are_reduced() {
        // 64x48 progressive: 1/8 gives 8x6, close to the full decode averaged over 8x8 blocks.
        let bytes = fixture("hostile/progressive.jpg");
        let got = decode_reduced(&bytes, 6).unwrap();
        assert_eq!(got.dimensions(), (8, 6));
        let full = image::load_from_memory(&bytes).unwrap().to_rgb8();
        let diff = luma_diff_vs_block_mean(&got, &full);
        println!("progressive: mean luma diff {diff:.3}");
        assert!(diff < 2.0, "mean luma diff {diff}");

        // Stored orientation: orient-6.jpg is stored 48x64 (EXIF says rotate), and stays so.
        let got = decode_reduced(&fixture("hostile/orient-6.jpg"), 12).unwrap();
        assert_eq!(got.dimensions(), (12, 16));

        let bytes = jpeg(&test_image(480, 960), 85);
        let got = decode_reduced(&bytes, 224).unwrap();
        assert_eq!(got.dimensions(), (240, 480));
    }

    #[test]
    fn cmyk_and_ycck_give_none() {
        for name in ["hostile/cmyk.jpg", "hostile/ycck.jpg"] {
            assert!(decode_reduced(&fixture(name), 1).is_none(), "{name}");
        }
    }

    #[test]
    fn small_images_give_none() {
        for (w, h) in [(1, 1), (8, 8), (224, 224), (446, 600), (600, 446)] {
            let bytes = jpeg(&test_image(w, h), 90);
            assert!(decode_reduced(&bytes, 224).is_none(), "{w}x{h}");
        }
        // Exactly twice the minimum: 1/2.
        let bytes = jpeg(&test_image(448, 600), 90);
        assert_eq!(
            decode_reduced(&bytes, 224).unwrap().dimensions(),
            (224, 300)
        );
        // No reduction is possible for a 1x1 image even with no minimum.
        assert!(decode_reduced(&jpeg(&test_image(1, 1), 90), 0).is_none());
    }

    #[test]
    fn garbage_gives_none() {
        let bytes = jpeg(&test_image(1000, 800), 90);
        assert!(decode_reduced(b"", 224).is_none());
        assert!(decode_reduced(b"\xFF\xD8", 224).is_none());
        assert!(decode_reduced(b"definitely not a jpeg", 224).is_none());
        assert!(decode_reduced(&bytes[..bytes.len() / 3], 224).is_none());
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(test_image(1000, 800))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert!(decode_reduced(&png, 224).is_none());
        // Corrupt the entropy-coded data and headers in many places: never a panic.
        for i in (2..bytes.len()).step_by(97) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x5A;
            if let Some(img) = decode_reduced(&bad, 224) {
                assert_eq!(
                    img.as_raw().len(),
                    img.width() as usize * img.height() as usize * 3
                );
            }
        }
    }

    #[test]
    fn grey_jpeg_is_expanded_to_rgb() {
        let grey = GrayImage::from_fn(960, 640, |x, y| Luma([((x + 2 * y) % 256) as u8]));
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, 90)
            .encode_image(&grey)
            .unwrap();
        let got = decode_reduced(&bytes, 160).unwrap();
        assert_eq!(got.dimensions(), (240, 160));
        assert!(got.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
        // The mean level is preserved.
        let mean = |v: &[u8]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let (a, b) = (mean(grey.as_raw()), mean(got.as_raw()));
        assert!((a - b).abs() < 1.0, "{a} vs {b}");
    }
}
