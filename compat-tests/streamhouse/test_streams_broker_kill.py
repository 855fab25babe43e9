"""Kafka Streams 4.4 with processing.guarantee=exactly_once_v2 (the word count of
java/WordCountEos.java, compiled and run as test_streams_eos.py does) while the BROKER is killed with
SIGKILL in the middle of processing and started again on the same data dir and port about a second
later, on local disk and in S3 mode (the loopback S3 server of scripts/s3). StreamHouse-only: the
suite cannot kill -9 and restart a real Kafka this way.

The app is left running through the crash and must recover by itself, and then a read_committed
reader of the output sees every word's counts exactly 1, 2, ..., N in order, N the number of times the
word was produced: no count lost and none twice (the strict check of test_streams_eos.py). Streams
is allowed whatever recovery it needs (abort its transaction, reinitialize its producer, rebalance,
close tasks dirty and restore the count store from the changelog); what it does against StreamHouse
is what it does against a Kafka broker that bounces: its clients reconnect, the producer retries its
in-flight requests and goes on with the same transaction (no abort, no new epoch), and the consumer
may rejoin once because its metadata changed (same assignment).

On the broker this exercises, across a crash: durable transaction state (a transaction the app had
open at the kill is still open after the restart, held in the LSO, and then completed by the app's
producer, or aborted by the broker after transaction.timeout.ms, 10 s for Streams, if the producer
gave it up), producer ids, epochs and sequences (retried batches not duplicated), the group's
committed offsets written by TxnOffsetCommit, the classic group rejoining after the restart, and the
idempotent input producer's retries (no input record duplicated). The test prints the timings, the
end offsets read right after the restart (LSO < high watermark: the kill hit an open transaction),
the output records hidden by aborts, and the Streams log from the kill on.

Needs STREAMHOUSE_BIN (the built `streamhouse` binary), javac and the Kafka 4.4 jars
(scripts/kafka/fetch.sh)."""
import os
import re
import shutil
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from broker_process import BIN, BrokerProcess, free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # compat-tests/: the shared helpers
from compat_util import create_topic, end_offsets, kafka_tool, produce_all, producer  # noqa: E402
from test_s3 import s3, s3_broker  # noqa: E402,F401  (the loopback S3 server fixture)
from test_streams_eos import (PARTITIONS, App, Output, check_exactly_once, text,  # noqa: E402
                              wait_for, words)

# Timed-out transactions looked for every second; a new group rebalances at once.
BROKER_ARGS = ["--transaction-abort-timed-out-transaction-cleanup-interval-ms", "1000",
               "--group-initial-rebalance-delay-ms", "0"]
FIRST_LINES, SECOND_LINES = 1000, 3000
DOWN_SECS = 1.0  # between the kill and the restart
RECOVERY_SECS = 120  # after the feed has ended, for the final counts


@pytest.fixture(params=["local", "s3"])
def broker(request):
    if not os.path.exists(BIN):
        pytest.fail(f"StreamHouse binary not found at {BIN} (build with cargo build --release)")
    with tempfile.TemporaryDirectory() as tmp:
        if request.param == "local":
            b = BrokerProcess(Path(tmp) / "data", free_port(), BROKER_ARGS)
            b.start()
        else:
            b = s3_broker(request.getfixturevalue("s3"), tmp, f"streamskill-{uuid.uuid4().hex[:6]}",
                          extra=BROKER_ARGS)
        b.mode = request.param
        try:
            yield b
        finally:
            b.stop()


def broker_log(b):
    return Path(b.data_dir).parent / f"broker-{b.port}.log"


class RestartTolerantOutput(Output):
    """Output, except that the consumer's own reports of the broker being away (transport errors,
    all brokers down) are noted, not failures: it reconnects by itself."""

    def __init__(self, bootstrap, topic):
        super().__init__(bootstrap, topic)
        self.client_errors = Counter()

    def poll(self, secs):
        end = time.monotonic() + secs
        while time.monotonic() < end:
            m = self.c.poll(0.2)
            if m is None:
                continue
            if m.error():
                err = m.error()
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.code() < 0 and not err.fatal():  # librdkafka's local, transient errors
                    self.client_errors[err.name()] += 1
                    continue
                raise AssertionError(f"consume error: {err}")
            self.seen[m.key().decode()].append(struct.unpack(">q", m.value())[0])
            self.records += 1


def read_values(bootstrap, topic, isolation="read_uncommitted", timeout=60):
    """Every value of the topic (raw bytes) a consumer of `isolation` reads from offset 0 to the end
    of each partition."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "streamskill-read",
                  "enable.auto.commit": False, "enable.partition.eof": True, "isolation.level": isolation})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out, eof, deadline = [], set(), time.monotonic() + timeout
    try:
        while len(eof) < PARTITIONS:
            assert time.monotonic() < deadline, f"no end of {topic} in {timeout}s ({len(out)} read)"
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                    continue
                raise AssertionError(m.error())
            eof.discard(m.partition())
            out.append(m.value())
        return out
    finally:
        c.close()


# "[2025-12-01 17:48:12,345] WARN [thread] message (logger)": log4j2's default %d.
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\] (\w+) ")
# INFO lines worth showing beside the warnings: state changes, rebalances, producer (re)initialization.
INTERESTING = re.compile(r"State transition from|rebalanc|ProducerId set|epoch|fenc|corrupt|migrat|"
                         r"abort|Reset", re.I)


def streams_log_since(path, since_wall, limit=120):
    """The Streams log's WARN/ERROR lines and INTERESTING INFO ones (and 'Caused by' heads, and the
    app's 'state ...' lines)
    from since_wall on, identical messages folded with a count."""
    out, after, counts, order = [], False, Counter(), []
    for line in Path(path).read_text(errors="replace").splitlines():
        m = STAMP.match(line)
        if m:
            t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
            after = t >= since_wall
            keep = after and (m.group(3) in ("WARN", "ERROR") or INTERESTING.search(line))
        else:
            keep = after and line.startswith(("state ", "Caused by", "uncaught"))
        if keep:
            key = STAMP.sub("", line)[:400]
            key = re.sub(r"\d+", "#", key) if m else key  # fold messages differing in numbers only
            if key not in counts:
                order.append((key, line[:400]))
            counts[key] += 1
    for key, first in order[:limit]:
        out.append(first + (f"   [x{counts[key]}]" if counts[key] > 1 else ""))
    return "\n".join(out)


def broker_log_since(b, offset, limit=25):
    """The broker log's lines from byte offset on (its recovery at the restart), colours removed."""
    with open(broker_log(b), "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln) for ln in lines]
    return "\n".join(lines[:limit]) + (f"\n... ({len(lines) - limit} more lines)" if len(lines) > limit else "")


def diagnostics(b, app_id, topics):
    """What the broker shows when the scenario fails: its log's tail, kafka-transactions list and
    describe of the app's transactional ids, and the end offsets of every topic with both isolation
    levels."""
    parts = []
    try:
        lines = broker_log(b).read_text(errors="replace").splitlines()
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln) for ln in lines]
        parts.append(f"--- broker log {broker_log(b)} (last 60 of {len(lines)} lines):\n" + "\n".join(lines[-60:]))
    except OSError as e:
        parts.append(f"--- broker log: {e}")
    try:
        r = kafka_tool("kafka-transactions", "--bootstrap-server", b.bootstrap, "list", timeout=60)
        parts.append("--- kafka-transactions list:\n" + r.stdout + r.stderr[-1500:])
        tids = [ln.split("\t")[0].strip() for ln in r.stdout.splitlines()[1:] if ln.startswith(app_id)]
        for tid in tids:
            r = kafka_tool("kafka-transactions", "--bootstrap-server", b.bootstrap, "describe",
                           "--transactional-id", tid, timeout=60)
            parts.append(f"--- kafka-transactions describe {tid}:\n" + r.stdout + r.stderr[-1500:])
    except Exception as e:  # noqa: BLE001 (diagnostics only)
        parts.append(f"--- kafka-transactions: {e!r}")
    try:
        admin = AdminClient({"bootstrap.servers": b.bootstrap})
        for t in topics:
            parts.append(f"--- {t} {{partition: (LSO, high watermark)}}: "
                         f"{end_offsets(admin, t, range(PARTITIONS))}")
    except Exception as e:  # noqa: BLE001
        parts.append(f"--- end offsets: {e!r}")
    return "\n".join(parts)


def test_streams_eos_survives_broker_kill9(broker):
    """The first batch counted once; a second batch fed slowly (~15 s); the broker killed with
    SIGKILL once a fifth of it is counted and restarted on the same data dir and port a second later;
    the same app process (not restarted) ends with each word's counts exactly 1..N."""
    B = broker.bootstrap
    run = uuid.uuid4().hex[:8]
    src, dst, app_id = f"wc-in-{run}", f"wc-out-{run}", f"wc-{run}"
    topics = (src, dst, f"{app_id}-words-repartition", f"{app_id}-word-counts-changelog")
    create_topic(B, src, partitions=PARTITIONS)
    create_topic(B, dst, partitions=PARTITIONS)
    work = Path(tempfile.mkdtemp(prefix="streams-broker-kill-"))
    first, second = text(11, FIRST_LINES), text(12, SECOND_LINES)
    expected1, expected2 = words(first), words(first + second)
    total1, total2 = sum(expected1.values()), sum(expected2.values())
    # Idempotent: a batch whose acknowledgement the crash swallowed is retried without a duplicate.
    p = producer(B, linger_ms=20, enable_idempotence=True, message_timeout_ms=120000)
    reports = produce_all(p, src, [dict(value=line.encode(), partition=i % PARTITIONS)
                                   for i, line in enumerate(first)])
    assert all(e is None for e, _, _ in reports), reports[:5]

    out = RestartTolerantOutput(B, dst)
    app = App(work, 1, B, app_id, src, dst, work / "state")
    feed_errors, t = [], {}
    try:
        # 1. The first batch, counted once.
        t["start"] = time.monotonic()
        wait_for(out, app, lambda: out.last() == expected1, 120, f"the final counts of {total1} words")
        t["first batch"] = time.monotonic() - t["start"]
        out.poll(2)
        check_exactly_once(out, expected1, app)

        # 2. The second batch fed slowly: 25 lines every 0.1 s, through the broker's crash.
        def feed():
            fp = producer(B, linger_ms=5, enable_idempotence=True, message_timeout_ms=120000)
            for at in range(0, SECOND_LINES, 25):
                reports = produce_all(fp, src, [dict(value=line.encode(), partition=(at + i) % PARTITIONS)
                                                for i, line in enumerate(second[at:at + 25])], timeout=150)
                feed_errors.extend(e for e, _, _ in reports if e is not None)
                time.sleep(0.1)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        t["feed start"] = time.monotonic()
        wait_for(out, app, lambda: sum(out.last().values()) >= total1 + (total2 - total1) // 5,
                 90, "a fifth of the second batch to be counted")

        # 3. The broker killed in the middle of it and started again on the same data dir and port.
        kill_wall = time.time()
        t["kill"] = time.monotonic()
        broker.kill9()
        at_kill = sum(out.last().values())
        assert at_kill < total2, (at_kill, total2)  # the premise: in the middle, not after
        time.sleep(DOWN_SECS)
        log_at_restart = broker_log(broker).stat().st_size
        broker.start()
        t["up"] = time.monotonic()
        restart_wall = time.time()
        # Whether the kill left a transaction of the app open: LSO < high watermark, read at once
        # (before the app's clients have reconnected, if it is quick enough).
        try:
            admin = AdminClient({"bootstrap.servers": B})
            ends_at_restart = {tp: end_offsets(admin, tp, range(PARTITIONS)) for tp in topics[1:]}
        except Exception as e:  # noqa: BLE001 (an observation for the report only)
            ends_at_restart = repr(e)
        t["ends read"] = time.monotonic()

        def progressed():
            return sum(out.last().values()) > at_kill

        wait_for(out, app, progressed, RECOVERY_SECS, "any count committed after the broker's restart")
        t["first progress"] = time.monotonic()
        feeder.join(180)
        assert not feeder.is_alive(), "the input feed did not finish"
        t["feed end"] = time.monotonic()
        assert not feed_errors, f"input records not delivered: {feed_errors[:5]}"
        # The premise of the expected counts: every input line once (the idempotent producer's
        # retries across the crash duplicated nothing and lost nothing).
        got = Counter(v.decode() for v in read_values(B, src))
        fed = Counter(first + second)
        assert got == fed, (f"input topic differs from what was fed: {sum((got - fed).values())} extra, "
                            f"{sum((fed - got).values())} missing lines")

        # 4. The same app process recovers by itself: the final counts, each once.
        wait_for(out, app, lambda: out.last() == expected2, RECOVERY_SECS,
                 f"the final counts of {total2} words after the broker's restart "
                 f"(killed at {at_kill - total1} of {total2 - total1})")
        t["final"] = time.monotonic()
        out.poll(3)  # nothing more comes (a late duplicate would show here)
        check_exactly_once(out, expected2, app)
        assert app.alive(), "the app recovered by itself, without being restarted"
        # Output data records an abort hid (the transaction open at the kill, if it was aborted).
        aborted = len(read_values(B, dst)) - len(read_values(B, dst, "read_committed"))

        print(f"\n[{broker.mode}] first batch {t['first batch']:.1f}s; killed "
              f"{t['kill'] - t['feed start']:.1f}s into the feed at {at_kill - total1}/{total2 - total1} "
              f"counts; down {t['up'] - t['kill']:.1f}s; first count after the restart "
              f"+{t['first progress'] - t['up']:.1f}s; feed ended +{t['feed end'] - t['up']:.1f}s; "
              f"final counts +{t['final'] - t['up']:.1f}s after the restart; "
              f"reader's transient errors {dict(out.client_errors)}")
        print(f"[{broker.mode}] end offsets {{partition: (LSO, high watermark)}} "
              f"+{t['ends read'] - t['up']:.2f}s after the restart: {ends_at_restart}; "
              f"output records hidden by aborts: {aborted}")
        print(f"[{broker.mode}] Streams log from the kill (restart at +{restart_wall - kill_wall:.1f}s, "
              f"kill at {time.strftime('%H:%M:%S', time.localtime(kill_wall))}):\n"
              + streams_log_since(app.path, kill_wall - 0.5))
        print(f"[{broker.mode}] broker log from the restart:\n" + broker_log_since(broker, log_at_restart))
    except BaseException as e:
        if isinstance(e, AssertionError):
            raise AssertionError(f"{e}\n{diagnostics(broker, app_id, topics)}") from e
        raise
    finally:
        app.stop()
        out.close()
    shutil.rmtree(work, ignore_errors=True)
