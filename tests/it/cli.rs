//! Drives the built `vlm` binary against the fixture model folders. JSON output is checked by
//! deserialising into strict structs (unknown fields are errors), not by comparing strings.

use crate::common;

use std::path::Path;

use common::{fixtures, image, model, vlm, Head, ImageResult};
use serde::Deserialize;

/// `vlm classify --format json`.
type Document = crate::common::ClassifyDocument;

#[derive(Debug, Deserialize)]
struct Reference {
    images: Vec<String>,
    classify: RefClassify,
}

#[derive(Debug, Deserialize)]
struct RefClassify {
    labels: Vec<String>,
    templates: Vec<String>,
    probs: Vec<Vec<f32>>,
}

fn classify_json(args: &[&str]) -> Document {
    let out = vlm()
        .arg("classify")
        .args(args)
        .arg("--format=json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[test]
fn classify_ranks_like_transformers() {
    let reference: Reference = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/tiny-laion.json")).unwrap(),
    )
    .unwrap();
    let c = &reference.classify;
    let mut args: Vec<String> = vec![
        "--model".into(),
        model("tiny-laion"),
        "--labels".into(),
        c.labels.join(","),
    ];
    for t in &c.templates {
        args.push("--template".into());
        args.push(t.clone());
    }
    args.extend(reference.images.iter().map(|n| image(n)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let doc = classify_json(&args);

    assert_eq!(doc.model.id, model("tiny-laion"));
    assert_eq!(doc.model.revision, None);
    assert_eq!(doc.model.family, "clip");
    assert_eq!(doc.model.head, Head::Softmax);
    assert_eq!(doc.labels, c.labels);
    assert_eq!(doc.templates, c.templates);
    assert_eq!(doc.results.len(), reference.images.len());
    for ((result, name), probs) in doc.results.iter().zip(&reference.images).zip(&c.probs) {
        assert_eq!(result.path, image(name));
        assert_eq!(result.error, None);
        assert_eq!(result.predictions.len(), c.labels.len());
        let mut want: Vec<usize> = (0..probs.len()).collect();
        want.sort_by(|&i, &j| probs[j].total_cmp(&probs[i]));
        let got: Vec<&str> = result
            .predictions
            .iter()
            .map(|p| p.label.as_str())
            .collect();
        let want: Vec<&str> = want.iter().map(|&i| c.labels[i].as_str()).collect();
        assert_eq!(got, want, "{name}");
        let total: f32 = result.predictions.iter().map(|p| p.probability).sum();
        assert!((total - 1.0).abs() < 1e-4);
        assert!(result
            .predictions
            .iter()
            .all(|p| (-1.0..=1.0).contains(&p.cosine)));
    }
}

#[test]
fn top_k_and_builtin_templates() {
    let doc = classify_json(&[
        "--model",
        &model("tiny-openai"),
        "--labels",
        "cat,dog,car,coin",
        "--templates",
        "imagenet",
        "-k",
        "2",
        &image("coins.png"),
    ]);
    assert_eq!(doc.templates.len(), 80);
    assert_eq!(doc.results[0].predictions.len(), 2);
    assert!(doc.results[0].predictions[0].probability >= doc.results[0].predictions[1].probability);
}

#[test]
fn jsonl_and_csv_carry_the_same_results() {
    let base = [
        "classify",
        "--model",
        &model("tiny-openai"),
        "--labels",
        "cat,dog",
    ];
    let images = [image("horse.png"), image("camera.png")];
    let jsonl = vlm()
        .args(base)
        .args(&images)
        .arg("--format=jsonl")
        .output()
        .unwrap();
    assert!(jsonl.status.success());
    let lines: Vec<ImageResult> = String::from_utf8(jsonl.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1].path, images[1]);

    let csv = vlm()
        .args(base)
        .args(&images)
        .arg("--format=csv")
        .output()
        .unwrap();
    assert!(csv.status.success());
    let text = String::from_utf8(csv.stdout).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows[0], "path,rank,label,probability,cosine,error");
    assert_eq!(rows.len(), 1 + 2 * 2);
    let first: Vec<&str> = rows[1].split(',').collect();
    assert_eq!(first[0], images[0]);
    assert_eq!(first[1], "1");
    assert_eq!(first[2], lines[0].predictions[0].label);
    let p: f32 = first[3].parse().unwrap();
    assert!((p - lines[0].predictions[0].probability).abs() < 1e-6);

    let table = vlm()
        .args(base)
        .args(&images)
        .arg("--format=table")
        .output()
        .unwrap();
    assert!(table.status.success());
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.starts_with(&format!("{}\n  ", images[0])), "{text}");
    assert!(text.contains('%'));
}

#[test]
fn a_bad_image_fails_alone_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("notes.jpg");
    std::fs::write(&fake, "this is text, not a JPEG").unwrap();
    let missing = dir.path().join("missing.png");
    let out = vlm()
        .args([
            "classify",
            "--model",
            &model("tiny-openai"),
            "--labels",
            "cat,dog",
        ])
        .arg(&fake)
        .arg(image("horse.png"))
        .arg(&missing)
        .arg(dir.path())
        .arg("--format=json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let doc: Document = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc.results.len(), 4);
    assert!(doc.results[1].error.is_none());
    assert_eq!(doc.results[1].predictions.len(), 2);
    for i in [0, 2, 3] {
        let err = doc.results[i].error.as_deref().unwrap();
        assert!(err.starts_with(&doc.results[i].path), "{err}");
        assert!(doc.results[i].predictions.is_empty());
    }
    let stderr = stderr_of(&out);
    assert_eq!(stderr.lines().count(), 3, "{stderr}");
    assert!(stderr.contains(&fake.display().to_string()));
    assert!(stderr.contains(&missing.display().to_string()));
}

/// Runs `vlm classify` expecting a usage or model error: exit code 2, one stderr line, no panic.
fn fails_with(args: &[&str], envs: &[(&str, &str)], want: &str) {
    let mut cmd = vlm();
    cmd.arg("classify").args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("vlm: "), "{stderr}");
    assert!(stderr.contains(want), "expected {want:?} in {stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn label_and_template_errors_are_usage_errors() {
    let m = model("tiny-openai");
    let img = image("horse.png");
    fails_with(&["--model", &m, &img], &[], "no labels");
    fails_with(
        &["--model", &m, "--labels", "cat,dog,cat", &img],
        &[],
        "duplicate label \"cat\"",
    );
    fails_with(
        &["--model", &m, "--labels", "cat,,dog", &img],
        &[],
        "is empty",
    );
    fails_with(
        &[
            "--model",
            &m,
            "--labels",
            "cat",
            "--template",
            "a photo",
            &img,
        ],
        &[],
        "has no {}",
    );
    fails_with(
        &[
            "--model",
            &m,
            "--labels",
            "cat",
            "--templates",
            "nope",
            &img,
        ],
        &[],
        "no such built-in set",
    );
    fails_with(
        &[
            "--model",
            &m,
            "--labels",
            "cat",
            "--labels-file",
            "/nonexistent/labels.txt",
            &img,
        ],
        &[],
        "/nonexistent/labels.txt",
    );
    fails_with(
        &["--model", &m, "--labels", "cat", "--device", "tpu", &img],
        &[],
        "expected auto, cpu, cuda or cuda:N",
    );
}

#[test]
fn label_file_with_bom_crlf_and_comments() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("labels.txt");
    std::fs::write(&file, "\u{feff}# animals\r\ncat\r\n\r\ndog\r\n").unwrap();
    let doc = classify_json(&[
        "--model",
        &model("tiny-openai"),
        "--labels-file",
        file.to_str().unwrap(),
        "--labels",
        "car",
        &image("horse.png"),
    ]);
    assert_eq!(doc.labels, ["car", "cat", "dog"]);
}

/// A copy of a fixture model folder to break in one way.
fn model_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// Copies a fixture model, breaks it with `edit`, and expects a one-line model error containing `want`.
fn broken_model(name: &str, want: &str, edit: impl FnOnce(&Path)) {
    let dir = model_copy(name);
    edit(dir.path());
    let m = dir.path().to_str().unwrap();
    fails_with(
        &["--model", m, "--labels", "cat", &image("horse.png")],
        &[],
        want,
    );
}

fn edit_config(dir: &Path, from: &str, to: &str) {
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains(from));
    std::fs::write(&config, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn model_errors_name_the_model_and_the_problem() {
    fails_with(
        &[
            "--model",
            "./no/such/folder",
            "--labels",
            "cat",
            &image("horse.png"),
        ],
        &[],
        "model ./no/such/folder: no such folder",
    );
    broken_model("tiny-openai", "unsupported model_type \"blip\"", |d| {
        edit_config(d, "\"model_type\": \"clip\"", "\"model_type\": \"blip\"")
    });
    broken_model("tiny-openai", "missing config.json", |d| {
        std::fs::remove_file(d.join("config.json")).unwrap()
    });
    // A safetensors file named as a PyTorch archive: read as one (issue 19), and refused as one.
    broken_model(
        "tiny-openai",
        "pytorch_model.bin is not a valid PyTorch checkpoint: not a zip archive",
        |d| std::fs::rename(d.join("model.safetensors"), d.join("pytorch_model.bin")).unwrap(),
    );
    broken_model("tiny-openai", "safetensors", |d| {
        let weights = d.join("model.safetensors");
        let bytes = std::fs::read(&weights).unwrap();
        std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    });
    // The vision override's hidden size no longer matches the weights.
    broken_model(
        "tiny-openai",
        "tensor vision_model.embeddings.patch_embedding.weight has shape [64, 3, 32, 32], but config.json implies [96, 3, 32, 32]",
        |d| edit_config(d, "\"hidden_size\": 64", "\"hidden_size\": 96"),
    );
    broken_model(
        "tiny-laion",
        "model-00002-of-00002.safetensors but it is missing",
        |d| std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap(),
    );
}

#[test]
fn hub_offline_with_an_empty_cache_says_what_to_do() {
    let cache = tempfile::tempdir().unwrap();
    fails_with(
        &["--labels", "cat", &image("horse.png")],
        &[("HF_HUB_CACHE", cache.path().to_str().unwrap())],
        "model openai/clip-vit-base-patch32: config.json is not in the cache",
    );
}

#[test]
fn hub_unreachable_says_what_to_do() {
    let cache = tempfile::tempdir().unwrap();
    fails_with(
        &[
            "--model",
            "someone/some-clip",
            "--labels",
            "cat",
            &image("horse.png"),
        ],
        &[
            ("HF_HUB_OFFLINE", "0"),
            ("HF_HUB_CACHE", cache.path().to_str().unwrap()),
            // A closed local port: the request fails at once, nothing leaves the machine.
            ("HF_ENDPOINT", "http://127.0.0.1:9"),
        ],
        "model someone/some-clip: cannot fetch config.json from the Hub",
    );
}

/// A stand-in Hub on a local port that answers every request with `status` (nothing leaves the
/// machine), serving until the test ends.
fn fake_hub(status: &'static str) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_hub_id_that_does_not_exist_says_so() {
    for (status, want) in [
        (
            "404 Not Found",
            "model nobody/no-such-clip: not found on the Hub",
        ),
        // The real Hub answers 401 for a repository that does not exist when no token is set.
        ("401 Unauthorized", "set HF_TOKEN"),
    ] {
        let cache = tempfile::tempdir().unwrap();
        let endpoint = fake_hub(status);
        fails_with(
            &[
                "--model",
                "nobody/no-such-clip",
                "--labels",
                "cat",
                &image("horse.png"),
            ],
            &[
                ("HF_HUB_OFFLINE", "0"),
                ("HF_HUB_CACHE", cache.path().to_str().unwrap()),
                ("HF_ENDPOINT", &endpoint),
            ],
            want,
        );
    }
}

#[test]
fn a_label_longer_than_the_context_is_cut_with_one_warning() {
    let long = "a very long label ".repeat(28); // ~500 characters, ~112 tokens
    let long = long.trim().to_string();
    let out = vlm()
        // The warning comes with encoding: a cached label is not tokenized again.
        .args([
            "classify",
            "--model",
            &model("tiny-openai"),
            "-f",
            "jsonl",
            "--no-cache",
        ])
        .args(["--labels", &format!("{long},cat,猫,🐈")])
        .arg(image("horse.png"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = stderr_of(&out);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("1 prompt(s) longer than the model's 77 tokens were cut"));
    assert!(
        stderr.len() < 200,
        "the warning quotes a short excerpt: {stderr}"
    );
    let record: ImageResult = serde_json::from_slice(&out.stdout).unwrap();
    // The label is reported as given, emoji and all.
    let mut labels: Vec<&str> = record
        .predictions
        .iter()
        .map(|p| p.label.as_str())
        .collect();
    labels.sort();
    let mut want = vec![long.as_str(), "cat", "猫", "🐈"];
    want.sort();
    assert_eq!(labels, want);
}

#[test]
fn missing_tokenizer_or_weights_name_the_folder() {
    broken_model("tiny-openai", "missing tokenizer.json", |d| {
        std::fs::remove_file(d.join("tokenizer.json")).unwrap()
    });
    broken_model(
        "tiny-openai",
        "no weights: expected model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json",
        |d| std::fs::remove_file(d.join("model.safetensors")).unwrap(),
    );
    broken_model("tiny-openai", "truncated (an interrupted download?)", |d| {
        let weights = d.join("model.safetensors");
        let bytes = std::fs::read(&weights).unwrap();
        std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    });
}

/// A Hub model found in a standard-layout cache (`models--org--name/refs/main`, `snapshots/<commit>/`)
/// loads offline, and the output names the commit.
#[test]
fn hub_model_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--vlm-test--tiny-clip");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    for entry in std::fs::read_dir(model("tiny-openai")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), snapshot.join(entry.file_name())).unwrap();
    }
    let out = vlm()
        .env("HF_HUB_CACHE", cache.path())
        .args([
            "classify",
            "--model",
            "vlm-test/tiny-clip",
            "--labels",
            "cat,dog",
            "--format",
            "json",
        ])
        .arg(image("horse.png"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let doc: Document = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc.model.id, "vlm-test/tiny-clip");
    assert_eq!(doc.model.revision.as_deref(), Some(commit));
}

#[test]
fn cuda_without_the_feature_is_a_clear_error() {
    if cfg!(feature = "cuda") {
        return;
    }
    fails_with(
        &[
            "--model",
            &model("tiny-openai"),
            "--labels",
            "cat",
            "--device",
            "cuda",
            &image("horse.png"),
        ],
        &[],
        "built without CUDA",
    );
}

#[test]
fn help_documents_exit_codes() {
    let out = vlm().arg("--help").output().unwrap();
    assert!(out.status.success());
    insta::assert_snapshot!(String::from_utf8(out.stdout).unwrap());
}

#[test]
fn usage_errors_exit_2() {
    let out = vlm()
        .args(["classify", "--labels", "cat"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = vlm()
        .args(["classify", "--top-k", "0", "x.png", "--labels", "a"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
