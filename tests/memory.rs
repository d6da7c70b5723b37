//! Memory guarantees, measured on the real binary: peak RSS stays flat however many images a run
//! has, and an image costs memory in proportion to its pixels, which `--max-pixels` bounds (a
//! refused image, bomb or not, costs nothing). Each child's own peak is read with `wait4`, so the
//! tests can run side by side.
//!
//! A test binary of its own, not a module of `tests/it`: a child's peak RSS starts at its parent's
//! resident size when it forks (Linux keeps the old mm's high-water mark across exec), so the
//! parent must be a small process, not the big suite whose other tests hold images and models.
#![cfg(target_os = "linux")]

#[path = "it/common/mod.rs"]
mod common;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::ImageResult as Record;

const MIB: i64 = 1024;

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-openai")
}

use common::Measured as Run;

/// Runs `vlm classify` with the tiny model and `args`, and reads the child's own peak RSS.
fn classify(dir: &Path, args: &[&str]) -> Run {
    classify_with(&model(), dir, args)
}

/// [`classify`] with the model folder `model`.
fn classify_with(model: &Path, dir: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("vlm"));
    cmd.env("HF_HUB_OFFLINE", "1")
        .env("VLM_CACHE_DIR", dir.join("cache"))
        .args(["classify", "-l", "cat,dog", "-q"])
        .arg("-m")
        .arg(model)
        .args(args);
    common::run_measured(cmd, dir)
}

fn records(run: &Run) -> Vec<Record> {
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

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
    let run = |list: &[String], out: &Path| {
        let listing = dir.path().join("list.txt");
        std::fs::write(&listing, list.join("\n")).unwrap();
        let (listing, out) = (listing.display().to_string(), out.display().to_string());
        let run = classify(
            dir.path(),
            &[
                "-f",
                "jsonl",
                "-b",
                "32",
                "--files-from",
                &listing,
                "-o",
                &out,
            ],
        );
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let n = std::fs::read_to_string(out).unwrap().lines().count();
        (n, run.peak_kib)
    };
    let names: Vec<String> = (0..10_000)
        .map(|i| images.join(format!("{i:05}.png")).display().to_string())
        .collect();
    // Caches the labels' embeddings, so that both measured runs load the vision tower only.
    assert_eq!(run(&names[..1], &dir.path().join("warm.jsonl")).0, 1);
    let (n, small) = run(&names[..1_000], &dir.path().join("small.jsonl"));
    assert_eq!(n, 1_000);
    let (n, large) = run(&names, &dir.path().join("large.jsonl"));
    assert_eq!(n, 10_000);
    // 16 MiB of slack for allocator noise; the images' pixels alone would be 10,000 x 600 KB = 6 GB
    // had they been kept.
    assert!(
        large <= small + 16 * MIB,
        "peak RSS grew from {small} KiB (1,000 images) to {large} KiB (10,000 images)"
    );
}

/// README "Guarantees": an image in flight holds at most 8 bytes per pixel of its decoded size
/// beyond the run's baseline, and `--max-pixels` refuses larger images from their header, so
/// refused images (a 10-gigapixel PNG bomb, or a real image over a lowered limit) cost nothing.
/// The lower bound checks that the measurement sees a decoded image at all.
#[test]
fn memory_per_image_is_bounded_by_the_pixel_limit() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny.png");
    image::RgbImage::from_pixel(8, 8, image::Rgb([200, 30, 30]))
        .save(&tiny)
        .unwrap();
    let bomb = dir.path().join("bomb.png");
    std::fs::write(&bomb, common::png_claiming(100_000, 100_000)).unwrap();
    // 16 megapixels of gradient: 48 MB as RGB8, a few hundred KB as PNG, written row by row.
    const SIDE: u32 = 4_000;
    let big = dir.path().join("big.png");
    {
        let mut encoder = png::Encoder::new(File::create(&big).unwrap(), SIDE, SIDE);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut rows = encoder
            .write_header()
            .unwrap()
            .into_stream_writer()
            .unwrap();
        for y in 0..SIDE {
            let row: Vec<u8> = (0..SIDE)
                .flat_map(|x| [(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
                .collect();
            rows.write_all(&row).unwrap();
        }
        rows.finish().unwrap();
    }
    let big_bytes = i64::from(SIDE * SIDE) * 3;

    let path = |p: &Path| p.display().to_string();
    let (tiny, bomb, big) = (path(&tiny), path(&bomb), path(&big));
    // One image at a time: one decode thread, batches of one.
    let one_at_a_time = ["-f", "jsonl", "-j", "1", "-b", "1", "--exact-decode"];
    let run = |images: &[&str], extra: &[&str]| {
        let args: Vec<&str> = one_at_a_time
            .iter()
            .chain(extra)
            .chain(images)
            .copied()
            .collect();
        let run = classify(dir.path(), &args);
        (records(&run), run)
    };

    // The first run encodes the labels and caches them; the measured runs then load only the
    // vision tower, so the text tower's peak cannot hide an image's.
    assert_eq!(run(&[&tiny], &[]).1.code, Some(0));
    let (recs, baseline) = run(&[&tiny], &[]);
    assert_eq!(baseline.code, Some(0), "{}", baseline.stderr);
    assert!(recs[0].error.is_none());

    let (recs, refused) = run(&[&tiny, &bomb, &big], &["--max-pixels", "1000000"]);
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    let paths: Vec<&str> = recs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, [&tiny, &bomb, &big]);
    let errors: Vec<&str> = recs.iter().filter_map(|r| r.error.as_deref()).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with(&format!("{bomb}: image is 100000x100000")));
    assert!(errors[1].starts_with(&format!("{big}: image is 4000x4000")));
    assert!(
        refused.peak_kib <= baseline.peak_kib + 16 * MIB,
        "refused images raised the peak from {} KiB to {} KiB",
        baseline.peak_kib,
        refused.peak_kib
    );

    let (recs, admitted) = run(&[&tiny, &big], &[]);
    assert_eq!(admitted.code, Some(0), "{}", admitted.stderr);
    assert!(recs
        .iter()
        .all(|r| r.error.is_none() && r.predictions.len() == 2));
    let extra_kib = admitted.peak_kib - baseline.peak_kib;
    let bound_kib = 8 * i64::from(SIDE * SIDE) / 1024;
    assert!(
        extra_kib >= big_bytes / 1024 / 2,
        "a 16-megapixel decode added only {extra_kib} KiB: the measurement does not see it"
    );
    assert!(
        extra_kib <= bound_kib,
        "a 16-megapixel image added {extra_kib} KiB, over 8 bytes per pixel ({bound_kib} KiB)"
    );
    println!(
        "baseline {} KiB, with a 16-megapixel PNG {} KiB (+{extra_kib} KiB, {:.2} bytes/pixel), with it and a bomb refused {} KiB",
        baseline.peak_kib,
        admitted.peak_kib,
        extra_kib as f64 * 1024.0 / f64::from(SIDE * SIDE),
        refused.peak_kib
    );
}

/// Writes a `width`×`height` 8-bit greyscale PNG (a gradient) without ever holding a row: the
/// deflate stream is made of stored blocks, so it is written in 64 KiB pieces (the file is as
/// large as the image, which is fine for a test).
fn write_grey_png(path: &Path, width: u32, height: u32) {
    let mut file = std::io::BufWriter::new(File::create(path).unwrap());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit grey, deflate, no filter, no interlace
    common::png_chunk(&mut out, b"IHDR", &ihdr);
    // The scanlines, each a filter byte (0, none) and then the pixels.
    let row_len = u64::from(width) + 1;
    let total = row_len * u64::from(height);
    let byte = |i: u64| match i % row_len {
        0 => 0u8,
        x => ((x - 1 + i / row_len) % 256) as u8,
    };
    let (mut a, mut b) = (1u32, 0u32); // Adler-32 of the uncompressed stream
    let mut done = 0u64;
    let mut idat = vec![0x78, 0x01]; // zlib header: deflate, 32 KiB window, no dictionary
    while done < total {
        let len = (total - done).min(65_535) as u16;
        let last = done + u64::from(len) == total;
        idat.push(u8::from(last)); // BFINAL, BTYPE 00 (stored)
        idat.extend_from_slice(&len.to_le_bytes());
        idat.extend_from_slice(&(!len).to_le_bytes());
        for i in done..done + u64::from(len) {
            let v = byte(i);
            idat.push(v);
            a = (a + u32::from(v)) % 65_521;
            b = (b + a) % 65_521;
        }
        done += u64::from(len);
        if last {
            idat.extend_from_slice(&((b << 16) | a).to_be_bytes());
        }
        common::png_chunk(&mut out, b"IDAT", &idat);
        file.write_all(&out).unwrap();
        out.clear();
        idat.clear();
    }
    common::png_chunk(&mut out, b"IEND", &[]);
    file.write_all(&out).unwrap();
    file.flush().unwrap();
}

/// README "Guarantees" hold for every preprocessor config, not only CLIP's usual center crop: an
/// exact resize without a crop (`{"height": 224, "width": 224}`) squeezes a whole one-row image
/// into 224 columns. That once took Pillow's weight table for the long axis, 16 bytes per pixel
/// of a one-row image (a 100,000,000x1 PNG of 290 KB peaked at 1.9 GB), and for a one-column
/// image the whole intermediate image of the horizontal pass, 672 bytes per pixel; the same
/// 8 bytes per pixel now bound both.
#[test]
fn extreme_aspect_ratios_with_an_exact_resize_stay_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let exact = dir.path().join("exact-resize-model");
    std::fs::create_dir(&exact).unwrap();
    for entry in std::fs::read_dir(model()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, exact.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        exact.join("preprocessor_config.json"),
        r#"{"do_resize": true, "size": {"height": 224, "width": 224}, "resample": 3,
            "do_center_crop": false, "do_normalize": true, "do_rescale": true}"#,
    )
    .unwrap();
    let tiny = dir.path().join("tiny.png");
    image::RgbImage::from_pixel(8, 8, image::Rgb([200, 30, 30]))
        .save(&tiny)
        .unwrap();
    const WIDE: u32 = 20_000_000;
    const TALL: u32 = 1_000_000;
    let wide = dir.path().join("wide.png");
    write_grey_png(&wide, WIDE, 1);
    let tall = dir.path().join("tall.png");
    write_grey_png(&tall, 1, TALL);

    let run = |image: &Path| {
        let image = image.display().to_string();
        let args = [
            "-f",
            "jsonl",
            "-j",
            "1",
            "-b",
            "1",
            "--exact-decode",
            &image,
        ];
        let run = classify_with(&exact, dir.path(), &args);
        assert_eq!(run.code, Some(0), "{image}: {}", run.stderr);
        let recs = records(&run);
        assert!(recs[0].error.is_none() && recs[0].predictions.len() == 2);
        run.peak_kib
    };
    // The first run caches the labels' embeddings (see above).
    run(&tiny);
    let baseline = run(&tiny);
    for (name, image, pixels) in [("wide", &wide, WIDE), ("tall", &tall, TALL)] {
        let extra_kib = run(image) - baseline;
        // 16 MiB of slack for allocator noise, as above.
        let bound_kib = 8 * i64::from(pixels) / 1024 + 16 * MIB;
        println!(
            "{name} ({pixels} pixels): +{extra_kib} KiB over the baseline of {baseline} KiB, bound {bound_kib} KiB"
        );
        assert!(
            extra_kib <= bound_kib,
            "a {pixels}-pixel {name} image added {extra_kib} KiB, over 8 bytes per pixel plus 16 MiB ({bound_kib} KiB)"
        );
    }
}
