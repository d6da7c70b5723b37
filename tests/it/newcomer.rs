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
        "\"gone.jpg\" (line 2)",
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

fn png_size(path: &Path) -> (u32, u32) {
    let img = ::image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (img.width(), img.height())
}

#[test]
fn search_montage_is_a_contact_sheet_of_the_hits() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("index.sqlite");
    let tiny = model("tiny-openai");
    let images = common::fixtures().join("images");
    let out = vlm()
        .arg("index")
        .arg(&images)
        .arg("--db")
        .arg(&db)
        .args(["-m", &tiny, "-q"])
        .output()
        .unwrap();
    success(&out);
    let sheet = dir.path().join("hits.png");
    let search = |extra: &[&str]| {
        vlm()
            .args(["search", "a horse", "-k", "7", "-f", "json", "--db"])
            .arg(&db)
            .arg("--montage")
            .arg(&sheet)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = search(&[]);
    success(&out);
    let doc: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert_eq!(doc["results"].as_array().unwrap().len(), 7);
    // Five tiles of 256 px to a row, 4 px apart; under each, two lines of caption (rank and
    // name, cosine), 10 px each after a 2 px gap: 7 hits make two rows.
    assert_eq!(png_size(&sheet), (4 + 5 * 260, 4 + 2 * (256 + 22 + 4)));
    // Never over an existing file without --force; checked before the search.
    let again = search(&[]);
    assert_eq!(again.status.code(), Some(2));
    let err = stderr_of(&again);
    assert!(err.contains("already exists; use --force"), "{err}");
    assert!(again.stdout.is_empty());
    success(&search(&["--force"]));
}

#[test]
fn search_without_a_query_says_how_to_give_one() {
    let out = vlm().arg("search").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--image FILE"), "{err}");
}

#[test]
fn piped_output_is_json_and_jsonl_is_records_only() {
    // `vlm aspects NAME` piped: JSON, as every command (bare labels with -f labels).
    let out = vlm().args(["aspects", "scene"]).output().unwrap();
    success(&out);
    let doc: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert_eq!(doc["aspects"][0]["name"], "scene");
    assert_eq!(
        doc["aspects"][0]["label_prompts"].as_array().unwrap().len(),
        163
    );

    // `embed -f jsonl`: one record per image and no header line, like classify and tag.
    let out = vlm()
        .args(["embed", "-f", "jsonl", "-m", &model("tiny-openai")])
        .args([image("horse.png"), image("coins.png")])
        .output()
        .unwrap();
    success(&out);
    let text = stdout_of(&out);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (line, name) in lines.iter().zip(["horse.png", "coins.png"]) {
        assert!(line["path"].as_str().unwrap().ends_with(name), "{line}");
        assert_eq!(line["embedding"].as_array().unwrap().len(), 48);
    }
}

#[test]
fn misspelt_names_get_a_suggestion() {
    let tag = |args: &[&str]| {
        let out = vlm()
            .args(["tag", &image("horse.png"), "-m", &model("tiny-openai")])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr_of(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        err
    };
    let err = tag(&["-a", "colour"]);
    assert!(err.contains("did you mean \"color\"?"), "{err}");
    let err = tag(&["-a", "color,scene", "--threshold", "scen=0.2"]);
    assert!(err.contains("did you mean \"scene\"?"), "{err}");
    let err = tag(&["-a", "vehicle"]);
    assert!(!err.contains("did you mean"), "{err}");
    let out = vlm()
        .args([
            "classify",
            &image("horse.png"),
            "-l",
            "a,b",
            "--templates",
            "imagnet",
        ])
        .output()
        .unwrap();
    assert!(
        stderr_of(&out).contains("did you mean \"imagenet\"?"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn tag_header_thresholds_read_as_the_aspect_file_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let aspect = dir.path().join("vehicle.toml");
    std::fs::write(
        &aspect,
        r#"name = "vehicle"
description = "Vehicles."
kind = "multi"
templates = ["a photo of a {}."]
threshold = 0.497
neutral = { name = "thing", prompts = ["a photo."] }
labels = ["car", { name = "bike", threshold = 0.3 }]
"#,
    )
    .unwrap();
    let out = vlm()
        .args([
            "tag",
            &image("horse.png"),
            "-m",
            &model("tiny-openai"),
            "-f",
            "json",
        ])
        .arg("-a")
        .arg(&aspect)
        .output()
        .unwrap();
    success(&out);
    let text = stdout_of(&out);
    assert!(text.contains(r#""threshold":0.497,"#), "{text}");
    assert!(
        text.contains(r#""label_thresholds":{"bike":0.3}"#),
        "{text}"
    );
}

#[test]
fn resume_says_what_it_skips_as_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.jsonl");
    let run = |images: &[String], extra: &[&str]| {
        vlm()
            .args(["classify", "-m", &model("tiny-openai"), "-l", "horse,coin"])
            .args(images)
            .arg("-o")
            .arg(&out_file)
            .args(extra)
            .output()
            .unwrap()
    };
    success(&run(&[image("horse.png")], &[]));
    let out = run(&[image("horse.png"), image("coins.png")], &["--resume"]);
    success(&out);
    let err = stderr_of(&out);
    assert!(
        err.contains("vlm: --resume: 1 of 2 images already done, 1 to go"),
        "{err}"
    );
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn calibrate_table_leads_with_the_calibrated_labels() {
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth.csv");
    let mut text = String::from("path,labels\n");
    for (name, labels) in [
        ("horse.png", "black;white"),
        ("coins.png", "gray"),
        ("camera.png", "gray;black"),
        ("color.png", "red;green;blue"),
    ] {
        text.push_str(&format!("{},{labels}\n", image(name)));
    }
    std::fs::write(&truth, text).unwrap();
    let report = |extra: &[&str]| {
        let out = vlm()
            .args([
                "calibrate",
                "-a",
                "color",
                "-m",
                &model("tiny-openai"),
                "-q",
            ])
            .arg("--truth")
            .arg(&truth)
            .args(["-f", "table", "--min-positives", "2"])
            .args(extra)
            .output()
            .unwrap();
        success(&out);
        stdout_of(&out)
    };
    let short = report(&[]);
    // Six labels of color's 30 have an image in the truth: only they are listed, and one line
    // says how many others there are.
    assert!(
        short.contains("(24 more labels of color have no image in the truth and kept their threshold; --all lists them)"),
        "{short}"
    );
    let full = report(&["--all"]);
    assert!(!full.contains("--all lists them"), "{full}");
    assert!(
        full.lines().count() >= short.lines().count() + 23,
        "{short}\n{full}"
    );
    // The calibrated labels (two or more positives: black, gray) come before the rest.
    let row = |table: &str, label: &str| {
        table
            .lines()
            .position(|l| l.trim_start().starts_with(&format!("{label} ")))
            .unwrap_or_else(|| panic!("{label}: {table}"))
    };
    for table in [&short, &full] {
        let first_kept = row(table, "red").min(row(table, "white"));
        assert!(row(table, "black") < first_kept, "{table}");
        assert!(row(table, "gray") < first_kept, "{table}");
    }
}

#[test]
fn help_says_what_each_number_counts() {
    let help = |cmd: &str| {
        let out = vlm().args([cmd, "--help"]).output().unwrap();
        success(&out);
        // Wrapped to the width of the terminal: compare words.
        stdout_of(&out)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let search = help("search");
    assert!(search.contains("Images: report the K best"), "{search}");
    assert!(
        search.contains("A cosine (-1..1, the hits' `score`; not a probability)"),
        "{search}"
    );
    let tag = help("tag");
    assert!(tag.contains("Tags per aspect"), "{tag}");
    assert!(
        tag.contains("A score (0..1, the tags' `score`; not a cosine)"),
        "{tag}"
    );
    assert!(help("classify").contains("Labels per image"));
    assert!(help("dupes").contains("A cosine (-1..1, not a probability)"));
}
