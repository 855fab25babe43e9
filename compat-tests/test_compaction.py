"""Key compaction (cleanup.policy=compact), the same against every broker, as Kafka documents it:
the log keeps at least the last value of every key; compaction removes older records but never
renumbers, so a reader sees offset gaps and still reaches the end offset (high watermark), and the
earliest offset (log start) stays where it was; a tombstone (null value) hides its key and is itself
removed in a later cleaning after delete.retention.ms; a record without a key is refused; the
topic's cleaner settings are topic overrides in DescribeConfigs.

Scale: the issue's, 1,000,000 records over 1,000 keys (100-byte values).

Readers: librdkafka (confluent-kafka), the Java consumer (java/CompactedRead.java) and kafka-python,
each reading the whole partition from its earliest offset up to the end.

Timing: the suite's Kafka keeps the default log.cleaner.backoff.ms (15 s between looks for a dirty
log), and only a rolled (non-active) segment is cleaned; segment.ms=100 rolls the active segment at
the next append after 100 ms. Waits poll with deadlines (liveness bounds, not timing claims)."""
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, NewTopic, OffsetSpec
from kafka import KafkaConsumer
from kafka import TopicPartition as KpTopicPartition

from compat_util import (consumer, end_offsets, kafka_tool, produce_all, producer,
                         wait_for_topic)

HERE = Path(__file__).resolve().parent
# Where scripts/kafka/fetch.sh puts the Kafka jars (scripts/kafka/common.sh's defaults).
KAFKA_LIBS = Path(os.environ.get("KAFKA_LIBS") or Path(
    os.environ.get("KAFKA_HOME_CACHE")
    or Path.home() / ".cache/streamhouse-kafka" / os.environ.get("KAFKA_VERSION", "4.4.0")) / "libs")

# segment.bytes: Kafka's minimum (1 MiB); segment.ms: roll at the next append after 100 ms, so
# little stays in the active segment, which the cleaner never touches.
COMPACT = {"cleanup.policy": "compact", "segment.bytes": "1048576", "segment.ms": "100",
           "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "1000"}
KEYS = [f"key-{i:04d}" for i in range(1000)]
# The scale: 1,000,000 records over the 1,000 keys in turn (record n has key n % 1000 and
# sequence number n), 100-byte values (100 MB).
RECORDS = 1_000_000
VALUE_BYTES = 100
# What may remain besides one record per key: the uncleaned head (the active segment, at most one
# 1 MiB segment, about 7,500 records of 100 bytes with their overhead, and whatever was appended
# since the cleaner's last look).
HEAD = 12_000
COMPACTION_TIMEOUT = 90  # several log.cleaner.backoff.ms (15 s) periods
TOMBSTONED = KEYS[:10]
LIVE = KEYS[10:]


def value(key, seq):
    head = f"{key}:{seq}:".encode()
    return head + b"x" * (VALUE_BYTES - len(head))


def create_compacted(broker, topic, configs=COMPACT):
    a = AdminClient({"bootstrap.servers": broker.bootstrap})
    a.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1, config=configs)])[topic] \
        .result(30)
    wait_for_topic(a, topic, 1)
    return a


def earliest_offset(admin, topic):
    f = admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.earliest()}, request_timeout=15)
    return next(iter(f.values())).result().offset


def high_watermark(admin, topic):
    return end_offsets(admin, topic, [0])[0][1]


def _prefix(v):
    return None if v is None else v[:32].decode()


def read_librdkafka(bootstrap, topic, timeout=60):
    """(records, end): records as (offset, key, value prefix or None) from offset 0 up to the end of
    the partition; end is the offset of librdkafka's end-of-partition event (it comes only once the
    fetch position has reached the high watermark)."""
    c = consumer(bootstrap, fetch_message_max_bytes=4 * 1024 * 1024)
    out, deadline = [], time.monotonic() + timeout
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    return out, m.offset()
                raise AssertionError(f"consume error: {m.error()}")
            out.append((m.offset(), m.key().decode() if m.key() is not None else None,
                        _prefix(m.value())))
        raise AssertionError(f"librdkafka: no end of partition within {timeout}s "
                             f"({len(out)} records, last {out[-1:]})")
    finally:
        c.close()


def read_kafka_python(bootstrap, topic, timeout=60):
    """(records, earliest, end, position) with kafka-python, which decodes record batches itself."""
    tp = KpTopicPartition(topic, 0)
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                      request_timeout_ms=30000)
    out = []
    try:
        c.assign([tp])
        earliest, end = c.beginning_offsets([tp])[tp], c.end_offsets([tp])[tp]
        c.seek_to_beginning(tp)
        deadline = time.monotonic() + timeout
        while c.position(tp) < end and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                out += [(r.offset, r.key.decode() if r.key is not None else None, _prefix(r.value))
                        for r in recs]
        return out, earliest, end, c.position(tp)
    finally:
        c.close()


_JAVA_CLASSES = None


def java_classes():
    """Compiles java/CompactedRead.java once per session against the Kafka client jars."""
    global _JAVA_CLASSES
    if _JAVA_CLASSES is None:
        if not shutil.which("javac") or not list(KAFKA_LIBS.glob("kafka-clients-*.jar")):
            pytest.fail(f"javac or the Kafka client jars in {KAFKA_LIBS} missing")
        out = tempfile.mkdtemp(prefix="compacted-read-java-")
        r = subprocess.run(["javac", "-d", out, "-cp", f"{KAFKA_LIBS}/*",
                            str(HERE / "java" / "CompactedRead.java")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        _JAVA_CLASSES = out
    return _JAVA_CLASSES


def read_java(bootstrap, topic, timeout=60):
    """(records, earliest, end, position) with the Java consumer."""
    log4j = HERE.parent / "scripts" / "kafka" / "log4j2-tools.properties"
    r = subprocess.run(["java", "-Xmx256m", f"-Dlog4j2.configurationFile={log4j}", "-cp",
                        f"{java_classes()}:{KAFKA_LIBS}/*", "CompactedRead", bootstrap, topic,
                        str(timeout * 1000)],
                       capture_output=True, text=True, timeout=timeout + 60)
    assert r.returncode == 0, r.stderr[-3000:]
    info, out = {}, []
    for line in r.stdout.splitlines():
        f = line.split("\t")
        if f[0] in ("earliest", "end", "position"):
            info[f[0]] = int(f[1])
        else:
            out.append((int(f[0]), f[1], None if f[2] == "null" else f[2]))
    return out, info["earliest"], info["end"], info["position"]


def check_log(who, records, expected, end, hw, gone=()):
    """What every reader must see of a compacted partition: offsets strictly increasing below the
    high watermark, every record one that was produced for its key, the last one of each key being
    its last produced value (expected: key -> value prefix, None for a tombstone still there), no
    record at all of the keys in `gone`, and the reader's end at the high watermark."""
    offsets = [o for o, _, _ in records]
    assert all(a < b for a, b in zip(offsets, offsets[1:])), f"{who}: offsets not increasing"
    assert not offsets or offsets[-1] < hw, (who, offsets[-1], hw)
    last = {}
    for o, k, v in records:
        assert k is not None, f"{who}: keyless record at offset {o}"
        assert v is None or v.startswith(f"{k}:"), f"{who}: offset {o} key {k} holds {v!r}"
        last[k] = v
    present_gone = sorted(set(last) & set(gone))
    assert not present_gone, f"{who}: records of deleted keys still there: {present_gone}"
    wrong = {k: (last.get(k, "<missing>"), v) for k, v in expected.items() if last.get(k, "<missing>") != v}
    assert not wrong, f"{who}: last value per key differs (seen, produced): " \
                      f"{dict(list(wrong.items())[:5])} ({len(wrong)} keys)"
    assert set(last) == set(expected), (who, sorted(set(last) - set(expected))[:5])
    assert end == hw, f"{who}: the reader ended at {end}, the high watermark is {hw}"


def describe(records):
    """For messages: how many records remain, and how many of them are the gapless run at the end
    (the uncleaned head, and the cleaned records just below it when they happen to be gapless too)
    versus below it."""
    if not records:
        return "no records"
    i = len(records) - 1
    while i > 0 and records[i - 1][0] == records[i][0] - 1:
        i -= 1
    below = records[:i]
    return (f"{len(records)} records at offsets {records[0][0]}..{records[-1][0]}: a gapless run of "
            f"{len(records) - i} from offset {records[i][0]}, below it {len(below)} records of "
            f"{len({k for _, k, _ in below})} keys")


def wait_compacted(broker, topic, done, timeout=COMPACTION_TIMEOUT, between=None):
    """Reads the partition (librdkafka) until done(records); `between` runs before every read after
    the first (new dirty data). Returns (records, end, seconds waited)."""
    t0 = time.monotonic()
    deadline, reads = t0 + timeout, 0
    while True:
        if reads and between:
            between()
        records, end = read_librdkafka(broker.bootstrap, topic)
        reads += 1
        if done(records):
            return records, end, time.monotonic() - t0
        if time.monotonic() > deadline:
            return None, (records, end), time.monotonic() - t0
        time.sleep(1)


# Per broker: the compacted topic test (a) left behind (test (b) goes on from there), or why not.
_compacted = {}


def compacted_topic(broker, topic):
    """Test (a)'s setup and wait: creates the topic, produces RECORDS records over KEYS, waits for
    the cleaner. Returns (admin, state) with state's "last": key -> last produced value prefix."""
    admin = create_compacted(broker, topic)
    p = producer(broker.bootstrap, linger_ms=20)
    reports = produce_all(p, topic, [dict(key=KEYS[n % len(KEYS)].encode(),
                                          value=value(KEYS[n % len(KEYS)], n), partition=0)
                                     for n in range(RECORDS)], timeout=120)
    assert [e for e, _, _ in reports if e is not None] == []
    assert [o for _, _, o in reports] == list(range(RECORDS))
    last = {k: value(k, n).decode()[:32] for n, k in ((n, KEYS[n % len(KEYS)])
                                                      for n in range(RECORDS - len(KEYS), RECORDS))}
    assert earliest_offset(admin, topic) == 0 and high_watermark(admin, topic) == RECORDS
    state = {"topic": topic, "last": last, "next": RECORDS, "producer": p}
    records, end, waited = wait_compacted(broker, topic, lambda recs: len(recs) <= len(KEYS) + HEAD)
    if records is None:
        recs, end = end
        _compacted[broker.name] = f"test (a) found the log not compacted to at most {len(KEYS)} + " \
                                  f"{HEAD} records within {COMPACTION_TIMEOUT}s ({len(recs)} of " \
                                  f"{RECORDS} still there)"
        raise AssertionError(f"not compacted within {COMPACTION_TIMEOUT}s: a reader from the "
                             f"beginning still sees {len(recs)} of {RECORDS} records (at most "
                             f"{len(KEYS)} + {HEAD} expected): {describe(recs)}")
    state.update(records=records, end=end, waited=waited)
    return admin, state


def test_compaction_keeps_the_last_value_of_every_key(broker, topic):
    admin, st = compacted_topic(broker, topic)
    records, hw = st["records"], high_watermark(admin, topic)
    print(f"{broker.name}: compacted after {st['waited']:.1f}s: {describe(records)}")
    # Compaction removes records, it never renumbers or truncates the log: same high watermark,
    # same earliest offset.
    assert hw == RECORDS
    assert earliest_offset(admin, topic) == 0
    assert len(records) <= len(KEYS) + HEAD and len(records) < RECORDS // 10, describe(records)
    check_log("librdkafka", records, st["last"], st["end"], hw)
    java, j_earliest, j_end, j_pos = read_java(broker.bootstrap, topic)
    assert (j_earliest, j_end) == (0, hw)
    check_log("java", java, st["last"], j_pos, hw)
    assert len(java) <= len(KEYS) + HEAD, describe(java)
    kp, k_earliest, k_end, k_pos = read_kafka_python(broker.bootstrap, topic)
    assert (k_earliest, k_end) == (0, hw)
    check_log("kafka-python", kp, st["last"], k_pos, hw)
    assert len(kp) <= len(KEYS) + HEAD, describe(kp)
    _compacted[broker.name] = (admin, st)


def test_compaction_removes_tombstones_after_delete_retention(broker, topic):
    prior = _compacted.get(broker.name)
    if isinstance(prior, str):  # test (a) ran on this broker and its cleaner never ran
        pytest.fail(f"nothing to build on: {prior}")
    admin, st = prior if prior is not None else compacted_topic(broker, topic)
    topic, last, p = st["topic"], dict(st["last"]), st["producer"]

    def produce(items):
        reports = produce_all(p, topic, [dict(key=k.encode(), value=v, partition=0) for k, v in items])
        assert [e for e, _, _ in reports if e is not None] == []
        for k, v in items:
            last[k] = None if v is None else v[:32].decode()

    produce([(k, None) for k in TOMBSTONED])
    # Right after: each deleted key reads as its tombstone (the latest record of the key).
    records, end = read_librdkafka(broker.bootstrap, topic)
    check_log("librdkafka, tombstones just written", records, last, end, high_watermark(admin, topic))
    # Past delete.retention.ms, then new records for the other keys keep the log dirty, so the
    # cleaner runs again (Kafka drops a tombstone in a cleaning after its delete horizon, which the
    # first cleaning to see it sets).
    time.sleep(int(COMPACT["delete.retention.ms"]) / 1000 + 0.5)

    def more():
        produce([(k, value(k, st["next"] + i)) for i, k in enumerate(LIVE)])
        st["next"] += len(LIVE)

    more()
    gone = lambda recs: not {k for _, k, _ in recs} & set(TOMBSTONED)  # noqa: E731
    records, end, waited = wait_compacted(broker, topic, gone, between=more)
    if records is None:
        recs, _ = end
        left = sorted({(k, v is None) for _, k, v in recs if k in TOMBSTONED})
        raise AssertionError(f"deleted keys still there after {COMPACTION_TIMEOUT}s "
                             f"(key, is tombstone): {left}; {describe(recs)}")
    print(f"{broker.name}: tombstoned keys gone {waited:.1f}s after the first new records; "
          f"{describe(records)}")
    hw = high_watermark(admin, topic)
    assert hw == st["next"] + len(TOMBSTONED)
    assert earliest_offset(admin, topic) == 0
    expected = {k: last[k] for k in LIVE}
    check_log("librdkafka", records, expected, end, hw, gone=TOMBSTONED)
    java, j_earliest, j_end, j_pos = read_java(broker.bootstrap, topic)
    assert (j_earliest, j_end) == (0, hw)
    check_log("java", java, expected, j_pos, hw, gone=TOMBSTONED)
    kp, k_earliest, k_end, k_pos = read_kafka_python(broker.bootstrap, topic)
    assert (k_earliest, k_end) == (0, hw)
    check_log("kafka-python", kp, expected, k_pos, hw, gone=TOMBSTONED)


def test_compacted_topic_refuses_a_record_without_key(broker, topic):
    admin = create_compacted(broker, topic)
    p = producer(broker.bootstrap, message_timeout_ms=20000)
    [(err, _, _)] = produce_all(p, topic, [dict(value=b"no key", partition=0)])
    assert err is not None and err.code() == KafkaError.INVALID_RECORD, err
    # The Java producer (console producer, no parse.key): the broker's reason reaches it.
    r = kafka_tool("kafka-console-producer", "--bootstrap-server", broker.bootstrap, "--topic", topic,
                   "--producer-property", "delivery.timeout.ms=20000",
                   "--producer-property", "request.timeout.ms=15000", input="no key either\n")
    assert "Compacted topic cannot accept message without key" in r.stdout + r.stderr, \
        (r.returncode, r.stdout, r.stderr[-3000:])
    # Nothing was appended: the log is still empty, and the next (keyed) record gets offset 0.
    assert (earliest_offset(admin, topic), high_watermark(admin, topic)) == (0, 0)
    [(err, _, off)] = produce_all(p, topic, [dict(key=b"k", value=b"keyed", partition=0)])
    assert (err, off) == (None, 0)
    records, end = read_librdkafka(broker.bootstrap, topic)
    assert (records, end) == ([(0, "k", "keyed")], 1)


def test_compacted_topic_configs_are_topic_overrides(broker, topic):
    admin = create_compacted(broker, topic)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([res])[res].result(30)
    for name in ("cleanup.policy", "min.cleanable.dirty.ratio", "delete.retention.ms",
                 "segment.bytes", "segment.ms"):
        e = entries.get(name)
        assert e is not None, f"{name} missing from DescribeConfigs"
        got = (e.value, ConfigSource(e.source), e.is_default)
        assert got == (COMPACT[name], ConfigSource.DYNAMIC_TOPIC_CONFIG, False), (name, got)
    # kafka-configs --describe lists a topic's overrides, and only those.
    r = kafka_tool("kafka-configs", "--bootstrap-server", broker.bootstrap, "--describe",
                   "--entity-type", "topics", "--entity-name", topic)
    assert r.returncode == 0, r.stderr
    shown = dict(line.strip().split(" ", 1)[0].split("=", 1) for line in r.stdout.splitlines()
                 if line.startswith("  ") and "=" in line)
    assert shown == COMPACT, r.stdout
