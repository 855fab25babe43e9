#!/usr/bin/env bash
# Runs the S3-mode scenarios (compat-tests/streamhouse/test_s3.py) against MinIO instead of the loopback
# moto server: builds MinIO from the Go module proxy (go install; a few minutes the first time), starts
# it on 127.0.0.1, creates a bucket, runs the tests, stops it. Not part of the test command (MinIO is
# AGPL and slow to build); the result is recorded in the S3 issue's closing note.
# Usage: scripts/s3/minio-try.sh [--port N]   (needs target/release/streamhouse)
set -euo pipefail
cd "$(dirname "$0")/../.."
PORT=9300
[ "${1:-}" = "--port" ] && PORT="$2"
GOBIN="$(go env GOPATH)/bin"
[ -x "$GOBIN/minio" ] || go install github.com/minio/minio@latest
DATA="$(mktemp -d)"
MINIO_ROOT_USER=minioadmin MINIO_ROOT_PASSWORD=minioadmin "$GOBIN/minio" server "$DATA" \
  --address "127.0.0.1:$PORT" --console-address "127.0.0.1:$((PORT + 1))" > "$DATA.log" 2>&1 &
MINIO=$!
trap 'kill $MINIO 2>/dev/null; rm -rf "$DATA"' EXIT
scripts/s3/install.sh
# The bucket, and an anonymous ListBucket policy: the tests count objects with unsigned requests.
"${S3_VENV:-$HOME/.cache/streamhouse-s3/venv}/bin/python" - "$PORT" <<'PY'
import json, sys, time, boto3
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1",
                  aws_access_key_id="minioadmin", aws_secret_access_key="minioadmin")
for _ in range(100):
    try:
        s3.list_buckets()
        break
    except Exception:
        time.sleep(0.2)
s3.create_bucket(Bucket="streamhouse")
s3.put_bucket_policy(Bucket="streamhouse", Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["s3:ListBucket"],
    "Resource": ["arn:aws:s3:::streamhouse"]}]}))
PY
STREAMHOUSE_TEST_S3_ENDPOINT="http://127.0.0.1:$PORT" AWS_ACCESS_KEY_ID=minioadmin \
  AWS_SECRET_ACCESS_KEY=minioadmin S3_BUCKET=streamhouse \
  python3 -m pytest -q -s -p no:cacheprovider --noconftest compat-tests/streamhouse/test_s3.py
