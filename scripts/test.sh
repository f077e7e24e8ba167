#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs the system packages, fetches
# and converts the test model, then runs every crate's tests. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
scripts/setup-test-model.sh
cargo test --workspace --no-fail-fast "$@"
