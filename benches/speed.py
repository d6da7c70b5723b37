#!/usr/bin/env python3
"""Issues 11 and 24's comparison in one run: vlm against transformers/PyTorch, f32, bf16 and int8.

    cargo build --release
    /work/.venv/bin/python tests/fixtures/make_fixtures.py --bench tests/fixtures/bench-vit-b32
    /work/.venv/bin/python benches/speed.py --model tests/fixtures/bench-vit-b32

Prints Markdown for BENCHMARKS.md:
  * the CPU (model name and the flags that matter) and PyTorch's GEMM rate in f32 and bf16;
  * end to end on `--images` distinct 640x480 JPEGs, batch `--batch`, `--threads` threads:
    `vlm classify` (f32, `--dtype bf16`, `--dtype int8`) against
    benches/transformers_classify.py (f32, `torch.autocast("cpu", dtype=torch.bfloat16)`,
    `quantize_dynamic` qint8), alternating, `--rounds` rounds, medians; int8 also against vlm's
    own f32 and bf16;
    vlm is timed as a whole process (start-up and model load included); the reference times
    itself from after its model load (imports and loading excluded), so the comparison leans
    towards PyTorch;
  * the single-image call (process start to exit) and vlm's peak RSS against the weights file,
    with the caches warm, and for int8 and bf16 also with the packed-weight cache cold.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benches"))
from compare import make_images, run  # noqa: E402

LABELS = "cat,dog,car"
FLAGS = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
         "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"]


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                  if line.startswith("model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                  if line.startswith("flags")), [])
    have = [f for f in FLAGS if f in flags]
    return f"{model}, {os.cpu_count()} logical CPUs; flags: {' '.join(have)}"


def gemm_rates(threads: int) -> tuple[float, float]:
    import torch

    torch.set_num_threads(threads)
    rates = []
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(2048, 2048, dtype=dtype)
        b = torch.randn(2048, 2048, dtype=dtype)
        a @ b
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        rates.append(10 * 2 * 2048 ** 3 / (time.perf_counter() - t) / 1e9)
    return rates[0], rates[1]


def timed_reference(cmd: list[str]) -> float:
    """Seconds the reference reports for itself (after its model load)."""
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
    line = [line for line in p.stderr.splitlines() if line.startswith("timing: ")][-1]
    return float(line.split()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--vlm", type=Path, default=REPO / "target/release/vlm")
    ap.add_argument("--images", type=int, default=240)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    py, ref, vlm, model = sys.executable, str(REPO / "benches/transformers_classify.py"), \
        str(args.vlm), str(args.model)
    weights_mb = sum(p.stat().st_size for p in args.model.glob("*.safetensors")) / 2**20
    work = Path(tempfile.mkdtemp(prefix="vlm-speed-"))
    env = {"VLM_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1",
           "RAYON_NUM_THREADS": str(args.threads)}
    f32_rate, bf16_rate = gemm_rates(args.threads)
    print(f"CPU: {cpu()}  ")
    print(f"load average at start: {os.getloadavg()[0]:.1f}  ")
    print(f"PyTorch GEMM 2048³, {args.threads} threads: f32 {f32_rate:.0f} GFLOP/s, "
          f"bf16 {bf16_rate:.0f} GFLOP/s; weights {weights_mb:.0f} MiB\n")
    images = make_images(args.images, work)
    listing = work / "list.txt"
    listing.write_text("\n".join(images) + "\n")
    n = len(images)

    def vlm_cmd(dtype: str) -> list[str]:
        return [vlm, "classify", "-m", model, "-l", LABELS, "-f", "jsonl", "-b", str(args.batch),
                "-j", str(args.threads), "-q", "--dtype", dtype, "--files-from", str(listing)]

    def ref_cmd(dtype: str) -> list[str]:
        mode = {"f32": [], "bf16": ["--autocast", "bf16"], "int8": ["--quantize", "int8"]}[dtype]
        return [py, ref, "--model", model, "--labels", LABELS, "--batch-size", str(args.batch),
                "--threads", str(args.threads), "--timing", *mode, *images]

    dtypes = ("f32", "bf16", "int8")
    # Warm the text cache and the page cache once.
    for dtype in dtypes:
        run(vlm_cmd(dtype), env)
    results: dict[str, list[float]] = {f"{s}{d}": [] for s in "vt" for d in dtypes}
    rss: dict[str, float] = {}
    for _ in range(args.rounds):
        for dtype in dtypes:
            wall, peak = run(vlm_cmd(dtype), env)
            results[f"v{dtype}"].append(wall)
            rss[dtype] = peak
            results[f"t{dtype}"].append(timed_reference(ref_cmd(dtype)))
    rate = {k: n / statistics.median(v) for k, v in results.items()}
    spread = {k: f"{n / max(v):.1f}–{n / min(v):.1f}" for k, v in results.items()}
    print(f"End to end, {n} photos (640x480 JPEG), batch {args.batch}, {args.threads} threads, "
          f"median of {args.rounds} alternating rounds (range in brackets):\n")
    print("| precision | vlm img/s | transformers img/s | vlm / transformers | vlm peak RSS |")
    print("| --- | ---: | ---: | ---: | ---: |")
    names = {"f32": "f32", "bf16": "bf16 (`--dtype bf16` / `torch.autocast`)",
             "int8": "int8 (`--dtype int8` / `quantize_dynamic` qint8)"}
    for d in dtypes:
        print(f"| {names[d]} | {rate['v' + d]:.1f} ({spread['v' + d]}) | {rate['t' + d]:.1f} "
              f"({spread['t' + d]}) | **{rate['v' + d] / rate['t' + d]:.2f}×** | "
              f"{rss[d]:.0f} MB |")
    print(f"\nvlm int8 against vlm f32: **{rate['vint8'] / rate['vf32']:.2f}×**; against vlm bf16: "
          f"**{rate['vint8'] / rate['vbf16']:.2f}×**; load average at end: "
          f"{os.getloadavg()[0]:.1f}\n")

    one = [vlm, "classify", "-m", model, "-l", LABELS, "-f", "jsonl", "-j", str(args.threads),
           images[0]]
    for dtype in dtypes:
        runs = [run([*one, "--dtype", dtype], env) for _ in range(5)]
        print(f"Single image, `--dtype {dtype}`, process start to exit (text and packed-weight "
              f"caches warm): median {statistics.median(r[0] for r in runs):.3f} s, peak RSS "
              f"{statistics.median(r[1] for r in runs):.0f} MB "
              f"({statistics.median(r[1] for r in runs) / weights_mb:.2f}× the weights file)  ")
    # The first call with a model: int8 and bf16 pack the tower and write the packed-weight
    # cache (src/model/packs.rs); f32 packs nothing, so its figure above is also its first call.
    packed = work / "cache" / "packed-v1"
    for dtype in ("bf16", "int8"):
        runs = []
        for _ in range(3):
            shutil.rmtree(packed, ignore_errors=True)
            runs.append(run([*one, "--dtype", dtype], env))
        print(f"Single image, `--dtype {dtype}`, packed-weight cache cold (packs the tower and "
              f"writes the cache): median {statistics.median(r[0] for r in runs):.3f} s  ")


if __name__ == "__main__":
    main()
