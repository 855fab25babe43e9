#!/usr/bin/env bash
# Benchmark StreamHouse against a real Apache Kafka broker with Kafka's own perf tools
# (kafka-producer-perf-test, kafka-consumer-perf-test), same settings, same run.
# Builds nothing: uses target/release/streamhouse (or $STREAMHOUSE_BIN); the Kafka jars
# come from scripts/kafka/fetch.sh (Maven Central, cached in ~/.cache/streamhouse-kafka).
#
# Usage: scripts/bench-server.sh [--smoke] [--records N] [--out DIR] [more: --help]
#   --smoke      reduced matrix, tiny counts (about 2 min in all); results go to
#                benchmarks/work/smoke-<time>/ and latest.md is left alone
#   (default)    full matrix (estimated 25-40 min on 2 cores); results in
#                benchmarks/results/<UTC time>/ and benchmarks/results/latest.md
# See benchmarks/README.md for the matrix and the meaning of every column.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
case "${1:-}" in -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; echo; exec python3 "$ROOT/benchmarks/bench.py" --help ;; esac
command -v python3 >/dev/null || { echo "bench-server.sh: python3 is needed" >&2; exit 1; }
python3 -c 'import matplotlib' 2>/dev/null || echo "bench-server.sh: matplotlib missing (pip install matplotlib): no chart.png" >&2
exec python3 "$ROOT/benchmarks/bench.py" "$@"
