//! The Hub path with PyTorch checkpoints (issue 19, section 2), against the stand-in Hub of
//! tests/it/hub.rs: the exact file list of `openai/clip-vit-base-patch32`'s `main` (no
//! safetensors) by the user's literal command, a sharded `.bin`, and no `.bin` fetched where
//! safetensors are there. Needs the `.bin` reader and its fixtures (`tests/fixtures/pytorch/`,
//! made by `make_pytorch_fixtures.py`): registered in main.rs with it.

use crate::common;

use std::path::Path;
use std::process::Output;

use common::hub::{files_of, HubRepo, StandIn};
use common::{fixtures, image, model, stderr_of, success, vlm};

const COMMIT: &str = "3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268";

/// `vlm` against `hub` with an empty `HF_HOME`, online.
fn vlm_hub(hub: &StandIn, home: &Path) -> assert_cmd::Command {
    let mut cmd = vlm();
    cmd.env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env("HF_HOME", home)
        .env("HF_HUB_OFFLINE", "0")
        .env("HF_ENDPOINT", hub.url());
    cmd
}

/// `name`'s configs and tokenizer (no weights) plus every file of `pytorch/<bin>`.
fn bin_files(name: &str, bin: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = files_of(&fixtures().join("models").join(name))
        .into_iter()
        .filter(|(f, _)| !f.contains(".safetensors"))
        .collect();
    files.extend(files_of(&fixtures().join("pytorch").join(bin)));
    files
}

/// The `results` of a `-f json` run: what the Hub path must not change.
fn results(out: &Output) -> serde_json::Value {
    success(out);
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["results"].clone()
}

#[test]
fn the_default_models_published_file_list_works_by_the_literal_command() {
    // openai/clip-vit-base-patch32's `main` as the Hub lists it: PyTorch, TensorFlow and Flax
    // weights, the slow tokenizer's files and the fast one's, no model.safetensors.
    let mut files = bin_files("tiny-openai", "tiny-openai");
    for (name, bytes) in [
        (
            ".gitattributes",
            b"*.bin filter=lfs diff=lfs merge=lfs -text\n".to_vec(),
        ),
        ("README.md", b"---\ntags:\n- vision\n---\n".to_vec()),
        ("flax_model.msgpack", vec![0u8; 4096]),
        ("tf_model.h5", vec![0u8; 4096]),
        ("merges.txt", b"#version: 0.2\n".to_vec()),
        ("vocab.json", b"{}".to_vec()),
        ("special_tokens_map.json", b"{}".to_vec()),
    ] {
        files.push((name.to_string(), bytes));
    }
    let mut names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".gitattributes",
            "README.md",
            "config.json",
            "flax_model.msgpack",
            "merges.txt",
            "preprocessor_config.json",
            "pytorch_model.bin",
            "special_tokens_map.json",
            "tf_model.h5",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.json",
        ]
    );
    let hub = StandIn::start(vec![HubRepo::new("openai/clip-vit-base-patch32")
        .commit(COMMIT, files)
        .branch("main", COMMIT)]);
    let home = tempfile::tempdir().unwrap();
    let photo = image("horse.png");
    // The user's first command, word for word (the photo's path aside).
    let out = vlm_hub(&hub, home.path())
        .args(["classify", &photo, "--labels", "cat,dog,car"])
        // A private text cache: a shared one may hold labels encoded in another batch, which
        // differ in their last bits (issue 24), and this compares bit for bit.
        .env("VLM_CACHE_DIR", home.path().join("vlm-text-cache"))
        .output()
        .unwrap();
    success(&out);
    assert_eq!(stderr_of(&out), "");
    // The same numbers as the safetensors folder of the same weights.
    let local = vlm()
        .args([
            "classify",
            &photo,
            "--labels",
            "cat,dog,car",
            "--no-cache",
            "--model",
        ])
        .arg(model("tiny-openai"))
        .output()
        .unwrap();
    assert_eq!(results(&out), results(&local));
    // Only what vlm reads was downloaded: never the TensorFlow or Flax weights.
    let asked = hub.requests();
    assert!(
        asked
            .iter()
            .all(|r| !r.contains(".msgpack") && !r.contains(".h5")),
        "{asked:?}"
    );
    // Again offline, from the cache.
    let offline = vlm_hub(&hub, home.path())
        .env("HF_HUB_OFFLINE", "1")
        .args(["classify", &photo, "--labels", "cat,dog,car"])
        // A private text cache: a shared one may hold labels encoded in another batch, which
        // differ in their last bits (issue 24), and this compares bit for bit.
        .env("VLM_CACHE_DIR", home.path().join("vlm-text-cache"))
        .output()
        .unwrap();
    assert_eq!(results(&offline), results(&local));
}

#[test]
fn a_sharded_bin_loads_over_the_hub() {
    let id = "someone/sharded-siglip";
    let hub = StandIn::start(vec![HubRepo::new(id)
        .commit(COMMIT, bin_files("tiny-siglip", "tiny-siglip-sharded"))
        .branch("main", COMMIT)]);
    let home = tempfile::tempdir().unwrap();
    let args = ["classify", "--labels", "cat,dog,car", "-f", "json"];
    let pngs: Vec<String> = common::PNGS.iter().map(|p| image(p)).collect();
    let out = vlm_hub(&hub, home.path())
        .args(args)
        .args(["--model", id])
        .args(&pngs)
        .output()
        .unwrap();
    let local = vlm()
        .args(args)
        .args(["--model", &model("tiny-siglip")])
        .args(&pngs)
        .output()
        .unwrap();
    assert_eq!(results(&out), results(&local));
    let shards = hub
        .requests()
        .iter()
        .filter(|r| {
            r.starts_with("GET ") && r.contains("/resolve/") && r.contains("/pytorch_model-0000")
        })
        .count();
    // Each of the four shards, from the commit main points to: hf-hub's size probe and its
    // download (each then redirected to the CDN).
    assert_eq!(shards, 8, "{:?}", hub.requests());
}

#[test]
fn no_bin_is_fetched_where_safetensors_are_there() {
    let id = "someone/both";
    let mut files = files_of(&fixtures().join("models/tiny-openai"));
    files.extend(files_of(&fixtures().join("pytorch/tiny-openai")));
    let hub = StandIn::start(vec![HubRepo::new(id)
        .commit(COMMIT, files)
        .branch("main", COMMIT)]);
    let home = tempfile::tempdir().unwrap();
    let out = vlm_hub(&hub, home.path())
        .args([
            "classify", "--labels", "cat,dog", "-f", "json", "--model", id,
        ])
        .arg(image("horse.png"))
        .output()
        .unwrap();
    success(&out);
    let asked = hub.requests();
    assert!(
        asked.iter().any(|r| r.contains("model.safetensors")),
        "{asked:?}"
    );
    assert!(
        !asked.iter().any(|r| r.contains("pytorch_model")),
        "{asked:?}"
    );
}
