#!/usr/bin/env python3
"""Seeds for the `model_files` fuzz target: every config.json and preprocessor_config.json under
tests/fixtures, and every fixture .safetensors file: whole when under 64 KiB, else its header
plus 64 data bytes (a file cut short; the target also reads each input as the start of a huge
file), each behind the target's selector byte (0 config, 1 preprocessor, 2 safetensors).

    python3 tests/fuzz/model_seeds.py /tmp/model-seeds
"""
import pathlib
import struct
import sys

root = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures"
out = pathlib.Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
n = 0
for path in sorted(root.rglob("*.json")):
    name = path.name
    if "preprocessor" in name:
        selector = b"\x01"
    elif (name.endswith("config.json") or path.parent.name == "configs") and "tokenizer" not in name:
        selector = b"\x00"
    else:
        continue
    (out / f"{n:03}-{path.parent.name}-{name}").write_bytes(selector + path.read_bytes())
    n += 1
for path in sorted(root.rglob("*.safetensors")):
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    start = data if len(data) < 1 << 16 else data[: 8 + header_len + 64]
    (out / f"{n:03}-{path.parent.name}-{path.name}").write_bytes(b"\x02" + start)
    n += 1
print(f"{n} seeds in {out}")
