#!/usr/bin/env bash
# A CUDA 13 toolkit from NVIDIA's PyPI wheels (the only CUDA source these machines reach), for
# building the agent with `--features cuda` on a machine without a GPU (scripts/build-cuda.sh).
# Idempotent. Installs into $MORAG_CUDA_DIR (default .work/cuda):
#
#   venv/                     nvcc, cicc, ptxas, the CUDA runtime, cuBLAS, cuRAND (for ONNX
#                             Runtime's CUDA provider) and CCCL (thrust/cub)
#   link/libcuda.so           an empty stand-in for the driver library with its soname
#                             (libcuda.so.1), for the link step only: whisper-rs-sys asks the
#                             linker for -lcuda, and with GGML_CUDA_NO_VMM nothing in the agent
#                             calls the driver directly, so the binary does not name it (the
#                             CUDA runtime opens the real driver when it starts, if there is one)
#   link/libculibos.a         an empty archive (whisper-rs-sys asks for it; only static cuBLAS
#                             needs it)
#
# Why CUDA 13 from PyPI rather than Debian's 11.8: the wheels hold a current nvcc (Hopper and
# Blackwell code, faster kernels), they need no change to apt's sources, and the same wheels give
# the runtime libraries the package ships. The cost: CUDA 13 runs on NVIDIA drivers >= 580; an
# older driver makes the agent fall back to the CPU with a log line saying so (README, GPU).
#
# Prints the toolkit root (the wheels' nvidia/cu13 directory) on stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${MORAG_CUDA_DIR:-$ROOT/.work/cuda}"
log() { echo "setup-cuda: $*" >&2; }
PINS=(
    nvidia-cuda-nvcc==13.5.37
    nvidia-cuda-runtime==13.5.37
    nvidia-cuda-crt==13.5.37
    nvidia-nvvm==13.5.37
    nvidia-cublas==13.10.0.20
    nvidia-curand==10.4.5.25
    nvidia-cuda-cccl==13.3.5.0.6
)
mkdir -p "$DIR"
if [ ! -x "$DIR/venv/bin/python" ]; then
    python3 -m venv "$DIR/venv"
fi
stamp="$DIR/venv/.pins"
if [ "$(cat "$stamp" 2>/dev/null)" != "${PINS[*]}" ]; then
    log "installing ${PINS[*]} (about 1 GB)"
    "$DIR/venv/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}" >&2
    echo "${PINS[*]}" > "$stamp"
fi
C="$("$DIR/venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
[ -x "$C/bin/nvcc" ] || { log "no nvcc under $C"; exit 1; }
# The wheels ship only versioned libraries; the linker looks for the plain names.
for lib in cudart cublas cublasLt; do
    real="$(ls "$C"/lib/lib$lib.so.[0-9]* 2>/dev/null | sort | head -n1)"
    [ -n "$real" ] || { log "no lib$lib.so.* under $C/lib"; exit 1; }
    ln -sf "$(basename "$real")" "$C/lib/lib$lib.so"
done
mkdir -p "$DIR/link"
if [ ! -s "$DIR/link/libcuda.so" ]; then
    echo 'int morag_no_driver_here;' | gcc -shared -fPIC -x c - -o "$DIR/link/libcuda.so" \
        -Wl,-soname,libcuda.so.1
fi
[ -f "$DIR/link/libculibos.a" ] || ar rcs "$DIR/link/libculibos.a"
log "toolkit at $C ($("$C/bin/nvcc" --version | tail -n1))"
echo "$C"
