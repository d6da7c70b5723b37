//! The hostile-model harness: a damaged checkpoint or a config that asks for absurd sizes must be
//! refused with one line naming the model (exit 2) in every family and command, never give
//! `"probability": null`, wrap an offset, panic, or allocate what the file does not back.
//!
//! Each case runs for every row of the family table (`common/families.rs`): a copy of the family's
//! fixture model in a temporary folder, with its config, preprocessor config or safetensors bytes
//! edited as the row says, and the built `vlm` binary run on it as a user would. A family that
//! fails a case is named in the failure; a known gap is a `known_gaps` entry of its row.

use crate::common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::families::{for_each_family, panic_message, Family, Tower};
use common::models::{assert_model_error, classify, run, tag, Model, Run, Safetensors};
use common::{image, vlm, Head};
use serde_json::{json, Value};

const LABELS: &str = "a horse,a cat,a dog";

/// `vlm classify` of horse.png against [`LABELS`].
fn classify3(model: &Model) -> Run {
    classify(&model.path, LABELS, &[])
}

/// Exit 0, nothing on stderr and one record whose probabilities are all numbers: summing to 1
/// under a softmax head, each within [0, 1] under a sigmoid one.
#[track_caller]
fn assert_scores(run: &Run, head: Head) {
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stderr, "");
    let records: Vec<common::ImageResult> = common::jsonl(&run.stdout);
    assert_eq!(records.len(), 1);
    let probabilities = records[0].predictions.iter().map(|p| p.probability);
    match head {
        Head::Softmax => {
            let total: f32 = probabilities.sum();
            assert!((total - 1.0).abs() < 1e-4, "{}", run.stdout);
        }
        Head::Sigmoid => {
            for p in probabilities {
                assert!((0.0..=1.0).contains(&p), "{}", run.stdout);
            }
        }
    }
}

#[test]
fn the_fixture_model_scores_as_it_is() {
    for_each_family("scores as it is", |family| {
        let model = Model::of(family);
        assert_scores(&classify3(&model), family.head);
    });
}

#[test]
fn non_finite_head_parameters_are_a_model_error_in_every_family_and_command() {
    // Before: a SigLIP 2 folder with a NaN logit_bias printed `"probability": null` (exit 0) and
    // `vlm tag` returned no tags; CLIP already refused its logit_scale.
    for_each_family("non-finite head", |family| {
        for &tensor in family.head_tensors {
            let mut cases = vec![
                (f32::NAN, format!("{tensor} is NaN, not a finite number")),
                (
                    f32::INFINITY,
                    format!("{tensor} is inf, not a finite number"),
                ),
                (
                    f32::NEG_INFINITY,
                    format!("{tensor} is -inf, not a finite number"),
                ),
            ];
            if tensor == "logit_scale" {
                // exp(100) overflows f32: every probability would be NaN.
                cases.push((
                    100.0,
                    "logit_scale is 100: exp(logit_scale) overflows".into(),
                ));
            }
            family.case(&format!("non-finite head {tensor}"), || {
                for (value, want) in cases {
                    let model = Model::of(family);
                    model.fill(tensor, value);
                    assert_model_error(&classify3(&model), &model, &want);
                    assert_model_error(&tag(&model.path), &model, &want);
                }
            });
        }
    });
}

#[test]
fn a_non_finite_weight_that_a_score_depends_on_is_a_model_error() {
    // Every image embedding passes through the image side's last layers and every text
    // embedding through the text side's: one NaN anywhere in them reaches every output.
    for_each_family("non-finite score weight", |family| {
        for &(tensor, index, tower) in family.score_tensors {
            let what = match tower {
                Tower::Vision => "image embedding with NaN",
                Tower::Text => "text embedding with NaN",
            };
            for value in [f32::NAN, f32::INFINITY] {
                let model = Model::of(family);
                model.set(tensor, index, value);
                let run = classify3(&model);
                assert_model_error(&run, &model, what);
                assert!(
                    run.stderr.contains("--dtype f32"),
                    "{tensor}: {}",
                    run.stderr
                );
            }
        }
        // Tagging reads the same embeddings.
        let (tensor, index, _) = family.score_tensors[0];
        let model = Model::of(family);
        model.set(tensor, index, f32::NAN);
        assert_model_error(&tag(&model.path), &model, "image embedding with NaN");
    });
}

#[test]
fn explain_refuses_non_finite_patch_embeddings_and_writes_nothing() {
    // Before: null scores and overlays, exit 0, where classify refused the same model.
    for_each_family("explain, non-finite patch weight", |family| {
        for &tensor in family.patch_tensors {
            let model = Model::of(family);
            model.set(tensor, 0, f32::NAN);
            let out = tempfile::tempdir().unwrap();
            let overlays = out.path().join("overlays");
            let result = run(vlm()
                .arg("explain")
                .arg(image("horse.png"))
                .arg("--model")
                .arg(&model.path)
                .args(["-l", "a horse,a cat", "-f", "jsonl", "--no-cache", "-o"])
                .arg(&overlays));
            assert_model_error(&result, &model, "patch embedding with NaN");
            let written = std::fs::read_dir(&overlays).map_or(0, |d| d.count());
            assert_eq!(written, 0, "{tensor}: overlays were written");
        }
    });
}

#[test]
fn a_non_finite_weight_that_no_score_depends_on_is_harmless() {
    // The embedding row of a token no prompt here uses: the weights are not scanned (that would
    // read every page of a large checkpoint on every call), and the scores stay what they were.
    for_each_family("non-finite unused weight", |family| {
        let Some((tensor, index)) = family.unused_weight else {
            return;
        };
        let model = Model::of(family);
        let before = classify3(&model);
        assert_scores(&before, family.head);
        model.set(tensor, index, f32::NAN);
        let after = classify3(&model);
        assert_scores(&after, family.head);
        assert_eq!(before.stdout, after.stdout);
    });
}

/// The shape of `logit_scale` in the model's safetensors header, as vlm prints shapes.
fn logit_scale_shape(model: &Model) -> String {
    let file = Safetensors::read(&model.weights());
    let shape: Vec<u64> =
        serde_json::from_value(file.header["logit_scale"]["shape"].clone()).unwrap();
    format!("{shape:?}")
}

#[test]
fn header_offsets_near_the_top_of_u64_are_refused() {
    // Before: `data_start + end` wrapped in release builds (and panicked in debug ones), so a
    // tensor "at" 2^64 - 8 was read from the header's own bytes.
    for_each_family("header offsets", |family| {
        let top = u64::MAX;
        let shape = logit_scale_shape(&Model::of(family));
        for (offsets, want) in [
            (
                json!([top - 7, top - 3]),
                "tensor logit_scale ends at byte".to_string(),
            ),
            (
                json!([top - 3, 0]),
                format!("tensor logit_scale: 0 bytes for shape {shape} of F32"),
            ),
            (
                json!([top - 4, top]),
                "tensor logit_scale ends at byte".to_string(),
            ),
            (
                json!([0, top]),
                format!("tensor logit_scale: 18446744073709551615 bytes for shape {shape}"),
            ),
        ] {
            let model = Model::of(family);
            model.edit_header(|h| h["logit_scale"]["data_offsets"] = offsets.clone());
            let run = classify3(&model);
            assert_model_error(&run, &model, &want);
            let invalid = format!("{} is not a valid safetensors file", family.weights);
            assert!(run.stderr.contains(&invalid), "{}", run.stderr);
        }
    });
}

#[test]
fn malformed_safetensors_headers_are_refused() {
    for_each_family("malformed header", |family| {
        // Any tensor but logit_scale: the text side's first scored one.
        let other = family
            .score_tensors
            .iter()
            .find(|(_, _, tower)| *tower == Tower::Text)
            .unwrap()
            .0;
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            // Two tensors over the same bytes: in place, they would alias one buffer.
            (
                Box::new(move |h| {
                    let begin = h[other]["data_offsets"][0].as_u64().unwrap();
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
            let model = Model::of(family);
            model.edit_header(edit);
            assert_model_error(&classify3(&model), &model, want);
        }
    });
}

#[test]
fn absurd_header_lengths_and_truncated_files_are_refused() {
    for_each_family("header length, truncated weights", |family| {
        let model = Model::of(family);
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
                &classify3(&model),
                &model,
                &format!("header length {len} does not fit the file"),
            );
        }
        // Cut short, as by an interrupted download.
        std::fs::write(model.weights(), &bytes[..bytes.len() - 100]).unwrap();
        assert_model_error(
            &classify3(&model),
            &model,
            "truncated (an interrupted download?)",
        );
        // Bytes after the last tensor: not the format (the safetensors crate refuses them too).
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 12]);
        std::fs::write(model.weights(), &longer).unwrap();
        assert_model_error(
            &classify3(&model),
            &model,
            "12 bytes follow the last tensor",
        );
        std::fs::write(model.weights(), &bytes[..5]).unwrap();
        assert_model_error(
            &classify3(&model),
            &model,
            "shorter than a safetensors header",
        );
    });
}

/// The config cases: a field of a tower (transformers' name), its hostile value, and what the
/// one-line error must hold (`{section}`: the tower's section as the file names it).
fn config_cases() -> Vec<(Tower, &'static str, Value, &'static str)> {
    use Tower::{Text, Vision};
    vec![
        // 2^38 + 224: `as u32` made it 224, which matched the preprocessor's crop.
        (
            Vision,
            "image_size",
            json!(274_877_907_168u64),
            "vision_config.image_size is 274877907168; vlm supports at most 4096",
        ),
        // 4096 px: 16384 patches of CLIP's 32 px, more of SigLIP's; the bound names its limit.
        (
            Vision,
            "image_size",
            json!(4096),
            "patches; vlm supports at most 4096",
        ),
        (
            Vision,
            "patch_size",
            json!(0),
            "vision_config.patch_size must be positive",
        ),
        (
            Vision,
            "patch_size",
            json!(1u64 << 40),
            "vision_config.patch_size is 1099511627776",
        ),
        (
            Vision,
            "hidden_size",
            json!(u64::MAX),
            "vision_config.hidden_size is 18446744073709551615",
        ),
        (
            Vision,
            "intermediate_size",
            json!(1u64 << 50),
            "vision_config.intermediate_size is",
        ),
        (
            Vision,
            "num_hidden_layers",
            json!(1u64 << 40),
            "vision_config.num_hidden_layers is 1099511627776",
        ),
        (
            Vision,
            "num_attention_heads",
            json!(0),
            "vision_config.num_attention_heads must be positive",
        ),
        (
            Vision,
            "layer_norm_eps",
            json!(-1.0),
            "vision_config.layer_norm_eps is -1",
        ),
        // Before: -1e-5 (SigLIP) was accepted and flattened every score to 0.5.
        (
            Vision,
            "layer_norm_eps",
            json!(-1e-5),
            "vision_config.layer_norm_eps is -0.00001; it must be a positive number no larger than 1",
        ),
        (Vision, "image_size", json!(-224), "invalid {section}"),
        (Vision, "image_size", json!(1e300), "invalid {section}"),
        (
            Text,
            "vocab_size",
            json!(1u64 << 33),
            "text_config.vocab_size is 8589934592",
        ),
        (
            Text,
            "max_position_embeddings",
            json!(1u64 << 20),
            "text_config.max_position_embeddings is 1048576",
        ),
        (
            Text,
            "hidden_size",
            json!(1u64 << 62),
            "text_config.hidden_size is",
        ),
        (
            Text,
            "num_hidden_layers",
            json!(100_000),
            "text_config.num_hidden_layers is 100000",
        ),
        (
            Text,
            "eos_token_id",
            json!((1u64 << 32) + 2),
            "eos_token_id 4294967298 is outside the vocabulary",
        ),
        (
            Text,
            "layer_norm_eps",
            json!(0.0),
            "text_config.layer_norm_eps is 0",
        ),
        // Before: 1e30 (CLIP) was accepted and flattened every score to 0.5.
        (
            Text,
            "layer_norm_eps",
            json!(1e30),
            "text_config.layer_norm_eps is 1000000000000000000000000000000",
        ),
    ]
}

#[test]
fn config_sizes_are_bounded_before_anything_is_allocated() {
    for_each_family("config sizes", |family| {
        let mut failures = Vec::new();
        for (tower, field, value, want) in config_cases() {
            let model = Model::of(family);
            let mut applies = true;
            model.edit_json(family.config.file, |c| {
                applies = family.set_config(c, tower, field, value.clone())
            });
            if !applies {
                continue;
            }
            let case = format!("config {tower:?}.{field} = {value}");
            let want = want.replace("{section}", family.section(tower));
            // Every case is tried, and every failing one reported together.
            let check = catch_unwind(AssertUnwindSafe(|| {
                family.case(&case, || {
                    let run = classify3(&model);
                    assert_model_error(&run, &model, &want);
                    assert!(run.stderr.contains("config.json"), "{}", run.stderr);
                })
            }));
            if let Err(panic) = check {
                failures.push(format!("{case}: {}", panic_message(&*panic)));
            }
        }
        if let Some(path) = family.config.projection {
            let model = Model::of(family);
            model.edit_json(family.config.file, |c| {
                let mut at = c;
                for part in path {
                    at = &mut at[*part];
                }
                *at = json!(1u64 << 60);
            });
            let run = classify3(&model);
            let check = catch_unwind(AssertUnwindSafe(|| {
                assert_model_error(&run, &model, "projection_dim is 1152921504606846976");
            }));
            if check.is_err() {
                failures.push(format!(
                    "{} = 2^60: exit {:?}, stderr {:?}",
                    path.join("."),
                    run.code,
                    run.stderr.trim_end()
                ));
            }
        }
        assert!(failures.is_empty(), "\n  {}", failures.join("\n  "));
    });
}

/// The fixture's vision image size, as its config says.
fn image_size(family: &Family) -> u64 {
    let model = Model::of(family);
    let config: Value =
        serde_json::from_slice(&std::fs::read(model.path.join(family.config.file)).unwrap())
            .unwrap();
    let mut at = &config;
    for part in family.config.vision {
        at = &at[*part];
    }
    at["image_size"].as_u64().unwrap()
}

#[test]
fn the_preprocessor_must_crop_to_the_towers_image_size() {
    for_each_family("preprocessor size", |family| {
        if !family.config.preprocessor {
            // OpenCLIP: the preprocessing comes from the model's own config.
            return;
        }
        // A valid image size that is not the crop: refused before any weight is read, with both
        // sizes as they are (no truncation).
        let size = image_size(family);
        let model = Model::of(family);
        model.edit_json(family.config.file, |c| {
            family.set_config(c, Tower::Vision, "image_size", json!(448));
        });
        assert_model_error(
            &classify3(&model),
            &model,
            &format!("makes images {size}x{size} but the vision tower takes 448x448"),
        );
        for value in [json!(1u64 << 32), json!(-1), json!(1e12)] {
            let model = Model::of(family);
            // The size the processor ends at: `crop_size` where it crops (CLIP), `size` where it
            // only resizes (SigLIP).
            model.edit_json("preprocessor_config.json", |p| {
                let key = if p.get("crop_size").is_some() {
                    "crop_size"
                } else {
                    "size"
                };
                p[key] = value.clone()
            });
            let run = classify3(&model);
            assert_eq!(run.code, Some(2), "{value}: {}", run.stderr);
            assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
            assert!(
                run.stderr.contains("preprocessor_config.json"),
                "{}",
                run.stderr
            );
        }
    });
}
