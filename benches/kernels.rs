//! GEMM rate (GFLOP/s; GOP/s for int8, counting each multiply and add as for f32) of the encoder's
//! linear layers: Candle's matmul and `vlm::kernels` (f32 packed and in place, AVX2 f32, bf16,
//! every int8 kernel this CPU runs) against PyTorch's (f32, bf16, dynamic int8), measured in the same run.
//!
//!     cargo bench --bench kernels
//!
//! Environment: `VLM_KERNELS_SHAPES` (comma-separated MxKxN, default: the ViT-B/32 encoder's four
//! linear layers at batch 32 and at batch 1), `VLM_BENCH_PYTHON` (interpreter with torch for
//! `benches/gemm_torch.py`, default `python3`; the PyTorch columns are left empty when it fails),
//! `RAYON_NUM_THREADS` (threads for Candle and for PyTorch, default: all cores).
//! Each figure is the median of 7 samples of at least 0.2 s each, printed twice: per second of wall
//! time, and per second of the process's CPU time (all threads; Unix only): on a machine shared with
//! other work the second is steadier, as it leaves out the time the threads waited for a core.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use candle_core::{Device, Tensor};
use vlm::kernels::{Backend, PackedLinear, Precision};

const DEFAULT_SHAPES: &str = "1600x768x2304,1600x768x768,1600x768x3072,1600x3072x768,\
                              50x768x2304,50x768x768,50x768x3072,50x3072x768";
const MIN_SAMPLE_S: f64 = 0.2;
const SAMPLES: usize = 7;

#[derive(Clone, Copy)]
struct Shape {
    m: usize,
    k: usize,
    n: usize,
}

impl Shape {
    fn parse(s: &str) -> anyhow::Result<Self> {
        let v: Vec<usize> = s
            .trim()
            .split('x')
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        anyhow::ensure!(v.len() == 3, "shape {s:?} is not MxKxN");
        Ok(Self {
            m: v[0],
            k: v[1],
            n: v[2],
        })
    }
    fn name(&self) -> String {
        format!("{}x{}x{}", self.m, self.k, self.n)
    }
    fn flop(&self) -> f64 {
        2.0 * (self.m * self.k * self.n) as f64
    }
}

/// This process's CPU time (all threads), in seconds; NaN where not measured.
fn cpu_seconds() -> f64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec, which ts is.
        if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0 {
            return ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9;
        }
    }
    f64::NAN
}

/// Median (wall, CPU) seconds per call of `f`, over SAMPLES samples of at least MIN_SAMPLE_S each.
fn seconds_per_call(mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<(f64, f64)> {
    for _ in 0..3 {
        f()?;
    }
    let t = Instant::now();
    f()?;
    let one = t.elapsed().as_secs_f64().max(1e-7);
    let iters = ((MIN_SAMPLE_S / one) as usize).max(1);
    let (mut wall, mut cpu) = (Vec::with_capacity(SAMPLES), Vec::with_capacity(SAMPLES));
    for _ in 0..SAMPLES {
        let (t, c) = (Instant::now(), cpu_seconds());
        for _ in 0..iters {
            f()?;
        }
        wall.push(t.elapsed().as_secs_f64() / iters as f64);
        cpu.push((cpu_seconds() - c) / iters as f64);
    }
    wall.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    Ok((wall[SAMPLES / 2], cpu[SAMPLES / 2]))
}

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// PyTorch's (wall, CPU) GFLOP/s per (shape, dtype), from benches/gemm_torch.py; empty if it cannot
/// run.
#[allow(clippy::type_complexity)]
fn torch_rates(
    shapes: &[Shape],
    threads: usize,
) -> (String, HashMap<(String, String), (f64, f64)>) {
    let python = std::env::var("VLM_BENCH_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/gemm_torch.py");
    let names: Vec<String> = shapes.iter().map(Shape::name).collect();
    let out = Command::new(&python)
        .arg(&script)
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--shapes")
        .arg(names.join(","))
        .output();
    let mut rates = HashMap::new();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            return (
                format!(
                    "PyTorch: {python} failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                ),
                rates,
            )
        }
        Err(e) => return (format!("PyTorch: cannot run {python}: {e}"), rates),
    };
    let mut version = String::from("PyTorch: ?");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(t) = v["torch"].as_str() {
            version = format!("PyTorch {t}, {} threads", v["threads"]);
        } else if let (Some(s), Some(d), Some(g)) = (
            v["shape"].as_str(),
            v["dtype"].as_str(),
            v["gflops"].as_f64(),
        ) {
            let gc = v["gflops_cpu"].as_f64().unwrap_or(f64::NAN);
            rates.insert((s.to_string(), d.to_string()), (g, gc));
        }
    }
    (version, rates)
}

fn main() -> anyhow::Result<()> {
    let shapes: Vec<Shape> = std::env::var("VLM_KERNELS_SHAPES")
        .unwrap_or_else(|_| DEFAULT_SHAPES.to_string())
        .split(',')
        .map(Shape::parse)
        .collect::<anyhow::Result<_>>()?;
    let threads = candle_core::utils::get_num_threads();
    let (torch_version, torch) = torch_rates(&shapes, threads);
    let backends: Vec<Backend> = [
        Backend::best(Precision::F32),
        Backend::Avx2F32,
        Backend::best(Precision::Bf16),
        Backend::Avx512Bf16,
        Backend::AmxInt8,
        Backend::Avx512Vnni,
        Backend::AvxVnni,
        Backend::Avx2Int8,
    ]
    .into_iter()
    .filter(|b| b.is_available())
    .fold(Vec::new(), |mut v, b| {
        if !v.contains(&b) {
            v.push(b);
        }
        v
    });
    let mut columns = vec!["candle f32".to_string(), "f32 in place".to_string()];
    columns.extend(backends.iter().map(|b| format!("{b:?}")));
    columns.extend(["torch f32", "torch bf16", "torch int8"].map(String::from));
    // rows[shape][column] = (wall, cpu) GFLOP/s
    let mut rows: Vec<Vec<Option<(f64, f64)>>> = Vec::new();
    let dev = Device::Cpu;
    for s in &shapes {
        let rate = |(wall, cpu): (f64, f64)| Some((s.flop() / wall / 1e9, s.flop() / cpu / 1e9));
        let x = values(s.m * s.k, 1);
        let w = values(s.n * s.k, 2);
        let bias = values(s.n, 3);
        let mut row = Vec::new();
        let xt = Tensor::from_slice(&x, (s.m, s.k), &dev)?;
        // As the model holds it: the [out, in] weight, transposed as a view.
        let wt = Tensor::from_slice(&w, (s.n, s.k), &dev)?.t()?;
        row.push(rate(seconds_per_call(|| {
            std::hint::black_box(xt.matmul(&wt)?);
            Ok(())
        })?));
        // f32 over the weight where it is, each panel packed as the product reaches it (what a
        // single image runs).
        let mut y = vec![0f32; s.m * s.n];
        row.push(rate(seconds_per_call(|| {
            vlm::kernels::forward_in_place(
                &[&w],
                Some(&bias),
                s.k,
                (&x, s.m),
                &mut y,
                vlm::kernels::Epilogue::None,
            )?;
            std::hint::black_box(&mut y);
            Ok(())
        })?));
        for &b in &backends {
            let lin = PackedLinear::with_backend(&w, Some(&bias), s.n, s.k, b)?;
            let mut y = vec![0f32; s.m * s.n];
            row.push(rate(seconds_per_call(|| {
                lin.forward(&x, s.m, &mut y)?;
                std::hint::black_box(&mut y);
                Ok(())
            })?));
        }
        for d in ["f32", "bf16", "int8"] {
            row.push(torch.get(&(s.name(), d.to_string())).copied());
        }
        rows.push(row);
    }
    println!("threads: {threads}; {torch_version}");
    for (title, pick) in [
        ("GFLOP/s (wall clock)", 0),
        ("GFLOP per CPU-second (all threads)", 1),
    ] {
        println!("\n{title}");
        print!("{:>16}", "MxKxN");
        for c in &columns {
            print!(" {c:>12}");
        }
        println!();
        for (s, row) in shapes.iter().zip(&rows) {
            print!("{:>16}", s.name());
            for cell in row {
                match cell {
                    Some(g) if pick == 0 => print!(" {:>12.1}", g.0),
                    Some(g) => print!(" {:>12.1}", g.1),
                    None => print!(" {:>12}", "-"),
                }
            }
            println!();
        }
    }
    Ok(())
}
