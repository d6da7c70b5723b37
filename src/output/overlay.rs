//! `vlm explain`'s pictures: a patch map drawn over the photo it came from.
//!
//! The model saw a square crop of a resized copy of the photo ([`model_view`] finds that square
//! in the original's pixels from the preprocessor config). A map of `rows × cols` cosines is
//! upsampled over that square with bilinear interpolation (the `align_corners=False` convention
//! of `torch.nn.functional.interpolate`: cell centres at `(i + 0.5) / cols`, edges clamped), put
//! through a colour map ([`viridis`]) after normalising to `0..=1` ([`MapRange`]), and blended
//! over the photo at [`OPACITY`]; the part of the photo the model did not see is dimmed to
//! [`DIM`]. Files are PNGs of the original's size, written atomically and never over an existing
//! file unless asked ([`OverlayFiles`]); [`Montage`] puts many on one contact sheet. Both carry
//! captions and a colour scale ([`super::draw`]).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::{ImageEncoder, RgbImage};

use super::draw::{self, Sheet, SheetCell};
use crate::engine::patches::PatchMaps;
use crate::images::PreprocessConfig;
use crate::Error;

/// How much of the colour map covers the photo where the model looked.
pub(crate) const OPACITY: f32 = 0.6;
/// What is left of the photo's brightness outside the region the model saw.
pub(crate) const DIM: f32 = 0.3;

/// The square the model saw, in the original photo's pixel coordinates (continuous: pixel `x`
/// spans `x..x + 1`). It may reach past the photo's edges when the preprocessor pads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct View {
    pub x0: f64,
    pub y0: f64,
    pub x1: f64,
    pub y1: f64,
}

impl View {
    /// The same region in a copy of the photo scaled by `sx`, `sy`.
    pub(crate) fn scaled(&self, sx: f64, sy: f64) -> View {
        View {
            x0: self.x0 * sx,
            y0: self.y0 * sy,
            x1: self.x1 * sx,
            y1: self.y1 * sy,
        }
    }
}

/// Where the model's input lies in a `width`×`height` photo, from the preprocessor's own
/// geometry: the resize (`PreprocessConfig::resized_size`; Pillow maps pixel edges onto pixel
/// edges, so the resized image spans the original exactly) and the center crop
/// (`PreprocessConfig::crop_axis`, with the padding when the image is smaller than the crop).
pub(crate) fn model_view(cfg: &PreprocessConfig, width: u32, height: u32) -> Result<View> {
    let (rw, rh) = if cfg.do_resize {
        cfg.resized_size(width, height)?
    } else {
        (width, height)
    };
    let axis = |size: u32, resized: u32, crop: Option<u32>| {
        let scale = f64::from(size) / f64::from(resized);
        match crop {
            Some(crop) => {
                let c = cfg.crop_axis(resized, crop);
                let start = f64::from(c.src_start) - f64::from(c.dst_offset);
                (start * scale, (start + f64::from(c.out_len)) * scale)
            }
            None => (0.0, f64::from(size)),
        }
    };
    let crop = cfg.do_center_crop.then_some(cfg.crop_size);
    let (x0, x1) = axis(width, rw, crop.map(|c| c.width));
    let (y0, y1) = axis(height, rh, crop.map(|c| c.height));
    Ok(View { x0, y0, x1, y1 })
}

/// How cosines become colours: which cosine is the bottom of the colour map and which the top.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum MapRange {
    /// Each map from its own minimum to its own maximum: where this label is seen most and least
    /// in this image. Always uses the whole colour map, even for a label that is nowhere.
    Map,
    /// All labels of one image share its minimum and maximum: labels can be compared, and a
    /// label that matches less everywhere stays darker.
    Image,
    /// A fixed cosine range for every map: comparable across images and runs.
    Fixed { low: f32, high: f32 },
}

impl std::str::FromStr for MapRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "map" => Ok(MapRange::Map),
            "image" => Ok(MapRange::Image),
            _ => {
                let parsed = s.split_once(':').and_then(|(a, b)| {
                    Some((a.trim().parse::<f32>().ok()?, b.trim().parse::<f32>().ok()?))
                });
                match parsed {
                    Some((low, high)) if low.is_finite() && high.is_finite() && low < high => {
                        Ok(MapRange::Fixed { low, high })
                    }
                    _ => Err(format!(
                        "{s:?}: expected map, image, or a cosine range LOW:HIGH with LOW < HIGH (e.g. 0.1:0.3)"
                    )),
                }
            }
        }
    }
}

impl std::fmt::Display for MapRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapRange::Map => f.write_str("map"),
            MapRange::Image => f.write_str("image"),
            MapRange::Fixed { low, high } => write!(f, "{low}:{high}"),
        }
    }
}

impl MapRange {
    /// `(low, high)` for each of one image's maps.
    pub(crate) fn bounds(&self, maps: &[Vec<f32>]) -> Vec<(f32, f32)> {
        let min_max = |v: &[f32]| {
            v.iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
                    (lo.min(x), hi.max(x))
                })
        };
        match *self {
            MapRange::Map => maps.iter().map(|m| min_max(m)).collect(),
            MapRange::Image => {
                let all = maps
                    .iter()
                    .map(|m| min_max(m))
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), (a, b)| {
                        (lo.min(a), hi.max(b))
                    });
                vec![all; maps.len()]
            }
            MapRange::Fixed { low, high } => vec![(low, high); maps.len()],
        }
    }
}

/// Matplotlib's viridis (perceptually uniform, readable in grey and by colour-blind readers) at
/// `t` in `0..=1`, as a degree-6 polynomial fit (Matt Zucker's, public domain; within 0.01 of
/// the published table).
pub(crate) fn viridis(t: f32) -> [u8; 3] {
    const C: [[f64; 3]; 7] = [
        [
            0.277_727_327_223_417_7,
            0.005_407_344_544_966_578,
            0.334_099_805_335_306_1,
        ],
        [
            0.105_093_043_108_577_4,
            1.404_613_529_898_575,
            1.384_590_162_594_685,
        ],
        [
            -0.330_861_828_725_556_3,
            0.214_847_559_468_213,
            0.095_095_163_028_236_59,
        ],
        [
            -4.634_230_498_983_486,
            -5.799_100_973_351_585,
            -19.332_440_956_279_87,
        ],
        [
            6.228_269_936_347_081,
            14.179_933_366_805_09,
            56.690_552_600_681_05,
        ],
        [
            4.776_384_997_670_288,
            -13.745_145_377_746_01,
            -65.353_032_633_372_34,
        ],
        [
            -5.435_455_855_934_631,
            4.645_852_612_178_535,
            26.312_435_249_583_2,
        ],
    ];
    let t = if t.is_finite() {
        f64::from(t.clamp(0.0, 1.0))
    } else {
        0.0
    };
    let mut rgb = [0u8; 3];
    for (c, out) in rgb.iter_mut().enumerate() {
        let v = C.iter().rev().fold(0.0, |acc, k| acc * t + k[c]);
        *out = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    }
    rgb
}

/// One axis of a bilinear upsampling: for each output pixel, the two cells it falls between and
/// the weight of the second; `None` outside the view.
fn axis_samples(len: u32, start: f64, end: f64, cells: usize) -> Vec<Option<(usize, usize, f32)>> {
    let span = end - start;
    (0..len)
        .map(|i| {
            let centre = f64::from(i) + 0.5;
            if span <= 0.0 || centre < start || centre >= end || cells == 0 {
                return None;
            }
            // Cell coordinate of this pixel's centre; cell centres sit at k + 0.5.
            let g = ((centre - start) / span * cells as f64 - 0.5).clamp(0.0, (cells - 1) as f64);
            let a = (g.floor() as usize).min(cells - 1);
            let b = (a + 1).min(cells - 1);
            Some((a, b, (g - a as f64) as f32))
        })
        .collect()
}

/// The map (`rows * cols` values, row-major) upsampled over `view` of `photo`, coloured between
/// `low` and `high` and blended over the photo; the rest of the photo dimmed.
pub(crate) fn render(
    photo: &RgbImage,
    view: &View,
    map: &[f32],
    rows: usize,
    cols: usize,
    (low, high): (f32, f32),
) -> RgbImage {
    let (w, h) = photo.dimensions();
    let xs = axis_samples(w, view.x0, view.x1, cols);
    let ys = axis_samples(h, view.y0, view.y1, rows);
    let lut: Vec<[u8; 3]> = (0..256).map(|i| viridis(i as f32 / 255.0)).collect();
    let span = high - low;
    let cell = |r: usize, c: usize| map.get(r * cols + c).copied().unwrap_or(0.0);
    let mut out = RgbImage::new(w, h);
    for (y, row_sample) in ys.iter().enumerate() {
        for (x, col_sample) in xs.iter().enumerate() {
            let (x, y) = (x as u32, y as u32);
            let src = photo.get_pixel(x, y).0;
            let px = match (row_sample, col_sample) {
                (Some((r0, r1, fy)), Some((c0, c1, fx))) => {
                    let top = cell(*r0, *c0) * (1.0 - fx) + cell(*r0, *c1) * fx;
                    let bottom = cell(*r1, *c0) * (1.0 - fx) + cell(*r1, *c1) * fx;
                    let v = top * (1.0 - fy) + bottom * fy;
                    let t = if span > 0.0 { (v - low) / span } else { 0.5 };
                    let t = if t.is_finite() {
                        t.clamp(0.0, 1.0)
                    } else {
                        0.0
                    };
                    let colour = lut[(t * 255.0).round() as usize];
                    let mut px = [0u8; 3];
                    for c in 0..3 {
                        let blended =
                            f32::from(src[c]) * (1.0 - OPACITY) + f32::from(colour[c]) * OPACITY;
                        px[c] = blended.round().clamp(0.0, 255.0) as u8;
                    }
                    px
                }
                _ => src.map(|v| (f32::from(v) * DIM).round() as u8),
            };
            out.put_pixel(x, y, image::Rgb(px));
        }
    }
    out
}

/// A label as it appears in a file name: letters, digits, `-`, `_` and `+` kept, any other run
/// of characters (spaces, dots, slashes, quotes, control characters) one `_`, at most 80
/// characters; `label` when nothing is left.
pub(crate) fn file_label(label: &str) -> String {
    let mut out = String::new();
    for c in label.chars() {
        if c.is_alphanumeric() || matches!(c, '-' | '_' | '+') {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let out: String = out.trim_matches('_').chars().take(80).collect();
    if out.is_empty() {
        "label".into()
    } else {
        out
    }
}

/// Where `-o DIR` puts each image's overlays: `DIR/<stem>.<label>.png`.
#[derive(Debug, Clone)]
pub(crate) struct OverlayFiles {
    dir: PathBuf,
    names: Vec<String>,
    force: bool,
}

impl OverlayFiles {
    /// Checks that the labels give distinct file names and that `dir` is a folder or can be
    /// made one (it is created).
    pub(crate) fn new(dir: &Path, labels: &[String], force: bool) -> Result<Self> {
        let names: Vec<String> = labels.iter().map(|l| file_label(l)).collect();
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for (name, label) in names.iter().zip(labels) {
            if let Some(first) = seen.insert(name, label) {
                bail!(
                    "labels {first:?} and {label:?} would both be written as <image>.{name}.png; rename one of them"
                );
            }
        }
        if dir.exists() && !dir.is_dir() {
            bail!("-o {}: not a folder", dir.display());
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("-o {}: cannot create the folder", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            names,
            force,
        })
    }

    /// The overlay of `input`'s `label`-th label.
    pub(crate) fn target(&self, input: &Path, label: usize) -> PathBuf {
        let mut name: OsString = input
            .file_stem()
            .map_or_else(|| OsString::from("image"), |s| s.to_os_string());
        name.push(".");
        name.push(self.names.get(label).map_or("label", String::as_str));
        name.push(".png");
        self.dir.join(name)
    }

    /// Before the run: no two inputs may write the same file, and no file may exist yet unless
    /// `--force`. The error names the file.
    pub(crate) fn check(&self, inputs: &[&Path]) -> Result<()> {
        let mut seen: HashMap<PathBuf, &Path> = HashMap::new();
        for input in inputs {
            for label in 0..self.names.len() {
                let target = self.target(input, label);
                if let Some(first) = seen.insert(target.clone(), input) {
                    bail!(
                        "{} and {} would both write {}; explain them in separate runs (or with separate -o folders)",
                        first.display(),
                        input.display(),
                        target.display()
                    );
                }
                if !self.force && target.symlink_metadata().is_ok() {
                    bail!(
                        "{}: already exists; use --force to overwrite it, or another -o folder",
                        target.display()
                    );
                }
            }
        }
        Ok(())
    }

    /// Writes one overlay, atomically, never over an existing file unless `--force`.
    pub(crate) fn write(&self, target: &Path, image: &RgbImage) -> Result<()> {
        write_png("-o", target, image, self.force)
    }
}

/// A PNG put in place when it is whole (see [`super::target`]): a reader never sees half a picture,
/// Ctrl-C leaves no temporary file, a symbolic link is followed and a FIFO or device written to.
/// Without `overwrite`, an existing `target` is an error and stays as it was. `flag` names the
/// output in errors (`--montage`, `-o`).
pub(crate) fn write_png(
    flag: &str,
    target: &Path,
    image: &RgbImage,
    overwrite: bool,
) -> Result<()> {
    let checked = super::target::Target::check(
        flag,
        target,
        super::target::Existing::of(overwrite, false, false),
    )?;
    let mut file = super::target::WholeFile::create(&checked, false)?;
    {
        let mut out = BufWriter::new(&mut file);
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(
                image.as_raw(),
                image.width(),
                image.height(),
                image::ExtendedColorType::Rgb8,
            )
            .with_context(|| checked.name().to_string())?;
        out.flush()?;
    }
    file.commit()
}

/// Many images' overlays on one contact sheet ([`super::draw::Sheet`]): a row per image (input
/// order), its photo in the first column and one overlay per label (label order) in the next,
/// each scaled to fit a `tile`-pixel square. Under the photo its file name and size; under each
/// overlay its label, its peak cosine and the colour scale of its range (issue 23).
#[derive(Debug)]
pub(crate) struct Montage {
    tile: u32,
    labels: Vec<String>,
    cells: Vec<SheetCell>,
}

impl Montage {
    pub(crate) fn new(tile: u32, labels: &[String]) -> Self {
        Self {
            tile: tile.max(16),
            labels: labels.to_vec(),
            cells: Vec::new(),
        }
    }

    /// Adds one image's row: its overlays rendered on a thumbnail (cheaper than scaling each
    /// full-size overlay). `name` is the image's file name.
    pub(crate) fn add(
        &mut self,
        name: &str,
        photo: &RgbImage,
        view: &View,
        maps: &PatchMaps,
        bounds: &[(f32, f32)],
    ) {
        let (w, h) = photo.dimensions();
        let thumb = draw::thumbnail(photo, self.tile);
        let (tw, th) = thumb.dimensions();
        let view = view.scaled(f64::from(tw) / f64::from(w), f64::from(th) / f64::from(h));
        let tiles: Vec<SheetCell> = maps
            .maps
            .iter()
            .zip(bounds)
            .zip(&self.labels)
            .map(|((m, &b), label)| SheetCell {
                picture: Some(render(&thumb, &view, m, maps.rows, maps.cols, b)),
                caption: vec![label.clone(), format!("max {}", draw::number(peak(m)))],
                range: Some(b),
            })
            .collect();
        self.cells.push(SheetCell {
            picture: Some(thumb),
            caption: vec![name.to_string(), format!("{w}x{h}")],
            range: None,
        });
        self.cells.extend(tiles);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    fn sheet(&self) -> Sheet {
        Sheet {
            tile: self.tile,
            columns: self.labels.len() as u32 + 1,
            lines: 2,
            cells: self.cells.clone(),
        }
    }

    /// The sheet.
    pub(crate) fn render(&self) -> RgbImage {
        self.sheet().render()
    }
}

/// A map's highest cosine (0 for an empty map).
pub(crate) fn peak(map: &[f32]) -> f32 {
    let max = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max.is_finite() {
        max
    } else {
        0.0
    }
}

/// The caption of one `-o` overlay: the image's file name, the label, the map's peak cosine.
pub(crate) fn overlay_caption(input: &Path, label: &str, map: &[f32]) -> String {
    let name = input.file_name().map_or_else(
        || input.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    format!("{name}  {label}  max {}", draw::number(peak(map)))
}

/// The most images one `--montage` sheet takes (one row each).
pub(crate) const MONTAGE_MAX_IMAGES: usize = 200;
/// The side of a montage tile, in pixels.
pub(crate) const MONTAGE_TILE: u32 = 256;

/// `--montage`: a `.png` name, not over an existing file unless `--force`, at most
/// [`MONTAGE_MAX_IMAGES`] images.
pub(crate) fn check_montage(path: &Path, images: usize, force: bool) -> Result<()> {
    let is_png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return Err(Error::Usage(format!(
            "--montage {}: the contact sheet is a PNG; give a file name ending in .png",
            path.display()
        ))
        .into());
    }
    if path.is_dir() {
        return Err(Error::Usage(format!("--montage {}: is a folder", path.display())).into());
    }
    super::Target::check("--montage", path, super::Existing::of(force, false, false))?;
    if images > MONTAGE_MAX_IMAGES {
        return Err(Error::Usage(format!(
            "--montage: {images} images, but one sheet takes at most {MONTAGE_MAX_IMAGES} (a row each); use -o DIR for one picture per image, or --shard"
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viridis_is_close_to_the_published_table() {
        // matplotlib's _viridis_data[0], [128], [255].
        let table = [
            (0.0, [0.267_004, 0.004_874, 0.329_415]),
            (128.0 / 255.0, [0.127_568, 0.566_949, 0.550_556]),
            (1.0, [0.993_248, 0.906_157, 0.143_936]),
        ];
        for (t, want) in table {
            let got = viridis(t);
            for c in 0..3 {
                let diff = (f32::from(got[c]) / 255.0 - want[c]).abs();
                assert!(
                    diff < 0.015,
                    "viridis({t})[{c}] = {}, want {}",
                    got[c],
                    want[c]
                );
            }
        }
        assert_eq!(viridis(f32::NAN), viridis(0.0));
        assert_eq!(viridis(7.0), viridis(1.0));
    }

    #[test]
    fn the_view_is_the_center_crop_in_original_pixels() {
        let cfg = PreprocessConfig::default(); // shortest edge 224, crop 224
                                               // Landscape 448x300: resized to 334x224 (int(224*448/300) = 334), crop from x = 55.
        let v = model_view(&cfg, 448, 300).unwrap();
        let s = 448.0 / 334.0;
        assert!((v.x0 - 55.0 * s).abs() < 1e-9 && (v.x1 - 279.0 * s).abs() < 1e-9);
        assert!((v.y0 - 0.0).abs() < 1e-9 && (v.y1 - 300.0).abs() < 1e-9);
        // Square: everything.
        let v = model_view(&cfg, 512, 512).unwrap();
        assert_eq!(
            v,
            View {
                x0: 0.0,
                y0: 0.0,
                x1: 512.0,
                y1: 512.0
            }
        );
        // No resize, crop larger than the image: padded, the view reaches past the edges.
        let cfg = PreprocessConfig {
            do_resize: false,
            ..PreprocessConfig::default()
        };
        let v = model_view(&cfg, 100, 300).unwrap();
        // x: padded by ceil(124 / 2) = 62 on the left; y: crop from (300 - 224) / 2 = 38.
        assert_eq!(
            v,
            View {
                x0: -62.0,
                y0: 38.0,
                x1: 162.0,
                y1: 262.0
            }
        );
    }

    #[test]
    fn bilinear_upsampling_hits_cell_centres_and_clamps_edges() {
        // A 1x2 map over a 4-pixel-wide view: pixel centres 0.5, 1.5, 2.5, 3.5 -> cell coords
        // -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
        let s = axis_samples(4, 0.0, 4.0, 2);
        assert_eq!(s[0], Some((0, 1, 0.0)));
        assert_eq!(s[1], Some((0, 1, 0.25)));
        assert_eq!(s[2], Some((0, 1, 0.75)));
        assert_eq!(s[3], Some((1, 1, 0.0)));
        // Outside the view: none.
        let s = axis_samples(6, 1.0, 5.0, 2);
        assert_eq!((s[0], s[5]), (None, None));
        assert!(s[1..5].iter().all(Option::is_some));
    }

    #[test]
    fn render_colours_inside_and_dims_outside() {
        let photo = RgbImage::from_pixel(8, 4, image::Rgb([200, 200, 200]));
        // The model saw the middle 4x4 square.
        let view = View {
            x0: 2.0,
            y0: 0.0,
            x1: 6.0,
            y1: 4.0,
        };
        let map = [0.0, 1.0, 0.0, 1.0]; // 2x2: left column low, right column high
        let out = render(&photo, &view, &map, 2, 2, (0.0, 1.0));
        assert_eq!(out.dimensions(), (8, 4));
        assert_eq!(out.get_pixel(0, 0).0, [60, 60, 60]);
        let blend = |c: [u8; 3]| {
            c.map(|v| (200.0 * (1.0 - OPACITY) + f32::from(v) * OPACITY).round() as u8)
        };
        assert_eq!(out.get_pixel(2, 1).0, blend(viridis(0.0)));
        assert_eq!(out.get_pixel(5, 1).0, blend(viridis(1.0)));
    }

    #[test]
    fn ranges() {
        let maps = vec![vec![0.1, 0.3], vec![0.2, 0.5]];
        assert_eq!(MapRange::Map.bounds(&maps), vec![(0.1, 0.3), (0.2, 0.5)]);
        assert_eq!(MapRange::Image.bounds(&maps), vec![(0.1, 0.5); 2]);
        let fixed: MapRange = "0.1:0.3".parse().unwrap();
        assert_eq!(
            fixed,
            MapRange::Fixed {
                low: 0.1,
                high: 0.3
            }
        );
        assert!("0.3:0.1".parse::<MapRange>().is_err());
        assert!("max".parse::<MapRange>().is_err());
    }

    #[test]
    fn labels_become_safe_file_names() {
        assert_eq!(file_label("dog"), "dog");
        assert_eq!(file_label("hot dog"), "hot_dog");
        assert_eq!(file_label("../etc/passwd"), "etc_passwd");
        assert_eq!(file_label("a.b, c\nd"), "a_b_c_d");
        assert_eq!(file_label("café"), "café");
        assert_eq!(file_label("..."), "label");
        assert_eq!(file_label(&"x".repeat(200)).len(), 80);
    }

    #[test]
    fn overlay_files_refuse_collisions_and_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let labels = vec!["hot dog".to_string(), "hot_dog".to_string()];
        let err = OverlayFiles::new(dir.path(), &labels, false).unwrap_err();
        assert!(err.to_string().contains("would both be written"), "{err}");
        let files = OverlayFiles::new(dir.path(), &["dog".to_string()], false).unwrap();
        let target = files.target(Path::new("photos/a.jpg"), 0);
        assert_eq!(target, dir.path().join("a.dog.png"));
        let err = files
            .check(&[Path::new("x/a.jpg"), Path::new("y/a.png")])
            .unwrap_err();
        assert!(err.to_string().contains("would both write"), "{err}");
        std::fs::write(&target, b"keep").unwrap();
        let err = files.check(&[Path::new("a.jpg")]).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        let img = RgbImage::new(2, 2);
        let err = files.write(&target, &img).unwrap_err();
        assert!(format!("{err:#}").contains("already exists"), "{err:#}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        write_png("-o", &target, &img, true).unwrap();
        assert_eq!(image::open(&target).unwrap().width(), 2);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
