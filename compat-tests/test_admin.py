"""Topic administration: Java kafka-topics, kafka-python and confluent admin clients."""
import re

import pytest
from confluent_kafka.admin import AdminClient
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import InvalidPartitionsError

from compat_util import kafka_tool, wait_until


def test_kafka_topics_lifecycle(broker, topic):
    B = broker.bootstrap
    r = kafka_tool("kafka-topics", "--bootstrap-server", B, "--create", "--topic", topic,
                   "--partitions", 3)
    assert r.returncode == 0, r.stderr
    assert f"Created topic {topic}." in r.stdout

    r = kafka_tool("kafka-topics", "--bootstrap-server", B, "--list")
    assert r.returncode == 0, r.stderr
    assert topic in r.stdout.split()

    r = kafka_tool("kafka-topics", "--bootstrap-server", B, "--describe", "--topic", topic)
    assert r.returncode == 0, r.stderr
    assert re.search(rf"Topic: {re.escape(topic)}\s+TopicId: \S+\s+PartitionCount: 3\s", r.stdout), r.stdout
    leaders = dict(re.findall(r"Partition: (\d+)\s+Leader: (-?\d+)", r.stdout))
    assert sorted(leaders) == ["0", "1", "2"], r.stdout
    # The leader shown must be a live broker from the cluster metadata.
    node_ids = {str(b) for b in AdminClient({"bootstrap.servers": B}).list_topics(timeout=10).brokers}
    assert set(leaders.values()) <= node_ids, (leaders, node_ids)

    # Creating it again: TOPIC_ALREADY_EXISTS from the broker.
    r = kafka_tool("kafka-topics", "--bootstrap-server", B, "--create", "--topic", topic,
                   "--partitions", 3)
    assert r.returncode != 0
    assert f"Topic '{topic}' already exists" in r.stdout + r.stderr

    r = kafka_tool("kafka-topics", "--bootstrap-server", B, "--delete", "--topic", topic)
    assert r.returncode == 0, r.stderr
    # Deletion propagates asynchronously: wait (bounded) until it is gone.
    wait_until(lambda: topic not in kafka_tool("kafka-topics", "--bootstrap-server", B,
                                               "--list").stdout.split(),
               60, f"{topic} to disappear from --list")


def test_kafka_topics_zero_partitions_rejected(broker, topic):
    # kafka-topics validates this client-side (never reaches the broker) ...
    r = kafka_tool("kafka-topics", "--bootstrap-server", broker.bootstrap, "--create",
                   "--topic", topic, "--partitions", 0)
    assert r.returncode != 0
    assert "partitions must be greater than 0" in r.stdout + r.stderr


def test_create_topics_zero_partitions_broker_error(broker, topic):
    # ... so also send CreateTopics(num_partitions=0) to the broker itself:
    # Kafka answers INVALID_PARTITIONS (37) and creates nothing.
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    try:
        with pytest.raises(InvalidPartitionsError):
            a.create_topics([NewTopic(topic, 0, 1)])
        assert topic not in a.list_topics()
    finally:
        a.close()


def test_alter_partitions_and_topic_configs(broker, topic):
    """kafka-topics --alter --partitions and kafka-configs --alter, then --describe shows both."""
    B = broker.bootstrap
    r = kafka_tool("kafka-topics", "--bootstrap-server", B, "--create", "--topic", topic, "--partitions", 2,
                   "--config", "retention.ms=3600000")
    assert r.returncode == 0, r.stderr
    r = kafka_tool("kafka-topics", "--bootstrap-server", B, "--alter", "--topic", topic, "--partitions", 5)
    assert r.returncode == 0, r.stderr
    r = kafka_tool("kafka-topics", "--bootstrap-server", B, "--alter", "--topic", topic, "--partitions", 3)
    assert r.returncode != 0 and "would not be an increase" in r.stdout + r.stderr, r.stdout + r.stderr
    r = kafka_tool("kafka-configs", "--bootstrap-server", B, "--alter", "--entity-type", "topics",
                   "--entity-name", topic, "--add-config", "max.message.bytes=2000000,cleanup.policy=compact")
    assert r.returncode == 0, r.stderr
    r = kafka_tool("kafka-configs", "--bootstrap-server", B, "--alter", "--entity-type", "topics",
                   "--entity-name", topic, "--delete-config", "retention.ms")
    assert r.returncode == 0, r.stderr
    r = kafka_tool("kafka-topics", "--bootstrap-server", B, "--describe", "--topic", topic)
    assert re.search(r"PartitionCount: 5\s", r.stdout), r.stdout
    configs = dict(kv.split("=", 1) for kv in re.search(r"Configs: ?(\S*)", r.stdout).group(1).split(",") if kv)
    assert configs.get("max.message.bytes") == "2000000" and configs.get("cleanup.policy") == "compact", r.stdout
    assert "retention.ms" not in configs, r.stdout
    r = kafka_tool("kafka-configs", "--bootstrap-server", B, "--alter", "--entity-type", "topics",
                   "--entity-name", topic, "--add-config", "no.such.config=1")
    assert r.returncode != 0


def test_delete_records_moves_the_earliest_offset(broker, topic, tmp_path):
    """kafka-delete-records, then kafka-get-offsets --time -2 and a consumer from earliest follow it."""
    B = broker.bootstrap
    r = kafka_tool("kafka-topics", "--bootstrap-server", B, "--create", "--topic", topic, "--partitions", 1)
    assert r.returncode == 0, r.stderr
    lines = [f"r{i}" for i in range(30)]
    r = kafka_tool("kafka-console-producer", "--bootstrap-server", B, "--topic", topic, input="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    spec = tmp_path / "delete.json"
    spec.write_text('{"partitions": [{"topic": "%s", "partition": 0, "offset": 30}], "version": 1}' % topic)
    r = kafka_tool("kafka-delete-records", "--bootstrap-server", B, "--offset-json-file", spec)
    assert r.returncode == 0 and "low_watermark: 30" in r.stdout, r.stdout + r.stderr
    r = kafka_tool("kafka-get-offsets", "--bootstrap-server", B, "--topic", topic, "--time", "-2")
    assert r.stdout.split() == [f"{topic}:0:30"], r.stdout + r.stderr
    spec.write_text('{"partitions": [{"topic": "%s", "partition": 0, "offset": 99}], "version": 1}' % topic)
    r = kafka_tool("kafka-delete-records", "--bootstrap-server", B, "--offset-json-file", spec)
    assert "OffsetOutOfRange" in r.stdout + r.stderr, r.stdout + r.stderr


def test_kafka_log_dirs_describe(broker, topic):
    """kafka-log-dirs --describe: one directory holding the topic's partitions, with sizes (bytes on
    disk or in the object store: only "some" and "none" compare across brokers), no lag, none future."""
    import json
    B = broker.bootstrap
    r = kafka_tool("kafka-topics", "--bootstrap-server", B, "--create", "--topic", topic, "--partitions", 2)
    assert r.returncode == 0, r.stderr
    # Keyed to partition 0 only (the console producer's default partitioner hashes the key).
    r = kafka_tool("kafka-console-producer", "--bootstrap-server", B, "--topic", topic,
                   "--property", "parse.key=true", "--property", "key.separator=:",
                   input="".join(f"k:{i}\n" for i in range(50)))
    assert r.returncode == 0, r.stderr
    r = kafka_tool("kafka-log-dirs", "--bootstrap-server", B, "--describe", "--topic-list", topic)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    dirs = [d for b in doc["brokers"] for d in b["logDirs"]]
    assert dirs and all(d["error"] is None and d["logDir"].startswith("/") for d in dirs), doc
    parts = {p["partition"]: p for d in dirs for p in d["partitions"]}
    assert sorted(parts) == [f"{topic}-0", f"{topic}-1"], doc
    sizes = sorted(p["size"] for p in parts.values())
    # One partition holds the 50 records, the other none.
    assert sizes[0] == 0 and sizes[1] > 0, doc
    assert all(p["offsetLag"] == 0 and p["isFuture"] is False for p in parts.values()), doc
