//! Issue 23, "a newcomer's first hour": inputs are checked before any model is touched, commands
//! speak with one voice (JSONL shapes, `vlm aspects` piped), calibrate's report leads with what was
//! calibrated, pictures carry words, and the small hints (did you mean, `--image`).

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{image, model, stderr_of, stdout_of, success, vlm};

/// A model folder whose config is broken: loading it fails, so any run that gets as far as the
/// model ends with a model error, not an input error.
fn broken_model(dir: &Path) -> String {
    let m = dir.join("broken-model");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("config.json"), "{ not json").unwrap();
    m.display().to_string()
}

/// Exit 2, one stderr line holding `want`, and fast: the model (broken) was never opened.
fn input_error_first(args: &[&str], want: &str) {
    let started = Instant::now();
    let out = vlm().args(args).output().unwrap();
    let took = started.elapsed();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.contains("nothing to process: "), "{args:?}: {err}");
    assert!(err.contains(want), "{args:?}: {err}");
    assert!(!err.contains("broken-model"), "{args:?}: {err}");
    assert!(out.stdout.is_empty(), "{args:?}");
    // Generous for a loaded CI machine; loading and encoding take far longer than a stat.
    assert!(took < Duration::from_secs(10), "{args:?}: {took:?}");
}

#[test]
fn unusable_inputs_fail_before_the_model_in_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let broken = broken_model(dir.path());
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "words, not pixels").unwrap();
    let (empty, notes) = (empty.display().to_string(), notes.display().to_string());
    let missing = dir.path().join("nosuch.jpg").display().to_string();
    let m = ["-m", broken.as_str()];

    input_error_first(
        &[&["tag", &missing, "-a", "all", "--no-cache"][..], &m].concat(),
        "nosuch.jpg: cannot read file",
    );
    input_error_first(
        &[&["classify", &empty, "-l", "a,b"][..], &m].concat(),
        "no image files in this folder",
    );
    input_error_first(
        &[&["classify", &notes, "-l", "a,b"][..], &m].concat(),
        "notes.txt: not an image",
    );
    // Several inputs, none usable: the first problem and how many more.
    input_error_first(
        &[&["embed", &missing, &notes, &empty][..], &m].concat(),
        "(and 2 more inputs, none of them an image)",
    );
    input_error_first(
        &[&["explain", &missing, "-l", "a"][..], &m].concat(),
        "nosuch.jpg",
    );
    let db = dir.path().join("index.sqlite").display().to_string();
    input_error_first(&["index", &notes, "--db", &db, "-m", &broken], "notes.txt");

    // eval: a dataset whose class folders hold no image.
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("cat")).unwrap();
    std::fs::create_dir_all(data.join("dog")).unwrap();
    std::fs::write(data.join("cat/a.jpg"), "").unwrap();
    let data = data.display().to_string();
    input_error_first(&[&["eval", &data][..], &m].concat(), "a.jpg: empty file");

    // calibrate: a truth whose images are all missing.
    let truth = dir.path().join("truth.csv");
    std::fs::write(&truth, "path,labels\ngone.jpg,red\n").unwrap();
    let truth = truth.display().to_string();
    input_error_first(
        &[&["calibrate", "-a", "color", "--truth", &truth][..], &m].concat(),
        "gone.jpg: cannot read file",
    );
}

#[test]
fn one_usable_input_is_enough_to_run() {
    // The missing file fails alone (exit 1), as before: the check only stops runs with nothing
    // to do.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nosuch.jpg").display().to_string();
    let out = vlm()
        .args(["classify", &missing, &image("horse.png")])
        .args(["-m", &model("tiny-openai"), "-l", "horse,cat", "-f", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let doc: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert_eq!(doc["results"].as_array().unwrap().len(), 2);

    // No inputs at all (an empty list) is not an error either.
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "").unwrap();
    let out = vlm()
        .args(["classify", "-T"])
        .arg(&list)
        .args(["-m", &model("tiny-openai"), "-l", "horse,cat", "-f", "json"])
        .output()
        .unwrap();
    success(&out);
}
