# shellcheck shell=bash
# Sourced by fetch.sh, kafka.sh, start-broker.sh, stop-broker.sh. Settings (env):
#   KAFKA_VERSION     Apache Kafka version fetched from Maven Central (default 4.4.0)
#   KAFKA_HOME_CACHE  cache folder (default ~/.cache/streamhouse-kafka/<version>)
#   KAFKA_LIBS        folder of jars to run from (default $KAFKA_HOME_CACHE/libs);
#                     may point at the libs/ of an unpacked kafka_2.13-X.tgz instead
#   JAVA_HOME         JDK/JRE to use (Kafka 4.x brokers need Java 17+)
KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
KAFKA_CACHE="${KAFKA_HOME_CACHE:-${HOME}/.cache/streamhouse-kafka/${KAFKA_VERSION}}"
KAFKA_LIBS_FROM_ENV=$([ -n "${KAFKA_LIBS:-}" ] && echo 1 || echo 0)
KAFKA_LIBS="${KAFKA_LIBS:-${KAFKA_CACHE}/libs}"
KAFKA_TOOLKIT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# JVM flags as Kafka's own bin/kafka-run-class.sh sets them by default.
KAFKA_JVM_PERFORMANCE_OPTS="${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true}"

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

java_bin() {
  if [ -n "${JAVA_HOME:-}" ]; then echo "$JAVA_HOME/bin/java"; else command -v java || die "java not found (install a JDK 17+)"; fi
}

check_java() {  # Kafka 4.x broker and tools are built for Java 17
  local v
  v=$("$(java_bin)" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')
  [ "${v%%.*}" -ge 17 ] 2>/dev/null || die "Java ${v:-?} found; Kafka 4.x needs Java 17+ (set JAVA_HOME)"
}

kafka_cp() {  # Java classpath wildcard over every jar in KAFKA_LIBS
  compgen -G "$KAFKA_LIBS/kafka*.jar" >/dev/null || die "no Kafka jars in $KAFKA_LIBS: run $KAFKA_TOOLKIT/fetch.sh first"
  echo "$KAFKA_LIBS/*"
}
