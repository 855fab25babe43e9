"""Kafka Streams 4.4 with processing.guarantee=exactly_once_v2, the same against every broker: a word
count (java/WordCountEos.java: input -> words -> groupBy word, a repartition topic -> count in an
in-memory store with its changelog -> output topic of Long counts), one transaction per 200 ms
commit, record cache off so every count update is written.

What a read_committed reader of the output sees: every word's last count is the number of times the
word was produced, and no count is ever above it (nothing counted twice); in fact each word's counts
are exactly 1, 2, ..., N in order. The same after the Streams process is killed with SIGKILL in the
middle of a second batch (its open transaction is left for the broker to abort: the restarted
instance has a new transactional.id, its in-memory state has no persistent process id) and started
again with the same application.id: it restores the count store from the changelog as committed and
resumes from the committed input offsets, so the counts still come out once each.

Exercises on the broker: the consumer group protocol with Streams' assignor, internal topic creation,
InitProducerId / AddPartitionsToTxn / AddOffsetsToTxn / TxnOffsetCommit / EndTxn across the
repartition, changelog and output topics, read_committed fetches (LSO), OffsetFetch with
require_stable, and the broker aborting the killed instance's transaction after its timeout."""
import os
import random
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, TopicPartition

from compat_util import consumer, create_topic, produce_all, producer

HERE = Path(__file__).resolve().parent
# Where scripts/kafka/fetch.sh puts the Kafka jars (scripts/kafka/common.sh's defaults).
KAFKA_LIBS = Path(os.environ.get("KAFKA_LIBS") or Path(
    os.environ.get("KAFKA_HOME_CACHE")
    or Path.home() / ".cache/streamhouse-kafka" / os.environ.get("KAFKA_VERSION", "4.4.0")) / "libs")

PARTITIONS = 2
VOCAB = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
         "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu kafka "
         "stream house broker topic partition offset record batch commit abort marker fence "
         "epoch").split()
LINES = 2000  # per batch

_JAVA_CLASSES = None


def java_classes():
    """Compiles java/WordCountEos.java once per session against the Kafka jars (with Streams)."""
    global _JAVA_CLASSES
    if _JAVA_CLASSES is None:
        if not shutil.which("javac") or not list(KAFKA_LIBS.glob("kafka-streams-*.jar")):
            pytest.fail(f"javac or the Kafka Streams jar in {KAFKA_LIBS} missing "
                        "(scripts/kafka/fetch.sh)")
        out = tempfile.mkdtemp(prefix="wordcount-eos-java-")
        r = subprocess.run(["javac", "-d", out, "-cp", f"{KAFKA_LIBS}/*",
                            str(HERE / "java" / "WordCountEos.java")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        _JAVA_CLASSES = out
    return _JAVA_CLASSES


def text(seed, n):
    rng = random.Random(seed)
    return [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(3, 8))) for _ in range(n)]


def words(lines):
    return Counter(w for line in lines for w in line.split())


# Kafka's INFO log of the app (client configs, rebalances, transaction and task errors) to the log
# file beside its "state ..." lines: what to read when a broker does not satisfy Streams.
LOG4J = """status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p [%t] %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = OUT
"""


class App:
    """One run of WordCountEos, its stdout and stderr (the Streams log) to work/streams-<n>.log."""

    def __init__(self, work, n, *args):
        cfg = work / "log4j2.properties"
        cfg.write_text(LOG4J)
        self.path = work / f"streams-{n}.log"
        self.log = open(self.path, "w")
        self.p = subprocess.Popen(
            ["java", "-Xmx256m", f"-Dlog4j2.configurationFile={cfg}", "-cp",
             f"{java_classes()}:{KAFKA_LIBS}/*", "WordCountEos", *map(str, args)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def alive(self):
        return self.p.poll() is None

    def kill(self):  # SIGKILL: no close(), no LeaveGroup, the open transaction left as it is
        self.p.kill()
        self.p.wait(30)
        self.log.close()

    def stop(self):
        if self.alive():
            self.p.terminate()
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(30)
        self.log.close()

    def excerpt(self, n=40):
        """The state changes and the last WARN/ERROR lines (with stack trace heads) of the log."""
        self.log.flush()
        lines = self.path.read_text(errors="replace").splitlines()
        states = [ln for ln in lines if ln.startswith("state ")]
        bad = [ln for ln in lines if " WARN " in ln or " ERROR " in ln or ln.startswith(
            ("uncaught", "org.apache", "java.", "Caused by"))]
        return (f"{self.path} (exit {self.p.poll()}): states {states}\n" + "\n".join(bad[-n:]))


class Output:
    """A read_committed reader of the whole output topic; seen[word] = its counts in offset order
    (a word is always in the same partition)."""

    def __init__(self, bootstrap, topic):
        self.c = consumer(bootstrap, isolation_level="read_committed")
        self.c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        self.seen = defaultdict(list)
        self.records = 0

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
            self.records += 1

    def last(self):
        return {w: v[-1] for w, v in self.seen.items()}

    def close(self):
        self.c.close()


def wait_for(out, app, pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out.poll(0.5)
        if pred():
            return
        if not app.alive():
            out.poll(1)
            raise AssertionError(f"the Streams app exited waiting for {what}\n{app.excerpt()}")
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                         f"{out.records} output records read\n{app.excerpt()}")


def check_exactly_once(out, expected, app):
    """No count above the expected one, and every word's counts are 1..N, each once, in order."""
    over = {w: (max(v), expected.get(w, 0)) for w, v in out.seen.items()
            if max(v) > expected.get(w, 0)}
    assert not over, f"counted twice (word: highest count read, expected): {over}\n{app.excerpt()}"
    wrong = {w: v for w, v in out.seen.items() if v != list(range(1, expected[w] + 1))}
    assert not wrong, "counts not exactly 1..N: " + "; ".join(
        f"{w} (N={expected[w]}): {len(v)} values, first out of place at "
        f"{next(i for i, (a, b) in enumerate(zip(v + [None], range(1, len(v) + 2))) if a != b)}"
        for w, v in sorted(wrong.items()))


def test_kafka_streams_word_count_exactly_once(broker, topic):
    B = broker.bootstrap
    src, dst = topic + "-in", topic + "-out"
    create_topic(B, src, partitions=PARTITIONS)
    create_topic(B, dst, partitions=PARTITIONS)
    work = Path(tempfile.mkdtemp(prefix="streams-eos-"))
    app_args = (B, f"wc-{topic}", src, dst, work / "state")
    first, second = text(1, LINES), text(2, LINES)
    expected1, expected2 = words(first), words(first + second)
    p = producer(B, linger_ms=20)
    reports = produce_all(p, src, [dict(value=line.encode(), partition=i % PARTITIONS)
                                   for i, line in enumerate(first)])
    assert all(e is None for e, _, _ in reports), reports[:5]

    out = Output(B, dst)
    apps = [App(work, 1, *app_args)]
    feeder = None
    try:
        # 1. The first batch, counted once.
        wait_for(out, apps[-1], lambda: out.last() == expected1, 90,
                 f"the final counts of {sum(expected1.values())} words")
        out.poll(3)  # nothing more comes (a late duplicate would show here)
        check_exactly_once(out, expected1, apps[-1])

        # 2. A second batch, fed slowly (~8 s); the app is killed once a fifth of it is counted.
        def feed():
            fp = producer(B, linger_ms=5)
            for at in range(0, LINES, 25):
                produce_all(fp, src, [dict(value=line.encode(), partition=(at + i) % PARTITIONS)
                                      for i, line in enumerate(second[at:at + 25])])
                time.sleep(0.1)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        total1, total2 = sum(expected1.values()), sum(expected2.values())
        wait_for(out, apps[-1], lambda: sum(out.last().values()) >= total1 + (total2 - total1) // 5,
                 60, "a fifth of the second batch to be counted")
        apps[-1].kill()
        at_kill = sum(out.last().values())
        # The premise: killed in the middle of the batch, not after it.
        assert at_kill < total2, (at_kill, total2)

        # 3. Restarted with the same application.id (and state dir): counts resume, each once.
        apps.append(App(work, 2, *app_args))
        feeder.join(60)
        assert not feeder.is_alive()
        wait_for(out, apps[-1], lambda: out.last() == expected2, 120,
                 f"the final counts of {total2} words after the restart "
                 f"(killed at {at_kill - total1} of {total2 - total1})")
        out.poll(3)
        check_exactly_once(out, expected2, apps[-1])
    finally:
        for a in apps:
            a.stop()
        out.close()
    shutil.rmtree(work, ignore_errors=True)
