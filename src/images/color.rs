//! Conversion of any decoded image to RGB8, as transformers' `convert_to_rgb` does for PIL
//! images: alpha is composited onto opaque white with Pillow's integer arithmetic.

use image::{DynamicImage, RgbImage, RgbaImage};

/// `transformers.image_transforms.convert_to_rgb` for PIL images: images with an alpha channel
/// (the `image` crate already expands palette and tRNS transparency to alpha, like PIL's
/// `convert("RGBA")`) are composited onto opaque white with `PIL.Image.alpha_composite`;
/// others are converted with `convert("RGB")` (grey is replicated).
///
/// 16-bit samples become 8-bit by taking the high byte. That is what Pillow's PNG decoder does
/// for 16-bit RGB/RGBA/LA (`RGB;16B` etc. unpackers), but for 16-bit greyscale Pillow opens
/// mode `I;16` whose RGB conversion *clips* to 255 (a mostly white image). We deliberately
/// scale instead; transformers parity is lost for such images, sensibly so.
pub fn convert_to_rgb(img: DynamicImage) -> RgbImage {
    fn hi(v: u16) -> u8 {
        (v >> 8) as u8
    }
    let (w, h) = (img.width(), img.height());
    match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageRgba8(i) => composite_rgba_on_white(&i),
        // The crate's own grey -> RGB conversion replicates the value, exactly like Pillow's
        // `convert("RGB")`.
        img @ DynamicImage::ImageLuma8(_) => img.to_rgb8(),
        DynamicImage::ImageLumaA8(i) => map_to_rgb::<u8, 2>(w, h, i.as_raw(), |[l, a]| {
            let v = composite_on_white(l, a);
            [v, v, v]
        }),
        DynamicImage::ImageLuma16(i) => map_to_rgb::<u16, 1>(w, h, i.as_raw(), |[l]| {
            let l = hi(l);
            [l, l, l]
        }),
        DynamicImage::ImageLumaA16(i) => map_to_rgb::<u16, 2>(w, h, i.as_raw(), |[l, a]| {
            let v = composite_on_white(hi(l), hi(a));
            [v, v, v]
        }),
        DynamicImage::ImageRgb16(i) => {
            map_to_rgb::<u16, 3>(w, h, i.as_raw(), |[r, g, b]| [hi(r), hi(g), hi(b)])
        }
        DynamicImage::ImageRgba16(i) => map_to_rgb::<u16, 4>(w, h, i.as_raw(), |[r, g, b, a]| {
            let a = hi(a);
            [
                composite_on_white(hi(r), a),
                composite_on_white(hi(g), a),
                composite_on_white(hi(b), a),
            ]
        }),
        // Float images (OpenEXR, Radiance HDR) and any future variants: the `image` crate's
        // own clamping conversion. Pillow cannot open these, so there is nothing to match.
        other => {
            if other.color().has_alpha() {
                composite_rgba_on_white(&other.to_rgba8())
            } else {
                other.to_rgb8()
            }
        }
    }
}

/// A new `w`×`h` RGB8 image with one pixel per `N` samples of `src`, mapped by `f`. Works on
/// the packed buffers rather than `from_fn`/`get_pixel`, whose per-pixel bounds checks made
/// converting a 179-megapixel image take 25 s in a debug build.
fn map_to_rgb<T: Copy, const N: usize>(
    w: u32,
    h: u32,
    src: &[T],
    f: impl Fn([T; N]) -> [u8; 3],
) -> RgbImage {
    let mut out = RgbImage::new(w, h);
    for (dst, px) in out.chunks_exact_mut(3).zip(src.chunks_exact(N)) {
        // Always succeeds: `chunks_exact(N)` yields slices of exactly N.
        if let Ok(p) = <[T; N]>::try_from(px) {
            dst.copy_from_slice(&f(p));
        }
    }
    out
}

fn composite_rgba_on_white(img: &RgbaImage) -> RgbImage {
    map_to_rgb::<u8, 4>(img.width(), img.height(), img.as_raw(), |[r, g, b, a]| {
        [
            composite_on_white(r, a),
            composite_on_white(g, a),
            composite_on_white(b, a),
        ]
    })
}

/// One channel of Pillow's `ImagingAlphaComposite` (`libImaging/AlphaComposite.c`) with an
/// opaque white destination, in its integer arithmetic (7 fractional bits, divide by 255 via
/// the `SHIFTFORDIV255` trick). Checked exhaustively against Pillow 13 for all 65536 inputs.
fn composite_on_white(src: u8, alpha: u8) -> u8 {
    const PRECISION_BITS: u32 = 7;
    if alpha == 0 {
        return 255;
    }
    let (c, a) = (u32::from(src), u32::from(alpha));
    let (dst_c, dst_a) = (255u32, 255u32);
    let blend = dst_a * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let tmp = c * coef1 + dst_c * coef2 + (0x80 << PRECISION_BITS);
    ((((tmp >> 8) + tmp) >> 8) >> PRECISION_BITS) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::decode::{load_image_from_memory, DecodeLimits};
    use crate::images::test_util::encode;
    use image::{ImageBuffer, ImageFormat, Rgba};

    #[test]
    fn alpha_composite_on_white_matches_pillow_everywhere() {
        // Pillow's integer alpha_composite onto opaque white equals
        // round((c*a + 255*(255-a)) / 255) for all inputs (verified exhaustively in Python
        // against Pillow 13; there are no .5 ties since 255 is odd).
        for c in 0..=255u32 {
            for a in 0..=255u32 {
                let want = ((c * a + 255 * (255 - a)) as f64 / 255.0).round() as u8;
                assert_eq!(composite_on_white(c as u8, a as u8), want, "c={c} a={a}");
            }
        }
        assert_eq!(composite_on_white(0, 128), 127);
        assert_eq!(composite_on_white(37, 0), 255);
        assert_eq!(composite_on_white(37, 255), 37);
    }

    #[test]
    fn rgba_png_is_composited_onto_white() {
        let img = RgbaImage::from_fn(4, 1, |x, _| match x {
            0 => Rgba([10, 20, 30, 0]),
            1 => Rgba([10, 20, 30, 255]),
            2 => Rgba([0, 0, 0, 128]),
            _ => Rgba([200, 100, 0, 64]),
        });
        let bytes = encode(&DynamicImage::ImageRgba8(img), ImageFormat::Png);
        let rgb = load_image_from_memory(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [10, 20, 30]);
        assert_eq!(rgb.get_pixel(2, 0).0, [127, 127, 127]);
        assert_eq!(
            rgb.get_pixel(3, 0).0,
            [
                composite_on_white(200, 64),
                composite_on_white(100, 64),
                composite_on_white(0, 64)
            ]
        );
    }

    #[test]
    fn grey_and_16_bit_images_convert_sensibly() {
        // 8-bit grey is replicated into all three channels, for every value.
        let l8 = ImageBuffer::from_fn(256, 1, |x, _| image::Luma([x as u8]));
        let rgb = convert_to_rgb(DynamicImage::ImageLuma8(l8));
        assert!(rgb.pixels().enumerate().all(|(i, p)| p.0 == [i as u8; 3]));
        // An empty image converts to an empty image, without panicking.
        let empty = convert_to_rgb(DynamicImage::ImageRgba16(ImageBuffer::new(0, 0)));
        assert_eq!(empty.dimensions(), (0, 0));

        let la = ImageBuffer::from_fn(2, 1, |x, _| {
            image::LumaA([100u8, if x == 0 { 0 } else { 255 }])
        });
        let rgb = convert_to_rgb(DynamicImage::ImageLumaA8(la));
        assert_eq!(rgb.as_raw(), &[255, 255, 255, 100, 100, 100]);

        // 16-bit grey: scaled by the high byte (Pillow would clip 0x8000 to 255).
        let l16 = ImageBuffer::from_fn(2, 1, |x, _| {
            image::Luma([if x == 0 { 0x8000u16 } else { 0xffff }])
        });
        let bytes = encode(&DynamicImage::ImageLuma16(l16), ImageFormat::Png);
        let rgb = load_image_from_memory(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(rgb.as_raw(), &[0x80, 0x80, 0x80, 0xff, 0xff, 0xff]);

        let rgba16 = ImageBuffer::from_pixel(1, 1, Rgba([0x1234u16, 0xff00, 0x0001, 0xffff]));
        let rgb = convert_to_rgb(DynamicImage::ImageRgba16(rgba16));
        assert_eq!(rgb.as_raw(), &[0x12, 0xff, 0x00]);
    }
}
