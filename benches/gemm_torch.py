"""PyTorch's rate for the linear layers of the ViT encoder, the reference `benches/kernels.rs` prints.

    python benches/gemm_torch.py --threads 2 --shapes 1600x768x2304,50x768x768

Each shape is MxKxN: `y = x @ w.T + b` with x [M, K], w [N, K], as `torch.nn.functional.linear`
computes it, in f32, in bf16 (x and w both bf16, as a model converted with `.to(torch.bfloat16)`
runs) and in dynamic int8 (`quantize_dynamic`, qint8: int8 weights, activations quantized per
call). Prints one JSON object per line: {"shape": "MxKxN", "dtype": "f32"|"bf16", "gflops": median,
"gflops_cpu": median}: GFLOP per second of wall-clock time, and per second of the process's CPU
time summed over its threads (on a machine shared with other work, the second is steadier: it
leaves out the time the threads waited for a core).
"""

import argparse
import json
import statistics
import time

import torch


def rate(m, k, n, dtype, min_time, repeats):
    g = torch.Generator().manual_seed(0)
    if dtype == "int8":
        # PyTorch's dynamic int8 (what quantize_dynamic makes of every nn.Linear): int8 weights,
        # the activations quantized at every call.
        x = torch.randn(m, k, generator=g)
        lin = torch.nn.Linear(k, n)
        lin = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
        def f(x, w, b):
            return lin(x)
        w = b = None
    else:
        x = torch.randn(m, k, generator=g).to(dtype)
        w = torch.randn(n, k, generator=g).to(dtype)
        b = torch.randn(n, generator=g).to(dtype)
        f = torch.nn.functional.linear
    with torch.inference_mode():
        for _ in range(3):
            f(x, w, b)
        # Iterations per sample so that one sample lasts about min_time.
        t = time.perf_counter()
        f(x, w, b)
        one = max(time.perf_counter() - t, 1e-6)
        iters = max(1, int(min_time / one))
        wall, cpu = [], []
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            for _ in range(iters):
                f(x, w, b)
            wall.append((time.perf_counter() - t) / iters)
            cpu.append((time.process_time() - c) / iters)
    flop = 2.0 * m * k * n
    return flop / statistics.median(wall) / 1e9, flop / statistics.median(cpu) / 1e9


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shapes", default="1600x768x2304,1600x768x768,1600x768x3072,1600x3072x768")
    p.add_argument("--dtypes", default="f32,bf16,int8")
    p.add_argument("--min-time", type=float, default=0.2)
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16, "int8": "int8"}
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for shape in a.shapes.split(","):
        m, k, n = (int(v) for v in shape.split("x"))
        for d in a.dtypes.split(","):
            g, gc = rate(m, k, n, dtypes[d], a.min_time, a.repeats)
            print(
                json.dumps({"shape": shape, "dtype": d, "gflops": round(g, 1), "gflops_cpu": round(gc, 1)}),
                flush=True,
            )


if __name__ == "__main__":
    main()
