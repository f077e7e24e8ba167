#!/usr/bin/env bash
# Debian packages for the hub and the agent (cargo-deb): target/debian/morag-{hub,agent}_*.deb.
# Installs cargo-deb from crates.io when missing; builds the release binaries.
#   scripts/package-deb.sh            both packages
#   scripts/package-deb.sh agent      one of them
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb
which=("${@:-hub agent}")
for w in ${which[*]}; do
  case "$w" in
    # Stripped: the release profile keeps line tables for the benchmarks' profiles.
    hub | agent) cargo deb -p "morag-$w" --strip ;;
    *) echo "package-deb: unknown package $w (hub or agent)" >&2; exit 2 ;;
  esac
done
ls -l target/debian/*.deb
