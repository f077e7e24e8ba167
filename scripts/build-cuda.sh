#!/usr/bin/env bash
# Build the agent with CUDA (cargo feature `cuda`: whisper.cpp's CUDA backend) in release, on a
# machine with or without a GPU, with the toolkit scripts/setup-cuda.sh installs. Output:
#
#   target/cuda/release/morag-agent             the agent (its own target directory, so the
#                                               CPU build's cache stays as it is)
#   target/cuda/release/cuda-lib/               the CUDA runtime libraries it needs at run time
#                                               (libcudart, libcublas, libcublasLt from the
#                                               wheels; libnvrtc for the frame kernels; libcurand
#                                               for ONNX Runtime's CUDA provider), which
#                                               the package installs in /usr/lib/morag-agent/cuda
#
# The binary finds those libraries through its run path ($ORIGIN/cuda-lib beside it, and
# $ORIGIN/../lib/morag-agent/cuda as installed). It does not name the driver library: whisper.cpp
# is built with GGML_CUDA_NO_VMM (only the CUDA runtime's API, which opens libcuda.so.1 itself
# when it starts), so on a machine without an NVIDIA driver the agent starts, logs why the GPU
# is not used, and transcribes on the CPU.
#
# GPU architectures: MORAG_CUDA_ARCHS (CMake's CUDA_ARCHITECTURES syntax), by default machine
# code for Turing, Ampere (A100; RTX 30), Ada (L4, L40; RTX 40) and Hopper (H100, H200) and PTX of
# Hopper's, which the driver compiles for newer GPUs (Blackwell) on first use. Each real
# architecture costs about 17 minutes of ggml's CUDA kernels on 2 cores;
# `MORAG_CUDA_ARCHS=90 scripts/build-cuda.sh` builds Hopper alone (BENCHMARKS.md has the times).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DIR="${MORAG_CUDA_DIR:-$ROOT/.work/cuda}"
C="$(scripts/setup-cuda.sh)"
ARCHS="${MORAG_CUDA_ARCHS:-75-real;80-real;86-real;89-real;90-real;90-virtual}"
export PATH="$C/bin:$PATH"
export CUDAToolkit_ROOT="$C"
export CMAKE_CUDA_ARCHITECTURES="$ARCHS"
# The agent reads it at compile time: GPUs older than the oldest are reported as not used.
export MORAG_CUDA_ARCHS="$ARCHS"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
export GGML_CUDA_NO_VMM=ON
export GGML_NATIVE=OFF
export CARGO_TARGET_DIR="$ROOT/target/cuda"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$DIR/link -L native=$C/lib \
-C link-arg=-Wl,-rpath,\$ORIGIN/cuda-lib:\$ORIGIN/../lib/morag-agent/cuda"
echo "build-cuda: architectures $ARCHS" >&2
started=$(date +%s)
cargo build --release -p morag-agent --features cuda "$@"
echo "build-cuda: built in $(( $(date +%s) - started )) s" >&2

out="$CARGO_TARGET_DIR/release"
mkdir -p "$out/cuda-lib"
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnvrtc.so.13 libnvrtc-builtins.so.13.5 \
    libcurand.so.10; do
    cp -f "$C/lib/$lib" "$out/cuda-lib/"
done
# The driver must come from the machine, never from us.
if readelf -d "$out/morag-agent" | grep -q 'NEEDED.*libcuda\.so'; then
    echo "build-cuda: the binary names libcuda.so.1; it would not start without a driver" >&2
    exit 1
fi
ls -l "$out/morag-agent" >&2
du -sh "$out/cuda-lib" >&2
