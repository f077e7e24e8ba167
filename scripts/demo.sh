#!/usr/bin/env bash
# The main job on embedded defaults: two local peers with freshly generated certificates open a
# mutual-TLS QUIC session, exchange messages and a verified file. No server to set up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
cargo run --quiet -p morag-examples --bin demo "$@"
