//! Numerical parity with Hugging Face transformers on the random-weight fixture models.
//!
//! `tests/fixtures/make_fixtures.py` wrote transformers' own outputs (token ids, pixel tensors, text and
//! image embeddings, probabilities) for the same weights, images and prompts; every check here compares
//! against those numbers with the tolerance stated beside it.

use crate::common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::{fixtures, max_abs_diff};
use serde::Deserialize;
use vlm::engine::{Engine, ModelOptions, Precision};
use vlm::images::{self as preprocess, DecodeLimits};
use vlm::model::Towers;
use vlm::score::{self, LabelEmbeddings, Scoring};
use vlm::text::Template;

/// f32 embeddings on identical input: transformers' eager attention and ours sum in different orders.
const EMBED_TOL: f32 = 1e-4;

#[derive(Deserialize)]
struct Classify {
    labels: Vec<String>,
    templates: Vec<String>,
    label_embeds: Vec<Vec<f32>>,
    cosine: Vec<Vec<f32>>,
    probs: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct Reference {
    prompts: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    text_embeds: Vec<Vec<f32>>,
    images: Vec<String>,
    image_embeds: Vec<Vec<f32>>,
    logit_scale: f32,
    probs: Vec<Vec<f32>>,
    classify: Classify,
}

fn reference(model: &str) -> Reference {
    let text = std::fs::read_to_string(fixtures().join(format!("reference/{model}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(model: &str, precision: Precision) -> Engine {
    let opts = ModelOptions {
        model: fixtures().join("models").join(model).display().to_string(),
        revision: None,
        device: "cpu".into(),
        precision,
    };
    Engine::load(&opts, Towers::BOTH, true).unwrap()
}

/// The model's scores of one image against the labels, as `classify` computes them.
fn scores(m: &Engine, image: &[f32], labels: &LabelEmbeddings) -> Vec<score::LabelScore> {
    let head = m.head();
    score::score_labels(image, labels, &head, |_| Scoring::of_head(&head))
}

fn reference_pixels() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures().join("reference/pixels.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap()
}

fn ranking(v: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&i, &j| v[j].total_cmp(&v[i]));
    idx
}

fn check_text(model: &str) {
    let r = reference(model);
    let m = load(model, Precision::F32);
    let tokens = m.tokenizer.as_ref().unwrap().encode(&r.prompts).unwrap();
    assert_eq!(tokens.ids, r.input_ids, "{model}: token ids");
    // Exactly the over-long prompt is cut.
    assert_eq!(tokens.truncated, vec![r.prompts.len() - 1]);
    // Padded batch, as transformers ran it.
    let embeds = m.model.encode_texts(&tokens.ids).unwrap();
    let diff = max_abs_diff(&embeds.to_vec2().unwrap(), &r.text_embeds);
    assert!(
        diff <= EMBED_TOL,
        "{model}: text embeddings differ by {diff}"
    );
    // One at a time: padding must not change anything.
    for (ids, want) in tokens.ids.iter().zip(&r.text_embeds) {
        let one = m.model.encode_texts(std::slice::from_ref(ids)).unwrap();
        let diff = max_abs_diff(&one.to_vec2().unwrap(), std::slice::from_ref(want));
        assert!(
            diff <= EMBED_TOL,
            "{model}: unpadded text embedding differs by {diff}"
        );
    }
}

fn check_images(model: &str) {
    let r = reference(model);
    let m = load(model, Precision::F32);
    let pixels = reference_pixels();
    let batch: Vec<Tensor> = r.images.iter().map(|n| pixels[n].clone()).collect();
    let batch = Tensor::stack(&batch, 0).unwrap();
    let embeds: Vec<Vec<f32>> = m.model.encode_images(&batch).unwrap().to_vec2().unwrap();
    let diff = max_abs_diff(&embeds, &r.image_embeds);
    assert!(
        diff <= EMBED_TOL,
        "{model}: image embeddings differ by {diff}"
    );
    assert!((m.head().logit_scale - r.logit_scale).abs() < 1e-6);

    // Probabilities over the prompts, from our embeddings: same winner, close values.
    let tokens = m.tokenizer.as_ref().unwrap().encode(&r.prompts).unwrap();
    let text: Vec<Vec<f32>> = m
        .model
        .encode_texts(&tokens.ids)
        .unwrap()
        .to_vec2()
        .unwrap();
    let labels = LabelEmbeddings {
        labels: r.prompts.clone(),
        embeddings: text
            .iter()
            .map(|t| score::ensemble([t.as_slice()]))
            .collect(),
    };
    for (i, image) in embeds.iter().enumerate() {
        let probs: Vec<f32> = scores(&m, image, &labels).iter().map(|p| p.score).collect();
        let diff = max_abs_diff(
            std::slice::from_ref(&probs),
            std::slice::from_ref(&r.probs[i]),
        );
        // Cosines agree to ~1e-5; times exp(logit_scale) <= 100 that moves probabilities by < 1e-3.
        assert!(
            diff < 1e-3,
            "{model}: image {i} probabilities differ by {diff}"
        );
        assert_eq!(
            argmax(&probs),
            argmax(&r.probs[i]),
            "{model}: image {i} winner"
        );
    }
}

/// The whole classify pipeline from image files: our decoder and resize feed the network, templates
/// are ensembled, and the ranking must equal the one transformers gives.
fn check_classify_end_to_end(model: &str) {
    let r = reference(model);
    let c = &r.classify;
    let m = load(model, Precision::F32);
    let templates: Vec<Template> = c
        .templates
        .iter()
        .map(|t| Template::new(t).unwrap())
        .collect();
    let labels = m.label_embeddings(&c.labels, &templates, true).unwrap();
    let diff = max_abs_diff(&labels.embeddings, &c.label_embeds);
    assert!(
        diff <= EMBED_TOL,
        "{model}: ensembled label embeddings differ by {diff}"
    );

    let pixels: Vec<Vec<f32>> = r
        .images
        .iter()
        .map(|n| {
            let img = preprocess::load_image(
                &fixtures().join("images").join(n),
                &DecodeLimits::default(),
            )
            .unwrap();
            preprocess::preprocess(&img, &m.preprocess).unwrap()
        })
        .collect();
    let embeds = m.image_embeddings(&pixels).unwrap();
    for (i, image) in embeds.iter().enumerate() {
        let preds = scores(&m, image, &labels);
        let cos: Vec<f32> = preds.iter().map(|p| p.cosine).collect();
        let probs: Vec<f32> = preds.iter().map(|p| p.score).collect();
        // Decoding (JPEG IDCT) and resize rounding differ by a grey level here and there, so from
        // files the cosines agree to a few 1e-4, not 1e-5; the ranking must still be identical.
        let dc = max_abs_diff(
            std::slice::from_ref(&cos),
            std::slice::from_ref(&c.cosine[i]),
        );
        assert!(
            dc < 2e-3,
            "{model}: {}: cosines differ by {dc}",
            r.images[i]
        );
        let dp = max_abs_diff(
            std::slice::from_ref(&probs),
            std::slice::from_ref(&c.probs[i]),
        );
        assert!(
            dp < 2e-2,
            "{model}: {}: probabilities differ by {dp}",
            r.images[i]
        );
        assert_eq!(
            ranking(&probs),
            ranking(&c.probs[i]),
            "{model}: {} ranking",
            r.images[i]
        );
    }
}

#[test]
fn tiny_openai_text_matches_transformers() {
    check_text("tiny-openai");
}

#[test]
fn tiny_laion_text_matches_transformers() {
    check_text("tiny-laion");
}

#[test]
fn tiny_openai_images_match_transformers() {
    check_images("tiny-openai");
}

#[test]
fn tiny_laion_images_match_transformers() {
    check_images("tiny-laion");
}

#[test]
fn tiny_openai_classify_matches_transformers() {
    check_classify_end_to_end("tiny-openai");
}

#[test]
fn tiny_laion_classify_matches_transformers() {
    check_classify_end_to_end("tiny-laion");
}

/// Half precision keeps the ranking on identical pixels (not bit parity: a smoke test of the dtype path).
#[test]
fn bf16_and_f16_keep_the_winner() {
    let r = reference("tiny-openai");
    let pixels = reference_pixels();
    let batch: Vec<Tensor> = r.images.iter().map(|n| pixels[n].clone()).collect();
    let batch = Tensor::stack(&batch, 0).unwrap();
    for dtype in [Precision::F16, Precision::Bf16] {
        let m = load("tiny-openai", dtype);
        let embeds = m.model.encode_images(&batch).unwrap();
        assert_eq!(embeds.dtype(), DType::F32);
        let embeds: Vec<Vec<f32>> = embeds.to_vec2().unwrap();
        let cos = |a: &[f32], b: &[f32]| {
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
            let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
            dot / (na * nb)
        };
        for (got, want) in embeds.iter().zip(&r.image_embeds) {
            let c = cos(got, want);
            assert!(c > 0.99, "{dtype:?}: cosine to the f32 reference {c}");
        }
    }
}
