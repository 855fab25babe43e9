"""Scenarios driven through confluent-kafka (librdkafka 2.16)."""
import threading
import time

import pytest
from confluent_kafka import KafkaError, TopicPartition, OFFSET_END
from confluent_kafka.admin import AdminClient
from kafka.admin import KafkaAdminClient

from compat_util import (consume_n, consumer, create_topic, kafka_tool, produce_all,
                         producer, read_partition, reference_batches, wait_until)

# Explicit CreateTime timestamps (ms): an hour in the past, well inside the
# default 7-day retention (much older records may be deleted by Kafka's
# time-based retention check at any moment).
TS0 = (int(time.time()) - 3600) * 1000


def test_exact_roundtrip_keys_headers_nulls(broker, topic):
    create_topic(broker.bootstrap, topic, partitions=2)
    records = [
        dict(key=b"k1", value=b"v1", headers=[("h1", b"x"), ("dup", b"1"), ("dup", b"2")]),
        dict(key=None, value=b"null-key"),
        dict(key=b"k-empty", value=b""),
        dict(key=b"k-tombstone", value=None),
        dict(key=b"", value=b"empty-key", headers=[("null-header", None), ("e", b"")]),
        dict(key=b"\x00\xffbin", value=bytes(range(256))),
    ]
    # Explicit partition (1, not the default 0) and explicit timestamps.
    for i, r in enumerate(records):
        r.update(partition=1, timestamp=TS0 + i)
    p = producer(broker.bootstrap, linger_ms=0)
    reports = produce_all(p, topic, records)
    assert [(e, part, off) for e, part, off in reports] == [(None, 1, i) for i in range(len(records))]

    got = read_partition(broker.bootstrap, topic, len(records), partition=1)
    assert len(got) == len(records)
    for i, (r, m) in enumerate(zip(records, got)):
        assert (m.topic(), m.partition(), m.offset()) == (topic, 1, i)
        assert m.key() == r["key"], i
        assert m.value() == r["value"], i
        assert (m.headers() or []) == r.get("headers", []), i
        assert m.timestamp() == (1, TS0 + i), i  # (TIMESTAMP_CREATE_TIME, ts)
    # Partition 0 must have stayed empty.
    assert read_partition(broker.bootstrap, topic, 1, partition=0, stop_at_eof=True) == []


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression_roundtrip(broker, topic, codec):
    # Compressible + incompressible values, batched so the codec wraps many records.
    records = [dict(key=f"k{i}".encode(), value=(f"value-{i}-" * (i % 50 + 1)).encode(),
                    headers=[("i", str(i).encode())], partition=0) for i in range(500)]
    # Pre-created: records queued before the topic is known go out as tiny batches
    # that librdkafka leaves uncompressed when compression would not shrink them.
    create_topic(broker.bootstrap, topic, partitions=1)
    p = producer(broker.bootstrap, compression_type=codec, linger_ms=200, acks="all")
    reports = produce_all(p, topic, records)
    assert [e for e, _, _ in reports] == [None] * len(records)
    got = read_partition(broker.bootstrap, topic, len(records))
    assert [(m.offset(), m.key(), m.value(), m.headers()) for m in got] == \
        [(i, r["key"], r["value"], r["headers"]) for i, r in enumerate(records)]
    batches = reference_batches(broker, topic)
    if batches is not None:  # premise check on real Kafka: the codec really was used
        assert {b["compresscodec"] for b in batches} == {codec}, batches


def test_idempotent_producer_5000(broker, topic):
    n = 5000
    p = producer(broker.bootstrap, enable_idempotence=True, acks="all", linger_ms=5)
    records = [dict(key=str(i).encode(), value=f"idem-{i}".encode(), partition=0) for i in range(n)]
    reports = produce_all(p, topic, records, timeout=120)
    assert [e for e, _, _ in reports] == [None] * n
    assert sorted(off for _, _, off in reports) == list(range(n))
    # Ask for n+1 and stop at end of partition: a duplicate would show up as extra.
    got = read_partition(broker.bootstrap, topic, n + 1, timeout=60, stop_at_eof=True)
    assert [m.offset() for m in got] == list(range(n))  # contiguous from 0, each once
    assert [m.value() for m in got] == [r["value"] for r in records]


def test_list_offsets(broker, topic):
    B = broker.bootstrap
    # 10 records, timestamps TS0, TS0+1000, ... TS0+9000.
    p = producer(B)
    produce_all(p, topic, [dict(value=f"t{i}".encode(), partition=0, timestamp=TS0 + 1000 * i)
                           for i in range(10)])
    c = consumer(B)
    try:
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=15, cached=False) == (0, 10)
        queries = {TS0: 0, TS0 + 3500: 4, TS0 + 9000: 9, TS0 - 1: 0, TS0 + 9001: -1}
        for ts, want in queries.items():
            # One call per query: librdkafka collapses duplicate partitions in one call.
            (tp,) = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=15)
            assert tp.error is None, (ts, tp.error)
            # librdkafka reports "no such record" (broker offset -1) as OFFSET_END (-1).
            assert tp.offset == want, (ts - TS0, tp.offset, want)
    finally:
        c.close()

    # Same answers through the Java GetOffsetShell (ListOffsets from the Java client).
    for t, want in (("-1", 10), ("-2", 0), (TS0 + 3500, 4)):
        r = kafka_tool("kafka-get-offsets", "--bootstrap-server", B, "--topic", topic, "--time", t)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [f"{topic}:0:{want}"], (t, r.stdout, r.stderr)


def test_message_too_large(broker, topic):
    # The client allows 10 MB, the broker (message.max.bytes=1048588 default)
    # must refuse a 2 MB record with MESSAGE_TOO_LARGE.
    p = producer(broker.bootstrap, message_max_bytes=10_000_000, linger_ms=0)
    reports = produce_all(p, topic, [dict(value=b"x" * (2 * 1024 * 1024), partition=0)])
    err = reports[0][0]
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, err
    # Nothing got appended, and the partition still accepts normal records.
    reports = produce_all(p, topic, [dict(value=b"small", partition=0)])
    assert reports == [(None, 0, 0)]


def test_auto_create_via_producer_metadata(broker, topic):
    # Auto-create is on by default on both brokers: a producer's metadata request
    # for a new topic creates it (1 partition by default) and the produce lands.
    p = producer(broker.bootstrap)
    assert produce_all(p, topic, [dict(value=b"first")]) == [(None, 0, 0)]
    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
    assert topic in md.topics and len(md.topics[topic].partitions) == 1


def test_unknown_topic_without_auto_create(broker, topic):
    # kafka-python's describe_topics sends Metadata(allow_auto_topic_creation=false):
    # Kafka 4.4 answers UNKNOWN_TOPIC_OR_PARTITION (3) and does not create it.
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    try:
        (d,) = a.describe_topics([topic])
        assert d["name"] == topic and d["error_code"] == 3 and d["partitions"] == [], d
        assert topic not in a.list_topics()
    finally:
        a.close()
    # confluent-kafka's list_topics(topic) DOES request auto-creation: Kafka
    # creates the topic with the default 1 partition and returns it without error.
    ca = AdminClient({"bootstrap.servers": broker.bootstrap})
    tm = ca.list_topics(topic=topic, timeout=15).topics[topic]
    if tm.error is not None:  # creation may surface one metadata round later
        assert tm.error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.LEADER_NOT_AVAILABLE), tm.error
        wait_until(lambda: topic in ca.list_topics(timeout=10).topics, 30, f"{topic} auto-created")
    md = ca.list_topics(timeout=10).topics[topic]
    assert md.error is None and len(md.partitions) == 1


def test_fetch_from_middle_of_batch(broker, topic):
    # One produce batch of 10 records (long linger, one flush), then fetch from
    # offset 5: the broker returns the whole batch, the client must drop 0..4.
    # The topic must exist first: records queued for a not-yet-known topic went out
    # as 10 one-record batches (checked on Kafka with kafka-dump-log); pre-created,
    # Kafka stores "baseOffset: 0 lastOffset: 9 count: 10".
    create_topic(broker.bootstrap, topic, partitions=1)
    p = producer(broker.bootstrap, linger_ms=10_000, batch_num_messages=1000)
    records = [dict(key=f"k{i}".encode(), value=f"v{i}".encode(), partition=0) for i in range(10)]
    reports = produce_all(p, topic, records)
    assert reports == [(None, 0, i) for i in range(10)]
    batches = reference_batches(broker, topic)
    if batches is not None:  # premise check on real Kafka: one batch holding 0..9
        assert [(b["baseOffset"], b["lastOffset"]) for b in batches] == [("0", "9")], batches
    c = consumer(broker.bootstrap)
    try:
        c.assign([TopicPartition(topic, 0, 5)])
        got = consume_n(c, 10, timeout=30, stop_at_eof=True)  # stops at end of partition
    finally:
        c.close()
    assert [(m.offset(), m.key(), m.value()) for m in got] == \
        [(i, f"k{i}".encode(), f"v{i}".encode()) for i in range(5, 10)]


def test_long_poll_delivery(broker, topic):
    create_topic(broker.bootstrap, topic, partitions=1)
    # fetch.wait.max.ms well above the 10 s bound: if the broker parks the fetch
    # but never wakes it on new data, the record cannot arrive in time.
    c = consumer(broker.bootstrap, fetch_wait_max_ms=20000, fetch_min_bytes=1)
    p = producer(broker.bootstrap, linger_ms=0)
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_END)])
        # Wait until the consumer sits at the end of the (empty) partition.
        eof = consume_n(c, 1, timeout=30, stop_at_eof=True)
        assert eof == []
        t = threading.Timer(1.0, lambda: (p.produce(topic, value=b"late", partition=0), p.flush(10)))
        t.start()
        start = time.monotonic()
        got = consume_n(c, 1, timeout=10)
        t.join()
        assert [(m.offset(), m.value()) for m in got] == [(0, b"late")], \
            f"record not delivered within 10s (waited {time.monotonic() - start:.1f}s)"
    finally:
        c.close()
