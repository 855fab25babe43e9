"""Client helpers shared by the scenarios. Every wait has a deadline so a broken
broker makes a test fail, never hang; deadlines are liveness bounds, not timing claims."""
import os
import subprocess
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO / "scripts" / "kafka" / "kafka.sh"


def kafka_tool(tool, *args, input=None, timeout=180):
    """Run an Apache Kafka CLI tool (kafka-topics, ...) via scripts/kafka/kafka.sh."""
    env = dict(os.environ)
    env.setdefault("KAFKA_HEAP_OPTS", "-Xmx256M")  # small CI machines run several JVMs
    return subprocess.run([str(KAFKA_SH), tool, *map(str, args)], input=input,
                          capture_output=True, text=True, timeout=timeout, env=env)


def producer(bootstrap, **conf):
    c = {"bootstrap.servers": bootstrap, "message.timeout.ms": 30000}
    c.update({k.replace("_", "."): v for k, v in conf.items()})
    return Producer(c)


def consumer(bootstrap, **conf):
    # librdkafka insists on a group.id for Consumer, but we never subscribe or
    # commit (StreamHouse has no consumer groups yet): plain assign() only.
    c = {"bootstrap.servers": bootstrap, "group.id": "compat-unused",
         "enable.auto.commit": False, "enable.auto.offset.store": False,
         "enable.partition.eof": True}
    c.update({k.replace("_", "."): v for k, v in conf.items()})
    return Consumer(c)


def produce_all(p, topic, records, timeout=60):
    """records: dicts of produce() kwargs. Returns delivery reports in produce order
    as (error, partition, offset)."""
    reports = [None] * len(records)

    def cb(i):
        # `msg is not None`, not `msg`: a Message with an empty value is falsy (len 0).
        return lambda err, msg: reports.__setitem__(
            i, (err,) + ((msg.partition(), msg.offset()) if msg is not None else (None, None)))

    for i, r in enumerate(records):
        while True:
            try:
                p.produce(topic, on_delivery=cb(i), **r)
                break
            except BufferError:  # local queue full: let deliveries drain
                p.poll(0.1)
    # Short flushes in a loop: one long flush() call in C would not see Ctrl-C.
    deadline = time.monotonic() + timeout
    while (remaining := p.flush(1)) and time.monotonic() < deadline:
        pass
    assert remaining == 0, f"{remaining} message(s) still undelivered after {timeout}s"
    return reports


def consume_n(c, n, timeout=60, stop_at_eof=False):
    """Poll an assigned consumer until n messages (or EOF if stop_at_eof)."""
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                if stop_at_eof:
                    break
                continue
            raise AssertionError(f"consume error: {m.error()}")
        out.append(m)
    return out


def read_partition(bootstrap, topic, n, partition=0, offset=0, timeout=60, stop_at_eof=False):
    """stop_at_eof=True: return at the end of the partition (for "nothing more"
    checks, with everything acknowledged before reading) instead of waiting out timeout."""
    c = consumer(bootstrap)
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        return consume_n(c, n, timeout, stop_at_eof)
    finally:
        c.close()


def create_topic(bootstrap, topic, partitions=1, timeout=30):
    a = AdminClient({"bootstrap.servers": bootstrap})
    fut = a.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic]
    fut.result(timeout)
    wait_for_topic(a, topic, partitions, timeout)
    return a


def wait_for_topic(admin, topic, partitions, timeout=30):
    """Metadata propagates asynchronously after CreateTopics: wait until every
    partition has a leader."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # list_topics() without a topic never asks for auto-creation.
        md = admin.list_topics(timeout=10).topics.get(topic)
        if md and not md.error and len(md.partitions) == partitions and \
                all(pm.leader >= 0 for pm in md.partitions.values()):
            return md
        time.sleep(0.2)
    raise AssertionError(f"topic {topic} not ready with {partitions} partitions in {timeout}s")


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def reference_batches(broker, topic, partition=0):
    """Record batches as Kafka stored them, via kafka-dump-log on the reference
    broker's log dir (run.sh exports COMPAT_KAFKA_LOG_DIR). Used only to check a
    scenario's own premise (e.g. "these 10 records really are one batch") on real
    Kafka; returns None for other brokers or when the log dir is unknown."""
    log_dir = os.environ.get("COMPAT_KAFKA_LOG_DIR")
    if broker.name != os.environ.get("COMPAT_REFERENCE", "kafka") or not log_dir:
        return None
    seg = Path(log_dir) / f"{topic}-{partition}" / "00000000000000000000.log"
    r = kafka_tool("kafka-dump-log", "--files", seg)
    assert r.returncode == 0, r.stderr
    batches = []
    for line in r.stdout.splitlines():
        if line.startswith("baseOffset:"):
            toks = line.split()
            batches.append({toks[i].rstrip(":"): toks[i + 1] for i in range(0, len(toks) - 1, 2)
                            if toks[i].endswith(":")})
    return batches


def end_offsets(admin, topic, partitions):
    """{partition: (last stable offset, high watermark)} from ListOffsets with both isolation levels."""
    from confluent_kafka import IsolationLevel, TopicPartition
    from confluent_kafka.admin import OffsetSpec
    out = {}
    for iso in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED):
        fs = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in partitions},
                                isolation_level=iso, request_timeout=15)
        for tp, f in fs.items():
            out.setdefault(tp.partition, []).append(f.result().offset)
    return {p: tuple(v) for p, v in out.items()}


def wait_settled(admin, topic, partitions, timeout=60):
    """Until no transaction is open on the partitions (LSO == high watermark); returns the ends. A
    broker not answering yet (just restarted) is asked again."""
    from confluent_kafka import KafkaException
    ends, deadline = {}, time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ends = end_offsets(admin, topic, partitions)
        except KafkaException:
            ends = {}
        if ends and all(lso == hw for lso, hw in ends.values()):
            return ends
        time.sleep(0.2)
    raise AssertionError(f"the LSO of {topic} did not reach the high watermark in {timeout}s: {ends}")
