//! `vlm eval` through the built binary, on the fixture ImageFolder `tests/fixtures/eval/pets` and
//! the random-weight `tiny-openai` model, against `tests/fixtures/reference/eval-tiny-openai.json`
//! (written by `tests/fixtures/make_eval_fixtures.py` from transformers' probabilities).
//!
//! Tolerance: none beyond float printing. The metrics are ratios of image counts, so vlm's counts
//! must equal the reference's exactly; the fractions are compared within 1e-12. The script kept
//! only images whose decisions have a cosine margin of at least 2e-3, twenty times the 1e-4 by
//! which vlm's embeddings may differ from transformers' on identical pixels.

use crate::common;

use std::path::{Path, PathBuf};

use common::{fixtures, model, stderr_of, stdout_of, success, vlm, ModelInfo};
use serde::Deserialize;

const TEMPLATES: [&str; 3] = ["a photo of a {}.", "a drawing of the {}.", "{}"];

// ---------------------------------------------------------------------------------------------
// Output of `vlm eval -f json` (strict: unknown fields are errors)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Failed {
    path: String,
    error: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Confusion {
    label: String,
    images: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Class {
    label: String,
    images: usize,
    recall: Option<f64>,
    top_confusions: Vec<Confusion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepRow {
    template: String,
    top1: Option<f64>,
    top5: Option<f64>,
    mean_per_class_recall: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    model: ModelInfo,
    root: String,
    templates: Vec<String>,
    top1: Option<f64>,
    top5: Option<f64>,
    top5_k: usize,
    mean_per_class_recall: Option<f64>,
    images: usize,
    failed: Vec<Failed>,
    sweep: Option<Vec<SweepRow>>,
    classes: Vec<Class>,
}

// ---------------------------------------------------------------------------------------------
// The reference
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct RefClass {
    label: String,
    images: usize,
    correct: usize,
    recall: Option<f64>,
    top_confusions: Vec<Confusion>,
}

#[derive(Debug, Deserialize)]
struct RefMetrics {
    top1: f64,
    top5: f64,
    top5_k: usize,
    mean_per_class_recall: f64,
    images: usize,
    correct: usize,
    correct_top5: usize,
    classes: Vec<RefClass>,
}

#[derive(Debug, Deserialize)]
struct Reference {
    classes: Vec<String>,
    templates: Vec<String>,
    min_margin: f64,
    metrics: std::collections::HashMap<String, RefMetrics>,
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(fixtures().join("reference/eval-tiny-openai.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn dataset() -> PathBuf {
    fixtures().join("eval/pets")
}

/// `vlm eval ROOT -m tiny-openai -f json` with `args`.
fn eval(root: &Path, args: &[&str]) -> std::process::Output {
    vlm()
        .arg("eval")
        .arg(root)
        .args(["-m", &model("tiny-openai"), "-f", "json"])
        .args(args)
        .output()
        .unwrap()
}

fn report(out: &std::process::Output) -> Report {
    serde_json::from_str(&stdout_of(out))
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout_of(out), stderr_of(out)))
}

fn template_args(templates: &[&str]) -> Vec<String> {
    templates
        .iter()
        .flat_map(|t| ["-t".to_string(), t.to_string()])
        .collect()
}

fn close(a: Option<f64>, b: f64, what: &str) {
    let a = a.unwrap_or_else(|| panic!("{what}: null"));
    assert!((a - b).abs() < 1e-12, "{what}: vlm {a}, transformers {b}");
}

/// The report's numbers equal the reference's: counts exactly, fractions within 1e-12.
fn assert_matches(r: &Report, want: &RefMetrics) {
    assert_eq!(r.images, want.images);
    assert_eq!(r.top5_k, want.top5_k);
    close(r.top1, want.top1, "top1");
    close(r.top5, want.top5, "top5");
    close(
        r.mean_per_class_recall,
        want.mean_per_class_recall,
        "mean_per_class_recall",
    );
    // The fractions come from these counts.
    assert_eq!(
        r.top1.map(|x| (x * r.images as f64).round() as usize),
        Some(want.correct)
    );
    assert_eq!(
        r.top5.map(|x| (x * r.images as f64).round() as usize),
        Some(want.correct_top5)
    );
    assert_eq!(r.classes.len(), want.classes.len());
    for (got, want) in r.classes.iter().zip(&want.classes) {
        assert_eq!(got.label, want.label);
        assert_eq!(got.images, want.images, "{}", want.label);
        match (got.recall, want.recall) {
            (Some(a), Some(b)) => close(Some(a), b, &want.label),
            (a, b) => assert_eq!(a, b, "{}", want.label),
        }
        assert_eq!(
            got.recall.map(|x| (x * got.images as f64).round() as usize),
            Some(want.correct),
            "{}",
            want.label
        );
        assert_eq!(got.top_confusions, want.top_confusions, "{}", want.label);
    }
}

/// A copy of the fixture dataset in a temporary folder, to add cases to.
fn copy_dataset() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&dataset(), &dir.path().join("pets"));
    dir
}

#[test]
fn the_reference_margins_are_safe() {
    let r = reference();
    assert!(r.min_margin >= 2e-3, "{}", r.min_margin);
    assert_eq!(r.templates, TEMPLATES);
}

#[test]
fn metrics_and_sweep_equal_transformers() {
    let r = reference();
    let out = eval(
        &dataset(),
        &[template_args(&TEMPLATES), vec!["--sweep".into()]]
            .concat()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    success(&out);
    let got = report(&out);
    assert_eq!(got.model.id, model("tiny-openai"));
    assert_eq!(got.root, dataset().display().to_string());
    assert_eq!(got.templates, TEMPLATES);
    assert!(got.failed.is_empty());
    let labels: Vec<&str> = got.classes.iter().map(|c| c.label.as_str()).collect();
    assert_eq!(labels, r.classes);
    // The headline numbers are the ensemble of all templates.
    assert_matches(&got, &r.metrics["ensemble"]);

    // One sweep row per template and one for the ensemble, each equal to transformers', best
    // first.
    let sweep = got.sweep.expect("--sweep rows");
    assert_eq!(sweep.len(), TEMPLATES.len() + 1);
    let mut names: Vec<&str> = sweep.iter().map(|s| s.template.as_str()).collect();
    names.sort();
    let mut want: Vec<&str> = TEMPLATES.iter().copied().chain(["ensemble"]).collect();
    want.sort();
    assert_eq!(names, want);
    for row in &sweep {
        let m = &r.metrics[&row.template];
        close(row.top1, m.top1, &row.template);
        close(row.top5, m.top5, &row.template);
        close(
            row.mean_per_class_recall,
            m.mean_per_class_recall,
            &row.template,
        );
    }
    for pair in sweep.windows(2) {
        let key = |s: &SweepRow| {
            (
                s.top1.unwrap(),
                s.mean_per_class_recall.unwrap(),
                s.top5.unwrap(),
            )
        };
        assert!(key(&pair[0]) >= key(&pair[1]), "{sweep:?}");
    }
    // The templates really differ on this data, so the sweep ranks something.
    assert_ne!(sweep.first().unwrap().top1, sweep.last().unwrap().top1);
}

#[test]
fn one_template_without_sweep_equals_that_templates_row() {
    let r = reference();
    let out = eval(&dataset(), &["-t", "{}"]);
    success(&out);
    let got = report(&out);
    assert!(got.sweep.is_none());
    // --sweep over one template: its row alone, the same numbers.
    let out = eval(&dataset(), &["-t", "{}", "--sweep"]);
    success(&out);
    let rows = report(&out).sweep.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].template, "{}");
    close(rows[0].top1, r.metrics["{}"].top1, "sweep row");
    assert_eq!(got.templates, ["{}"]);
    let want = &r.metrics["{}"];
    close(got.top1, want.top1, "top1");
    close(got.top5, want.top5, "top5");
    close(
        got.mean_per_class_recall,
        want.mean_per_class_recall,
        "mpcr",
    );
}

#[test]
fn labels_from_a_file_or_a_map() {
    let r = reference();
    let dir = tempfile::tempdir().unwrap();
    // Same names, so the reference still holds; the file gives them in sorted folder order.
    let list = dir.path().join("classes.txt");
    std::fs::write(&list, r.classes.join("\n") + "\n").unwrap();
    let args = [
        template_args(&TEMPLATES),
        vec!["--labels-file".into(), list.display().to_string()],
    ]
    .concat();
    let out = eval(
        &dataset(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    success(&out);
    assert_matches(&report(&out), &r.metrics["ensemble"]);

    let map = dir.path().join("map.txt");
    let lines: Vec<String> = r
        .classes
        .iter()
        .rev()
        .map(|c| format!("{c} = {c}"))
        .collect();
    std::fs::write(&map, lines.join("\n")).unwrap();
    let args = [
        template_args(&TEMPLATES),
        vec!["--label-map".into(), map.display().to_string()],
    ]
    .concat();
    let out = eval(
        &dataset(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    success(&out);
    assert_matches(&report(&out), &r.metrics["ensemble"]);

    // Renamed classes: the labels change, so the numbers may too; the mapping is by folder.
    std::fs::write(
        &map,
        "camera=a camera\ncoin=a coin\nhorse=a horse\nlogo=a logo\npage=a page\nretina=a retina\n",
    )
    .unwrap();
    let out = eval(&dataset(), &["--label-map", map.to_str().unwrap()]);
    success(&out);
    let labels: Vec<String> = report(&out).classes.into_iter().map(|c| c.label).collect();
    assert_eq!(labels[0], "a camera");
    assert_eq!(labels[5], "a retina");

    // A label may name two classes (OpenAI's ImageNet names do): allowed, with a warning.
    std::fs::write(&list, "camera\ncoin\nhorse\nlogo\nlogo\nretina\n").unwrap();
    let out = eval(&dataset(), &["--labels-file", list.to_str().unwrap()]);
    success(&out);
    let got = report(&out);
    assert_eq!(got.classes[3].label, got.classes[4].label);
    assert!(
        stderr_of(&out).contains("label \"logo\" names two classes"),
        "{}",
        stderr_of(&out)
    );

    // Mistakes: one line naming the file, exit 2, nothing on stdout.
    std::fs::write(&list, "camera\ncoin\n").unwrap();
    let out = eval(&dataset(), &["--labels-file", list.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("classes.txt: 2 labels for 6 class folders"),
        "{err}"
    );

    std::fs::write(&map, "camera=a camera\nzebra=a zebra\n").unwrap();
    let out = eval(&dataset(), &["--label-map", map.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(
        err.contains("map.txt, line 2: no class folder \"zebra\""),
        "{err}"
    );
}

#[test]
fn failed_images_are_listed_and_the_rest_still_counted() {
    let r = reference();
    let dir = copy_dataset();
    let root = dir.path().join("pets");
    std::fs::write(
        root.join("horse/broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    let args = template_args(&TEMPLATES);
    let out = eval(&root, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let got = report(&out);
    assert_eq!(got.failed.len(), 1);
    assert!(got.failed[0].path.ends_with("broken.png"));
    assert!(
        got.failed[0].error.contains("broken.png"),
        "{}",
        got.failed[0].error
    );
    assert!(stderr_of(&out).contains("broken.png"));
    assert_matches(&got, &r.metrics["ensemble"]);
}

#[test]
fn an_empty_class_has_no_recall_and_is_left_out_of_the_mean() {
    let dir = copy_dataset();
    let root = dir.path().join("pets");
    std::fs::create_dir(root.join("zebra")).unwrap();
    std::fs::write(root.join("zebra/readme.txt"), "no images here").unwrap();
    std::fs::write(root.join("stray.png"), "beside the classes").unwrap();
    let out = eval(&root, &[]);
    success(&out);
    let got = report(&out);
    let zebra = got.classes.last().unwrap();
    assert_eq!(
        (zebra.label.as_str(), zebra.images, zebra.recall),
        ("zebra", 0, None)
    );
    let recalls: Vec<f64> = got.classes.iter().filter_map(|c| c.recall).collect();
    assert_eq!(recalls.len(), 6);
    let mean = recalls.iter().sum::<f64>() / 6.0;
    close(
        got.mean_per_class_recall,
        mean,
        "mean over classes with images",
    );
    assert_eq!(got.images, 17);
    let err = stderr_of(&out);
    assert!(err.contains("zebra: no images"), "{err}");
    assert!(err.contains("1 file(s) beside the class folders"), "{err}");
}

#[test]
fn fewer_than_five_classes_make_top5_every_class() {
    let dir = tempfile::tempdir().unwrap();
    for class in ["coin", "logo", "page"] {
        let from = dataset().join(class);
        std::fs::create_dir(dir.path().join(class)).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join(class).join(e.file_name())).unwrap();
        }
    }
    let out = eval(dir.path(), &[]);
    success(&out);
    let got = report(&out);
    assert_eq!(got.top5_k, 3);
    assert_eq!(got.top5, Some(1.0));
    assert_eq!(got.images, 9);
    assert!(
        stderr_of(&out).contains("top5 is top-3"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn bad_datasets_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    std::fs::create_dir_all(one.join("cat")).unwrap();
    for (root, message) in [
        (dir.path().join("missing"), "cannot read the dataset folder"),
        (one.clone(), "1 class folder(s); eval needs"),
    ] {
        let out = eval(&root, &[]);
        assert_eq!(out.status.code(), Some(2));
        let err = stderr_of(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(message), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn table_and_csv_formats() {
    let args = template_args(&TEMPLATES);
    let out = vlm()
        .arg("eval")
        .arg(dataset())
        .args(["-m", &model("tiny-openai"), "-f", "table", "--sweep"])
        .args(&args)
        .output()
        .unwrap();
    success(&out);
    let text = stdout_of(&out);
    assert!(text.contains("17 images"), "{text}");
    assert!(text.contains("top-1 29.41%"), "{text}");
    assert!(text.contains("sweep, best first:"), "{text}");
    assert!(text.contains("  logo  "), "{text}");
    let out = vlm()
        .arg("eval")
        .arg(dataset())
        .args(["-m", &model("tiny-openai"), "-f", "csv"])
        .args(&args)
        .output()
        .unwrap();
    success(&out);
    let text = stdout_of(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("label,images,recall,top_confusions"));
    assert_eq!(lines.count(), 6);
}

#[cfg(unix)]
#[test]
fn a_file_reached_through_two_class_folders_counts_once() {
    // Before: a class folder that is a symlink to another class's folder counted every file
    // twice (once per class).
    let root = tempfile::tempdir().unwrap();
    for (class, images) in [("camera", ["camera.png"]), ("coin", ["coins.png"])] {
        std::fs::create_dir(root.path().join(class)).unwrap();
        for name in images {
            std::fs::copy(
                fixtures().join("images").join(name),
                root.path().join(class).join(name),
            )
            .unwrap();
        }
    }
    std::os::unix::fs::symlink(root.path().join("coin"), root.path().join("money")).unwrap();
    let out = eval(root.path(), &["--no-cache"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let r = report(&out);
    assert_eq!(r.images, 2);
    let images: Vec<(&str, usize)> = r
        .classes
        .iter()
        .map(|c| (c.label.as_str(), c.images))
        .collect();
    assert_eq!(images, [("camera", 1), ("coin", 1), ("money", 0)]);
    let err = stderr_of(&out);
    assert!(
        err.contains("1 file(s) are in more than one class folder (e.g. ")
            && err.contains("money/coins.png is ")
            && err.contains("coin/coins.png): each is counted once, in its first class"),
        "{err}"
    );
}
