//! Numbers that do not depend on the company they keep (issue 24): an image's record is the same
//! bits alone and inside batches of other sizes, and a label's text embedding the same encoded
//! alone or beside longer labels, in f32, bf16 and int8, for every family. Tolerance: none; the
//! JSON's shortest round-trip floats are compared by their bits.
//!
//! What makes it hold: every f32 kernel sums in one order fixed by K alone (`src/kernels/f32.rs`),
//! so a batch packed once and a single image packed as it runs agree; bf16 and int8 kernels keep
//! each row's sums apart from the others'; attention and layer norms work per row, and a shorter
//! label's padding adds exact zeros to its sums.

use serde::Deserialize;

use crate::common::{self, ImageResult};

const MODELS: [&str; 5] = [
    "tiny-openai",
    "tiny-laion",
    "tiny-siglip",
    "tiny-siglip2",
    "tiny-openclip-gelu",
];
const IMAGES: [&str; 9] = [
    "camera.png",
    "coins.png",
    "color.png",
    "horse.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "logo.png",
    "page.png",
    "retina.jpg",
];

/// `vlm classify` JSONL records, no text cache (each run encodes its labels afresh).
fn classify(
    model: &str,
    dtype: &str,
    labels: &str,
    batch: usize,
    images: &[&str],
) -> Vec<ImageResult> {
    let out = common::vlm()
        .args(["classify", "--model", &common::model(model), "--no-cache"])
        .args(["--labels", labels, "--format", "jsonl", "--dtype", dtype])
        .args(["--batch-size", &batch.to_string()])
        .args(images.iter().map(|i| common::image(i)))
        .output()
        .unwrap();
    common::success(&out);
    common::stdout_of(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn bits(r: &ImageResult) -> Vec<(String, u32, u32)> {
    r.predictions
        .iter()
        .map(|p| (p.label.clone(), p.probability.to_bits(), p.cosine.to_bits()))
        .collect()
}

#[test]
fn an_image_scores_the_same_bits_alone_and_in_any_batch() {
    let labels = "cat,dog,a photo of the moon";
    for model in MODELS {
        for dtype in ["f32", "bf16", "int8"] {
            // Each image in a forward pass of its own (batches of 1), then all nine in batches
            // of 4 (4, 4, 1) and of 9.
            let alone = classify(model, dtype, labels, 1, &IMAGES);
            assert_eq!(alone.len(), IMAGES.len());
            for batch in [4, 9] {
                let together = classify(model, dtype, labels, batch, &IMAGES);
                assert_eq!(together.len(), IMAGES.len());
                for (a, t) in alone.iter().zip(&together) {
                    assert_eq!(a.path, t.path);
                    assert_eq!(
                        bits(a),
                        bits(t),
                        "{model} {dtype}: {} alone {:?}, in batches of {batch} {:?}",
                        a.path,
                        a.predictions,
                        t.predictions
                    );
                }
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextRecord {
    text: String,
    embedding: Vec<f32>,
}

/// `vlm embed --text` records for `texts`, encoded in one run (one batch).
fn embed_texts(model: &str, texts: &[&str]) -> Vec<TextRecord> {
    let mut cmd = common::vlm();
    cmd.args(["embed", "--model", &common::model(model), "--no-cache"])
        .args(["--format", "jsonl"]);
    for t in texts {
        cmd.args(["--text", t]);
    }
    let out = cmd.output().unwrap();
    common::success(&out);
    common::stdout_of(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_label_embeds_the_same_bits_alone_and_beside_longer_ones() {
    let long = "a photo of the moon at night over a lake with mountains behind it";
    for model in MODELS {
        let alone = embed_texts(model, &["cat"]);
        let beside = embed_texts(model, &["dog", "cat", long]);
        assert_eq!(alone.len(), 1);
        assert_eq!(beside.len(), 3);
        assert_eq!(beside[1].text, "cat");
        let b = |e: &[f32]| e.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        assert!(!alone[0].embedding.is_empty());
        assert_eq!(
            b(&alone[0].embedding),
            b(&beside[1].embedding),
            "{model}: \"cat\" alone and beside a longer label"
        );
    }
}
