//! What a new user meets in the first ten minutes, through the built binary: hints that point to the
//! fix, warnings for runs that look like mistakes, output files that behave like files, and no
//! leftovers after Ctrl-C.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{image, model, stderr_of, stdout_of, success, vlm, ImageResult};

/// `vlm classify` with the tiny model and `args`.
fn classify(args: &[&str]) -> std::process::Output {
    vlm()
        .args(["classify", "--model", &model("tiny-openai")])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bare_vlm_lists_the_commands() {
    let out = vlm().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = stderr_of(&out);
    for command in ["classify", "tag", "aspects"] {
        assert!(stderr.contains(command), "{stderr}");
    }
    assert!(out.stdout.is_empty());
}

#[test]
fn typos_get_clap_suggestions_on_one_line() {
    let out = vlm().args(["clasify", "x.png"]).output().unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("did you mean 'classify'?"), "{stderr}");

    let out = vlm()
        .args(["classify", "--label", "cat", "x.png"])
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("did you mean '--labels'?"), "{stderr}");
}

#[test]
fn a_dash_points_to_files_from() {
    // The only input, so nothing to process: a usage error before the model (issue 23).
    let out = classify(&["--labels", "cat,dog", "-f", "json", "-"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("use --files-from -"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn one_label_and_comma_lines_get_a_warning() {
    let out = classify(&["--labels", "cat", "-f", "json", &image("horse.png")]);
    success(&out);
    let stderr = stderr_of(&out);
    assert!(stderr.contains("only one label (\"cat\")"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, "cat, dog, car\nhorse\n").unwrap();
    let out = classify(&[
        "--labels-file",
        labels.to_str().unwrap(),
        "-f",
        "json",
        &image("horse.png"),
    ]);
    success(&out);
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("line 1: \"cat, dog, car\" is one label"),
        "{stderr}"
    );
    // Two labels, so no lone-label warning; two warnings would be one too many.
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn output_format_follows_the_extension() {
    let dir = tempfile::tempdir().unwrap();
    let img = image("horse.png");
    let run = |name: &str, extra: &[&str]| {
        let path = dir.path().join(name);
        let p = path.to_str().unwrap().to_string();
        let out = classify(&[&["--labels", "cat,dog", &img, "-o", &p][..], extra].concat());
        success(&out);
        std::fs::read_to_string(path).unwrap()
    };
    let csv = run("out.csv", &[]);
    assert!(
        csv.starts_with("path,rank,label,probability,cosine,error\n"),
        "{csv}"
    );
    let jsonl = run("out.jsonl", &[]);
    let record: ImageResult = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(record.path, img);
    let json = run("out.json", &[]);
    assert!(
        json.starts_with('{') && json.contains("\"results\""),
        "{json}"
    );
    // --resume implies JSONL, whatever the name.
    let resumed = run("out.log", &["--resume"]);
    assert_eq!(resumed.lines().count(), 1, "{resumed}");
    serde_json::from_str::<ImageResult>(resumed.lines().next().unwrap()).unwrap();
    // -f still wins.
    let forced = run("forced.csv", &["-f", "jsonl"]);
    serde_json::from_str::<ImageResult>(forced.lines().next().unwrap()).unwrap();
}

#[cfg(unix)]
#[test]
fn output_files_get_ordinary_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for name in ["out.json", "out.txt", "out.csv"] {
        let path = dir.path().join(name);
        let bin = assert_cmd::cargo::cargo_bin("vlm");
        let script = format!(
            "umask 022; exec '{}' classify --model '{}' --labels cat,dog '{}' -o '{}'",
            bin.display(),
            model("tiny-openai"),
            image("horse.png"),
            path.display()
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .env("HF_HUB_OFFLINE", "1")
            .env(
                "VLM_CACHE_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("vlm-cache"),
            )
            .output()
            .unwrap();
        success(&out);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{name}: {mode:o}");
    }
}

#[cfg(unix)]
#[test]
fn ctrl_c_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("results.json");
    // Enough images that the run is still going when the signal comes.
    let list = dir.path().join("list.txt");
    let img = image("hubble_deep_field.jpg");
    let copies: Vec<String> = (0..400)
        .map(|i| {
            let p = dir.path().join(format!("img{i}.jpg"));
            std::fs::copy(&img, &p).unwrap();
            p.display().to_string()
        })
        .collect();
    std::fs::write(&list, copies.join("\n")).unwrap();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("vlm"))
        .args([
            "classify",
            "--model",
            &model("tiny-openai"),
            "--labels",
            "a,b",
        ])
        .args(["--exact-decode", "-b", "1", "-T", list.to_str().unwrap()])
        .arg("-o")
        .arg(&target)
        .env("HF_HUB_OFFLINE", "1")
        .env(
            "VLM_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("vlm-cache"),
        )
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let partial = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".vlm-partial"))
    };
    let start = Instant::now();
    while !partial() {
        assert!(start.elapsed() < Duration::from_secs(30), "no partial file");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let it get into the images.
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(!partial(), "a .vlm-partial file was left behind");
    assert!(!target.exists(), "the target must not appear");
}

#[test]
fn piped_aspect_labels_come_one_per_line() {
    let out = vlm()
        .args(["aspects", "color", "-f", "labels"])
        .output()
        .unwrap();
    success(&out);
    let text = stdout_of(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 20, "{text}");
    assert!(lines.contains(&"red"), "{text}");
    assert!(lines.iter().all(|l| !l.contains(',')), "{text}");
}

#[test]
fn unreachable_hub_with_an_empty_cache_does_not_suggest_offline_mode() {
    let cache = tempfile::tempdir().unwrap();
    let out = vlm()
        .args([
            "classify",
            "--model",
            "someone/some-clip",
            "--labels",
            "a,b",
        ])
        .arg(image("horse.png"))
        .env("HF_HUB_OFFLINE", "0")
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("check the network"), "{stderr}");
    assert!(!stderr.contains("HF_HUB_OFFLINE"), "{stderr}");
}
