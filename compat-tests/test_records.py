"""Produce-time record validation and rewriting, side by side: LogAppendTime topics, a topic's
compression.type recompressing what producers send, and batches with some invalid records failing
exactly those records (KIP-467) in librdkafka's delivery reports, Java's callbacks and the raw
ProduceResponse fields."""
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from compat_util import produce_all, producer, read_partition, reference_batches, wait_for_topic
from raw_wire import GZIP, batch, fetch_batches_v4, produce_v8

HERE = Path(__file__).resolve().parent
# Where scripts/kafka/fetch.sh puts the Kafka jars (scripts/kafka/common.sh's defaults).
KAFKA_LIBS = Path(os.environ.get("KAFKA_LIBS") or Path(
    os.environ.get("KAFKA_HOME_CACHE")
    or Path.home() / ".cache/streamhouse-kafka" / os.environ.get("KAFKA_VERSION", "4.4.0")) / "libs")


def create_with(broker, topic, configs):
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1, config=configs)])[topic] \
        .result(30)
    wait_for_topic(a, topic, 1)
    return a


def now_ms():
    return int(time.time() * 1000)


def test_log_append_time_topic(broker, topic):
    create_with(broker, topic, {"message.timestamp.type": "LogAppendTime"})
    old = now_ms() - 10 * 24 * 3600 * 1000  # the producer's timestamp: ten days ago, ignored
    before = now_ms()
    p = producer(broker.bootstrap, linger_ms=200)
    reports = produce_all(p, topic, [dict(value=f"v{i}".encode(), partition=0, timestamp=old)
                                     for i in range(5)])
    after = now_ms()
    assert [e for e, _, _ in reports] == [None] * 5
    got = read_partition(broker.bootstrap, topic, 5)
    assert [m.value() for m in got] == [f"v{i}".encode() for i in range(5)]
    # (TIMESTAMP_LOG_APPEND_TIME, the broker's append time) for every record of the batch.
    stamps = {m.timestamp() for m in got}
    assert len(stamps) == 1, stamps
    kind, ts = stamps.pop()
    assert kind == 2, kind
    assert before - 1000 <= ts <= after + 1000, (before, ts, after)
    stored = fetch_batches_v4(broker.host, broker.port, topic)
    assert stored and all(b["log_append_time"] and b["max_timestamp"] == ts for b in stored), stored


def test_topic_compression_type_recompresses_what_kcat_sends(broker, topic):
    if not shutil.which("kcat"):
        pytest.fail("kcat not installed (scripts/install-deps.sh)")
    create_with(broker, topic, {"compression.type": "gzip"})
    as_sent = topic + "-as-sent"
    create_with(broker, as_sent, {"compression.type": "producer"})
    lines = [f"line-{i}-" + "x" * (i % 40) for i in range(200)]
    for t in (topic, as_sent):
        r = subprocess.run(["kcat", "-P", "-b", broker.bootstrap, "-t", t, "-p", "0", "-z", "lz4",
                            "-X", "linger.ms=200"],
                           input="\n".join(lines) + "\n", capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
    # The premise: kcat really sends lz4 (codec 3), kept as sent with compression.type=producer.
    sent = fetch_batches_v4(broker.host, broker.port, as_sent)
    assert sent and {b["codec"] for b in sent} == {3}, sent
    got = read_partition(broker.bootstrap, topic, len(lines))
    assert [m.value().decode() for m in got] == lines
    assert [m.offset() for m in got] == list(range(len(lines)))
    # Stored as gzip (codec 1), whatever librdkafka sent: the batches a fetch returns, and on Kafka
    # its own log too.
    stored = fetch_batches_v4(broker.host, broker.port, topic)
    assert stored and {b["codec"] for b in stored} == {GZIP}, stored
    ref = reference_batches(broker, topic)
    if ref is not None:
        assert {b.get("compresscodec") for b in ref} == {"gzip"}, ref


KEYLESS = (2, 5, 7)
COUNT = 10


def test_keyless_records_on_compacted_topic_fail_exactly_those_librdkafka(broker, topic):
    create_with(broker, topic, {"cleanup.policy": "compact"})
    # One batch (long linger): records 2, 5 and 7 have no key.
    p = producer(broker.bootstrap, linger_ms=500, message_timeout_ms=20000)
    records = [dict(value=f"v{i}".encode(), partition=0,
                    key=None if i in KEYLESS else f"k{i}".encode()) for i in range(COUNT)]
    reports = produce_all(p, topic, records)
    codes = [e.code() if e is not None else None for e, _, _ in reports]
    # What Kafka 4.4 + librdkafka 2.16 give: INVALID_RECORD (87) for the bad records, and
    # _INVALID_DIFFERENT_RECORD (-138) for the others of the batch.
    assert codes == [87 if i in KEYLESS else -138 for i in range(COUNT)], codes
    assert read_partition(broker.bootstrap, topic, 1, stop_at_eof=True) == []


_JAVA_CLASSES = None


def java_classes():
    """Compiles java/RecordErrors.java once per session against the Kafka client jars."""
    global _JAVA_CLASSES
    if _JAVA_CLASSES is None:
        if not shutil.which("javac") or not list(KAFKA_LIBS.glob("kafka-clients-*.jar")):
            pytest.fail(f"javac or the Kafka client jars in {KAFKA_LIBS} missing")
        out = tempfile.mkdtemp(prefix="record-errors-java-")
        r = subprocess.run(["javac", "-d", out, "-cp", f"{KAFKA_LIBS}/*",
                            str(HERE / "java" / "RecordErrors.java")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        _JAVA_CLASSES = out
    return _JAVA_CLASSES


def test_keyless_records_on_compacted_topic_fail_exactly_those_java(broker, topic):
    create_with(broker, topic, {"cleanup.policy": "compact"})
    log4j = HERE.parent / "scripts" / "kafka" / "log4j2-tools.properties"
    r = subprocess.run(["java", "-Xmx256m", f"-Dlog4j2.configurationFile={log4j}", "-cp",
                        f"{java_classes()}:{KAFKA_LIBS}/*", "RecordErrors", broker.bootstrap, topic,
                        str(COUNT), ",".join(map(str, KEYLESS))],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line.split("\t") for line in r.stdout.splitlines()]
    assert len(lines) == COUNT, r.stdout
    for i, (idx, cls, msg) in enumerate(lines):
        assert int(idx) == i
        if i in KEYLESS:
            # The broker's per-record message, in the exception of exactly that record.
            assert cls == "org.apache.kafka.common.InvalidRecordException", lines[i]
            assert msg == "Compacted topic cannot accept message without key in topic partition " \
                f"{topic}-0", lines[i]
        else:
            assert cls == "org.apache.kafka.common.KafkaException", lines[i]
            assert msg == "Failed to append record because it was part of a batch which had one " \
                "more more invalid records", lines[i]
    assert read_partition(broker.bootstrap, topic, 1, stop_at_eof=True) == []


def test_record_errors_on_the_wire(broker, topic):
    """The ProduceResponse v8 fields themselves, for the rejections Kafka explains per record."""
    compact, lat, plain = topic + "-compact", topic + "-lat", topic
    create_with(broker, compact, {"cleanup.policy": "compact"})
    create_with(broker, lat, {"message.timestamp.type": "LogAppendTime"})
    create_with(broker, plain, {})
    now = now_ms()
    send = lambda t, data: produce_v8(broker.host, broker.port, t, 0, data)  # noqa: E731

    # Keyless records on a compacted topic: INVALID_RECORD, each bad record by index, Kafka's
    # summary of the first three.
    r = send(compact, batch([(b"k", b"v"), (None, b"v"), (b"k", b"v"), (None, b"v"), (None, b"v"),
                             (None, b"v")], now, codec=GZIP))
    m = f"Compacted topic cannot accept message without key in topic partition {compact}-0"
    assert r["error_code"] == 87
    assert r["record_errors"] == [(1, m), (3, m), (4, m), (5, m)]
    assert r["error_message"] == (
        "One or more records have been rejected due to 4 record errors in total, and only showing "
        f"the first three errors at most: [RecordError(batchIndex=1, message='{m}'), "
        f"RecordError(batchIndex=3, message='{m}'), RecordError(batchIndex=4, message='{m}')]")
    assert r["log_start_offset"] == 0

    # Timestamps two hours ahead (after.max.ms defaults to one hour): INVALID_TIMESTAMP, and a
    # key error in the same batch is listed too.
    r = send(compact, batch([(b"k", b"v"), (None, b"v"), (b"k", b"v", 7_200_000)], now))
    assert r["error_code"] == 32
    assert r["error_message"] == "One or more records have been rejected due to invalid timestamp"
    assert [i for i, _ in r["record_errors"]] == [1, 2]
    assert r["record_errors"][0][1] == m
    ts_msg = r["record_errors"][1][1]
    assert ts_msg.startswith(f"Timestamp {now + 7_200_000} of message with offset 2 is out of range. "
                             "The timestamp should be within ["), ts_msg

    # A producer setting the LogAppendTime flag on a LogAppendTime topic.
    r = send(lat, batch([(b"k", b"v")], now, attributes_extra=8))
    assert r["error_code"] == 32
    assert r["record_errors"] == [(0, f"Invalid timestamp type in message DefaultRecord(offset=0, "
                                      f"timestamp={now}, key=1 bytes, value=1 bytes). Producer "
                                      "should not set timestamp type to LogAppendTime.")]

    # Rejections that are not about single records carry no record errors: a forged count.
    r = send(plain, batch([(b"k", b"v"), (b"k", b"v")], now, codec=GZIP, count=5))
    assert (r["error_code"], r["record_errors"]) == (87, [])
    # Nothing of the above was stored; a valid batch lands at offset 0.
    r = send(plain, batch([(b"k", b"v")], now, codec=GZIP))
    assert (r["error_code"], r["base_offset"], r["log_append_time_ms"]) == (0, 0, -1)
    r = send(lat, batch([(b"k", b"v")], now - 10 ** 9))
    assert r["error_code"] == 0 and abs(r["log_append_time_ms"] - now_ms()) < 60_000, r
