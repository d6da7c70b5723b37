//! `vlm calibrate` through the built binary, on the random-weight `tiny-openai` model and the test
//! aspect `tests/fixtures/aspects/thing.toml` (multi, threshold 0.3): a synthetic ground truth over
//! the fixture images, the thresholds a brute-force search over `vlm tag`'s own scores finds, and
//! the calibrated aspect file read back by `vlm tag`.
//!
//! Every run of a test shares one private text cache, so `tag` and `calibrate` score with the very
//! same text embeddings (the shared cache may hold ones encoded in another batch).

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{fixtures, model, stderr_of, stdout_of, success, vlm_cache, ModelInfo, PNGS};
use serde::Deserialize;
use vlm::tagging::aspects::Aspect;

const LABELS: [&str; 6] = ["camera", "coin", "horse", "logo", "person", "text"];
const ASPECT_THRESHOLD: f32 = 0.3;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Failed {
    path: String,
    error: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Label {
    label: String,
    positives: usize,
    threshold_before: f32,
    precision_before: Option<f64>,
    recall_before: Option<f64>,
    f1_before: Option<f64>,
    threshold_after: f32,
    precision_after: Option<f64>,
    recall_after: Option<f64>,
    f1_after: Option<f64>,
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    model: ModelInfo,
    aspect: String,
    source: String,
    truth: String,
    images: usize,
    failed: Vec<Failed>,
    target: String,
    min_positives: usize,
    output: Option<String>,
    labels: Vec<Label>,
}

/// `vlm tag` JSON, only what these tests read.
#[derive(Debug, Deserialize)]
struct TagDoc {
    aspects: Vec<TagAspectInfo>,
    results: Vec<TagResult>,
}

#[derive(Debug, Deserialize)]
struct TagAspectInfo {
    #[serde(default)]
    label_thresholds: BTreeMap<String, f32>,
}

#[derive(Debug, Deserialize)]
struct TagResult {
    aspects: Vec<TagGroup>,
}

#[derive(Debug, Deserialize)]
struct TagGroup {
    tags: Vec<Tag>,
}

#[derive(Debug, Deserialize)]
struct Tag {
    label: String,
    score: f32,
}

struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    cache: PathBuf,
    /// Image file names, in truth order (relative to `dir`).
    images: Vec<String>,
    /// `vlm tag`'s score of every image for every label, `[image][label]`.
    scores: Vec<Vec<f32>>,
    /// The synthetic truth, `[image][label]`.
    truth: Vec<Vec<bool>>,
}

fn aspect_file() -> PathBuf {
    fixtures().join("aspects/thing.toml")
}

/// Every label's score for `images` (in `dir`) by `vlm tag` with `aspect`, and the tags reported.
fn tag(dir: &Path, cache: &Path, aspect: &Path, images: &[String], all: bool) -> TagDoc {
    let mut cmd = vlm_cache(cache);
    cmd.current_dir(dir)
        .arg("tag")
        .args(images)
        .args(["-m", &model("tiny-openai"), "-f", "json", "-k", "100", "-a"])
        .arg(aspect);
    if all {
        cmd.args(["--threshold", "0"]);
    }
    let out = cmd.output().unwrap();
    success(&out);
    serde_json::from_str(&stdout_of(&out)).unwrap()
}

/// The fixture images (sample PNGs and the eval dataset's) copied into a temporary folder, their
/// scores from `vlm tag`, and a synthetic truth: each label's positives are a deterministic mix
/// of high-scoring images and others, so that the best threshold is neither the lowest nor the
/// highest score. `person` gets only 2 positives (fewer than the default minimum of 3).
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let cache = root.join("cache");
    let mut images = Vec::new();
    for name in PNGS {
        std::fs::copy(fixtures().join("images").join(name), root.join(name)).unwrap();
        images.push(name.to_string());
    }
    let pets = fixtures().join("eval/pets");
    let mut extra: Vec<PathBuf> = Vec::new();
    for class in std::fs::read_dir(&pets).unwrap() {
        let class = class.unwrap().path();
        for f in std::fs::read_dir(&class).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "png")
                && !f.file_name().unwrap().to_string_lossy().starts_with('.')
            {
                extra.push(f);
            }
        }
    }
    extra.sort();
    for f in extra {
        let name = format!("pet-{}", f.file_name().unwrap().to_string_lossy());
        std::fs::copy(&f, root.join(&name)).unwrap();
        images.push(name);
    }
    let doc = tag(&root, &cache, &aspect_file(), &images, true);
    let scores: Vec<Vec<f32>> = doc
        .results
        .iter()
        .map(|r| {
            LABELS
                .iter()
                .map(|l| {
                    r.aspects[0]
                        .tags
                        .iter()
                        .find(|t| t.label == *l)
                        .unwrap()
                        .score
                })
                .collect()
        })
        .collect();
    assert_eq!(scores.len(), images.len());
    // Truth: per label, the images ranked by score; the top third are mostly positive, the rest
    // sometimes (a fixed pattern), so precision and recall trade off.
    let n = images.len();
    let mut truth = vec![vec![false; LABELS.len()]; n];
    for (j, label) in LABELS.iter().enumerate() {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| scores[b][j].total_cmp(&scores[a][j]));
        for (rank, &i) in order.iter().enumerate() {
            let positive = if *label == "person" {
                rank == 1 || rank == 5
            } else if rank < n / 3 {
                (rank + j) % 4 != 1
            } else {
                (rank * 7 + j) % 5 == 0
            };
            truth[i][j] = positive;
        }
    }
    Setup {
        _dir: dir,
        dir: root,
        cache,
        images,
        scores,
        truth,
    }
}

impl Setup {
    fn write_csv(&self, name: &str) -> PathBuf {
        let mut text = String::from("path,labels\n");
        for (i, img) in self.images.iter().enumerate() {
            let labels: Vec<&str> = LABELS
                .iter()
                .enumerate()
                .filter(|&(j, _)| self.truth[i][j])
                .map(|(_, l)| *l)
                .collect();
            text.push_str(&format!("{img},\"{}\"\n", labels.join(";")));
        }
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn calibrate(&self, args: &[&str]) -> std::process::Output {
        vlm_cache(&self.cache)
            .current_dir(&self.dir)
            .arg("calibrate")
            .args(["-m", &model("tiny-openai"), "-f", "json", "-a"])
            .arg(aspect_file())
            .args(args)
            .output()
            .unwrap()
    }

    fn column(&self, j: usize) -> (Vec<f32>, Vec<bool>) {
        (
            self.scores.iter().map(|s| s[j]).collect(),
            self.truth.iter().map(|t| t[j]).collect(),
        )
    }
}

fn report(out: &std::process::Output) -> Report {
    serde_json::from_str(&stdout_of(out))
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout_of(out), stderr_of(out)))
}

/// (true positives, predicted positives, positives) of `score >= t`.
fn counts(scores: &[f32], truth: &[bool], t: f32) -> (usize, usize, usize) {
    let pred: Vec<bool> = scores.iter().map(|&s| s >= t).collect();
    let tp = pred.iter().zip(truth).filter(|(p, t)| **p && **t).count();
    (
        tp,
        pred.iter().filter(|p| **p).count(),
        truth.iter().filter(|t| **t).count(),
    )
}

fn f1(c: (usize, usize, usize)) -> f64 {
    2.0 * c.0 as f64 / (c.1 + c.2) as f64
}

/// Brute force: every distinct score as the threshold, ascending; the first with the best F1.
fn brute_force_f1(scores: &[f32], truth: &[bool]) -> (f32, f64) {
    let mut candidates = scores.to_vec();
    candidates.sort_by(|a, b| a.total_cmp(b));
    candidates.dedup();
    let mut best = (candidates[0], f64::NEG_INFINITY);
    for &t in &candidates {
        let v = f1(counts(scores, truth, t));
        if v > best.1 + 1e-12 {
            best = (t, v);
        }
    }
    best
}

/// Brute force: the lowest distinct score whose precision is at least `p`.
fn brute_force_precision(scores: &[f32], truth: &[bool], p: f64) -> Option<f32> {
    let mut candidates = scores.to_vec();
    candidates.sort_by(|a, b| a.total_cmp(b));
    candidates.dedup();
    candidates.into_iter().find(|&t| {
        let (tp, pred, _) = counts(scores, truth, t);
        pred > 0 && tp as f64 / pred as f64 >= p
    })
}

/// Fractions compared within 1e-12: serde_json's default float parser may be one ulp off.
fn approx(a: Option<f64>, b: Option<f64>, what: &str) {
    match (a, b) {
        (Some(x), Some(y)) => assert!((x - y).abs() < 1e-12, "{what}: {x} vs {y}"),
        (x, y) => assert_eq!(x, y, "{what}"),
    }
}

fn same_decisions(scores: &[f32], a: f32, b: f32) -> bool {
    scores.iter().all(|&s| (s >= a) == (s >= b))
}

#[test]
fn thresholds_are_what_brute_force_finds_and_tag_uses_them() {
    let s = setup();
    let truth = s.write_csv("truth.csv");
    let out = s.calibrate(&["--truth", "truth.csv", "-o", "calibrated.toml"]);
    success(&out);
    let r = report(&out);
    assert_eq!(r.aspect, "thing");
    assert_eq!(r.source, aspect_file().display().to_string());
    assert_eq!(r.truth, "truth.csv");
    assert_eq!(r.images, s.images.len());
    assert!(r.failed.is_empty());
    assert_eq!((r.target.as_str(), r.min_positives), ("f1", 3));
    assert_eq!(r.output.as_deref(), Some("calibrated.toml"));
    assert_eq!(r.model.id, model("tiny-openai"));
    let labels: Vec<&str> = r.labels.iter().map(|l| l.label.as_str()).collect();
    assert_eq!(labels, LABELS);

    let written = Aspect::from_file(&s.dir.join("calibrated.toml")).unwrap();
    let text = std::fs::read_to_string(s.dir.join("calibrated.toml")).unwrap();
    assert!(
        text.starts_with("# Calibrated by `vlm calibrate` from truth.csv"),
        "{text}"
    );
    // Everything but the thresholds is the aspect as it was.
    let original = Aspect::from_file(&aspect_file()).unwrap();
    assert_eq!(
        (
            &written.name,
            &written.kind,
            &written.templates,
            &written.neutral,
            written.threshold,
            written.top_k
        ),
        (
            &original.name,
            &original.kind,
            &original.templates,
            &original.neutral,
            original.threshold,
            original.top_k
        )
    );
    assert_eq!(written.labels[5].prompts, original.labels[5].prompts);

    for (j, row) in r.labels.iter().enumerate() {
        let (scores, truth_col) = s.column(j);
        let positives = truth_col.iter().filter(|t| **t).count();
        assert_eq!(row.positives, positives, "{}", row.label);
        // Before: the aspect's threshold, as tag decides.
        let before = counts(&scores, &truth_col, ASPECT_THRESHOLD);
        assert_eq!(row.threshold_before, ASPECT_THRESHOLD);
        approx(
            row.recall_before,
            Some(before.0 as f64 / positives as f64),
            &row.label,
        );
        approx(
            row.precision_before,
            (before.1 > 0).then(|| before.0 as f64 / before.1 as f64),
            &row.label,
        );
        let f1_before = if before.1 + positives > 0 {
            Some(f1(before))
        } else {
            None
        };
        approx(row.f1_before, f1_before, &row.label);
        if row.label == "person" {
            // 2 positives < 3: kept, said so, and no threshold of its own in the file.
            assert_eq!(positives, 2);
            assert_eq!(row.threshold_after, ASPECT_THRESHOLD);
            assert_eq!(
                row.note.as_deref(),
                Some("kept: 2 positive(s), fewer than 3")
            );
            assert_eq!(written.labels[j].threshold, None);
            continue;
        }
        assert!(positives >= 3, "{}: {positives}", row.label);
        assert_eq!(row.note, None);
        let (best, best_f1) = brute_force_f1(&scores, &truth_col);
        let chosen = written.labels[j].threshold.expect("a calibrated threshold");
        assert_eq!(chosen, row.threshold_after, "{}", row.label);
        assert!(
            same_decisions(&scores, chosen, best),
            "{}: {chosen} vs {best}",
            row.label
        );
        assert!(
            (row.f1_after.unwrap() - best_f1).abs() < 1e-12,
            "{}",
            row.label
        );
        let after = counts(&scores, &truth_col, chosen);
        approx(
            row.recall_after,
            Some(after.0 as f64 / positives as f64),
            &row.label,
        );
        assert!(
            row.f1_after.unwrap() >= row.f1_before.unwrap_or(0.0),
            "{}",
            row.label
        );
    }
    // Something was actually calibrated away from 0.3.
    assert!(r
        .labels
        .iter()
        .any(|l| l.threshold_after != ASPECT_THRESHOLD));

    // `vlm tag` with the calibrated file: each label is reported exactly when its score reaches
    // its own threshold, and the header names them.
    let doc = tag(
        &s.dir,
        &s.cache,
        &s.dir.join("calibrated.toml"),
        &s.images,
        false,
    );
    let own: BTreeMap<String, f32> = written
        .labels
        .iter()
        .filter_map(|l| l.threshold.map(|t| (l.name.clone(), t)))
        .collect();
    assert_eq!(doc.aspects[0].label_thresholds, own);
    for (i, result) in doc.results.iter().enumerate() {
        for (j, label) in LABELS.iter().enumerate() {
            let t = written.labels[j].threshold.unwrap_or(ASPECT_THRESHOLD);
            let reported = result.aspects[0].tags.iter().any(|tag| tag.label == *label);
            assert_eq!(
                reported,
                s.scores[i][j] >= t,
                "{} {label}: {} vs {t}",
                s.images[i],
                s.scores[i][j]
            );
        }
    }
    drop(truth);
}

#[test]
fn precision_target_and_jsonl_truth() {
    let s = setup();
    // The same truth as JSONL, with --precision.
    let mut text = String::new();
    for (i, img) in s.images.iter().enumerate() {
        let labels: Vec<&str> = LABELS
            .iter()
            .enumerate()
            .filter(|&(j, _)| s.truth[i][j])
            .map(|(_, l)| *l)
            .collect();
        text.push_str(&serde_json::json!({"path": img, "labels": labels}).to_string());
        text.push('\n');
    }
    std::fs::write(s.dir.join("truth.jsonl"), text).unwrap();
    let out = s.calibrate(&[
        "--truth",
        "truth.jsonl",
        "--precision",
        "0.75",
        "--min-positives",
        "2",
    ]);
    success(&out);
    let r = report(&out);
    assert_eq!(r.target, "precision>=0.75");
    assert_eq!(r.output, None);
    for (j, row) in r.labels.iter().enumerate() {
        let (scores, truth) = s.column(j);
        match brute_force_precision(&scores, &truth, 0.75) {
            Some(t) => {
                assert_eq!(row.note, None, "{}", row.label);
                assert!(
                    same_decisions(&scores, row.threshold_after, t),
                    "{}",
                    row.label
                );
                assert!(row.precision_after.unwrap() >= 0.75, "{}", row.label);
            }
            None => {
                assert_eq!(row.threshold_after, ASPECT_THRESHOLD);
                assert_eq!(
                    row.note.as_deref(),
                    Some("kept: no threshold reaches precision 0.75")
                );
            }
        }
    }
}

#[test]
fn files_are_never_overwritten_by_accident() {
    let s = setup();
    s.write_csv("truth.csv");
    std::fs::write(s.dir.join("mine.toml"), "keep me").unwrap();
    let out = s.calibrate(&["--truth", "truth.csv", "-o", "mine.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr_of(&out).trim(),
        "vlm: -o mine.toml: already exists; use --force to overwrite it"
    );
    assert_eq!(
        std::fs::read_to_string(s.dir.join("mine.toml")).unwrap(),
        "keep me"
    );
    let out = s.calibrate(&["--truth", "truth.csv", "-o", "mine.toml", "--force"]);
    success(&out);
    assert!(Aspect::from_file(&s.dir.join("mine.toml")).is_ok());

    // Never over the aspect file being calibrated, even with --force.
    let own = s.dir.join("thing.toml");
    std::fs::copy(aspect_file(), &own).unwrap();
    let out = vlm_cache(&s.cache)
        .current_dir(&s.dir)
        .args([
            "calibrate",
            "-m",
            &model("tiny-openai"),
            "-a",
            "./thing.toml",
            "--truth",
            "truth.csv",
            "--force",
            "-o",
        ])
        .arg(&own)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("that is the aspect file being calibrated"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&own).unwrap(),
        std::fs::read_to_string(aspect_file()).unwrap()
    );
}

#[test]
fn truth_mistakes_and_failed_images() {
    let s = setup();
    std::fs::write(
        s.dir.join("bad.csv"),
        "path,labels\ncamera.png,camera\nlogo.png,Logo;dog\n",
    )
    .unwrap();
    let out = s.calibrate(&["--truth", "bad.csv"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("bad.csv:3: label \"Logo\" is not in aspect thing (did you mean \"logo\"?)"),
        "{err}"
    );

    std::fs::write(
        s.dir.join("bad.jsonl"),
        "{\"path\": \"a.png\", \"label\": []}\n",
    )
    .unwrap();
    let out = s.calibrate(&["--truth", "bad.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("bad.jsonl:1: unknown field `label`"),
        "{}",
        stderr_of(&out)
    );

    // A missing image: listed, left out, exit 1; the others are calibrated.
    let mut text = std::fs::read_to_string(s.write_csv("truth.csv")).unwrap();
    text.push_str("missing.png,camera\n");
    std::fs::write(s.dir.join("truth.csv"), text).unwrap();
    let out = s.calibrate(&["--truth", "truth.csv"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let r = report(&out);
    assert_eq!(r.images, s.images.len());
    assert_eq!(r.failed.len(), 1);
    assert!(r.failed[0].path.ends_with("missing.png"));
    assert!(r.failed[0].error.contains("missing.png"));
}

/// A folder with horse.png and an aspect-less truth to write: `vlm calibrate` of `thing` on it.
fn calibrate_in(dir: &Path, truth: &str, extra: &[&str]) -> std::process::Output {
    vlm_cache(&dir.join("cache"))
        .current_dir(dir)
        .args(["calibrate", "-m", &model("tiny-openai"), "-f", "json", "-a"])
        .arg(aspect_file())
        .args(["--truth", truth])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn the_same_file_by_two_paths_is_a_repeated_row() {
    // Before: the check compared path text, so `./horse.png` after `horse.png` (or
    // `x/../horse.png`, or a symlink) scored one image twice.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("images/horse.png"),
        dir.path().join("horse.png"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("x")).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink("horse.png", dir.path().join("link.png")).unwrap();
    let mut seconds = vec!["./horse.png", "x/../horse.png"];
    if cfg!(unix) {
        seconds.push("link.png");
    }
    for second in seconds {
        std::fs::write(
            dir.path().join("truth.csv"),
            format!("path,labels\nhorse.png,horse\n{second},\n"),
        )
        .unwrap();
        let out = calibrate_in(dir.path(), "truth.csv", &[]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
        let err = stderr_of(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!(
                "truth.csv:3: \"{second}\" is the same file as \"horse.png\" (line 2)"
            )),
            "{err}"
        );
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_million_rows_for_missing_files_cost_one_line_and_little_memory() {
    // Before: 1.5 GB and a million stderr lines, even with -q.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("images/horse.png"),
        dir.path().join("horse.png"),
    )
    .unwrap();
    let mut text = String::from("path,labels\nhorse.png,horse\n");
    for i in 0..1_000_000u32 {
        text.push_str(&format!("elsewhere/{i:07}.png,horse\n"));
    }
    std::fs::write(dir.path().join("truth.csv"), text).unwrap();
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("vlm"));
    cmd.current_dir(dir.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("VLM_CACHE_DIR", dir.path().join("cache"))
        .args([
            "calibrate",
            "-m",
            &model("tiny-openai"),
            "-f",
            "json",
            "-q",
            "-a",
        ])
        .arg(aspect_file())
        .args(["--truth", "truth.csv"]);
    let run = common::run_measured(cmd, dir.path());
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "truth.csv: 1000000 of 1000001 paths do not exist and are left out: \"elsewhere/0000000.png\" (line 3), \"elsewhere/0000001.png\" (line 4), \"elsewhere/0000002.png\" (line 5) and 999997 more"
        ),
        "{}",
        run.stderr
    );
    let r: Report = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(r.images, 1);
    assert_eq!(r.failed.len(), 10);
    assert!(r.failed[0]
        .error
        .contains("1000000 of the truth's paths do not exist"));
    // The truth file alone is 29 MB; its rows while they are parsed cost ~300 bytes each, plus
    // the tiny model: measured 468 MiB (1.5 GB before), bounded at 600 MiB.
    assert!(
        run.peak_kib < 600 * 1024,
        "peak RSS {} MiB",
        run.peak_kib / 1024
    );
}
