//! What the search index trusts and what its readers touch (issues 20 and 23): a model whose files
//! change at the same path is embedded again, never mixed; vector lengths are checked on every
//! write and merge; `search`/`dupes`/the status never write the file they read, also in a folder
//! they cannot write; thresholds and empty queries are refused; a text query is encoded as typed;
//! `--export` gives the stored vectors; `vlm index` without paths shows the index.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{copy_dir, fixtures, read_npy, stderr_of, stdout_of, success, vlm};
use serde::Deserialize;
use serde_json::Value;

const PHOTOS: [&str; 3] = ["camera.png", "horse.png", "logo.png"];

/// A folder of three fixture photos and a copy of the tiny CLIP model, with its index file.
struct Lib {
    dir: tempfile::TempDir,
}

impl Lib {
    fn new() -> Lib {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("photos")).unwrap();
        for name in PHOTOS {
            std::fs::copy(
                fixtures().join("images").join(name),
                dir.path().join("photos").join(name),
            )
            .unwrap();
        }
        copy_dir(
            &fixtures().join("models/tiny-openai"),
            &dir.path().join("model"),
        );
        Lib { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }

    /// `vlm ARGS --db DB`.
    fn run(&self, db: &str, args: &[&str]) -> Output {
        vlm()
            .args(args)
            .args(["--db", &self.s(db)])
            .output()
            .unwrap()
    }
}

/// Every row of an index file: (path, embedding), by path.
fn rows(db: &Path) -> Vec<(String, Vec<f32>)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT path, embedding FROM images ORDER BY path")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            let blob: Vec<u8> = r.get(1)?;
            let v = blob
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((r.get::<_, String>(0)?, v))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// `vlm embed -f json` of the photos with `model_dir`: path -> embedding.
fn embedded(lib: &Lib, model_dir: &str) -> Vec<(String, Vec<f32>)> {
    let out = vlm()
        .args(["embed", "-f", "json", "-m", model_dir, &lib.s("photos")])
        .output()
        .unwrap();
    success(&out);
    let doc: Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let e = r["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            (r["path"].as_str().unwrap().to_string(), e)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Same paths, vectors within `tol` (the same image in another batch may differ in the last bit).
fn assert_same(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)], tol: f32) {
    assert_eq!(a.len(), b.len());
    for ((pa, va), (pb, vb)) in a.iter().zip(b) {
        assert!(
            pa.ends_with(pb.as_str()) || pb.ends_with(pa.as_str()),
            "{pa} {pb}"
        );
        assert_eq!(va.len(), vb.len(), "{pa}");
        let diff = va
            .iter()
            .zip(vb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < tol, "{pa}: {diff}");
    }
}

/// Exit 2 and one stderr line holding `needle`.
fn refused(out: &Output, needle: &str) {
    let stderr = stderr_of(out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(needle), "{stderr}");
}

/// Rewrites a safetensors file with one F32 tensor's signs flipped: the same size and shapes,
/// other numbers (a tiny stand-in for "new weights at the same path").
fn negate_tensor(file: &Path, name: &str) {
    let mut bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header[name]["dtype"], "F32");
    let offsets = header[name]["data_offsets"].as_array().unwrap();
    let (a, b) = (
        8 + n + offsets[0].as_u64().unwrap() as usize,
        8 + n + offsets[1].as_u64().unwrap() as usize,
    );
    for i in (a..b).step_by(4) {
        bytes[i + 3] ^= 0x80;
    }
    let len = std::fs::metadata(file).unwrap().len();
    std::fs::write(file, &bytes).unwrap();
    assert_eq!(std::fs::metadata(file).unwrap().len(), len);
}

#[test]
fn a_model_changed_at_the_same_path_is_embedded_again_never_mixed() {
    let lib = Lib::new();
    let (photos, m) = (lib.s("photos"), lib.s("model"));
    success(&lib.run("a.sqlite", &["index", "-m", &m, &photos]));
    success(&lib.run("b.sqlite", &["index", "-m", &m, &photos]));
    let before = rows(&lib.path("a.sqlite"));
    assert_eq!(before.len(), 3);

    // New weights of the same sizes at the same path.
    negate_tensor(
        &lib.path("model/model.safetensors"),
        "visual_projection.weight",
    );
    // A query cannot be encoded with the changed model against the old vectors.
    refused(
        &lib.run("a.sqlite", &["search", "a horse"]),
        "changed since its images were indexed",
    );
    let again = lib.run("a.sqlite", &["index", &photos]);
    success(&again);
    assert!(stderr_of(&again).contains("3 embeddings were dropped"));
    assert!(stderr_of(&again).contains("3 added, 0 updated"));
    let after = rows(&lib.path("a.sqlite"));
    // Every row is the new model's (the old ones scored cosine -1 against it).
    assert_same(&after, &embedded(&lib, &m), 1e-5);
    for ((_, old), (_, new)) in before.iter().zip(&after) {
        assert!(dot(old, new) < -0.99, "{}", dot(old, new));
    }
    // Now in step: nothing to do.
    let unchanged = lib.run("a.sqlite", &["index", &photos]);
    success(&unchanged);
    assert!(
        stderr_of(&unchanged).contains("3 unchanged"),
        "{}",
        stderr_of(&unchanged)
    );

    // An index made with the old weights is not merged into one made with the new.
    refused(
        &lib.run("a.sqlite", &["index", "--merge", &lib.s("b.sqlite")]),
        "other model files",
    );
    assert_eq!(rows(&lib.path("a.sqlite")), after);

    // Another model of another embedding size (tiny-laion: 40 floats, not 48) at the same path.
    std::fs::remove_dir_all(lib.path("model")).unwrap();
    copy_dir(&fixtures().join("models/tiny-laion"), &lib.path("model"));
    let resized = lib.run("a.sqlite", &["index", &photos]);
    success(&resized);
    let after = rows(&lib.path("a.sqlite"));
    assert!(after.iter().all(|(_, v)| v.len() == 40), "{after:?}");
    assert_same(&after, &embedded(&lib, &m), 1e-5);
}

#[test]
fn merge_checks_every_vector_length() {
    let lib = Lib::new();
    success(&lib.run(
        "src.sqlite",
        &["index", "-m", &lib.s("model"), &lib.s("photos")],
    ));
    // A 2-float vector in a 48-float index (as a damaged or hand-made file could hold).
    let conn = rusqlite::Connection::open(lib.path("src.sqlite")).unwrap();
    conn.execute(
        "UPDATE images SET embedding = zeroblob(8) WHERE path = (SELECT max(path) FROM images)",
        [],
    )
    .unwrap();
    drop(conn);
    refused(
        &lib.run("dest.sqlite", &["index", "--merge", &lib.s("src.sqlite")]),
        "an embedding of 8 bytes",
    );
    assert!(rows(&lib.path("dest.sqlite")).is_empty());
}

#[test]
fn readers_never_turn_a_file_into_an_index() {
    let lib = Lib::new();
    let horse = lib.s("photos/horse.png");
    for (name, content) in [("zero.db", &b""[..]), ("one.db", &b"x"[..])] {
        std::fs::write(lib.path(name), content).unwrap();
        for args in [
            &["search", "a horse"][..],
            &["search", "--image", &horse],
            &["dupes"],
            &["index"],
        ] {
            let out = lib.run(name, args);
            refused(&out, name);
            assert_eq!(std::fs::read(lib.path(name)).unwrap(), content, "{args:?}");
        }
    }
    // Only `vlm index` makes an index, of an empty file only.
    refused(
        &lib.run("one.db", &["index", &lib.s("photos")]),
        "1-byte file",
    );
    assert_eq!(std::fs::read(lib.path("one.db")).unwrap(), b"x");
    let mut names: Vec<_> = std::fs::read_dir(lib.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["model", "one.db", "photos", "zero.db"]);
}

#[test]
fn cosine_thresholds_and_empty_queries_are_refused() {
    let lib = Lib::new();
    for bad in ["NaN", "inf", "2", "-1.5", "x"] {
        for cmd in [&["search", "a horse"][..], &["dupes"]] {
            let out = vlm()
                .args(cmd)
                .args(["--db", &lib.s("none.sqlite"), "--threshold", bad])
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{cmd:?} {bad}");
            assert!(
                stderr_of(&out).contains("is not a cosine between -1 and 1"),
                "{}",
                stderr_of(&out)
            );
        }
    }
    for text in ["", "  \t"] {
        refused(
            &lib.run("none.sqlite", &["search", text]),
            "the search text is empty",
        );
    }
    assert!(!lib.path("none.sqlite").exists());
}

/// The model and image fixtures must be readable by `nobody` for the read-only-folder test; when
/// they are not (a checkout under a private home folder), root cannot test it.
fn nobody_can_run_vlm() -> bool {
    use std::os::unix::process::CommandExt;
    let probe = std::process::Command::new(assert_cmd::cargo::cargo_bin("vlm"))
        .arg("--version")
        .uid(65534)
        .gid(65534)
        .output();
    probe.is_ok_and(|o| o.status.success())
}

/// An index in a folder the reader cannot write: SQLite cannot make the WAL's `-shm` file there
/// ("attempt to write a readonly database" before issue 20.12). Permissions do not bind root, so
/// as root the readers run as `nobody`.
#[cfg(unix)]
#[test]
fn an_index_in_a_read_only_folder_can_be_searched() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    let lib = Lib::new();
    let root = lib.dir.path();
    std::fs::create_dir(lib.path("ro")).unwrap();
    success(&lib.run(
        "ro/i.sqlite",
        &["index", "-m", &lib.s("model"), &lib.s("photos")],
    ));
    let before = std::fs::read(lib.path("ro/i.sqlite")).unwrap();
    for dir in [root, &lib.path("photos"), &lib.path("model")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(lib.path("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root && !nobody_can_run_vlm() {
        println!("note: skipping: user nobody cannot run vlm here");
        return;
    }
    let reader = |args: &[&str]| {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("vlm"));
        cmd.env_remove("VLM_MODEL")
            .env("HF_HUB_OFFLINE", "1")
            .env("VLM_CACHE_DIR", "/nonexistent/vlm-test-cache")
            .args(args)
            .args(["--db", &lib.s("ro/i.sqlite")]);
        if as_root {
            cmd.uid(65534).gid(65534);
        }
        cmd.output().unwrap()
    };
    let out = reader(&[
        "search",
        "-f",
        "json",
        "--image",
        &lib.s("photos/horse.png"),
    ]);
    success(&out);
    let doc: Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert_eq!(doc["results"].as_array().unwrap().len(), 3);
    assert!(doc["results"][0]["path"]
        .as_str()
        .unwrap()
        .ends_with("/horse.png"));
    success(&reader(&["dupes", "-f", "json"]));
    success(&reader(&["index"]));
    std::fs::set_permissions(lib.path("ro"), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(std::fs::read(lib.path("ro/i.sqlite")).unwrap(), before);
}

#[test]
fn a_text_query_is_encoded_as_typed_unless_templates_are_given() {
    let lib = Lib::new();
    let m = lib.s("model");
    success(&lib.run("i.sqlite", &["index", "-m", &m, &lib.s("photos")]));
    let text_embedding = |template: &str| -> Vec<f32> {
        let out = vlm()
            .args(["embed", "-f", "json", "-m", &m, "--text", "a red bicycle"])
            .args(["-t", template])
            .output()
            .unwrap();
        success(&out);
        let doc: Value = serde_json::from_str(&stdout_of(&out)).unwrap();
        doc["results"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let stored = rows(&lib.path("i.sqlite"));
    let check = |extra: &[&str], template: &str| {
        let out = lib.run(
            "i.sqlite",
            &[&["search", "a red bicycle", "-f", "json"], extra].concat(),
        );
        success(&out);
        let doc: Value = serde_json::from_str(&stdout_of(&out)).unwrap();
        let query = text_embedding(template);
        for hit in doc["results"].as_array().unwrap() {
            let path = hit["path"].as_str().unwrap();
            let (_, v) = stored.iter().find(|(p, _)| p == path).unwrap();
            // Tolerance: f32 sums in another order.
            let want = dot(&query, v);
            let got = hit["score"].as_f64().unwrap() as f32;
            assert!(
                (got - want).abs() < 1e-5,
                "{template}: {path}: {got} vs {want}"
            );
        }
        doc["query"].clone()
    };
    // As typed: the header names no template.
    let query = check(&[], "{}");
    assert_eq!(query, serde_json::json!({"text": "a red bicycle"}));
    let query = check(&["-t", "a photo of a {}."], "a photo of a {}.");
    assert_eq!(query["templates"], serde_json::json!(["a photo of a {}."]));
}

#[test]
fn export_gives_the_stored_vectors_as_embed_writes_them() {
    let lib = Lib::new();
    let m = lib.s("model");
    let out = lib.run(
        "i.sqlite",
        &[
            "index",
            "-m",
            &m,
            &lib.s("photos"),
            "--export",
            &lib.s("idx.npy"),
        ],
    );
    success(&out);
    let stored = rows(&lib.path("i.sqlite"));
    let (n, d, data) = read_npy(&lib.path("idx.npy"));
    assert_eq!((n, d), (3, 48));
    let paths = std::fs::read_to_string(lib.path("idx.paths.txt")).unwrap();
    let paths: Vec<&str> = paths.lines().collect();
    for (i, (path, v)) in stored.iter().enumerate() {
        assert_eq!(paths[i], path);
        // Bit for bit the index's vectors.
        let row: Vec<u32> = data[i * d..(i + 1) * d]
            .iter()
            .map(|x| x.to_bits())
            .collect();
        let want: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
        assert_eq!(row, want, "{path}");
    }
    // And what `vlm embed -f npy` gives for the same files, in the same format.
    let out = vlm()
        .args(["embed", "-m", &m, &lib.s("photos"), "-o", &lib.s("emb.npy")])
        .output()
        .unwrap();
    success(&out);
    let (en, ed, edata) = read_npy(&lib.path("emb.npy"));
    assert_eq!((en, ed), (n, d));
    let epaths = std::fs::read_to_string(lib.path("emb.paths.txt")).unwrap();
    for (i, p) in epaths.lines().enumerate() {
        let j = paths.iter().position(|q| q == &p).unwrap();
        let a: Vec<u32> = edata[i * d..(i + 1) * d]
            .iter()
            .map(|x| x.to_bits())
            .collect();
        let b: Vec<u32> = data[j * d..(j + 1) * d]
            .iter()
            .map(|x| x.to_bits())
            .collect();
        assert_eq!(a, b, "{p}");
    }
    // Export alone, without indexing, needs no model.
    std::fs::rename(lib.path("model"), lib.path("model.away")).unwrap();
    success(&lib.run("i.sqlite", &["index", "--export", &lib.s("again.npy")]));
    assert_eq!(
        std::fs::read(lib.path("again.npy")).unwrap(),
        std::fs::read(lib.path("idx.npy")).unwrap()
    );
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Status {
    db: String,
    bytes: u64,
    schema_version: i32,
    models: Vec<ModelStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelStatus {
    model: String,
    revision: Option<String>,
    dtype: String,
    family: String,
    dimension: Option<usize>,
    images: usize,
    failures: usize,
    created: i64,
    last_indexed: Option<i64>,
    fingerprinted: bool,
}

#[test]
fn index_without_paths_shows_the_index() {
    let lib = Lib::new();
    std::fs::write(lib.path("photos/broken.png"), b"not a png").unwrap();
    let out = lib.run(
        "i.sqlite",
        &["index", "-m", &lib.s("model"), &lib.s("photos")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let out = lib.run("i.sqlite", &["index"]);
    success(&out);
    let s: Status = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert_eq!(s.db, lib.s("i.sqlite"));
    assert_eq!(
        s.bytes,
        std::fs::metadata(lib.path("i.sqlite")).unwrap().len()
    );
    assert_eq!(s.schema_version, 2);
    assert_eq!(s.models.len(), 1);
    let m = &s.models[0];
    let canonical = std::fs::canonicalize(lib.path("model")).unwrap();
    assert_eq!(m.model, canonical.display().to_string());
    assert_eq!(
        (m.revision.as_deref(), m.dtype.as_str(), m.family.as_str()),
        (None, "f32", "clip")
    );
    assert_eq!((m.dimension, m.images, m.failures), (Some(48), 3, 1));
    assert!(m.fingerprinted);
    let last = m.last_indexed.unwrap();
    assert!(m.created > 1_700_000_000 && last >= m.created, "{m:?}");

    // No index there: one line saying how to make one.
    refused(&lib.run("none.sqlite", &["index"]), "no index at");
}
