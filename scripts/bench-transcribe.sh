#!/usr/bin/env bash
# Transcription speed and accuracy, ours side by side with faster-whisper, in one run.
#
#   scripts/bench-transcribe.sh [--runs N] [--threads N] [--beams 1,5] [--also-full-context]
#
# Prepares, idempotently:
#   models/                      tiny.en as f16 and q8_0 ggml files and the CTranslate2 weights
#                                they come from (scripts/setup-test-model.sh)
#   target/bench-audio/          the clips and their reference texts: jfk.wav (11 s), jfk x6
#                                (66 s), espeak-ng paragraphs (13 s and 40 s) and the tests'
#                                espeak-ng sentence (scripts/make-test-media.sh, 7 s)
#   target/faster-whisper-venv/  faster-whisper from PyPI (pinned below); when it cannot be
#                                made, the bench prints ours alone and says why
# then runs `cargo bench -p morag-agent --bench transcribe -- --compare target/bench-audio`,
# which prints the markdown table recorded in BENCHMARKS.md. Not part of the test run.
#
# On a machine with an NVIDIA GPU and the CUDA toolkit (nvcc), MORAG_BENCH_CUDA=1 builds
# whisper.cpp with CUDA (cargo feature `cuda`) and runs faster-whisper on CUDA too (float16 and
# int8_float16; it needs CUDA 12's cuBLAS and cuDNN 9, installed here from PyPI into the venv).
# Not yet run on a GPU: no GPU machine was available when it was written.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FW_SPEC="faster-whisper==1.2.1"
VENV="$ROOT/target/faster-whisper-venv"
AUDIO="$ROOT/target/bench-audio"
log() { echo "bench-transcribe: $*" >&2; }

scripts/setup-test-model.sh --no-numpy

# Clips with the text spoken in them.
JFK_TEXT="And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
PARA1="The library opens at nine in the morning and closes at six in the evening. Visitors can borrow up to five books at a time. Please return them within three weeks, or ask the staff to renew them online."
PARA2="Our team met on Monday to plan the next release. We agreed to fix the login problem first, because many customers reported it last week. After that, we will improve the search page and update the documentation. The release should be ready by the end of the month, if the tests pass. Remember to write down every decision in the shared notes, so that nobody has to guess later. Thank you all for the careful work."
mkdir -p "$AUDIO"
ff() { ffmpeg -nostdin -hide_banner -loglevel error -y "$@"; }
if [ ! -f "$AUDIO/.complete-v2" ]; then
    cp models/jfk.wav "$AUDIO/jfk.wav"
    echo "$JFK_TEXT" > "$AUDIO/jfk.txt"
    ff -i models/jfk.wav -filter_complex "[0][0][0][0][0][0]concat=n=6:v=0:a=1" \
        -ar 16000 -ac 1 -c:a pcm_s16le "$AUDIO/jfk_x6.wav"
    for _ in 1 2 3 4 5 6; do printf '%s ' "$JFK_TEXT"; done > "$AUDIO/jfk_x6.txt"
    espeak-ng -s 150 -w "$AUDIO/raw.wav" "$PARA1"
    ff -i "$AUDIO/raw.wav" -ar 16000 -ac 1 -c:a pcm_s16le "$AUDIO/espeak_short.wav"
    echo "$PARA1" > "$AUDIO/espeak_short.txt"
    espeak-ng -s 150 -w "$AUDIO/raw.wav" "$PARA1 $PARA2"
    ff -i "$AUDIO/raw.wav" -ar 16000 -ac 1 -c:a pcm_s16le "$AUDIO/espeak_long.wav"
    echo "$PARA1 $PARA2" > "$AUDIO/espeak_long.txt"
    rm -f "$AUDIO/raw.wav"
    scripts/make-test-media.sh "$ROOT/target/test-media"
    cp "$ROOT/target/test-media/speech.wav" "$AUDIO/espeak_test.wav"
    cp "$ROOT/target/test-media/speech.txt" "$AUDIO/espeak_test.txt"
    touch "$AUDIO/.complete-v2"
fi

# faster-whisper in its own virtual environment.
fw_args=()
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import faster_whisper' 2>/dev/null; then
    fw_args=(--fw-python "$VENV/bin/python")
else
    log "creating $VENV with $FW_SPEC"
    if python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet "$FW_SPEC"; then
        fw_args=(--fw-python "$VENV/bin/python")
    else
        log "faster-whisper unavailable (no PyPI?): printing ours alone"
    fi
fi

features=()
if [ "${MORAG_BENCH_CUDA:-0}" = 1 ]; then
    features=(--features cuda)
    export MORAG_FW_DEVICE=cuda
    if [ "${#fw_args[@]}" -gt 0 ]; then
        "$VENV/bin/pip" install --quiet nvidia-cublas-cu12 'nvidia-cudnn-cu12==9.*'
        libs="$("$VENV/bin/python" -c 'import os, nvidia.cublas.lib as b, nvidia.cudnn.lib as d; print(os.path.dirname(b.__file__) + ":" + os.path.dirname(d.__file__))')"
        export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
fi
exec cargo bench -p morag-agent "${features[@]}" --bench transcribe -- \
    --compare "$AUDIO" "${fw_args[@]}" "$@"
