#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs the system packages, fetches
# and converts the test model, builds the daemons, then runs every crate's tests. Idempotent;
# safe to re-run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
scripts/setup-test-model.sh
scripts/setup-test-tools.sh
# The cross-crate tests start the real daemons from target/debug; `cargo test` builds a binary
# only for its own package's tests, so build both first.
cargo build -p morag-hub -p morag-agent --bins
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?
# The Python client against a real hub and agent started from those binaries.
MORAG_BIN_DIR="$PWD/target/debug" target/py-venv/bin/python -m pytest -q clients/python || status=$?
exit "$status"
