#!/usr/bin/env bash
# Build the hub and agent images offline, and with --check prove them here.
#
#   scripts/build-images.sh           build localhost/morag-hub:latest and localhost/morag-agent:latest
#   scripts/build-images.sh --check   build, then check both images (below)
#   scripts/build-images.sh --cuda    also localhost/morag-agent-cuda:latest (target agent-cuda)
#                                     from the binary scripts/build-cuda.sh made; with --check,
#                                     the CUDA agent runs in its image on this machine (no GPU,
#                                     no driver): it starts, logs why Whisper is not on a GPU,
#                                     and transcribes jfk.wav on the CPU
#
# No registry is needed: the Debian 12 base comes from debootstrap and Debian's mirror (the one
# apt uses here), the build stage's Rust toolchain is this machine's, copied into a local
# builder image; then packaging/container/Containerfile is built with `podman build --isolation
# chroot` for both targets. Needs root, podman and debootstrap (installed when missing).
#
# The check cannot use `podman run` (refused on these machines), so it mounts each image and
# runs its binaries with chroot as the image's user: both start (--version) and every shared
# library resolves; the agent transcribes models/jfk.wav inside its image; then the compose
# path: the hub serves from its image, answers its health check, makes a join token, the agent
# enrolls with it on first start, reports healthy, transcribes a job submitted through the hub,
# and both stop on SIGTERM with status 0.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

check=0
cuda=0
for arg in "$@"; do
  case "$arg" in
    --check) check=1 ;;
    --cuda) cuda=1 ;;
    *) echo "build-images: unknown argument $arg (--check, --cuda)" >&2; exit 2 ;;
  esac
done
if [ "$cuda" -eq 1 ] && [ ! -x target/cuda/release/morag-agent ]; then
  echo "build-images: no target/cuda/release/morag-agent: run scripts/build-cuda.sh first" >&2
  exit 2
fi
[ "$(id -u)" -eq 0 ] || { echo "build-images: needs root (podman builds and chroot checks)" >&2; exit 77; }

need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  echo "build-images: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

BASE=localhost/morag-debian:bookworm
BUILDER=localhost/morag-rust:bookworm
HUB=localhost/morag-hub:latest
AGENT=localhost/morag-agent:latest
AGENT_CUDA=localhost/morag-agent-cuda:latest
log() { echo "build-images: $*"; }

# The mirror apt uses here (deb822 or one-line sources).
mirror=$(grep -hoE '^URIs: *\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
[ -n "$mirror" ] || mirror=$(grep -hoE '^deb +\S+' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -1 || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

# 1. The Debian 12 base: debootstrap (minbase), with the security and update suites.
if ! podman image exists "$BASE"; then
  log "debootstrap bookworm from $mirror"
  root=$(mktemp -d /var/tmp/morag-rootfs.XXXXXX)
  debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
  security=${mirror%/debian}/debian-security
  cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | podman import --quiet - "$BASE" >/dev/null
  rm -rf "$root"
fi

# 2. The builder: the base with this machine's Rust toolchain (what `rust:1-bookworm` would be)
# and this machine's certificate authorities, so cargo reaches crates.io through whatever TLS
# proxy this machine trusts.
sysroot=$(rustc --print sysroot)
cas=/etc/ssl/certs/ca-certificates.crt
stamp="$(rustc --version | awk '{print $2}')-$(sha256sum "$cas" | cut -c1-12)"
if [ "$(podman image inspect --format '{{ index .Config.Labels "morag.builder" }}' "$BUILDER" 2>/dev/null || true)" != "$stamp" ]; then
  log "builder image with $(rustc --version) from $sysroot"
  podman build --isolation chroot --format docker -q -t "$BUILDER" \
    --volume "$sysroot:/opt/host-rust:ro" --volume "$cas:/opt/host-ca.crt:ro" -f - . <<EOF >/dev/null
FROM $BASE
RUN cp -a /opt/host-rust /usr/local/rust && rm -rf /usr/local/rust/share/doc \\
 && install -D -m 0644 /opt/host-ca.crt /usr/local/share/morag-build/ca.crt
ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    CARGO_HOME=/usr/local/cargo \\
    CARGO_HTTP_CAINFO=/usr/local/share/morag-build/ca.crt
LABEL morag.builder=$stamp
EOF
fi

# 3. The two images (the build stage is shared: the second build takes it from the cache).
for target in hub agent; do
  tag=$HUB
  [ "$target" = agent ] && tag=$AGENT
  log "building $tag"
  started=$(date +%s)
  podman build --isolation chroot --format docker --layers \
    --build-arg "BUILDER=$BUILDER" --build-arg "RUNTIME=$BASE" \
    -f packaging/container/Containerfile --target "$target" -t "$tag" . \
    >"target/images-$target.log" 2>&1 || { tail -40 "target/images-$target.log"; exit 1; }
  log "$tag built in $(( $(date +%s) - started )) s, $(podman image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
done
if [ "$cuda" -eq 1 ]; then
  # The second build context: the stripped CUDA binary and its libraries.
  stage=target/cuda/image
  rm -rf "$stage" && mkdir -p "$stage"
  strip -o "$stage/morag-agent" target/cuda/release/morag-agent
  cp -a target/cuda/release/cuda-lib "$stage/"
  log "building $AGENT_CUDA"
  started=$(date +%s)
  podman build --isolation chroot --format docker --layers \
    --build-arg "BUILDER=$BUILDER" --build-arg "RUNTIME=$BASE" --build-context "cuda=$stage" \
    -f packaging/container/Containerfile --target agent-cuda -t "$AGENT_CUDA" . \
    >"target/images-agent-cuda.log" 2>&1 || { tail -40 "target/images-agent-cuda.log"; exit 1; }
  log "$AGENT_CUDA built in $(( $(date +%s) - started )) s, $(podman image inspect --format '{{.Size}}' "$AGENT_CUDA" | awk '{printf "%.0f MB", $1/1e6}')"
fi
[ "$check" -eq 1 ] || exit 0

# ---- the checks -------------------------------------------------------------------------------
work=$(mktemp -d /var/tmp/morag-image-check.XXXXXX)
mounts=()
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
  podman image unmount "$HUB" "$AGENT" >/dev/null 2>&1 || true
  [ "$cuda" -eq 0 ] || podman image unmount "$AGENT_CUDA" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "build-images: CHECK FAILED: $*" >&2; exit 1; }
bind() { # host-path image-mount path-inside
  mount --bind "$1" "$2$3"
  mounts+=("$2$3")
}
hubfs=$(podman image mount "$HUB")
agentfs=$(podman image mount "$AGENT")

for spec in "$HUB|morag-hub|$hubfs" "$AGENT|morag-agent|$agentfs"; do
  IFS='|' read -r image bin fs <<<"$spec"
  # The user, the health check and the entry point the image declares.
  user=$(podman image inspect --format '{{.Config.User}}' "$image")
  [ "$user" = morag ] || fail "$image runs as '$user', not morag"
  podman image inspect --format '{{json .Config.Healthcheck}}' "$image" | grep -q healthcheck \
    || fail "$image has no health check"
  out=$(chroot --userspec=10001:10001 "$fs" "/usr/bin/$bin" --version) || fail "$bin --version in its image"
  log "$image: $out, user $user"
  missing=$(chroot "$fs" ldd "/usr/bin/$bin" | grep 'not found' || true)
  [ -z "$missing" ] || fail "$bin in its image lacks: $missing"
  for fsdir in /proc /dev /sys; do bind "$fsdir" "$fs" "$fsdir"; done
  bind "$work" "$fs" /tmp
done

# The agent transcribes jfk.wav inside its image, as its user.
mkdir -p "$work/models" "$work/out"
cp models/ggml-tiny.en.bin models/jfk.wav "$work/models/"
chmod -R a+rwX "$work"
bind "$work/models" "$agentfs" /var/lib/morag-agent/models
chroot --userspec=10001:10001 "$agentfs" /usr/bin/morag-agent process /var/lib/morag-agent/models/jfk.wav \
  --model /var/lib/morag-agent/models/ggml-tiny.en.bin --out /tmp/out --summary >"$work/process.txt" 2>"$work/process.err" \
  || { cat "$work/process.err"; fail "the agent could not transcribe jfk.wav in its image"; }
grep -qi "country" "$work/out/jfk_transcript.txt" || fail "transcript: $(cat "$work/out/jfk_transcript.txt")"
log "agent image transcribed jfk.wav: $(cat "$work/out/jfk_transcript.txt")"

# The CUDA agent on a machine without a GPU or driver: it starts, every library resolves (the
# driver's excepted: it is opened at run time, and not named), it says in one line why Whisper
# is on the CPU, and transcribes.
if [ "$cuda" -eq 1 ]; then
  cudafs=$(podman image mount "$AGENT_CUDA")
  # /proc first: the loader finds $ORIGIN (the run path to the CUDA libraries) through
  # /proc/self/exe, as it does in a container.
  for fsdir in /proc /dev /sys; do bind "$fsdir" "$cudafs" "$fsdir"; done
  out=$(chroot --userspec=10001:10001 "$cudafs" /usr/bin/morag-agent --version) || fail "CUDA agent --version in its image"
  missing=$(chroot "$cudafs" ldd /usr/bin/morag-agent | grep 'not found' || true)
  [ -z "$missing" ] || fail "the CUDA agent in its image lacks: $missing"
  chroot "$cudafs" ldd /usr/bin/morag-agent | grep -Eq 'libcudart.so.13 => /usr/(bin/\.\./)?lib/morag-agent/cuda/' \
    || fail "the CUDA agent does not find its CUDA runtime in /usr/lib/morag-agent/cuda"
  if chroot "$cudafs" ldd /usr/bin/morag-agent | grep -q 'libcuda\.so'; then fail "the CUDA agent names the driver library"; fi
  bind "$work" "$cudafs" /tmp
  bind "$work/models" "$cudafs" /var/lib/morag-agent/models
  mkdir -p "$work/out-cpu" "$work/out-cuda" && chmod a+rwX "$work/out-cpu" "$work/out-cuda"
  for image in cpu cuda; do
    fs=$agentfs
    [ "$image" = cuda ] && fs=$cudafs
    started=$(date +%s%N)
    chroot --userspec=10001:10001 "$fs" /usr/bin/morag-agent process /var/lib/morag-agent/models/jfk.wav \
      --model /var/lib/morag-agent/models/ggml-tiny.en.bin --out "/tmp/out-$image" --summary \
      >"$work/process-$image.txt" 2>"$work/process-$image.err" \
      || { cat "$work/process-$image.err"; fail "the $image agent could not transcribe jfk.wav in its image"; }
    log "$image agent image: jfk.wav in $(( ($(date +%s%N) - started) / 1000000 )) ms from start to result"
  done
  grep -q "whisper falls back to the CPU" "$work/process-cuda.err" \
    || { cat "$work/process-cuda.err"; fail "the CUDA agent did not say why it is on the CPU"; }
  grep -qi country "$work/out-cuda/jfk_transcript.txt" || fail "CUDA agent transcript: $(cat "$work/out-cuda/jfk_transcript.txt")"
  log "CUDA agent image ($out), no driver here: $(grep -m1 'falls back' "$work/process-cuda.err" | sed 's/\x1b\[[0-9;]*m//g')"
fi

# The compose path, with chroot standing in for the container runtime.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
quic=$(port)
http=$(port)
# (the runtime makes a volume's mount point inside another volume; here it is made by hand)
mkdir -p "$work/hub-data" "$work/agent-data/models" "$work/join"
chown 10001:10001 "$work/hub-data" "$work/agent-data" "$work/join"
bind "$work/hub-data" "$hubfs" /var/lib/morag-hub
bind "$work/join" "$hubfs" /var/lib/morag-join
bind "$work/agent-data" "$agentfs" /var/lib/morag-agent
bind "$work/join" "$agentfs" /var/lib/morag-join
bind "$work/models" "$agentfs" /var/lib/morag-agent/models
# As the runtime would start a command: the image's user, a clean environment, its WORKDIR.
in_image() { # rootfs workdir VAR=value... -- command...
  local fs=$1 wd=$2
  shift 2
  local vars=()
  while [ "$1" != -- ]; do vars+=("$1"); shift; done
  shift
  chroot --userspec=10001:10001 "$fs" env -i PATH=/usr/bin:/bin HOME=/nonexistent "${vars[@]}" \
    /bin/sh -c 'cd "$0" && exec "$@"' "$wd" "$@"
}
in_hub() { in_image "$hubfs" /var/lib/morag-hub MORAG_HUB_DATA=/var/lib/morag-hub \
  MORAG_HUB_QUIC="127.0.0.1:$quic" MORAG_HUB_HTTP="127.0.0.1:$http" MORAG_HUB_ADVERTISE="127.0.0.1:$quic" -- "$@"; }
in_agent() { in_image "$agentfs" /var/lib/morag-agent MORAG_REMOTE_JOIN_TOKEN_FILE=/var/lib/morag-join/token \
  MORAG_REMOTE_WORKER_ID=image-agent MORAG_REMOTE_WHISPER_MODEL_SIZE=tiny.en -- "$@"; }
until_ok() { # seconds, what, command...
  local end=$(( $(date +%s) + $1 )) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || fail "timed out waiting for $what"
    sleep 0.5
  done
}

(in_hub /usr/bin/morag-hub serve >"$work/hub.log" 2>&1) &
pids+=($!)
hub_pid=$!
until_ok 60 "the hub's health check" in_hub /usr/bin/morag-hub healthcheck
log "hub image: $(in_hub /usr/bin/morag-hub healthcheck)"
in_hub /bin/sh -c 'morag-hub token create --data /var/lib/morag-hub --ttl 10m | tail -n 1 > /var/lib/morag-join/token' 2>>"$work/hub.log"
[ -s "$work/join/token" ] || fail "no join token written"

(in_agent /usr/bin/morag-agent serve --dir /var/lib/morag-agent >"$work/agent.log" 2>&1) &
pids+=($!)
agent_pid=$!
until_ok 90 "the agent's health check" in_agent /usr/bin/morag-agent healthcheck --dir /var/lib/morag-agent
log "agent image: $(in_agent /usr/bin/morag-agent healthcheck --dir /var/lib/morag-agent)"
[ -s "$work/agent-data/agent.pem" ] || fail "the agent did not enroll"

cp models/jfk.wav "$work/hub-data/jfk.wav"
chown 10001:10001 "$work/hub-data/jfk.wav"
token=$(cat "$work/hub-data/api-token")
in_hub /usr/bin/morag-hub submit /var/lib/morag-hub/jfk.wav --type audio --wait --json \
  --url "http://127.0.0.1:$http" --token "$token" >"$work/job.json" 2>"$work/submit.err" \
  || { cat "$work/submit.err"; fail "the job did not complete"; }
grep -q '"state": *"completed"' "$work/job.json" || fail "job: $(head -c 400 "$work/job.json")"
grep -qi country "$work/job.json" || fail "job result lacks the transcript"
log "a job submitted to the hub image ran on the agent image: completed"

for who in agent hub; do
  pid=$agent_pid
  [ "$who" = hub ] && pid=$hub_pid
  # The subshell's child is the daemon itself (chroot, env and sh each exec the next).
  target=$(pgrep -P "$pid" | head -1)
  kill -TERM "${target:-$pid}"
  status=0
  wait "$pid" || status=$?
  [ "$status" -eq 0 ] || { tail -20 "$work/$who.log"; fail "$who exited $status on SIGTERM"; }
  log "$who stopped on SIGTERM with status 0"
done
pids=()
log "all image checks passed"
