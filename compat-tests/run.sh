#!/usr/bin/env bash
# Run the compat scenarios against a real Apache Kafka 4.4 and (if built) StreamHouse,
# then print a scenario x broker table (compat-tests/conftest.py does that).
#
# Usage: compat-tests/run.sh [pytest args...]      e.g.  compat-tests/run.sh -k kcat
# Env:
#   STREAMHOUSE_BIN   broker binary (default target/release/streamhouse; skipped if absent)
#   KAFKA_PORT        port for the reference Kafka (default 19092)
#   STREAMHOUSE_PORT  port for StreamHouse (default 9092)
#   COMPAT_BROKERS    if set, test these already-running brokers and start nothing
#                     ("kafka=127.0.0.1:19092,streamhouse=127.0.0.1:9092")
#   COMPAT_TARGETS    which brokers to start and run the scenarios on: "kafka", "streamhouse" or
#                     "kafka,streamhouse" (the default). A broker left out is not started and its
#                     parametrizations are not collected (conftest.py filters COMPAT_BROKERS by it
#                     too). No scenario needs both brokers at once (each runs against one broker and
#                     asserts Kafka's documented behaviour), so COMPAT_TARGETS=streamhouse is a full
#                     StreamHouse pass with no Kafka broker (its CLI jars are still fetched: the
#                     scenarios run kafka-topics & co. against StreamHouse).
#   COMPAT_REFERENCE_RESULTS  a JSON file: a run that includes kafka writes kafka's outcome per
#                     scenario there; a run without kafka reads it back, prints it as the kafka
#                     column and keeps the exit policy below (scripts/test.sh: the S3 pass reuses
#                     the first pass's Kafka results). Without it, a StreamHouse-only run fails on
#                     any failing scenario (pytest's own status).
#   PYTHON            interpreter with pytest + clients (default python3)
# Exit status: non-zero if a scenario passes on kafka and fails on another broker
# (or pytest itself errs); a scenario failing on every broker is only reported.
# With Kafka alone (no StreamHouse binary), pytest's own exit status.
# Deps: scripts/install-deps.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
SH_PORT="${STREAMHOUSE_PORT:-9092}"
SH_BIN="${STREAMHOUSE_BIN:-$ROOT/target/release/streamhouse}"
TARGETS="${COMPAT_TARGETS:-kafka,streamhouse}"
target() { case ",$TARGETS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
for t in ${TARGETS//,/ }; do
  case "$t" in kafka|streamhouse) ;; *) echo "run.sh: unknown COMPAT_TARGETS entry '$t' (kafka, streamhouse)" >&2; exit 2 ;; esac
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/compat-tests.XXXXXX")"
SH_PID=""
KAFKA_STARTED=0
PYTEST_RAN=0
cleanup() {
  local rc=$?
  set +e
  if [ -n "$SH_PID" ] && kill -0 "$SH_PID" 2>/dev/null; then
    kill -TERM "$SH_PID"
    for _ in $(seq 20); do kill -0 "$SH_PID" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$SH_PID" 2>/dev/null && kill -KILL "$SH_PID"
  fi
  [ "$KAFKA_STARTED" = 1 ] && "$ROOT/scripts/kafka/stop-broker.sh" --dir "$WORK/kafka" >/dev/null
  # Keep broker logs when something failed; they are the first thing to look at.
  # Silent once pytest ran, so its summary line stays the last line of output.
  if [ "$rc" = 0 ]; then rm -rf "$WORK"
  elif [ "$PYTEST_RAN" = 0 ]; then echo "run.sh: exit $rc; broker logs kept in $WORK" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {  # host port seconds pid-to-watch
  local i
  for i in $(seq $(($3 * 5))); do
    if ! kill -0 "$4" 2>/dev/null; then return 1; fi
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

"$PY" -c 'import pytest, confluent_kafka, kafka' 2>/dev/null \
  || { echo "run.sh: python deps missing; run scripts/install-deps.sh" >&2; exit 2; }

if [ -z "${COMPAT_BROKERS:-}" ]; then
  # The jars also serve the CLI tools and Java clients the scenarios run against StreamHouse.
  "$ROOT/scripts/kafka/fetch.sh" >/dev/null
  BROKERS=""
  if target kafka; then
    echo "== starting Apache Kafka on 127.0.0.1:$KAFKA_PORT ($WORK/kafka)"
    KAFKA_STARTED=1
    "$ROOT/scripts/kafka/start-broker.sh" --port "$KAFKA_PORT" --dir "$WORK/kafka" >/dev/null
    BROKERS="kafka=127.0.0.1:$KAFKA_PORT"
    # Lets scenarios check their own premises on real Kafka with kafka-dump-log.
    export COMPAT_KAFKA_LOG_DIR="$WORK/kafka/data"
  else
    echo "== COMPAT_TARGETS=$TARGETS: no Kafka broker started"
  fi

  if ! target streamhouse; then
    echo "== COMPAT_TARGETS=$TARGETS: StreamHouse not started"
  elif [ -x "$SH_BIN" ]; then
    port_busy "$SH_PORT" && { echo "run.sh: port $SH_PORT already in use" >&2; exit 2; }
    echo "== starting StreamHouse $SH_BIN on 127.0.0.1:$SH_PORT ($WORK/streamhouse)"
    mkdir -p "$WORK/streamhouse/data"
    # group.initial.rebalance.delay.ms=0 as on the reference Kafka (scripts/kafka/start-broker.sh).
    "$SH_BIN" serve --listen "127.0.0.1:$SH_PORT" --data-dir "$WORK/streamhouse/data" --group-initial-rebalance-delay-ms 0 \
      > "$WORK/streamhouse/streamhouse.log" 2>&1 < /dev/null &
    SH_PID=$!
    if ! wait_port 127.0.0.1 "$SH_PORT" 30 "$SH_PID"; then
      tail -n 30 "$WORK/streamhouse/streamhouse.log" >&2
      echo "run.sh: StreamHouse did not start listening on $SH_PORT" >&2; exit 2
    fi
    BROKERS="${BROKERS:+$BROKERS,}streamhouse=127.0.0.1:$SH_PORT"
  elif target kafka; then
    echo "== no StreamHouse binary at $SH_BIN: Kafka only"
  else
    echo "run.sh: COMPAT_TARGETS=$TARGETS but no StreamHouse binary at $SH_BIN" >&2; exit 2
  fi
  export COMPAT_BROKERS="$BROKERS"
fi

echo "== COMPAT_BROKERS=$COMPAT_BROKERS"
{ [ "$KAFKA_STARTED" = 1 ] || [ -n "$SH_PID" ]; } && echo "== broker logs in $WORK (kept if the run fails)"
cd "$ROOT/compat-tests"
# Not exec: the EXIT trap must still stop the brokers. pytest's own summary line
# comes last (the matrix is printed just before it).
set +e
PYTEST_RAN=1
# compat-tests/streamhouse/ (StreamHouse-only, starts/kills its own broker) is run
# separately by scripts/test.sh, so it is not collected here.
"$PY" -m pytest -c "$ROOT/compat-tests/pytest.ini" --ignore="$ROOT/compat-tests/streamhouse" \
  "$ROOT/compat-tests" "$@"
rc=$?
set -e
exit "$rc"
