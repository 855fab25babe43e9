#!/usr/bin/env bash
# Stop the PostgreSQL server that start.sh started from --dir (pg_ctl stop: by the pid in the cluster's
# postmaster.pid, never by process name; fast shutdown, then immediate after 30 s).
# Usage: stop.sh [--port N] [--dir D] [--purge]   (the same --port/--dir as start.sh)
#        --purge also deletes the folder (cluster, log).
set -euo pipefail
PORT="${PG_PORT:-}" DIR="${PG_DIR:-}" PURGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --purge) PURGE=1; shift ;;
    *) echo "stop.sh: unknown argument: $1" >&2; exit 1 ;;
  esac
done
[ -n "$DIR" ] || [ -n "$PORT" ] || { echo "stop.sh: give --dir or --port (or PG_DIR / PG_PORT)" >&2; exit 1; }
DIR="${DIR:-/tmp/streamhouse-pg-$PORT}"
BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ -z "$BIN" ] || [ ! -f "$DIR/data/postmaster.pid" ]; then
  echo "stop.sh: no server running from $DIR; nothing to stop"
elif as_owner "$BIN/pg_ctl" -D "$DIR/data" -m fast -w -t 30 stop >/dev/null 2>&1; then
  echo "stop.sh: stopped the PostgreSQL server in $DIR"
else
  as_owner "$BIN/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  echo "stop.sh: stopped the PostgreSQL server in $DIR (immediate)"
fi
if [ "$PURGE" = 1 ]; then rm -rf "$DIR"; echo "stop.sh: removed $DIR"; fi
