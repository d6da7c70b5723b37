//! `--dtype bf16` is no further from transformers' f32 probabilities than PyTorch's own bf16
//! autocast is (issue 11), on every fixture model, with the pixels and token ids the f32
//! references were computed from. `reference/autocast-bf16.json` holds autocast's distance
//! (made by `tests/fixtures/make_autocast_reference.py`).
//!
//! On a CPU with native bf16 (AMX or AVX512-BF16) vlm's linear layers round their inputs and
//! weights to bf16; elsewhere bf16 computes in f32 and the distance is that of the f32 path.

use crate::common;

use std::collections::HashMap;

use common::families::{for_each_family, Family};
use common::{engine, max_abs_diff, normalized, read_json};
use serde::Deserialize;
use vlm::engine::Precision;
use vlm::model::Towers;

#[derive(Deserialize)]
pub(crate) struct F32Reference {
    input_ids: Vec<Vec<u32>>,
    images: Vec<String>,
    pub(crate) probs: Vec<Vec<f32>>,
    logit_scale: f32,
    #[serde(default)]
    logit_bias: Option<f32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Autocast {
    #[allow(dead_code)]
    description: String,
    #[allow(dead_code)]
    torch_version: String,
    models: HashMap<String, AutocastModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AutocastModel {
    #[allow(dead_code)]
    probs: Vec<Vec<f32>>,
    max_prob_gap: f32,
}

/// Probabilities as the references compute them: CLIP's softmax over the prompts, SigLIP's
/// sigmoid per prompt, from the images the family's reference embedded.
pub(crate) fn probabilities(
    family: &Family,
    name: &str,
    precision: Precision,
    r: &F32Reference,
) -> Vec<Vec<f32>> {
    let engine = engine(name, precision, Towers::BOTH);
    let images = normalized(&family.image_embeddings(name, &engine, &r.images));
    // One text at a time, as the reference script ran autocast.
    let texts: Vec<Vec<f32>> = r
        .input_ids
        .iter()
        .map(|ids| {
            let e: Vec<Vec<f32>> = engine
                .model
                .encode_texts(std::slice::from_ref(ids))
                .unwrap()
                .to_vec2()
                .unwrap();
            e.into_iter().next().unwrap()
        })
        .collect();
    let texts = normalized(&texts);
    let scale = r.logit_scale.exp();
    images
        .iter()
        .map(|img| {
            let logits: Vec<f32> = texts
                .iter()
                .map(|t| scale * img.iter().zip(t).map(|(a, b)| a * b).sum::<f32>())
                .collect();
            match r.logit_bias {
                Some(bias) => logits
                    .iter()
                    .map(|l| 1.0 / (1.0 + (-(l + bias)).exp()))
                    .collect(),
                None => {
                    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
                    let sum: f32 = e.iter().sum();
                    e.iter().map(|v| v / sum).collect()
                }
            }
        })
        .collect()
}

/// The fixtures of `family` that `figures` (PyTorch's distances, by fixture) measured; any other
/// is reported on stderr as NOT MEASURED.
pub(crate) fn measured<'a, T>(
    family: &Family,
    figures: &'a HashMap<String, T>,
) -> Vec<(&'static str, &'a T)> {
    family
        .fixtures
        .iter()
        .filter_map(|&name| {
            let figure = figures.get(name);
            if figure.is_none() {
                eprintln!("NOT MEASURED: {name} has no PyTorch figure to compare with");
            }
            figure.map(|f| (name, f))
        })
        .collect()
}

#[test]
fn bf16_is_no_further_from_f32_than_autocast() {
    let autocast: Autocast = read_json("reference/autocast-bf16.json");
    for_each_family("bf16", |family| {
        for (name, figure) in measured(family, &autocast.models) {
            let r: F32Reference = family.reference(name);
            let bar = figure.max_prob_gap;
            // The f32 path first: the measurement itself must reproduce the reference (within the
            // 1e-3 the parity tests allow), or the bf16 figure would say nothing.
            let f32_gap = max_abs_diff(&probabilities(family, name, Precision::F32, &r), &r.probs);
            assert!(
                f32_gap < 1e-3,
                "{name}: f32 probabilities differ by {f32_gap}"
            );
            let gap = max_abs_diff(&probabilities(family, name, Precision::Bf16, &r), &r.probs);
            eprintln!("{name}: vlm bf16 {gap:.4}, autocast bf16 {bar:.4} (f32 {f32_gap:.1e})");
            assert!(
                gap <= bar,
                "{name}: bf16 moves probabilities by {gap}, autocast by {bar}"
            );
        }
    });
}
