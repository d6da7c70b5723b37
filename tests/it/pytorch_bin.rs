//! PyTorch checkpoints (`pytorch_model.bin`, issue 19): read as data, never run.
//!
//! Each model folder is assembled in a temporary directory from a safetensors fixture's configs
//! and tokenizer plus a committed `.bin` (`tests/fixtures/pytorch/`, made by
//! `make_pytorch_fixtures.py` from the same weights), and the built `vlm` binary is run on it as a
//! user would.

use crate::common::{self, fixtures, image, stderr_of, success, vlm};

use std::path::{Path, PathBuf};

/// `vlm classify --format json`.
type Document = crate::common::ClassifyDocument;

/// A model folder: `base`'s files except its weights, plus every file of `pytorch/<bin>`.
fn folder(base: &str, bin: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(bin);
    std::fs::create_dir(&path).unwrap();
    for entry in std::fs::read_dir(fixtures().join("models").join(base)).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.contains(".safetensors") {
            std::fs::copy(entry.path(), path.join(&name)).unwrap();
        }
    }
    for entry in std::fs::read_dir(fixtures().join("pytorch").join(bin)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), path.join(entry.file_name())).unwrap();
    }
    (dir, path)
}

fn classify(model: &Path) -> Document {
    let mut cmd = vlm();
    // --no-cache: every run encodes its labels itself, in the same batch; a shared cache may hold
    // them from another batch, which differs in the last bits (issue 24), and this compares bits.
    cmd.args(["classify", "--no-cache", "--model"])
        .arg(model)
        .args(["--labels", "cat,dog,car,a horse", "--format", "json"]);
    for png in common::PNGS {
        cmd.arg(image(png));
    }
    let out = cmd.output().unwrap();
    success(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The probabilities and cosines of each image, in label order.
fn scores(doc: &Document) -> Vec<Vec<f32>> {
    doc.results
        .iter()
        .map(|r| {
            assert!(r.error.is_none(), "{r:?}");
            let mut p: Vec<_> = r.predictions.iter().collect();
            p.sort_by(|a, b| a.label.cmp(&b.label));
            p.iter().flat_map(|p| [p.probability, p.cosine]).collect()
        })
        .collect()
}

/// A `.bin`-only folder gives the same numbers as the safetensors folder: the same f32 weights
/// through the same code, so the tolerance is zero (bit-identical). Single file (CLIP as
/// openai/clip-vit-base-patch32's `main` holds it; SigLIP as transformers 4.36+ wrote one),
/// sharded with `pytorch_model.bin.index.json`, and with views, shared storages and tied names.
#[test]
fn bin_only_folders_classify_exactly_like_safetensors() {
    for (base, bin) in [
        ("tiny-openai", "tiny-openai"),
        ("tiny-siglip", "tiny-siglip"),
        ("tiny-siglip", "tiny-siglip-sharded"),
        ("tiny-siglip", "tiny-siglip-views"),
    ] {
        let want = classify(&fixtures().join("models").join(base));
        let (_dir, path) = folder(base, bin);
        assert!(!std::fs::read_dir(&path).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("safetensors")));
        let got = classify(&path);
        assert_eq!(got.model.family, want.model.family);
        assert_eq!(
            (&got.labels, &got.templates),
            (&want.labels, &want.templates)
        );
        assert_eq!(scores(&got), scores(&want), "{bin}");
        assert_eq!(got.results.len(), common::PNGS.len());
    }
}

/// Runs classify on `model` from inside `cwd`; asserts one `vlm:` line naming `want`, exit 2.
fn refused(model: &Path, cwd: &Path, want: &str) -> String {
    let out = vlm()
        .current_dir(cwd)
        .args(["classify", "--model"])
        .arg(model)
        .args(["--labels", "cat,dog"])
        .arg(image("horse.png"))
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("vlm: model "), "{stderr}");
    assert!(stderr.contains(want), "expected {want:?} in {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// A model folder whose `pytorch_model.bin` is `bytes`.
fn folder_with(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let (dir, path) = folder("tiny-siglip", "tiny-siglip");
    std::fs::write(path.join("pytorch_model.bin"), bytes).unwrap();
    (dir, path)
}

/// The pickle calls `os.system("touch vlm-pickle-ran")` (make_pytorch_fixtures.py checks that
/// `torch.load(weights_only=False)` does create the file): refused in one line naming the file
/// and the global, and the file is never created, in the working directory or the model's.
#[test]
fn a_pickle_that_calls_os_system_is_refused_and_nothing_runs() {
    let bytes = std::fs::read(fixtures().join("pytorch/hostile/os-system.bin")).unwrap();
    let (_dir, path) = folder_with(&bytes);
    let cwd = tempfile::tempdir().unwrap();
    let stderr = refused(&path, cwd.path(), "asks for posix.system,");
    let weights = path.join("pytorch_model.bin");
    assert!(
        stderr.contains(&format!("{} was not loaded: refused", weights.display())),
        "{stderr}"
    );
    assert!(!cwd.path().join("vlm-pickle-ran").exists());
    assert!(!path.join("vlm-pickle-ran").exists());
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0);
}

#[test]
fn truncated_and_inconsistent_bins_are_refused_in_one_line() {
    let cwd = tempfile::tempdir().unwrap();
    let whole = std::fs::read(fixtures().join("pytorch/tiny-siglip/pytorch_model.bin")).unwrap();
    let (_dir, path) = folder_with(&whole[..whole.len() / 2]);
    refused(
        &path,
        cwd.path(),
        "pytorch_model.bin is not a valid PyTorch checkpoint: not a zip archive as torch.save writes",
    );
    refused(&path, cwd.path(), "truncated (an interrupted download?)");
    for (file, want) in [
        (
            "offset-past-storage.bin",
            "reach element 6, past the storage's 4",
        ),
        (
            "numel-past-entry.bin",
            "1000 elements of F32 but the entry holds 16 bytes",
        ),
        (
            "bool-dtype.bin",
            "torch.BoolStorage, a dtype vlm does not read",
        ),
        ("odd-entry.bin", "the entry holds 6 bytes"),
        ("compressed.bin", "is compressed"),
        (
            "missing-storage.bin",
            "its storage data/7 is not in the archive",
        ),
    ] {
        let bytes = std::fs::read(fixtures().join("pytorch/hostile").join(file)).unwrap();
        let (_dir, path) = folder_with(&bytes);
        refused(&path, cwd.path(), want);
    }
}

/// transformers' order: with model.safetensors present, pytorch_model.bin is never opened (here
/// it is the os.system one, which would be refused if it were).
#[test]
fn safetensors_win_over_a_bin_in_the_same_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("both");
    std::fs::create_dir(&path).unwrap();
    for entry in std::fs::read_dir(fixtures().join("models/tiny-siglip")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), path.join(entry.file_name())).unwrap();
    }
    std::fs::copy(
        fixtures().join("pytorch/hostile/os-system.bin"),
        path.join("pytorch_model.bin"),
    )
    .unwrap();
    let got = classify(&path);
    let want = classify(&fixtures().join("models/tiny-siglip"));
    assert_eq!(scores(&got), scores(&want));
}

/// A Hub model whose snapshot has only `pytorch_model.bin` (openai/clip-vit-base-patch32's
/// `main`), in a cache laid out as Python's huggingface_hub lays it out, loads offline.
#[test]
fn a_cached_hub_model_with_only_a_bin_loads_offline() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--openai--clip-vit-base-patch32");
    let commit = "3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let (_dir, bin) = folder("tiny-openai", "tiny-openai");
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    for entry in std::fs::read_dir(&bin).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), snapshot.join(entry.file_name())).unwrap();
    }
    let out = vlm()
        .env("HF_HUB_CACHE", cache.path())
        .args([
            "classify",
            "--no-cache",
            "--model",
            "openai/clip-vit-base-patch32",
            "--labels",
            "cat,dog,car,a horse",
            "--format",
            "json",
        ])
        .args(common::PNGS.map(image))
        .output()
        .unwrap();
    success(&out);
    let got: Document = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got.model.revision.as_deref(), Some(commit));
    let want = classify(&fixtures().join("models/tiny-openai"));
    assert_eq!(scores(&got), scores(&want));
}
