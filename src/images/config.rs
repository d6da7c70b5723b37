//! `preprocessor_config.json`: [`PreprocessConfig`] (transformers' `CLIPImageProcessor`
//! settings, with its class defaults, or those of another [`ProcessorClass`] a model family
//! supplies), its parsing and validation, and the sizes it gives an image
//! (`get_resize_output_image_size`, `get_size_with_aspect_ratio`).

use std::path::Path;

use anyhow::{bail, Context};
use serde::de::DeserializeSeed;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// `transformers.image_utils.OPENAI_CLIP_MEAN`.
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// `transformers.image_utils.OPENAI_CLIP_STD`.
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Largest `size`/`crop_size` value we accept in a config; keeps all size arithmetic exact.
const MAX_CONFIG_DIM: u64 = 1 << 16;
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
    /// open_clip's `resize_mode: "longest"` (`transform.ResizeKeepRatio(size, longest=1)`): scale
    /// so the long side is `longest_edge`, keeping the aspect ratio, each side
    /// `round(side / ratio)` with Python's round-half-to-even. Never read from
    /// `preprocessor_config.json`; an OpenCLIP family config builds it.
    LongestEdge { longest_edge: u32 },
}

/// Whose conventions the steps follow where transformers' image processor and torchvision's
/// transforms (what open_clip's `image_transform` runs) differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Convention {
    /// transformers' `image_transforms`: center crop from `(size - crop) // 2`, an image smaller
    /// than the crop zero-padded at `ceil((crop - size) / 2)`; rescale `x * (1/255)` in float64,
    /// then cast to float32.
    #[default]
    Transformers,
    /// torchvision's `F.center_crop` / open_clip's `center_crop_or_pad`: crop from
    /// `int(round((size - crop) / 2.0))` (round half to even), an image smaller than the crop
    /// padded at `(crop - size) // 2` with the value `fill` (uint8, every channel); `ToTensor`
    /// rescales as `x / 255` in float32.
    Torchvision { fill: u8 },
}

/// `crop_size` in `preprocessor_config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropSize {
    pub height: u32,
    pub width: u32,
}

/// Preprocessing settings from a checkpoint's `preprocessor_config.json`, with transformers'
/// `CLIPImageProcessor` class defaults (or its [`ProcessorClass`]'s) for anything missing (or
/// `null`). Unknown fields are ignored. Both the legacy (`"size": 224`, `"crop_size": 224`) and
/// the current (`{"shortest_edge": 224}`, `{"height": 224, "width": 224}`) forms are accepted.
#[derive(Debug, Clone, PartialEq)]
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
    /// transformers' (every `preprocessor_config.json`) or torchvision's (OpenCLIP).
    pub convention: Convention,
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
            convention: Convention::Transformers,
        }
    }
}

/// A transformers image processor class whose defaults differ from `CLIPImageProcessor`'s (the
/// base ones, [`PreprocessConfig::default`]), known by the `image_processor_type` a
/// `preprocessor_config.json` names. Model families supply these (`model::processor_classes`).
#[derive(Debug, Clone, Copy)]
pub struct ProcessorClass {
    /// The class name; its variants (`...Fast`, `...Pil`) start with it.
    pub name_prefix: &'static str,
    /// The class attributes: what a missing (or `null`) key means.
    pub defaults: fn() -> PreprocessConfig,
    /// `false`: the class has no center crop step, whatever a `do_center_crop` key says
    /// (transformers ignores the key there).
    pub crops: bool,
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

/// Deserialises a [`RawConfig`] and turns it into a [`PreprocessConfig`] with the classes given.
struct WithClasses<'a>(&'a [ProcessorClass]);

impl<'de> DeserializeSeed<'de> for WithClasses<'_> {
    type Value = PreprocessConfig;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<PreprocessConfig, D::Error> {
        let raw = RawConfig::deserialize(d)?;
        // serde keeps only the top-level `Display` of this error, so flatten the context chain
        // into one message ("invalid `image_mean`: expected 3 values ...").
        PreprocessConfig::from_raw(raw, self.0)
            .map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}

impl PreprocessConfig {
    fn from_raw(raw: RawConfig, classes: &[ProcessorClass]) -> anyhow::Result<Self> {
        let class = raw
            .image_processor_type
            .as_deref()
            .and_then(|t| classes.iter().find(|c| t.starts_with(c.name_prefix)));
        let d = class.map_or_else(Self::default, |c| (c.defaults)());
        let crops = class.is_none_or(|c| c.crops);
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
            do_center_crop: crops && raw.do_center_crop.unwrap_or(d.do_center_crop),
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
            convention: Convention::Transformers,
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
    /// Reads and validates a `preprocessor_config.json`, its missing keys meaning what they
    /// mean for the class it names among `classes` (else for `CLIPImageProcessor`).
    pub fn from_file_with(path: &Path, classes: &[ProcessorClass]) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read preprocessor config {}", path.display()))?;
        Self::from_json_with(&text, classes)
            .with_context(|| format!("invalid preprocessor config {}", path.display()))
    }

    /// [`Self::from_file_with`] on the JSON text.
    pub fn from_json_with(text: &str, classes: &[ProcessorClass]) -> anyhow::Result<Self> {
        // As `serde_json::from_str` does: the value, then nothing but whitespace. `from_raw`
        // runs `validate`.
        let mut de = serde_json::Deserializer::from_str(text);
        let cfg = WithClasses(classes).deserialize(&mut de)?;
        de.end()?;
        Ok(cfg)
    }

    /// [`Self::from_file_with`] knowing no class but `CLIPImageProcessor`: the base defaults
    /// whatever class the file names. A checkpoint's is read with `model::processor_classes()`.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        Self::from_file_with(path, &[])
    }

    /// [`Self::from_json_with`] knowing no class but `CLIPImageProcessor`.
    pub fn from_json_str(text: &str) -> anyhow::Result<Self> {
        Self::from_json_with(text, &[])
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
            ResizeSize::LongestEdge { longest_edge } => {
                if !dim_ok(longest_edge) {
                    bail!(
                        "longest edge must be between 1 and {MAX_CONFIG_DIM}, got {longest_edge}"
                    );
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
            ResizeSize::LongestEdge { longest_edge } => {
                longest_edge_output_size(width, height, longest_edge)
            }
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
}

/// open_clip's `ResizeKeepRatio.get_params(img, (size, size), longest=1)`: `ratio = max(h / size,
/// w / size)` (plus `min(...) * 0.0`, which changes nothing for finite ratios), then each side
/// `round(side / ratio)`, Python's `round` (half to even) on the float64 quotient. Returns
/// `(width, height)`.
pub fn longest_edge_output_size(width: u32, height: u32, size: u32) -> (u64, u64) {
    let target = f64::from(size);
    let ratio = (f64::from(height) / target).max(f64::from(width) / target);
    let side = |x: u32| (f64::from(x) / ratio).round_ties_even() as u64;
    (side(width), side(height))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::test_util::fixture;

    /// A class a family supplies: its defaults fill what the file leaves out, and a class
    /// without a crop step ignores `do_center_crop`; another class name gets the base defaults.
    #[test]
    fn a_named_class_brings_its_defaults() {
        let exact = || PreprocessConfig {
            size: ResizeSize::Exact {
                height: 64,
                width: 64,
            },
            do_center_crop: false,
            image_mean: [0.5; 3],
            ..PreprocessConfig::default()
        };
        let classes = [ProcessorClass {
            name_prefix: "ExactImageProcessor",
            defaults: exact,
            crops: false,
        }];
        let cfg = PreprocessConfig::from_json_with(
            r#"{"image_processor_type": "ExactImageProcessorFast", "do_center_crop": true,
                "resample": 2}"#,
            &classes,
        )
        .unwrap();
        assert_eq!(
            cfg,
            PreprocessConfig {
                resample: Resample::Bilinear,
                ..exact()
            }
        );
        assert_eq!(cfg.output_size(), Some((64, 64)));
        // Not among the classes given: the base class.
        let text = r#"{"image_processor_type": "ExactImageProcessor"}"#;
        assert_eq!(
            PreprocessConfig::from_json_str(text).unwrap(),
            PreprocessConfig::default()
        );
        let text = r#"{"image_processor_type": "CLIPImageProcessor", "size": 64}"#;
        assert!(
            PreprocessConfig::from_json_with(text, &classes)
                .unwrap()
                .do_center_crop
        );
        // Trailing text is refused as serde_json::from_str refuses it.
        assert!(PreprocessConfig::from_json_with("{} x", &classes).is_err());
    }

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
}
