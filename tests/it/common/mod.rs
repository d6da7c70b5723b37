//! Helpers shared by the integration tests (each test binary includes this module with
//! `mod common;` and uses what it needs).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

pub mod families;
pub mod hub;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The fixture PNGs: vlm's pixels are bit-exact with transformers' PIL processor on them (the JPEGs
/// differ by a grey level here and there), so tests that compare decisions use these.
pub const PNGS: [&str; 7] = [
    "camera.png",
    "coins.png",
    "color.png",
    "horse.png",
    "ihc.png",
    "logo.png",
    "page.png",
];

/// A fixture model folder, as `--model` takes it.
pub fn model(name: &str) -> String {
    fixtures().join("models").join(name).display().to_string()
}

/// A fixture aspect file (`tests/fixtures/aspects/<name>`), as `--aspects` takes it.
pub fn aspect(name: &str) -> String {
    fixtures().join("aspects").join(name).display().to_string()
}

/// A JSON file under `tests/fixtures/` (`rel`), parsed as `T`.
pub fn read_json<T: for<'de> serde::Deserialize<'de>>(rel: &str) -> T {
    let text = std::fs::read_to_string(fixtures().join(rel)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A fixture model (by folder name) loaded through the library on the CPU, as the commands load
/// it, with `towers`.
pub fn engine(
    name: &str,
    precision: vlm::engine::Precision,
    towers: vlm::model::Towers,
) -> vlm::engine::Engine {
    let opts = vlm::engine::ModelOptions {
        model: model(name),
        revision: None,
        device: "cpu".into(),
        precision,
    };
    vlm::engine::Engine::load(&opts, towers, true).unwrap()
}

/// Each JSONL line of `stdout`, parsed as `T`.
pub fn jsonl<T: for<'de> serde::Deserialize<'de>>(stdout: &str) -> Vec<T> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The cosine of two equally long vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// Each row scaled to unit length.
pub fn normalized(rows: &[Vec<f32>]) -> Vec<Vec<f32>> {
    rows.iter()
        .map(|r| {
            let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            r.iter().map(|x| x / n).collect()
        })
        .collect()
}

/// A fixture image, as an input argument.
pub fn image(name: &str) -> String {
    fixtures().join("images").join(name).display().to_string()
}

/// `vlm` with an environment that cannot reach the Hub or a user's cache by accident; the text
/// cache is the tests' shared one (use [`vlm_cache`] where the cache matters). Backtraces are on,
/// so that a test fails if one ever reaches the user.
pub fn vlm() -> Command {
    vlm_cache(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("vlm-cache"))
}

/// [`vlm`] with `VLM_CACHE_DIR` set to `cache`.
pub fn vlm_cache(cache: &Path) -> Command {
    let mut cmd = Command::cargo_bin("vlm").unwrap();
    cmd.env_remove("VLM_MODEL")
        .env_remove("XDG_CACHE_HOME")
        // The search index: never the user's (tests that index pass --db or their own folder).
        .env_remove("XDG_DATA_HOME")
        .env(
            "VLM_DATA_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("vlm-data"),
        )
        .env("RUST_BACKTRACE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", "/nonexistent/vlm-test-cache")
        .env("VLM_CACHE_DIR", cache);
    cmd
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Asserts exit code 0, showing stderr otherwise.
pub fn success(out: &Output) {
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status,
        stderr_of(out)
    );
}

/// The score head named in a JSON header's `model` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Head {
    Softmax,
    Sigmoid,
}

/// The `model` object of a `vlm classify` / `vlm tag` JSON header; unknown fields are errors.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub id: String,
    pub revision: Option<String>,
    pub family: String,
    pub head: Head,
}

/// One label's score in `vlm classify` JSON output; unknown fields are errors.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prediction {
    pub label: String,
    pub probability: f32,
    pub cosine: f32,
}

/// One image's record in `vlm classify` JSON/JSONL output; unknown fields are errors.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageResult {
    pub path: String,
    pub predictions: Vec<Prediction>,
    pub error: Option<String>,
    /// JSONL only: the run's fingerprint (`classify m=... l=... t=...`), which `--resume` checks.
    #[serde(default)]
    pub run: Option<String>,
}

/// A whole `vlm classify --format json` document; unknown fields are errors.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyDocument {
    pub model: ModelInfo,
    pub labels: Vec<String>,
    pub templates: Vec<String>,
    pub results: Vec<ImageResult>,
}

/// CRC-32 (ISO-HDLC, as PNG uses it), bit by bit: the tests write only a few small chunks.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Appends one PNG chunk (length, type, data, CRC).
pub fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A well-formed PNG (valid CRCs) whose IHDR claims `width`×`height` RGB8 pixels, followed by
/// a few bytes of real deflate data: the classic decompression bomb header.
pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    png_chunk(&mut out, b"IHDR", &ihdr);
    // zlib stream of 64 zero bytes: the first scanline's start.
    let idat = [
        0x78, 0x9c, 0x63, 0x60, 0x18, 0x05, 0x00, 0x01, 0x00, 0x00, 0x40, 0x00, 0x01,
    ];
    png_chunk(&mut out, b"IDAT", &idat);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// The largest absolute difference between two equally shaped lists of rows (embeddings,
/// probabilities), asserting the shapes match.
pub fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

/// Runs `cmd` as `nobody` (uid and gid 65534) when the tests run as root, whom file permissions do
/// not bind; as anyone else, as that user. Returns whether it was switched.
#[cfg(unix)]
pub fn as_nobody(cmd: &mut std::process::Command) -> bool {
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        cmd.uid(65534).gid(65534);
    }
    root
}

/// Copies the files of a folder (not recursive) into `to`, made if missing.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A float32 `.npy` as `vlm embed -f npy` writes it: (rows, columns, data).
pub fn read_npy(path: &Path) -> (usize, usize, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + len) % 64, 0);
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape = header.split("'shape': (").nth(1).unwrap();
    let shape = shape.split(')').next().unwrap();
    let dims: Vec<usize> = shape
        .split(',')
        .map(|d| d.trim().parse().unwrap())
        .collect();
    let data: Vec<f32> = bytes[10 + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), dims[0] * dims[1]);
    (dims[0], dims[1], data)
}

pub mod models;

/// What one run of a child process left: exit code, stdout, stderr and its peak resident set in
/// KiB, read with `wait4` (the child's own peak, so tests can run side by side).
#[cfg(target_os = "linux")]
pub struct Measured {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub peak_kib: i64,
}

/// Runs `cmd` to the end, its stdout and stderr going to files in `dir` (nothing reads pipes
/// while `wait4` waits), and measures its peak RSS.
#[cfg(target_os = "linux")]
pub fn run_measured(mut cmd: std::process::Command, dir: &Path) -> Measured {
    use std::fs::File;
    use std::process::Stdio;
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    // Reaped by `wait4` below, which clippy's zombie check cannot see.
    #[allow(clippy::zombie_processes)]
    let child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: waits for our own child (std has not reaped it: `wait` was never called) and fills
    // the status and rusage it is given.
    let usage = unsafe {
        assert_eq!(
            libc::wait4(child.id() as i32, &mut status, 0, usage.as_mut_ptr()),
            child.id() as i32
        );
        usage.assume_init()
    };
    Measured {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stdout: std::fs::read_to_string(out_path).unwrap(),
        stderr: std::fs::read_to_string(err_path).unwrap(),
        peak_kib: usage.ru_maxrss,
    }
}
