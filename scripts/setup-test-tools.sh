#!/usr/bin/env bash
# What the dashboard's browser test and the Python client's tests run with, installed from the
# registries (idempotent: nothing is done when it is already in place):
#   tests/browser/node_modules   playwright-core, pinned by tests/browser/package-lock.json
#   target/py-venv               a venv with clients/python installed (editable) and pytest
# Chromium itself is Debian's (scripts/install-deps.sh); playwright never downloads a browser.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

stamp_ok() { # stamp file, inputs...: the stamp holds the inputs' hash
  local want
  want=$(cat "${@:2}" | sha256sum | cut -d' ' -f1)
  [ -f "$1" ] && [ "$(cat "$1")" = "$want" ]
}
stamp_write() {
  cat "${@:2}" | sha256sum | cut -d' ' -f1 >"$1"
}

browser=tests/browser
if ! stamp_ok "$browser/node_modules/.morag-stamp" "$browser/package-lock.json"; then
  echo "setup-test-tools: npm ci in $browser"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix "$browser" --no-audit --no-fund
  stamp_write "$browser/node_modules/.morag-stamp" "$browser/package-lock.json"
fi

venv=target/py-venv
if ! stamp_ok "$venv/.morag-stamp" clients/python/pyproject.toml; then
  echo "setup-test-tools: Python venv $venv with clients/python[test]"
  rm -rf "$venv"
  mkdir -p target
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -e "clients/python[test]"
  stamp_write "$venv/.morag-stamp" clients/python/pyproject.toml
fi
echo "setup-test-tools: browser test and Python client tools ready"
