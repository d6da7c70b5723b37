#!/usr/bin/env python3
"""Seeds for the `model_files` fuzz target: every config.json and preprocessor_config.json under
tests/fixtures, and the header plus 64 data bytes of every fixture .safetensors file (with the
length of the rest of the file, as the target reads it) and of one small file made here, each
behind the target's selector byte (0 config, 1 preprocessor, 2 safetensors).

    python3 tests/fuzz/model_seeds.py /tmp/model-seeds
"""
import json
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

def safetensors_seed(name, data, keep):
    """Selector, the length of the file past the bytes kept, the first `keep` bytes."""
    global n
    missing = struct.pack("<Q", len(data) - keep)
    (out / f"{n:03}-{name}").write_bytes(b"\x02" + missing + data[:keep])
    n += 1


for path in sorted(root.rglob("*.safetensors")):
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    safetensors_seed(f"{path.parent.name}-{path.name}", data, 8 + header_len + 64)
# A whole small file: two tensors and metadata.
header = json.dumps(
    {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "F16", "shape": [3], "data_offsets": [16, 22]},
    }
).encode()
whole = struct.pack("<Q", len(header)) + header + bytes(22)
safetensors_seed("whole.safetensors", whole, len(whole))
print(f"{n} seeds in {out}")
