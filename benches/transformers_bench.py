#!/usr/bin/env python3
"""CPU baseline: Python `transformers` CLIP image encoding, to compare `vlm` (Candle) against.

    /work/.venv/bin/python tests/fixtures/make_fixtures.py --bench tests/fixtures/bench-vit-b32
    /work/.venv/bin/python benches/transformers_bench.py tests/fixtures/bench-vit-b32 \
        --threads 2 --batch-sizes 1,8 --images 64

Measures, on CPU in float32 with `--threads` intra-op threads:
  * model load time (CLIPModel.from_pretrained + image processor + tokenizer construction),
  * for each batch size: throughput in images/s of preprocessing (PIL-backend CLIP image
    processor: decode, RGB, resize, crop, normalise) + image encoding
    (`get_image_features`, i.e. vision tower + projection), with the split between the two.
The images are the fixture images (tests/fixtures/images), cycled to reach `--images`.
Decoding (PIL open + load) is counted in preprocessing.  One warm-up batch is run first.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import transformers
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = REPO / "tests" / "fixtures" / "images"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path, help="CLIP model folder (config.json, model.safetensors, ...)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    ap.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes")
    ap.add_argument("--images", type=int, default=64, help="number of images per measurement")
    ap.add_argument("--image-dir", type=Path, default=DEFAULT_IMAGES)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    t0 = time.perf_counter()
    model = CLIPModel.from_pretrained(args.model, dtype=torch.float32).eval()
    proc = AutoImageProcessor.from_pretrained(args.model, backend="pil")
    AutoTokenizer.from_pretrained(args.model)
    load_s = time.perf_counter() - t0

    files = sorted(p for p in args.image_dir.iterdir() if p.is_file())
    paths = [files[i % len(files)] for i in range(args.images)]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]

    def run(batch_paths):
        t = time.perf_counter()
        imgs = []
        for p in batch_paths:
            im = Image.open(p)
            im.load()
            imgs.append(im)
        pix = proc(images=imgs, return_tensors="pt")["pixel_values"]
        t_pre = time.perf_counter() - t
        t = time.perf_counter()
        out = model.get_image_features(pixel_values=pix)
        emb = out if isinstance(out, torch.Tensor) else out.pooler_output
        assert emb.shape[0] == len(batch_paths)
        return t_pre, time.perf_counter() - t

    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, processor {type(proc).__name__}, "
          f"model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params)")
    print(f"model load: {load_s:.2f} s")
    print(f"{'batch':>5} {'images':>6} {'pre s':>8} {'enc s':>8} {'total s':>8} {'img/s':>8} "
          f"{'pre ms/img':>10} {'enc ms/img':>10}")
    for bs in batch_sizes:
        run(paths[:bs])  # warm-up
        pre = enc = 0.0
        for i in range(0, len(paths), bs):
            a, b = run(paths[i:i + bs])
            pre += a
            enc += b
        n = len(paths)
        tot = pre + enc
        print(f"{bs:>5} {n:>6} {pre:>8.3f} {enc:>8.3f} {tot:>8.3f} {n / tot:>8.2f} "
              f"{1000 * pre / n:>10.2f} {1000 * enc / n:>10.2f}")


if __name__ == "__main__":
    main()
