#!/usr/bin/env bash
# Debian packages for the hub and the agent (cargo-deb): target/debian/morag-{hub,agent}_*.deb.
# Installs cargo-deb from crates.io when missing; builds the release binaries.
#   scripts/package-deb.sh              both packages
#   scripts/package-deb.sh agent        one of them
#   scripts/package-deb.sh agent-cuda   morag-agent-cuda, from the binary scripts/build-cuda.sh
#                                       made (run it first: the CUDA build is long)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb
which=("${@:-hub agent}")
for w in ${which[*]}; do
  case "$w" in
    # Stripped: the release profile keeps line tables for the benchmarks' profiles.
    hub | agent) cargo deb -p "morag-$w" --strip ;;
    agent-cuda)
      [ -x target/cuda/release/morag-agent ] \
        || { echo "package-deb: no target/cuda/release/morag-agent: run scripts/build-cuda.sh" >&2; exit 2; }
      stage=target/cuda/deb
      rm -rf "$stage" && mkdir -p "$stage"
      strip -o "$stage/morag-agent" target/cuda/release/morag-agent
      cp -a target/cuda/release/cuda-lib "$stage/"
      # The CUDA libraries are the package's own (not in any Debian package): no shlibs lookup.
      cargo deb -p morag-agent --variant cuda --no-build --no-strip
      ;;
    *) echo "package-deb: unknown package $w (hub, agent or agent-cuda)" >&2; exit 2 ;;
  esac
done
ls -l target/debian/*.deb
