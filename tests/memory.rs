//! Memory stays flat however many images a run has: 10,000 tiny images need no more memory than
//! 1,000. Alone in its own test binary, because it reads the peak RSS of this process's children.

use std::path::Path;

use assert_cmd::Command;

/// Peak resident set of all children waited for so far, in KiB.
#[cfg(target_os = "linux")]
fn children_peak_rss_kib() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        assert_eq!(
            libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()),
            0
        );
        usage.assume_init()
    };
    usage.ru_maxrss
}

#[cfg(target_os = "linux")]
#[test]
fn ten_thousand_images_in_flat_memory() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    // Distinct tiny images, so that nothing is deduplicated.
    for i in 0..10_000u32 {
        let img = image::RgbImage::from_fn(4, 4, |x, y| {
            image::Rgb([(i % 251) as u8, (i / 251) as u8, (x * 4 + y) as u8])
        });
        img.save(images.join(format!("{i:05}.png"))).unwrap();
    }
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-openai");
    let run = |list: &[String], out: &Path| {
        let listing = dir.path().join("list.txt");
        std::fs::write(&listing, list.join("\n")).unwrap();
        let status = Command::cargo_bin("vlm")
            .unwrap()
            .env("HF_HUB_OFFLINE", "1")
            .env("VLM_CACHE_DIR", dir.path().join("cache"))
            .args(["classify", "-l", "cat,dog", "-f", "jsonl", "-q", "-b", "32"])
            .arg("-m")
            .arg(&model)
            .arg("--files-from")
            .arg(&listing)
            .arg("-o")
            .arg(out)
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
        std::fs::read_to_string(out).unwrap().lines().count()
    };
    let names: Vec<String> = (0..10_000)
        .map(|i| images.join(format!("{i:05}.png")).display().to_string())
        .collect();
    assert_eq!(run(&names[..1_000], &dir.path().join("small.jsonl")), 1_000);
    let small = children_peak_rss_kib();
    assert_eq!(run(&names, &dir.path().join("large.jsonl")), 10_000);
    let large = children_peak_rss_kib();
    // The peak over both runs: if the 10,000-image run had grown with its input, it would show here.
    // 16 MiB of slack for allocator noise; the images' pixels alone would be 10,000 x 600 KB = 6 GB.
    assert!(
        large <= small + 16 * 1024,
        "peak RSS grew from {small} KiB (1,000 images) to {large} KiB (10,000 images)"
    );
}
