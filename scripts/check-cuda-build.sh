#!/usr/bin/env bash
# Checks that `cargo build --release --features cuda` compiles (issue 24: it never had been here),
# with the CUDA compiler and headers from PyPI's wheels instead of a system CUDA toolkit:
#
#     scripts/check-cuda-build.sh            # extra arguments go to cargo build
#
# - installs `nvidia-cuda-nvcc` 13.x (bin/nvcc, ptxas, the CUDA headers' crt/) and
#   `nvidia-cuda-runtime` 13.x (cuda_runtime.h, libcudart) into a virtual environment of its own,
#   `$VLM_CUDA_VENV` (default `.dev/`, git-ignored; never the shared /work/.venv);
# - points Candle's build scripts at it (CUDA_ROOT/CUDA_PATH, nvcc on PATH) and builds for
#   compute capability `$CUDA_COMPUTE_CAP` (default 90: H100), since a machine without a GPU
#   cannot report one;
# - builds into `$CARGO_TARGET_DIR` (default target/cuda), so the CPU build in target/ is not
#   rebuilt afterwards.
#
# Slow (Candle's CUDA kernels and cudarc compile from scratch): not part of .ci/run. Needs no GPU
# and no driver: cudarc loads libcuda at run time.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${VLM_CUDA_VENV:-.dev}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet 'nvidia-cuda-nvcc>=13,<14' 'nvidia-cuda-runtime>=13,<14'
root=$("$venv/bin/python" - <<'PY'
import os, nvidia
for base in nvidia.__path__:
    for sub in ("cu13", "cuda_nvcc"):
        if os.path.isfile(os.path.join(base, sub, "bin", "nvcc")):
            print(os.path.join(base, sub))
            raise SystemExit
raise SystemExit("no bin/nvcc in the nvidia wheels")
PY
)
export CUDA_ROOT=$root CUDA_PATH=$root CUDA_TOOLKIT_ROOT_DIR=$root
export PATH="$root/bin:$PATH"
export LIBRARY_PATH="$root/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
echo "check-cuda-build: $(nvcc --version | tail -1), compute capability $CUDA_COMPUTE_CAP, into $CARGO_TARGET_DIR" >&2
cargo build --release --features cuda "$@"
echo "check-cuda-build: the CUDA build compiles" >&2
