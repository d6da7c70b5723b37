//! SigLIP (v1) and SigLIP 2 (fixed resolution): what only SigLIP has, against transformers 5.24
//! on the random-weight fixtures (tokenizer goldens, pixels, the zero-shot pipeline), and the
//! sigmoid head through the built binary. Their embeddings and probabilities are the parity
//! harness's (`parity.rs`), damaged SigLIP folders the hostile-model harness's.
//!
//! `tests/fixtures/make_siglip_fixtures.py` wrote transformers' outputs for the same weights,
//! images and prompts (`tests/fixtures/reference/tiny-siglip{,2}.json`, `pixels-tiny-siglip{,2}.safetensors`)
//! and the tokenizer references:
//!
//! - `tiny-siglip2` has the REAL SigLIP 2 tokenizer (Gemma's `tokenizer.json`, kept gzipped in the
//!   folder), so its ids, and the ids of `siglip2-tokenizer-goldens.json`, are the real ones.
//! - `tiny-siglip` has a LOCAL 1,000-piece stand-in SentencePiece model: the real v1
//!   `spiece.model` could not be obtained. The ids checked for v1 are transformers'
//!   `SiglipTokenizer` on that stand-in (`tiny-siglip-tokenizer.json`, 51 strings); of the real v1
//!   tokenizer's goldens (`siglip-v1-tokenizer-goldens.json`) only the canonical forms (the text
//!   canonicalisation vlm does in Rust) can be checked, not the ids.

use crate::common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::Device;
use common::{
    aspect, engine, fixtures, max_abs_diff, model, read_json, success, vlm, ClassifyDocument, Head,
    ImageResult, ModelInfo,
};
use serde::Deserialize;
use vlm::engine::{plan_model, Engine, ModelOptions, Precision};
use vlm::images::{self as preprocess, DecodeLimits};
use vlm::model::siglip::text::canonicalize as siglip_canonical;
use vlm::model::{HeadKind, Padding, TextNormalization, Towers};

/// f32 embeddings on identical input: the family table's tolerance (`common/families.rs`).
const EMBED_TOL: f32 = common::families::SIGLIP.reference.embed_tol;
/// Probabilities of PNG inputs through the binary: vlm's pixels are bit-identical there.
const FILE_PROB_TOL: f32 = 1e-3;
/// JPEG inputs through the binary: the decoders differ (zune-jpeg vs libjpeg-turbo) by a grey level
/// here and there, which moves a random-weight model's probabilities a little (measured: 1e-3).
const JPEG_PROB_TOL: f32 = 5e-3;
/// One grey level after SigLIP's normalisation: 1/255/0.5.
const ONE_LEVEL: f32 = 2.0 / 255.0;

const MODELS: [&str; 2] = ["tiny-siglip2", "tiny-siglip"];

/// The parts of `reference/tiny-siglip{,2}.json` only this file reads (embeddings and
/// probabilities: `parity.rs`).
#[derive(Debug, Deserialize)]
struct Reference {
    prompts: Vec<String>,
    canonical: Option<Vec<String>>,
    eos_token_id: u32,
    pad_token_id: u32,
    input_ids: Vec<Vec<u32>>,
    images: Vec<String>,
    image_size: [usize; 2],
    pipeline: Pipeline,
}

#[derive(Debug, Deserialize)]
struct Pipeline {
    hypothesis_template: String,
    labels: Vec<String>,
    sequences: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    text_embeds: Vec<Vec<f32>>,
    results: Vec<PipelineResult>,
}

#[derive(Debug, Deserialize)]
struct PipelineResult {
    image: String,
    /// Whether the pipeline's pixels (alpha dropped) equal the processor's (alpha on white).
    pixels_equal_processor: bool,
    /// Sigmoid per label, in label order.
    scores: Vec<f32>,
}

#[derive(Debug, Deserialize)]
struct TokenizerCases {
    cases: Vec<TokenizerCase>,
}

#[derive(Debug, Deserialize)]
struct TokenizerCase {
    name: String,
    query: String,
    #[serde(default)]
    canonical: Option<String>,
    input_ids: Vec<u32>,
}

fn reference(name: &str) -> Reference {
    read_json(&format!("reference/{name}.json"))
}

fn options(name: &str, precision: Precision) -> ModelOptions {
    ModelOptions {
        model: model(name),
        revision: None,
        device: "cpu".into(),
        precision,
    }
}

fn load(name: &str, towers: Towers) -> Engine {
    engine(name, Precision::F32, towers)
}

const TEXT_ONLY: Towers = Towers {
    vision: false,
    text: true,
};

/// The folder an image of the reference lives in.
fn image_path(name: &str) -> PathBuf {
    let plain = fixtures().join("images").join(name);
    if plain.exists() {
        plain
    } else {
        fixtures().join("images-alpha").join(name)
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration as vlm reads it
// ---------------------------------------------------------------------------------------------

#[test]
fn fixture_folders_are_siglip_with_a_sigmoid_head() {
    for (name, normalization, size) in [
        ("tiny-siglip2", TextNormalization::None, 64),
        (
            "tiny-siglip",
            TextNormalization::Family(vlm::model::siglip::text::CANONICAL),
            48,
        ),
    ] {
        let plan = plan_model(&options(name, Precision::F32), true).unwrap();
        assert_eq!(plan.spec.family(), "siglip");
        assert_eq!(plan.spec.head_kind(), HeadKind::Sigmoid);
        assert_eq!(plan.spec.image_size(), size);
        assert_eq!(plan.spec.default_template(), "This is a photo of {}.");
        let policy = plan.spec.text_policy();
        assert_eq!(policy.context_len, 64);
        assert_eq!(policy.padding, Padding::Full);
        assert_eq!(policy.normalization, normalization, "{name}");
        assert_eq!(
            plan.preprocess.output_size(),
            Some((size as u32, size as u32))
        );
        // The text cache keeps the families and their text policies apart.
        assert!(
            plan.cache_key().contains("|siglip|"),
            "{}",
            plan.cache_key()
        );
        assert!(plan.cache_key().contains(&format!("{normalization:?}")));
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

#[test]
fn token_ids_match_transformers_on_both_fixtures() {
    for name in MODELS {
        let r = reference(name);
        let m = load(name, TEXT_ONLY);
        let tok = m.tokenizer.as_ref().unwrap();
        // SigLIP 2 pads with Gemma's <pad> = 0 (tokenizer.json's padding section); v1 with </s> = 1.
        assert_eq!(tok.pad_id(), Some(r.pad_token_id), "{name}: pad id");
        let t = tok.encode(&r.prompts).unwrap();
        assert_eq!(t.ids, r.input_ids, "{name}: token ids");
        for ids in &t.ids {
            assert_eq!(ids.len(), 64);
            assert!(ids.contains(&r.eos_token_id));
        }
        // Exactly the over-long prompt is cut: 63 ids and the end token.
        assert_eq!(t.truncated, vec![r.prompts.len() - 1], "{name}");
        assert_eq!(t.ids.last().unwrap()[63], r.eos_token_id);
        // The pipeline's prompts, made from its default template (a capital in one label: v1
        // lowercases it, SigLIP 2 does not).
        let sequences: Vec<String> = r
            .pipeline
            .labels
            .iter()
            .map(|l| r.pipeline.hypothesis_template.replace("{}", l))
            .collect();
        assert_eq!(sequences, r.pipeline.sequences);
        let t = tok.encode(&sequences).unwrap();
        assert_eq!(t.ids, r.pipeline.input_ids, "{name}: pipeline ids");
        assert!(t.truncated.is_empty());
        if let Some(canonical) = &r.canonical {
            let ours: Vec<String> = r.prompts.iter().map(|p| siglip_canonical(p)).collect();
            assert_eq!(&ours, canonical, "{name}: canonical forms");
        }
    }
}

#[test]
fn real_siglip2_tokenizer_matches_its_goldens() {
    let goldens: TokenizerCases = read_json("reference/siglip2-tokenizer-goldens.json");
    assert!(goldens.cases.len() >= 25);
    let m = load("tiny-siglip2", TEXT_ONLY);
    let queries: Vec<String> = goldens.cases.iter().map(|c| c.query.clone()).collect();
    let t = m.tokenizer.as_ref().unwrap().encode(&queries).unwrap();
    for (case, ids) in goldens.cases.iter().zip(&t.ids) {
        assert_eq!(ids, &case.input_ids, "{}: {:?}", case.name, case.query);
    }
}

#[test]
fn v1_canonicalisation_and_stand_in_ids_match_siglip_tokenizer() {
    // The local stand-in tokenizer on 51 strings chosen to pin the canonicalisation down
    // (Python-only whitespace \x1c-\x1f, U+2581, final sigma, dotted I, NFKC-only characters, ...).
    let cases: TokenizerCases = read_json("reference/tiny-siglip-tokenizer.json");
    assert!(cases.cases.len() >= 40);
    let m = load("tiny-siglip", TEXT_ONLY);
    let queries: Vec<String> = cases.cases.iter().map(|c| c.query.clone()).collect();
    let t = m.tokenizer.as_ref().unwrap().encode(&queries).unwrap();
    for (case, ids) in cases.cases.iter().zip(&t.ids) {
        let canonical = case.canonical.as_deref().unwrap();
        assert_eq!(
            siglip_canonical(&case.query),
            canonical,
            "{}: {:?}",
            case.name,
            case.query
        );
        assert_eq!(ids, &case.input_ids, "{}: {:?}", case.name, case.query);
    }
    // The REAL v1 tokenizer's goldens: only their canonical forms can be checked here (the ids
    // need the real spiece.model, which the stand-in is not).
    let goldens: TokenizerCases = read_json("reference/siglip-v1-tokenizer-goldens.json");
    assert_eq!(goldens.cases.len(), 11);
    for case in &goldens.cases {
        assert_eq!(
            siglip_canonical(&case.query),
            case.canonical.as_deref().unwrap(),
            "{}: {:?}",
            case.name,
            case.query
        );
        // Their shape is SigLIP v1's contract: 64 ids, end and padding both 1.
        assert_eq!(case.input_ids.len(), 64);
        let end = case.input_ids.iter().position(|&i| i == 1).unwrap();
        assert!(case.input_ids[end..].iter().all(|&i| i == 1));
    }
}

// ---------------------------------------------------------------------------------------------
// Pixels
// ---------------------------------------------------------------------------------------------

#[test]
fn pixels_are_bit_identical_on_pngs() {
    for name in MODELS {
        let r = reference(name);
        let plan = plan_model(&options(name, Precision::F32), true).unwrap();
        let want = candle_core::safetensors::load(
            fixtures().join(format!("reference/pixels-{name}.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(want.len(), r.images.len());
        let mut report = Vec::new();
        for image in &r.images {
            let want = want[image].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let img = preprocess::load_image(&image_path(image), &DecodeLimits::default()).unwrap();
            let got = preprocess::preprocess(&img, &plan.preprocess).unwrap();
            assert_eq!(got.len(), 3 * r.image_size[0] * r.image_size[1]);
            let max = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            report.push(format!("{name} {image}: max |diff| {max}"));
            // PNGs decode alike and the resamplers are ports of Pillow's (bicubic for v1, bilinear
            // for SigLIP 2): bit for bit. JPEG decoders differ by a level or two.
            let tolerance = if image.ends_with(".jpg") {
                4.0 * ONE_LEVEL
            } else {
                0.0
            };
            assert!(max <= tolerance, "{name} {image}: pixels differ by {max}");
        }
        println!("{}", report.join("\n"));
    }
}

// ---------------------------------------------------------------------------------------------
// Embeddings and probabilities
// ---------------------------------------------------------------------------------------------

/// The engine's own path from prompts (tokenised and padded by vlm) and what it refuses. The ids'
/// embeddings, batched and alone, are the parity harness's (`parity.rs`).
#[test]
fn pipeline_text_embeddings_match_transformers() {
    for name in MODELS {
        let r = reference(name);
        let m = load(name, TEXT_ONLY);
        // Through the engine, from the prompts: tokenised and padded by vlm.
        let embeds = m.encode_prompts(&r.pipeline.sequences, true).unwrap();
        let diff = max_abs_diff(&embeds, &r.pipeline.text_embeds);
        assert!(
            diff <= EMBED_TOL,
            "{name}: pipeline text embeddings differ by {diff}"
        );
        // Unpadded ids are refused rather than silently padded with a guess.
        let err = m.model.encode_texts(&[vec![5, 1]]).unwrap_err();
        assert!(
            format!("{err:#}").contains("padded to exactly 64"),
            "{err:#}"
        );
        let err = m.model.encode_texts(&[vec![999_999; 64]]).unwrap_err();
        assert!(
            format!("{err:#}").contains("outside the model's vocabulary"),
            "{err:#}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Through the binary
// ---------------------------------------------------------------------------------------------

fn classify(name: &str, extra: &[&str], images: &[String]) -> ClassifyDocument {
    let out = vlm()
        .args(["classify", "--model", &model(name), "--format", "json"])
        .args(extra)
        .args(images)
        .output()
        .unwrap();
    success(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Label -> probability of one image's record.
fn probabilities(result: &ImageResult) -> HashMap<&str, f32> {
    assert!(result.error.is_none(), "{result:?}");
    result
        .predictions
        .iter()
        .map(|p| (p.label.as_str(), p.probability))
        .collect()
}

#[test]
fn classify_matches_the_zero_shot_pipeline() {
    for name in MODELS {
        let r = reference(name);
        let images: Vec<String> = r
            .pipeline
            .results
            .iter()
            .map(|p| image_path(&p.image).display().to_string())
            .collect();
        let labels = r.pipeline.labels.join(",");
        // No template: the model's default, which is the pipeline's.
        let doc = classify(name, &["--labels", &labels, "--no-cache"], &images);
        assert_eq!(
            doc.model,
            ModelInfo {
                id: model(name),
                revision: None,
                family: "siglip".into(),
                head: Head::Sigmoid,
            }
        );
        assert_eq!(doc.labels, r.pipeline.labels);
        assert_eq!(doc.templates, [r.pipeline.hypothesis_template.as_str()]);
        assert_eq!(doc.results.len(), r.pipeline.results.len());
        let mut report = Vec::new();
        for (result, want) in doc.results.iter().zip(&r.pipeline.results) {
            let got = probabilities(result);
            // Best first, every label, independent probabilities (no softmax: no sum to 1).
            assert_eq!(got.len(), r.pipeline.labels.len());
            for w in result.predictions.windows(2) {
                assert!(w[0].probability >= w[1].probability);
            }
            let diff = r
                .pipeline
                .labels
                .iter()
                .zip(&want.scores)
                .map(|(l, s)| (got[l.as_str()] - s).abs())
                .fold(0f32, f32::max);
            report.push(format!("{name} {}: max |diff| {diff}", want.image));
            // The pipeline drops alpha where vlm composites it on white, as the processor does:
            // those two images see different pixels.
            if !want.pixels_equal_processor {
                continue;
            }
            let tol = if want.image.ends_with(".jpg") {
                JPEG_PROB_TOL
            } else {
                FILE_PROB_TOL
            };
            assert!(
                diff <= tol,
                "{name} {}: probabilities differ by {diff}",
                want.image
            );
        }
        println!("{}", report.join("\n"));
    }
}

#[test]
fn adding_a_label_changes_no_other_probability() {
    let images = vec![
        image_path("horse.png").display().to_string(),
        image_path("coins.png").display().to_string(),
    ];
    for name in MODELS {
        let two = classify(name, &["--labels", "cat,dog", "--no-cache"], &images);
        let three = classify(name, &["--labels", "cat,dog,car", "--no-cache"], &images);
        for (a, b) in two.results.iter().zip(&three.results) {
            let (a, b) = (probabilities(a), probabilities(b));
            for label in ["cat", "dog"] {
                assert!(
                    (a[label] - b[label]).abs() <= 1e-6,
                    "{name}: {label} {} vs {}",
                    a[label],
                    b[label]
                );
            }
        }
        // A lone label is fine with a sigmoid head: no "always 1" warning, a real probability.
        let out = vlm()
            .args(["classify", "--model", &model(name), "--format", "json"])
            .args(["--labels", "cat", "--no-cache"])
            .arg(&images[0])
            .output()
            .unwrap();
        success(&out);
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let one: ClassifyDocument = serde_json::from_slice(&out.stdout).unwrap();
        let p = one.results[0].predictions[0].probability;
        assert!((p - probabilities(&two.results[0])["cat"]).abs() <= 1e-6);
        assert!(p < 1.0);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tag {
    label: String,
    score: f32,
    cosine: f32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AspectTags {
    aspect: String,
    kind: String,
    tags: Vec<Tag>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TagResult {
    path: String,
    aspects: Vec<AspectTags>,
    error: Option<String>,
    /// JSONL only: the run's fingerprint, which `--resume` checks.
    #[serde(default)]
    #[allow(dead_code)]
    run: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AspectInfo {
    name: String,
    kind: String,
    description: String,
    source: String,
    labels: usize,
    templates: Vec<String>,
    top_k: Option<usize>,
    threshold: f32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TagDocument {
    model: ModelInfo,
    aspects: Vec<AspectInfo>,
    results: Vec<TagResult>,
}

/// Label -> score of one aspect of one image.
fn tag_scores<'a>(result: &'a TagResult, aspect: &str) -> HashMap<&'a str, f32> {
    assert!(result.error.is_none(), "{result:?}");
    result
        .aspects
        .iter()
        .find(|a| a.aspect == aspect)
        .unwrap()
        .tags
        .iter()
        .map(|t| (t.label.as_str(), t.score))
        .collect()
}

#[test]
fn tag_multi_aspects_use_the_models_own_sigmoid() {
    let images = vec![
        image_path("horse.png").display().to_string(),
        image_path("coins.png").display().to_string(),
        image_path("logo.png").display().to_string(),
    ];
    let aspects = [aspect("thing.toml"), aspect("kind.toml")].join(",");
    for name in MODELS {
        let out = vlm()
            .args(["tag", "--model", &model(name), "--format", "json", "-v"])
            .args(["--aspects", &aspects, "--no-cache"])
            .args(["--threshold", "0", "--top-k", "1000"])
            .args(&images)
            .output()
            .unwrap();
        success(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // 6 thing labels + 5 kind labels, and no neutral prompt: the sigmoid needs none.
        assert!(stderr.contains("text: 11 entries"), "{stderr}");
        let doc: TagDocument = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc.model.family, "siglip");
        assert_eq!(doc.model.head, Head::Sigmoid);
        let thing = &doc.aspects[0];
        assert_eq!(thing.name, "thing");
        assert_eq!(thing.kind, "multi");
        assert_eq!(thing.labels, 6);
        assert_eq!(thing.source, aspect("thing.toml"));
        assert!(!thing.description.is_empty());
        assert_eq!((thing.top_k, thing.threshold), (Some(1000), 0.0));

        // The multi aspect's scores are classify's sigmoid probabilities for the same prompts.
        let thing_labels = "camera,coin,horse,logo,person";
        let templates = &doc.aspects[0].templates;
        let mut extra = vec!["--labels", thing_labels, "--no-cache"];
        for t in templates {
            extra.extend(["--template", t.as_str()]);
        }
        let classified = classify(name, &extra, &images);
        for (tagged, classified) in doc.results.iter().zip(&classified.results) {
            assert_eq!(tagged.path, classified.path);
            for a in &tagged.aspects {
                assert_eq!(
                    a.kind,
                    if a.aspect == "thing" {
                        "multi"
                    } else {
                        "single"
                    }
                );
                assert!(a.tags.iter().all(|t| (-1.0..=1.0).contains(&t.cosine)));
            }
            let scores = tag_scores(tagged, "thing");
            assert_eq!(scores.len(), 6);
            for (label, p) in probabilities(classified) {
                assert!(
                    (scores[label] - p).abs() <= 1e-6,
                    "{name} {}: {label} tag {} vs classify {p}",
                    tagged.path,
                    scores[label]
                );
            }
            // The single aspect is still a softmax over its labels.
            let kind = tag_scores(tagged, "kind");
            let sum: f32 = kind.values().sum();
            assert!((sum - 1.0).abs() < 1e-4, "{name}: kind sums to {sum}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What is refused
// ---------------------------------------------------------------------------------------------

#[test]
fn naflex_checkpoints_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let naflex = fixtures().join("configs/siglip/siglip2-base-patch16-naflex");
    for file in ["config.json", "preprocessor_config.json"] {
        std::fs::copy(naflex.join(file), dir.path().join(file)).unwrap();
    }
    std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
    std::fs::write(dir.path().join("model.safetensors"), "").unwrap();
    let out = vlm()
        .args(["classify", "--model", dir.path().to_str().unwrap()])
        .args(["--labels", "cat,dog"])
        .arg(image_path("horse.png"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("model_type \"siglip2\" is SigLIP 2 NaFlex"),
        "{stderr}"
    );
    assert!(
        stderr.contains("google/siglip2-base-patch16-224"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}
