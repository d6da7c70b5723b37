//! `vlm embed`, `vlm index`, `vlm search` and `vlm dupes` through the built binary on the fixture
//! models: embeddings against transformers' numbers, incremental indexing (without the model when
//! nothing changed), damaged and foreign index files, concurrent and interrupted runs, shards and
//! merging, search ranking and every output format, and copies found by `dupes`.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{copy_dir, fixtures, image, model, read_npy, stderr_of, stdout_of, success, vlm};
use image::ImageEncoder;
use serde_json::Value;

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

/// f32 embeddings from identical pixels (as tests/it/parity.rs).
const EMBED_TOL: f32 = 1e-4;
/// From image files: JPEG decoding differs by a grey level here and there (as tests/it/parity.rs).
const FILE_TOL: f32 = 2e-3;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn normalized(v: &[f32]) -> Vec<f32> {
    let n = dot(v, v).sqrt();
    v.iter().map(|x| x / n).collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// transformers' image embeddings of the fixture images, normalised, by file name.
fn reference_images(model: &str) -> Vec<(String, Vec<f32>)> {
    let text = std::fs::read_to_string(fixtures().join(format!("reference/{model}.json"))).unwrap();
    let r: Value = serde_json::from_str(&text).unwrap();
    r["images"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r["image_embeds"].as_array().unwrap())
        .map(|(n, e)| (n.as_str().unwrap().to_string(), normalized(&floats(e))))
        .collect()
}

/// A run of `vlm` with its index in `data`.
fn vlm_data(data: &Path) -> assert_cmd::Command {
    let mut cmd = vlm();
    cmd.env("VLM_DATA_DIR", data);
    cmd
}

/// (path, embedding; `None` for a failed image) records of `vlm embed`.
type Embedded = Vec<(String, Option<Vec<f32>>)>;

/// `vlm embed -f json` of `paths`: the header and the records.
fn embed(model_dir: &str, paths: &[String]) -> (Value, Embedded) {
    let out = vlm()
        .args(["embed", "-f", "json", "-m", model_dir])
        .args(paths)
        .output()
        .unwrap();
    success(&out);
    let doc: Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    let records = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["embedding"].as_array().map(|_| floats(&r["embedding"])),
            )
        })
        .collect();
    (doc, records)
}

/// A folder of copies of the fixture images, and a copy of the model: tests may move either.
struct Library {
    dir: tempfile::TempDir,
}

impl Library {
    fn new() -> Library {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("photos")).unwrap();
        for name in IMAGES {
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
        Library { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }

    fn db(&self) -> PathBuf {
        self.path("data/index.sqlite")
    }

    fn vlm(&self) -> assert_cmd::Command {
        vlm_data(&self.path("data"))
    }

    /// `vlm index` with `args`; `-v` so that stderr says whether the model was loaded.
    fn index(&self, args: &[&str]) -> Output {
        self.vlm()
            .arg("index")
            .arg("-v")
            .args(args)
            .output()
            .unwrap()
    }
}

/// Every row of the index file: (path, embedding), sorted by path.
fn db_rows(db: &Path) -> Vec<(String, Vec<f32>)> {
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

/// Whether two sets of rows hold the same paths with the same vectors (to float rounding: the
/// same image in another batch may differ in the last bit).
fn same_rows(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((pa, va), (pb, vb))| {
            pa == pb && va.len() == vb.len() && va.iter().zip(vb).all(|(x, y)| (x - y).abs() < 1e-5)
        })
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}

/// The summary line's counts: "N added, N updated, N removed, N unchanged".
fn counts(out: &Output) -> (usize, usize, usize, usize) {
    let stderr = stderr_of(out);
    let line = stderr
        .lines()
        .find(|l| l.contains(" added, "))
        .unwrap_or_else(|| panic!("no summary: {stderr}"));
    let n = |word: &str| -> usize {
        let before = line.split(&format!(" {word}")).next().unwrap();
        before
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (n("added"), n("updated"), n("removed"), n("unchanged"))
}

fn one_error_line(out: &Output, needle: &str) {
    let stderr = stderr_of(out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(needle), "{stderr}");
}

#[test]
fn embed_gives_transformers_image_embeddings_normalised() {
    for name in ["tiny-openai", "tiny-laion"] {
        let reference = reference_images(name);
        let paths: Vec<String> = reference.iter().map(|(n, _)| image(n)).collect();
        let (doc, records) = embed(&model(name), &paths);
        assert_eq!(doc["model"]["id"], model(name));
        assert_eq!(doc["model"]["revision"], Value::Null);
        assert_eq!(doc["dtype"], "f32");
        assert_eq!(doc["dimension"], reference[0].1.len());
        assert_eq!(doc["normalized"], true);
        for ((file, want), (path, got)) in reference.iter().zip(&records) {
            assert_eq!(path, &image(file));
            let got = got.as_ref().unwrap();
            assert!((dot(got, got) - 1.0).abs() < 1e-5);
            let diff = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // PNGs decode to transformers' exact pixels; JPEGs within a grey level or so.
            let tol = if file.ends_with(".png") {
                EMBED_TOL
            } else {
                FILE_TOL
            };
            assert!(diff <= tol, "{name} {file}: differs by {diff}");
            assert!(dot(got, want) >= 1.0 - FILE_TOL, "{name} {file}");
        }
    }
}

#[test]
fn embed_texts_are_the_ensembled_label_embeddings() {
    let text = std::fs::read_to_string(fixtures().join("reference/tiny-openai.json")).unwrap();
    let r: Value = serde_json::from_str(&text).unwrap();
    let c = &r["classify"];
    let mut cmd = vlm();
    cmd.args(["embed", "-f", "jsonl", "-m", &model("tiny-openai")]);
    for l in c["labels"].as_array().unwrap() {
        cmd.args(["--text", l.as_str().unwrap()]);
    }
    for t in c["templates"].as_array().unwrap() {
        cmd.args(["-t", t.as_str().unwrap()]);
    }
    let out = cmd.output().unwrap();
    success(&out);
    let stdout = stdout_of(&out);
    // JSONL has no header line (issue 23): one record per text, nothing else.
    let lines = stdout.lines();
    assert_eq!(lines.clone().count(), c["labels"].as_array().unwrap().len());
    for ((line, label), want) in lines
        .zip(c["labels"].as_array().unwrap())
        .zip(c["label_embeds"].as_array().unwrap())
    {
        let rec: Value = serde_json::from_str(line).unwrap();
        assert_eq!(&rec["text"], label);
        let got = floats(&rec["embedding"]);
        let diff = got
            .iter()
            .zip(floats(want))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff <= EMBED_TOL, "{label}: {diff}");
    }
}

/// Reads a float32 N x D `.npy` as this writer makes it (and checks its header).
#[test]
fn embed_npy_leaves_failed_images_out_and_lists_the_paths() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("emb.npy");
    let missing = dir.path().join("missing.png").display().to_string();
    let paths = [image("horse.png"), missing.clone(), image("retina.jpg")];
    let out = vlm()
        .args(["embed", "-m", &model("tiny-openai"), "-o"])
        .arg(&npy)
        .args(&paths)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains(&missing), "{}", stderr_of(&out));
    let (rows, dim, data) = read_npy(&npy);
    assert_eq!((rows, dim), (2, 48));
    let names = std::fs::read_to_string(dir.path().join("emb.paths.txt")).unwrap();
    assert_eq!(names, format!("{}\n{}\n", paths[0], paths[2]));
    let (_, json) = embed(&model("tiny-openai"), &[paths[0].clone(), paths[2].clone()]);
    for (i, (_, e)) in json.iter().enumerate() {
        assert_eq!(&data[i * 48..(i + 1) * 48], e.as_ref().unwrap().as_slice());
    }
    // No temporary file is left beside them.
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec!["emb.npy", "emb.paths.txt"]);

    let out = vlm()
        .args([
            "embed",
            "-f",
            "npy",
            "--text",
            "a cat",
            "-m",
            &model("tiny-openai"),
        ])
        .output()
        .unwrap();
    one_error_line(&out, "needs --output");
}

#[test]
fn index_is_incremental_and_needs_no_model_when_nothing_changed() {
    let lib = Library::new();
    let photos = lib.s("photos");
    let first = lib.index(&["-m", &lib.s("model"), &photos]);
    success(&first);
    assert_eq!(counts(&first), (9, 0, 0, 0));
    assert!(db_rows(&lib.db()).len() == 9);

    // The stored vectors are the ones `vlm embed` (and so classify) computes.
    let paths: Vec<String> = IMAGES
        .iter()
        .map(|n| lib.s(&format!("photos/{n}")))
        .collect();
    let (_, embedded) = embed(&lib.s("model"), &paths);
    let rows = db_rows(&lib.db());
    for (path, e) in &embedded {
        let (_, stored) = rows.iter().find(|(p, _)| p == path).unwrap();
        let diff = stored
            .iter()
            .zip(e.as_ref().unwrap())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{path}: {diff}");
    }

    // Nothing changed: the model is not even looked at (its folder is gone).
    std::fs::rename(lib.path("model"), lib.path("model.away")).unwrap();
    let again = lib.index(&[&photos]);
    success(&again);
    assert_eq!(counts(&again), (0, 0, 0, 9));
    assert!(
        stderr_of(&again).contains("model not loaded"),
        "{}",
        stderr_of(&again)
    );

    // A deleted file leaves, still without the model.
    std::fs::remove_file(lib.path("photos/coins.png")).unwrap();
    let removed = lib.index(&[&photos]);
    success(&removed);
    assert_eq!(counts(&removed), (0, 0, 1, 8));
    assert!(!db_rows(&lib.db())
        .iter()
        .any(|(p, _)| p.ends_with("coins.png")));

    // A new file needs the model: its folder is gone, which is a model error naming it.
    std::fs::copy(lib.path("photos/horse.png"), lib.path("photos/horse2.png")).unwrap();
    let needs_model = lib.index(&[&photos]);
    one_error_line(&needs_model, "no such folder");
    std::fs::rename(lib.path("model.away"), lib.path("model")).unwrap();

    // A changed file (same size, new time; and new content) is embedded again; only it.
    let page = lib.path("photos/page.png");
    let f = std::fs::File::options().write(true).open(&page).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    std::fs::copy(lib.path("photos/camera.png"), lib.path("photos/logo.png")).unwrap();
    let changed = lib.index(&[&photos]);
    success(&changed);
    assert_eq!(counts(&changed), (1, 2, 0, 6));
    let rows = db_rows(&lib.db());
    let row = |name: &str| {
        rows.iter()
            .find(|(p, _)| p.ends_with(&format!("/{name}")))
            .unwrap()
            .1
            .clone()
    };
    assert!(close(&row("logo.png"), &row("camera.png")));
    assert!(close(&row("horse2.png"), &row("horse.png")));

    // The same folder given another way is the same files.
    let relative = lib
        .vlm()
        .current_dir(lib.path("photos"))
        .args(["index", "-v", "."])
        .output()
        .unwrap();
    success(&relative);
    assert_eq!(counts(&relative), (0, 0, 0, 9));
}

#[test]
fn broken_files_are_reported_remembered_and_retried_when_they_change() {
    let lib = Library::new();
    std::fs::write(
        lib.path("photos/broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    let photos = lib.s("photos");
    let first = lib.index(&["-m", &lib.s("model"), &photos]);
    assert_eq!(first.status.code(), Some(1), "{}", stderr_of(&first));
    assert!(stderr_of(&first).contains("broken.png"));
    assert_eq!(counts(&first), (9, 0, 0, 0));
    // Unchanged, it is not tried again (and the model is not needed).
    let second = lib.index(&[&photos]);
    success(&second);
    assert!(stderr_of(&second).contains("model not loaded"));
    assert!(stderr_of(&second).contains("1 files failed in an earlier run"));
    // Repaired, it is indexed.
    std::fs::copy(lib.path("photos/horse.png"), lib.path("photos/broken.png")).unwrap();
    let third = lib.index(&[&photos]);
    success(&third);
    assert_eq!(counts(&third), (1, 0, 0, 9));
}

#[test]
fn the_index_file_is_versioned_and_foreign_or_damaged_files_are_refused() {
    let lib = Library::new();
    success(&lib.index(&["-m", &lib.s("model"), &lib.s("photos")]));
    let conn = rusqlite::Connection::open(lib.db()).unwrap();
    let version: i32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    let app: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    let page: i64 = conn
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .unwrap();
    assert_eq!(
        (version, app, mode.as_str(), page),
        (2, 0x766c_6d69, "wal", 16384)
    );
    drop(conn);

    let dir = tempfile::tempdir().unwrap();
    // Not SQLite at all.
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "shopping list\n".repeat(300)).unwrap();
    for cmd in [
        vec!["index", "--db", notes.to_str().unwrap(), &lib.s("photos")],
        vec!["search", "--db", notes.to_str().unwrap(), "a cat"],
        vec!["dupes", "--db", notes.to_str().unwrap()],
    ] {
        let out = vlm().args(&cmd).output().unwrap();
        one_error_line(&out, "not a vlm index");
        assert!(stderr_of(&out).contains("notes.txt"));
    }
    assert_eq!(
        std::fs::read_to_string(&notes).unwrap(),
        "shopping list\n".repeat(300)
    );
    // Someone else's SQLite database.
    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE contacts (name TEXT); INSERT INTO contacts VALUES ('a');")
        .unwrap();
    let before = std::fs::read(&other).unwrap();
    let out = vlm()
        .args(["index", "--db", other.to_str().unwrap(), &lib.s("photos")])
        .output()
        .unwrap();
    one_error_line(&out, "not a vlm index");
    assert_eq!(std::fs::read(&other).unwrap(), before);
    // A damaged index: the first pages kept, the rest overwritten.
    let damaged = dir.path().join("damaged.sqlite");
    {
        let conn = rusqlite::Connection::open(lib.db()).unwrap();
        conn.execute_batch(&format!("VACUUM INTO '{}'", damaged.display()))
            .unwrap();
    }
    let mut bytes = std::fs::read(&damaged).unwrap();
    let keep = 4096.min(bytes.len() / 2);
    for b in &mut bytes[keep..] {
        *b = 0x5a;
    }
    std::fs::write(&damaged, &bytes).unwrap();
    let out = vlm()
        .args(["search", "--db", damaged.to_str().unwrap(), "a cat"])
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("damaged index") || stderr.contains("not a vlm index"),
        "{stderr}"
    );
    // No index yet.
    let out = vlm_data(&dir.path().join("empty-data"))
        .args(["search", "a cat"])
        .output()
        .unwrap();
    one_error_line(&out, "no index at");
    // A newer schema.
    let newer = dir.path().join("newer.sqlite");
    std::fs::copy(lib.db(), &newer).unwrap();
    rusqlite::Connection::open(&newer)
        .unwrap()
        .pragma_update(None, "user_version", 3)
        .unwrap();
    let out = vlm()
        .args(["dupes", "--db", newer.to_str().unwrap()])
        .output()
        .unwrap();
    one_error_line(&out, "upgrade vlm");
}

/// Copies of `name` in `dir`: bytes, half size (Lanczos, PNG), JPEG quality 75, and a third of the
/// size at JPEG quality 60.
fn copies(name: &str, dir: &Path) -> Vec<PathBuf> {
    let src = fixtures().join("images").join(name);
    let stem = name.split('.').next().unwrap();
    let img = image::open(&src).unwrap();
    let byte = dir.join(format!("{stem}-copy.{}", name.rsplit('.').next().unwrap()));
    std::fs::copy(&src, &byte).unwrap();
    let half = dir.join(format!("{stem}-half.png"));
    img.resize(
        img.width() / 2,
        img.height() / 2,
        image::imageops::FilterType::Lanczos3,
    )
    .save(&half)
    .unwrap();
    let jpeg = |img: &image::DynamicImage, path: &Path, quality: u8| {
        let rgb = img.to_rgb8();
        let f = std::fs::File::create(path).unwrap();
        image::codecs::jpeg::JpegEncoder::new_with_quality(f, quality)
            .write_image(
                rgb.as_raw(),
                rgb.width(),
                rgb.height(),
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
    };
    let q75 = dir.join(format!("{stem}-q75.jpg"));
    jpeg(&img, &q75, 75);
    let small = dir.join(format!("{stem}-third-q60.jpg"));
    let third = img.resize(
        img.width() / 3,
        img.height() / 3,
        image::imageops::FilterType::Triangle,
    );
    jpeg(&third, &small, 60);
    vec![byte, half, q75, small]
}

/// `vlm dupes -f json` groups as sets of file names.
fn dupe_groups(lib: &Library, args: &[&str]) -> (Value, Vec<Vec<String>>) {
    let out = lib
        .vlm()
        .args(["dupes", "-f", "json"])
        .args(args)
        .output()
        .unwrap();
    success(&out);
    let doc: Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    let groups = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let mut names: Vec<String> = g["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    Path::new(i["path"].as_str().unwrap())
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            names.sort();
            names
        })
        .collect();
    (doc, groups)
}

#[test]
fn dupes_groups_copies_and_keeps_distinct_images_apart() {
    for name in ["tiny-openai", "tiny-laion"] {
        let lib = Library::new();
        for image in IMAGES {
            copies(image, &lib.path("photos"));
        }
        success(&lib.index(&["-m", &model(name), &lib.s("photos")]));

        // The cosines: every copy against its original, every distinct pair.
        let out = lib
            .vlm()
            .args(["embed", "-f", "json", "-m", &model(name), &lib.s("photos")])
            .output()
            .unwrap();
        success(&out);
        let doc: Value = serde_json::from_str(&stdout_of(&out)).unwrap();
        let embeds: Vec<(String, Vec<f32>)> = doc["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let p = r["path"].as_str().unwrap();
                let file = Path::new(p)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                (file, floats(&r["embedding"]))
            })
            .collect();
        let stem_of = |f: &str| f.split(['-', '.']).next().unwrap().to_string();
        let (mut min_copy, mut max_distinct) = (1f32, -1f32);
        for (a, ea) in &embeds {
            for (b, eb) in &embeds {
                if a >= b {
                    continue;
                }
                let c = dot(ea, eb);
                if stem_of(a) == stem_of(b) {
                    min_copy = min_copy.min(c);
                } else {
                    max_distinct = max_distinct.max(c);
                }
            }
        }
        println!("{name}: copies >= {min_copy:.5}, distinct images <= {max_distinct:.5}");
        assert!(
            min_copy > max_distinct,
            "{name}: no threshold separates them"
        );
        assert!(
            min_copy >= vlm::commands::dupes::DEFAULT_THRESHOLD as f32,
            "{name}: a copy falls below the default threshold ({min_copy})"
        );

        // At the default every copy is grouped with its original. (These random-weight models
        // put all images in a narrow cone, distinct ones up to 0.997, so at the default some
        // distinct images group as well; see the README.)
        let (doc, groups) = dupe_groups(&lib, &[]);
        assert_eq!(doc["threshold"], 0.97);
        assert_eq!(doc["images"], 45);
        for image in IMAGES {
            let stem = stem_of(image);
            let holding: Vec<&Vec<String>> = groups
                .iter()
                .filter(|g| g.iter().any(|f| stem_of(f) == stem))
                .collect();
            assert_eq!(holding.len(), 1, "{name}: {image}: {groups:?}");
            assert!(holding[0].len() >= 5, "{name}: {image}: {groups:?}");
        }

        // Between the two ranges, the groups are exactly each image with its four copies.
        let between = format!("{}", (min_copy + max_distinct) / 2.0);
        let (_, groups) = dupe_groups(&lib, &["--threshold", &between]);
        assert_eq!(groups.len(), 9, "{name}: {groups:?}");
        for g in &groups {
            assert_eq!(g.len(), 5, "{name}: {g:?}");
            assert!(g.iter().all(|f| stem_of(f) == stem_of(&g[0])), "{g:?}");
        }

        // Biggest groups first; each led by its largest file.
        let extra = lib.path("photos/horse-copy2.png");
        std::fs::copy(image("horse.png"), &extra).unwrap();
        success(&lib.index(&[&lib.s("photos")]));
        let (doc, groups) = dupe_groups(&lib, &["--threshold", &between]);
        assert_eq!(groups[0].len(), 6, "{groups:?}");
        for g in doc["results"].as_array().unwrap() {
            let sizes: Vec<u64> = g["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["size"].as_u64().unwrap())
                .collect();
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
            assert!(g["images"][0]["score"].as_f64().unwrap() > 0.99999);
        }
        // Only under a path.
        let (doc, _) = dupe_groups(&lib, &[&lib.s("photos/horse.png")]);
        assert_eq!(doc["images"], 1);
        // A readable table.
        let out = lib
            .vlm()
            .args(["dupes", "-f", "table", "--threshold", &between])
            .output()
            .unwrap();
        success(&out);
        let table = stdout_of(&out);
        assert!(table.starts_with("group 1: 6 images\n"), "{table}");
    }
}

/// `vlm search -f json` hits: (file name, score).
fn search(lib: &Library, args: &[&str]) -> (Value, Vec<(String, f32)>) {
    let out = lib
        .vlm()
        .args(["search", "-f", "json"])
        .args(args)
        .output()
        .unwrap();
    success(&out);
    let doc: Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    let hits = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["path"].as_str().unwrap().to_string(),
                h["score"].as_f64().unwrap() as f32,
            )
        })
        .collect();
    (doc, hits)
}

#[test]
fn search_ranks_as_the_cosines_do_in_every_format() {
    let lib = Library::new();
    let m = lib.s("model");
    success(&lib.index(&["-m", &m, &lib.s("photos")]));
    let paths: Vec<String> = IMAGES
        .iter()
        .map(|n| lib.s(&format!("photos/{n}")))
        .collect();
    let (_, images) = embed(&m, &paths);
    let out = vlm()
        .args(["embed", "-f", "json", "-m", &m, "--text", "a red bicycle"])
        // The query as typed (issue 23.2): no template.
        .args(["-t", "{}"])
        .output()
        .unwrap();
    success(&out);
    let doc: Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    let text = floats(&doc["results"][0]["embedding"]);
    let mut want: Vec<(String, f32)> = images
        .iter()
        .map(|(p, e)| (p.clone(), dot(&text, e.as_ref().unwrap())))
        .collect();
    want.sort_by(|a, b| b.1.total_cmp(&a.1));

    // No --model: the index knows it. Default: 10 results, so all 9 here.
    let (doc, hits) = search(&lib, &["a red bicycle"]);
    assert_eq!(
        doc["model"]["id"],
        std::fs::canonicalize(&m).unwrap().display().to_string()
    );
    assert_eq!(doc["searched"], 9);
    assert!(doc["query"].get("templates").is_none(), "{doc}");
    assert_eq!(hits.len(), 9);
    for ((p, s), (wp, ws)) in hits.iter().zip(&want) {
        assert_eq!(p, wp);
        assert!((s - ws).abs() < 1e-5, "{p}: {s} vs {ws}");
    }
    // -k and --threshold.
    let (_, top) = search(&lib, &["a red bicycle", "-k", "3"]);
    assert_eq!(top, hits[..3].to_vec());
    let cut = (want[3].1 + want[4].1) / 2.0;
    let (doc, above) = search(&lib, &["a red bicycle", "--threshold", &cut.to_string()]);
    assert_eq!(above, hits[..4].to_vec());
    assert!(doc["top_k"].is_null());
    // --where: a LIKE pattern, bound as a parameter (quotes are just characters).
    let (_, pngs) = search(&lib, &["a red bicycle", "--where", "%.jpg"]);
    assert_eq!(pngs.len(), 2);
    assert!(pngs.iter().all(|(p, _)| p.ends_with(".jpg")));
    let (_, none) = search(&lib, &["a red bicycle", "--where", "%' OR '1'='1"]);
    assert!(none.is_empty());
    // The same query again comes from the text cache: neither tower is loaded.
    let out = lib
        .vlm()
        .args(["search", "-v", "-f", "json", "a red bicycle"])
        .output()
        .unwrap();
    success(&out);
    assert!(stderr_of(&out).contains("no tower"), "{}", stderr_of(&out));

    // Other formats carry the same hits.
    let out = lib
        .vlm()
        .args(["search", "-f", "csv", "-k", "2", "a red bicycle"])
        .output()
        .unwrap();
    success(&out);
    let csv = stdout_of(&out);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "rank,path,score");
    assert!(lines[1].starts_with(&format!("1,{},", hits[0].0)), "{csv}");
    assert_eq!(lines.len(), 3);
    let out = lib
        .vlm()
        .args(["search", "-f", "jsonl", "-k", "2", "a red bicycle"])
        .output()
        .unwrap();
    success(&out);
    let first: Value = serde_json::from_str(stdout_of(&out).lines().next().unwrap()).unwrap();
    assert_eq!(first["rank"], 1);
    assert_eq!(first["path"], hits[0].0.as_str());
    let out = lib
        .vlm()
        .args(["search", "-f", "table", "-k", "2", "a red bicycle"])
        .output()
        .unwrap();
    success(&out);
    let table = stdout_of(&out);
    assert_eq!(table.lines().count(), 2);
    assert!(
        table.lines().next().unwrap().ends_with(&hits[0].0),
        "{table}"
    );

    // An image query: the indexed file's stored vector (no model), or a new file encoded.
    let horse = &images[3];
    let mut want: Vec<(String, f32)> = images
        .iter()
        .map(|(p, e)| {
            (
                p.clone(),
                dot(horse.1.as_ref().unwrap(), e.as_ref().unwrap()),
            )
        })
        .collect();
    want.sort_by(|a, b| b.1.total_cmp(&a.1));
    std::fs::rename(lib.path("model"), lib.path("model.away")).unwrap();
    let (_, hits) = search(&lib, &["--image", &horse.0]);
    assert_eq!(hits[0].0, horse.0);
    for ((p, s), (wp, ws)) in hits.iter().zip(&want) {
        assert_eq!(p, wp);
        assert!((s - ws).abs() < 1e-5);
    }
    std::fs::rename(lib.path("model.away"), lib.path("model")).unwrap();
    let outside = lib.path("horse-outside.png");
    std::fs::copy(image("horse.png"), &outside).unwrap();
    let (_, hits) = search(&lib, &["--image", outside.to_str().unwrap(), "-k", "1"]);
    assert_eq!(hits[0].0, horse.0);
    assert!(hits[0].1 > 0.99999);
}

#[test]
fn one_file_holds_one_index_per_model() {
    let lib = Library::new();
    success(&lib.index(&["-m", &lib.s("model"), &lib.s("photos")]));
    success(&lib.index(&["-m", &model("tiny-laion"), &lib.s("photos")]));
    // Two models: search must be told which.
    let out = lib.vlm().args(["search", "a cat"]).output().unwrap();
    one_error_line(&out, "choose one with --model");
    let (doc, hits) = search(&lib, &["a cat", "-m", &model("tiny-laion")]);
    assert_eq!(doc["model"]["id"], model("tiny-laion"));
    assert_eq!(hits.len(), 9);
    // f16 is another index.
    success(&lib.index(&[
        "-m",
        &model("tiny-laion"),
        "--dtype",
        "f16",
        &lib.s("photos/horse.png"),
    ]));
    let (doc, hits) = search(
        &lib,
        &["a cat", "-m", &model("tiny-laion"), "--dtype", "f16"],
    );
    assert_eq!(doc["dtype"], "f16");
    assert_eq!(hits.len(), 1);
    let conn = rusqlite::Connection::open(lib.db()).unwrap();
    let models: i64 = conn
        .query_row("SELECT count(*) FROM models", [], |r| r.get(0))
        .unwrap();
    assert_eq!(models, 3);
}

fn vlm_bin() -> std::process::Command {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("vlm"));
    cmd.env_remove("VLM_MODEL")
        .env_remove("XDG_DATA_HOME")
        .env("HF_HUB_OFFLINE", "1")
        .env(
            "VLM_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("vlm-cache"),
        );
    cmd
}

/// A folder of `n` small distinct-named copies of the fixture images.
fn many(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let name = IMAGES[i % IMAGES.len()];
        std::fs::copy(
            fixtures().join("images").join(name),
            dir.join(format!("{i:04}-{name}")),
        )
        .unwrap();
    }
}

#[test]
fn concurrent_runs_share_one_index() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.sqlite");
    many(&dir.path().join("a"), 60);
    many(&dir.path().join("b"), 60);
    // Two runs at once on one new file, committing every two images; a third on both folders.
    let children: Vec<std::process::Child> = [vec!["a"], vec!["b"], vec!["a", "b"]]
        .iter()
        .map(|folders| {
            let mut cmd = vlm_bin();
            cmd.args(["index", "-q", "-b", "2", "-j", "1", "--db"])
                .arg(&db)
                .args(["-m", &model("tiny-openai")]);
            for f in folders {
                cmd.arg(dir.path().join(f));
            }
            cmd.stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    assert_eq!(db_rows(&db).len(), 120);
}

#[test]
fn an_interrupted_run_keeps_its_finished_batches() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("i.sqlite");
    let photos = dir.path().join("photos");
    many(&photos, 300);
    let mut child = vlm_bin()
        .args(["index", "-q", "-b", "4", "-j", "1", "--db"])
        .arg(&db)
        .args(["-m", &model("tiny-openai")])
        .arg(&photos)
        .spawn()
        .unwrap();
    // Killed (SIGKILL: no cleanup at all) once some batches are in.
    let started = std::time::Instant::now();
    loop {
        let rows = rusqlite::Connection::open(&db)
            .ok()
            .and_then(|c| {
                c.query_row("SELECT count(*) FROM images", [], |r| r.get::<_, i64>(0))
                    .ok()
            })
            .unwrap_or(0);
        if rows >= 8 || started.elapsed().as_secs() > 60 || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().unwrap();
    let kept = db_rows(&db).len();
    assert!(kept >= 8, "{kept}");
    let out = vlm()
        .args(["index", "-v", "--db"])
        .arg(&db)
        .arg(&photos)
        .output()
        .unwrap();
    success(&out);
    let (added, updated, removed, unchanged) = counts(&out);
    assert_eq!((added + unchanged, updated, removed), (300, 0, 0));
    assert_eq!(unchanged, kept);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn shards_merge_into_the_whole_index() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    many(&photos, 20);
    let run = |db: &str, extra: &[&str]| {
        let out = vlm()
            .args(["index", "-q", "-m", &model("tiny-openai"), "--db"])
            .arg(dir.path().join(db))
            .arg(&photos)
            .args(extra)
            .output()
            .unwrap();
        success(&out);
    };
    run("whole.sqlite", &[]);
    run("one.sqlite", &["--shard", "1/2"]);
    run("two.sqlite", &["--shard", "2/2"]);
    let (one, two) = (
        db_rows(&dir.path().join("one.sqlite")),
        db_rows(&dir.path().join("two.sqlite")),
    );
    assert_eq!(one.len() + two.len(), 20);
    assert!(!one.is_empty() && !two.is_empty());
    let out = vlm()
        .args(["index", "--db"])
        .arg(dir.path().join("merged.sqlite"))
        .arg("--merge")
        .arg(dir.path().join("one.sqlite"))
        .arg(dir.path().join("two.sqlite"))
        .output()
        .unwrap();
    success(&out);
    assert!(same_rows(
        &db_rows(&dir.path().join("merged.sqlite")),
        &db_rows(&dir.path().join("whole.sqlite"))
    ));
    // The merged index is searchable with no --model, and updates like any other.
    let out = vlm()
        .args(["index", "-v", "--db"])
        .arg(dir.path().join("merged.sqlite"))
        .arg(&photos)
        .output()
        .unwrap();
    success(&out);
    assert_eq!(counts(&out), (0, 0, 0, 20));
    // Merging a file into itself is refused.
    let out = vlm()
        .args(["index", "--db"])
        .arg(dir.path().join("one.sqlite"))
        .arg("--merge")
        .arg(dir.path().join("one.sqlite"))
        .output()
        .unwrap();
    one_error_line(&out, "is the index being merged into");
}
