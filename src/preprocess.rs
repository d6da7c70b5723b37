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
//!    `SiglipImageProcessorPil` is the same pipeline with an exact `{"height", "width"}` resize and
//!    no crop step; its class defaults apply when `image_processor_type` names it.
//!
//! [`prepare_file`] (and [`prepare_bytes`] for data in memory) runs both steps for one input
//! and is the whole per-image step of a batch: it never panics on any input, and its error is
//! one line naming the input (`tests/hostile.rs`, and the fuzz targets in `tests/fuzz/`).
//!
//! The resampler is a port of Pillow's `libImaging/Resample.c` (separable convolution,
//! filter support scaled by the downscale factor, i.e. antialiased, 22-bit fixed-point
//! coefficients, horizontal pass first with a uint8 intermediate). We deliberately do not use
//! `fast_image_resize` here: it follows Pillow-SIMD, which quantises coefficients to i16 with
//! a per-resize precision, and so differs from mainline Pillow by ±1 on some pixels. The port
//! also computes only the output pixels that survive the center crop, which keeps extreme
//! aspect ratios (a 20000×1 image becomes 4,480,000×224 before cropping) cheap while giving
//! the same values as the full resize.
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

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage, RgbaImage};
use serde::Deserialize;
use serde_json::Value;

use crate::error::single_line;

/// `transformers.image_utils.OPENAI_CLIP_MEAN`.
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// `transformers.image_utils.OPENAI_CLIP_STD`.
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Pillow refuses images above `2 * Image.MAX_IMAGE_PIXELS` (= 2 × 89,478,485) with a
/// `DecompressionBombError`; we use the same threshold by default.
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// Upper bound on the number of pixels [`preprocess`] will produce for one image. It only
/// matters when center cropping is off (with cropping the output is the crop size), e.g. a
/// 20000×1 image resized to shortest edge 224 without a crop would be ~1e9 pixels.
pub const MAX_OUTPUT_PIXELS: u64 = DEFAULT_MAX_PIXELS;

/// Largest `size`/`crop_size` value we accept in a config; keeps all size arithmetic exact.
const MAX_CONFIG_DIM: u64 = 1 << 16;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Pillow resampling filters, numbered as `PIL.Image.Resampling` (the `resample` config field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// 1: `LANCZOS` (support 3).
    Lanczos,
    /// 2: `BILINEAR` (triangle, support 1).
    Bilinear,
    /// 3: `BICUBIC` (Keys cubic with a = -0.5, i.e. Catmull-Rom, support 2). CLIP's default.
    Bicubic,
    /// 4: `BOX` (support 0.5).
    Box,
    /// 5: `HAMMING` (support 1).
    Hamming,
}

impl Resample {
    /// Maps a `PIL.Image.Resampling` number. 0 (`NEAREST`) is not supported (see module docs).
    pub fn from_pil(value: i64) -> anyhow::Result<Self> {
        Ok(match value {
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            4 => Self::Box,
            5 => Self::Hamming,
            0 => bail!(
                "resample=0 (nearest) is not supported; use 2 (bilinear) or 3 (bicubic, CLIP's default)"
            ),
            other => bail!(
                "unknown resample={other}; expected a PIL resampling filter: 1 (lanczos), 2 (bilinear), 3 (bicubic), 4 (box) or 5 (hamming)"
            ),
        })
    }

    /// The `PIL.Image.Resampling` number.
    pub fn to_pil(self) -> i64 {
        match self {
            Self::Lanczos => 1,
            Self::Bilinear => 2,
            Self::Bicubic => 3,
            Self::Box => 4,
            Self::Hamming => 5,
        }
    }

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

/// The resize target (`size` in `preprocessor_config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeSize {
    /// `{"shortest_edge": S}` (or the legacy bare integer `S`): scale so the short side is `S`,
    /// keeping the aspect ratio. With `longest_edge` as well, the long side is capped
    /// (`image_transforms.get_size_with_aspect_ratio`).
    ShortestEdge {
        shortest_edge: u32,
        longest_edge: Option<u32>,
    },
    /// `{"height": H, "width": W}` (or a legacy `[H, W]` list): resize to exactly this size.
    Exact { height: u32, width: u32 },
}

/// `crop_size` in `preprocessor_config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropSize {
    pub height: u32,
    pub width: u32,
}

/// Preprocessing settings from a checkpoint's `preprocessor_config.json`, with transformers'
/// `CLIPImageProcessor` class defaults for anything missing (or `null`), or
/// `SiglipImageProcessor`'s when `image_processor_type` names it ([`Self::siglip`]). Unknown fields
/// are ignored. Both the legacy (`"size": 224`, `"crop_size": 224`) and the current
/// (`{"shortest_edge": 224}`, `{"height": 224, "width": 224}`) forms are accepted.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct PreprocessConfig {
    pub do_resize: bool,
    pub size: ResizeSize,
    pub resample: Resample,
    pub do_center_crop: bool,
    pub crop_size: CropSize,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    /// Accepted for completeness; we always convert to RGB (see module docs).
    pub do_convert_rgb: bool,
}

impl Default for PreprocessConfig {
    /// `CLIPImageProcessor`'s class attributes.
    fn default() -> Self {
        Self {
            do_resize: true,
            size: ResizeSize::ShortestEdge {
                shortest_edge: 224,
                longest_edge: None,
            },
            resample: Resample::Bicubic,
            do_center_crop: true,
            crop_size: CropSize {
                height: 224,
                width: 224,
            },
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            do_convert_rgb: true,
        }
    }
}

impl PreprocessConfig {
    /// `SiglipImageProcessor`'s class attributes (SigLIP and SigLIP 2 alike): resize straight to
    /// 224×224 (no aspect ratio kept), no center crop (the class has no crop step at all), rescale,
    /// normalise with mean = std = 0.5 (`IMAGENET_STANDARD_MEAN`/`_STD`).
    pub fn siglip() -> Self {
        Self {
            do_resize: true,
            size: ResizeSize::Exact {
                height: 224,
                width: 224,
            },
            resample: Resample::Bicubic,
            do_center_crop: false,
            crop_size: CropSize {
                height: 224,
                width: 224,
            },
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            do_convert_rgb: true,
        }
    }
}

/// The JSON as written; every field optional. Shape-polymorphic fields are kept as JSON values
/// and interpreted by hand so that errors can say what was expected.
#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    image_processor_type: Option<String>,
    do_resize: Option<bool>,
    size: Option<Value>,
    resample: Option<Value>,
    do_center_crop: Option<bool>,
    crop_size: Option<Value>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Value>,
    image_std: Option<Value>,
    do_convert_rgb: Option<bool>,
}

impl TryFrom<RawConfig> for PreprocessConfig {
    type Error = anyhow::Error;

    fn try_from(raw: RawConfig) -> anyhow::Result<Self> {
        // serde keeps only the top-level `Display` of this error, so flatten the context chain
        // into one message ("invalid `image_mean`: expected 3 values ...").
        Self::from_raw(raw).map_err(|e| anyhow::anyhow!("{e:#}"))
    }
}

impl PreprocessConfig {
    fn from_raw(raw: RawConfig) -> anyhow::Result<Self> {
        // `SiglipImageProcessor`, `...Fast`, `...Pil`: other defaults, and no crop step, whatever
        // a `do_center_crop` key says (transformers ignores it there).
        let siglip = raw
            .image_processor_type
            .as_deref()
            .is_some_and(|t| t.starts_with("SiglipImageProcessor"));
        let d = if siglip {
            Self::siglip()
        } else {
            Self::default()
        };
        let cfg = Self {
            do_resize: raw.do_resize.unwrap_or(d.do_resize),
            size: match raw.size.as_ref().filter(|v| !v.is_null()) {
                Some(v) => parse_size(v).context("invalid `size`")?,
                None => d.size,
            },
            resample: match raw.resample.as_ref().filter(|v| !v.is_null()) {
                Some(v) => {
                    let n = v
                        .as_i64()
                        .with_context(|| format!("invalid `resample` {v}: expected an integer"))?;
                    Resample::from_pil(n).context("invalid `resample`")?
                }
                None => d.resample,
            },
            do_center_crop: !siglip && raw.do_center_crop.unwrap_or(d.do_center_crop),
            crop_size: match raw.crop_size.as_ref().filter(|v| !v.is_null()) {
                Some(v) => parse_crop_size(v).context("invalid `crop_size`")?,
                None => d.crop_size,
            },
            do_rescale: raw.do_rescale.unwrap_or(d.do_rescale),
            rescale_factor: raw.rescale_factor.unwrap_or(d.rescale_factor),
            do_normalize: raw.do_normalize.unwrap_or(d.do_normalize),
            image_mean: match raw.image_mean.as_ref().filter(|v| !v.is_null()) {
                Some(v) => parse_rgb_triple(v).context("invalid `image_mean`")?,
                None => d.image_mean,
            },
            image_std: match raw.image_std.as_ref().filter(|v| !v.is_null()) {
                Some(v) => parse_rgb_triple(v).context("invalid `image_std`")?,
                None => d.image_std,
            },
            do_convert_rgb: raw.do_convert_rgb.unwrap_or(d.do_convert_rgb),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

fn parse_dim(v: &Value, what: &str) -> anyhow::Result<u32> {
    match v.as_u64() {
        Some(n) if (1..=MAX_CONFIG_DIM).contains(&n) => Ok(n as u32),
        _ => bail!("{what} must be an integer between 1 and {MAX_CONFIG_DIM}, got {v}"),
    }
}

/// Mirrors `get_size_dict(size, default_to_square=False)` as CLIP uses it: a bare integer is a
/// shortest edge, a 2-list is `(height, width)`, a dict is taken by key.
fn parse_size(v: &Value) -> anyhow::Result<ResizeSize> {
    match v {
        Value::Number(_) => Ok(ResizeSize::ShortestEdge {
            shortest_edge: parse_dim(v, "size")?,
            longest_edge: None,
        }),
        Value::Array(a) if a.len() == 1 => Ok(ResizeSize::ShortestEdge {
            shortest_edge: parse_dim(&a[0], "size[0]")?,
            longest_edge: None,
        }),
        Value::Array(a) if a.len() == 2 => Ok(ResizeSize::Exact {
            height: parse_dim(&a[0], "size[0] (height)")?,
            width: parse_dim(&a[1], "size[1] (width)")?,
        }),
        Value::Object(m) => {
            let get = |key: &str| -> anyhow::Result<Option<u32>> {
                m.get(key)
                    .filter(|v| !v.is_null())
                    .map(|v| parse_dim(v, key))
                    .transpose()
            };
            // Same precedence as `PilBackend.resize`: shortest_edge(+longest_edge), then
            // height+width.
            if let Some(shortest_edge) = get("shortest_edge")? {
                Ok(ResizeSize::ShortestEdge {
                    shortest_edge,
                    longest_edge: get("longest_edge")?,
                })
            } else if let (Some(height), Some(width)) = (get("height")?, get("width")?) {
                Ok(ResizeSize::Exact { height, width })
            } else {
                bail!(
                    "unsupported size {v}: expected {{\"shortest_edge\": N}} (optionally with \"longest_edge\") or {{\"height\": H, \"width\": W}}"
                )
            }
        }
        _ => bail!("expected an integer, a [height, width] list or an object, got {v}"),
    }
}

/// Mirrors `get_size_dict(crop_size, param_name="crop_size")`: an integer means a square.
fn parse_crop_size(v: &Value) -> anyhow::Result<CropSize> {
    match v {
        Value::Number(_) => {
            let n = parse_dim(v, "crop_size")?;
            Ok(CropSize {
                height: n,
                width: n,
            })
        }
        Value::Array(a) if a.len() == 2 => Ok(CropSize {
            height: parse_dim(&a[0], "crop_size[0] (height)")?,
            width: parse_dim(&a[1], "crop_size[1] (width)")?,
        }),
        Value::Object(m) => match (m.get("height"), m.get("width")) {
            (Some(h), Some(w)) => Ok(CropSize {
                height: parse_dim(h, "height")?,
                width: parse_dim(w, "width")?,
            }),
            _ => bail!("expected {{\"height\": H, \"width\": W}}, got {v}"),
        },
        _ => bail!("expected an integer, a [height, width] list or an object, got {v}"),
    }
}

/// A scalar applies to all channels (as in `image_transforms.normalize`); a list must have
/// exactly 3 entries because we always produce RGB.
fn parse_rgb_triple(v: &Value) -> anyhow::Result<[f64; 3]> {
    match v {
        Value::Number(n) => {
            let x = n.as_f64().with_context(|| format!("not a number: {v}"))?;
            Ok([x; 3])
        }
        Value::Array(a) => {
            if a.len() != 3 {
                bail!(
                    "expected 3 values (one per RGB channel), got {} in {v}",
                    a.len()
                );
            }
            let mut out = [0.0; 3];
            for (o, x) in out.iter_mut().zip(a) {
                *o = x.as_f64().with_context(|| format!("not a number: {x}"))?;
            }
            Ok(out)
        }
        _ => bail!("expected a list of 3 numbers, got {v}"),
    }
}

impl PreprocessConfig {
    /// Reads and validates a `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read preprocessor config {}", path.display()))?;
        Self::from_json_str(&text)
            .with_context(|| format!("invalid preprocessor config {}", path.display()))
    }

    /// Parses and validates the JSON text of a `preprocessor_config.json`.
    pub fn from_json_str(text: &str) -> anyhow::Result<Self> {
        // `try_from = "RawConfig"` runs `validate`.
        Ok(serde_json::from_str(text)?)
    }

    /// Checks the invariants the pipeline relies on (parsing already enforces most of them;
    /// this catches hand-built configs).
    pub fn validate(&self) -> anyhow::Result<()> {
        let dim_ok = |n: u32| (1..=MAX_CONFIG_DIM).contains(&u64::from(n));
        match self.size {
            ResizeSize::ShortestEdge {
                shortest_edge,
                longest_edge,
            } => {
                if !dim_ok(shortest_edge) {
                    bail!("size.shortest_edge must be between 1 and {MAX_CONFIG_DIM}, got {shortest_edge}");
                }
                if let Some(l) = longest_edge {
                    if !dim_ok(l) {
                        bail!("size.longest_edge must be between 1 and {MAX_CONFIG_DIM}, got {l}");
                    }
                }
            }
            ResizeSize::Exact { height, width } => {
                if !dim_ok(height) || !dim_ok(width) {
                    bail!("size height/width must be between 1 and {MAX_CONFIG_DIM}, got {height}x{width}");
                }
            }
        }
        let CropSize { height, width } = self.crop_size;
        if !dim_ok(height) || !dim_ok(width) {
            bail!("crop_size height/width must be between 1 and {MAX_CONFIG_DIM}, got {height}x{width}");
        }
        if !self.rescale_factor.is_finite() {
            bail!("rescale_factor must be finite, got {}", self.rescale_factor);
        }
        if self.image_mean.iter().any(|m| !m.is_finite()) {
            bail!("image_mean must be finite, got {:?}", self.image_mean);
        }
        // Checked on the float32 values actually used: a tiny f64 could round to 0 in f32.
        if self
            .image_std
            .iter()
            .any(|&s| !s.is_finite() || s as f32 == 0.0)
        {
            bail!(
                "image_std must be finite and non-zero, got {:?}",
                self.image_std
            );
        }
        Ok(())
    }

    /// `(width, height)` of the pixels [`preprocess`] returns, or `None` when it depends on the
    /// input image (no center crop and a shortest-edge resize, or no resize at all).
    pub fn output_size(&self) -> Option<(u32, u32)> {
        if self.do_center_crop {
            Some((self.crop_size.width, self.crop_size.height))
        } else {
            match (self.do_resize, self.size) {
                (true, ResizeSize::Exact { height, width }) => Some((width, height)),
                _ => None,
            }
        }
    }

    /// `(width, height)` after the resize step for a `width`×`height` input, as
    /// `PilBackend.resize` computes it.
    pub fn resized_size(&self, width: u32, height: u32) -> anyhow::Result<(u32, u32)> {
        if width == 0 || height == 0 {
            bail!("cannot resize an empty {width}x{height} image");
        }
        let (w, h) = match self.size {
            ResizeSize::ShortestEdge {
                shortest_edge,
                longest_edge: None,
            } => shortest_edge_output_size(width, height, shortest_edge),
            ResizeSize::ShortestEdge {
                shortest_edge,
                longest_edge: Some(longest_edge),
            } => size_with_aspect_ratio(width, height, shortest_edge, longest_edge),
            ResizeSize::Exact { height, width } => (u64::from(width), u64::from(height)),
        };
        // Pillow sizes are C ints.
        let max = i32::MAX as u64;
        if w == 0 || h == 0 || w > max || h > max {
            bail!(
                "resizing {width}x{height} with {:?} gives an unusable size {w}x{h}",
                self.size
            );
        }
        Ok((w as u32, h as u32))
    }

    /// Per channel, the float32 output for each uint8 input value: transformers' `rescale`
    /// (`image.astype(float64) * scale`, then cast to float32) followed by `normalize`
    /// (`(image - mean) / std` with `image`, `mean` and `std` all float32).
    fn value_lut(&self) -> [[f32; 256]; 3] {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            let mean = self.image_mean[c] as f32;
            let std = self.image_std[c] as f32;
            for (v, out) in table.iter_mut().enumerate() {
                let mut x = if self.do_rescale {
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

/// `transformers.image_transforms.get_resize_output_image_size(image, size,
/// default_to_square=False)`: the short side becomes `size` and the long side is
/// `int(size * long / short)` (truncation, not rounding). Returns `(width, height)`.
///
/// `size * long` is computed exactly (both < 2^32, product < 2^53) and the f64 division is
/// correctly rounded, exactly like Python's `int / int`.
pub fn shortest_edge_output_size(width: u32, height: u32, size: u32) -> (u64, u64) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_short = u64::from(size);
    let new_long = ((u64::from(size) * u64::from(long)) as f64 / f64::from(short.max(1))) as u64;
    if width <= height {
        (new_short, new_long)
    } else {
        (new_long, new_short)
    }
}

/// `transformers.image_transforms.get_size_with_aspect_ratio((height, width), size,
/// max_size)`, transcribed with Python's float semantics (`round` is round-half-even).
/// Returns `(width, height)`.
fn size_with_aspect_ratio(width: u32, height: u32, size: u32, max_size: u32) -> (u64, u64) {
    let (h, w) = (u64::from(height), u64::from(width));
    let mut size = u64::from(size);
    let mut raw_size: Option<f64> = None;
    let min_original = h.min(w) as f64;
    let max_original = h.max(w) as f64;
    if max_original / min_original * size as f64 > f64::from(max_size) {
        let raw = f64::from(max_size) * min_original / max_original;
        raw_size = Some(raw);
        size = raw.round_ties_even() as u64;
    }
    let (oh, ow) = if (h <= w && h == size) || (w <= h && w == size) {
        (h, w)
    } else if w < h {
        let oh = match raw_size {
            Some(raw) => (raw * h as f64 / w as f64) as u64,
            None => ((size * h) as f64 / w as f64) as u64,
        };
        (oh, size)
    } else {
        let ow = match raw_size {
            Some(raw) => (raw * w as f64 / h as f64) as u64,
            None => ((size * w) as f64 / h as f64) as u64,
        };
        (size, ow)
    };
    (ow, oh)
}

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

// ---------------------------------------------------------------------------------------------
// Image loading
// ---------------------------------------------------------------------------------------------

/// Limits applied before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Images with more pixels than this are refused after reading the header, before any
    /// pixel buffer is allocated. Default [`DEFAULT_MAX_PIXELS`] (Pillow's bomb threshold).
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

impl DecodeLimits {
    /// The `image` crate's allocation budget: enough for 8 bytes/pixel (RGBA16) at the pixel
    /// limit, and never below the crate's own 512 MiB default.
    fn image_limits(&self) -> Limits {
        let mut limits = Limits::default();
        let ours = self.max_pixels.saturating_mul(8);
        limits.max_alloc = Some(ours.max(limits.max_alloc.unwrap_or(0)));
        limits
    }
}

/// Why an image could not be loaded. Each message is one line naming the source.
#[derive(Debug, thiserror::Error)]
pub enum ImageLoadError {
    #[error("{}: cannot read file: {cause}", .path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: empty file (0 bytes), not an image", .path.display())]
    Empty { path: PathBuf },
    #[error("{}: not an image in a supported format ({detail})", .path.display())]
    Unsupported { path: PathBuf, detail: String },
    #[error(
        "{}: image is {width}x{height} = {pixels} pixels, over the limit of {limit} pixels",
        .path.display()
    )]
    TooManyPixels {
        path: PathBuf,
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("{}: cannot decode image: {detail}", .path.display())]
    Decode { path: PathBuf, detail: String },
    /// The image decoded but the resize/crop step refused it (e.g. an output over
    /// [`MAX_OUTPUT_PIXELS`] without a center crop).
    #[error("{}: {detail}", .path.display())]
    Preprocess { path: PathBuf, detail: String },
}

impl ImageLoadError {
    /// The file (or `<memory>`) the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. }
            | Self::Empty { path }
            | Self::Unsupported { path, .. }
            | Self::TooManyPixels { path, .. }
            | Self::Decode { path, .. }
            | Self::Preprocess { path, .. } => path,
        }
    }
}

/// Decodes an image file (format from its content, not its extension), applies its EXIF
/// orientation and converts it to RGB8 like transformers' `convert_to_rgb`.
pub fn load_image(path: &Path, limits: &DecodeLimits) -> Result<RgbImage, ImageLoadError> {
    let io_err = |cause| ImageLoadError::Io {
        path: path.to_path_buf(),
        cause,
    };
    let file = File::open(path).map_err(io_err)?;
    // Opening a directory succeeds on Unix and only the first read fails ("Is a directory");
    // say so plainly instead.
    if file.metadata().map_err(io_err)?.is_dir() {
        return Err(io_err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "is a directory, not an image file",
        )));
    }
    decode(BufReader::new(file), path, limits, None)
}

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

/// How every JPEG file starts: the start-of-image marker and the 0xFF of the next marker.
const JPEG_SIGNATURE: [u8; 3] = [0xFF, 0xD8, 0xFF];

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
    let mut file = File::open(path).map_err(io_err)?;
    let mut magic = [0u8; 3];
    let is_jpeg = cfg.do_resize
        && file.metadata().map_err(io_err)?.is_file()
        && file.read_exact(&mut magic).is_ok()
        && magic == JPEG_SIGNATURE;
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

/// [`load_image`] for an in-memory encoded image; errors name the source `<memory>`.
pub fn load_image_from_memory(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<RgbImage, ImageLoadError> {
    decode(Cursor::new(bytes), Path::new("<memory>"), limits, None)
}

/// `reduce`: a JPEG's bytes and the short side to keep, for a DCT-reduced decode once the header
/// checks (pixel limit, orientation) have passed; the full decode runs when it does not apply.
fn decode<R: BufRead + Seek>(
    mut reader: R,
    path: &Path,
    limits: &DecodeLimits,
    reduce: Option<(&[u8], u32)>,
) -> Result<RgbImage, ImageLoadError> {
    let io_err = |cause| ImageLoadError::Io {
        path: path.to_path_buf(),
        cause,
    };
    // An empty file is common (an interrupted download or copy) and deserves a plainer message
    // than "unrecognised file signature".
    let head = reader.fill_buf().map_err(io_err)?;
    if head.is_empty() {
        return Err(ImageLoadError::Empty {
            path: path.to_path_buf(),
        });
    }
    let structure_err = |e| match e {
        StructureError::Io(cause) => io_err(cause),
        StructureError::Corrupt(detail) => ImageLoadError::Decode {
            path: path.to_path_buf(),
            detail,
        },
    };
    if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        check_riff_chunks(&mut reader).map_err(structure_err)?;
    } else if head.starts_with(&JPEG_SIGNATURE) {
        check_jpeg_complete(&mut reader).map_err(structure_err)?;
    }
    let image_err = |e: image::ImageError| match e {
        // The file was opened and read; running out of data means it is cut short, which is a
        // problem with the image, not with reading the file.
        image::ImageError::IoError(cause) if cause.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageLoadError::Decode {
                path: path.to_path_buf(),
                detail: "the file ends too early (truncated?)".into(),
            }
        }
        image::ImageError::IoError(cause) => io_err(cause),
        image::ImageError::Unsupported(u) => ImageLoadError::Unsupported {
            path: path.to_path_buf(),
            // Decoder messages may carry line breaks (zune-jpeg ends some with `\n`).
            detail: single_line(&u.to_string()),
        },
        other => ImageLoadError::Decode {
            path: path.to_path_buf(),
            detail: single_line(&other.to_string()),
        },
    };

    let mut reader = ImageReader::new(reader)
        .with_guessed_format()
        .map_err(io_err)?;
    // TGA has no signature, so content sniffing never finds it; Pillow accepts it from its
    // header fields. Trust a `.tga` extension only when the content says nothing else.
    if reader.format().is_none() && ImageFormat::from_path(path).ok() == Some(ImageFormat::Tga) {
        reader.set_format(ImageFormat::Tga);
    }
    if reader.format().is_none() {
        return Err(ImageLoadError::Unsupported {
            path: path.to_path_buf(),
            detail: "unrecognised file signature".into(),
        });
    }
    let image_limits = limits.image_limits();
    reader.limits(image_limits.clone());
    // Constructing the decoder reads only the header.
    let mut decoder = reader.into_decoder().map_err(image_err)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(ImageLoadError::TooManyPixels {
            path: path.to_path_buf(),
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(ImageLoadError::Decode {
            path: path.to_path_buf(),
            detail: format!("image has no pixels ({width}x{height})"),
        });
    }
    // `ImageReader::decode` does this check too; `into_decoder` does not.
    if let Some(max_alloc) = image_limits.max_alloc {
        if decoder.total_bytes() > max_alloc {
            return Err(ImageLoadError::Decode {
                path: path.to_path_buf(),
                detail: format!(
                    "decoded image would need {} bytes, over the {max_alloc} byte limit",
                    decoder.total_bytes()
                ),
            });
        }
    }
    // A corrupt EXIF block should not make an otherwise fine image unusable, so an unreadable
    // orientation counts as "no transform".
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    if let Some(reduced) = reduce.and_then(|(bytes, min)| crate::jpeg::decode_reduced(bytes, min)) {
        let mut img = DynamicImage::ImageRgb8(reduced);
        img.apply_orientation(orientation);
        return Ok(convert_to_rgb(img));
    }
    // `from_decoder` allocates the pixel buffer with `vec!`, which aborts the whole process when
    // the allocator says no (possible once `--max-pixels` is raised and a header lies about
    // the size). Asking for the same amount fallibly first turns that into this file's error.
    let total = usize::try_from(decoder.total_bytes()).unwrap_or(usize::MAX);
    if Vec::<u8>::new().try_reserve_exact(total).is_err() {
        return Err(ImageLoadError::Decode {
            path: path.to_path_buf(),
            detail: format!("cannot allocate {total} bytes for the decoded image"),
        });
    }
    let mut img = DynamicImage::from_decoder(decoder).map_err(image_err)?;
    // `PIL.ImageOps.exif_transpose`, as in `transformers.image_utils.load_image`.
    img.apply_orientation(orientation);
    Ok(convert_to_rgb(img))
}

/// Why a container's structure was refused before decoding.
enum StructureError {
    Io(std::io::Error),
    Corrupt(String),
}

/// Checks that a JPEG reaches its end-of-image marker, and leaves the reader where it was.
/// zune-jpeg decodes a file cut short in its entropy-coded data "as far as it goes" and fills
/// the rest, so a half-downloaded photo would be classified as half a photo; Pillow (and so
/// transformers) refuses it ("image file is truncated"), even when only the final marker is
/// missing. Walking the marker segments finds that without decoding anything.
fn check_jpeg_complete<R: BufRead + Seek>(reader: &mut R) -> Result<(), StructureError> {
    check_in_place(reader, |r, _, end| walk_jpeg_segments(r, end))
}

/// Runs `check` with the stream's current and end offsets, and puts the reader back where it
/// was, whatever the outcome: the decoder reads the stream next.
fn check_in_place<R: Seek>(
    reader: &mut R,
    check: impl FnOnce(&mut R, u64, u64) -> Result<(), StructureError>,
) -> Result<(), StructureError> {
    let start = reader.stream_position().map_err(StructureError::Io)?;
    let end = reader.seek(SeekFrom::End(0)).map_err(StructureError::Io)?;
    reader
        .seek(SeekFrom::Start(start))
        .map_err(StructureError::Io)?;
    let result = check(reader, start, end);
    reader
        .seek(SeekFrom::Start(start))
        .map_err(StructureError::Io)?;
    result
}

fn walk_jpeg_segments<R: BufRead + Seek>(r: &mut R, end: u64) -> Result<(), StructureError> {
    let truncated = || {
        StructureError::Corrupt(
            "the JPEG data ends before its end-of-image marker (truncated file?)".into(),
        )
    };
    let byte = |r: &mut R| -> Result<Option<u8>, StructureError> {
        let mut b = [0u8; 1];
        match r.read(&mut b).map_err(StructureError::Io)? {
            0 => Ok(None),
            _ => Ok(Some(b[0])),
        }
    };
    // The marker found at the end of entropy-coded data, still to be handled.
    let mut pending: Option<u8> = None;
    loop {
        let marker = match pending.take() {
            Some(m) => m,
            None => {
                // Bytes other than 0xFF between segments are skipped, as libjpeg does (with a
                // warning); any number of 0xFF fill bytes may precede a marker code.
                let mut b = byte(r)?.ok_or_else(truncated)?;
                while b != 0xFF {
                    b = byte(r)?.ok_or_else(truncated)?;
                }
                while b == 0xFF {
                    b = byte(r)?.ok_or_else(truncated)?;
                }
                b
            }
        };
        match marker {
            0xD9 => return Ok(()),
            // Markers without a length: SOI, TEM, RSTn (and a stray stuffed zero).
            0xD8 | 0x01 | 0xD0..=0xD7 | 0x00 => continue,
            _ => {}
        }
        let (Some(hi), Some(lo)) = (byte(r)?, byte(r)?) else {
            return Err(truncated());
        };
        let len = u64::from(u16::from_be_bytes([hi, lo]));
        if len < 2 {
            return Err(StructureError::Corrupt(format!(
                "JPEG segment 0xFF{marker:02X} has an impossible length {len}"
            )));
        }
        let pos = r.stream_position().map_err(StructureError::Io)?;
        if pos + (len - 2) > end {
            return Err(truncated());
        }
        r.seek(SeekFrom::Current((len - 2) as i64))
            .map_err(StructureError::Io)?;
        if marker == 0xDA {
            // Start of scan: entropy-coded data up to the next real marker.
            pending = Some(scan_entropy_coded_data(r)?.ok_or_else(truncated)?);
        }
    }
}

/// Skips entropy-coded data: 0xFF is followed there by a stuffed 0x00 or a restart marker;
/// anything else is the next marker, whose code is returned (None at the end of the data).
fn scan_entropy_coded_data<R: BufRead>(r: &mut R) -> Result<Option<u8>, StructureError> {
    let mut after_ff = false;
    loop {
        let buf = r.fill_buf().map_err(StructureError::Io)?;
        if buf.is_empty() {
            return Ok(None);
        }
        let mut found = None;
        let mut i = 0;
        while i < buf.len() {
            if after_ff {
                match buf[i] {
                    0x00 | 0xD0..=0xD7 => after_ff = false,
                    0xFF => {}
                    code => {
                        found = Some((i + 1, code));
                        break;
                    }
                }
                i += 1;
            } else {
                match buf[i..].iter().position(|&b| b == 0xFF) {
                    Some(p) => {
                        i += p + 1;
                        after_ff = true;
                    }
                    None => i = buf.len(),
                }
            }
        }
        let consumed = found.map_or(buf.len(), |(n, _)| n);
        r.consume(consumed);
        if let Some((_, code)) = found {
            return Ok(Some(code));
        }
    }
}

/// Checks that every top-level chunk of a RIFF (WebP) file fits in the file, and leaves the
/// reader where it was. `image-webp` trusts the declared sizes of metadata chunks and
/// allocates them in one piece before reading (found by fuzzing: a 268-byte file whose EXIF
/// chunk claims 2 GiB, allocated when we ask for the orientation), so a lying size is refused
/// here, before any decoder sees it.
fn check_riff_chunks<R: Read + Seek>(reader: &mut R) -> Result<(), StructureError> {
    check_in_place(reader, |reader, start, end| {
        let mut pos = start + 12;
        let mut header = [0u8; 8];
        loop {
            // Fewer than 8 bytes left: no further chunk header (trailing bytes are the decoder's
            // business, as in libwebp).
            if end.saturating_sub(pos) < 8 {
                return Ok(());
            }
            reader
                .seek(SeekFrom::Start(pos))
                .map_err(StructureError::Io)?;
            reader.read_exact(&mut header).map_err(StructureError::Io)?;
            let [a, b, c, d, s0, s1, s2, s3] = header;
            let size = u64::from(u32::from_le_bytes([s0, s1, s2, s3]));
            let left = end - pos - 8;
            if size > left {
                return Err(StructureError::Corrupt(format!(
                    "WebP chunk {:?} claims {size} bytes but only {left} follow (corrupt or truncated file)",
                    String::from_utf8_lossy(&[a, b, c, d])
                )));
            }
            // Chunks are padded to an even size.
            pos += 8 + size + (size & 1);
        }
    })
}

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

// ---------------------------------------------------------------------------------------------
// Resize (port of Pillow's Resample.c, 8 bits per channel)
// ---------------------------------------------------------------------------------------------

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
fn resize_window(
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

// ---------------------------------------------------------------------------------------------
// Preprocess
// ---------------------------------------------------------------------------------------------

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
            center_crop_axis(rw, cfg.crop_size.width),
            center_crop_axis(rh, cfg.crop_size.height),
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
    for (c, chan) in data.chunks_exact_mut(plane).enumerate() {
        // Zero padding is applied to the uint8 image, before rescale/normalise.
        chan.fill(lut[c][0]);
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

/// Stacks preprocessed images into an `[N, 3, H, W]` float32 tensor. Every image must have
/// the config's fixed output size ([`PreprocessConfig::output_size`]).
pub fn to_tensor(
    batch: &[Vec<f32>],
    cfg: &PreprocessConfig,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let (w, h) = cfg.output_size().ok_or_else(|| {
        candle_core::Error::Msg(
            "the preprocessor config has no fixed output size (no center crop and no exact resize), so images cannot be batched".into(),
        )
    })?;
    let (w, h) = (w as usize, h as usize);
    let per_image = 3 * h * w;
    let mut data = Vec::with_capacity(per_image * batch.len());
    for (i, px) in batch.iter().enumerate() {
        if px.len() != per_image {
            return Err(candle_core::Error::Msg(format!(
                "image {i} in the batch has {} values, expected 3x{h}x{w} = {per_image}",
                px.len()
            )));
        }
        data.extend_from_slice(px);
    }
    Tensor::from_vec(data, (batch.len(), 3, h, w), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Rgb, Rgba};
    use std::collections::HashMap;

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

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(rel)
    }

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, format).unwrap();
        buf.into_inner()
    }

    // ---- config ------------------------------------------------------------------------------

    #[test]
    fn parses_legacy_openai_config() {
        let cfg =
            PreprocessConfig::from_file(&fixture("configs/openai-legacy-preprocessor_config.json"))
                .unwrap();
        // `"size": 224` is a shortest edge for CLIP (default_to_square=False), `"crop_size": 224`
        // a square; everything else equals the class defaults.
        assert_eq!(cfg, PreprocessConfig::default());
    }

    #[test]
    fn parses_reserialized_config() {
        let cfg =
            PreprocessConfig::from_file(&fixture("configs/reserialized-preprocessor_config.json"))
                .unwrap();
        assert_eq!(cfg, PreprocessConfig::default());
        // The printed float must parse to exactly Python's 1/255.
        assert_eq!(cfg.rescale_factor.to_bits(), (1.0f64 / 255.0).to_bits());
    }

    #[test]
    fn empty_config_gets_clip_defaults_and_unknown_fields_are_ignored() {
        let cfg = PreprocessConfig::from_json_str(
            r#"{"image_processor_type": "CLIPImageProcessor", "foo": [1, 2], "crop_size": null}"#,
        )
        .unwrap();
        assert_eq!(cfg, PreprocessConfig::default());
        assert_eq!(cfg.output_size(), Some((224, 224)));
    }

    #[test]
    fn siglip_processors_resize_exactly_without_a_crop() {
        // The published google/siglip-base-patch16-224 and google/siglip2-base-patch16-224
        // files: no do_center_crop key, which for CLIP would mean a 224 crop; SigLIP 2 says
        // "do_convert_rgb": null (the class default, true, stays).
        for (name, resample) in [
            ("siglip-base-patch16-224", Resample::Bicubic),
            ("siglip2-base-patch16-224", Resample::Bilinear),
        ] {
            let cfg = PreprocessConfig::from_file(&fixture(&format!(
                "configs/siglip/{name}/preprocessor_config.json"
            )))
            .unwrap();
            assert_eq!(
                cfg,
                PreprocessConfig {
                    resample,
                    ..PreprocessConfig::siglip()
                },
                "{name}"
            );
            assert_eq!(cfg.output_size(), Some((224, 224)));
            assert_eq!(cfg.resized_size(640, 480).unwrap(), (224, 224));
        }
        let cfg = PreprocessConfig::from_json_str(
            r#"{"image_processor_type": "SiglipImageProcessorFast", "do_center_crop": true,
                "size": {"height": 384, "width": 384}}"#,
        )
        .unwrap();
        assert!(!cfg.do_center_crop);
        assert_eq!(cfg.output_size(), Some((384, 384)));
        assert_eq!(cfg.image_mean, [0.5; 3]);
    }

    #[test]
    fn parses_other_size_forms() {
        let cfg = PreprocessConfig::from_json_str(
            r#"{"size": {"height": 336, "width": 300}, "crop_size": {"height": 320, "width": 288},
                "resample": 2, "image_mean": 0.5, "image_std": [0.5, 0.5, 0.5], "do_center_crop": false}"#,
        )
        .unwrap();
        assert_eq!(
            cfg.size,
            ResizeSize::Exact {
                height: 336,
                width: 300
            }
        );
        assert_eq!(
            cfg.crop_size,
            CropSize {
                height: 320,
                width: 288
            }
        );
        assert_eq!(cfg.resample, Resample::Bilinear);
        assert_eq!(cfg.image_mean, [0.5; 3]);
        assert_eq!(cfg.output_size(), Some((300, 336)));
        assert_eq!(cfg.resized_size(10, 1000).unwrap(), (300, 336));

        let cfg = PreprocessConfig::from_json_str(r#"{"size": [100, 50]}"#).unwrap();
        assert_eq!(
            cfg.size,
            ResizeSize::Exact {
                height: 100,
                width: 50
            }
        );
        let cfg = PreprocessConfig::from_json_str(
            r#"{"size": {"shortest_edge": 800, "longest_edge": 1333}}"#,
        )
        .unwrap();
        // get_size_with_aspect_ratio((h=500, w=2000), 800, 1333): 2000/500*800 > 1333 so
        // raw = 1333*500/2000 = 333.25, size = 333, ow = int(333.25*2000/500) = 1333.
        assert_eq!(cfg.resized_size(2000, 500).unwrap(), (1333, 333));
        assert_eq!(cfg.resized_size(600, 800).unwrap(), (800, 1066));
    }

    #[test]
    fn rejects_bad_configs_with_clear_errors() {
        let cases = [
            (r#"{"image_std": [0.2, 0.0, 0.3]}"#, "image_std"),
            (r#"{"image_mean": [0.5, 0.5]}"#, "3 values"),
            (r#"{"crop_size": 0}"#, "crop_size"),
            (r#"{"crop_size": {"height": 224}}"#, "crop_size"),
            (
                r#"{"size": {"max_height": 10, "max_width": 10}}"#,
                "shortest_edge",
            ),
            (r#"{"size": -3}"#, "size"),
            (r#"{"resample": 0}"#, "nearest"),
            (r#"{"resample": 9}"#, "resample=9"),
            (r#"{"do_resize": "yes"}"#, "invalid type"),
            ("not json", "expected"),
        ];
        for (json, needle) in cases {
            let err = PreprocessConfig::from_json_str(json).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(needle), "{json}: {msg}");
        }
        let cfg = PreprocessConfig {
            image_std: [1.0, 1e-300, 1.0],
            ..Default::default()
        };
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn config_file_errors_name_the_file() {
        let missing = fixture("configs/does-not-exist.json");
        let msg = format!("{:#}", PreprocessConfig::from_file(&missing).unwrap_err());
        assert!(msg.contains("does-not-exist.json"), "{msg}");

        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("preprocessor_config.json");
        std::fs::write(&bad, r#"{"image_std": [1, 0, 1]}"#).unwrap();
        let msg = format!("{:#}", PreprocessConfig::from_file(&bad).unwrap_err());
        assert!(
            msg.contains("preprocessor_config.json") && msg.contains("image_std"),
            "{msg}"
        );
    }

    // ---- geometry ----------------------------------------------------------------------------

    #[test]
    fn long_side_is_truncated_like_transformers() {
        // (width, height) in, (width, height) out; expectations from Python's
        // int(224 * long / short).
        let cases = [
            ((512, 512), (224, 224)),
            ((384, 303), (283, 224)), // 283.88 -> 283 (rounding would give 284)
            ((400, 328), (273, 224)), // 273.17
            ((1000, 872), (256, 224)), // 256.88
            ((303, 384), (224, 283)),
            ((371, 370), (224, 224)), // 224.6 -> 224
            ((370, 371), (224, 224)),
            ((300, 200), (336, 224)), // exactly 336
            ((1, 1), (224, 224)),
            ((20000, 1), (4_480_000, 224)),
            ((3, 7), (224, 522)), // 522.67
        ];
        for ((w, h), want) in cases {
            assert_eq!(shortest_edge_output_size(w, h, 224), want, "{w}x{h}");
        }
        // The reference geometry of the fixture images agrees (pixels.json).
        assert_eq!(
            PreprocessConfig::default().resized_size(384, 303).unwrap(),
            (283, 224)
        );
    }

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

    // ---- colour conversion -------------------------------------------------------------------

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

    // ---- loading -----------------------------------------------------------------------------

    /// A JPEG whose APP1 segment carries only an EXIF orientation tag.
    fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
        let jpeg = encode(&DynamicImage::ImageRgb8(img.clone()), ImageFormat::Jpeg);
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"II\x2A\x00");
        tiff.extend_from_slice(&8u32.to_le_bytes()); // IFD0 offset
        tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_le_bytes()); // count
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
        let mut app1 = vec![0xFF, 0xE1];
        app1.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
        app1.extend_from_slice(b"Exif\0\0");
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied() {
        // 16x8: left half red, right half blue. Orientation 6 = rotate 90° clockwise
        // (PIL exif_transpose uses ROTATE_270), giving 8x16 with red on top.
        let img = RgbImage::from_fn(16, 8, |x, _| {
            if x < 8 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        let rotated =
            load_image_from_memory(&jpeg_with_orientation(&img, 6), &DecodeLimits::default())
                .unwrap();
        assert_eq!(rotated.dimensions(), (8, 16));
        let top = rotated.get_pixel(4, 3).0;
        let bottom = rotated.get_pixel(4, 12).0;
        assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");

        let plain =
            load_image_from_memory(&jpeg_with_orientation(&img, 1), &DecodeLimits::default())
                .unwrap();
        assert_eq!(plain.dimensions(), (16, 8));
    }

    #[test]
    fn load_errors_are_one_line_and_name_the_source() {
        let limits = DecodeLimits::default();
        let missing = fixture("images/no-such-image.png");
        let err = load_image(&missing, &limits).unwrap_err();
        assert!(matches!(err, ImageLoadError::Io { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("no-such-image.png") && !msg.contains('\n'),
            "{msg}"
        );

        let err = load_image_from_memory(b"definitely not an image", &limits).unwrap_err();
        assert!(matches!(err, ImageLoadError::Unsupported { .. }), "{err}");
        assert!(err.to_string().starts_with("<memory>: "), "{err}");

        // A PNG with its pixel data cut off.
        let png = encode(
            &DynamicImage::ImageRgb8(RgbImage::new(64, 64)),
            ImageFormat::Png,
        );
        let err = load_image_from_memory(&png[..png.len() / 2], &limits).unwrap_err();
        assert!(
            matches!(
                err,
                ImageLoadError::Decode { .. } | ImageLoadError::Io { .. }
            ),
            "{err}"
        );
        assert!(!err.to_string().contains('\n'));

        // The extension is irrelevant: a PNG named .jpg loads.
        let dir = tempfile::tempdir().unwrap();
        let liar = dir.path().join("actually-a-png.jpg");
        std::fs::write(&liar, &png).unwrap();
        assert_eq!(load_image(&liar, &limits).unwrap().dimensions(), (64, 64));
    }

    #[test]
    fn pixel_limit_is_checked_before_decoding() {
        let png = encode(
            &DynamicImage::ImageRgb8(RgbImage::new(100, 50)),
            ImageFormat::Png,
        );
        let err = load_image_from_memory(&png, &DecodeLimits { max_pixels: 4999 }).unwrap_err();
        match &err {
            ImageLoadError::TooManyPixels {
                width: 100,
                height: 50,
                pixels: 5000,
                limit: 4999,
                ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(load_image_from_memory(&png, &DecodeLimits { max_pixels: 5000 }).is_ok());

        // A forged header claiming 100000x100000 is refused without allocating 30 GB: patch
        // the IHDR width/height (CRC is then wrong, but the size check comes first or the
        // decoder rejects the header — either way no panic and no huge allocation).
        let mut forged = png.clone();
        forged[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        forged[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(load_image_from_memory(&forged, &DecodeLimits::default()).is_err());
    }

    // ---- resize ------------------------------------------------------------------------------

    fn load_u8_tensors(path: &Path) -> HashMap<String, Tensor> {
        candle_core::safetensors::load(path, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

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

    // ---- preprocess --------------------------------------------------------------------------

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

    #[test]
    fn to_tensor_stacks_batches() {
        let cfg = PreprocessConfig::default();
        let a = preprocess(&RgbImage::from_pixel(5, 9, Rgb([1, 2, 3])), &cfg).unwrap();
        let b = preprocess(&RgbImage::from_pixel(9, 5, Rgb([4, 5, 6])), &cfg).unwrap();
        let t = to_tensor(&[a.clone(), b], &cfg, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 3, 224, 224]);
        assert_eq!(t.dtype(), candle_core::DType::F32);
        assert_eq!(
            t.get(0)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            a
        );
        assert!(to_tensor(&[vec![0.0; 10]], &cfg, &Device::Cpu).is_err());
        let t = to_tensor(&[], &cfg, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[0, 3, 224, 224]);
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
