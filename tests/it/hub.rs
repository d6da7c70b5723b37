//! The Hub path end to end (issue 19, sections 2 and 3): `vlm` downloads from a local stand-in for
//! the Hub (tests/it/common/hub.rs, reached through `HF_ENDPOINT`) into an empty `HF_HOME`, runs
//! again offline from the cache, follows a moving branch, uses a pinned commit (and a cache laid
//! out by Python's huggingface_hub, which writes no `refs/<commit>`), refuses a gated repository in
//! one line, never uses a download that was cut off as if whole, and shows progress on a terminal
//! only.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::hub::{files_of, Cut, HubRepo, StandIn};
use common::{fixtures, image, model, stderr_of, stdout_of, success, vlm};
use serde::Deserialize;

const COMMIT_A: &str = "3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268";
const COMMIT_B: &str = "e6a30b603a447e251fdaca1c3056b2a16cdfebeb";
const DEFAULT_MODEL: &str = "openai/clip-vit-base-patch32";

/// vlm's probabilities from the PNGs (bit-exact pixels with transformers', see common::PNGS)
/// against transformers' for the same weights: f32, summed in another order.
const PROB_TOL: f32 = 1e-4;

/// `vlm classify --format json`.
type Document = crate::common::ClassifyDocument;

#[derive(Debug, Deserialize)]
struct Reference {
    images: Vec<String>,
    classify: RefClassify,
}

#[derive(Debug, Deserialize)]
struct RefClassify {
    labels: Vec<String>,
    templates: Vec<String>,
    probs: Vec<Vec<f32>>,
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(fixtures().join(format!("reference/{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A repository serving fixture model `name` at `commit`, with `main` pointing there.
fn repo_of(id: &str, name: &str, commit: &str) -> HubRepo {
    HubRepo::new(id)
        .commit(commit, files_of(&fixtures().join("models").join(name)))
        .branch("main", commit)
}

/// `vlm` against the stand-in at `endpoint` (`None`: a closed port) with `home` as `HF_HOME`,
/// online, no token.
fn vlm_hub(endpoint: Option<&str>, home: &Path) -> assert_cmd::Command {
    let mut cmd = vlm();
    cmd.env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_ETAG_TIMEOUT")
        .env("HF_HOME", home)
        .env("HF_HUB_OFFLINE", "0")
        .env("HF_ENDPOINT", endpoint.unwrap_or("http://127.0.0.1:9"));
    cmd
}

/// The arguments that classify the PNGs the reference covers with its labels and templates.
fn reference_args(r: &Reference) -> (Vec<String>, Vec<usize>) {
    let c = &r.classify;
    let mut args = vec![
        "classify".to_string(),
        "-f".into(),
        "json".into(),
        "--no-cache".into(),
        "--labels".into(),
        c.labels.join(","),
    ];
    for t in &c.templates {
        args.push("--template".into());
        args.push(t.clone());
    }
    let mut rows = Vec::new();
    for (i, name) in r.images.iter().enumerate() {
        if common::PNGS.contains(&name.as_str()) {
            args.push(image(name));
            rows.push(i);
        }
    }
    (args, rows)
}

fn parse(out: &Output) -> Document {
    success(out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Asserts that `doc` gives transformers' probabilities for fixture model `name`.
fn assert_reference_probs(doc: &Document, name: &str) {
    let r = reference(name);
    let (_, rows) = reference_args(&r);
    assert_eq!(doc.results.len(), rows.len());
    for (result, &row) in doc.results.iter().zip(&rows) {
        assert_eq!(result.error, None);
        for p in &result.predictions {
            let i = r
                .classify
                .labels
                .iter()
                .position(|l| *l == p.label)
                .unwrap();
            let want = r.classify.probs[row][i];
            assert!(
                (p.probability - want).abs() <= PROB_TOL,
                "{name}: {}: {} is {} in vlm, {want} in transformers",
                r.images[row],
                p.label,
                p.probability
            );
        }
    }
}

/// Classifies the reference PNGs with `model_id` (and `extra` arguments) and checks the numbers
/// against transformers' for fixture model `name`.
fn classify_with(
    cmd: &mut assert_cmd::Command,
    model_id: &str,
    name: &str,
    extra: &[&str],
) -> Document {
    let (args, _) = reference_args(&reference(name));
    let out = cmd
        .args(&args)
        .args(["--model", model_id])
        .args(extra)
        .output()
        .unwrap();
    let doc = parse(&out);
    assert_reference_probs(&doc, name);
    doc
}

fn classify_reference(cmd: &mut assert_cmd::Command, model_id: &str, name: &str) -> Document {
    classify_with(cmd, model_id, name, &[])
}

fn repo_dir(home: &Path, id: &str) -> PathBuf {
    home.join("hub")
        .join(format!("models--{}", id.replace('/', "--")))
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The one stderr line of a failed run (exit 2).
fn one_line_failure(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(out));
    let stderr = stderr_of(out);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("vlm: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn first_run_downloads_then_offline_and_unreachable_runs_use_the_cache() {
    let home = tempfile::tempdir().unwrap();
    let id = "someone/tiny-clip";
    let hub = StandIn::start(vec![repo_of(id, "tiny-openai", COMMIT_A)]);
    let doc = classify_reference(
        &mut vlm_hub(Some(hub.url()), home.path()),
        id,
        "tiny-openai",
    );
    assert_eq!(doc.model.id, id);
    assert_eq!(doc.model.revision.as_deref(), Some(COMMIT_A));

    // The layout Python's huggingface_hub reads: refs/main, snapshot links into blobs, no
    // refs/<commit>, nothing half-written.
    let dir = repo_dir(home.path(), id);
    assert_eq!(
        std::fs::read_to_string(dir.join("refs/main")).unwrap(),
        COMMIT_A
    );
    let files = tree(&dir);
    assert!(!files.iter().any(|f| f.ends_with(".part")), "{files:?}");
    assert!(!dir.join("refs").join(COMMIT_A).exists(), "{files:?}");
    for f in [
        "config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "model.safetensors",
    ] {
        let link = dir.join("snapshots").join(COMMIT_A).join(f);
        let target = std::fs::read_link(&link).unwrap();
        assert!(
            target.starts_with("../../blobs"),
            "{f}: {}",
            target.display()
        );
        assert_eq!(
            std::fs::read(&link).unwrap(),
            std::fs::read(fixtures().join("models/tiny-openai").join(f)).unwrap()
        );
    }
    // model.safetensors is an LFS file on the Hub: its blob is named by its sha256.
    let weights = std::fs::read_link(
        dir.join("snapshots")
            .join(COMMIT_A)
            .join("model.safetensors"),
    )
    .unwrap();
    assert_eq!(weights.file_name().unwrap().len(), 64);

    // Online again: one question (which commit is main), nothing downloaded.
    hub.clear_requests();
    classify_reference(
        &mut vlm_hub(Some(hub.url()), home.path()),
        id,
        "tiny-openai",
    );
    assert_eq!(
        hub.requests(),
        [format!("HEAD /{id}/resolve/main/config.json")]
    );

    // A blob removed from under its snapshot link (a cleaned cache): downloaded again, the
    // dangling link replaced.
    std::fs::remove_file(dir.join("blobs").join(weights.file_name().unwrap())).unwrap();
    classify_reference(
        &mut vlm_hub(Some(hub.url()), home.path()),
        id,
        "tiny-openai",
    );

    // The Hub gone: HF_HUB_OFFLINE=1, and online with nothing answering, both use the cache.
    drop(hub);
    let doc = classify_reference(
        vlm_hub(None, home.path()).env("HF_HUB_OFFLINE", "1"),
        id,
        "tiny-openai",
    );
    assert_eq!(doc.model.revision.as_deref(), Some(COMMIT_A));
    let doc = classify_reference(&mut vlm_hub(None, home.path()), id, "tiny-openai");
    assert_eq!(doc.model.revision.as_deref(), Some(COMMIT_A));
    assert!(
        std::fs::read_dir(home.path()).unwrap().count() >= 1,
        "HF_HOME holds the cache"
    );
}

#[test]
fn the_default_model_resolves_through_the_stand_in_with_the_literal_command() {
    let home = tempfile::tempdir().unwrap();
    let hub = StandIn::start(vec![repo_of(DEFAULT_MODEL, "tiny-openai", COMMIT_A)]);
    let photo = image("horse.png");
    // The user's first command, word for word (the photo's path aside).
    let out = vlm_hub(Some(hub.url()), home.path())
        .args(["classify", &photo, "--labels", "cat,dog,car"])
        // Each run encodes its labels itself: a cached text embedding may differ in its last bits
        // (issue 24: batch-dependent reductions), and this compares bit for bit.
        .env("VLM_CACHE_DIR", home.path().join("vlm-text-cache"))
        .output()
        .unwrap();
    success(&out);
    assert_eq!(stderr_of(&out), "", "piped: no progress, no warning");
    // The same numbers as the fixture folder gives: the Hub path changes nothing.
    let local = vlm()
        .args([
            "classify",
            &photo,
            "--labels",
            "cat,dog,car",
            "--no-cache",
            "--model",
        ])
        .arg(model("tiny-openai"))
        .output()
        .unwrap();
    success(&local);
    let results = |out: &Output| {
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["results"].clone()
    };
    assert_eq!(results(&out), results(&local));
    for label in ["cat", "dog", "car"] {
        assert!(stdout_of(&out).contains(label), "{}", stdout_of(&out));
    }
    let json = parse(
        &vlm_hub(Some(hub.url()), home.path())
            .args(["classify", &photo, "--labels", "cat,dog,car", "-f", "json"])
            .output()
            .unwrap(),
    );
    assert_eq!(json.model.id, DEFAULT_MODEL);
    assert_eq!(json.model.revision.as_deref(), Some(COMMIT_A));
}

#[test]
fn a_moving_branch_is_followed_online_and_its_cached_commit_used_offline() {
    let home = tempfile::tempdir().unwrap();
    let id = "someone/moving";
    let repo = repo_of(id, "tiny-openai", COMMIT_A)
        .commit(COMMIT_B, files_of(&fixtures().join("models/tiny-laion")));
    let hub = StandIn::start(vec![repo]);
    let doc = classify_reference(
        &mut vlm_hub(Some(hub.url()), home.path()),
        id,
        "tiny-openai",
    );
    assert_eq!(doc.model.revision.as_deref(), Some(COMMIT_A));

    // main moves: the next online run takes the new commit (as huggingface_hub would).
    hub.set_branch(id, "main", COMMIT_B);
    let doc = classify_reference(&mut vlm_hub(Some(hub.url()), home.path()), id, "tiny-laion");
    assert_eq!(doc.model.revision.as_deref(), Some(COMMIT_B));
    let dir = repo_dir(home.path(), id);
    assert_eq!(
        std::fs::read_to_string(dir.join("refs/main")).unwrap(),
        COMMIT_B
    );
    // tiny-laion is sharded: the index and both shards came.
    assert!(dir
        .join("snapshots")
        .join(COMMIT_B)
        .join("model-00002-of-00002.safetensors")
        .is_file());

    // The older commit is still there, by its id, without a request.
    hub.clear_requests();
    let doc = classify_with(
        &mut vlm_hub(Some(hub.url()), home.path()),
        id,
        "tiny-openai",
        &["--revision", COMMIT_A],
    );
    assert_eq!(doc.model.revision.as_deref(), Some(COMMIT_A));
    assert_eq!(hub.requests(), Vec::<String>::new());

    drop(hub);
    for offline in ["1", "0"] {
        let doc = classify_reference(
            vlm_hub(None, home.path()).env("HF_HUB_OFFLINE", offline),
            id,
            "tiny-laion",
        );
        assert_eq!(
            doc.model.revision.as_deref(),
            Some(COMMIT_B),
            "offline={offline}"
        );
    }
}

#[test]
fn a_revision_pinned_to_a_commit_downloads_that_commit() {
    let home = tempfile::tempdir().unwrap();
    let id = "someone/pinned";
    let repo = repo_of(id, "tiny-laion", COMMIT_B)
        .commit(COMMIT_A, files_of(&fixtures().join("models/tiny-openai")));
    let hub = StandIn::start(vec![repo]);
    let doc = classify_with(
        &mut vlm_hub(Some(hub.url()), home.path()),
        id,
        "tiny-openai",
        &["--revision", COMMIT_A],
    );
    assert_eq!(doc.model.revision.as_deref(), Some(COMMIT_A));
    let dir = repo_dir(home.path(), id);
    // A commit is no branch: no refs/main (main is another commit), no refs/<commit>.
    assert!(!dir.join("refs/main").exists());
    assert!(!dir.join("refs").join(COMMIT_A).exists());
    assert!(
        hub.requests().iter().all(|r| !r.contains("/resolve/main/")),
        "{:?}",
        hub.requests()
    );

    // A revision the Hub does not have: one line.
    let out = vlm_hub(Some(hub.url()), home.path())
        .args([
            "classify",
            "--labels",
            "a,b",
            "--revision",
            "v9",
            "--model",
            id,
        ])
        .arg(image("horse.png"))
        .output()
        .unwrap();
    let line = one_line_failure(&out);
    assert!(line.contains("no revision v9"), "{line}");
}

/// A cache written the way Python's huggingface_hub writes it: blobs, snapshot links, `refs/main`,
/// and no `refs/<commit>`.
fn python_style_cache(cache: &Path, id: &str, commit: &str, name: &str) {
    let dir = cache.join(format!("models--{}", id.replace('/', "--")));
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    let snapshot = dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    for (i, (file, bytes)) in files_of(&fixtures().join("models").join(name))
        .into_iter()
        .enumerate()
    {
        let blob = format!("{i:040x}");
        std::fs::write(dir.join("blobs").join(&blob), bytes).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snapshot.join(file)).unwrap();
    }
    std::fs::write(dir.join("refs/main"), commit).unwrap();
}

#[test]
fn index_then_search_work_offline_on_a_python_style_cache() {
    let cache = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let photos = tempfile::tempdir().unwrap();
    python_style_cache(cache.path(), DEFAULT_MODEL, COMMIT_A, "tiny-openai");
    for name in ["horse.png", "coins.png"] {
        std::fs::copy(image(name), photos.path().join(name)).unwrap();
    }
    let run = |args: &[&str]| -> Output {
        vlm()
            .env("HF_HUB_CACHE", cache.path())
            .env("HF_HUB_OFFLINE", "1")
            .env("VLM_DATA_DIR", data.path())
            .args(args)
            .output()
            .unwrap()
    };
    let photos_arg = photos.path().display().to_string();
    success(&run(&["index", &photos_arg]));
    // The index recorded commit A; search asks for that commit, which Python never wrote a ref for.
    let out = run(&["search", "a horse", "-f", "json"]);
    success(&out);
    assert!(stdout_of(&out).contains("horse.png"), "{}", stdout_of(&out));
    // A new photo needs the model again, by commit.
    std::fs::copy(image("camera.png"), photos.path().join("camera.png")).unwrap();
    success(&run(&["index", &photos_arg]));
    // No refs/<commit> appeared: the cache is still exactly Python's.
    let dir = cache.path().join("models--openai--clip-vit-base-patch32");
    assert!(!dir.join("refs").join(COMMIT_A).exists());

    // Online, the same: a commit in the cache needs no request at all.
    let hub = StandIn::start(vec![repo_of(DEFAULT_MODEL, "tiny-openai", COMMIT_A)]);
    let out = vlm()
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_HUB_OFFLINE", "0")
        .env("HF_ENDPOINT", hub.url())
        .env("VLM_DATA_DIR", data.path())
        .args(["search", "a camera"])
        .output()
        .unwrap();
    success(&out);
    assert_eq!(hub.requests(), Vec::<String>::new());
}

#[test]
fn a_gated_repository_is_one_line_naming_hf_token() {
    let home = tempfile::tempdir().unwrap();
    let id = "someone/gated-clip";
    let hub = StandIn::start(vec![repo_of(id, "tiny-openai", COMMIT_A).gated("hf_right")]);
    let args = ["classify", "--labels", "a,b", "--model", id];
    for token in [None, Some("hf_wrong")] {
        let mut cmd = vlm_hub(Some(hub.url()), home.path());
        if let Some(t) = token {
            cmd.env("HF_TOKEN", t);
        }
        let out = cmd.args(args).arg(image("horse.png")).output().unwrap();
        let line = one_line_failure(&out);
        assert!(line.contains("gated"), "{line}");
        assert!(line.contains("HF_TOKEN"), "{line}");
        assert!(
            !line.contains("hf_wrong"),
            "the token is never printed: {line}"
        );
    }
    // A token in HF_HOME/token (huggingface-cli login) counts as HF_TOKEN does.
    std::fs::write(home.path().join("token"), "hf_right\n").unwrap();
    success(
        &vlm_hub(Some(hub.url()), home.path())
            .args(args)
            .arg(image("horse.png"))
            .output()
            .unwrap(),
    );
}

#[test]
fn a_download_cut_off_is_resumed_never_used_as_whole() {
    let home = tempfile::tempdir().unwrap();
    let id = "someone/flaky";
    let hub = StandIn::start(vec![repo_of(id, "tiny-openai", COMMIT_A)]);
    let dir = repo_dir(home.path(), id);
    let cut = |content_length: bool| {
        Some(Cut {
            file: "model.safetensors".into(),
            after: 3_000_000,
            times: 1,
            content_length,
        })
    };

    // 1. Closed mid-file with a Content-Length: the run fails in one line; the part stays, no
    //    snapshot link, no refs/main; the next run resumes it (a Range request) and works.
    hub.cut(cut(true));
    let (args, _) = reference_args(&reference("tiny-openai"));
    let failed = vlm_hub(Some(hub.url()), home.path())
        .args(&args)
        .args(["--model", id])
        .output()
        .unwrap();
    let line = one_line_failure(&failed);
    assert!(line.contains("model.safetensors"), "{line}");
    assert!(line.contains("run the command again"), "{line}");
    assert!(!dir.join("refs/main").exists());
    assert!(!dir
        .join("snapshots")
        .join(COMMIT_A)
        .join("model.safetensors")
        .exists());
    let parts: Vec<String> = tree(&dir)
        .into_iter()
        .filter(|f| f.ends_with(".part"))
        .collect();
    assert_eq!(parts.len(), 1, "{:?}", tree(&dir));
    classify_reference(
        &mut vlm_hub(Some(hub.url()), home.path()),
        id,
        "tiny-openai",
    );
    assert!(!tree(&dir).iter().any(|f| f.ends_with(".part")));

    // 2. Cut with no Content-Length (the body ends with the connection): hf-hub takes the short
    //    file as whole; vlm's sha256 check refuses it and removes it; the next run starts over.
    let home = tempfile::tempdir().unwrap();
    let dir = repo_dir(home.path(), id);
    hub.cut(cut(false));
    let failed = vlm_hub(Some(hub.url()), home.path())
        .args(&args)
        .args(["--model", id])
        .output()
        .unwrap();
    let line = one_line_failure(&failed);
    assert!(line.contains("not the Hub's file"), "{line}");
    assert!(!dir
        .join("snapshots")
        .join(COMMIT_A)
        .join("model.safetensors")
        .exists());
    classify_reference(
        &mut vlm_hub(Some(hub.url()), home.path()),
        id,
        "tiny-openai",
    );

    // 3. Cut, then a server that ignores Range on the resume (answers the whole file, which hf-hub
    //    appends to the part): refused by the check, removed, and the run after starts over.
    let home = tempfile::tempdir().unwrap();
    hub.cut(cut(true));
    let run = || {
        vlm_hub(Some(hub.url()), home.path())
            .args(&args)
            .args(["--model", id])
            .output()
            .unwrap()
    };
    one_line_failure(&run());
    hub.ignore_range(true);
    let line = one_line_failure(&run());
    assert!(line.contains("not the Hub's file"), "{line}");
    classify_reference(
        &mut vlm_hub(Some(hub.url()), home.path()),
        id,
        "tiny-openai",
    );
}

#[test]
fn a_download_shows_progress_on_a_terminal_only() {
    let id = "someone/progress";
    let hub = StandIn::start(vec![repo_of(id, "tiny-openai", COMMIT_A)]);
    let bin = assert_cmd::cargo::cargo_bin("vlm");
    let photo = image("horse.png");
    let run = |terminal: bool| -> Output {
        let home = tempfile::tempdir().unwrap();
        let command = format!(
            "'{}' classify --labels cat,dog --model {id} '{photo}'",
            bin.display()
        );
        let mut cmd = if terminal {
            // util-linux script(1) gives the command a pseudo-terminal for stdin, stdout and stderr.
            let mut c = std::process::Command::new("script");
            c.args(["-qec", &command, "/dev/null"]);
            c
        } else {
            let mut c = std::process::Command::new("sh");
            c.args(["-c", &command]);
            c
        };
        cmd.env_remove("HF_HUB_CACHE")
            .env_remove("HF_TOKEN")
            .env_remove("VLM_MODEL")
            .env("VLM_CACHE_DIR", home.path().join("vlm"))
            .env("VLM_DATA_DIR", home.path().join("data"))
            .env("HF_HOME", home.path())
            .env("HF_HUB_OFFLINE", "0")
            .env("HF_ENDPOINT", hub.url());
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        out
    };
    let tty = run(true);
    // On a terminal everything arrives on the pty, which script copies to its stdout.
    let text = String::from_utf8_lossy(&tty.stdout).to_string();
    assert!(text.contains("model.safetensors"), "{text}");
    assert!(text.contains("7.15 MiB"), "the bar shows the size: {text}");
    let piped = run(false);
    assert_eq!(String::from_utf8_lossy(&piped.stderr), "");
    assert!(!String::from_utf8_lossy(&piped.stdout).contains("MiB"));
}

/// Not a test: the stand-in on a fixed address for a while, serving the fixture models under the
/// names tests/hub_check.py and the hub workflow use (`openai/clip-vit-base-patch32`: tiny-openai;
/// `google/siglip2-base-patch16-224`: tiny-siglip2, its tokenizer uncompressed as on the Hub), so
/// that Python's huggingface_hub and transformers can be tried against it:
///
/// ```sh
/// VLM_STANDIN_ADDR=127.0.0.1:8765 VLM_STANDIN_SECS=900 \
///     cargo test --release --test it hub::serve_stand_in -- --ignored --nocapture
/// ```
#[test]
#[ignore = "a server for trying Python against the stand-in by hand"]
fn serve_stand_in() {
    use std::io::Read;
    let addr = std::env::var("VLM_STANDIN_ADDR").unwrap_or_else(|_| "127.0.0.1:8765".into());
    let secs: u64 = std::env::var("VLM_STANDIN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let mut siglip2 = files_of(&fixtures().join("models/tiny-siglip2"));
    for (name, bytes) in &mut siglip2 {
        if name == "tokenizer.json.gz" {
            let mut text = Vec::new();
            flate2::read::GzDecoder::new(bytes.as_slice())
                .read_to_end(&mut text)
                .unwrap();
            *name = "tokenizer.json".into();
            *bytes = text;
        }
    }
    let hub = StandIn::start_on(
        &addr,
        vec![
            repo_of(DEFAULT_MODEL, "tiny-openai", COMMIT_A),
            HubRepo::new("google/siglip2-base-patch16-224")
                .commit(COMMIT_B, siglip2)
                .branch("main", COMMIT_B),
        ],
    );
    eprintln!("stand-in Hub at {} for {secs} s", hub.url());
    std::thread::sleep(std::time::Duration::from_secs(secs));
    eprintln!("{} requests", hub.requests().len());
}

/// An OpenCLIP repository (issue 22: `open_clip_config.json` and its weights, no `config.json`)
/// over the stand-in: the probe finds it by its own config, `org/name` and open_clip's
/// `hf-hub:org/name` both download it, a `.bin`-only repository too (read as data), and the
/// numbers are the local folder's, bit for bit (same weights, labels encoded in the same batch).
#[test]
fn openclip_repositories_download_through_the_stand_in() {
    let hub = StandIn::start(vec![
        repo_of("someone/tiny-openclip", "tiny-openclip-gelu", COMMIT_A),
        repo_of(
            "someone/tiny-openclip-bin",
            "tiny-openclip-quickgelu-bin",
            COMMIT_B,
        ),
    ]);
    let photo = image("coins.png");
    let probs = |out: &Output| -> Vec<u32> {
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["results"][0]["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["probability"].as_f64().unwrap() as f32).to_bits())
            .collect()
    };
    let classify = |model_arg: &str, home: Option<&Path>| -> Output {
        let mut cmd = match home {
            Some(home) => vlm_hub(Some(hub.url()), home),
            None => vlm(),
        };
        let out = cmd
            .args([
                "classify",
                "-f",
                "json",
                "--no-cache",
                "--labels",
                "cat,dog,coin",
            ])
            .args(["--model", model_arg, &photo])
            .output()
            .unwrap();
        success(&out);
        out
    };
    for (id, folder, commit) in [
        ("someone/tiny-openclip", "tiny-openclip-gelu", COMMIT_A),
        (
            "someone/tiny-openclip-bin",
            "tiny-openclip-quickgelu-bin",
            COMMIT_B,
        ),
    ] {
        let local = classify(&model(folder), None);
        for spelling in [id.to_string(), format!("hf-hub:{id}")] {
            let home = tempfile::tempdir().unwrap();
            let out = classify(&spelling, Some(home.path()));
            assert_eq!(probs(&out), probs(&local), "{spelling}");
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(doc["model"]["id"], id);
            assert_eq!(doc["model"]["family"], "openclip");
            assert_eq!(doc["model"]["revision"], commit);
            // Python's layout: the snapshot of the commit holds the files vlm read.
            let snapshot = home
                .path()
                .join("hub")
                .join(format!("models--{}", id.replace('/', "--")))
                .join("snapshots")
                .join(commit);
            assert!(
                snapshot.join("open_clip_config.json").is_file(),
                "{spelling}"
            );
        }
    }
    // Nothing asked for a file vlm does not read.
    assert!(
        hub.requests().iter().all(|r| !r.contains("tokenizer.json")),
        "{:?}",
        hub.requests()
    );
}
