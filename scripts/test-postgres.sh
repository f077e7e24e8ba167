#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests and benchmarks, from Debian's packages
# (scripts/install-deps.sh installs them). It listens on 127.0.0.1 only, trusts local
# connections (user morag, no password) and keeps everything under DIR.
#
#   scripts/test-postgres.sh start DIR [PORT] [--fast]   start (or find running) and print its URL
#   scripts/test-postgres.sh restart DIR                 stop it hard (like a crash) and start it
#   scripts/test-postgres.sh stop DIR                    stop it
#
# --fast turns fsync off: a crashed or restarted server keeps every commit (only an operating
# system crash could lose some), and tests run faster. Benchmarks leave it on.
set -euo pipefail

die() { echo "test-postgres: $*" >&2; exit 1; }

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 start|restart|stop DIR [PORT] [--fast]"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
data="$dir/data"

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$bindir" ] && [ -x "$bindir/initdb" ] ||
  die "PostgreSQL's server binaries are missing (/usr/lib/postgresql/*/bin); run scripts/install-deps.sh"

# The server refuses to run as root: run it as the postgres user the package made.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root needs the postgres user (Debian's postgresql package makes it)"
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

url() { echo "postgres://morag@127.0.0.1:$(cat "$dir/port")/postgres"; }

running() { [ -f "$data/postmaster.pid" ] && as_owner "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; }

case "$cmd" in
  start)
    port=${3:-}
    fast=no
    for a in "$@"; do [ "$a" = "--fast" ] && fast=yes; done
    [ "$port" = "--fast" ] && port=""
    if running; then url; exit 0; fi
    if [ -z "$port" ]; then
      if [ -f "$dir/port" ]; then
        port=$(cat "$dir/port")
      else
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
      fi
    fi
    echo "$port" >"$dir/port"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    if [ ! -f "$data/PG_VERSION" ]; then
      as_owner "$bindir/initdb" -D "$data" -U morag --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
        die "initdb failed: $(tail -n 5 "$dir/initdb.log")"
    fi
    opts="-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200"
    [ "$fast" = yes ] && opts="$opts -c fsync=off -c full_page_writes=off"
    echo "$opts" >"$dir/options"
    as_owner "$bindir/pg_ctl" -D "$data" -o "$opts" -l "$dir/server.log" -w -t 60 start >/dev/null ||
      die "the server did not start: $(tail -n 5 "$dir/server.log")"
    url
    ;;
  restart)
    [ -f "$dir/options" ] || die "no server was started in $dir"
    as_owner "$bindir/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
    as_owner "$bindir/pg_ctl" -D "$data" -o "$(cat "$dir/options")" -l "$dir/server.log" -w -t 60 start >/dev/null ||
      die "the server did not start again: $(tail -n 5 "$dir/server.log")"
    url
    ;;
  stop)
    if [ -f "$data/postmaster.pid" ]; then
      as_owner "$bindir/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    ;;
  *) die "unknown command $cmd (start, restart or stop)" ;;
esac
