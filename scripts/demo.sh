#!/usr/bin/env bash
# The main job on embedded defaults: a hub and an enrolled agent on this machine, the real
# recording models/jfk.wav submitted through the hub's HTTP API with a progress bar, and the
# transcript printed with where the artifacts are. No server to set up: the hub keeps its
# state in an embedded database under .work/demo/.
#
#   scripts/demo.sh            # everything, from a fresh Debian 12 machine
#   KEEP=1 scripts/demo.sh     # leave the hub and agent running afterwards
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
scripts/setup-test-model.sh --no-numpy
cargo build --quiet -p morag-hub -p morag-agent
bin=target/debug

work=.work/demo
rm -rf "$work"
mkdir -p "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
quic="127.0.0.1:${DEMO_QUIC_PORT:-$(free_port)}"
http="127.0.0.1:${DEMO_HTTP_PORT:-$(free_port)}"

pids=()
cleanup() {
  if [ -z "${KEEP:-}" ]; then
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
  fi
}
trap cleanup EXIT

echo "== 1. the hub (data in $work/hub, log $work/hub.log)"
"$bin/morag-hub" serve --data "$work/hub" --quic "$quic" --http "$http" >"$work/hub.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://$http/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
sed -n '1,7p' "$work/hub.log" | grep -v INFO || true

echo "== 2. a join token, and an agent enrolled with it (its key never leaves $work/agent)"
"$bin/morag-hub" token create --data "$work/hub" 2>/dev/null | tail -n 1 >"$work/join-token"
echo "token: $(cat "$work/join-token")"
"$bin/morag-agent" enroll --token-file "$work/join-token" --dir "$work/agent" --id demo-agent

echo "== 3. the agent serving (log $work/agent.log)"
"$bin/morag-agent" serve --dir "$work/agent" --model models/ggml-tiny.en.bin >"$work/agent.log" 2>&1 &
pids+=($!)

echo "== 4. submit models/jfk.wav and wait for the transcript"
"$bin/morag-hub" submit models/jfk.wav --type audio --wait --data "$work/hub" --out "$work/results"

echo
echo "== the agents the hub knows"
"$bin/morag-hub" workers --data "$work/hub"
if [ -n "${KEEP:-}" ]; then
  echo "hub at http://$http (token in $work/hub/api-token); stop with: kill ${pids[*]}"
fi
