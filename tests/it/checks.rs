//! Issue 20's "silently wrong", "hangs" and error-text items, each on the built binary: a config
//! whose end token no prompt holds is warned about, a tokenizer that names no pad token or cannot
//! encode a prompt is a model error, special files are refused without blocking, and an error
//! quotes a short excerpt of whatever long text it is about. (Damaged heads, weights and configs,
//! in every family: `hostile_models.rs`.)

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::models::{assert_model_error, classify, run, Model};
use common::{fixtures, image, vlm};
use serde::Deserialize;

#[test]
fn an_eos_token_id_that_no_prompt_holds_is_warned_about() {
    // tiny-laion pools at eos_token_id 49407; 3 is in the vocabulary but never produced by
    // the tokenizer at the end of a prompt, so every label would pool at its start token.
    let model = Model::copy("tiny-laion");
    model.edit_json("config.json", |c| {
        c["text_config"]["eos_token_id"] = serde_json::json!(3)
    });
    let result = classify(&model.path, "a cat,a dog", &[]);
    assert_eq!(result.code, Some(0), "{}", result.stderr);
    assert_eq!(result.stderr.lines().count(), 1, "{}", result.stderr);
    assert!(
        result
            .stderr
            .contains("text_config.eos_token_id 3 is missing from 2 of 2 tokenised prompts"),
        "{}",
        result.stderr
    );
    // The fixture as it is: no warning.
    let result = classify(Path::new(&common::model("tiny-laion")), "a cat,a dog", &[]);
    assert_eq!(result.code, Some(0), "{}", result.stderr);
    assert_eq!(result.stderr, "");
}

/// `tests/fixtures/reference/tiny-siglip2-no-padding.json` (make_pad_reference.py).
#[derive(Deserialize)]
struct PadReference {
    pad_token_id: u32,
    labels: Vec<String>,
    template: String,
    input_ids: Vec<Vec<u32>>,
    scores: Vec<f32>,
}

#[test]
fn siglip2_without_a_padding_section_pads_with_its_named_pad_token() {
    // Before: vlm padded with `</s>` (213 in Gemma's vocabulary, an ordinary piece) and the
    // probabilities changed without a word. transformers pads with the pad_token that
    // tokenizer_config.json / special_tokens_map.json name (<pad> = 0).
    let r: PadReference = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/tiny-siglip2-no-padding.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(r.pad_token_id, 0);
    assert!(r
        .input_ids
        .iter()
        .all(|ids| ids.len() == 64 && ids[63] == 0));
    let model = Model::siglip2();
    model.edit_gz_tokenizer(|t| t["padding"] = serde_json::Value::Null);
    let result = classify(
        &model.path,
        &r.labels.join(","),
        &["--template", &r.template],
    );
    assert_eq!(result.code, Some(0), "{}", result.stderr);
    let record: common::ImageResult = serde_json::from_str(result.stdout.trim()).unwrap();
    for (label, want) in r.labels.iter().zip(&r.scores) {
        let got = record
            .predictions
            .iter()
            .find(|p| &p.label == label)
            .unwrap()
            .probability;
        // Tolerance 1e-4: the pipeline's sigmoid scores, f32 on both sides.
        assert!(
            (got - want).abs() < 1e-4,
            "{label}: vlm {got}, transformers {want}"
        );
    }
    // Nothing names the pad token any more: refused, not guessed.
    std::fs::remove_file(model.path.join("tokenizer_config.json")).unwrap();
    std::fs::remove_file(model.path.join("special_tokens_map.json")).unwrap();
    assert_model_error(
        &classify(&model.path, "a cat,a dog", &[]),
        &model,
        "cannot tell which id pads the text",
    );
}

#[test]
fn a_tokenizer_that_cannot_encode_a_prompt_names_the_model() {
    // A word-level tokenizer whose unknown token is not in its vocabulary fails on any word it
    // does not know.
    let model = Model::openai();
    std::fs::write(
        model.path.join("tokenizer.json"),
        serde_json::to_vec(&serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "<unk>"}
        }))
        .unwrap(),
    )
    .unwrap();
    let result = classify(&model.path, "zebra,yak", &[]);
    assert_model_error(
        &result,
        &model,
        "cannot tokenize prompt \"a photo of a zebra.\"",
    );
}

#[test]
fn errors_quote_a_short_excerpt_of_long_text() {
    let dir = tempfile::tempdir().unwrap();
    let label = "x".repeat(500_000);
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, format!("{label}\n{label}\n")).unwrap();
    let result = run(vlm()
        .args([
            "classify",
            "-m",
            &common::model("tiny-openai"),
            "--labels-file",
        ])
        .arg(&labels)
        .arg(image("horse.png")));
    assert_eq!(
        result.code,
        Some(2),
        "{}",
        &result.stderr[..200.min(result.stderr.len())]
    );
    assert_eq!(result.stderr.lines().count(), 1);
    assert!(result.stderr.len() < 300, "{} bytes", result.stderr.len());
    assert!(
        result.stderr.contains("duplicate label \"xxxx")
            && result.stderr.contains("(500000 characters)"),
        "{}",
        result.stderr
    );

    let digits = "9".repeat(300);
    for flag in ["--threshold", "--top-k"] {
        let result = run(vlm()
            .args(["tag", "-a", "all", flag, &digits])
            .arg(image("horse.png")));
        assert_eq!(result.code, Some(2), "{}", result.stderr);
        assert_eq!(result.stderr.lines().count(), 1, "{}", result.stderr);
        assert!(result.stderr.len() < 300, "{}", result.stderr);
        assert!(
            result.stderr.contains("(300 characters)"),
            "{}",
            result.stderr
        );
    }
}

#[cfg(unix)]
#[test]
fn fifos_and_devices_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("photos");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(image("horse.png"), folder.join("a.png")).unwrap();
    let fifo = folder.join("b.png");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    let zero = folder.join("c.png");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let named_fifo = dir.path().join("named.jpg");
    let c_path = std::ffi::CString::new(named_fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    // Before: the FIFOs blocked classify forever (killed here after 120 s), and /dev/zero
    // reached an overflow panic in the decoder ("internal error").
    let result = run(vlm()
        .timeout(Duration::from_secs(120))
        .args([
            "classify",
            "-m",
            &common::model("tiny-openai"),
            "-l",
            "cat,dog",
        ])
        .args(["-f", "jsonl", "-q"])
        .arg(&folder)
        .arg(&named_fifo)
        .arg("/dev/null"));
    assert_eq!(result.code, Some(1), "{}", result.stderr);
    let recs: Vec<common::ImageResult> = common::jsonl(&result.stdout);
    let paths: Vec<PathBuf> = recs.iter().map(|r| PathBuf::from(&r.path)).collect();
    assert_eq!(
        paths,
        [
            folder.join("a.png"),
            fifo,
            zero,
            named_fifo,
            PathBuf::from("/dev/null")
        ]
    );
    assert!(recs[0].error.is_none());
    let errors: Vec<&str> = recs[1..]
        .iter()
        .map(|r| r.error.as_deref().unwrap())
        .collect();
    for (error, kind) in errors.iter().zip([
        "a FIFO",
        "a character device",
        "a FIFO",
        "a character device",
    ]) {
        assert!(
            error.ends_with(&format!(": not a regular file ({kind})")),
            "{error}"
        );
    }
    assert!(
        !result.stderr.contains("internal error"),
        "{}",
        result.stderr
    );
}
