//! Batch runs through the built binary: folders, lists on stdin, shards, ordering, per-image errors,
//! `--output` and `--resume`. Records are checked by deserialising into strict structs.

use crate::common;

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use assert_cmd::Command;
use common::{fixtures, ImageResult as Record};

fn tiny_model() -> String {
    fixtures().join("models/tiny-openai").display().to_string()
}

/// `vlm classify` with the tiny model and two labels, in the tests' isolated environment.
fn vlm() -> Command {
    let mut cmd = common::vlm();
    cmd.args(["classify", "--model", &tiny_model(), "--labels", "cat,dog"]);
    cmd
}

/// A library: real images under nested folders, plus things walking must skip.
fn library() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let src = fixtures().join("images");
    for (from, to) in [
        ("coins.png", "b/coins.png"),
        ("horse.png", "a/horse.png"),
        ("logo.png", "a/deep/logo.png"),
        ("camera.png", "camera.png"),
        ("retina.jpg", ".hidden/retina.jpg"),
    ] {
        let to = root.join(to);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(src.join(from), to).unwrap();
    }
    fs::write(root.join("notes.txt"), "not an image").unwrap();
    dir
}

fn jsonl(stdout: &[u8]) -> Vec<Record> {
    String::from_utf8(stdout.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn relative(records: &[Record], root: &Path) -> Vec<String> {
    let root = root.display().to_string();
    records
        .iter()
        .map(|r| r.path.strip_prefix(&root).unwrap_or(&r.path).to_string())
        .collect()
}

#[test]
fn a_folder_is_walked_in_name_order() {
    let lib = library();
    let root = lib.path();
    let out = vlm()
        .arg(root)
        .args(["--recursive", "--format", "jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let records = jsonl(&out.stdout);
    assert_eq!(
        relative(&records, root),
        [
            "/a/deep/logo.png",
            "/a/horse.png",
            "/b/coins.png",
            "/camera.png"
        ]
    );
    assert!(records
        .iter()
        .all(|r| r.error.is_none() && r.predictions.len() == 2));

    // Without --recursive only the folder's own images; with --hidden the hidden folder too.
    let flat = vlm().arg(root).args(["-f", "jsonl"]).output().unwrap();
    assert_eq!(relative(&jsonl(&flat.stdout), root), ["/camera.png"]);
    let hidden = vlm()
        .arg(root)
        .args(["-r", "-H", "-f", "jsonl"])
        .output()
        .unwrap();
    assert_eq!(jsonl(&hidden.stdout).len(), 5);
}

#[test]
fn nul_separated_stdin_lists_keep_odd_names_and_order() {
    let lib = library();
    let root = lib.path();
    let odd = root.join("new\nline, \"quoted\" name.png");
    fs::copy(root.join("camera.png"), &odd).unwrap();
    let mut list = Vec::new();
    for p in [
        odd.clone(),
        root.join("b/coins.png"),
        root.join("missing.png"),
        root.join("a/horse.png"),
        odd.clone(),
    ] {
        list.extend_from_slice(p.as_os_str().as_encoded_bytes());
        list.push(0);
    }
    let out = vlm()
        .args(["--files-from", "-", "-0", "-f", "jsonl"])
        .write_stdin(list)
        .output()
        .unwrap();
    // One input failed: exit 1, and everything else is there, in input order, deduplicated.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let records = jsonl(&out.stdout);
    assert_eq!(
        relative(&records, root),
        [
            "/new\nline, \"quoted\" name.png",
            "/b/coins.png",
            "/missing.png",
            "/a/horse.png"
        ]
    );
    let missing = records[2].error.as_deref().unwrap();
    assert!(missing.contains("missing.png"), "{missing}");
    assert!(records[2].predictions.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.png"), "{stderr}");
}

#[cfg(unix)]
#[test]
fn non_utf8_names_from_a_list_are_processed() {
    use std::os::unix::ffi::OsStrExt;
    let lib = library();
    let root = lib.path();
    let name = root.join(std::ffi::OsStr::from_bytes(b"caf\xe9.png"));
    if fs::copy(root.join("camera.png"), &name).is_err() {
        eprintln!("skipped: this file system refuses non-UTF-8 names");
        return;
    }
    let list = root.join("list.txt");
    let mut bytes = name.as_os_str().as_bytes().to_vec();
    bytes.push(b'\n');
    fs::write(&list, bytes).unwrap();
    let out = vlm()
        .arg("--files-from")
        .arg(&list)
        .args(["-f", "jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let records = jsonl(&out.stdout);
    assert_eq!(records.len(), 1);
    assert!(records[0].path.ends_with("caf\u{FFFD}.png"));
    assert!(records[0].error.is_none());
}

#[test]
fn shards_split_a_library_with_no_overlap_and_no_gap() {
    let lib = library();
    let root = lib.path();
    let run = |shard: Option<&str>| {
        let mut cmd = vlm();
        cmd.arg(root).args(["-r", "-H", "-f", "jsonl"]);
        if let Some(s) = shard {
            cmd.args(["--shard", s]);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        relative(&jsonl(&out.stdout), root)
    };
    let all = run(None);
    let mut union = Vec::new();
    let mut seen = HashSet::new();
    for k in 1..=3 {
        for p in run(Some(&format!("{k}/3"))) {
            assert!(seen.insert(p.clone()), "{p} in two shards");
            union.push(p);
        }
    }
    union.sort();
    let mut want = all.clone();
    want.sort();
    assert_eq!(union, want);
    let bad = vlm().arg(root).args(["--shard", "4/3"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn errors_in_a_batch_keep_their_place_and_the_run_goes_on() {
    let lib = library();
    let root = lib.path();
    let broken = root.join("broken.png");
    fs::write(&broken, b"\x89PNG\r\n\x1a\n garbage").unwrap();
    let out = vlm()
        .arg(root.join("camera.png"))
        .arg(&broken)
        .arg(root.join("a"))
        .arg(root.join("empty-glob-*.png"))
        .args(["-f", "jsonl", "--batch-size", "2", "--threads", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let records = jsonl(&out.stdout);
    let ok: Vec<bool> = records.iter().map(|r| r.error.is_none()).collect();
    assert_eq!(
        relative(&records, root),
        [
            "/camera.png",
            "/broken.png",
            "/a/horse.png",
            "/empty-glob-*.png"
        ]
    );
    assert_eq!(ok, [true, false, true, false]);
}

#[test]
fn output_file_is_not_touched_when_the_run_fails_early() {
    let lib = library();
    let root = lib.path();
    for format in ["json", "jsonl", "csv", "table"] {
        let target = root.join(format!("results.{format}"));
        fs::write(&target, "precious").unwrap();
        // A model error: nothing was processed, so the old file must survive.
        let out = Command::cargo_bin("vlm")
            .unwrap()
            .env("HF_HUB_OFFLINE", "1")
            .args(["classify", "--model", "/nonexistent-model", "-l", "a,b"])
            .arg(root.join("camera.png"))
            .args(["-f", format, "-o"])
            .arg(&target)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious", "{format}");
        // No temporary file is left behind.
        let stray: Vec<_> = fs::read_dir(root)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("vlm-partial"))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    }
}

#[test]
fn output_file_gets_the_whole_document() {
    let lib = library();
    let root = lib.path();
    let target = root.join("out.json");
    fs::write(&target, "old").unwrap();
    let out = vlm()
        .arg(root)
        .args(["-r", "-f", "json", "--force", "-o"])
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "results went to the file, not stdout"
    );
    let doc: serde_json::Value = serde_json::from_slice(&fs::read(&target).unwrap()).unwrap();
    assert_eq!(doc["results"].as_array().unwrap().len(), 4);
}

#[test]
fn resume_skips_done_images_and_retries_failed_ones() {
    let lib = library();
    let root = lib.path();
    let target = root.join("tags.jsonl");
    let run = |extra: &[&str]| {
        vlm()
            .arg(root)
            .args(["-r", "-f", "jsonl", "-o"])
            .arg(&target)
            .args(extra)
            .output()
            .unwrap()
    };
    // A first run that was killed: two whole records, then half a line.
    let full = run(&[]);
    assert_eq!(full.status.code(), Some(0), "{full:?}");
    let text = fs::read_to_string(&target).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    // Record 2 failed in that run; its image is tried again.
    let run_of_first: Record = serde_json::from_str(lines[0]).unwrap();
    let failed = format!(
        "{{\"path\":{},\"predictions\":[],\"error\":\"disk hiccup\",\"run\":{}}}",
        serde_json::to_string(&format!("{}/a/horse.png", root.display())).unwrap(),
        serde_json::to_string(&run_of_first.run.unwrap()).unwrap()
    );
    let killed = format!("{}\n{failed}\n{}", lines[0], &lines[2][..20]);
    fs::write(&target, killed).unwrap();

    let resumed = run(&["--resume"]);
    assert_eq!(resumed.status.code(), Some(0), "{resumed:?}");
    let records = jsonl(&fs::read(&target).unwrap());
    let mut paths = relative(&records, root);
    assert!(records.iter().all(|r| r.error.is_none()));
    // Each image exactly once: the first from the killed run, the others from the resumed one.
    assert_eq!(paths[0], "/a/deep/logo.png");
    paths.sort();
    assert_eq!(
        paths,
        [
            "/a/deep/logo.png",
            "/a/horse.png",
            "/b/coins.png",
            "/camera.png"
        ]
    );

    // A second resume has nothing to do and leaves the file as it is.
    let before = fs::read(&target).unwrap();
    let again = run(&["--resume"]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(fs::read(&target).unwrap(), before);

    // A file that is not vlm's is never appended to.
    fs::write(&target, "name,score\nx,1\n").unwrap();
    let refused = run(&["--resume"]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("tags.jsonl:1"), "{stderr}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "name,score\nx,1\n");

    // --resume only makes sense for JSONL.
    let csv = vlm()
        .arg(root)
        .args(["-f", "csv", "--resume", "-o"])
        .arg(root.join("out.csv"))
        .output()
        .unwrap();
    assert_eq!(csv.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&csv.stderr).contains("--resume needs --format jsonl"));
}

/// A file and a folder without read permission, inside a walked library: each is reported by
/// name with the OS's reason, and every other image is still processed (exit 1). File
/// permissions do not bind root, so as root the binary is run as `nobody` (uid 65534), which
/// they do bind; the library and the fixture model are world-readable, and `--no-cache` keeps
/// it from writing.
#[cfg(unix)]
#[test]
fn unreadable_files_and_folders_are_reported_and_the_rest_finish() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    let src = fixtures().join("images");
    fs::copy(src.join("horse.png"), root.join("a-good.png")).unwrap();
    fs::copy(src.join("coins.png"), root.join("b-locked.png")).unwrap();
    fs::create_dir(root.join("c-sealed")).unwrap();
    fs::copy(src.join("logo.png"), root.join("c-sealed/inside.png")).unwrap();
    fs::copy(src.join("camera.png"), root.join("d-good.png")).unwrap();
    fs::write(root.join("list.txt"), "a-good.png\n").unwrap();
    fs::set_permissions(root.join("b-locked.png"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(root.join("c-sealed"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(root.join("list.txt"), fs::Permissions::from_mode(0o000)).unwrap();

    let unprivileged = || {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("vlm"));
        cmd.env_remove("VLM_MODEL")
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HUB_CACHE", "/nonexistent/vlm-test-cache")
            .current_dir(root)
            .args(["classify", "--model", &tiny_model(), "--labels", "cat,dog"])
            .args(["--no-cache", "--format", "jsonl"]);
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            cmd.uid(65534).gid(65534);
        }
        cmd
    };

    // As `nobody`, the binary and the fixture model must be reachable (a checkout under a private
    // home folder is not): if one good image cannot be classified, there is nothing to test here.
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let probe = unprivileged().arg("a-good.png").output();
        if !probe.as_ref().is_ok_and(|o| o.status.success()) {
            println!(
                "note: skipping: user nobody cannot run vlm on the fixture model here ({probe:?})"
            );
            return;
        }
    }
    let out = unprivileged().arg(root).arg("-r").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let records = jsonl(&out.stdout);
    assert_eq!(
        relative(&records, root),
        ["/a-good.png", "/b-locked.png", "/c-sealed", "/d-good.png"],
        "{stderr}"
    );
    let locked = format!("{}: cannot read file: Permission denied", records[1].path);
    let sealed = format!("{}: cannot read folder: Permission denied", records[2].path);
    for (r, want) in [(&records[1], &locked), (&records[2], &sealed)] {
        let error = r.error.as_deref().unwrap_or_default();
        assert!(error.starts_with(want.as_str()), "{error:?} vs {want:?}");
        assert!(r.predictions.is_empty());
        assert!(
            stderr.lines().any(|l| l == format!("vlm: {error}")),
            "{stderr}"
        );
    }
    for r in [&records[0], &records[3]] {
        assert!(r.error.is_none() && r.predictions.len() == 2, "{r:?}");
    }

    // An unreadable list is a usage error naming it, before any image.
    let out = unprivileged()
        .args(["--files-from", "list.txt"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.starts_with("vlm: --files-from list.txt: ") && stderr.contains("Permission denied"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// File names may hold newlines, carriage returns and escape sequences: the JSON `path` keeps the
/// name exactly, while every message (the record's `error`, the stderr line, the table) shows them
/// escaped, so one error is still one line and a table entry is not split.
#[cfg(unix)]
#[test]
fn control_characters_in_file_names_never_split_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bad = root.join("bad\nname\r\u{1b}[2J.jpg");
    let good = root.join("good\nname.png");
    fs::write(&bad, "not a jpeg").unwrap();
    fs::copy(fixtures().join("images/horse.png"), &good).unwrap();

    let out = vlm()
        .args(["--format", "jsonl"])
        .arg(root)
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let records = jsonl(&out.stdout);
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].path, bad.display().to_string());
    assert_eq!(records[1].path, good.display().to_string());
    let shown = format!("{}/bad\\nname\\r\\u{{1b}}[2J.jpg", root.display());
    let error = records[0].error.as_deref().unwrap();
    assert!(
        error.starts_with(&format!("{shown}: not an image")),
        "{error}"
    );
    assert_eq!(stderr, format!("vlm: {error}\n"));
    assert!(records[1].error.is_none());

    let out = vlm()
        .args(["--format", "table"])
        .arg(root)
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    let entries: Vec<&str> = table.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(
        entries,
        [
            shown.as_str(),
            &format!("{}/good\\nname.png", root.display())
        ],
        "{table}"
    );
    assert!(
        !table.contains('\r') && !table.contains('\u{1b}'),
        "{table:?}"
    );
}
