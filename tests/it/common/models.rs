//! Hostile model folders, built the same way by every test that needs one: a copy of a fixture
//! model (`tests/fixtures/models/...`) in a temporary folder, with its JSON files or its
//! safetensors bytes edited, then the built `vlm` run on it as a user would.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::families::Family;
use super::{fixtures, image, vlm};

/// A copy of a fixture model, in its own temporary folder.
pub struct Model {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Model {
    pub fn copy(fixture: &str) -> Model {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(fixture);
        std::fs::create_dir(&path).unwrap();
        for entry in std::fs::read_dir(fixtures().join("models").join(fixture)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), path.join(entry.file_name())).unwrap();
        }
        Model { _dir: dir, path }
    }

    pub fn openai() -> Model {
        Model::copy("tiny-openai")
    }

    /// A copy of the family's hostile-harness fixture ([`Family::hostile`]).
    pub fn of(family: &Family) -> Model {
        Model::copy(family.hostile)
    }

    /// The folder's one safetensors file (`model.safetensors`, `open_clip_model.safetensors`).
    pub fn weights(&self) -> PathBuf {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        assert_eq!(files.len(), 1, "{}: one weight file", self.path.display());
        files.remove(0)
    }

    pub fn edit_json(&self, file: &str, edit: impl FnOnce(&mut Value)) {
        let path = self.path.join(file);
        let mut value: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut value);
        std::fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
    }

    /// Edits `vision_config_dict` (the fixture's override, which wins over `vision_config`).
    pub fn edit_vision(&self, field: &str, value: Value) {
        self.edit_json("config.json", |c| c["vision_config_dict"][field] = value);
    }

    pub fn edit_text(&self, field: &str, value: Value) {
        self.edit_json("config.json", |c| c["text_config_dict"][field] = value);
    }

    /// Overwrites every f32 of tensor `name` with `value`.
    pub fn fill(&self, name: &str, value: f32) {
        let file = Safetensors::read(&self.weights());
        let mut bytes = file.bytes.clone();
        let (start, end) = file.range(name);
        assert_eq!(file.header[name]["dtype"], "F32");
        for chunk in bytes[start..end].chunks_exact_mut(4) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        std::fs::write(self.weights(), bytes).unwrap();
    }

    /// Overwrites element `index` (flat) of f32 tensor `name` with `value`.
    pub fn set(&self, name: &str, index: usize, value: f32) {
        let file = Safetensors::read(&self.weights());
        let mut bytes = file.bytes.clone();
        let (start, end) = file.range(name);
        let at = start + 4 * index;
        assert!(at + 4 <= end);
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        std::fs::write(self.weights(), bytes).unwrap();
    }

    /// Rewrites the safetensors header with `edit`, keeping the data bytes as they are.
    pub fn edit_header(&self, edit: impl FnOnce(&mut Value)) {
        let file = Safetensors::read(&self.weights());
        let mut header = file.header.clone();
        edit(&mut header);
        let mut out = write_header(&header);
        out.extend_from_slice(&file.bytes[file.data_start..]);
        std::fs::write(self.weights(), out).unwrap();
    }
}

pub fn write_header(header: &Value) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out
}

/// A safetensors file, read back as its header JSON and bytes.
pub struct Safetensors {
    pub header: Value,
    pub data_start: usize,
    pub bytes: Vec<u8>,
}

impl Safetensors {
    pub fn read(path: &Path) -> Safetensors {
        let bytes = std::fs::read(path).unwrap();
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
        Safetensors {
            header,
            data_start: 8 + len,
            bytes,
        }
    }

    /// Absolute byte range of tensor `name`.
    pub fn range(&self, name: &str) -> (usize, usize) {
        let offsets = &self.header[name]["data_offsets"];
        let begin = offsets[0].as_u64().unwrap() as usize;
        let end = offsets[1].as_u64().unwrap() as usize;
        (self.data_start + begin, self.data_start + end)
    }
}

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to the end and keeps what it printed.
pub fn run(cmd: &mut assert_cmd::Command) -> Run {
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// `vlm classify` of horse.png with `model`, JSONL, no text cache, and `extra` arguments.
pub fn classify(model: &Path, labels: &str, extra: &[&str]) -> Run {
    run(vlm()
        .arg("classify")
        .arg("--model")
        .arg(model)
        .args(["--labels", labels, "--format", "jsonl", "--no-cache"])
        .args(extra)
        .arg("--")
        .arg(image("horse.png")))
}

/// `vlm tag` of horse.png with `model` and the `kind` test aspect, JSONL, no text cache.
pub fn tag(model: &Path) -> Run {
    run(vlm()
        .args(["tag", "--format", "jsonl", "--no-cache", "--aspects"])
        .arg(fixtures().join("aspects/kind.toml"))
        .arg("--model")
        .arg(model)
        .arg("--")
        .arg(image("horse.png")))
}

/// Exit 2, nothing on stdout, and one line on stderr that names the model and says `want`.
#[track_caller]
pub fn assert_model_error(run: &Run, model: &Model, want: &str) {
    assert_eq!(
        run.code,
        Some(2),
        "stdout {} stderr {}",
        run.stdout,
        run.stderr
    );
    assert_eq!(run.stdout, "", "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    let prefix = format!("vlm: model {}: ", model.path.display());
    assert!(run.stderr.starts_with(&prefix), "{}", run.stderr);
    assert!(
        run.stderr.contains(want),
        "expected {want:?} in {}",
        run.stderr
    );
}

impl Model {
    pub fn siglip2() -> Model {
        Model::copy("tiny-siglip2")
    }

    /// The gzipped `tokenizer.json.gz` of the folder, written out as a plain `tokenizer.json`
    /// after `edit` (the `.gz` is removed).
    pub fn edit_gz_tokenizer(&self, edit: impl FnOnce(&mut Value)) {
        use std::io::Read;
        let gz = self.path.join("tokenizer.json.gz");
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&gz).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        let mut value: Value = serde_json::from_str(&text).unwrap();
        edit(&mut value);
        std::fs::write(
            self.path.join("tokenizer.json"),
            serde_json::to_vec(&value).unwrap(),
        )
        .unwrap();
        std::fs::remove_file(gz).unwrap();
    }
}
