#!/usr/bin/env bash
# Start the loopback S3 test server (moto S3 over HTTP) on 127.0.0.1, create a
# bucket, wait until it answers, and print shell exports for clients:
#   eval "$(scripts/s3/start.sh)"          # then: cargo test, aws s3 ls, ...
# Usage: start.sh [--port N] [--dir D] [--bucket B]
#   --port   TCP port on 127.0.0.1 (default $S3_PORT or 9000)
#   --dir    folder for server.pid, server.log and spilled object files
#            (default $S3_DIR or ${TMPDIR:-/tmp}/streamhouse-s3-<port>)
#   --bucket bucket to create (default $S3_BUCKET or test-bucket)
# If a server started by this script already runs from --dir, it is reused.
# Data is in memory: it does not survive stop.sh. Stop it with stop.sh.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${S3_VENV:-${HOME}/.cache/streamhouse-s3/venv}"
PORT="${S3_PORT:-9000}" DIR="${S3_DIR:-}" BUCKET="${S3_BUCKET:-test-bucket}"
die() { echo "start.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --bucket) BUCKET="$2"; shift 2 ;;
    *) die "unknown argument: $1 (usage: start.sh [--port N] [--dir D] [--bucket B])" ;;
  esac
done
DIR="${DIR:-${TMPDIR:-/tmp}/streamhouse-s3-$PORT}"
mkdir -p "$DIR/tmp" && DIR="$(cd "$DIR" && pwd)"
ENDPOINT="http://127.0.0.1:$PORT"
# Fixed test credentials (the server accepts any); the same as docker-compose.yml.
KEY=s3test SECRET=s3test-secret REGION=us-east-1

"$HERE/install.sh"  # no-op when already installed

PID=$(cat "$DIR/server.pid" 2>/dev/null || true)
if [ -n "$PID" ] && tr '\0' ' ' < "/proc/$PID/cmdline" 2>/dev/null | grep -q "s3server.py 127.0.0.1 $PORT"; then
  echo "start.sh: reusing server PID $PID in $DIR" >&2
else
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && die "port $PORT is already in use (try --port N)"
  # stdin/stdout/stderr detached, so that eval "$(start.sh)" does not wait on it.
  TMPDIR="$DIR/tmp" MOTO_S3_DEFAULT_KEY_BUFFER_SIZE="${MOTO_S3_DEFAULT_KEY_BUFFER_SIZE:-1048576}" \
    "$VENV/bin/python" "$HERE/s3server.py" 127.0.0.1 "$PORT" > "$DIR/server.log" 2>&1 < /dev/null &
  PID=$!
  echo "$PID" > "$DIR/server.pid"
fi

# Wait until it serves S3 (up to 30 s), then create the bucket (idempotent).
AWS_ACCESS_KEY_ID=$KEY AWS_SECRET_ACCESS_KEY=$SECRET "$VENV/bin/python" - "$ENDPOINT" "$BUCKET" "$PID" "$REGION" <<'PY' \
  || { tail -n 20 "$DIR/server.log" >&2; die "server did not become ready (log: $DIR/server.log)"; }
import os, sys, time, boto3
from botocore.config import Config
endpoint, bucket, pid, region = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name=region,
                  config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5))
deadline = time.time() + 30
while True:
    try:
        os.kill(int(pid), 0)
        s3.list_buckets()
        break
    except ProcessLookupError:
        sys.exit("server process exited")
    except Exception:
        if time.time() > deadline:
            sys.exit("timed out")
        time.sleep(0.1)
try:
    s3.create_bucket(Bucket=bucket)
except s3.exceptions.ClientError as e:
    if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
        raise
PY

echo "start.sh: S3 server PID $PID ready at $ENDPOINT, bucket $BUCKET (log: $DIR/server.log)" >&2
cat <<EOF
export AWS_ENDPOINT_URL=$ENDPOINT
export AWS_ACCESS_KEY_ID=$KEY
export AWS_SECRET_ACCESS_KEY=$SECRET
export AWS_REGION=$REGION
export AWS_DEFAULT_REGION=$REGION
export AWS_ALLOW_HTTP=true
export S3_BUCKET=$BUCKET
export S3_SERVER_PID=$PID
export S3_SERVER_DIR=$DIR
EOF
