#!/usr/bin/env bash
# Download Apache Kafka (broker + command-line tools + log4j2 backend) from Maven
# Central into $KAFKA_HOME_CACHE/libs. Idempotent: a completed cache returns at once.
# Usage: fetch.sh            (KAFKA_VERSION=4.3.1 fetch.sh for another version)
# Prints the libs folder on success.
set -euo pipefail
. "$(dirname "$0")/common.sh"

# The stamp records which pom.xml filled the cache: editing the pom (e.g. the slf4j
# fix) must refetch, not silently reuse jars resolved from the old one.
STAMP="$(cat "$KAFKA_TOOLKIT/pom.xml" | cksum | cut -d' ' -f1)-$KAFKA_VERSION"
# An explicit KAFKA_LIBS (e.g. an unpacked official release) needs no download.
if [ "$KAFKA_LIBS_FROM_ENV" = 1 ]; then kafka_cp >/dev/null; echo "$KAFKA_LIBS"; exit 0; fi
# Jars the scenarios need besides the broker and tools (compat-tests compile against the clients
# and Streams, and run a Connect worker with the FileStream connectors): a cache lacking one
# (filled before kafka-streams or connect-file joined the pom, or pruned by hand) is refetched,
# whatever its stamp says. (connect-file: any version, see pom.xml.)
NEEDED_JARS="kafka-clients kafka-streams rocksdbjni connect-runtime connect-json connect-file"
has_jars() {
  [ -f "$1/kafka-clients-$KAFKA_VERSION.jar" ] && [ -f "$1/kafka-streams-$KAFKA_VERSION.jar" ] \
    && [ -f "$1/connect-runtime-$KAFKA_VERSION.jar" ] && [ -f "$1/connect-json-$KAFKA_VERSION.jar" ] \
    && compgen -G "$1/connect-file-*.jar" >/dev/null && compgen -G "$1/rocksdbjni-*.jar" >/dev/null
}
if [ -f "$KAFKA_CACHE/.complete" ] && [ "$(cat "$KAFKA_CACHE/.complete")" = "$STAMP" ] \
    && has_jars "$KAFKA_CACHE/libs"; then
  echo "$KAFKA_CACHE/libs"; exit 0
fi
command -v mvn >/dev/null || die "mvn not found (Debian: apt-get install maven)"
check_java

rm -rf "$KAFKA_CACHE/libs.partial"; mkdir -p "$KAFKA_CACHE"
# Fully-qualified plugin goal: no plugin-prefix lookup, no project build.
# Output goes to a log (even -q Maven prints stray ANSI resets), shown on failure.
if ! mvn -B -q -ntp -Dstyle.color=never -f "$KAFKA_TOOLKIT/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_CACHE/libs.partial" > "$KAFKA_CACHE/fetch.log" 2>&1; then
  tail -n 30 "$KAFKA_CACHE/fetch.log" >&2
  rm -rf "$KAFKA_CACHE/libs.partial"
  die "Maven could not fetch Kafka $KAFKA_VERSION (full log: $KAFKA_CACHE/fetch.log).
  Maven Central (or a mirror in ~/.m2/settings.xml) must be reachable.
  Alternative: export KAFKA_LIBS=/path/to/kafka_2.13-X/libs (an unpacked official release)."
fi
has_jars "$KAFKA_CACHE/libs.partial" || { rm -rf "$KAFKA_CACHE/libs.partial"
  die "Maven ran but some of $NEEDED_JARS ($KAFKA_VERSION) are missing (log: $KAFKA_CACHE/fetch.log)"; }
rm -rf "$KAFKA_CACHE/libs"; mv "$KAFKA_CACHE/libs.partial" "$KAFKA_CACHE/libs"
echo "$STAMP" > "$KAFKA_CACHE/.complete"
echo "$KAFKA_CACHE/libs"
