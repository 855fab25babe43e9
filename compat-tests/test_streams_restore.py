"""Kafka Streams 4.4 restoring a persistent (RocksDB) state store from its compacted changelog, the
same against every broker: java/CountRestore.java counts records per key (groupByKey().count() in
the RocksDB store "counts", processing.guarantee=at_least_once, record cache off) into an output
topic of Long counts. Streams creates the store's changelog topic <application.id>-counts-changelog
with cleanup.policy=compact; the app adds small segments (segment.ms=100) and
min.cleanable.dirty.ratio=0.01 so that the broker's log cleaner really compacts it.

What a correct broker gives: the first run's output ends with every key's count; after a clean stop
(SIGTERM), the changelog gets compacted (a reader from its start sees fewer records than its end
offset, at least one per key); the local state directory is wiped and more records are produced for
the same keys; a second run (same application.id) restores the store from the compacted changelog
(its restore listener reports restoring every changelog partition, at least one record per key) and
resumes from the committed input offsets: each key's last output count is its exact total, nothing
lost with the wiped RocksDB files and nothing counted twice.

Exercises on the broker: CreateTopics of the changelog with cleanup.policy=compact and the other
overrides (and DescribeConfigs of them), the cleaner on a topic written by Streams, ListOffsets and
Fetch of the restore consumer over a compacted log (offset gaps, reading up to the end offset),
the consumer group protocol with Streams' assignor and its offset commits."""
import random
import shutil
import subprocess
import tempfile
import struct
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka.admin import ConfigResource, ConfigSource

from compat_util import consumer, create_topic, end_offsets, produce_all, producer
from test_streams_eos import KAFKA_LIBS, LOG4J

HERE = Path(__file__).resolve().parent
PARTITIONS = 2
KEYS = [f"key-{i:02d}" for i in range(50)]
FIRST = 1000  # records in the first batch: 20 per key
SECOND = 600  # records in the second batch, keys drawn at random
COMPACTION_TIMEOUT = 90  # several log.cleaner.backoff.ms (15 s) periods

_JAVA_CLASSES = None


def java_classes():
    """Compiles java/CountRestore.java once per session against the Kafka jars (with Streams)."""
    global _JAVA_CLASSES
    if _JAVA_CLASSES is None:
        if not shutil.which("javac") or not list(KAFKA_LIBS.glob("kafka-streams-*.jar")) \
                or not list(KAFKA_LIBS.glob("rocksdbjni-*.jar")):
            pytest.fail(f"javac or the Kafka Streams / rocksdbjni jars in {KAFKA_LIBS} missing "
                        "(scripts/kafka/fetch.sh)")
        out = tempfile.mkdtemp(prefix="count-restore-java-")
        r = subprocess.run(["javac", "-J-Xmx256m", "-d", out, "-cp", f"{KAFKA_LIBS}/*",
                            str(HERE / "java" / "CountRestore.java")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        _JAVA_CLASSES = out
    return _JAVA_CLASSES


class App:
    """One run of CountRestore, its stdout and stderr (the Streams log) to work/streams-<n>.log."""

    def __init__(self, work, n, *args):
        cfg = work / "log4j2.properties"
        cfg.write_text(LOG4J)
        self.path = work / f"streams-{n}.log"
        self.log = open(self.path, "w")
        self.p = subprocess.Popen(
            ["java", "-Xmx256m", f"-Dlog4j2.configurationFile={cfg}", "-cp",
             f"{java_classes()}:{KAFKA_LIBS}/*", "CountRestore", *map(str, args)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        """SIGTERM: Streams closes cleanly (commits, writes its checkpoint). Returns the exit code."""
        if self.alive():
            self.p.terminate()
            try:
                self.p.wait(40)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(30)
        self.log.close()
        return self.p.returncode

    def lines(self, prefix):
        self.log.flush()
        return [ln for ln in self.path.read_text(errors="replace").splitlines()
                if ln.startswith(prefix)]

    def excerpt(self, n=40):
        """The state changes, restores and the last WARN/ERROR lines of the log."""
        self.log.flush()
        lines = self.path.read_text(errors="replace").splitlines()
        states = [ln for ln in lines if ln.startswith(("state ", "restore-"))]
        bad = [ln for ln in lines if " WARN " in ln or " ERROR " in ln or ln.startswith(
            ("uncaught", "org.apache", "java.", "Caused by"))]
        return f"{self.path} (exit {self.p.poll()}): {states}\n" + "\n".join(bad[-n:])


class Output:
    """A reader of the whole output topic: last[key] = its latest count, seen[key] = all of them."""

    def __init__(self, bootstrap, topic):
        self.c = consumer(bootstrap)
        self.c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        self.seen = defaultdict(list)

    def poll(self, secs):
        end = time.monotonic() + secs
        while time.monotonic() < end:
            m = self.c.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"consume error: {m.error()}")
            self.seen[m.key().decode()].append(struct.unpack(">q", m.value())[0])

    def last(self):
        return {k: v[-1] for k, v in self.seen.items()}

    def close(self):
        self.c.close()


def wait_counts(out, app, expected, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out.poll(0.5)
        if out.last() == expected:
            out.poll(2)  # nothing more comes (a count past the total would show here)
            return
        if not app.alive():
            out.poll(1)
            break
    last = out.last()
    wrong = {k: (last.get(k), expected.get(k)) for k in set(last) | set(expected)
             if last.get(k) != expected.get(k)}
    raise AssertionError(f"{what}: {len(wrong)} key(s) with a wrong last count (key: got, "
                         f"expected): {dict(sorted(wrong.items())[:10])}\n{app.excerpt()}")


def read_changelog(bootstrap, topic, ends):
    """Every record of the changelog up to its end offsets: {partition: [(offset, key)]}."""
    c = consumer(bootstrap)
    got = {p: [] for p in ends}
    try:
        c.assign([TopicPartition(topic, p, 0) for p in ends])
        pos = {p: 0 for p in ends}
        deadline = time.monotonic() + 30
        while any(pos[p] < ends[p] for p in ends) and time.monotonic() < deadline:
            m = c.poll(0.3)
            if m is None or (m.error() and m.error().code() == KafkaError._PARTITION_EOF):
                continue
            if m.error():
                raise AssertionError(f"consume error on {topic}: {m.error()}")
            got[m.partition()].append((m.offset(), m.key().decode()))
            pos[m.partition()] = m.offset() + 1
        assert all(pos[p] >= ends[p] for p in ends), f"{topic}: read to {pos}, ends {ends}"
    finally:
        c.close()
    return got


def test_kafka_streams_restores_rocksdb_store_from_compacted_changelog(broker, topic):
    B = broker.bootstrap
    src, dst = topic + "-in", topic + "-out"
    admin = create_topic(B, src, partitions=PARTITIONS)
    create_topic(B, dst, partitions=PARTITIONS)
    work = Path(tempfile.mkdtemp(prefix="streams-restore-"))
    state = work / "state"
    app_id = f"cr-{topic}"
    changelog = f"{app_id}-counts-changelog"
    app_args = (B, app_id, src, dst, state)
    rng = random.Random(7)
    first = [KEYS[i % len(KEYS)] for i in range(FIRST)]
    second = [rng.choice(KEYS) for _ in range(SECOND)]
    expected1, expected2 = Counter(first), Counter(first + second)
    p = producer(B, linger_ms=5)

    def produce(keys, start):
        reports = produce_all(p, src, [dict(key=k.encode(), value=f"v{start + i}".encode())
                                       for i, k in enumerate(keys)])
        assert all(e is None for e, _, _ in reports), [r for r in reports if r[0]][:5]

    out = Output(B, dst)
    apps = [App(work, 1, *app_args)]
    try:
        # 1. The first batch, fed in 10 slices a quarter second apart while the app runs (so the
        # changelog is appended to over a few seconds: several 100 ms segments for the cleaner).
        for at in range(0, FIRST, FIRST // 10):
            produce(first[at:at + FIRST // 10], at)
            time.sleep(0.25)
        wait_counts(out, apps[-1], dict(expected1), 90, "the first batch's counts")
        assert apps[-1].lines("restore-end") == [] or all(
            ln.endswith(" 0") for ln in apps[-1].lines("restore-end")), apps[-1].excerpt()
        assert apps[-1].stop() in (0, 143), apps[-1].excerpt()

        # 2. The changelog: created by Streams with cleanup.policy=compact (and the app's
        # overrides), and compacted by the broker's cleaner: fewer records than its end offset,
        # the latest count of every key still there.
        res = ConfigResource(ConfigResource.Type.TOPIC, changelog)
        entries = admin.describe_configs([res])[res].result(30)
        got = {k: (entries[k].value, ConfigSource(entries[k].source))
               for k in ("cleanup.policy", "segment.ms", "min.cleanable.dirty.ratio")}
        assert got == {"cleanup.policy": ("compact", ConfigSource.DYNAMIC_TOPIC_CONFIG),
                       "segment.ms": ("100", ConfigSource.DYNAMIC_TOPIC_CONFIG),
                       "min.cleanable.dirty.ratio": ("0.01", ConfigSource.DYNAMIC_TOPIC_CONFIG)}, got
        ends = {q: hw for q, (_, hw) in end_offsets(admin, changelog, range(PARTITIONS)).items()}
        # Cache off: one changelog record per input record.
        assert sum(ends.values()) == FIRST, ends
        deadline, recs = time.monotonic() + COMPACTION_TIMEOUT, None
        while time.monotonic() < deadline:
            recs = read_changelog(B, changelog, ends)
            if sum(map(len, recs.values())) < FIRST:
                break
            # The cleaner cleans the rolled segments (appends more than segment.ms after a
            # segment's first record rolled it during the sliced feed), never the active one.
            time.sleep(2)
        n = sum(map(len, recs.values()))
        assert n < FIRST, f"no compaction of {changelog} within {COMPACTION_TIMEOUT}s ({n} records)"
        assert {k for r in recs.values() for _, k in r} == set(KEYS)
        print(f"{broker.name}: changelog compacted to {n} of {FIRST} records "
              f"({COMPACTION_TIMEOUT - (deadline - time.monotonic()):.1f}s after the first stop)")

        # 3. Local state wiped; the second batch; a new run restores the store from the changelog.
        shutil.rmtree(state)
        produce(second, FIRST)
        apps.append(App(work, 2, *app_args))
        wait_counts(out, apps[-1], dict(expected2), 120,
                    "the exact totals after the restore from the changelog")
        ended = apps[-1].lines("restore-end")
        restored = {ln.split()[1]: int(ln.split()[2]) for ln in ended}
        assert set(restored) == {f"{changelog}-{q}" for q in range(PARTITIONS)}, apps[-1].excerpt()
        assert sum(restored.values()) >= len(KEYS), (restored, apps[-1].excerpt())
        print(f"{broker.name}: restored {restored}; final counts of {len(KEYS)} keys, "
              f"{FIRST + SECOND} records, exact")
        assert apps[-1].stop() in (0, 143), apps[-1].excerpt()
    finally:
        for a in apps:
            a.stop()
        out.close()
    shutil.rmtree(work, ignore_errors=True)
