#!/usr/bin/env bash
# Install what compat-tests/ and scripts/kafka/ need on a fresh Debian/Ubuntu
# machine (run as root, e.g. in CI). Idempotent: only installs what is missing.
#   apt: kcat, a JRE 17+ and Maven (for the Kafka jars), unzip (kafka.sh), python3-pip, postgresql,
#        golang-go where the machine has no Go
#   pip: confluent-kafka, kafka-python, pytest, matplotlib (benchmark charts)
#   Kafka 4.4 jars: scripts/kafka/fetch.sh (Maven Central -> ~/.cache/streamhouse-kafka)
#   Go modules of compat-tests/go/txn (franz-go, for compat-tests/test_franz_go.py): the Go module
#   proxy -> $STREAMHOUSE_GO_CACHE (default ~/.cache/streamhouse-go: GOMODCACHE mod/, GOCACHE build/,
#   where the tests build the program once per session); Go itself from apt if there is none
# Env: PYTHON (default python3), SKIP_KAFKA_FETCH=1 to skip the jar download.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
die() { echo "install-deps.sh: $*" >&2; exit 1; }
say() { echo "install-deps.sh: $*"; }

apt_pkgs=()
command -v kcat >/dev/null || apt_pkgs+=(kcat)
command -v unzip >/dev/null || apt_pkgs+=(unzip)
command -v mvn >/dev/null || apt_pkgs+=(maven)
# Kafka 4.x needs Java 17+; Debian's default-jre-headless is 17 (bookworm) or 21 (trixie).
jv=$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}' || true)
[ "${jv%%.*}" -ge 17 ] 2>/dev/null || apt_pkgs+=(default-jre-headless)
command -v "$PY" >/dev/null || apt_pkgs+=(python3)
"$PY" -m pip --version >/dev/null 2>&1 || apt_pkgs+=(python3-pip)
# scripts/s3 (the loopback S3 server for the S3-mode tests) installs moto into a venv.
"$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_pkgs+=(python3-venv)
# The franz-go scenarios: the machine's Go (/usr/local/go on this kind of machine, maybe off PATH).
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then export PATH="$PATH:/usr/local/go/bin"; fi
command -v go >/dev/null || apt_pkgs+=(golang-go)

if [ ${#apt_pkgs[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "need root to apt-get install: ${apt_pkgs[*]}"
  command -v apt-get >/dev/null || die "no apt-get: install ${apt_pkgs[*]} by hand"
  say "apt-get install ${apt_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null \
    || die "apt-get install ${apt_pkgs[*]} failed"
fi

# pip package -> import name
declare -A mods=([confluent-kafka]=confluent_kafka [kafka-python]=kafka [pytest]=pytest [matplotlib]=matplotlib)
pip_pkgs=()
for p in "${!mods[@]}"; do "$PY" -c "import ${mods[$p]}" 2>/dev/null || pip_pkgs+=("$p"); done
if [ ${#pip_pkgs[@]} -gt 0 ]; then
  say "pip install ${pip_pkgs[*]}"
  if ! out=$("$PY" -m pip install -q --disable-pip-version-check "${pip_pkgs[@]}" 2>&1); then
    # Debian's system python refuses pip (PEP 668); on a throwaway CI box that's fine to override.
    if grep -q externally-managed <<<"$out"; then
      "$PY" -m pip install -q --disable-pip-version-check --break-system-packages "${pip_pkgs[@]}" \
        || die "pip install ${pip_pkgs[*]} failed"
    else
      echo "$out" >&2; die "pip install ${pip_pkgs[*]} failed"
    fi
  fi
fi

"$ROOT/scripts/s3/install.sh" || die "installing the loopback S3 server failed"
# scripts/postgres (the PostgreSQL the storage suite and the S3 compat pass run on): Debian's postgresql.
"$ROOT/scripts/postgres/install.sh" || die "installing PostgreSQL failed"

# franz-go and its dependencies (go.sum pins them) into the cache compat-tests/test_franz_go.py
# builds with (the same variables), and one build to warm its GOCACHE. go.mod asks for Go 1.26: a
# go 1.21+ older than that fetches the toolchain module through the module proxy itself.
GO_CACHE="${STREAMHOUSE_GO_CACHE:-$HOME/.cache/streamhouse-go}"
GO_SRC="$ROOT/compat-tests/go/txn"
(cd "$GO_SRC" && export GOMODCACHE="$GO_CACHE/mod" GOCACHE="$GO_CACHE/build" \
   GOFLAGS="-modcacherw -buildvcs=false" && go mod download && go build -o /dev/null .) \
  || die "downloading or building the franz-go program ($GO_SRC) failed"
say "franz-go $(sed -n 's/^require github.com\/twmb\/franz-go //p' "$GO_SRC/go.mod") in $GO_CACHE ($(go version | awk '{print $3}'))"

if [ "${SKIP_KAFKA_FETCH:-0}" != 1 ]; then
  libs=$("$ROOT/scripts/kafka/fetch.sh") || die "fetching the Kafka jars failed (see above)"
  say "Kafka jars in $libs"
fi
say "ok: kcat $(kcat -V 2>/dev/null | awk '/^Version/{print $2}'), $("$PY" -c '
from importlib.metadata import version as v; import confluent_kafka as c
print("confluent-kafka", v("confluent-kafka"), "(librdkafka", c.libversion()[0] + "), kafka-python",
      v("kafka-python") + ", pytest", v("pytest"))')"
