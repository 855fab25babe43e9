#!/usr/bin/env bash
# The test command (README, .ci/run): on a fresh Debian machine as root it installs what the tests need
# (kcat, Python clients, Apache Kafka's jars from Maven Central, franz-go's Go modules), builds StreamHouse, and runs:
#   1. lint: cargo fmt --check, cargo clippy -D warnings
#   2. cargo test: unit tests, wire-level tests (hostile input, every served API version), property tests
#      of the request decoders, storage recovery, and the rdkafka crate round trip; the storage suite
#      runs on SQLite and on PostgreSQL (a throwaway server on loopback, scripts/postgres)
#   3. StreamHouse-only end-to-end scenarios (kill -9 durability, groups across restarts, S3 mode:
#      restart, store faults, PUT count, compaction and retention)
#   4. compat-tests: the same scenarios against StreamHouse and a real Kafka 4.x, with a table; then
#      again with StreamHouse keeping segments in the loopback S3 server (scripts/s3) and metadata in
#      PostgreSQL (S3 with SQLite is covered by compat-tests/streamhouse/test_s3.py): that pass runs
#      StreamHouse only (COMPAT_TARGETS=streamhouse, no Kafka started: Kafka's side would not change)
#      and judges it against the first pass's Kafka outcomes (COMPAT_REFERENCE_RESULTS)
#   5. smoke runs of the criterion micro-benchmarks and of the benchmark harness, so they do not rot
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
scripts/install-deps.sh

step "lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --release --locked -p streamhouse-broker
export STREAMHOUSE_BIN="$PWD/target/release/streamhouse"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Servers started below, stopped at exit whatever happens.
PG_DIR="" S3_DIR="" KAFKA_RESULTS=""
cleanup() {
  [ -z "$KAFKA_RESULTS" ] || rm -f "$KAFKA_RESULTS"
  [ -z "$S3_DIR" ] || scripts/s3/stop.sh --port "$S3_PORT" --dir "$S3_DIR" --purge >/dev/null 2>&1 || true
  [ -z "$PG_DIR" ] || scripts/postgres/stop.sh --dir "$PG_DIR" --purge >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "starting PostgreSQL on loopback (the storage suite's PostgreSQL variants, the S3 compat pass)"
PG_PORT="$(free_port)"
PG_DIR="$(mktemp -d /tmp/streamhouse-pg.XXXXXX)"  # under /tmp: the postgres user must reach it
PG_ENV="$(scripts/postgres/start.sh --port "$PG_PORT" --dir "$PG_DIR")"  # a failed start stops here
eval "$PG_ENV"

step "cargo test"
cargo test --workspace --locked

step "StreamHouse-only end-to-end scenarios"
python3 -m pytest -q -p no:cacheprovider --noconftest compat-tests/streamhouse

if [ "${SKIP_BENCH_SMOKE:-0}" != 1 ]; then
  step "benchmark smoke runs (numbers not meaningful): criterion hot paths once each, then the broker harness"
  cargo bench --locked -p streamhouse-benchmarks --bench hot_paths -- --test
  scripts/bench-server.sh --smoke --out "${TMPDIR:-/tmp}/streamhouse-bench-smoke"
fi

step "compat-tests: StreamHouse beside a real Apache Kafka"
KAFKA_RESULTS="$(mktemp "${TMPDIR:-/tmp}/compat-kafka-results.XXXXXX.json")"
COMPAT_REFERENCE_RESULTS="$KAFKA_RESULTS" compat-tests/run.sh

step "compat-tests again, StreamHouse on S3 + PostgreSQL (segments in a loopback S3 server, metadata in PostgreSQL)"
S3_PORT="$(free_port)"
S3_DIR="$(mktemp -d "${TMPDIR:-/tmp}/streamhouse-compat-s3.XXXXXX")"
eval "$(scripts/s3/start.sh --port "$S3_PORT" --dir "$S3_DIR")"
# A database of its own on the running server (start.sh reuses it and creates the database).
COMPAT_METADATA="$(scripts/postgres/start.sh --port "$PG_PORT" --dir "$PG_DIR" --db compat_s3 \
  | sed -n 's/^export STREAMHOUSE_TEST_POSTGRES=//p')"
[ -n "$COMPAT_METADATA" ] || { echo "test.sh: no database for the S3 + PostgreSQL pass" >&2; exit 1; }
# StreamHouse only: Kafka's outcomes are the first pass's (same scenarios, same Kafka).
COMPAT_TARGETS=streamhouse COMPAT_REFERENCE_RESULTS="$KAFKA_RESULTS" \
  STREAMHOUSE_STORAGE="s3://$S3_BUCKET/compat" STREAMHOUSE_METADATA="$COMPAT_METADATA" compat-tests/run.sh
