#!/usr/bin/env bash
# The GPU check: every heavy step of the agent on the GPU against the CPU, on one machine,
# printed as tables. Meant for a GPU machine with no Rust and no network, with the agent built
# here by scripts/build-cuda.sh and carried:
#
#   scripts/gpu-check.sh [--bin DIR] [--hub PATH] [--models DIR] [--dry-run-on-cpu]
#
#   --bin DIR      the CUDA agent (DIR/morag-agent) and, when not found on the machine, its CUDA
#                  libraries (DIR/cuda-lib/); default target/cuda/release
#   --hub PATH     morag-hub, for the end-to-end rows; default DIR/morag-hub, else
#                  target/release/morag-hub, else target/debug/morag-hub
#   --models DIR   ggml-tiny.en.bin and jfk.wav (scripts/setup-test-model.sh), the speech models
#                  beside them and eval/call-sample.wav (scripts/setup-eval-set.sh); a
#                  CUDA build of ONNX Runtime in DIR/onnxruntime-gpu (`morag-agent model import
#                  onnxruntime-gpu`) for diarization on the GPU; default models
#   --dry-run-on-cpu  run every row on this machine's CPU, to check the script itself where
#                  there is no GPU (the "gpu" rows then say where the work really ran)
#
# Tables:
#  1. jfk.wav (11 s) and a long clip (jfk.wav repeated to 11 minutes: real speech, known words),
#     each transcribed with `--cpu` and on the GPU: word error rate against the words spoken,
#     seconds, real-time factor, and whether the GPU's words match the CPU's within 1 in 100;
#  2. the frame kernels against the CPU reference, and thumbnails on both
#     (`morag-agent gpu --self-test`);
#  3. diarization of a real two-person telephone call with ONNX Runtime's CUDA provider and on
#     the CPU: speakers found, seconds;
#  4. a hub and the agent on this machine: a job end to end (the attempt's device, the agent's
#     health showing the GPU busy: NVML utilisation and memory), then two long jobs at once with
#     max_concurrent_tasks 2 and gpu_memory_limit_gb 4: both on the GPU together, the agent's
#     GPU memory (nvidia-smi, per process) within the limit.
# On a machine without a usable GPU every row says "no GPU: skipped" and why, and the script
# exits 0, so that it runs anywhere (CI does not run it; developers run it here to keep it
# working, with and without --dry-run-on-cpu). Needs python3 (standard library only).
#
# What a run carries (the device machine takes at most 64 MiB per call): the CUDA agent built
# for one architecture (`MORAG_CUDA_ARCHS=90`), zstd -19: about 43 MB; the CUDA libraries are
# the machine's (its Python's nvidia/cu13 wheels). tiny.en's ggml file is 78 MB (q8_0: 44 MB), so
# the models go in a second call to the same warm machine, or the model is made there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/cuda/release"
MODELS="$ROOT/models"
HUB=""
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) BIN="$2"; shift 2 ;;
        --hub) HUB="$2"; shift 2 ;;
        --models) MODELS="$2"; shift 2 ;;
        --dry-run-on-cpu) DRY=1; shift ;;
        *) echo "gpu-check: unknown argument $1" >&2; exit 64 ;;
    esac
done
if [ -z "$HUB" ]; then
    for h in "$BIN/morag-hub" "$ROOT/target/release/morag-hub" "$ROOT/target/debug/morag-hub"; do
        [ -x "$h" ] && { HUB="$h"; break; }
    done
fi
ROWS=("jfk.wav, 11 s" "jfk.wav x60, 11 min")
row() { printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$@"; }
header() {
    echo "| clip | device | seconds | real-time factor | WER | GPU words = CPU words (within 1 %) | speedup | note |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
}
skip_all() {
    header
    for r in "${ROWS[@]}"; do row "$r" "-" "-" "-" "-" "-" "-" "no GPU: skipped ($1)"; done
    echo
    echo "| frames | result |"
    echo "| --- | --- |"
    echo "| kernels against the CPU reference, thumbnails | no GPU: skipped ($1) |"
    echo
    diar_header
    echo "| call-sample.wav, 30 s | - | - | - | no GPU: skipped ($1) |"
    echo
    e2e_header
    echo "| one job through a hub | - | - | no GPU: skipped ($1) |"
    echo "| two long jobs at once | - | - | no GPU: skipped ($1) |"
    exit 0
}
diar_header() {
    echo "| clip | device | speakers (reference 2) | seconds | note |"
    echo "| --- | --- | --- | --- | --- |"
}
e2e_header() {
    echo "| check | device | result | note |"
    echo "| --- | --- | --- | --- |"
}

# Is there a GPU this agent can use?
if [ "$DRY" -eq 0 ] && { ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; }; then
    skip_all "no NVIDIA driver or device (nvidia-smi finds none)"
fi
[ -x "$BIN/morag-agent" ] || skip_all "no agent at $BIN/morag-agent (scripts/build-cuda.sh)"
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
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
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
        if [ "$dev" = gpu ] && [ "$DRY" -eq 1 ]; then
            note="dry run: $(grep -m1 -o 'whisper \(runs on the GPU\|falls back to the CPU\|runs on the CPU\)' "$work/$clip-$dev.log" || echo 'on the CPU')"
        elif [ "$dev" = gpu ] && ! grep -q "whisper runs on the GPU" "$work/$clip-$dev.log"; then
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
gpu_name="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n1 || true)"
echo "(seconds: the whole process command, model load included; ${gpu_name:-no GPU: dry run on the CPU})"
echo

# 2. The frame kernels: the agent's own self-test prints the table.
"$BIN/morag-agent" gpu --self-test --frames 300 --model "$MODELS/ggml-tiny.en.bin" 2>"$work/gpu.log" \
    || echo "(the self-test FAILED: the GPU's frames differ from the CPU's)"
echo

# 3. Diarization with ONNX Runtime's CUDA provider against the CPU's.
diar_header
call="$MODELS/eval/call-sample.wav"
speakers() {
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))["result"]; print(len({s.get("speaker") for s in r["segments"] if s.get("speaker")}))' "$1"
}
if [ ! -s "$call" ] || [ ! -s "$MODELS/segmentation-3.0.onnx" ]; then
    echo "| call-sample.wav, 30 s | - | - | - | skipped: no $call or speech models (scripts/setup-eval-set.sh, scripts/setup-test-model.sh) |"
else
    for dev in cpu gpu; do
        flag=(--cpu); [ "$dev" = gpu ] && flag=()
        start=$(date +%s.%N)
        if "$BIN/morag-agent" process "$call" --model "$MODELS/ggml-tiny.en.bin" --diarization --no-topics \
            "${flag[@]}" --out "$work/call-$dev" > "$work/call-$dev.json" 2> "$work/call-$dev.log"; then
            took=$(python3 -c "print(f'{$(date +%s.%N) - $start:.2f}')")
            note=""
            if [ "$dev" = gpu ]; then
                if grep -q "ONNX Runtime with CUDA loaded" "$work/call-$dev.log"; then
                    note="ONNX Runtime's CUDA provider"
                elif [ ! -s "$MODELS/onnxruntime-gpu/libonnxruntime.so" ]; then
                    note="CPU provider: no $MODELS/onnxruntime-gpu (its CUDA provider is 284 MB, more than one call carries)"
                else
                    note="CPU provider: $(grep -m1 -o "CUDA provider cannot be used.*" "$work/call-$dev.log" | head -c 200)"
                fi
            fi
            echo "| call-sample.wav, 30 s | $dev | $(speakers "$work/call-$dev.json") | $took | $note |"
        else
            echo "| call-sample.wav, 30 s | $dev | - | - | failed: $(tail -n1 "$work/call-$dev.log") |"
        fi
    done
fi
echo

# 4. A hub and the agent on this machine.
e2e_header
if [ -z "$HUB" ]; then
    echo "| one job through a hub | - | - | skipped: no morag-hub (--hub) |"
    exit 0
fi
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
quic=$(port)
http=$(port)
limit_gb=4
"$HUB" serve --data "$work/hub" --quic "127.0.0.1:$quic" --http "127.0.0.1:$http" \
    --advertise "127.0.0.1:$quic" > "$work/hub.log" 2>&1 &
pids+=($!)
for _ in $(seq 120); do "$HUB" healthcheck --data "$work/hub" >/dev/null 2>&1 && break; sleep 0.5; done
# Two jobs at once on one GPU: more than the default policy (one job per GPU) allows.
"$HUB" token create --data "$work/hub" --ttl 10m --max-concurrent 2 2>>"$work/hub.log" | tail -n 1 >"$work/join-token"
MORAG_REMOTE_HEARTBEAT_INTERVAL_SECONDS=1 MORAG_REMOTE_HEALTH_CHECK_INTERVAL_SECONDS=1 \
MORAG_REMOTE_GPU_MEMORY_LIMIT_GB=$limit_gb \
    "$BIN/morag-agent" serve --dir "$work/agent" --join-token-file "$work/join-token" --max-concurrent-tasks 2 \
    --model "$MODELS/ggml-tiny.en.bin" > "$work/agent.log" 2>&1 &
agent_pid=$!
pids+=($agent_pid)
for _ in $(seq 180); do "$BIN/morag-agent" healthcheck --dir "$work/agent" >/dev/null 2>&1 && break; sleep 0.5; done
# The API, and a sampler of the agent's health and its GPU memory (per process) while jobs run.
api() {
    python3 - "$http" "$(cat "$work/hub/api-token")" "$@" <<'PY'
import json, sys, urllib.request
port, token, path = sys.argv[1:4]
req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
print(json.dumps(json.load(urllib.request.urlopen(req, timeout=10))))
PY
}
# The first GPU of the agent's health report: utilisation, memory used, tasks, in use.
AGENT_GPU_PY='
import json, sys
a = json.load(sys.stdin)["agents"][0]
g = (((a.get("health") or {}).get("gpus")) or [{}])[0]
print(g.get("utilization") or 0, g.get("memory_used_bytes") or 0, g.get("running_tasks") or 0, int(bool(g.get("in_use"))))
'
sample() { # until the file $work/stop exists: that, and the agent's own GPU memory (MiB)
    : > "$work/samples"
    while [ ! -e "$work/stop" ]; do
        g=$(api /api/v1/agents 2>/dev/null | python3 -c "$AGENT_GPU_PY" 2>/dev/null || echo "0 0 0 0")
        mine=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null \
            | awk -F', ' -v p="$agent_pid" '$1 == p {print $2}' | head -n1 || true)
        echo "$g ${mine:-0}" >> "$work/samples"
        sleep 0.5
    done
}
maxcol() { awk -v c="$1" 'BEGIN {m = 0} $c > m {m = $c} END {print m}' "$work/samples"; }
job_device() { api "/api/v1/jobs/$1" | python3 -c 'import json, sys; j = json.load(sys.stdin); print(j["state"], (j.get("attempts") or [{}])[-1].get("device"))'; }

rm -f "$work/stop"; sample & sampler=$!
"$HUB" submit "$MODELS/jfk.wav" --type audio --wait --json --url "http://127.0.0.1:$http" \
    --token "$(cat "$work/hub/api-token")" > "$work/job1.json" 2> "$work/submit1.log" || true
touch "$work/stop"; wait "$sampler" || true
id1=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["id"])' "$work/job1.json" 2>/dev/null || echo "")
if [ -n "$id1" ]; then
    read -r state device <<< "$(job_device "$id1")"
    echo "| one job through a hub | $device | $state | health during it: GPU busy up to $(maxcol 1) %, $(( $(maxcol 2) / 1000000 )) MB used, in use $(maxcol 4) |"
else
    echo "| one job through a hub | - | failed | $(tail -n1 "$work/submit1.log") |"
fi
# Two long jobs at once (max_concurrent_tasks 2): both on the GPU together, memory within the limit.
rm -f "$work/stop"; sample & sampler=$!
ids=()
for n in 1 2; do
    "$HUB" submit "$work/long.wav" --type audio --json --url "http://127.0.0.1:$http" \
        --token "$(cat "$work/hub/api-token")" > "$work/long$n.json" 2>> "$work/submit2.log" || true
    ids+=("$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["id"])' "$work/long$n.json" 2>/dev/null || echo none)")
done
states=""
for _ in $(seq 1200); do
    states="$(for i in "${ids[@]}"; do job_device "$i" 2>/dev/null || echo "unknown -"; done | tr '\n' ' ')"
    case "$states" in *queued* | *assigned* | *running* | *unknown*) sleep 0.5 ;; *) break ;; esac
done
touch "$work/stop"; wait "$sampler" || true
# Whether the two attempts ran at the same time (each started before the other finished).
together=$(for i in "${ids[@]}"; do api "/api/v1/jobs/$i"; echo; done | python3 -c '
import json, sys
from datetime import datetime
t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
spans = [(t(a["started_at"]), t(a["finished_at"])) for a in (json.loads(l)["attempts"][-1] for l in sys.stdin if l.strip()) if a.get("started_at") and a.get("finished_at")]
print("at the same time" if len(spans) == 2 and spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1] else "NOT at the same time")' 2>/dev/null || echo "unknown")
mine_mb=$(maxcol 5)
within="yes"; [ "$mine_mb" -le $(( limit_gb * 1000 )) ] || within="NO"
echo "| two long jobs at once | $(echo "$states" | awk '{print $2, $4}') | $(echo "$states" | awk '{print $1, $3}') | $together; GPU tasks at once up to $(maxcol 3); the agent's GPU memory up to $mine_mb MB (limit $limit_gb GB: $within) |"
