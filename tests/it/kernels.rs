//! Every kernel level this CPU can run, end to end through the binary (issue 21).
//!
//! The matrix backends are unit-tested one by one (`src/kernels/tests.rs`), but the elementwise,
//! softmax and attention kernels are compiled three times (AVX-512, AVX2 + FMA, baseline) and the
//! best is chosen once per process, so a unit test only ever sees the best. Here the binary runs
//! under `VLM_KERNELS=portable`, `avx2` and `avx512` (each a cap: that level and below), and every
//! level must give the reference's embeddings on each family's first fixture (`tiny-openai` for
//! CLIP; the family table, `common/families.rs`). A level this CPU lacks
//! is reported on stderr as NOT TESTED, and with `VLM_REQUIRE_KERNELS=all` it fails the test.

use crate::common;

use common::families::for_each_family;
use common::{fixtures, image, max_abs_diff, model, normalized, stdout_of, success, vlm};
use serde::Deserialize;
use vlm::kernels::cpu;

/// Image embeddings from the files: vlm's decoder and resize differ from PIL's by a grey level here
/// and there (`parity.rs` allows 2e-3 on cosines from files for the same reason).
const IMAGE_TOL: f32 = 2e-3;
/// Two levels on the same pixels differ only in summation order and in the polynomial `exp`/`erf`
/// of the SIMD kernels against libm's.
const LEVEL_TOL: f32 = 1e-4;

#[derive(Deserialize)]
struct Reference {
    prompts: Vec<String>,
    text_embeds: Vec<Vec<f32>>,
    images: Vec<String>,
    image_embeds: Vec<Vec<f32>>,
}

/// One `vlm embed -f jsonl` record: a text's or an image's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Embedding {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    path: Option<String>,
    embedding: Vec<f32>,
    /// Image records say `null` here when the image was read.
    #[serde(default)]
    error: Option<String>,
}

/// `vlm embed -f jsonl` under `VLM_KERNELS=level`: each input's name and embedding, in order.
/// (JSON keeps every f32 exactly: shortest round-trip digits.)
fn embed(fixture: &str, level: &str, args: &[String]) -> Vec<(String, Vec<f32>)> {
    let out = vlm()
        .env("VLM_KERNELS", level)
        .args([
            "embed",
            "-q",
            "--no-cache",
            "-f",
            "jsonl",
            "-m",
            &model(fixture),
        ])
        .args(args)
        .output()
        .unwrap();
    success(&out);
    stdout_of(&out)
        .lines()
        .map(|l| {
            let e: Embedding = serde_json::from_str(l).unwrap();
            assert_eq!(e.error, None, "VLM_KERNELS={level}");
            (e.text.or(e.path).unwrap(), e.embedding)
        })
        .collect()
}

/// The embeddings, after checking that they came for `names`, in that order.
fn rows_for(got: Vec<(String, Vec<f32>)>, names: &[String]) -> Vec<Vec<f32>> {
    let (got_names, rows): (Vec<String>, Vec<Vec<f32>>) = got.into_iter().unzip();
    assert_eq!(got_names, names);
    rows
}

/// The levels this CPU can run (`portable` always), and those it cannot, reported.
fn levels() -> Vec<&'static str> {
    let f = cpu::features();
    let mut run = vec!["portable"];
    for (name, has) in [("avx2", f.avx2_fma), ("avx512", f.avx512)] {
        if has {
            run.push(name);
            continue;
        }
        let required = std::env::var("VLM_REQUIRE_KERNELS").unwrap_or_default();
        assert!(
            required.trim() != "all",
            "kernel level {name} is required (VLM_REQUIRE_KERNELS=all) but this CPU cannot run it"
        );
        eprintln!("NOT TESTED: this CPU cannot run kernel level {name}");
    }
    run
}

#[test]
fn every_kernel_level_this_cpu_runs_matches_the_reference() {
    let levels = levels();
    for_each_family("kernel levels", |family| {
        // The family's first fixture (CLIP: tiny-openai).
        let fixture = family.fixtures[0];
        let r: Reference = family.reference(fixture);
        // The prompts as typed (`--template '{}'`), as the reference encoded them.
        let mut text_args = vec!["--template".to_string(), "{}".to_string()];
        for p in &r.prompts {
            text_args.extend(["--text".to_string(), p.clone()]);
        }
        // The reference's images that are fixture files in `images/` (SigLIP's also embedded
        // alpha images, composited differently by the pipeline: `siglip.rs`).
        let (images, want_images): (Vec<String>, Vec<Vec<f32>>) = r
            .images
            .iter()
            .zip(&r.image_embeds)
            .filter(|(n, _)| fixtures().join("images").join(n).is_file())
            .map(|(n, e)| (image(n), e.clone()))
            .unzip();
        let want_text = normalized(&r.text_embeds);
        let want_images = normalized(&want_images);

        let mut first: Option<(&str, Vec<Vec<f32>>)> = None;
        for &level in &levels {
            let texts = rows_for(embed(fixture, level, &text_args), &r.prompts);
            let diff = max_abs_diff(&texts, &want_text);
            assert!(
                // f32 text embeddings on identical token ids: the reference and each level sum
                // in different orders (the parity harness's tolerance, the family's row).
                diff <= family.reference.embed_tol,
                "{fixture}: VLM_KERNELS={level}: text embeddings differ from the reference's by {diff}"
            );
            let got = rows_for(embed(fixture, level, &images), &images);
            let diff = max_abs_diff(&got, &want_images);
            assert!(
                diff <= IMAGE_TOL,
                "{fixture}: VLM_KERNELS={level}: image embeddings differ from the reference's by {diff}"
            );
            match &first {
                None => first = Some((level, got)),
                Some((base, base_images)) => {
                    let diff = max_abs_diff(&got, base_images);
                    assert!(
                        diff <= LEVEL_TOL,
                        "{fixture}: VLM_KERNELS={level} and {base} differ by {diff} on the same images"
                    );
                }
            }
        }
    });
}
