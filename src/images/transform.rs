//! The pixel steps after decoding, as `PilBackend._preprocess` runs them for
//! `CLIPImageProcessorPil`: resize (see `resample`), center crop with zero padding
//! (`image_transforms.center_crop`), rescale in float64 then cast to float32
//! (`image_transforms.rescale`) and normalise in float32 (`image_transforms.normalize`).

use std::fmt;
use std::ops::Range;

use anyhow::bail;
use image::RgbImage;

use super::config::{Convention, PreprocessConfig};
use super::decode::DEFAULT_MAX_PIXELS;
use super::resample::resize_window;

/// Upper bound on the number of pixels [`preprocess`] will produce for one image. It only
/// matters when center cropping is off (with cropping the output is the crop size), e.g. a
/// 20000×1 image resized to shortest edge 224 without a crop would be ~1e9 pixels.
pub const MAX_OUTPUT_PIXELS: u64 = DEFAULT_MAX_PIXELS;

/// One axis of `transformers.image_transforms.center_crop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisCrop {
    /// First source index kept.
    pub src_start: u32,
    /// Number of source pixels kept.
    pub len: u32,
    /// Where they land in the output; the rest of the output is zero padding.
    pub dst_offset: u32,
    /// Output length (the crop size).
    pub out_len: u32,
}

impl AxisCrop {
    fn full(size: u32) -> Self {
        Self {
            src_start: 0,
            len: size,
            dst_offset: 0,
            out_len: size,
        }
    }

    fn src_range(&self) -> Range<u32> {
        self.src_start..self.src_start + self.len
    }
}

/// `center_crop` along one axis: when the image is at least as large as the crop, keep
/// `[(size - crop) // 2, + crop)`; when it is smaller, transformers zero-pads it into a
/// `crop`-sized canvas at offset `ceil((crop - size) / 2)` (its `top_pad`/`left_pad`; the
/// subsequent slice then starts at `(size - crop) // 2 + pad = 0`). Padding happens on uint8
/// data, so padded pixels come out as `(0 * rescale - mean) / std`.
pub fn center_crop_axis(size: u32, crop: u32) -> AxisCrop {
    if size >= crop {
        AxisCrop {
            src_start: (size - crop) / 2,
            len: crop,
            dst_offset: 0,
            out_len: crop,
        }
    } else {
        AxisCrop {
            src_start: 0,
            len: size,
            dst_offset: (crop - size).div_ceil(2),
            out_len: crop,
        }
    }
}

/// torchvision's `F.center_crop` along one axis (open_clip's `center_crop_or_pad` is the same
/// with another fill): an image at least as large as the crop keeps
/// `[int(round((size - crop) / 2.0)), + crop)`, Python's round half to even; a smaller one is
/// padded by `(crop - size) // 2` before it (and the rest after it).
pub fn torchvision_center_crop_axis(size: u32, crop: u32) -> AxisCrop {
    if size >= crop {
        let diff = size - crop;
        // diff / 2, rounded half to even: odd diffs end in .5.
        let half = diff / 2;
        let start = if diff % 2 == 1 && half % 2 == 1 {
            half + 1
        } else {
            half
        };
        AxisCrop {
            src_start: start,
            len: crop,
            dst_offset: 0,
            out_len: crop,
        }
    } else {
        AxisCrop {
            src_start: 0,
            len: size,
            dst_offset: (crop - size) / 2,
            out_len: crop,
        }
    }
}

impl PreprocessConfig {
    /// The center crop along one axis, by this config's [`Convention`].
    pub fn crop_axis(&self, size: u32, crop: u32) -> AxisCrop {
        match self.convention {
            Convention::Transformers => center_crop_axis(size, crop),
            Convention::Torchvision { .. } => torchvision_center_crop_axis(size, crop),
        }
    }

    /// The uint8 value padding takes (before rescale and normalisation).
    fn pad_value(&self) -> u8 {
        match self.convention {
            Convention::Transformers => 0,
            Convention::Torchvision { fill } => fill,
        }
    }

    /// Per channel, the float32 output for each uint8 input value: transformers' `rescale`
    /// (`image.astype(float64) * scale`, then cast to float32) followed by `normalize`
    /// (`(image - mean) / std` with `image`, `mean` and `std` all float32). torchvision's
    /// `ToTensor` divides by 255 in float32 instead (`Normalize` is the same float32 formula).
    fn value_lut(&self) -> [[f32; 256]; 3] {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            let mean = self.image_mean[c] as f32;
            let std = self.image_std[c] as f32;
            for (v, out) in table.iter_mut().enumerate() {
                let torchvision = matches!(self.convention, Convention::Torchvision { .. });
                let mut x = if self.do_rescale && torchvision {
                    v as f32 / (1.0 / self.rescale_factor) as f32
                } else if self.do_rescale {
                    (v as f64 * self.rescale_factor) as f32
                } else {
                    v as f32
                };
                if self.do_normalize {
                    x = (x - mean) / std;
                }
                *out = x;
            }
        }
        lut
    }
}

/// Resize → center crop → rescale → normalise, as `PilBackend._preprocess` does for
/// `CLIPImageProcessorPil`. Returns CHW float32 (`3 × H × W`, H/W = the crop size when
/// center cropping; see [`PreprocessConfig::output_size`]).
pub fn preprocess(img: &RgbImage, cfg: &PreprocessConfig) -> anyhow::Result<Vec<f32>> {
    Ok(preprocess_image(img, cfg)?.data)
}

/// CHW float32 pixels with their size.
#[derive(Debug, Clone, PartialEq)]
pub struct Pixels {
    pub data: Vec<f32>,
    pub width: u32,
    pub height: u32,
}

impl fmt::Display for Pixels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "3x{}x{} pixels", self.height, self.width)
    }
}

/// [`preprocess`], also returning the output size (useful when it depends on the image).
pub fn preprocess_image(img: &RgbImage, cfg: &PreprocessConfig) -> anyhow::Result<Pixels> {
    cfg.validate()?;
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        bail!("cannot preprocess an empty {w}x{h} image");
    }
    let (rw, rh) = if cfg.do_resize {
        cfg.resized_size(w, h)?
    } else {
        (w, h)
    };
    let (cx, cy) = if cfg.do_center_crop {
        (
            cfg.crop_axis(rw, cfg.crop_size.width),
            cfg.crop_axis(rh, cfg.crop_size.height),
        )
    } else {
        (AxisCrop::full(rw), AxisCrop::full(rh))
    };
    let (out_w, out_h) = (cx.out_len as usize, cy.out_len as usize);
    if (out_w as u64) * (out_h as u64) > MAX_OUTPUT_PIXELS {
        bail!(
            "preprocessing {w}x{h} would produce {out_w}x{out_h} pixels, over the limit of {MAX_OUTPUT_PIXELS}"
        );
    }

    // The surviving window of the resized image, packed RGB8.
    let window = if cfg.do_resize {
        resize_window(img, rw, rh, cx.src_range(), cy.src_range(), cfg.resample)
    } else {
        let mut v = Vec::with_capacity(cx.len as usize * cy.len as usize * 3);
        let stride = w as usize * 3;
        let (x0, x1) = (
            cx.src_start as usize * 3,
            (cx.src_start + cx.len) as usize * 3,
        );
        for y in cy.src_range() {
            let row = y as usize * stride;
            v.extend_from_slice(&img.as_raw()[row + x0..row + x1]);
        }
        v
    };

    let lut = cfg.value_lut();
    let plane = out_w * out_h;
    let mut data = vec![0f32; 3 * plane];
    let pad = usize::from(cfg.pad_value());
    for (c, chan) in data.chunks_exact_mut(plane).enumerate() {
        // Padding (zero, or torchvision's fill) is applied to the uint8 image, before
        // rescale/normalise.
        chan.fill(lut[c][pad]);
    }
    let (win_w, dx, dy) = (
        cx.len as usize,
        cx.dst_offset as usize,
        cy.dst_offset as usize,
    );
    if win_w > 0 {
        for (y, row) in window.chunks_exact(win_w * 3).enumerate() {
            let base = (y + dy) * out_w + dx;
            for (x, p) in row.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    data[c * plane + base + x] = lut[c][p[c] as usize];
                }
            }
        }
    }
    Ok(Pixels {
        data,
        width: out_w as u32,
        height: out_h as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::config::{OPENAI_CLIP_MEAN, OPENAI_CLIP_STD};
    use crate::images::decode::{load_image, DecodeLimits};
    use crate::images::test_util::{fixture, load_u8_tensors};
    use image::Rgb;

    #[test]
    fn center_crop_offsets_match_transformers() {
        let c = |size, crop| {
            let a = center_crop_axis(size, crop);
            (a.src_start, a.len, a.dst_offset)
        };
        // top = (h - crop) // 2
        assert_eq!(c(283, 224), (29, 224, 0));
        assert_eq!(c(224, 224), (0, 224, 0));
        assert_eq!(c(225, 224), (0, 224, 0));
        assert_eq!(c(226, 224), (1, 224, 0));
        assert_eq!(c(227, 224), (1, 224, 0));
        assert_eq!(c(4_480_000, 224), (2_239_888, 224, 0));
        // Smaller than the crop: zero padded, image at ceil((crop - h) / 2) (checked against
        // transformers.image_transforms.center_crop: 221 -> row 2, 223 -> 1, 1 -> 112).
        assert_eq!(c(221, 224), (0, 221, 2));
        assert_eq!(c(223, 224), (0, 223, 1));
        assert_eq!(c(1, 224), (0, 1, 112));
    }

    #[test]
    fn padding_with_zeros_happens_before_normalisation() {
        // No resize, 3x2 image, 224 crop: everything outside is uint8 0, normalised.
        let cfg = PreprocessConfig {
            do_resize: false,
            ..Default::default()
        };
        let img = RgbImage::from_pixel(3, 2, Rgb([255, 255, 255]));
        let px = preprocess(&img, &cfg).unwrap();
        let lut = cfg.value_lut();
        let plane = 224 * 224;
        assert_eq!(px[0], lut[0][0]);
        assert_eq!(px[plane + 5], lut[1][0]);
        // rows 111..113, cols ceil(221/2)=111..114
        assert_eq!(px[111 * 224 + 111], lut[0][255]);
        assert_eq!(px[2 * plane + 112 * 224 + 113], lut[2][255]);
        assert_eq!(px[111 * 224 + 110], lut[0][0]);
        assert_eq!(px[111 * 224 + 114], lut[0][0]);
        assert_eq!(px[113 * 224 + 111], lut[0][0]);
    }

    #[test]
    fn rescale_and_normalise_follow_numpy_dtypes() {
        let lut = PreprocessConfig::default().value_lut();
        // float64 rescale then float32, then float32 (x - mean) / std.
        let x = (200f64 * (1.0 / 255.0)) as f32;
        let want = (x - OPENAI_CLIP_MEAN[1] as f32) / OPENAI_CLIP_STD[1] as f32;
        assert_eq!(lut[1][200].to_bits(), want.to_bits());
    }

    #[test]
    fn one_by_one_image() {
        let cfg = PreprocessConfig::default();
        let img = RgbImage::from_pixel(1, 1, Rgb([12, 130, 250]));
        let px = preprocess(&img, &cfg).unwrap();
        assert_eq!(px.len(), 3 * 224 * 224);
        let lut = cfg.value_lut();
        for (c, v) in [12usize, 130, 250].into_iter().enumerate() {
            let plane = &px[c * 224 * 224..(c + 1) * 224 * 224];
            assert!(plane.iter().all(|&x| x == lut[c][v]), "channel {c}");
        }
    }

    #[test]
    fn very_wide_image_is_cheap_and_does_not_panic() {
        // 20000x1: transformers would resize to 4,480,000x224 (3 GB of uint8) and crop the
        // middle 224x224. We compute only that window, with identical values.
        let img = RgbImage::from_fn(20000, 1, |x, _| Rgb([(x % 256) as u8, (x / 100) as u8, 7]));
        let cfg = PreprocessConfig::default();
        let px = preprocess(&img, &cfg).unwrap();
        assert_eq!(px.len(), 3 * 224 * 224);
        // Columns 2,239,888.. of the resize map to source x ~ 9999.95..10000.95; green there is
        // 99 or 100, blue is constant 7.
        let lut = cfg.value_lut();
        let plane = 224 * 224;
        assert!(px[2 * plane..].iter().all(|&x| x == lut[2][7]));
        assert!(px[plane..2 * plane]
            .iter()
            .all(|&x| x == lut[1][99] || x == lut[1][100]));
        // Every row is the same (the source has one row).
        assert_eq!(px[..224], px[223 * 224..224 * 224]);

        // Same for a tall image.
        let tall = RgbImage::from_pixel(1, 20000, Rgb([1, 2, 3]));
        assert_eq!(preprocess(&tall, &cfg).unwrap().len(), 3 * 224 * 224);

        // Without a crop the full 4.48M x 224 output is refused rather than allocated.
        let no_crop = PreprocessConfig {
            do_center_crop: false,
            ..Default::default()
        };
        let err = preprocess(&img, &no_crop).unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
    }

    /// Max |diff| and fraction of differing values between our pixels and transformers'.
    fn compare(ours: &[f32], reference: &[f32]) -> (f32, f64) {
        assert_eq!(ours.len(), reference.len());
        let mut max = 0f32;
        let mut differ = 0usize;
        for (a, b) in ours.iter().zip(reference) {
            let d = (a - b).abs();
            max = max.max(d);
            if d != 0.0 {
                differ += 1;
            }
        }
        (max, differ as f64 / ours.len() as f64)
    }

    /// One uint8 level after normalisation is 1/255/std ≈ 0.0146 for the largest channel
    /// (std 0.2613); a hair above that allows exactly ±1 level.
    const ONE_LEVEL: f32 = 0.0151;

    #[test]
    fn matches_transformers_reference_pixels() {
        // tests/fixtures/reference/pixels*.safetensors: transformers 5.23 CLIPImageProcessorPil
        // (Pillow 13) output for tests/fixtures/images{,-alpha}/ (see pixels.json).
        let cfg =
            PreprocessConfig::from_file(&fixture("configs/openai-legacy-preprocessor_config.json"))
                .unwrap();
        let mut report = Vec::new();
        let mut failures = Vec::new();
        for (dir, file) in [
            ("images", "reference/pixels.safetensors"),
            ("images-alpha", "reference/pixels-alpha.safetensors"),
        ] {
            let reference = load_u8_tensors(&fixture(file));
            assert!(!reference.is_empty());
            let mut names: Vec<_> = reference.keys().cloned().collect();
            names.sort();
            for name in names {
                let want = reference[&name]
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let img = load_image(&fixture(&format!("{dir}/{name}")), &DecodeLimits::default())
                    .unwrap();
                let got = preprocess(&img, &cfg).unwrap();
                let (max, frac) = compare(&got, &want);
                report.push(format!(
                    "{name}: max |diff| {max:.6}, {:.4}% differ",
                    frac * 100.0
                ));
                // PNGs decode identically in both stacks and the resampler is a port of
                // Pillow's, so they must match bit for bit. JPEG decoders differ (Pillow uses
                // libjpeg-turbo; the image crate uses zune-jpeg, with a different IDCT and
                // chroma upsampling), so allow a few levels there.
                let tolerance = if name.ends_with(".jpg") {
                    4.0 * ONE_LEVEL
                } else {
                    0.0
                };
                if max > tolerance {
                    failures.push(format!("{name}: max |diff| {max} > {tolerance}"));
                }
            }
        }
        println!("{}", report.join("\n"));
        assert!(failures.is_empty(), "{failures:#?}\n{report:#?}");
    }
}
