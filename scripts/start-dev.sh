#!/usr/bin/env bash
# Start a StreamHouse development broker in the foreground (Ctrl-C stops it).
# Builds nothing: run `cargo build --release` first, or point STREAMHOUSE_BIN at a binary.
#
# Usage: scripts/start-dev.sh [--listen HOST:PORT] [--data-dir DIR] [other `streamhouse serve` flags]
#   defaults: --listen 127.0.0.1:9092 --data-dir ./data (relative to the current folder)
# Env: STREAMHOUSE_BIN (default <repo>/target/release/streamhouse),
#      RUST_LOG (default info).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${STREAMHOUSE_BIN:-$ROOT/target/release/streamhouse}"
LISTEN=127.0.0.1:9092 DATA=./data EXTRA=()

while [ $# -gt 0 ]; do
  case "$1" in
    --listen) LISTEN="$2"; shift 2 ;;
    --listen=*) LISTEN="${1#*=}"; shift ;;
    --data-dir) DATA="$2"; shift 2 ;;
    --data-dir=*) DATA="${1#*=}"; shift ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done

if [ ! -x "$BIN" ]; then
  echo "start-dev.sh: no StreamHouse binary at $BIN" >&2
  echo "  build it with: cargo build --release   (or set STREAMHOUSE_BIN=/path/to/streamhouse)" >&2
  exit 1
fi

mkdir -p "$DATA"
export RUST_LOG="${RUST_LOG:-info}"
echo "start-dev.sh: $BIN serve --listen $LISTEN --data-dir $DATA ${EXTRA[*]:-}  (RUST_LOG=$RUST_LOG)" >&2
exec "$BIN" serve --listen "$LISTEN" --data-dir "$DATA" ${EXTRA[@]+"${EXTRA[@]}"}
