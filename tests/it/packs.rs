//! The packed-weight cache (issue 24, `src/model/packs.rs`), through the binary, whose loader maps
//! the cache file in place: a second int8 (or native bf16) run reads the layers the first one
//! packed and gives the same records bit for bit; `--no-cache` neither reads nor writes it; a
//! damaged file is repacked and repaired, and one that cannot be written is a warning, never a
//! failed run.

use std::path::{Path, PathBuf};

use vlm::kernels::Backend;

use crate::common;

/// The dtypes that pack layers at load on this CPU (int8 wherever vlm has an int8 kernel: any
/// x86-64 with AVX2; bf16 with AMX or AVX512-BF16).
fn packing_dtypes() -> Vec<&'static str> {
    let mut d = Vec::new();
    if Backend::native_int8() {
        d.push("int8");
    }
    if matches!(
        Backend::best(vlm::kernels::Precision::Bf16),
        Backend::AmxBf16 | Backend::Avx512Bf16
    ) {
        d.push("bf16");
    }
    d
}

/// The first of [`packing_dtypes`]. Every x86-64 CPU that runs the tests has AVX2, so int8
/// packs there and this panics if it does not; elsewhere (no int8 kernel but the portable one)
/// nothing is packed, and `None` says there is nothing to test.
fn packing_dtype() -> Option<&'static str> {
    let first = packing_dtypes().first().copied();
    assert!(
        first.is_some() || !cfg!(target_arch = "x86_64"),
        "no int8 kernel on an x86-64 CPU?"
    );
    first
}

fn classify(cache: &Path, dtype: &str, extra: &[&str]) -> (String, String) {
    let out = common::vlm_cache(cache)
        .args(["classify", "--model", &common::model("tiny-openai")])
        .args([
            "--labels",
            "cat,dog,car",
            "--format",
            "jsonl",
            "--dtype",
            dtype,
        ])
        .args(extra)
        .arg(common::image("camera.png"))
        .arg(common::image("coins.png"))
        .output()
        .unwrap();
    common::success(&out);
    (common::stdout_of(&out), common::stderr_of(&out))
}

/// The packed-weight files under `cache`.
fn packed_files(cache: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(cache.join("packed-v1")) {
        Ok(dir) => dir
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "bin"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_second_run_reads_the_packed_layers_and_gives_the_same_records() {
    let dtypes = packing_dtypes();
    // x86-64 CI machines all have AVX2: the test must not pass by doing nothing.
    if cfg!(target_arch = "x86_64") {
        assert!(dtypes.contains(&"int8"), "no int8 kernel on an x86-64 CPU?");
    }
    for dtype in dtypes {
        let cache = tempfile::tempdir().unwrap();
        let (first, _) = classify(cache.path(), dtype, &[]);
        let files = packed_files(cache.path());
        assert_eq!(files.len(), 1, "{dtype}: {files:?}");
        let written = std::fs::metadata(&files[0]).unwrap().modified().unwrap();
        let (second, _) = classify(cache.path(), dtype, &[]);
        assert_eq!(
            first, second,
            "{dtype}: records differ when read from the cache"
        );
        assert_eq!(
            std::fs::metadata(&files[0]).unwrap().modified().unwrap(),
            written,
            "{dtype}: a run that packed nothing rewrote the file"
        );
        // --no-cache: the same records, and no file in a fresh cache folder.
        let fresh = tempfile::tempdir().unwrap();
        let (bare, _) = classify(fresh.path(), dtype, &["--no-cache"]);
        assert_eq!(first, bare, "{dtype}");
        assert!(packed_files(fresh.path()).is_empty(), "{dtype}");
    }
}

#[test]
fn f32_runs_pack_nothing() {
    let cache = tempfile::tempdir().unwrap();
    classify(cache.path(), "f32", &[]);
    assert!(packed_files(cache.path()).is_empty());
}

#[test]
fn a_damaged_file_is_repacked_and_an_unwritable_cache_is_a_warning() {
    let Some(dtype) = packing_dtype() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let (first, _) = classify(cache.path(), dtype, &[]);
    let file = packed_files(cache.path()).remove(0);
    // Flip a byte near the end: inside the last layer's buffers.
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x10;
    std::fs::write(&file, &bytes).unwrap();
    let (again, stderr) = classify(cache.path(), dtype, &[]);
    assert_eq!(first, again, "a damaged cache changed the records");
    assert!(stderr.is_empty(), "{stderr}");
    assert_ne!(
        std::fs::read(&file).unwrap(),
        bytes,
        "the damaged file was not repaired"
    );

    // A cache folder where the packed files' folder cannot be made: one warning line, exit 0,
    // the same records.
    let blocked = tempfile::tempdir().unwrap();
    std::fs::write(blocked.path().join("packed-v1"), b"not a folder").unwrap();
    let (records, stderr) = classify(blocked.path(), dtype, &[]);
    assert_eq!(first, records);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("vlm: warning: cannot keep the packed weights for the next run"),
        "{stderr}"
    );
    // And -q silences it.
    let out = common::vlm_cache(blocked.path())
        .args(["classify", "-q", "--model", &common::model("tiny-openai")])
        .args(["--labels", "cat,dog", "--dtype", dtype])
        .arg(common::image("camera.png"))
        .output()
        .unwrap();
    common::success(&out);
    assert!(out.stderr.is_empty(), "{}", common::stderr_of(&out));
}

/// A cache entry that is a symlink to a user's file: read as a (bad) cache file, then replaced by
/// a new file; the user's file is never written through the link.
#[cfg(unix)]
#[test]
fn a_symlinked_cache_file_is_replaced_never_written_through() {
    let Some(dtype) = packing_dtype() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let (first, _) = classify(cache.path(), dtype, &[]);
    let file = packed_files(cache.path()).remove(0);
    let precious = cache.path().join("precious.txt");
    std::fs::write(&precious, b"the user's words").unwrap();
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(&precious, &file).unwrap();
    let (again, stderr) = classify(cache.path(), dtype, &[]);
    assert_eq!(first, again);
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(std::fs::read(&precious).unwrap(), b"the user's words");
    assert!(!std::fs::symlink_metadata(&file).unwrap().is_symlink());
}
