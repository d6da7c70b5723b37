//! `vlm explain`: patch maps against transformers (`tests/fixtures/make_explain_fixtures.py`
//! computed them with `CLIPModel`'s own modules on the fixture models and reference pixels), and
//! the command's output: JSON records, overlay pictures, files never overwritten, per-image errors.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::{fixtures, image, model, stderr_of, stdout_of, success, vlm, vlm_cache, Head};
use serde::Deserialize;
use vlm::engine::{Engine, ModelOptions, Precision};
use vlm::model::Towers;
use vlm::text::Template;

/// f32 on identical pixels: transformers' eager attention and ours sum in different orders
/// (as for the image embeddings in tests/it/parity.rs).
const MAP_TOL: f32 = 1e-4;

#[derive(Deserialize)]
struct Reference {
    labels: Vec<String>,
    templates: Vec<String>,
    label_embeds: Vec<Vec<f32>>,
    grid: Grid,
    images: Vec<String>,
    /// [image][label][cell]
    maps: Vec<Vec<Vec<f32>>>,
    raw_images: Vec<String>,
    /// [image][cell][dim]
    patch_embeds: Vec<Vec<Vec<f32>>>,
}

fn reference(model: &str) -> Reference {
    let path = fixtures().join(format!("reference/explain-{model}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

// The strict shapes of `vlm explain -f json`.
#[derive(Debug, Deserialize, PartialEq, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct Grid {
    rows: usize,
    cols: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelMap {
    label: String,
    scores: Vec<f32>,
    overlay: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainResult {
    path: String,
    grid: Option<Grid>,
    maps: Vec<LabelMap>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    model: common::ModelInfo,
    labels: Vec<String>,
    templates: Vec<String>,
    results: Vec<ExplainResult>,
}

fn max_abs_diff<'a>(
    a: impl IntoIterator<Item = &'a f32>,
    b: impl IntoIterator<Item = &'a f32>,
) -> f32 {
    let (a, b): (Vec<f32>, Vec<f32>) = (
        a.into_iter().copied().collect(),
        b.into_iter().copied().collect(),
    );
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn load(name: &str) -> Engine {
    let opts = ModelOptions {
        model: model(name),
        revision: None,
        device: "cpu".into(),
        precision: Precision::F32,
    };
    Engine::load(&opts, Towers::BOTH, true).unwrap()
}

/// The library on transformers' own pixel tensors: the patch embeddings and the maps.
fn check_maps(name: &str) {
    let r = reference(name);
    let m = load(name);
    assert_eq!(m.spec.patch_grid(), Some((r.grid.rows, r.grid.cols)));
    let pixels: HashMap<String, Tensor> = candle_core::safetensors::load(
        fixtures().join("reference/pixels.safetensors"),
        &Device::Cpu,
    )
    .unwrap();

    // Raw patch embeddings (projected, not normalised).
    let batch: Vec<Tensor> = r.raw_images.iter().map(|n| pixels[n].clone()).collect();
    let batch = Tensor::stack(&batch, 0).unwrap();
    let patches = m.model.patch_embeddings(&batch).unwrap().unwrap();
    assert_eq!((patches.rows, patches.cols), (r.grid.rows, r.grid.cols));
    let got: Vec<Vec<Vec<f32>>> = patches.embeddings.to_vec3().unwrap();
    let diff = max_abs_diff(
        got.iter().flatten().flatten(),
        r.patch_embeds.iter().flatten().flatten(),
    );
    println!("{name}: patch embeddings differ by at most {diff:e}");
    assert!(diff <= MAP_TOL, "{name}: patch embeddings differ by {diff}");

    // The ensembled labels, then the cosine maps of every image.
    let templates: Vec<Template> = r
        .templates
        .iter()
        .map(|t| Template::new(t).unwrap())
        .collect();
    let labels = m.label_embeddings(&r.labels, &templates, true).unwrap();
    let diff = max_abs_diff(
        labels.embeddings.iter().flatten(),
        r.label_embeds.iter().flatten(),
    );
    assert!(diff <= MAP_TOL, "{name}: label embeddings differ by {diff}");
    let flat: Vec<Vec<f32>> = r
        .images
        .iter()
        .map(|n| pixels[n].flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let maps = m.patch_maps(&flat, &labels.embeddings).unwrap();
    let mut worst = 0f32;
    for (i, (got, want)) in maps.iter().zip(&r.maps).enumerate() {
        assert_eq!((got.rows, got.cols), (r.grid.rows, r.grid.cols));
        let diff = max_abs_diff(got.maps.iter().flatten(), want.iter().flatten());
        assert!(
            diff <= MAP_TOL,
            "{name}: {}: maps differ by {diff}",
            r.images[i]
        );
        worst = worst.max(diff);
    }
    println!("{name}: maps differ by at most {worst:e}");
    // The normal path is untouched: the pooled embedding still is the class token's.
    let pooled = m.model.encode_images(&batch).unwrap();
    assert_eq!(
        pooled.dims(),
        &[r.raw_images.len(), r.label_embeds[0].len()]
    );
}

#[test]
fn tiny_openai_maps_match_transformers() {
    check_maps("tiny-openai");
}

#[test]
fn tiny_laion_maps_match_transformers() {
    check_maps("tiny-laion");
}

/// `vlm explain ... -f json` with the reference's labels and templates, parsed strictly.
fn explain_json(name: &str, images: &[String], extra: &[&str]) -> (Document, std::process::Output) {
    let r = reference(name);
    let mut cmd = vlm();
    cmd.arg("explain")
        .args(images)
        .args(["-m", &model(name), "-f", "json", "-q"]);
    cmd.args(["--labels", &r.labels.join(",")]);
    for t in &r.templates {
        cmd.args(["-t", t]);
    }
    cmd.args(extra);
    let out = cmd.output().unwrap();
    let doc: Document = serde_json::from_str(&stdout_of(&out))
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout_of(&out), stderr_of(&out)));
    (doc, out)
}

/// From image files through the command: PNGs decode to transformers' exact pixels, so their
/// maps match as tightly as on the reference tensors; JPEG decoders differ by a grey level or
/// two, which moves the cosines a little.
#[test]
fn the_command_gives_transformers_maps() {
    for name in ["tiny-openai", "tiny-laion"] {
        let r = reference(name);
        let images: Vec<String> = r.images.iter().map(|n| image(n)).collect();
        let (doc, out) = explain_json(name, &images, &[]);
        success(&out);
        assert_eq!(doc.model.id, model(name));
        assert_eq!(doc.model.revision, None);
        assert_eq!(doc.model.family, "clip");
        assert_eq!(doc.model.head, Head::Softmax);
        assert_eq!(doc.labels, r.labels);
        assert_eq!(doc.templates, r.templates);
        assert_eq!(doc.results.len(), r.images.len());
        for (i, res) in doc.results.iter().enumerate() {
            assert_eq!(res.path, images[i]);
            assert_eq!(res.error, None);
            assert_eq!(res.grid, Some(r.grid));
            let labels: Vec<&str> = res.maps.iter().map(|m| m.label.as_str()).collect();
            assert_eq!(labels, r.labels);
            assert!(res.maps.iter().all(|m| m.overlay.is_none()));
            let diff = max_abs_diff(
                res.maps.iter().flat_map(|m| &m.scores),
                r.maps[i].iter().flatten(),
            );
            let tol = if r.images[i].ends_with(".png") {
                MAP_TOL
            } else {
                5e-3
            };
            println!("{name}: {}: {diff:e}", r.images[i]);
            assert!(
                diff <= tol,
                "{name}: {}: maps differ by {diff}",
                r.images[i]
            );
        }
    }
}

fn png_size(path: &Path) -> (u32, u32) {
    let img = ::image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (img.width(), img.height())
}

fn image_size(name: &str) -> (u32, u32) {
    png_size(&fixtures().join("images").join(name))
}

#[test]
fn overlays_have_the_originals_size_and_are_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("maps");
    let names = ["coins.png", "horse.png", "retina.jpg"];
    let images: Vec<String> = names.iter().map(|n| image(n)).collect();
    // A private text cache: the shared one may be filled meanwhile by another test that encoded
    // "coin" in a different batch, whose embedding differs in the last bits (a different GEMM
    // shape), enough to move an overlay pixel by one and break the byte equality below.
    let cache = dir.path().join("cache");
    let run = |extra: &[&str]| {
        vlm_cache(&cache)
            .arg("explain")
            .args(&images)
            .args([
                "-m",
                &model("tiny-openai"),
                "-l",
                "coin,hot dog",
                "-q",
                "-f",
                "json",
            ])
            .arg("-o")
            .arg(&out_dir)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    success(&out);
    let doc: Document = serde_json::from_str(&stdout_of(&out)).unwrap();
    let mut written: Vec<PathBuf> = Vec::new();
    for (res, name) in doc.results.iter().zip(names) {
        let stem = name.split('.').next().unwrap();
        for (m, file_label) in res.maps.iter().zip(["coin", "hot_dog"]) {
            let want = out_dir.join(format!("{stem}.{file_label}.png"));
            assert_eq!(m.overlay.as_deref(), Some(want.to_str().unwrap()));
            assert_eq!(png_size(&want), image_size(name), "{}", want.display());
            written.push(want);
        }
    }
    let mut listed: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    listed.sort();
    written.sort();
    assert_eq!(
        listed, written,
        "exactly one picture per image and label, nothing else"
    );

    // The region the model did not see is the photo dimmed: coins.png is 384x303, resized to
    // 283x224 and cropped from x = 29, so its leftmost column lies outside.
    let photo = ::image::open(fixtures().join("images/coins.png"))
        .unwrap()
        .to_rgb8();
    let overlay = ::image::open(out_dir.join("coins.coin.png"))
        .unwrap()
        .to_rgb8();
    // (Above the caption band: its last 11 rows.)
    for y in [0, 150, 290] {
        let p = photo.get_pixel(0, y).0;
        let dimmed = p.map(|v| (f32::from(v) * 0.3).round() as u8);
        assert_eq!(overlay.get_pixel(0, y).0, dimmed);
    }
    // The caption (issue 23): white text in the band at the bottom, which neither the photo
    // dimmed nor the colour map (viridis tops out at [253, 231, 37]) would give.
    let ink = (292..303)
        .flat_map(|y| (0..384).map(move |x| (x, y)))
        .filter(|&(x, y)| overlay.get_pixel(x, y).0 == [255, 255, 255])
        .count();
    assert!(ink > 100, "{ink} caption pixels");
    // Inside it is coloured: not the photo, not grey.
    let inside = overlay.get_pixel(192, 150).0;
    assert!(
        inside[0] != inside[1] || inside[1] != inside[2],
        "{inside:?}"
    );

    // Again: nothing is overwritten, one line names the file, exit 2, before any image.
    let before = std::fs::read(out_dir.join("coins.coin.png")).unwrap();
    let again = run(&[]);
    assert_eq!(again.status.code(), Some(2));
    let err = stderr_of(&again);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("coins.coin.png: already exists; use --force"),
        "{err}"
    );
    assert!(stdout_of(&again).is_empty());
    assert_eq!(
        std::fs::read(out_dir.join("coins.coin.png")).unwrap(),
        before
    );

    // --force writes over them, the same pictures again.
    let forced = run(&["--force"]);
    success(&forced);
    assert_eq!(
        std::fs::read(out_dir.join("coins.coin.png")).unwrap(),
        before
    );
    // No temporary files left.
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), written.len());
}

#[test]
fn a_bad_image_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let out_dir = dir.path().join("maps");
    let out = vlm()
        .arg("explain")
        .arg(image("horse.png"))
        .arg(&broken)
        .arg(image("coins.png"))
        .args(["-m", &model("tiny-laion"), "-l", "horse", "-f", "json"])
        .arg("-o")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("broken.png")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with(&format!("vlm: {}: ", broken.display())),
        "{err}"
    );
    let doc: Document = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert_eq!(doc.results.len(), 3);
    let bad = &doc.results[1];
    assert!(bad
        .error
        .as_deref()
        .unwrap()
        .starts_with(broken.to_str().unwrap()));
    assert!(bad.maps.is_empty() && bad.grid.is_none());
    for good in [&doc.results[0], &doc.results[2]] {
        assert_eq!(good.error, None);
        assert_eq!(good.maps[0].scores.len(), 49);
    }
    assert!(out_dir.join("horse.horse.png").is_file());
    assert!(out_dir.join("coins.horse.png").is_file());
    assert!(!out_dir.join("broken.horse.png").exists());
}

#[test]
fn montage_has_a_row_per_image_and_a_column_per_label() {
    let dir = tempfile::tempdir().unwrap();
    let sheet = dir.path().join("sheet.png");
    let out = vlm()
        .arg("explain")
        .args([image("horse.png"), image("camera.png")])
        .args([
            "-m",
            &model("tiny-openai"),
            "-l",
            "horse,camera,sky",
            "-q",
            "-f",
            "json",
        ])
        .arg("--montage")
        .arg(&sheet)
        .output()
        .unwrap();
    success(&out);
    // Tiles of 256 px with 4 px gaps: the photo and three labels across, two images down; under
    // each tile a caption of two lines and a colour scale, 10 px each after a 2 px gap.
    assert_eq!(png_size(&sheet), (4 + 4 * 260, 4 + 2 * (256 + 32 + 4)));
    // Without -o no overlay files.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let again = vlm()
        .arg("explain")
        .arg(image("horse.png"))
        .args(["-m", &model("tiny-openai"), "-l", "horse", "-q"])
        .arg("--montage")
        .arg(&sheet)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr_of(&again).contains("already exists; use --force"));
}

#[test]
fn usage_errors_come_before_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let fails = |args: &[&str], want: &str| {
        let out = vlm().arg("explain").args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr_of(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    };
    let horse = image("horse.png");
    let tiny = model("tiny-openai");
    let o = dir.path().join("o");
    let o = o.to_str().unwrap();
    // Two labels that would share a file name.
    fails(
        &[&horse, "-m", &tiny, "-l", "hot dog,hot_dog", "-o", o],
        "would both be written",
    );
    // Two images that would share file names.
    fails(
        &[
            &horse,
            &image("../hostile/orient-1.png"),
            &image("../hostile/orient-1.jpg"),
            "-m",
            &tiny,
            "-l",
            "x",
            "-o",
            o,
        ],
        "would both write",
    );
    fails(
        &[&horse, "-m", &tiny, "-l", "x", "--montage", "sheet.jpg"],
        "ending in .png",
    );
    fails(
        &[&horse, "-m", &tiny, "-l", "x", "--range", "0.3:0.1"],
        "LOW < HIGH",
    );
    // A model family without a patch-level method (SigLIP, until it has one) is refused on
    // one line naming the model, before any image.
    let out = vlm()
        .arg("explain")
        .arg(&horse)
        .args(["-m", &model("tiny-siglip"), "-l", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("vlm: model {}: ", model("tiny-siglip"))),
        "{err}"
    );
    assert!(
        err.contains("vlm explain has no patch-level method for siglip models yet"),
        "{err}"
    );
    assert!(stdout_of(&out).is_empty());
}

#[test]
fn table_shows_the_peak_per_label() {
    let out = vlm()
        .arg("explain")
        .arg(image("coins.png"))
        .args([
            "-m",
            &model("tiny-openai"),
            "-l",
            "coin,horse",
            "-f",
            "table",
            "-q",
        ])
        .output()
        .unwrap();
    success(&out);
    let text = stdout_of(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], image("coins.png"));
    assert!(lines[1].starts_with("  coin   peak "), "{text}");
    assert!(lines[1].contains(" of 7x7  mean "), "{text}");
    // The grid, 7 rows of 7 two-character cells.
    for row in &lines[2..9] {
        assert_eq!(row.chars().count(), 4 + 5 + 14, "{row:?}");
    }
    assert!(lines[9].starts_with("  horse  peak "), "{text}");
}
