#!/usr/bin/env bash
# Checks that `cargo build --release --features cuda` compiles and links (issue 24: it never had
# been here), with the CUDA compiler, headers and libraries from PyPI's wheels instead of a system
# CUDA toolkit:
#
#     scripts/check-cuda-build.sh            # extra arguments go to cargo build
#     VLM_CUDA_MAJOR=12 scripts/check-cuda-build.sh
#
# - installs one CUDA release's wheels into a virtual environment of its own, `$VLM_CUDA_VENV`
#   (default `.dev/cuda$VLM_CUDA_MAJOR`, git-ignored; never the shared /work/.venv):
#   `VLM_CUDA_MAJOR=13` (default) CUDA 13.4 — nvidia-cuda-nvcc, -crt, -nvvm, -runtime, -nvrtc
#   ==13.4.*, and nvidia-cuda-cccl (include/cccl/nv/target, which cuda_fp16.h includes; no 13.4
#   release, 13.3.5 is the newest), which the 13.x wheels all unpack into one tree, nvidia/cu13/{bin,include,lib};
#   `VLM_CUDA_MAJOR=12` CUDA 12.9 — the -cu12 wheels, one folder each (nvidia/cuda_nvcc,
#   nvidia/cuda_runtime, ...), merged here with hard links into $VLM_CUDA_VENV/cuda-root so that
#   nvcc finds cuda_runtime.h beside itself. Not 13.5 or later: cudarc 0.19.10 (Candle 0.11's)
#   reads `nvcc --version` and panics on a release it does not know, 13.4 being its newest;
# - points Candle's build scripts at it (CUDA_ROOT/CUDA_PATH/CUDA_HOME, nvcc on PATH) and builds
#   for compute capability `$CUDA_COMPUTE_CAP` (default 90: H100, nvcc's sm_90a), since a machine
#   without a GPU cannot report one;
# - links the binary: Candle turns on cudarc's `dynamic-linking`, so `vlm` is linked against
#   libcuda, libnvrtc, libcublas, libcublasLt, libcurand and libcudart. All but libcuda come from
#   the wheels (nvidia-cublas and nvidia-curand installed for this), under the unversioned names
#   the linker looks for ($VLM_CUDA_VENV/link). libcuda is the driver, which no wheel ships: the
#   script links against a stub it generates from the driver API that cuda.h declares (every
#   function, as empty bodies, soname libcuda.so.1) — what the toolkit's lib/stubs/libcuda.so is
#   for. The binary needs the real driver, and the CUDA libraries on its library path, to run;
# - builds into `$CARGO_TARGET_DIR` (default target/cuda-$VLM_CUDA_MAJOR), so the CPU build in
#   target/ is not rebuilt afterwards.
#
# Status (2026-12-05): run to completion at 3b29636 with the defaults (CUDA 13.4, compute
# capability 90) on a 2-vCPU Xeon at nice 19: every crate compiled with no warning and vlm
# linked, 24 min 41 s of cargo (1,482 s in all). Earlier tries: nvcc 13.5 (cudarc panics, hence
# 13.4); candle-kernels failed on `nv/target` (no CCCL wheel, hence nvidia-cuda-cccl). The `-cu12`
# path (VLM_CUDA_MAJOR=12) has not been run to the end. No GPU: the binary was never run.
#
# Slow (Candle's CUDA kernels, its quantised matmul kernels among them, compile from scratch with
# nvcc): not part of .ci/run. Needs no GPU and no driver.
set -euo pipefail
cd "$(dirname "$0")/.."

major=${VLM_CUDA_MAJOR:-13}
case $major in
    13) wheels=('nvidia-cuda-nvcc==13.4.*' 'nvidia-cuda-crt==13.4.*' 'nvidia-nvvm==13.4.*'
                'nvidia-cuda-runtime==13.4.*' 'nvidia-cuda-nvrtc==13.4.*'
                'nvidia-cuda-cccl>=13,<14' 'nvidia-cublas>=13,<14' 'nvidia-curand>=10.4,<11') ;;
    12) wheels=('nvidia-cuda-nvcc-cu12==12.9.*' 'nvidia-cuda-runtime-cu12==12.9.*'
                'nvidia-cuda-nvrtc-cu12==12.9.*' 'nvidia-cublas-cu12>=12.9,<13'
                'nvidia-curand-cu12') ;;
    *) echo "check-cuda-build: VLM_CUDA_MAJOR must be 12 or 13, not $major" >&2; exit 2 ;;
esac

venv=${VLM_CUDA_VENV:-.dev/cuda$major}
venv=$(mkdir -p "$venv" && cd "$venv" && pwd)
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet "${wheels[@]}"
nvidia=$("$venv/bin/python" -c 'import nvidia; print(list(nvidia.__path__)[0])')

if [ "$major" = 13 ]; then
    root=$nvidia/cu13
else
    # nvcc looks for its headers in ../include beside the path it was started by, so the
    # toolkit's pieces must share one tree; hard links are cheap and keep nvcc's own path.
    root=$venv/cuda-root
    rm -rf "$root"
    mkdir -p "$root"
    for part in "$nvidia"/cuda_nvcc "$nvidia"/cuda_runtime "$nvidia"/cuda_nvrtc; do
        cp -al "$part"/. "$root"/
    done
fi
[ -x "$root/bin/nvcc" ] || { echo "check-cuda-build: no bin/nvcc in $root" >&2; exit 1; }
[ -f "$root/include/cuda_runtime.h" ] || { echo "check-cuda-build: no cuda_runtime.h in $root/include" >&2; exit 1; }

# The unversioned library names `-lcublas` etc. resolve to, and the libcuda stub.
link=$venv/link
rm -rf "$link"
mkdir -p "$link"
for lib in cudart nvrtc cublas cublasLt curand; do
    found=$(find "$nvidia" -name "lib$lib.so.[0-9]*" | grep -E "/lib$lib\.so\.[0-9]+$" | head -1)
    [ -n "$found" ] || { echo "check-cuda-build: no lib$lib.so.N in $nvidia" >&2; exit 1; }
    ln -s "$found" "$link/lib$lib.so"
done
cc -E -P "$root/include/cuda.h" \
    | grep -oE '\bCUresult( CUDAAPI)? +cu[A-Za-z0-9_]+ *\(' \
    | sed -E 's/.* (cu[A-Za-z0-9_]+) *\(/void \1(void) {}/' | sort -u >"$link/cuda-stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/cuda-stub.c"

export CUDA_ROOT=$root CUDA_PATH=$root CUDA_HOME=$root CUDA_TOOLKIT_ROOT_DIR=$root
export PATH="$root/bin:$PATH"
export LIBRARY_PATH="$link:$root/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda-$major}
echo "check-cuda-build: $(nvcc --version | grep -o 'release [0-9.]*'), $(grep -c . "$link/cuda-stub.c") driver functions in the libcuda stub, compute capability $CUDA_COMPUTE_CAP, into $CARGO_TARGET_DIR" >&2
start=$SECONDS
cargo build --release --features cuda "$@"
echo "check-cuda-build: the CUDA build compiles and links ($((SECONDS - start)) s)" >&2
