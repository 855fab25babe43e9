#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 for tests and CI, create a database, wait until it
# answers, and print shell exports for the tests:
#   eval "$(scripts/postgres/start.sh)"     # then: cargo test (STREAMHOUSE_TEST_POSTGRES is set)
# Usage: start.sh [--port N] [--dir D] [--db NAME]
#   --port  TCP port on 127.0.0.1 (default $PG_PORT, else a free port)
#   --dir   folder for the cluster (data/), its log and socket (default $PG_DIR or
#           /tmp/streamhouse-pg-<port>; must be reachable by the `postgres` user when run as root)
#   --db    database to create (default streamhouse)
# Installs Debian's `postgresql` if missing (install.sh). As root, the cluster belongs to the `postgres`
# user (initdb refuses to run as root). Trust authentication, loopback only: for tests, never for data
# that matters. If a server started by this script already runs from --dir, it is reused.
# Stop it with stop.sh (same --port/--dir).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${PG_PORT:-}" DIR="${PG_DIR:-}" DB=streamhouse USER_NAME=streamhouse
die() { echo "start.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --db) DB="$2"; shift 2 ;;
    *) die "unknown argument: $1 (usage: start.sh [--port N] [--dir D] [--db NAME])" ;;
  esac
done

"$HERE/install.sh" >&2
BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"

if [ -z "$PORT" ]; then
  PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
# Not under $TMPDIR by default: as root that may be a folder the postgres user cannot enter.
DIR="${DIR:-/tmp/streamhouse-pg-$PORT}"
mkdir -p "$DIR" && DIR="$(cd "$DIR" && pwd)"

# Runs a server binary as the cluster's owner: `postgres` when we are root, else ourselves.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$DIR"
  runuser -u postgres -- test -w "$DIR" || die "the postgres user cannot write $DIR (choose --dir under /tmp)"
fi

if [ ! -f "$DIR/data/PG_VERSION" ]; then
  # --no-sync: the cluster is thrown away after the tests, so initdb need not fsync its files; the
  # server itself keeps fsync on, so commits cost what they cost on a real server.
  as_owner "$BIN/initdb" -D "$DIR/data" -U "$USER_NAME" --auth=trust -E UTF8 --locale=C --no-sync \
    > "$DIR/initdb.log" 2>&1 || { tail -n 20 "$DIR/initdb.log" >&2; die "initdb failed (log: $DIR/initdb.log)"; }
fi

if as_owner "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
  echo "start.sh: reusing the server running from $DIR" >&2
else
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && die "port $PORT is already in use (try --port N)"
  # The socket goes into DIR (the default /var/run/postgresql may not exist or be writable).
  # max_connections 200: each storage test opens a small pool on a database of its own, two test
  # threads at once, plus the compat brokers; 100 (the default) is tight when a run leaks a few.
  as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$DIR -c max_connections=200" \
    start >/dev/null < /dev/null \
    || { tail -n 20 "$DIR/server.log" >&2; die "server did not start (log: $DIR/server.log)"; }
fi

PSQL=("$BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U "$USER_NAME" -d postgres -v ON_ERROR_STOP=1)
for _ in $(seq 100); do "${PSQL[@]}" -c 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done
"${PSQL[@]}" -c 'SELECT 1' >/dev/null || die "server does not answer on 127.0.0.1:$PORT (log: $DIR/server.log)"
if [ -z "$("${PSQL[@]}" -At -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" ]; then
  "${PSQL[@]}" -c "CREATE DATABASE \"$DB\"" || die "could not create database $DB"
fi

URL="postgres://$USER_NAME@127.0.0.1:$PORT/$DB"
echo "start.sh: PostgreSQL $("$BIN/postgres" -V | awk '{print $3}') ready at $URL (log: $DIR/server.log)" >&2
cat <<EOT
export STREAMHOUSE_TEST_POSTGRES=$URL
export PG_PORT=$PORT
export PG_DIR=$DIR
EOT
