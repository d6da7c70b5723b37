//! Where results go (issue 20 items 1, 4, 13, 15, 16; issue 23 items 5, 6): `-o` onto symbolic
//! links, FIFOs, device nodes, read-only files and folders, full devices; `--resume` onto another
//! run's records; temporary files a killed run left; existing files without `--force`; the last
//! word of a run and of an interrupted one; the progress bar beside results on a terminal.

use crate::common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{fixtures, image, model, stderr_of, ImageResult};

/// `vlm classify` with the tiny model and two labels.
fn classify() -> assert_cmd::Command {
    let mut cmd = common::vlm();
    cmd.args(["classify", "-m", &model("tiny-openai"), "-l", "cat,dog"]);
    cmd
}

fn horse() -> String {
    image("horse.png")
}

/// stderr is exactly one line starting with `start`.
fn one_line(out: &Output, start: &str) {
    let stderr = stderr_of(out);
    assert!(
        stderr.starts_with(start) && stderr.lines().count() == 1,
        "want one line starting with {start:?}, got {stderr:?}"
    );
}

#[cfg(unix)]
fn file_type(path: &Path) -> fs::FileType {
    fs::symlink_metadata(path).unwrap().file_type()
}

fn partials(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".vlm-partial"))
        .collect()
}

/// A whole document and a stream written through a symbolic link: the file it points to gets the
/// results, the link stays a link; a dangling link makes its file.
#[cfg(unix)]
#[test]
fn a_symlink_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir(d.join("real")).unwrap();
    for (format, name) in [("json", "r.json"), ("jsonl", "r.jsonl"), ("table", "r.txt")] {
        let real = d.join("real").join(name);
        fs::write(&real, "old").unwrap();
        let link = d.join(format!("link-{name}"));
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let out = classify()
            .arg(horse())
            .args(["-f", format, "--force", "-o"])
            .arg(&link)
            .output()
            .unwrap();
        common::success(&out);
        assert!(
            file_type(&link).is_symlink(),
            "{format}: the link was replaced"
        );
        let text = fs::read_to_string(&real).unwrap();
        assert!(text.contains("horse.png"), "{format}: {text:?}");
        assert!(partials(&d.join("real")).is_empty() && partials(d).is_empty());
    }
    // A dangling link (relative, as `ln -s` makes them): its file is made.
    let link = d.join("dangling.json");
    std::os::unix::fs::symlink("real/new.json", &link).unwrap();
    let out = classify()
        .arg(horse())
        .arg("-o")
        .arg(&link)
        .output()
        .unwrap();
    common::success(&out);
    assert!(file_type(&link).is_symlink());
    let doc: serde_json::Value =
        serde_json::from_slice(&fs::read(d.join("real/new.json")).unwrap()).unwrap();
    assert_eq!(doc["results"].as_array().unwrap().len(), 1);
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// A FIFO is written to, not replaced: its reader gets the whole document and then end of file.
#[cfg(unix)]
#[test]
fn a_fifo_is_written_to() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    for format in ["json", "jsonl"] {
        let fifo = dir.path().join(format!("results-{format}"));
        mkfifo(&fifo);
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let read = fs::File::open(&path).and_then(|mut f| f.read_to_string(&mut text));
            let _ = tx.send(read.map(|_| text));
        });
        let out = classify()
            .arg(horse())
            .args(["-f", format, "-o"])
            .arg(&fifo)
            .output()
            .unwrap();
        common::success(&out);
        assert!(
            file_type(&fifo).is_fifo(),
            "{format}: the FIFO was replaced"
        );
        let text = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the FIFO's reader got nothing")
            .unwrap();
        assert!(text.contains("horse.png"), "{format}: {text:?}");
        assert!(partials(dir.path()).is_empty());
    }
}

/// A character device is written to, never replaced: a node of our own (a copy of /dev/null,
/// made as root, so that nothing of the system's is at stake when this fails), `/dev/null`
/// itself, and `/dev/stdout`.
#[cfg(unix)]
#[test]
fn device_nodes_are_written_to_and_stay_devices() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let own = dir.path().join("null");
    let c = std::ffi::CString::new(own.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call; makedev has no preconditions.
    let made = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) } == 0;
    let mut nodes = vec![PathBuf::from("/dev/null")];
    if made {
        nodes.insert(0, own);
    }
    for node in &nodes {
        for format in ["json", "table", "jsonl", "csv"] {
            let out = classify()
                .arg(horse())
                .args(["-f", format, "-o"])
                .arg(node)
                .output()
                .unwrap();
            common::success(&out);
            let t = fs::metadata(node).unwrap().file_type();
            assert!(
                t.is_char_device(),
                "{}: replaced ({format})",
                node.display()
            );
        }
    }
    assert!(fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    // /dev/stdout is the run's stdout, whatever that is (a pipe here).
    let out = classify()
        .arg(horse())
        .args(["-f", "json", "-o", "/dev/stdout"])
        .output()
        .unwrap();
    common::success(&out);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["results"].as_array().unwrap().len(), 1);
    assert!(file_type(Path::new("/dev/stdout")).is_symlink());
}

/// A file the user cannot write, and a folder that takes no file, are refused before the model
/// loads, naming the output; the file keeps its content. As root (whom permissions do not bind)
/// the binary runs as `nobody`.
#[cfg(unix)]
#[test]
fn read_only_files_and_folders_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::set_permissions(d, fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(d.join("ro.json"), "precious").unwrap();
    fs::set_permissions(d.join("ro.json"), fs::Permissions::from_mode(0o444)).unwrap();
    fs::create_dir(d.join("rodir")).unwrap();
    fs::set_permissions(d.join("rodir"), fs::Permissions::from_mode(0o555)).unwrap();
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("vlm"));
        cmd.env("HF_HUB_OFFLINE", "1")
            .env("VLM_CACHE_DIR", "/nonexistent/vlm-cache")
            .current_dir(d)
            // A model that does not exist: the output must be refused before it is looked at.
            .args(["classify", "-m", "/nonexistent/model", "-l", "cat,dog"])
            .arg(horse())
            .args(args);
        common::as_nobody(&mut cmd);
        cmd.output().unwrap()
    };
    for (args, want) in [
        (
            &["--force", "-o", "ro.json"][..],
            "vlm: --output ro.json: Permission denied",
        ),
        (
            &["--force", "-f", "jsonl", "-o", "ro.json"][..],
            "vlm: --output ro.json: Permission denied",
        ),
        (
            &["-o", "rodir/x.jsonl"][..],
            "vlm: --output rodir/x.jsonl: Permission denied",
        ),
        (
            &["-o", "rodir/x.json"][..],
            "vlm: --output rodir/x.json: Permission denied",
        ),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        one_line(&out, want);
        assert_eq!(fs::read_to_string(d.join("ro.json")).unwrap(), "precious");
        assert!(fs::read_dir(d.join("rodir")).unwrap().next().is_none());
    }
}

/// A full device: the error names the output, or stdout, and the run fails.
#[cfg(target_os = "linux")]
#[test]
fn a_full_device_is_an_error_naming_the_output() {
    for format in ["json", "jsonl"] {
        let out = classify()
            .arg(horse())
            .args(["-f", format, "-o", "/dev/full"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        one_line(&out, "vlm: --output /dev/full: No space left on device");
    }
    let full = fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("vlm"))
        .env("HF_HUB_OFFLINE", "1")
        .env(
            "VLM_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("vlm-cache"),
        )
        .args(["classify", "-m", &model("tiny-openai"), "-l", "cat,dog"])
        .arg(horse())
        .args(["-f", "jsonl"])
        .stdout(Stdio::from(full))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    one_line(&out, "vlm: stdout: No space left on device");
}

/// One rule for every command: an existing file is refused without --force (one line saying how
/// to go on), and left as it was; with --force it is replaced.
#[test]
fn existing_files_are_refused_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tiny = model("tiny-openai");
    let classes = d.join("classes");
    for (class, file) in [("cat", "horse.png"), ("dog", "coins.png")] {
        fs::create_dir_all(classes.join(class)).unwrap();
        fs::copy(
            fixtures().join("images").join(file),
            classes.join(class).join(file),
        )
        .unwrap();
    }
    let db = d.join("index.sqlite");
    let indexed = common::vlm()
        .args(["index", "-m", &tiny, "--db"])
        .arg(&db)
        .arg(&classes)
        .arg("-r")
        .output()
        .unwrap();
    common::success(&indexed);
    let commands: Vec<(&str, Vec<String>)> = vec![
        (
            "out.json",
            vec![
                "classify".into(),
                "-m".into(),
                tiny.clone(),
                "-l".into(),
                "a,b".into(),
                horse(),
            ],
        ),
        (
            "out.jsonl",
            vec![
                "tag".into(),
                "-m".into(),
                tiny.clone(),
                "-a".into(),
                "color".into(),
                horse(),
            ],
        ),
        (
            "out.npy",
            vec!["embed".into(), "-m".into(), tiny.clone(), horse()],
        ),
        (
            "emb.json",
            vec!["embed".into(), "-m".into(), tiny.clone(), horse()],
        ),
        (
            "eval.json",
            vec![
                "eval".into(),
                classes.display().to_string(),
                "-m".into(),
                tiny.clone(),
            ],
        ),
        (
            "hits.json",
            vec![
                "search".into(),
                "cat".into(),
                "--db".into(),
                db.display().to_string(),
            ],
        ),
        (
            "dupes.json",
            vec!["dupes".into(), "--db".into(), db.display().to_string()],
        ),
    ];
    for (name, args) in commands {
        let target = d.join(name);
        fs::write(&target, "precious").unwrap();
        let out = common::vlm()
            .args(&args)
            .arg("-o")
            .arg(&target)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let resume = if name.ends_with(".jsonl") {
            ", or --resume to add what it lacks"
        } else {
            ""
        };
        one_line(
            &out,
            &format!(
                "vlm: --output {}: already exists; use --force to overwrite it{resume}\n",
                target.display()
            ),
        );
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious", "{args:?}");
        let forced = common::vlm()
            .args(&args)
            .args(["--force", "-o"])
            .arg(&target)
            .output()
            .unwrap();
        common::success(&forced);
        assert_ne!(fs::read(&target).unwrap(), b"precious", "{args:?}");
    }
}

/// `.NAME.XXXXXX.vlm-partial` files a killed run left are removed by the next run writing NAME;
/// one a live run holds (locked) stays, and so do other files' partials.
#[test]
fn partial_files_a_killed_run_left_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let stale = d.join(".out.json.AbC123.vlm-partial");
    let live = d.join(".out.json.XyZ789.vlm-partial");
    let other = d.join(".other.json.AbC123.vlm-partial");
    for p in [&stale, &live, &other] {
        fs::write(p, "half a document").unwrap();
    }
    let holder = fs::File::open(&live).unwrap();
    holder.lock().unwrap();
    for format in ["json", "jsonl"] {
        let out = classify()
            .arg(horse())
            .args(["-f", format, "--force", "-o"])
            .arg(d.join("out.json"))
            .output()
            .unwrap();
        common::success(&out);
        assert!(
            !stale.exists(),
            "{format}: the stale partial file is still there"
        );
        assert!(live.exists() && other.exists());
        fs::write(&stale, "half a document").unwrap();
    }
    drop(holder);
}

/// `--resume` appends only to records of the same command, model, labels and templates: each
/// difference is refused with one line naming it, before the model loads, the file untouched.
#[test]
fn resume_refuses_another_runs_records() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("r.jsonl");
    let tiny = model("tiny-openai");
    let first = common::vlm()
        .args(["classify", "-m", &tiny, "-l", "cat,dog", "-o"])
        .arg(&target)
        .arg(horse())
        .output()
        .unwrap();
    common::success(&first);
    let before = fs::read(&target).unwrap();
    let record: ImageResult = serde_json::from_slice(&before).unwrap();
    assert!(
        record
            .run
            .as_deref()
            .is_some_and(|r| r.starts_with("classify m=")),
        "{record:?}"
    );
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "tag".into(),
                "-m".into(),
                tiny.clone(),
                "-a".into(),
                "color".into(),
            ],
            "they were written by vlm classify, not vlm tag",
        ),
        (
            vec![
                "classify".into(),
                "-m".into(),
                model("tiny-siglip"),
                "-l".into(),
                "cat,dog".into(),
            ],
            "they were made with other model",
        ),
        (
            vec![
                "classify".into(),
                "-m".into(),
                tiny.clone(),
                "-l".into(),
                "cat,dog".into(),
                "--dtype".into(),
                "bf16".into(),
            ],
            "they were made with other model",
        ),
        (
            vec![
                "classify".into(),
                "-m".into(),
                tiny.clone(),
                "-l".into(),
                "cat,cow".into(),
            ],
            "they were made with other labels",
        ),
        (
            vec![
                "classify".into(),
                "-m".into(),
                tiny.clone(),
                "-l".into(),
                "cat,dog".into(),
                "-t".into(),
                "a picture of a {}".into(),
            ],
            "they were made with other templates",
        ),
    ];
    for (args, why) in cases {
        let out = common::vlm()
            .args(&args)
            .arg(horse())
            .arg(image("coins.png"))
            .args(["--resume", "-o"])
            .arg(&target)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        one_line(
            &out,
            &format!(
                "vlm: --resume {}:1: the records are not this run's: {why}; ",
                target.display()
            ),
        );
        assert_eq!(fs::read(&target).unwrap(), before, "{args:?}");
    }
    // Records without a fingerprint (an older vlm's) cannot be vouched for.
    let old = String::from_utf8(before.clone()).unwrap();
    let unstamped = old.replace(&format!(",\"run\":\"{}\"", record.run.clone().unwrap()), "");
    fs::write(&target, &unstamped).unwrap();
    let out = common::vlm()
        .args(["classify", "-m", &tiny, "-l", "cat,dog", "--resume", "-o"])
        .arg(&target)
        .arg(horse())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr_of(&out).contains("no \"run\" fingerprint"),
        "{out:?}"
    );
    assert_eq!(fs::read_to_string(&target).unwrap(), unstamped);
    // The same run resumes (a relative model path names the same folder).
    fs::write(&target, &before).unwrap();
    let out = common::vlm()
        .current_dir(fixtures())
        .args([
            "classify",
            "-m",
            "models/tiny-openai",
            "-l",
            "cat,dog",
            "--resume",
            "-o",
        ])
        .arg(&target)
        .arg(horse())
        .arg(image("coins.png"))
        .output()
        .unwrap();
    common::success(&out);
    let text = fs::read_to_string(&target).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
}

/// The last word of a run writing a file: what it wrote and where (not with -q).
#[test]
fn a_run_says_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("r.jsonl");
    let missing = dir.path().join("missing.png");
    let out = classify()
        .arg(horse())
        .arg(&missing)
        .arg("-o")
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let last = stderr_of(&out)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        last,
        format!("vlm: wrote 2 results (1 failed) to {}", target.display())
    );
    let again = classify()
        .arg(horse())
        .arg(image("coins.png"))
        .args(["--resume", "-o"])
        .arg(&target)
        .output()
        .unwrap();
    common::success(&again);
    let last = stderr_of(&again)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        last,
        format!(
            "vlm: wrote 1 more result to {}, which now holds 2",
            target.display()
        )
    );
    let npy = dir.path().join("e.npy");
    let out = common::vlm()
        .args(["embed", "-m", &model("tiny-openai")])
        .arg(horse())
        .arg("-o")
        .arg(&npy)
        .output()
        .unwrap();
    common::success(&out);
    assert_eq!(
        stderr_of(&out),
        format!(
            "vlm: wrote 1 embedding to {} (and {})\n",
            npy.display(),
            dir.path().join("e.paths.txt").display()
        )
    );
    let quiet = classify()
        .arg(horse())
        .args(["-q", "--force", "-o"])
        .arg(&target)
        .output()
        .unwrap();
    common::success(&quiet);
    assert!(quiet.stderr.is_empty(), "{quiet:?}");
}

/// Ctrl-C: exit 130, and one line saying how many results the file holds (exactly its lines) and
/// that --resume goes on.
#[cfg(unix)]
#[test]
fn an_interrupted_run_says_what_the_file_holds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut list = String::new();
    for i in 0..400 {
        let p = d.join(format!("img{i:03}.png"));
        fs::copy(fixtures().join("images/horse.png"), &p).unwrap();
        list.push_str(&format!("{}\n", p.display()));
    }
    fs::write(d.join("list.txt"), list).unwrap();
    let target = d.join("r.jsonl");
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("vlm"))
        .env("HF_HUB_OFFLINE", "1")
        .env(
            "VLM_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("vlm-cache"),
        )
        .args(["classify", "-m", &model("tiny-openai"), "-l", "cat,dog"])
        .args(["--exact-decode", "-b", "1", "-j", "1", "-T"])
        .arg(d.join("list.txt"))
        .arg("-o")
        .arg(&target)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while fs::read_to_string(&target).map_or(0, |t| t.lines().count()) < 2 {
        assert!(start.elapsed() < Duration::from_secs(60), "no results");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill has no memory preconditions; the pid is our child's, not yet waited for.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let lines = fs::read_to_string(&target).unwrap().lines().count();
    assert!(lines < 400, "the run ended before the interrupt");
    let want = format!(
        "vlm: interrupted: {} holds {lines} results; the same command with --resume goes on from there",
        target.display()
    );
    assert_eq!(
        stderr_of(&out).lines().last(),
        Some(want.as_str()),
        "{out:?}"
    );
}

/// A terminal as both stdout and stderr (a pseudo-terminal the test reads).
#[cfg(target_os = "linux")]
fn pty() -> (fs::File, fs::File) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: the out-pointers are valid; no name buffer or termios is passed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: openpty returned two new descriptors that nothing else owns.
    unsafe { (fs::File::from_raw_fd(master), fs::File::from_raw_fd(slave)) }
}

/// Runs `vlm` with stderr on a terminal, stdout on the same terminal or a pipe; returns what the
/// terminal got and what the pipe got.
#[cfg(target_os = "linux")]
fn on_terminal(args: &[String], cache: &Path, stdout_too: bool) -> (String, String) {
    let (mut master, slave) = pty();
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("vlm"));
    cmd.env("HF_HUB_OFFLINE", "1")
        .env("VLM_CACHE_DIR", cache)
        .env_remove("NO_COLOR")
        .env("TERM", "xterm")
        .args(args)
        .stdin(Stdio::null())
        .stderr(slave.try_clone().unwrap());
    if stdout_too {
        cmd.stdout(slave.try_clone().unwrap());
    } else {
        cmd.stdout(Stdio::piped());
    }
    let mut child = cmd.spawn().unwrap();
    drop(slave);
    drop(cmd);
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        // Ends with EIO once the child, the last holder of the terminal, is gone.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n]);
        }
        bytes
    });
    let mut piped = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut piped).unwrap();
    }
    assert!(child.wait().unwrap().success());
    let terminal = String::from_utf8_lossy(&reader.join().unwrap()).replace("\r\n", "\n");
    (terminal, piped)
}

/// Results on the terminal the bar is drawn on never carry pieces of it: a JSON document on the
/// terminal gets no bar at all; CSV piped (to `head`, which prints on this terminal) neither.
#[cfg(target_os = "linux")]
#[test]
fn the_progress_bar_never_mixes_with_results() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let images: Vec<String> = common::PNGS.iter().map(|p| image(p)).collect();
    let mut args: Vec<String> = [
        "classify",
        "-m",
        &model("tiny-openai"),
        "-l",
        "cat,dog",
        "-b",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(images);
    // Encode the labels once, so that no prompt bar is drawn below.
    let warm = common::vlm_cache(&cache).args(&args).output().unwrap();
    common::success(&warm);

    let mut json = args.clone();
    json.extend(["-f".into(), "json".into()]);
    let (terminal, _) = on_terminal(&json, &cache, true);
    assert!(
        !terminal.contains('\u{1b}') && !terminal.contains("img/s"),
        "{terminal:?}"
    );
    let doc: serde_json::Value = serde_json::from_str(&terminal).unwrap();
    assert_eq!(doc["results"].as_array().unwrap().len(), common::PNGS.len());

    let mut csv = args.clone();
    csv.extend(["-f".into(), "csv".into()]);
    let (terminal, piped) = on_terminal(&csv, &cache, false);
    assert!(terminal.is_empty(), "{terminal:?}");
    assert_eq!(piped.lines().count(), 1 + 2 * common::PNGS.len());
}
