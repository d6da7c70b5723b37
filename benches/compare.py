#!/usr/bin/env python3
"""vlm against transformers/PyTorch, whole processes side by side: batch throughput and peak RSS,
the single-image call, `vlm tag --aspects all` cold and warm, and the machine's fp32 GEMM rate.

    cargo build --release
    /work/.venv/bin/python tests/fixtures/make_fixtures.py --bench tests/fixtures/bench-vit-b32
    /work/.venv/bin/python benches/compare.py --model tests/fixtures/bench-vit-b32 --images 1000

Every figure is one whole process, timed from start to exit (wall clock) with its peak resident
memory (`wait4`'s ru_maxrss), so start-up, model loading, decoding and writing the output all count.
vlm runs `classify DIR --labels cat,dog,car -b B -j T --format jsonl`; the reference runs
benches/transformers_classify.py, which does the same work with transformers' CLIPModel and
PIL image processor on PyTorch with T threads. Both read the same JPEG files (generated here from
tests/fixtures/images at 640x480, a typical photo size) and write JSONL to /dev/null.
Prints Markdown tables for BENCHMARKS.md.
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
LABELS = "cat,dog,car"


def run(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one process, whose output is discarded.

    Measured by GNU time, not by this (large) Python process: a child forked from it would report
    the parent's resident memory as its own peak."""
    with tempfile.NamedTemporaryFile("r") as report:
        t = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name, *cmd],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           env={**os.environ, **(env or {})})
        wall = time.perf_counter() - t
        if p.returncode != 0:
            sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr.decode(errors='replace')}")
        peak_kib = int(report.read().split()[-1])
    return wall, peak_kib / 1024


def make_images(n: int, out: Path) -> list[str]:
    from PIL import Image

    sources = sorted((REPO / "tests/fixtures/images").iterdir())
    paths = []
    for i in range(n):
        img = Image.open(sources[i % len(sources)]).convert("RGB")
        # Vary each copy a little (crop offset) so that no two files are identical.
        w, h = img.size
        dx, dy = (i * 7) % max(1, w // 10), (i * 5) % max(1, h // 10)
        img = img.crop((dx, dy, w - dx // 2, h - dy // 2)).resize((640, 480), Image.BICUBIC)
        p = out / f"img{i:05d}.jpg"
        img.save(p, quality=90)
        paths.append(str(p))
    return paths


def gemm_rate(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    a @ b
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    return 10 * 2 * 2048 ** 3 / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--vlm", type=Path, default=REPO / "target/release/vlm")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=5, help="runs of each single-image call")
    ap.add_argument("--skip-batch", action="store_true")
    ap.add_argument("--skip-single", action="store_true", help="only the batch runs")
    args = ap.parse_args()
    py = sys.executable
    ref = str(REPO / "benches/transformers_classify.py")
    vlm = str(args.vlm)
    model = str(args.model)
    weights_mb = sum(p.stat().st_size for p in args.model.glob("*.safetensors")) / 2**20
    work = Path(tempfile.mkdtemp(prefix="vlm-bench-"))
    cache = work / "cache"
    env = {"VLM_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    try:
        print(f"machine: {os.cpu_count()} cores; threads {args.threads}; fp32 GEMM (PyTorch 2048^3): "
              f"{gemm_rate(args.threads):.1f} GFLOP/s; weights {weights_mb:.0f} MiB\n")
        images = make_images(max(args.images, 1), work)

        if args.skip_single:
            return batches(args, py, ref, vlm, model, env, images)
        # Single image: process start to output. vlm's text cache is warm after the first run,
        # as it is for a user's second call; both cold and warm are shown.
        one = images[:1]
        vlm_one = [vlm, "classify", "-m", model, "-l", LABELS, "-f", "jsonl", "-j", str(args.threads),
                   *one]
        ref_one = [py, ref, "--model", model, "--labels", LABELS, "--threads", str(args.threads), *one]
        shutil.rmtree(cache, ignore_errors=True)
        cold = run(vlm_one, env)
        warm = [run(vlm_one, env) for _ in range(args.repeat)]
        torch_one = [run(ref_one) for _ in range(args.repeat)]
        med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
        print("| single-image call (3 labels), process start to exit | vlm | transformers | ratio |")
        print("| --- | ---: | ---: | ---: |")
        print(f"| wall, median of {args.repeat} | {med(warm, 0):.2f} s (first call, cold text cache: "
              f"{cold[0]:.2f} s) | {med(torch_one, 0):.2f} s | {med(torch_one, 0) / med(warm, 0):.1f}x faster |")
        print(f"| peak RSS | {med(warm, 1):.0f} MB ({med(warm, 1) / weights_mb:.2f}x weights) | "
              f"{med(torch_one, 1):.0f} MB | |\n")

        # vlm tag --aspects all on one image: first run encodes ~1950 prompts, second reads the cache.
        shutil.rmtree(cache, ignore_errors=True)
        tag = [vlm, "tag", "-m", model, "-a", "all", "-f", "jsonl", "-j", str(args.threads), *one]
        first = run(tag, env)
        second = run(tag, env)
        print("| `vlm tag --aspects all`, one image | wall | peak RSS |")
        print("| --- | ---: | ---: |")
        print(f"| first run (text cache empty) | {first[0]:.2f} s | {first[1]:.0f} MB |")
        print(f"| second run (text from the cache) | {second[0]:.2f} s | {second[1]:.0f} MB |\n")

        if not args.skip_batch:
            batches(args, py, ref, vlm, model, env, images)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def batches(args, py, ref, vlm, model, env, images) -> None:
    if True:
        n = len(images)
        print(f"| batch | vlm img/s | vlm peak RSS | transformers img/s | transformers peak RSS | ratio |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for b in [int(x) for x in args.batch_sizes.split(",")]:
            # A list file, as a script would pass thousands of names.
            listing = Path(images[0]).parent / "list.txt"
            listing.write_text("\n".join(images) + "\n")
            v = run([vlm, "classify", "-m", model, "-l", LABELS, "-f", "jsonl", "-b", str(b),
                     "-j", str(args.threads), "-q", "--files-from", str(listing)], env)
            t = run([py, ref, "--model", model, "--labels", LABELS, "--batch-size", str(b),
                     "--threads", str(args.threads), *images])
            print(f"| {b} | {n / v[0]:.2f} | {v[1]:.0f} MB | {n / t[0]:.2f} | {t[1]:.0f} MB | "
                  f"{t[0] / v[0]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
