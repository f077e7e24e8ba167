#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs the system packages, fetches
# and converts the test model, builds the daemons, then runs every crate's tests. Idempotent;
# safe to re-run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
scripts/setup-test-model.sh
scripts/setup-eval-set.sh
scripts/setup-test-tools.sh
# The cross-crate tests start the real daemons from target/debug; `cargo test` builds a binary
# only for its own package's tests, so build both first.
cargo build -p morag-hub -p morag-agent --bins
# The store's tests run on PostgreSQL too: one throwaway server from Debian's binaries for the
# whole run (tests that restart a server start their own), stopped at the end.
pg_dir="$PWD/target/pg-test/shared"
if MORAG_TEST_PG_URL=$(scripts/test-postgres.sh start "$pg_dir" --fast); then
  export MORAG_TEST_PG_URL
  trap 'scripts/test-postgres.sh stop "$pg_dir"' EXIT
else
  echo "test.sh: PostgreSQL did not start; its tests will skip (or fail under MORAG_REQUIRE_POSTGRES=1)" >&2
fi
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?
# The Python client against a real hub and agent started from those binaries.
MORAG_BIN_DIR="$PWD/target/debug" target/py-venv/bin/python -m pytest -q clients/python || status=$?
exit "$status"
