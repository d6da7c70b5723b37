//! Image-encoding throughput of vlm on CPU, printed next to the reference it is compared against.
//!
//!     /work/.venv/bin/python tests/fixtures/make_fixtures.py --bench tests/fixtures/bench-vit-b32
//!     cargo bench --bench throughput
//!
//! Environment: `VLM_BENCH_MODEL` (model folder, default tests/fixtures/bench-vit-b32),
//! `VLM_BENCH_IMAGES` (images per measurement, default 64), `VLM_BENCH_BATCHES` (default 1,8,32),
//! `VLM_BENCH_DTYPES` (default f32,bf16: each precision is measured in turn).
//! Reports the time to build the model and, per batch size, images/s for decode + preprocess + encode
//! and for encode alone. The PyTorch reference comes from `benches/transformers_bench.py` on the same
//! checkpoint, images and thread count; BENCHMARKS.md keeps both side by side.

use std::path::{Path, PathBuf};
use std::time::Instant;

use vlm::engine::{Engine, ModelOptions, Precision};
use vlm::images::{self as preprocess, DecodeLimits};
use vlm::model::Towers;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model_dir = PathBuf::from(env_or(
        "VLM_BENCH_MODEL",
        &root
            .join("tests/fixtures/bench-vit-b32")
            .display()
            .to_string(),
    ));
    if !model_dir.join("config.json").exists() {
        eprintln!(
            "no benchmark model at {}: generate it with\n  python tests/fixtures/make_fixtures.py --bench {}",
            model_dir.display(),
            model_dir.display()
        );
        return Ok(());
    }
    let n_images: usize = env_or("VLM_BENCH_IMAGES", "64").parse()?;
    let batches: Vec<usize> = env_or("VLM_BENCH_BATCHES", "1,8,32")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;

    let dtypes: Vec<Precision> = env_or("VLM_BENCH_DTYPES", "f32,bf16")
        .split(',')
        .map(|d| match d {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            "bf16" => Ok(Precision::Bf16),
            other => Err(anyhow::anyhow!(
                "VLM_BENCH_DTYPES: unknown precision {other}"
            )),
        })
        .collect::<anyhow::Result<_>>()?;
    for precision in dtypes {
        run(&model_dir, root, precision, n_images, &batches)?;
    }
    Ok(())
}

fn run(
    model_dir: &Path,
    root: &Path,
    precision: Precision,
    n_images: usize,
    batches: &[usize],
) -> anyhow::Result<()> {
    let args = ModelOptions {
        model: model_dir.display().to_string(),
        revision: None,
        device: env_or("VLM_BENCH_DEVICE", "cpu"),
        precision,
    };
    let t = Instant::now();
    let model = Engine::load(
        &args,
        Towers {
            vision: true,
            text: false,
        },
        true,
    )?;
    let load_s = t.elapsed().as_secs_f64();

    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("tests/fixtures/images"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let paths: Vec<&PathBuf> = (0..n_images).map(|i| &files[i % files.len()]).collect();
    let limits = DecodeLimits::default();
    let prep = |p: &Path| -> anyhow::Result<Vec<f32>> {
        let img = preprocess::load_image(p, &limits)?;
        preprocess::preprocess(&img, &model.preprocess)
    };

    println!(
        "model: {} (vision tower only), --dtype {}",
        model_dir.display(),
        precision.name()
    );
    println!("model build: {load_s:.3} s");
    println!(
        "{:>6} {:>14} {:>14} {:>12}",
        "batch", "total img/s", "encode img/s", "prep ms/img"
    );
    for &bs in batches {
        // Warm-up: first-touch of the weights and allocator.
        let warm: Vec<Vec<f32>> = paths
            .iter()
            .take(bs)
            .map(|p| prep(p))
            .collect::<anyhow::Result<_>>()?;
        model.image_embeddings(&warm)?;
        let (mut prep_s, mut enc_s) = (0.0, 0.0);
        for chunk in paths.chunks(bs) {
            let t = Instant::now();
            let px: Vec<Vec<f32>> = chunk
                .iter()
                .map(|p| prep(p))
                .collect::<anyhow::Result<_>>()?;
            prep_s += t.elapsed().as_secs_f64();
            let t = Instant::now();
            std::hint::black_box(model.image_embeddings(&px)?);
            enc_s += t.elapsed().as_secs_f64();
        }
        let n = paths.len() as f64;
        println!(
            "{bs:>6} {:>14.2} {:>14.2} {:>12.1}",
            n / (prep_s + enc_s),
            n / enc_s,
            prep_s / n * 1e3
        );
    }
    Ok(())
}
