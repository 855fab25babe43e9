"""Apache Kafka's own Java CLI tools, kcat (librdkafka 2.0.2) and kafka-python."""
import re
import shutil
import subprocess

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from compat_util import kafka_tool


def test_java_console_producer_consumer(broker, topic):
    B = broker.bootstrap
    lines = [f"line {i} ünïcode" for i in range(20)] + ["", "last"]
    r = kafka_tool("kafka-console-producer", "--bootstrap-server", B, "--topic", topic,
                   input="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    # --partition means assign(), no consumer group involved.
    r = kafka_tool("kafka-console-consumer", "--bootstrap-server", B, "--topic", topic,
                   "--partition", 0, "--offset", "earliest", "--max-messages", len(lines),
                   "--timeout-ms", 60000)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:-1] == lines
    assert f"Processed a total of {len(lines)} messages" in r.stderr

    r = kafka_tool("kafka-get-offsets", "--bootstrap-server", B, "--topic", topic, "--time", -1)
    assert r.stdout.split() == [f"{topic}:0:{len(lines)}"], r.stdout + r.stderr


def test_java_producer_perf_test_idempotent(broker, topic):
    B = broker.bootstrap
    r = kafka_tool("kafka-producer-perf-test", "--topic", topic, "--num-records", 100000,
                   "--record-size", 100, "--throughput", -1, "--producer-props",
                   f"bootstrap.servers={B}", "acks=all", "enable.idempotence=true", timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert re.search(r"^100000 records sent,", r.stdout, re.M), out
    # Warnings (e.g. the first metadata reply for the auto-created topic) are fine.
    assert not re.search(r"\bERROR\b|Exception", out), out
    r = kafka_tool("kafka-get-offsets", "--bootstrap-server", B, "--topic", topic, "--time", -1)
    assert r.stdout.split() == [f"{topic}:0:100000"], r.stdout + r.stderr


def kcat(*args, input=None, timeout=60):
    if not shutil.which("kcat"):
        pytest.fail("kcat not installed (scripts/install-deps.sh)")
    return subprocess.run(["kcat", *map(str, args)], input=input, capture_output=True,
                          text=True, timeout=timeout)


def test_kcat_produce_consume_metadata(broker, topic):
    B = broker.bootstrap
    lines = [f"key{i}:value {i}" for i in range(100)]
    r = kcat("-b", B, "-P", "-t", topic, "-K:", input="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    r = kcat("-b", B, "-C", "-t", topic, "-o", "beginning", "-e", "-f", r"%p|%o|%k|%s\n")
    assert r.returncode == 0, r.stderr
    got = r.stdout.splitlines()
    assert got == [f"0|{i}|key{i}|value {i}" for i in range(100)], r.stdout[:2000]

    r = kcat("-b", B, "-L")
    assert r.returncode == 0, r.stderr
    assert re.search(rf"^\s+broker \d+ at {re.escape(B)}\b", r.stdout, re.M), r.stdout
    assert f'topic "{topic}" with 1 partitions:' in r.stdout, r.stdout
    assert re.search(r"partition 0, leader \d+, replicas: \d+, isrs: \d+", r.stdout), r.stdout


def test_kafka_python_roundtrip(broker, topic):
    B = broker.bootstrap
    p = KafkaProducer(bootstrap_servers=B, acks="all", request_timeout_ms=30000)
    futs = [p.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=0)
            for i in range(100)]
    p.flush(60)
    metas = [f.get(timeout=30) for f in futs]
    assert [m.offset for m in metas] == list(range(100))
    p.close()

    # No group_id: plain assign/seek, no coordinator (StreamHouse has no groups).
    c = KafkaConsumer(bootstrap_servers=B, group_id=None, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        got = []
        for _ in range(60):
            for recs in c.poll(timeout_ms=1000).values():
                got.extend(recs)
            if len(got) >= 100:
                break
        assert [(r.offset, r.key, r.value) for r in got] == \
            [(i, f"k{i}".encode(), f"v{i}".encode()) for i in range(100)]
    finally:
        c.close()
