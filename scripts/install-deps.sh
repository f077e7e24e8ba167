#!/usr/bin/env bash
# Install the system packages the workspace builds and tests with (Debian 12). Idempotent:
# does nothing when everything is already installed.
set -euo pipefail

packages=(
  g++ cmake pkg-config libclang1-14 libclang-common-14-dev
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev
  libavfilter-dev libavdevice-dev ffmpeg espeak-ng sox unzip
  # The dashboard's browser test (tests/browser): Debian's Chromium, driven by playwright-core.
  chromium
  # The container images' test (scripts/build-images.sh): podman and a debootstrap base.
  podman debootstrap
  # Several hubs on one database: the PostgreSQL tests start their own server from these
  # binaries (scripts/test-postgres.sh), the main cluster the package makes is not used.
  postgresql
)
# Node.js and npm for the browser test, and venv for the Python client's tests: Debian's
# packages unless the machine already has its own.
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || packages+=(python3-venv)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all system packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
