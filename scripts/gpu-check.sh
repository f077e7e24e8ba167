#!/usr/bin/env bash
# The GPU check: Whisper on the GPU against the same model on the CPU, on one machine, printed
# as one table. Meant for a GPU machine with no Rust and no network, with the agent built here
# by scripts/build-cuda.sh and carried:
#
#   scripts/gpu-check.sh [--bin DIR] [--models DIR]
#
#   --bin DIR      the CUDA agent (DIR/morag-agent) and, when not found on the machine, its CUDA
#                  libraries (DIR/cuda-lib/); default target/cuda/release
#   --models DIR   ggml-tiny.en.bin and jfk.wav (scripts/setup-test-model.sh); default models
#
# Rows: jfk.wav (11 s) and a long clip (jfk.wav repeated to 11 minutes: real speech, known
# words), each transcribed with `--cpu` and on the GPU; word error rate against the words
# spoken, seconds, real-time factor, and whether the GPU's words match the CPU's within 1 word
# in 100. On a machine without a usable GPU every row says "no GPU: skipped" and why, and the
# script exits 0, so that it runs anywhere (CI does not run it; developers run it here to keep it
# working). Needs python3 (standard library only).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/cuda/release"
MODELS="$ROOT/models"
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) BIN="$2"; shift 2 ;;
        --models) MODELS="$2"; shift 2 ;;
        *) echo "gpu-check: unknown argument $1" >&2; exit 64 ;;
    esac
done
ROWS=("jfk.wav, 11 s" "jfk.wav x60, 11 min")
row() { printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$@"; }
header() {
    echo "| clip | device | seconds | real-time factor | WER | GPU words = CPU words (within 1 %) | speedup | note |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
}
skip_all() {
    header
    for r in "${ROWS[@]}"; do row "$r" "-" "-" "-" "-" "-" "-" "no GPU: skipped ($1)"; done
    exit 0
}

# Is there a GPU this agent can use?
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    skip_all "no NVIDIA driver or device (nvidia-smi finds none)"
fi
[ -x "$BIN/morag-agent" ] || skip_all "no CUDA agent at $BIN/morag-agent (scripts/build-cuda.sh)"
for f in ggml-tiny.en.bin jfk.wav; do
    [ -s "$MODELS/$f" ] || skip_all "no $MODELS/$f (scripts/setup-test-model.sh)"
done
# The CUDA runtime libraries: carried beside the agent, or the machine's Python wheels.
libs="$BIN/cuda-lib"
if [ ! -e "$libs/libcublasLt.so.13" ]; then
    libs="$(python3 -c 'import os, nvidia; d = [os.path.join(p, s, "lib") for p in nvidia.__path__ for s in ("cu13", "cublas", "cuda_runtime", "cuda_nvrtc")]; print(":".join(x for x in d if os.path.isdir(x)))' 2>/dev/null || true)"
fi
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ! "$BIN/morag-agent" --version >/dev/null 2>&1; then
    skip_all "the agent does not start here: $("$BIN/morag-agent" --version 2>&1 | head -n1)"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
JFK_TEXT="And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
# The long clip: jfk.wav sixty times (16 kHz mono PCM, as the file is).
python3 - "$MODELS/jfk.wav" "$work/long.wav" <<'PY'
import sys, wave
src = wave.open(sys.argv[1])
params, frames = src.getparams(), src.readframes(src.getnframes())
out = wave.open(sys.argv[2], "wb")
out.setparams(params)
out.writeframes(frames * 60)
PY
# Word edits between two texts (Whisper's notes dropped, lower case, punctuation dropped).
# MODE wer REF_TXT RESULT_JSON -> "wer hyp_words"; MODE same A_JSON B_JSON -> yes / no (...)
compare() {
    python3 - "$@" <<'PY'
import json, re, sys
mode, x, y = sys.argv[1:4]
norm = lambda t: re.sub(r"[^a-z0-9' ]", " ", re.sub(r"\[[^\]]{0,40}\]|\([^)]{0,40}\)", " ", t.lower())).split()
text = lambda p: json.load(open(p))["result"]["transcript"]
a = norm(open(x).read() if mode == "wer" else text(x))
b = norm(text(y))
prev = list(range(len(b) + 1))
for i, u in enumerate(a, 1):
    cur = [i]
    for j, v in enumerate(b, 1):
        cur.append(min(prev[j - 1] + (u != v), prev[j] + 1, cur[j - 1] + 1))
    prev = cur
if mode == "wer":
    print(f"{prev[-1] / max(len(a), 1):.4f} {len(b)}")
else:
    print("yes" if prev[-1] * 100 <= max(len(a), 1) else f"no ({prev[-1]} of {len(a)} words differ)")
PY
}

header
for clip in jfk long; do
    case "$clip" in
        jfk) wav="$MODELS/jfk.wav"; name="${ROWS[0]}"; echo "$JFK_TEXT" > "$work/ref.txt"; secs=11.0 ;;
        long) wav="$work/long.wav"; name="${ROWS[1]}"
              for _ in $(seq 60); do printf '%s ' "$JFK_TEXT"; done > "$work/ref.txt"; secs=660.0 ;;
    esac
    declare -A took=()
    for dev in cpu gpu; do
        flag=(); [ "$dev" = cpu ] && flag=(--cpu)
        start=$(date +%s.%N)
        if ! "$BIN/morag-agent" process "$wav" --model "$MODELS/ggml-tiny.en.bin" \
            --no-diarization --no-topics "${flag[@]}" --out "$work/$clip-$dev" \
            > "$work/$clip-$dev.json" 2> "$work/$clip-$dev.log"; then
            row "$name" "$dev" "-" "-" "-" "-" "-" "failed: $(tail -n1 "$work/$clip-$dev.log")"
            continue
        fi
        end=$(date +%s.%N)
        took[$dev]=$(python3 -c "print(f'{$end - $start:.2f}')")
        read -r w _ <<< "$(compare wer "$work/ref.txt" "$work/$clip-$dev.json")"
        note=""
        if [ "$dev" = gpu ] && ! grep -q "whisper runs on the GPU" "$work/$clip-$dev.log"; then
            note="NOT on the GPU: $(grep -m1 'falls back' "$work/$clip-$dev.log" || echo 'see the log')"
        fi
        match="-"; speedup="-"
        if [ "$dev" = gpu ] && [ -s "$work/$clip-cpu.json" ]; then
            match="$(compare same "$work/$clip-cpu.json" "$work/$clip-gpu.json")"
            speedup="$(python3 -c "print(f'{${took[cpu]} / ${took[gpu]}:.1f}x')")"
        fi
        row "$name" "$dev" "${took[$dev]}" "$(python3 -c "print(f'{${took[$dev]} / $secs:.4f}')")" "$w" "$match" "$speedup" "$note"
    done
done
echo
echo "(seconds: the whole process command, model load included; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n1))"
