//! Hostile model folders: a damaged checkpoint or a config that asks for absurd sizes must be
//! refused with one line naming the model (exit 2), never give `"probability": null`, wrap an
//! offset, panic, or allocate what the file does not back.
//!
//! Each case is a copy of a fixture model (`tests/fixtures/models/tiny-openai`) in a temporary
//! folder, with `config.json`, `preprocessor_config.json` or the safetensors bytes edited, and
//! the built `vlm` binary run on it as a user would.

use crate::common;
use crate::common::models::{assert_model_error, Model, Run};

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn image() -> PathBuf {
    fixtures().join("images/horse.png")
}

/// `vlm` that cannot reach the Hub or a user's cache, with backtraces on so that a panic could
/// not hide.
fn vlm() -> Command {
    let mut cmd = Command::cargo_bin("vlm").unwrap();
    cmd.env_remove("VLM_MODEL")
        .env("RUST_BACKTRACE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", "/nonexistent/vlm-test-cache");
    cmd
}

/// `vlm classify` of one image with `model`, without the text cache.
fn classify(model: &Path, extra: &[&str]) -> Run {
    let out = vlm()
        .arg("classify")
        .arg("--model")
        .arg(model)
        .args([
            "--labels",
            "a horse,a cat,a dog",
            "--format",
            "jsonl",
            "--no-cache",
        ])
        .args(extra)
        .arg("--")
        .arg(image())
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Exit 0 and one record whose probabilities are all numbers summing to 1.
#[track_caller]
fn assert_scores(run: &Run) {
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stderr, "");
    let records: Vec<common::ImageResult> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(records.len(), 1);
    let total: f32 = records[0].predictions.iter().map(|p| p.probability).sum();
    assert!((total - 1.0).abs() < 1e-4, "{}", run.stdout);
}

#[test]
fn the_fixture_model_scores_as_it_is() {
    let model = Model::openai();
    assert_scores(&classify(&model.path, &[]));
}

#[test]
fn a_non_finite_logit_scale_is_a_model_error() {
    for (value, want) in [
        (f32::NAN, "logit_scale is NaN, not a finite number"),
        (f32::INFINITY, "logit_scale is inf, not a finite number"),
        (
            f32::NEG_INFINITY,
            "logit_scale is -inf, not a finite number",
        ),
        // exp(100) overflows f32: every probability would be NaN.
        (100.0, "logit_scale is 100: exp(logit_scale) overflows"),
    ] {
        let model = Model::openai();
        model.fill("logit_scale", value);
        assert_model_error(&classify(&model.path, &[]), &model, want);
    }
}

#[test]
fn a_non_finite_weight_that_a_score_depends_on_is_a_model_error() {
    // Image side: every image embedding passes through the projection and the last layer norm;
    // one NaN anywhere in them reaches every output.
    for (tensor, index, what) in [
        ("visual_projection.weight", 0, "image embedding with NaN"),
        (
            "vision_model.post_layernorm.weight",
            3,
            "image embedding with NaN",
        ),
        (
            "vision_model.embeddings.class_embedding",
            0,
            "image embedding with NaN",
        ),
        ("text_projection.weight", 7, "text embedding with NaN"),
        (
            "text_model.final_layer_norm.bias",
            0,
            "text embedding with NaN",
        ),
    ] {
        for value in [f32::NAN, f32::INFINITY] {
            let model = Model::openai();
            model.set(tensor, index, value);
            let run = classify(&model.path, &[]);
            assert_model_error(&run, &model, what);
            assert!(run.stderr.contains("--dtype f32"), "{}", run.stderr);
        }
    }
    // Tagging reads the same embeddings.
    let model = Model::openai();
    model.set("visual_projection.weight", 0, f32::NAN);
    let out = vlm()
        .args(["tag", "--format", "jsonl", "--no-cache", "--aspects"])
        .arg(fixtures().join("aspects/kind.toml"))
        .arg("--model")
        .arg(&model.path)
        .arg("--")
        .arg(image())
        .output()
        .unwrap();
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    };
    assert_model_error(&run, &model, "image embedding with NaN");
}

#[test]
fn a_non_finite_weight_that_no_score_depends_on_is_harmless() {
    // The embedding row of a token no prompt here uses: the weights are not scanned (that would
    // read every page of a large checkpoint on every call), and the scores stay what they were.
    let model = Model::openai();
    let before = classify(&model.path, &[]);
    assert_scores(&before);
    let hidden = 32; // text_config_dict.hidden_size of the fixture
    model.set(
        "text_model.embeddings.token_embedding.weight",
        40_000 * hidden,
        f32::NAN,
    );
    let after = classify(&model.path, &[]);
    assert_scores(&after);
    assert_eq!(before.stdout, after.stdout);
}

#[test]
fn header_offsets_near_the_top_of_u64_are_refused() {
    // Before: `data_start + end` wrapped in release builds (and panicked in debug ones), so a
    // tensor "at" 2^64 - 8 was read from the header's own bytes.
    let top = u64::MAX;
    for (offsets, want) in [
        (json!([top - 7, top - 3]), "tensor logit_scale ends at byte"),
        (
            json!([top - 3, 0]),
            "tensor logit_scale: 0 bytes for shape [] of F32",
        ),
        (json!([top - 4, top]), "tensor logit_scale ends at byte"),
        (
            json!([0, top]),
            "tensor logit_scale: 18446744073709551615 bytes for shape []",
        ),
    ] {
        let model = Model::openai();
        model.edit_header(|h| h["logit_scale"]["data_offsets"] = offsets.clone());
        let run = classify(&model.path, &[]);
        assert_model_error(&run, &model, want);
        assert!(run
            .stderr
            .contains("model.safetensors is not a valid safetensors file"));
    }
}

#[test]
fn malformed_safetensors_headers_are_refused() {
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        // Two tensors over the same bytes: in place, they would alias one buffer.
        (
            Box::new(|h| {
                let begin = h["text_projection.weight"]["data_offsets"][0]
                    .as_u64()
                    .unwrap();
                h["logit_scale"]["data_offsets"] = json!([begin, begin + 4]);
            }),
            "invalid offset for tensor",
        ),
        // A shape whose element count overflows.
        (
            Box::new(|h| h["logit_scale"]["shape"] = json!([1u64 << 32, 1u64 << 32, 16])),
            "tensor logit_scale: 4 bytes for shape [4294967296, 4294967296, 16] of F32",
        ),
        // Shape and bytes disagree.
        (
            Box::new(|h| h["logit_scale"]["shape"] = json!([2])),
            "tensor logit_scale: 4 bytes for shape [2] of F32",
        ),
        (
            Box::new(|h| h["logit_scale"]["dtype"] = json!("I32")),
            "tensor logit_scale: unsupported dtype I32",
        ),
        (
            Box::new(|h| h["logit_scale"]["dtype"] = json!("Q4_K")),
            "unknown variant `Q4_K`",
        ),
        (
            Box::new(|h| {
                h["logit_scale"]["data_offsets"] = json!([0, 18446744073709551616u128 as f64])
            }),
            "tensor logit_scale: malformed header entry",
        ),
    ];
    for (edit, want) in cases {
        let model = Model::openai();
        model.edit_header(edit);
        assert_model_error(&classify(&model.path, &[]), &model, want);
    }
}

#[test]
fn absurd_header_lengths_and_truncated_files_are_refused() {
    let model = Model::openai();
    let bytes = std::fs::read(model.weights()).unwrap();
    for len in [
        u64::MAX,
        u64::MAX - 7,
        1 << 63,
        100_000_001,
        bytes.len() as u64,
    ] {
        let mut out = bytes.clone();
        out[..8].copy_from_slice(&len.to_le_bytes());
        std::fs::write(model.weights(), &out).unwrap();
        assert_model_error(
            &classify(&model.path, &[]),
            &model,
            &format!("header length {len} does not fit the file"),
        );
    }
    // Cut short, as by an interrupted download.
    std::fs::write(model.weights(), &bytes[..bytes.len() - 100]).unwrap();
    assert_model_error(
        &classify(&model.path, &[]),
        &model,
        "truncated (an interrupted download?)",
    );
    // Bytes after the last tensor: not the format (the safetensors crate refuses them too).
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 12]);
    std::fs::write(model.weights(), &longer).unwrap();
    assert_model_error(
        &classify(&model.path, &[]),
        &model,
        "12 bytes follow the last tensor",
    );
    std::fs::write(model.weights(), &bytes[..5]).unwrap();
    assert_model_error(
        &classify(&model.path, &[]),
        &model,
        "shorter than a safetensors header",
    );
}

#[test]
fn config_sizes_are_bounded_before_anything_is_allocated() {
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        // 2^38 + 224: `as u32` made it 224, which matched the preprocessor's crop.
        (
            "vision",
            "image_size",
            json!(274_877_907_168u64),
            "vision_config.image_size is 274877907168; vlm supports at most 4096",
        ),
        ("vision", "image_size", json!(4096), "makes 16384 patches"),
        (
            "vision",
            "patch_size",
            json!(0),
            "vision_config.patch_size must be positive",
        ),
        (
            "vision",
            "patch_size",
            json!(1u64 << 40),
            "vision_config.patch_size is 1099511627776",
        ),
        (
            "vision",
            "hidden_size",
            json!(u64::MAX),
            "vision_config.hidden_size is 18446744073709551615",
        ),
        (
            "vision",
            "intermediate_size",
            json!(1u64 << 50),
            "vision_config.intermediate_size is",
        ),
        (
            "vision",
            "num_hidden_layers",
            json!(1u64 << 40),
            "vision_config.num_hidden_layers is 1099511627776",
        ),
        (
            "vision",
            "num_attention_heads",
            json!(0),
            "vision_config.num_attention_heads must be positive",
        ),
        (
            "vision",
            "layer_norm_eps",
            json!(-1.0),
            "vision_config.layer_norm_eps is -1",
        ),
        (
            "vision",
            "image_size",
            json!(-224),
            "invalid vision_config_dict",
        ),
        (
            "vision",
            "image_size",
            json!(1e300),
            "invalid vision_config_dict",
        ),
        (
            "text",
            "vocab_size",
            json!(1u64 << 33),
            "text_config.vocab_size is 8589934592",
        ),
        (
            "text",
            "max_position_embeddings",
            json!(1u64 << 20),
            "text_config.max_position_embeddings is 1048576",
        ),
        (
            "text",
            "hidden_size",
            json!(1u64 << 62),
            "text_config.hidden_size is",
        ),
        (
            "text",
            "num_hidden_layers",
            json!(100_000),
            "text_config.num_hidden_layers is 100000",
        ),
        (
            "text",
            "eos_token_id",
            json!((1u64 << 32) + 2),
            "eos_token_id 4294967298 is outside the vocabulary",
        ),
        (
            "text",
            "layer_norm_eps",
            json!(0.0),
            "text_config.layer_norm_eps is 0",
        ),
    ];
    for (tower, field, value, want) in cases {
        let model = Model::openai();
        match tower {
            "vision" => model.edit_vision(field, value),
            _ => model.edit_text(field, value),
        }
        let run = classify(&model.path, &[]);
        assert_model_error(&run, &model, want);
        assert!(run.stderr.contains("config.json"), "{}", run.stderr);
    }
    let model = Model::openai();
    model.edit_json("config.json", |c| c["projection_dim"] = json!(1u64 << 60));
    assert_model_error(
        &classify(&model.path, &[]),
        &model,
        "projection_dim is 1152921504606846976",
    );
}

#[test]
fn the_preprocessor_must_crop_to_the_towers_image_size() {
    // A valid image size that is not the crop: refused before any weight is read, with both
    // sizes as they are (no truncation).
    let model = Model::openai();
    model.edit_vision("image_size", json!(448));
    assert_model_error(
        &classify(&model.path, &[]),
        &model,
        "makes images 224x224 but the vision tower takes 448x448",
    );
    for crop in [json!(1u64 << 32), json!(-1), json!(1e12)] {
        let model = Model::openai();
        model.edit_json("preprocessor_config.json", |p| {
            p["crop_size"] = crop.clone()
        });
        let run = classify(&model.path, &[]);
        assert_eq!(run.code, Some(2), "{crop}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(
            run.stderr.contains("preprocessor_config.json"),
            "{}",
            run.stderr
        );
    }
}
