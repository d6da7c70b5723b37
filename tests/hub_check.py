#!/usr/bin/env python3
"""vlm against transformers on checkpoints as the Hub publishes them (issue 19, section 4).

Run by .github/workflows/hub.yml (weekly and by hand), where the real Hub is reachable. The
development machines have no Hub: there it runs against the stand-in Hub of the tests, which
serves the fixture models under the real names (tiny random weights, same formats):

    cargo build --release
    VLM_STANDIN_ADDR=127.0.0.1:8765 VLM_STANDIN_SECS=900 \\
        cargo test --release --test it hub::serve_stand_in -- --ignored &
    HF_ENDPOINT=http://127.0.0.1:8765 python tests/hub_check.py --vlm target/release/vlm \\
        --model openai/clip-vit-base-patch32 --model google/siglip2-base-patch16-224 \\
        --photos tests/fixtures/images/*.png

For each model, in a fresh work folder:
1. transformers downloads it (huggingface_hub, HF_HOME=<work>/python) and scores every photo
   against the labels with its zero-shot-image-classification pipeline (hypothesis_template "{}");
2. vlm, with HF_HUB_OFFLINE=1, finds that download in Python's cache and scores the same photos
   (--template '{}'): the cache is shared both ways;
3. vlm downloads the model itself into an empty HF_HOME=<work>/vlm and scores again: must equal 2;
4. transformers, with HF_HUB_OFFLINE=1, loads the model and its image processor from vlm's cache.
Every score must be within --tol (1e-3) of transformers' and every photo's top-1 the same.

--coco IMAGE: transformers' documented CLIP example (http://images.cocodataset.org/val2017/
000000039769.jpg, two cats; "a photo of a cat" / "a photo of a dog", about 0.995 / 0.005) for the
CLIP models: transformers computed as the documentation does (CLIPProcessor, padding=True, softmax
of logits_per_image), vlm within --tol of it, and the cat above 0.99.

Exits 1 on the first failed check, printing what differed; prints one line per check otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_LABELS = "a photo of a cat,a photo of a dog,a photo of a car,a photo of a horse,a photo of coins"
COCO_LABELS = ["a photo of a cat", "a photo of a dog"]


def fail(message: str) -> None:
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def env_with(**overrides: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    # The cache location is HF_HOME's here: a stray HF_HUB_CACHE would point both sides elsewhere.
    env.pop("HF_HUB_CACHE", None)
    return env


def vlm_scores(vlm: str, model: str, labels: list[str], photos: list[str], env: dict) -> dict:
    """{photo: {label: probability}} from `vlm classify -f json`."""
    cmd = [vlm, "classify", "--model", model, "--labels", ",".join(labels), "--template", "{}",
           "--no-cache", "-f", "json", *photos]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        fail(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()}")
    doc = json.loads(p.stdout)
    out = {}
    for result in doc["results"]:
        if result["error"]:
            fail(f"vlm: {result['path']}: {result['error']}")
        out[result["path"]] = {pred["label"]: pred["probability"] for pred in result["predictions"]}
    return out


def python(code: str, env: dict, *args: str) -> str:
    """Runs `code` in a fresh interpreter (huggingface_hub reads HF_HOME/HF_HUB_OFFLINE at import)."""
    p = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        fail(f"python: {p.stderr.strip()[-2000:]}")
    return p.stdout


TRANSFORMERS_PIPELINE = r"""
import json, sys
from PIL import Image
from transformers import pipeline
model, labels, photos = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
clf = pipeline("zero-shot-image-classification", model=model, device="cpu")
out = {}
for photo in photos:
    scores = clf(Image.open(photo), candidate_labels=labels, hypothesis_template="{}")
    out[photo] = {s["label"]: s["score"] for s in scores}
print(json.dumps(out))
"""

TRANSFORMERS_OFFLINE_LOAD = r"""
import sys
from transformers import AutoImageProcessor, AutoModel
model = AutoModel.from_pretrained(sys.argv[1])
AutoImageProcessor.from_pretrained(sys.argv[1])
print(type(model).__name__)
"""

# transformers' documented CLIP example (CLIPModel's docstring / model card), as written there.
TRANSFORMERS_CLIP_EXAMPLE = r"""
import json, sys
from PIL import Image
from transformers import CLIPModel, CLIPProcessor
model = CLIPModel.from_pretrained(sys.argv[1])
processor = CLIPProcessor.from_pretrained(sys.argv[1])
image = Image.open(sys.argv[2])
inputs = processor(text=json.loads(sys.argv[3]), images=image, return_tensors="pt", padding=True)
outputs = model(**inputs)
probs = outputs.logits_per_image.softmax(dim=1)
print(json.dumps(probs[0].tolist()))
"""

MODEL_TYPE = r"""
import sys
from transformers import AutoConfig
print(AutoConfig.from_pretrained(sys.argv[1]).model_type)
"""


def compare(name: str, got: dict, want: dict, tol: float) -> None:
    worst = 0.0
    for photo, scores in want.items():
        mine = got.get(photo)
        if mine is None:
            fail(f"{name}: vlm has no result for {photo}")
        for label, p in scores.items():
            diff = abs(mine[label] - p)
            worst = max(worst, diff)
            if diff > tol:
                fail(f"{name}: {photo}: {label!r} is {mine[label]:.6f} in vlm, {p:.6f} in transformers")
        top_vlm = max(mine, key=mine.get)
        top_ref = max(scores, key=scores.get)
        if top_vlm != top_ref:
            fail(f"{name}: {photo}: top-1 {top_vlm!r} in vlm, {top_ref!r} in transformers")
    print(f"ok: {name}: {len(want)} photos, largest difference {worst:.2e} (tolerance {tol:g}), same top-1")


def check_model(args, model: str, work: Path) -> None:
    labels = [label.strip() for label in args.labels.split(",")]
    photos = [str(Path(p).resolve()) for p in args.photos]
    py_home, vlm_home = work / "python", work / "vlm"

    # 1. transformers fetches the model and scores the photos.
    py_env = env_with(HF_HOME=str(py_home), HF_HUB_OFFLINE=None)
    want = json.loads(python(TRANSFORMERS_PIPELINE, py_env, model, json.dumps(labels), *photos))
    print(f"ok: {model}: transformers scored {len(photos)} photos")

    # 2. vlm finds Python's download offline.
    from_python = vlm_scores(args.vlm, model, labels, photos,
                             env_with(HF_HOME=str(py_home), HF_HUB_OFFLINE="1"))
    compare(f"{model} (vlm offline on huggingface_hub's cache)", from_python, want, args.tol)

    # 3. vlm downloads it itself.
    own = vlm_scores(args.vlm, model, labels, photos, env_with(HF_HOME=str(vlm_home), HF_HUB_OFFLINE="0"))
    compare(f"{model} (vlm's own download)", own, want, args.tol)
    if own != from_python:
        fail(f"{model}: vlm's own download scores differently from Python's cache")

    # 4. transformers finds vlm's download offline.
    loaded = python(TRANSFORMERS_OFFLINE_LOAD, env_with(HF_HOME=str(vlm_home), HF_HUB_OFFLINE="1"), model)
    print(f"ok: {model}: transformers offline loaded {loaded.strip()} from vlm's cache")

    if args.coco:
        model_type = python(MODEL_TYPE, py_env, model).strip()
        if model_type != "clip":
            print(f"skip: {model}: the COCO example is transformers' CLIP example ({model_type})")
            return
        coco = str(Path(args.coco).resolve())
        ref = json.loads(python(TRANSFORMERS_CLIP_EXAMPLE, py_env, model, coco, json.dumps(COCO_LABELS)))
        got = vlm_scores(args.vlm, model, COCO_LABELS, [coco], env_with(HF_HOME=str(vlm_home), HF_HUB_OFFLINE="1"))
        compare(f"{model} (transformers' documented example)", got, {coco: dict(zip(COCO_LABELS, ref))}, args.tol)
        cat = got[coco][COCO_LABELS[0]]
        if args.coco_expect and cat < 0.99:
            fail(f"{model}: the two cats are {cat:.4f} 'a photo of a cat' in vlm (transformers' docs: about 0.995)")
        print(f"ok: {model}: COCO 000000039769: cat {cat:.4f}, dog {got[coco][COCO_LABELS[1]]:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vlm", required=True, help="the vlm binary")
    parser.add_argument("--model", action="append", required=True, help="Hub id; repeatable")
    parser.add_argument("--photos", nargs="+", required=True, help="image files to score")
    parser.add_argument("--labels", default=DEFAULT_LABELS, help="comma-separated prompts")
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--coco", help="000000039769.jpg, for transformers' documented example")
    parser.add_argument("--no-coco-expect", dest="coco_expect", action="store_false",
                        help="skip the 'cat above 0.99' check (random-weight stand-in models)")
    parser.add_argument("--work", help="work folder (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.work or tmp)
        for model in args.model:
            check_model(args, model, root / model.replace("/", "--"))
    print("all checks passed")


if __name__ == "__main__":
    main()
