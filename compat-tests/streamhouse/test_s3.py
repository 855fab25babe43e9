"""StreamHouse in S3 mode against a real S3 HTTP endpoint on loopback (scripts/s3: moto served over
HTTP): round trips with librdkafka and the Java tools, a restart, store faults under an idempotent
producer, the PUT count staying flat as partitions grow, and compaction plus retention shrinking the
bucket without changing what consumers read."""
import os
import re
import subprocess
import tempfile
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from broker_process import BrokerProcess, free_port
from faulty_proxy import FaultyProxy

REPO = Path(__file__).resolve().parents[2]
S3 = REPO / "scripts" / "s3"


@pytest.fixture(scope="module")
def s3():
    """A fresh loopback S3 server for this module; or, with STREAMHOUSE_TEST_S3_ENDPOINT set (e.g. a
    MinIO), that server, with credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket
    from S3_BUCKET."""
    external = os.environ.get("STREAMHOUSE_TEST_S3_ENDPOINT")
    if external:
        port = int(external.rsplit(":", 1)[1])
        env = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET")}
        env.update(AWS_ENDPOINT_URL=external, AWS_REGION="us-east-1", AWS_ALLOW_HTTP="true")
        yield {"env": env, "port": port, "dir": None}
        return
    port = free_port()
    d = tempfile.mkdtemp(prefix="streamhouse-s3-")
    out = subprocess.run([str(S3 / "start.sh"), "--port", str(port), "--dir", d],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    exports = dict(re.findall(r"export (\w+)=(\S*)", out.stdout))
    yield {"env": exports, "port": port, "dir": d}
    subprocess.run([str(S3 / "stop.sh"), "--port", str(port), "--dir", d, "--purge"], capture_output=True)


def s3_broker(s3, tmp, prefix, endpoint=None, flush_ms=20, extra=(), port=None):
    Path(tmp).mkdir(parents=True, exist_ok=True)
    env = dict(s3["env"])
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    os.environ.update(env)  # the broker process inherits them
    b = BrokerProcess(Path(tmp) / "data", port or free_port(),
                      ["--storage", f"s3://{env['S3_BUCKET']}/{prefix}", "--flush-interval-ms", str(flush_ms), *extra])
    b.start()
    return b


def admin_create(bootstrap, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


def read_all(bootstrap, topic, partitions, expected, timeout=90):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "s3-check", "enable.auto.commit": False,
                  "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    out, eof, deadline = [], set(), time.monotonic() + timeout
    while time.monotonic() < deadline and (len(out) < expected or len(eof) < partitions):
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                eof.add(m.partition())
                continue
            raise AssertionError(m.error())
        eof.discard(m.partition())
        out.append((m.partition(), m.offset(), m.key(), m.value()))
    c.close()
    return out


def produce(bootstrap, topic, n, partitions, idempotent=True, **conf):
    acked = {}

    def cb(err, msg):
        if err is None:
            acked[msg.value()] = (msg.partition(), msg.offset())

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": idempotent, "acks": "all",
                  "linger.ms": 5, "message.timeout.ms": 120000, **conf})
    for i in range(n):
        p.produce(topic, key=b"k%d" % i, value=b"v%07d" % i, partition=i % partitions, on_delivery=cb)
        if i % 500 == 0:
            p.poll(0)
    assert p.flush(180) == 0
    return acked


def test_s3_round_trip_restart_and_java_tools(s3):
    with tempfile.TemporaryDirectory() as tmp:
        b = s3_broker(s3, tmp, f"rt-{uuid.uuid4().hex[:6]}")
        try:
            topic = "s3-rt"
            admin_create(b.bootstrap, topic, 3)
            acked = produce(b.bootstrap, topic, 3000, 3)
            assert len(acked) == 3000
            first = read_all(b.bootstrap, topic, 3, 3000)
            assert sorted(v for (_, _, _, v) in first) == sorted(acked)
            kafka_sh = str(REPO / "scripts" / "kafka" / "kafka.sh")
            lines = "\n".join(f"java-{i}" for i in range(50)) + "\n"
            r = subprocess.run([kafka_sh, "kafka-console-producer", "--bootstrap-server", b.bootstrap, "--topic", "s3-java"],
                               input=lines, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            b.stop()
            b.start()  # same metadata and bucket: everything acknowledged is served (cold cache: ranged GETs)
            again = read_all(b.bootstrap, topic, 3, 3000)
            assert sorted(again) == sorted(first)
            r = subprocess.run([kafka_sh, "kafka-console-consumer", "--bootstrap-server", b.bootstrap, "--topic", "s3-java",
                                "--partition", "0", "--offset", "earliest", "--max-messages", "50"],
                               capture_output=True, text=True, timeout=120)
            assert r.stdout.split() == lines.split(), r.stderr
        finally:
            b.stop()


def test_s3_faults_lose_nothing_acknowledged(s3):
    """500s, 503s, slow responses and 10 s of the store being down while an idempotent acks=all producer
    runs: afterwards every acknowledged record is present exactly once and in order."""
    proxy = FaultyProxy("127.0.0.1", s3["port"])
    with tempfile.TemporaryDirectory() as tmp:
        b = s3_broker(s3, tmp, f"faults-{uuid.uuid4().hex[:6]}", endpoint=f"http://127.0.0.1:{proxy.port}")
        try:
            topic, partitions = "s3-faults", 2
            admin_create(b.bootstrap, topic, partitions)
            acked, failed = {}, []

            def cb(err, msg):
                if err is None:
                    acked[msg.value()] = (msg.partition(), msg.offset())
                else:
                    failed.append(err)

            p = Producer({"bootstrap.servers": b.bootstrap, "enable.idempotence": True, "acks": "all",
                          "linger.ms": 5, "message.timeout.ms": 180000, "request.timeout.ms": 60000})
            schedule = [("ok", 0, 0, 3), ("500", 0.3, 0, 3), ("503", 0.5, 0, 3), ("slow", 1, 1.5, 3),
                        ("down", 1, 0, 10), ("ok", 0, 0, 4)]
            i = 0
            for mode, rate, delay, seconds in schedule:
                proxy.set(mode, rate, delay)
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    for _ in range(20):
                        p.produce(topic, value=b"f%07d" % i, partition=i % partitions, on_delivery=cb)
                        i += 1
                    p.poll(0.05)
            proxy.set("ok")
            assert p.flush(240) == 0
            assert proxy.counts["injected"] > 0, "faults were really injected"
            records = read_all(b.bootstrap, topic, partitions, len(acked))
            seen = {}
            for part, off, _, v in records:
                assert v not in seen, f"{v!r} stored twice"
                seen[v] = (part, off)
            for v, where in acked.items():
                assert seen.get(v) == where, f"acknowledged {v!r} at {where}, found {seen.get(v)}"
            for part in range(partitions):
                vals = [v for (pp, _, _, v) in sorted(records) if pp == part]
                assert vals == sorted(vals), "in order within each partition"
            print(f"sent={i} acked={len(acked)} failed={len(failed)} proxy={proxy.counts}")
        finally:
            b.stop()
            proxy.close()


def count_puts(s3, prefix):
    """Segment PUTs so far: with compaction off nothing is deleted, so one object per PUT."""
    return len(list_objects(s3, prefix))


def test_s3_put_count_does_not_grow_with_partitions(s3):
    """The same load costs about the same number of PUTs with 1, 100 and 1,000 partitions: one object
    per flush, not per partition. The load is 30 rounds of 100 records spread over every partition,
    each round acknowledged before the next, so its duration does not depend on the partition count."""
    counts = {}
    rounds = 30
    with tempfile.TemporaryDirectory() as tmp:
        for partitions in (1, 100, 1000):
            prefix = f"puts-{partitions}-{uuid.uuid4().hex[:6]}"
            # The S3-mode default window. librdkafka sends one ProduceRequest per partition: a round to
            # 1,000 partitions is many pipelined requests, which must still make one flush.
            b = s3_broker(s3, Path(tmp) / str(partitions), prefix, flush_ms=20,
                          extra=["--compaction-interval-ms", "0"])
            try:
                topic = f"puts-{partitions}"
                admin_create(b.bootstrap, topic, partitions)
                p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 5})
                p.produce(topic, value=b"warm-up", partition=0)  # metadata and connections first
                assert p.flush(60) == 0
                before = count_puts(s3, prefix)
                for r in range(rounds):
                    for i in range(100):
                        p.produce(topic, value=b"x" * 100, partition=(r * 100 + i) % partitions)
                    assert p.flush(60) == 0
                counts[partitions] = count_puts(s3, prefix) - before
            finally:
                b.stop()
    print(f"PUTs for {rounds} rounds, by partition count: {counts}")
    base = counts[1]
    assert base >= rounds * 0.9, counts
    for n in (100, 1000):
        assert abs(counts[n] - base) <= max(0.1 * base, 1), counts


def list_objects(s3, prefix):
    """Keys under `prefix/segments/` (S3 ListObjectsV2, unsigned: the loopback server does not check)."""
    env, keys, token = s3["env"], [], None
    while True:
        url = f"{env['AWS_ENDPOINT_URL']}/{env['S3_BUCKET']}?list-type=2&prefix={prefix}/segments/"
        if token:
            url += "&continuation-token=" + urllib.parse.quote(token)
        root = ET.fromstring(urllib.request.urlopen(url, timeout=30).read())
        ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
        keys += [k.text for k in root.iter(f"{ns}Key")]
        token = root.findtext(f"{ns}NextContinuationToken")
        if not token:
            return keys


def wait_for(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_s3_compaction_and_retention(s3):
    """Flush objects (one per flush, every partition mixed in) are compacted into one object per
    partition with reads unchanged, through a restart; then retention.ms drops the old records: the
    earliest offset moves, their objects are deleted, the newer records stay."""
    partitions, rounds, per_round = 3, 30, 30
    hour_ago_ms = int(time.time() * 1000) - 3_600_000
    with tempfile.TemporaryDirectory() as tmp:
        prefix = f"compact-{uuid.uuid4().hex[:6]}"
        port = free_port()
        b = s3_broker(s3, tmp, prefix, flush_ms=5, extra=["--compaction-interval-ms", "0"], port=port)
        topic = "s3-compact"
        try:
            admin_create(b.bootstrap, topic, partitions)
            p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 2})
            for r in range(rounds):
                for i in range(per_round):
                    n = r * per_round + i
                    p.produce(topic, value=b"c%06d" % n, partition=n % partitions, timestamp=hour_ago_ms)
                assert p.flush(60) == 0
            before = read_all(b.bootstrap, topic, partitions, rounds * per_round)
            flush_objects = len(list_objects(s3, prefix))
            assert flush_objects >= rounds, flush_objects
        finally:
            b.stop()
        # Restart with compaction on: the flush objects become one object per partition.
        b = s3_broker(s3, tmp, prefix, flush_ms=5, port=port, extra=[
            "--compaction-interval-ms", "300", "--compaction-min-age-ms", "0", "--file-delete-delay-ms", "300",
            "--retention-check-interval-ms", "300"])
        try:
            wait_for("compaction", lambda: len(list_objects(s3, prefix)) == partitions)
            after = read_all(b.bootstrap, topic, partitions, rounds * per_round)
            assert sorted(after) == sorted(before), "reads identical after compaction"
            # Newer records, then a retention that only the hour-old ones exceed.
            p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 2})
            for part in range(partitions):
                p.produce(topic, value=b"new-%d" % part, partition=part)
            assert p.flush(60) == 0
            admin = AdminClient({"bootstrap.servers": b.bootstrap})
            from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource
            res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
                ConfigEntry("retention.ms", "600000", incremental_operation=AlterConfigOpType.SET)])
            for f in admin.incremental_alter_configs([res]).values():
                f.result(30)
            old_per_partition = rounds * per_round // partitions
            c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "s3-retention"})

            def earliest_moved():
                return all(c.get_watermark_offsets(TopicPartition(topic, part), timeout=10)[0] == old_per_partition
                           for part in range(partitions))
            wait_for("retention", earliest_moved)
            c.close()
            # The compacted objects held only old records: deleted; what holds the new ones remains.
            wait_for("old objects deleted", lambda: 1 <= len(list_objects(s3, prefix)) <= partitions)
            kept = read_all(b.bootstrap, topic, partitions, partitions)
            assert sorted((part, off, v) for part, off, _, v in kept) == [
                (part, old_per_partition, b"new-%d" % part) for part in range(partitions)]
            kafka_sh = str(REPO / "scripts" / "kafka" / "kafka.sh")
            r = subprocess.run([kafka_sh, "kafka-get-offsets", "--bootstrap-server", b.bootstrap, "--topic", topic,
                                "--time", "earliest"], capture_output=True, text=True, timeout=120)
            assert sorted(r.stdout.split()) == [f"{topic}:{part}:{old_per_partition}" for part in range(partitions)], r
            print(f"flush objects={flush_objects} -> {partitions} after compaction")
        finally:
            b.stop()
