//! Image → pixel tensor preprocessing that reproduces Hugging Face transformers'
//! `CLIPImageProcessorPil` (the PIL/NumPy backend, transformers 5.x) as exactly as we can.
//!
//! The pipeline, and the transformers function each step follows:
//!
//! 1. [`load_image`]: decode (format sniffed from the content), apply the EXIF orientation
//!    (`transformers.image_utils.load_image` → `PIL.ImageOps.exif_transpose`), and convert to
//!    RGB8 the way `transformers.image_transforms.convert_to_rgb` does for PIL images: anything
//!    with an alpha channel (or a transparency key) is alpha-composited onto opaque white with
//!    Pillow's integer `alpha_composite` arithmetic.
//!    Images over [`DecodeLimits::max_pixels`] are refused from their header, before any pixel
//!    buffer exists; animations (GIF, APNG, WebP) give their first frame.
//! 2. [`preprocess`]: resize (`PilBackend.resize` → `get_resize_output_image_size(...,
//!    default_to_square=False)` → `PIL.Image.resize`), center crop with zero padding
//!    (`image_transforms.center_crop`), rescale in float64 then cast to float32
//!    (`image_transforms.rescale`), normalise in float32 (`image_transforms.normalize`).
//!
//! [`prepare_file`] (and [`prepare_bytes`] for data in memory) runs both steps for one input
//! and is the whole per-image step of a batch: it never panics on any input, and its error is
//! one line naming the input (`tests/it/hostile.rs`, and the fuzz targets in `tests/fuzz/`).
//!
//! The resampler is a port of Pillow's `libImaging/Resample.c` (separable convolution,
//! filter support scaled by the downscale factor, i.e. antialiased, 22-bit fixed-point
//! coefficients, horizontal pass first with a uint8 intermediate). We deliberately do not use
//! `fast_image_resize` here: it follows Pillow-SIMD, which quantises coefficients to i16 with
//! a per-resize precision, and so differs from mainline Pillow by ±1 on some pixels. The port
//! also computes only the output pixels that survive the center crop, which keeps extreme
//! aspect ratios (a 20000×1 image becomes 4,480,000×224 before cropping) cheap while giving
//! the same values as the full resize, and never holds Pillow's weight tables or intermediate
//! image, which grow with the image's shape rather than its pixels (an exact resize of a
//! 100,000,000×1 image to 224×224 needs 1.6 GB of weights in Pillow).
//!
//! Deliberate deviations from transformers (all documented where they happen):
//! * 16-bit greyscale is scaled to 8 bit by taking the high byte; Pillow's `I;16 → RGB`
//!   conversion clips (everything above 255 becomes white), which is useless.
//! * `do_convert_rgb = false` is accepted but we always produce 3-channel RGB: CLIP needs three
//!   channels, and transformers would fail on a greyscale or RGBA image in that case anyway.
//! * JPEGs are decoded by zune-jpeg (via the `image` crate), not libjpeg-turbo: its IDCT and
//!   chroma upsampling differ slightly, so JPEG pixels can differ by a level or two after the
//!   resize (measured on the fixtures: at most 2 levels). PNGs match bit for bit.
//! * Only the EXIF orientation tag is honoured (Pillow's `exif_transpose` can also fall back
//!   to an XMP `tiff:Orientation`), and an unreadable EXIF block counts as "no rotation".
//! * CMYK and YCCK (Adobe) JPEGs are converted to RGB by the `image` crate's decoder
//!   (zune-jpeg); on the test images in `tests/fixtures/hostile/` this is within 1 (CMYK) and
//!   2 (YCCK) levels of Pillow's `convert("RGB")`.
//! * `resample = 0` (nearest) is rejected: Pillow implements it with a different (affine,
//!   fixed-point) code path that we have not ported, and no CLIP checkpoint uses it.
//!
//! One concern per file; this one holds the entry points that run a whole input through:
//! * `config`: [`PreprocessConfig`] (`preprocessor_config.json`), its parsing, validation and
//!   the resize sizes it gives;
//! * `decode`: [`load_image`], [`DecodeLimits`] and [`ImageLoadError`];
//! * `container`: JPEG and RIFF (WebP) structure checks run before any decoder sees a file;
//! * `jpeg`: DCT-reduced decoding of large JPEGs ([`prepare_file_reduced`]);
//! * `color`: conversion to RGB8 (alpha onto white, 16-bit, grey);
//! * `resample`: the port of Pillow's resampler;
//! * `transform`: [`preprocess`]: resize, center crop, rescale and normalise;
//! * `tensor`: [`to_tensor`], preprocessed images stacked for the vision tower.

mod color;
mod config;
mod container;
mod decode;
mod jpeg;
mod resample;
mod tensor;
#[cfg(test)]
mod test_util;
mod transform;

use std::io::{Cursor, Read};
use std::path::Path;

use image::RgbImage;

pub use color::convert_to_rgb;
pub use config::{
    longest_edge_output_size, shortest_edge_output_size, Convention, CropSize, PreprocessConfig,
    ProcessorClass, Resample, ResizeSize, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
};
pub(crate) use decode::special_kind;
pub use decode::{
    load_image, load_image_from_memory, sniff, DecodeLimits, ImageLoadError, DEFAULT_MAX_PIXELS,
};
pub use jpeg::decode_reduced;
pub use tensor::to_tensor;
pub use transform::{
    center_crop_axis, preprocess, preprocess_image, torchvision_center_crop_axis, AxisCrop, Pixels,
    MAX_OUTPUT_PIXELS,
};

use container::JPEG_SIGNATURE;
use decode::decode;

/// Loads and preprocesses one image file: [`load_image`] then [`preprocess`]. This is the
/// whole per-image step of a batch; every error is one line that names `path`.
pub fn prepare_file(
    path: &Path,
    limits: &DecodeLimits,
    cfg: &PreprocessConfig,
) -> Result<Vec<f32>, ImageLoadError> {
    let img = load_image(path, limits)?;
    preprocess_named(&img, path, cfg)
}

/// How much larger than the resize target a DCT-reduced JPEG must stay: the bicubic resize
/// then still does most of the shrinking, which keeps the result within a few grey levels of
/// a full decode (measured on 12 MP photos: at most 5 levels, mean 0.1-0.35; see `jpeg`).
pub const JPEG_REDUCTION_MARGIN: u32 = 4;

/// [`prepare_file`], except that a JPEG far larger than the model input is decoded at 1/2, 1/4
/// or 1/8 scale (DCT scaling), keeping its short side at least [`JPEG_REDUCTION_MARGIN`] times
/// the resize target. Faster on large photos, and no longer bit-exact with transformers (which
/// decodes every pixel); other formats and small JPEGs take the exact path.
pub fn prepare_file_reduced(
    path: &Path,
    limits: &DecodeLimits,
    cfg: &PreprocessConfig,
) -> Result<Vec<f32>, ImageLoadError> {
    let io_err = |cause| ImageLoadError::Io {
        path: path.to_path_buf(),
        cause,
    };
    let mut file = decode::open_image_file(path)?;
    let mut magic = [0u8; 3];
    let is_jpeg = cfg.do_resize && file.read_exact(&mut magic).is_ok() && magic == JPEG_SIGNATURE;
    if !is_jpeg {
        // Other formats stream from the file; only a JPEG that may be reduced is read whole.
        return prepare_file(path, limits, cfg);
    }
    let mut bytes = magic.to_vec();
    file.read_to_end(&mut bytes).map_err(io_err)?;
    prepare_encoded(&bytes, path, limits, cfg, true)
}

/// The short side a DCT-reduced JPEG must keep for this config.
fn reduction_min_short_side(cfg: &PreprocessConfig) -> u32 {
    let target = match cfg.size {
        ResizeSize::ShortestEdge { shortest_edge, .. } => shortest_edge,
        ResizeSize::Exact { height, width } => height.max(width),
        ResizeSize::LongestEdge { longest_edge } => longest_edge,
    };
    target.saturating_mul(JPEG_REDUCTION_MARGIN)
}

/// [`prepare_file_reduced`] for an encoded image in memory (the `decode_reduced` fuzz target's
/// entry point); errors name it `name`.
pub fn prepare_bytes_reduced(
    bytes: &[u8],
    name: &str,
    limits: &DecodeLimits,
    cfg: &PreprocessConfig,
) -> Result<Vec<f32>, ImageLoadError> {
    prepare_encoded(bytes, Path::new(name), limits, cfg, true)
}

/// [`prepare_file`] for an encoded image in memory; errors name it `name`.
pub fn prepare_bytes(
    bytes: &[u8],
    name: &str,
    limits: &DecodeLimits,
    cfg: &PreprocessConfig,
) -> Result<Vec<f32>, ImageLoadError> {
    prepare_encoded(bytes, Path::new(name), limits, cfg, false)
}

/// An encoded image in memory, decoded (DCT-reduced when `reduce` is asked for and it is a JPEG
/// to be resized) and preprocessed; errors name `path`.
fn prepare_encoded(
    bytes: &[u8],
    path: &Path,
    limits: &DecodeLimits,
    cfg: &PreprocessConfig,
    reduce: bool,
) -> Result<Vec<f32>, ImageLoadError> {
    let reduce = (reduce && cfg.do_resize && bytes.starts_with(&JPEG_SIGNATURE))
        .then(|| (bytes, reduction_min_short_side(cfg)));
    let img = decode(Cursor::new(bytes), path, limits, reduce)?;
    preprocess_named(&img, path, cfg)
}

fn preprocess_named(
    img: &RgbImage,
    path: &Path,
    cfg: &PreprocessConfig,
) -> Result<Vec<f32>, ImageLoadError> {
    preprocess(img, cfg).map_err(|e| ImageLoadError::Preprocess {
        path: path.to_path_buf(),
        detail: one_line(&e),
    })
}

/// anyhow's `a: b: c` chain with each part cut to its first line, so that a multi-line cause
/// can never break the one-line-per-error promise.
fn one_line(err: &anyhow::Error) -> String {
    err.chain()
        .filter_map(|cause| {
            let text = cause.to_string();
            let first = text.lines().next().unwrap_or("").trim().to_string();
            (!first.is_empty()).then_some(first)
        })
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large JPEG goes through the DCT-reduced decode: close to the exact pixels, not equal.
    #[test]
    fn large_jpegs_are_decoded_reduced_within_a_few_levels() {
        let (w, h) = (2048u32, 1792u32);
        // Photo-like content: smooth shading with edges at several scales.
        let img = RgbImage::from_fn(w, h, |x, y| {
            let (x, y) = (x as f32, y as f32);
            let wave = |a: f32, b: f32| (128.0 + 100.0 * (x / a + y / b).sin()) as u8;
            let edge = if (x / 61.0).sin() * (y / 43.0).cos() > 0.3 {
                60
            } else {
                0
            };
            image::Rgb([
                wave(37.0, 53.0),
                wave(11.0, 97.0).saturating_add(edge),
                wave(150.0, 23.0),
            ])
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.jpg");
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
            .encode_image(&img)
            .unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let cfg = PreprocessConfig::default();
        let limits = DecodeLimits::default();
        let exact = prepare_file(&path, &limits, &cfg).unwrap();
        let reduced = prepare_file_reduced(&path, &limits, &cfg).unwrap();
        assert_eq!(exact.len(), reduced.len());
        // Back to grey levels: value * std * 255.
        let levels = |i: usize, d: f32| d * cfg.image_std[i / (224 * 224)] as f32 * 255.0;
        let max = exact
            .iter()
            .zip(&reduced)
            .enumerate()
            .map(|(i, (a, b))| levels(i, (a - b).abs()))
            .fold(0f32, f32::max);
        assert!(max > 0.0, "the reduced path was not taken");
        // 5 levels on real 12 MP photos (see `jpeg`); a little slack for this synthetic one.
        assert!(max <= 8.0, "reduced decode is {max} levels off");
        // Small JPEGs and other formats take the exact path.
        let small = dir.path().join("small.jpg");
        image::DynamicImage::ImageRgb8(image::imageops::thumbnail(&img, 512, 448))
            .save(&small)
            .unwrap();
        assert_eq!(
            prepare_file(&small, &limits, &cfg).unwrap(),
            prepare_file_reduced(&small, &limits, &cfg).unwrap()
        );
    }
}
