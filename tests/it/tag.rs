//! `vlm tag` and `vlm aspects` through the built binary, on the fixture models and real images:
//! numerical parity with transformers, the output formats, the documented single/multi scoring, the
//! rules (threshold, top_k), the text-embedding cache and aspect-file errors. JSON output is
//! checked by deserialising into strict structs (unknown fields are errors).
//!
//! The test aspects are `tests/fixtures/aspects/*.toml`; the transformers reference is
//! `tests/fixtures/reference/tag-*.json`, written by
//! `/work/.venv/bin/python tests/fixtures/make_fixtures.py --tag`.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use common::{
    fixtures, image, model, stderr_of, stdout_of, success, vlm, vlm_cache, Head, ModelInfo, PNGS,
};
use serde::Deserialize;

// ---------------------------------------------------------------------------------------------
// Output of `vlm tag` / `vlm aspects`
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Single,
    Multi,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tag {
    label: String,
    score: f32,
    cosine: f32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct AspectTags {
    aspect: String,
    kind: Kind,
    tags: Vec<Tag>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct TagResult {
    path: String,
    aspects: Vec<AspectTags>,
    error: Option<String>,
    /// JSONL only: the run's fingerprint, which `--resume` checks.
    #[serde(default)]
    run: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct AspectInfo {
    name: String,
    kind: Kind,
    description: String,
    source: String,
    labels: usize,
    templates: Vec<String>,
    top_k: Option<usize>,
    threshold: f32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    model: ModelInfo,
    aspects: Vec<AspectInfo>,
    results: Vec<TagResult>,
}

impl Document {
    fn aspect(&self, name: &str) -> &AspectInfo {
        self.aspects
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no aspect {name} in the header"))
    }
}

impl TagResult {
    fn tags(&self, aspect: &str) -> &[Tag] {
        &self
            .aspects
            .iter()
            .find(|a| a.aspect == aspect)
            .unwrap_or_else(|| panic!("{}: no aspect {aspect}", self.path))
            .tags
    }
}

/// One aspect of `vlm aspects --format json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Listing {
    name: String,
    kind: Kind,
    description: String,
    source: String,
    labels: usize,
    templates: Vec<String>,
    top_k: Option<usize>,
    threshold: f32,
    /// The neutral's prompts; multi aspects only.
    #[serde(default)]
    neutral: Option<Vec<String>>,
    /// Only when aspects are named.
    #[serde(default)]
    label_prompts: Option<Vec<LabelPrompts>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelPrompts {
    label: String,
    prompts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Listings {
    aspects: Vec<Listing>,
}

// ---------------------------------------------------------------------------------------------
// The transformers reference (make_fixtures.py --tag)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct Reference {
    model: String,
    logit_scale: f64,
    aspects: Vec<RefAspect>,
    images: Vec<String>,
    results: Vec<RefImage>,
}

#[derive(Debug, Deserialize)]
struct RefAspect {
    file: String,
    name: String,
    kind: Kind,
    labels: Vec<RefLabel>,
    neutral: Option<RefLabel>,
}

#[derive(Debug, Deserialize)]
struct RefLabel {
    label: String,
    prompts: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RefImage {
    image: String,
    aspects: Vec<RefScores>,
}

#[derive(Debug, Deserialize)]
struct RefScores {
    aspect: String,
    /// Every label, in label order.
    tags: Vec<RefTag>,
}

#[derive(Debug, Deserialize)]
struct RefTag {
    label: String,
    score: f64,
    cosine: f64,
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Against the transformers reference, on PNG images (vlm's pixels are bit-exact with PIL's there):
/// embeddings differ only in f32 summation order, and the observed worst cases are ~3e-7 on cosines
/// and ~1.5e-6 on scores. The tolerances leave room for other CPUs and BLAS kernels while still
/// catching a wrong formula (a missing normalisation, a softmax where a sigmoid belongs, the
/// neutral left out, the wrong logit scale all move scores by far more than 1e-2).
const COSINE_TOL: f64 = 1e-5;
/// A cosine error of 1e-5 times exp(logit_scale) = 100 moves a softmax or sigmoid by up to 5e-4
/// in theory; in practice errors are far smaller and partly cancel.
const SCORE_TOL: f64 = 2e-4;

/// Same text, same image, different batch composition: only the last bits may differ.
const SAME_TOL: f32 = 1e-6;
/// A multi score whose label or neutral was re-encoded in another batch: the last-bit difference of
/// the cosines is multiplied by exp(logit_scale) = 100 before the sigmoid (measured: 1.3e-6, when the
/// entry repaired in `text_cache_is_written_read_and_repaired` is the neutral; which entry that is
/// depends on the cache key, i.e. on the checkout's path and file dates).
const SAME_SCORE_TOL: f32 = 1e-5;

const KIND: &str = "kind.toml";
const KIND_PLUS: &str = "kind_plus.toml";
const THING: &str = "thing.toml";
const THING_SUBSET: &str = "thing_subset.toml";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `--aspects` value for several test aspect files.
fn aspect_files(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| common::aspect(n))
        .collect::<Vec<_>>()
        .join(",")
}

fn reference(model: &str) -> Reference {
    let path = fixtures().join(format!("reference/tag-{model}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `vlm tag --model MODEL ARGS --format json`, expected to succeed.
fn tag_json(cmd: &mut Command, model_name: &str, args: &[&str]) -> Document {
    let out = cmd
        .args(["tag", "--model", &model(model_name)])
        .args(args)
        .arg("--format=json")
        .output()
        .unwrap();
    success(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every label of every aspect, best first.
const EVERY_TAG: [&str; 4] = ["--threshold", "0", "--top-k", "1000"];

fn args<'a>(base: &'a [&'a str], rest: &'a [String]) -> Vec<&'a str> {
    base.iter()
        .copied()
        .chain(rest.iter().map(String::as_str))
        .collect()
}

fn images(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| image(n)).collect()
}

/// Label -> tag of one aspect of one image.
fn by_label(tags: &[Tag]) -> BTreeMap<&str, &Tag> {
    tags.iter().map(|t| (t.label.as_str(), t)).collect()
}

fn assert_best_first(tags: &[Tag], what: &str) {
    for w in tags.windows(2) {
        assert!(w[0].score >= w[1].score, "{what}: not best first: {tags:?}");
    }
}

/// Results equal up to the last bits of the floats (same labels, same order of tags is not
/// required where scores are that close).
fn assert_same_results(a: &[TagResult], b: &[TagResult], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.path, y.path, "{what}");
        assert_eq!(x.error, y.error, "{what}");
        assert_eq!(x.aspects.len(), y.aspects.len(), "{what}");
        for (p, q) in x.aspects.iter().zip(&y.aspects) {
            assert_eq!((&p.aspect, p.kind), (&q.aspect, q.kind), "{what}");
            let (p, q) = (by_label(&p.tags), by_label(&q.tags));
            assert_eq!(
                p.keys().collect::<Vec<_>>(),
                q.keys().collect::<Vec<_>>(),
                "{what}: {}",
                x.path
            );
            for (l, t) in &p {
                let u = q[l];
                assert!(
                    (t.score - u.score).abs() <= SAME_SCORE_TOL
                        && (t.cosine - u.cosine).abs() <= SAME_TOL,
                    "{what}: {} {l}: {t:?} vs {u:?}",
                    x.path
                );
            }
        }
    }
}

/// Runs `vlm` expecting one of vlm's own usage errors: exit code 2, exactly one stderr line
/// ("vlm: ..."), no panic or backtrace.
fn usage_error(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", stdout_of(&out));
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("vlm: "), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
    stderr
}

/// Runs `vlm` expecting an argument error found by clap: the same one-line shape as vlm's own.
fn clap_error(cmd: &mut Command) -> String {
    usage_error(cmd)
}

// ---------------------------------------------------------------------------------------------
// 1. Parity with transformers
// ---------------------------------------------------------------------------------------------

fn check_parity(model_name: &str) {
    let r = reference(model_name);
    assert_eq!(r.model, model_name);
    assert_eq!(r.images, PNGS);
    let files: Vec<&str> = r.aspects.iter().map(|a| a.file.as_str()).collect();
    assert_eq!(files, [KIND, THING]);

    // The reference read the aspect files as vlm does: same labels, same prompts per label.
    let out = vlm()
        .args(["aspects", "-f", "json"])
        .args(files.iter().map(|f| common::aspect(f)))
        .output()
        .unwrap();
    success(&out);
    let listed: Listings = serde_json::from_slice(&out.stdout).unwrap();
    for (l, a) in listed.aspects.iter().zip(&r.aspects) {
        assert_eq!((&l.name, l.kind), (&a.name, a.kind));
        let prompts = l.label_prompts.as_ref().unwrap();
        assert_eq!(prompts.len(), a.labels.len());
        for (p, q) in prompts.iter().zip(&a.labels) {
            assert_eq!((&p.label, &p.prompts), (&q.label, &q.prompts));
        }
        assert_eq!(l.neutral, a.neutral.as_ref().map(|n| n.prompts.clone()));
    }

    let imgs = images(&PNGS);
    let aspects = aspect_files(&files);
    // --no-cache: the text tower encodes every prompt (the cache tests show that cached
    // embeddings give the same results).
    let base = ["--aspects", aspects.as_str(), "--no-cache"];
    let doc = tag_json(
        &mut vlm(),
        model_name,
        &args(&[&base[..], &EVERY_TAG[..]].concat(), &imgs),
    );
    assert_eq!(doc.model.id, model(model_name));
    assert_eq!(doc.model.revision, None);
    assert_eq!(doc.model.family, "clip");
    assert_eq!(doc.model.head, Head::Softmax);
    let names: Vec<&str> = doc.aspects.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["kind", "thing"]);
    for (h, a) in doc.aspects.iter().zip(&r.aspects) {
        assert_eq!(h.kind, a.kind);
        assert_eq!(h.labels, a.labels.len());
        assert_eq!(h.source, common::aspect(&a.file));
        assert_eq!((h.top_k, h.threshold), (Some(1000), 0.0));
    }

    let (mut max_score, mut max_cos) = (0f64, 0f64);
    assert_eq!(doc.results.len(), r.results.len());
    for ((res, want), path) in doc.results.iter().zip(&r.results).zip(&imgs) {
        assert_eq!(&res.path, path);
        assert_eq!(image(&want.image), *path);
        assert_eq!(res.error, None);
        assert_eq!(res.aspects.len(), want.aspects.len());
        for ((got, want), spec) in res.aspects.iter().zip(&want.aspects).zip(&r.aspects) {
            let what = format!("{model_name}: {}: {}", want.aspect, path);
            assert_eq!(got.aspect, want.aspect);
            assert_eq!(got.kind, spec.kind);
            // Every label exactly once.
            let got_labels: BTreeSet<&str> = got.tags.iter().map(|t| t.label.as_str()).collect();
            let want_labels: BTreeSet<&str> = want.tags.iter().map(|t| t.label.as_str()).collect();
            assert_eq!(got.tags.len(), want.tags.len(), "{what}");
            assert_eq!(got_labels, want_labels, "{what}");
            let tags = by_label(&got.tags);
            for w in &want.tags {
                let t = tags[w.label.as_str()];
                let ds = (t.score as f64 - w.score).abs();
                let dc = (t.cosine as f64 - w.cosine).abs();
                assert!(
                    ds <= SCORE_TOL,
                    "{what}: {}: score {} vs {}",
                    w.label,
                    t.score,
                    w.score
                );
                assert!(
                    dc <= COSINE_TOL,
                    "{what}: {}: cosine {} vs {}",
                    w.label,
                    t.cosine,
                    w.cosine
                );
                max_score = max_score.max(ds);
                max_cos = max_cos.max(dc);
            }
            // Best first, and in the reference's order wherever the reference can tell.
            assert_best_first(&got.tags, &what);
            let ref_score: BTreeMap<&str, f64> = want
                .tags
                .iter()
                .map(|t| (t.label.as_str(), t.score))
                .collect();
            for w in got.tags.windows(2) {
                let (a, b) = (
                    ref_score[w[0].label.as_str()],
                    ref_score[w[1].label.as_str()],
                );
                assert!(
                    a >= b - SCORE_TOL,
                    "{what}: {} ranked above {} but the reference has {a} < {b}",
                    w[0].label,
                    w[1].label
                );
            }
            if spec.kind == Kind::Single {
                let sum: f32 = got.tags.iter().map(|t| t.score).sum();
                assert!((sum - 1.0).abs() < 1e-5, "{what}: sum {sum}");
            }
        }
    }
    eprintln!("{model_name}: max |score diff| {max_score:.2e}, max |cosine diff| {max_cos:.2e}");
}

#[test]
fn tiny_openai_tags_match_transformers() {
    check_parity("tiny-openai");
}

#[test]
fn tiny_laion_tags_match_transformers() {
    check_parity("tiny-laion");
}

// ---------------------------------------------------------------------------------------------
// 2. Every output format carries the same tags
// ---------------------------------------------------------------------------------------------

#[test]
fn every_format_carries_the_same_tags() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.png").display().to_string();
    let inputs = [image("camera.png"), missing.clone(), image("horse.png")];
    let aspects = aspect_files(&[KIND, THING]);
    let run = |format: &str| {
        let out = vlm()
            .args([
                "tag",
                "--model",
                &model("tiny-openai"),
                "--aspects",
                &aspects,
            ])
            .args(&inputs)
            .args(["--format", format])
            .output()
            .unwrap();
        let stderr = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{format}: {stderr}");
        // The failed image is reported once, naming the file; nothing else on stderr.
        assert_eq!(stderr.lines().count(), 1, "{format}: {stderr}");
        assert!(stderr.contains(&missing), "{format}: {stderr}");
        stdout_of(&out)
    };

    let doc: Document = serde_json::from_str(&run("json")).unwrap();
    // The aspect files' own rules: kind is single with the defaults, thing says top 4 at >= 0.3.
    assert_eq!(
        (doc.aspect("kind").top_k, doc.aspect("kind").threshold),
        (Some(3), 0.0)
    );
    assert_eq!(
        (doc.aspect("thing").top_k, doc.aspect("thing").threshold),
        (Some(4), 0.3)
    );
    let paths: Vec<&str> = doc.results.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, inputs);
    let failed = &doc.results[1];
    assert!(failed.aspects.is_empty());
    let error = failed.error.clone().unwrap();
    assert!(error.contains(&missing), "{error}");
    for r in [&doc.results[0], &doc.results[2]] {
        assert_eq!(r.error, None);
        let names: Vec<(&str, Kind)> = r.aspects.iter().map(|a| (&*a.aspect, a.kind)).collect();
        assert_eq!(names, [("kind", Kind::Single), ("thing", Kind::Multi)]);
        assert_eq!(r.tags("kind").len(), 3);
        assert!(r.tags("thing").len() <= 4);
        assert!(r.tags("thing").iter().all(|t| t.score >= 0.3));
    }
    // The table's "-" for an aspect without tags must be exercised by one of the images.
    assert!(
        doc.results
            .iter()
            .any(|r| r.error.is_none() && r.tags("thing").is_empty()),
        "no image without thing tags: {:?}",
        doc.results
    );

    // JSONL: the same result objects, one per line, each with the run's fingerprint.
    let mut jsonl: Vec<TagResult> = run("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for r in &mut jsonl {
        let run = r.run.take().unwrap_or_default();
        assert!(run.starts_with("tag m="), "{run:?}");
    }
    assert_eq!(jsonl, doc.results);

    // CSV: one row per image, aspect and tag; the failed image one row with path and error. The
    // numbers are printed in full (shortest round-trip), so they parse back to the same f32.
    let csv = run("csv");
    assert!(!csv.contains('"'), "nothing here needs quoting: {csv}");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("path,aspect,rank,label,score,cosine,error")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let mut want_rows = 0;
    let mut rows_iter = rows.iter();
    for r in &doc.results {
        if let Some(err) = &r.error {
            let row = rows_iter.next().unwrap();
            assert_eq!(row, &[r.path.as_str(), "", "", "", "", "", err.as_str()]);
            want_rows += 1;
        }
        for a in &r.aspects {
            for (i, t) in a.tags.iter().enumerate() {
                let row = rows_iter.next().unwrap();
                assert_eq!(row.len(), 7, "{row:?}");
                assert_eq!(row[0], r.path);
                assert_eq!(row[1], a.aspect);
                assert_eq!(row[2], (i + 1).to_string());
                assert_eq!(row[3], t.label);
                assert_eq!(row[4].parse::<f32>().unwrap(), t.score, "{row:?}");
                assert_eq!(row[5].parse::<f32>().unwrap(), t.cosine, "{row:?}");
                assert_eq!(row[6], "");
                want_rows += 1;
            }
        }
    }
    assert_eq!(rows.len(), want_rows);

    // Table: the path, then one line per aspect, "label NN%" joined by two spaces, or "-"
    // (a snapshot; the checkout's own folder is shown as [fixtures]).
    let table = run("table")
        .replace(&fixtures().display().to_string(), "[fixtures]")
        .replace(&missing, "[missing]");
    insta::assert_snapshot!("tag_table", table);
}

// ---------------------------------------------------------------------------------------------
// 3. Single and multi aspects behave as documented, on real images
// ---------------------------------------------------------------------------------------------

/// A single aspect is a softmax over its labels: the scores sum to 1, and adding a label takes
/// probability from every other label in proportion (p' = p * (1 - p'_new)); cosines do not move.
#[test]
fn a_single_aspects_scores_sum_to_one_and_depend_on_the_other_labels() {
    let imgs = images(&PNGS);
    let aspects = aspect_files(&[KIND, KIND_PLUS]);
    let base = [&["--aspects", aspects.as_str()][..], &EVERY_TAG[..]].concat();
    let doc = tag_json(&mut vlm(), "tiny-laion", &args(&base, &imgs));
    let mut moved = 0f32;
    for r in &doc.results {
        let (few, more) = (r.tags("kind"), r.tags("kind_plus"));
        assert_eq!((few.len(), more.len()), (5, 6));
        for tags in [few, more] {
            let sum: f32 = tags.iter().map(|t| t.score).sum();
            assert!((sum - 1.0).abs() < 1e-5, "{}: sum {sum}", r.path);
            assert!(tags.iter().all(|t| (0.0..=1.0).contains(&t.score)));
        }
        let more = by_label(more);
        let new = more["logo"].score;
        for t in few {
            let m = more[t.label.as_str()];
            assert!((t.cosine - m.cosine).abs() <= SAME_TOL, "{}: {t:?}", r.path);
            assert!(
                (m.score - t.score * (1.0 - new)).abs() < 1e-5,
                "{}: {} went from {} to {}, the new label has {new}",
                r.path,
                t.label,
                t.score,
                m.score
            );
            moved = moved.max((m.score - t.score).abs());
        }
    }
    assert!(
        moved > 0.01,
        "adding a label moved no score by more than {moved}"
    );
}

/// A multi label's score is its own: the same with or without the aspect's other labels, whether
/// the texts are encoded in one batch or in separate runs. (In separate runs the text tower sees
/// different batches, which moves cosines by ~1e-8; times exp(logit_scale) = 100 that moves a
/// score by up to a few 1e-6, hence the looser score tolerance there.)
#[test]
fn a_multi_labels_score_does_not_depend_on_the_other_labels() {
    let imgs = images(&PNGS);
    for model_name in ["tiny-openai", "tiny-laion"] {
        let aspects = aspect_files(&[THING, THING_SUBSET]);
        let base = [
            &["--aspects", aspects.as_str(), "--no-cache"][..],
            &EVERY_TAG[..],
        ]
        .concat();
        let both = tag_json(&mut vlm(), model_name, &args(&base, &imgs));
        let subset = common::aspect(THING_SUBSET);
        let base = [
            &["--aspects", subset.as_str(), "--no-cache"][..],
            &EVERY_TAG[..],
        ]
        .concat();
        let alone = tag_json(&mut vlm(), model_name, &args(&base, &imgs));
        for (r, s) in both.results.iter().zip(&alone.results) {
            let full = by_label(r.tags("thing"));
            for (sub, score_tol) in [
                (r.tags("thing_subset"), SAME_TOL),
                (s.tags("thing_subset"), 1e-5),
            ] {
                assert_eq!(sub.len(), 2);
                for t in sub {
                    let f = full[t.label.as_str()];
                    assert!(
                        (t.score - f.score).abs() <= score_tol
                            && (t.cosine - f.cosine).abs() <= SAME_TOL,
                        "{model_name}: {}: {t:?} alone, {f:?} among 6 labels",
                        r.path
                    );
                }
            }
        }
    }
}

/// Multi scores are each in [0, 1], need not sum to anything, and follow the documented formula:
/// for two labels of one image, logit(p1) - logit(p2) = exp(logit_scale) * (cos1 - cos2) (the
/// neutral prompt cancels). With the default threshold, an image may get no tag at all.
#[test]
fn multi_scores_are_independent_sigmoids() {
    let imgs = images(&PNGS);
    for model_name in ["tiny-openai", "tiny-laion"] {
        let scale = reference(model_name).logit_scale.exp();
        let aspects = aspect_files(&[THING]);
        let base = [&["--aspects", aspects.as_str()][..], &EVERY_TAG[..]].concat();
        let doc = tag_json(&mut vlm(), model_name, &args(&base, &imgs));
        let mut checked = 0;
        for r in &doc.results {
            let tags = r.tags("thing");
            assert_eq!(tags.len(), 6);
            assert!(tags.iter().all(|t| (0.0..=1.0).contains(&t.score)));
            let logit = |p: f32| (p as f64 / (1.0 - p as f64)).ln();
            let usable: Vec<&Tag> = tags
                .iter()
                .filter(|t| (1e-4..=0.999).contains(&t.score))
                .collect();
            for pair in usable.windows(2) {
                let lhs = logit(pair[0].score) - logit(pair[1].score);
                let rhs = scale * (pair[0].cosine as f64 - pair[1].cosine as f64);
                assert!(
                    (lhs - rhs).abs() < 2e-3,
                    "{model_name}: {}: {pair:?}: {lhs} vs {rhs}",
                    r.path
                );
                checked += 1;
            }
        }
        assert!(checked >= 10, "{model_name}: only {checked} pairs checked");
    }

    // At the default threshold (0.5, the label beats the neutral prompt) the tiny openai model
    // gives these images no thing at all, while a single aspect always reports its top k.
    let aspects = aspect_files(&[KIND, THING]);
    let doc = tag_json(
        &mut vlm(),
        "tiny-openai",
        &args(
            &["--aspects", aspects.as_str(), "--threshold", "thing=0.5"],
            &imgs,
        ),
    );
    assert_eq!(doc.aspect("thing").threshold, 0.5);
    for r in &doc.results {
        assert!(
            r.tags("thing").is_empty(),
            "{}: {:?}",
            r.path,
            r.tags("thing")
        );
        assert_eq!(r.tags("kind").len(), 3);
    }
}

/// Threshold and top_k: a higher threshold never adds tags, exactly the labels scoring at least
/// the threshold are reported, top_k cuts per aspect keeping the best, per-aspect values apply to
/// their aspect only, and the command line wins over the file, which wins over the defaults.
#[test]
fn threshold_and_top_k_filter_as_documented() {
    let imgs = images(&["camera.png", "coins.png", "horse.png", "page.png"]);
    let aspects = aspect_files(&[KIND, THING]);
    let run = |extra: &[&str]| {
        let base = [&["--aspects", aspects.as_str()][..], extra].concat();
        tag_json(&mut vlm(), "tiny-laion", &args(&base, &imgs))
    };
    let full = run(&EVERY_TAG);
    // What `rule` should leave of the full list (already best first).
    let expect = |r: &TagResult, aspect: &str, top_k: Option<usize>, threshold: f32| {
        let mut tags: Vec<Tag> = r
            .tags(aspect)
            .iter()
            .filter(|t| t.score >= threshold)
            .cloned()
            .collect();
        if let Some(k) = top_k {
            tags.truncate(k);
        }
        tags
    };
    let check = |doc: &Document, rules: [(Option<usize>, f32); 2], what: &str| {
        for (name, rule) in ["kind", "thing"].into_iter().zip(rules) {
            let h = doc.aspect(name);
            assert_eq!((h.top_k, h.threshold), rule, "{what}: {name} header");
        }
        for (r, f) in doc.results.iter().zip(&full.results) {
            for (name, (k, t)) in ["kind", "thing"].into_iter().zip(rules) {
                assert_eq!(
                    r.tags(name),
                    expect(f, name, k, t),
                    "{what}: {} {name}",
                    r.path
                );
            }
        }
    };

    // Raising the threshold: nested tag sets, each exactly the labels at or above it.
    let mut previous: Option<Document> = None;
    let mut counts: Vec<usize> = Vec::new();
    for t in ["0", "0.01", "0.1", "0.3", "0.5", "0.9", "1"] {
        let doc = run(&["--threshold", t, "--top-k", "1000"]);
        let v: f32 = t.parse().unwrap();
        check(
            &doc,
            [(Some(1000), v), (Some(1000), v)],
            &format!("--threshold {t}"),
        );
        if let Some(prev) = &previous {
            for (r, p) in doc.results.iter().zip(&prev.results) {
                for a in &r.aspects {
                    let before: BTreeSet<&str> =
                        p.tags(&a.aspect).iter().map(|t| t.label.as_str()).collect();
                    assert!(a.tags.iter().all(|t| before.contains(t.label.as_str())));
                }
            }
        }
        counts.push(
            doc.results
                .iter()
                .flat_map(|r| &r.aspects)
                .map(|a| a.tags.len())
                .sum::<usize>(),
        );
        previous = Some(doc);
    }
    // Not vacuous: the lowest threshold keeps tags, and raising it removes some.
    assert!(counts[0] > 0, "{counts:?}");
    assert!(counts.windows(2).any(|w| w[1] < w[0]), "{counts:?}");
    assert!(counts.windows(2).all(|w| w[1] <= w[0]), "{counts:?}");

    // The aspect files' rules when no flag is given (kind: defaults; thing: its file's).
    check(&run(&[]), [(Some(3), 0.0), (Some(4), 0.3)], "no flags");
    // Global flags win over the file and the defaults.
    let doc = run(&["--top-k", "2", "--threshold", "0.1"]);
    check(
        &doc,
        [(Some(2), 0.1), (Some(2), 0.1)],
        "-k 2 --threshold 0.1",
    );
    // Each part of the rule is resolved on its own: a global top_k leaves the file's threshold.
    let doc = run(&["-k", "5"]);
    check(&doc, [(Some(5), 0.0), (Some(5), 0.3)], "-k 5");
    // Per-aspect values apply to their aspect only, and win over a global value in any order.
    let doc = run(&["--threshold", "thing=0.9", "--threshold", "0", "-k", "1000"]);
    check(
        &doc,
        [(Some(1000), 0.0), (Some(1000), 0.9)],
        "--threshold thing=0.9",
    );
    let doc = run(&["--top-k", "kind=1", "--threshold", "thing=0.05"]);
    check(
        &doc,
        [(Some(1), 0.0), (Some(4), 0.05)],
        "--top-k kind=1 --threshold thing=0.05",
    );
    let doc = run(&["-k", "kind=2", "-k", "1000", "--threshold", "0"]);
    check(
        &doc,
        [(Some(2), 0.0), (Some(1000), 0.0)],
        "-k kind=2 -k 1000",
    );
}

// ---------------------------------------------------------------------------------------------
// 4. The text-embedding cache
// ---------------------------------------------------------------------------------------------

/// Every cache entry, sorted.
fn cache_entries(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for model in std::fs::read_dir(cache.join("text-v1")).unwrap() {
        for entry in std::fs::read_dir(model.unwrap().path()).unwrap() {
            out.push(entry.unwrap().path());
        }
    }
    out.sort();
    out
}

/// `vlm tag -v` on the test aspects with `VLM_CACHE_DIR=cache`; the results and stderr.
fn cached_run(cache: &Path, extra: &[&str]) -> (Vec<TagResult>, String) {
    let aspects = aspect_files(&[KIND, THING]);
    let out = vlm_cache(cache)
        .args(["tag", "-v", "--model", &model("tiny-openai")])
        .args(["--aspects", &aspects])
        .args(EVERY_TAG)
        .args(extra)
        .args(images(&["camera.png", "page.png"]))
        .arg("--format=json")
        .output()
        .unwrap();
    success(&out);
    let doc: Document = serde_json::from_slice(&out.stdout).unwrap();
    (doc.results, stderr_of(&out))
}

#[test]
fn text_cache_is_written_read_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    // kind: 5 labels; thing: 6 labels and the neutral. No two share their prompts.
    const UNITS: usize = 12;

    let (first, stderr) = cached_run(&cache, &[]);
    assert!(
        stderr.contains(&format!(
            "{UNITS} entries (labels and neutral prompts), 0 from the cache, {UNITS} encoded"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("vision and text towers"), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let entries = cache_entries(&cache);
    assert_eq!(entries.len(), UNITS, "{entries:?}");
    assert!(entries
        .iter()
        .all(|e| e.extension().is_some_and(|x| x == "bin")));

    // Everything from the cache: the text tower is not even loaded, and the results are identical.
    let (second, stderr) = cached_run(&cache, &[]);
    assert!(
        stderr.contains(&format!("{UNITS} from the cache, 0 encoded")),
        "{stderr}"
    );
    assert!(stderr.contains("vision tower only"), "{stderr}");
    assert_eq!(second, first);

    // One entry with a byte flipped in the middle: recomputed, and the entry repaired.
    let flip = |path: &Path| {
        let mut bytes = std::fs::read(path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(path, bytes).unwrap();
    };
    flip(&entries[3]);
    let (third, stderr) = cached_run(&cache, &[]);
    assert!(
        stderr.contains(&format!("{} from the cache, 1 encoded", UNITS - 1)),
        "{stderr}"
    );
    assert!(stderr.contains("vision and text towers"), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    assert_same_results(&third, &first, "after a flipped byte");

    // One entry cut in half and one emptied: both recomputed.
    let len = std::fs::metadata(&entries[5]).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&entries[5])
        .unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    std::fs::write(&entries[8], b"").unwrap();
    let (fourth, stderr) = cached_run(&cache, &[]);
    assert!(
        stderr.contains(&format!("{} from the cache, 2 encoded", UNITS - 2)),
        "{stderr}"
    );
    assert_same_results(&fourth, &first, "after truncated entries");

    // Every entry is valid again, and no temporary files were left behind.
    assert_eq!(cache_entries(&cache), entries);
    let (fifth, stderr) = cached_run(&cache, &[]);
    assert!(
        stderr.contains(&format!("{UNITS} from the cache, 0 encoded")),
        "{stderr}"
    );
    assert!(stderr.contains("vision tower only"), "{stderr}");
    assert_eq!(fifth, fourth);
}

#[test]
fn no_cache_never_creates_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (with_cache, _) = cached_run(&dir.path().join("other"), &[]);
    let (results, stderr) = cached_run(&cache, &["--no-cache"]);
    assert!(!cache.exists());
    assert!(stderr.contains("0 from the cache"), "{stderr}");
    assert!(stderr.contains("no cache"), "{stderr}");
    assert_same_results(&results, &with_cache, "--no-cache");
}

#[test]
fn a_cache_that_cannot_be_created_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "not a folder").unwrap();
    let cache = file.join("cache");
    let (expected, _) = cached_run(&dir.path().join("good"), &["--no-cache"]);

    let (results, stderr) = cached_run(&cache, &[]);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].starts_with("vlm: warning: text cache not written"),
        "{stderr}"
    );
    assert_same_results(&results, &expected, "unwritable cache");

    // --quiet silences the warning; the run still succeeds.
    let aspects = aspect_files(&[KIND]);
    let out = vlm_cache(&cache)
        .args(["tag", "-q", "--model", &model("tiny-openai")])
        .args(["--aspects", &aspects, "--format", "json"])
        .arg(image("camera.png"))
        .output()
        .unwrap();
    success(&out);
    assert_eq!(stderr_of(&out), "");
}

// ---------------------------------------------------------------------------------------------
// 5. Aspect files and names on the command line
// ---------------------------------------------------------------------------------------------

#[test]
fn aspect_files_by_relative_path() {
    // A path with a '/' ...
    let doc = tag_json(
        vlm().current_dir(root()),
        "tiny-openai",
        &[
            "--aspects",
            "./tests/fixtures/aspects/kind.toml",
            &image("coins.png"),
        ],
    );
    assert_eq!(doc.aspects[0].source, "./tests/fixtures/aspects/kind.toml");
    assert_eq!(doc.aspects[0].name, "kind");
    assert_eq!(doc.results[0].tags("kind").len(), 3);
    // ... or a bare name ending in .toml, mixed with a built-in.
    let doc = tag_json(
        vlm().current_dir(fixtures().join("aspects")),
        "tiny-openai",
        &["--aspects", "thing.toml,weather", &image("coins.png")],
    );
    let names: Vec<(&str, &str)> = doc
        .aspects
        .iter()
        .map(|a| (a.name.as_str(), a.source.as_str()))
        .collect();
    assert_eq!(names, [("thing", "thing.toml"), ("weather", "built-in")]);
    let a = doc.aspect("thing");
    assert_eq!(a.kind, Kind::Multi);
    assert_eq!(a.labels, 6);
    assert_eq!(
        a.templates,
        ["a photo of the {}.", "a picture showing the {}."]
    );
    assert_eq!(
        a.description,
        "Things visible in the picture (test aspect)."
    );
}

#[test]
fn a_bad_aspect_file_is_one_line_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "dup.toml",
            "name = \"dup\"\ndescription = \"Test.\"\nkind = \"single\"\ntemplates = [\"a photo of a {}.\"]\nlabels = [\n  \"cat\",\n  \"dog\",\n  \"Cat\",\n]\n",
            "dup.toml:8: label \"Cat\" appears twice (first on line 6)",
        ),
        (
            "noneutral.toml",
            "name = \"nn\"\ndescription = \"Test.\"\nkind = \"multi\"\ntemplates = [\"a photo of a {}.\"]\nlabels = [\"cat\"]\n",
            "noneutral.toml:3: kind = \"multi\" needs a neutral",
        ),
        (
            "syntax.toml",
            "name = \"s\"\ndescription = \"Test.\"\nkind = \"single\"\ntop_k = = 2\n",
            "syntax.toml:4:",
        ),
    ];
    for (name, text, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let spec = path.display().to_string();
        let stderr = usage_error(vlm().args([
            "tag",
            "--model",
            &model("tiny-openai"),
            "--aspects",
            &spec,
            &image("coins.png"),
        ]));
        let full = format!("{}", dir.path().join(want).display());
        assert!(stderr.contains(&full), "want {full:?}, got {stderr}");
        // `vlm aspects FILE` reads it the same way.
        let stderr = usage_error(vlm().args(["aspects", &spec]));
        assert!(stderr.contains(&full), "want {full:?}, got {stderr}");
    }
    // A file that does not exist.
    let missing = dir.path().join("missing.toml").display().to_string();
    let stderr = usage_error(vlm().args([
        "tag",
        "--model",
        &model("tiny-openai"),
        "--aspects",
        &missing,
        &image("coins.png"),
    ]));
    assert!(stderr.contains(&missing), "{stderr}");
}

#[test]
fn unknown_aspects_and_rules_are_usage_errors() {
    let tiny = model("tiny-openai");
    let coins = image("coins.png");
    let cmd = |extra: &[&str]| {
        let mut cmd = vlm();
        cmd.args(["tag", "--model", &tiny]).args(extra).arg(&coins);
        cmd
    };
    // vlm's own checks: one line, "vlm: ...".
    let tag = |extra: &[&str]| usage_error(&mut cmd(extra));
    // Values clap refuses.
    let arg = |extra: &[&str]| clap_error(&mut cmd(extra));
    let stderr = tag(&["--aspects", "color,nosuch"]);
    assert!(stderr.contains("nosuch"), "{stderr}");
    for name in [
        "color",
        "scene",
        "object",
        "medium",
        "lighting",
        "time_of_day",
        "weather",
        "mood",
    ] {
        assert!(stderr.contains(name), "{name} not listed: {stderr}");
    }
    let stderr = tag(&["--aspects", "scene", "--threshold", "nosuch=0.3"]);
    assert!(stderr.contains("nosuch"), "{stderr}");
    let stderr = tag(&["--aspects", "scene", "--top-k", "object=2"]);
    assert!(stderr.contains("object"), "{stderr}");
    for bad in ["1.5", "-0.1", "scene=x", "NaN"] {
        let stderr = arg(&["--aspects", "scene", "--threshold", bad]);
        assert!(stderr.contains("threshold"), "{bad}: {stderr}");
    }
    for bad in ["0", "scene=0", "-1"] {
        arg(&["--aspects", "scene", "--top-k", bad]);
    }
    tag(&["--aspects", "scene,,color"]);
    // --aspects is required.
    arg(&[]);
    // Two different aspects with one name.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("scene.toml");
    std::fs::write(
        &other,
        "name = \"scene\"\ndescription = \"Mine.\"\nkind = \"single\"\ntemplates = [\"a {}.\"]\nlabels = [\"a\", \"b\"]\n",
    )
    .unwrap();
    let stderr = tag(&["--aspects", &format!("scene,{}", other.display())]);
    assert!(stderr.contains("scene"), "{stderr}");
}

#[test]
fn all_runs_every_builtin_in_order() {
    let doc = tag_json(
        &mut vlm(),
        "tiny-openai",
        &["--aspects", "all", &image("horse.png")],
    );
    let want = [
        ("color", Kind::Multi),
        ("scene", Kind::Single),
        ("object", Kind::Multi),
        ("medium", Kind::Single),
        ("lighting", Kind::Single),
        ("time_of_day", Kind::Single),
        ("weather", Kind::Single),
        ("mood", Kind::Single),
    ];
    let header: Vec<(&str, Kind)> = doc.aspects.iter().map(|a| (&*a.name, a.kind)).collect();
    assert_eq!(header, want);
    assert!(doc.aspects.iter().all(|a| a.source == "built-in"));
    let r = &doc.results[0];
    assert_eq!(r.error, None);
    let got: Vec<(&str, Kind)> = r.aspects.iter().map(|a| (&*a.aspect, a.kind)).collect();
    assert_eq!(got, want);
    for (a, h) in r.aspects.iter().zip(&doc.aspects) {
        assert_best_first(&a.tags, &a.aspect);
        assert!(
            a.tags.len() <= h.top_k.unwrap_or(usize::MAX),
            "{}",
            a.aspect
        );
        assert!(a.tags.iter().all(|t| t.score >= h.threshold));
        assert!(a.tags.iter().all(|t| (0.0..=1.0).contains(&t.score)));
        if a.kind == Kind::Single {
            // Threshold 0: a single aspect always reports its top k.
            assert_eq!(Some(a.tags.len()), h.top_k, "{}", a.aspect);
        }
    }
    // `all` with a built-in named again is the same run.
    let again = tag_json(
        &mut vlm(),
        "tiny-openai",
        &[
            "--aspects",
            "scene,all",
            "--aspects",
            "mood",
            &image("horse.png"),
        ],
    );
    let names: Vec<&str> = again.aspects.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "scene",
            "color",
            "object",
            "medium",
            "lighting",
            "time_of_day",
            "weather",
            "mood"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// 6. `vlm aspects`
// ---------------------------------------------------------------------------------------------

fn aspects_json(args: &[&str]) -> Listings {
    let out = vlm()
        .arg("aspects")
        .args(args)
        .args(["-f", "json"])
        .output()
        .unwrap();
    success(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn aspects_lists_the_builtins() {
    let list = aspects_json(&[]);
    let got: Vec<(&str, Kind)> = list.aspects.iter().map(|a| (&*a.name, a.kind)).collect();
    assert_eq!(
        got,
        [
            ("color", Kind::Multi),
            ("scene", Kind::Single),
            ("object", Kind::Multi),
            ("medium", Kind::Single),
            ("lighting", Kind::Single),
            ("time_of_day", Kind::Single),
            ("weather", Kind::Single),
            ("mood", Kind::Single),
        ]
    );
    for a in &list.aspects {
        assert_eq!(a.source, "built-in");
        assert!(!a.description.is_empty());
        assert!(a.labels >= 2, "{}: {}", a.name, a.labels);
        assert!(!a.templates.is_empty());
        assert!(a.templates.iter().all(|t| t.contains("{}")));
        assert!(
            a.label_prompts.is_none(),
            "{}: labels only when named",
            a.name
        );
        assert_eq!(a.neutral.is_some(), a.kind == Kind::Multi, "{}", a.name);
        assert!((0.0..=1.0).contains(&a.threshold));
        assert!(a.top_k.is_none_or(|k| k >= 1));
    }
    let count = |n: &str| list.aspects.iter().find(|a| a.name == n).unwrap().labels;
    assert!(count("object") >= 300 && count("scene") >= 100 && count("color") >= 20);

    // The table: a header line and one row per aspect, with its kind and label count.
    let out = vlm().args(["aspects", "-f", "table"]).output().unwrap();
    success(&out);
    let table = stdout_of(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 9, "{table}");
    let head: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(head, ["NAME", "KIND", "LABELS", "TEMPLATES", "DESCRIPTION"]);
    for (line, a) in lines[1..].iter().zip(&list.aspects) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let kind = if a.kind == Kind::Multi {
            "multi"
        } else {
            "single"
        };
        assert_eq!(
            cols[..4],
            [
                a.name.as_str(),
                kind,
                &a.labels.to_string(),
                &a.templates.len().to_string()
            ]
        );
        assert!(line.ends_with(&a.description), "{line}");
    }
}

#[test]
fn aspects_shows_named_aspects_in_full() {
    let list = aspects_json(&["scene"]);
    assert_eq!(list.aspects.len(), 1);
    let scene = &list.aspects[0];
    assert_eq!((scene.name.as_str(), scene.kind), ("scene", Kind::Single));
    assert_eq!(scene.neutral, None);
    let prompts = scene.label_prompts.as_ref().unwrap();
    assert_eq!(prompts.len(), scene.labels);
    // A plain label gets every template; a label with its own prompts keeps them.
    let kitchen = prompts.iter().find(|p| p.label == "kitchen").unwrap();
    let filled: Vec<String> = scene
        .templates
        .iter()
        .map(|t| t.replace("{}", "kitchen"))
        .collect();
    assert_eq!(kitchen.prompts, filled);
    let own = prompts
        .iter()
        .find(|p| p.label == "children's room")
        .unwrap();
    assert_eq!(
        own.prompts,
        [
            "a photo of a child's bedroom with toys.",
            "a photo of a baby's nursery with a crib."
        ]
    );

    // An aspect file, with its own rule.
    let list = aspects_json(&[&common::aspect(THING)]);
    let thing = &list.aspects[0];
    assert_eq!(thing.source, common::aspect(THING));
    assert_eq!((thing.top_k, thing.threshold), (Some(4), 0.3));
    assert_eq!(
        thing.neutral.as_deref(),
        Some(
            &[
                "a photo of the object.".to_string(),
                "a picture showing the object.".to_string()
            ][..]
        )
    );
    let text = &thing.label_prompts.as_ref().unwrap()[5];
    assert_eq!(text.label, "text");
    assert_eq!(
        text.prompts,
        ["a page of printed text.", "a photo of written words."]
    );

    // The table of a named aspect adds its source, templates, rule and labels.
    let out = vlm()
        .args(["aspects", "-f", "table", &common::aspect(KIND)])
        .output()
        .unwrap();
    success(&out);
    let table = stdout_of(&out);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains(&format!("  source: {}\n", common::aspect(KIND))),
        "{table}"
    );
    assert!(table.contains("  reports: top 3, score >= 0\n"), "{table}");
    assert!(
        table.contains("  labels: photograph, drawing, document, microscope image, space\n"),
        "{table}"
    );
}
