#!/usr/bin/env python3
"""The transformers equivalent of `vlm classify`, for side-by-side benchmarks (benches/compare.py).

    python benches/transformers_classify.py --model DIR --labels cat,dog,car --batch-size 8 \
        --threads 2 IMAGE...

Loads CLIPModel + the PIL image processor + tokenizer from DIR, encodes the prompts
"a photo of a {label}." once, then the images in batches (PIL decode, RGB, CLIPImageProcessor,
get_image_features), and prints one JSON line per image with the softmax over the labels, as
`vlm classify --format jsonl` does. Same numerics as transformers' own zero-shot pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--autocast", choices=["bf16"], help="run the model under torch.autocast "
                    "(CPU, bfloat16): PyTorch's fastest CPU mode")
    ap.add_argument("--quantize", choices=["int8"], help="quantize every nn.Linear with "
                    "torch.ao.quantization.quantize_dynamic (qint8): PyTorch's CPU int8 mode")
    ap.add_argument("--timing", action="store_true", help="print to stderr the seconds spent "
                    "after the model was loaded (decode, preprocess, encode, output)")
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()

    # Imports are part of a Python tool's start-up cost, so they are inside the timed process.
    import contextlib
    import time

    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model = CLIPModel.from_pretrained(args.model, dtype=torch.float32).eval()
    if args.quantize:
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    proc = AutoImageProcessor.from_pretrained(args.model, backend="pil")
    tok = AutoTokenizer.from_pretrained(args.model)

    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.autocast
                else contextlib.nullcontext())
    start = time.perf_counter()
    labels = [label for label in args.labels.split(",") if label]
    text = tok([f"a photo of a {label}." for label in labels], padding=True, return_tensors="pt")
    with autocast:
        t = model.get_text_features(**text)
    t = (t if isinstance(t, torch.Tensor) else t.pooler_output).float()
    t = t / t.norm(dim=-1, keepdim=True)
    scale = model.logit_scale.exp()

    out = sys.stdout
    for i in range(0, len(args.images), args.batch_size):
        paths = args.images[i:i + args.batch_size]
        imgs = [Image.open(p).convert("RGB") for p in paths]
        pix = proc(images=imgs, return_tensors="pt")["pixel_values"]
        with autocast:
            e = model.get_image_features(pixel_values=pix)
        e = (e if isinstance(e, torch.Tensor) else e.pooler_output).float()
        e = e / e.norm(dim=-1, keepdim=True)
        probs = (scale * e @ t.T).softmax(dim=-1)
        for path, p in zip(paths, probs.tolist()):
            ranked = sorted(zip(labels, p), key=lambda x: -x[1])
            out.write(json.dumps({"path": path, "predictions": [
                {"label": label, "probability": prob} for label, prob in ranked]}) + "\n")
        out.flush()
    if args.timing:
        print(f"timing: {time.perf_counter() - start:.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
