"""Kafka transactions (KIP-98), the same against every broker: librdkafka and Java transactional
producers committing and aborting over several partitions, read_committed and read_uncommitted
consumers, the last stable offset (LSO) held by an open transaction, zombie fencing by a second
producer with the same transactional.id, consume-transform-produce with offsets committed in the
transaction (send_offsets_to_transaction / sendOffsetsToTransaction), and the broker aborting a
transaction that outlives transaction.timeout.ms.

Commit and abort markers are written after EndTxn has answered, so every check of what a
read_committed reader sees first waits (bounded) until no transaction is pending: the LSO equals the
high watermark."""
import os
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, IsolationLevel, KafkaError, KafkaException, Producer, \
    TopicPartition
from confluent_kafka.admin import OffsetSpec

from compat_util import (consume_n, consumer, create_topic, end_offsets, kafka_tool, produce_all,
                         producer, wait_settled, wait_until)
from raw_wire import _call, _Reader, _str

HERE = Path(__file__).resolve().parent
# Where scripts/kafka/fetch.sh puts the Kafka jars (scripts/kafka/common.sh's defaults).
KAFKA_LIBS = Path(os.environ.get("KAFKA_LIBS") or Path(
    os.environ.get("KAFKA_HOME_CACHE")
    or Path.home() / ".cache/streamhouse-kafka" / os.environ.get("KAFKA_VERSION", "4.4.0")) / "libs")

RC, RU = "read_committed", "read_uncommitted"
# How librdkafka reports a producer whose epoch is no longer the transactional id's: the broker's
# INVALID_PRODUCER_EPOCH (librdkafka's older request versions) or PRODUCER_FENCED become _FENCED.
FENCED = (KafkaError._FENCED, KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.PRODUCER_FENCED)


def tx_producer(bootstrap, tid, **conf):
    c = {"bootstrap.servers": bootstrap, "transactional.id": tid}
    c.update({k.replace("_", "."): v for k, v in conf.items()})
    p = Producer(c)
    p.init_transactions(30)
    return p


def send(p, topic, items):
    """items: (partition, value) pairs, produced inside p's open transaction."""
    for part, value in items:
        p.produce(topic, value=value.encode(), partition=part)


def read(bootstrap, topic, partition, isolation, timeout=30):
    """(offset, value) of every record a consumer of `isolation` is handed from offset 0 up to its
    end of partition (the LSO for read_committed, the high watermark otherwise)."""
    c = consumer(bootstrap, isolation_level=isolation)
    try:
        c.assign([TopicPartition(topic, partition, 0)])
        return [(m.offset(), m.value().decode()) for m in consume_n(c, 10 ** 6, timeout, True)]
    finally:
        c.close()


def fetch_v4(broker, topic, partition, isolation):
    """One Fetch v4 from offset 0, no waiting: the partition's high watermark, last stable offset,
    aborted transactions [(producer id, first offset)] and batch headers (offsets, producer id,
    transactional and control bits)."""
    body = struct.pack(">hhi", 1, 4, 1) + _str("raw-wire")
    body += struct.pack(">iiiib", -1, 0, 1, 1 << 20, isolation)
    body += struct.pack(">i", 1) + _str(topic) + struct.pack(">i", 1)
    body += struct.pack(">iqi", partition, 0, 1 << 20)
    r = _Reader(_call(broker.host, broker.port, body, 15))
    r.i32(), r.i32()  # correlation id, throttle
    assert r.i32() == 1
    r.string()
    assert r.i32() == 1
    r.i32()
    out = {"error_code": r.i16(), "high_watermark": r.i64(), "last_stable_offset": r.i64()}
    out["aborted"] = [(r.i64(), r.i64()) for _ in range(max(r.i32(), 0))]
    n = r.i32()
    data, at, batches = r.b[r.at:r.at + max(n, 0)], 0, []
    while at + 61 <= len(data):
        base, length = struct.unpack_from(">qi", data, at)
        if at + 12 + length > len(data):
            break
        attributes, last_delta = struct.unpack_from(">hi", data, at + 21)
        pid, = struct.unpack_from(">q", data, at + 43)
        batches.append({"base": base, "last": base + last_delta, "producer_id": pid,
                        "transactional": bool(attributes & 16), "control": bool(attributes & 32)})
        at += 12 + length
    out["batches"] = batches
    return out


def committed(c, topic, partitions):
    got = c.committed([TopicPartition(topic, p) for p in partitions], timeout=30)
    return {tp.partition: tp.offset for tp in got}


def test_librdkafka_committed_and_aborted_transactions(broker, topic):
    """A read_committed consumer is handed exactly the records of committed transactions, in order
    per partition, none of an aborted one; read_uncommitted is handed all of them. Control records
    (the markers) take one offset per partition and transaction and reach neither application. A
    transaction's records land after the markers of the producer's previous one. A read_committed
    Fetch lists the aborted transaction (producer id, first offset) on each partition."""
    B, parts = broker.bootstrap, (0, 1, 2)
    admin = create_topic(B, topic, partitions=3)
    p = tx_producer(B, f"tx-{topic}")
    txns = [("c1", True), ("a2", False), ("c3", True)]
    for name, commit in txns:
        p.begin_transaction()
        send(p, topic, [(i % 3, f"{name}-{i}") for i in range(9)])
        if commit:
            p.commit_transaction(30)
        else:
            p.flush(30)  # written before the abort, so there is something to hide
            p.abort_transaction(30)

    # Per partition: three records per transaction, then its marker (offsets 3, 7, 11).
    assert wait_settled(admin, topic, parts) == {q: (12, 12) for q in parts}
    for q in parts:
        want = {name: [(4 * t + k, f"{name}-{i}") for k, i in enumerate(range(q, 9, 3))]
                for t, (name, _) in enumerate(txns)}
        assert read(B, topic, q, RC) == want["c1"] + want["c3"], q
        assert read(B, topic, q, RU) == want["c1"] + want["a2"] + want["c3"], q

        f = fetch_v4(broker, topic, q, isolation=1)
        assert f["error_code"] == 0 and (f["high_watermark"], f["last_stable_offset"]) == (12, 12), f
        pids = {b["producer_id"] for b in f["batches"]}
        assert len(pids) == 1 and all(b["transactional"] for b in f["batches"]), f
        assert [b["base"] for b in f["batches"] if b["control"]] == [3, 7, 11], f
        assert f["aborted"] == [(pids.pop(), 4)], f


def test_open_transaction_holds_the_last_stable_offset(broker, topic):
    """While a transaction is open, read_committed readers stop at its first offset (the LSO): they
    see neither its records nor records written after it by a non-transactional producer;
    read_uncommitted readers see everything. ListOffsets with READ_COMMITTED (librdkafka's
    AdminClient.list_offsets, and a read_committed consumer's get_watermark_offsets) answers the
    LSO, READ_UNCOMMITTED the high watermark; Fetch carries the LSO too. After the commit a waiting
    read_committed consumer is handed the rest."""
    B = broker.bootstrap
    admin = create_topic(B, topic, partitions=2)
    plain = producer(B)
    assert produce_all(plain, topic, [dict(value=b"before", partition=0)]) == [(None, 0, 0)]
    p = tx_producer(B, f"tx-{topic}")
    p.begin_transaction()
    send(p, topic, [(0, "t0"), (1, "t1"), (0, "t2"), (1, "t3"), (0, "t4")])
    p.flush(30)
    after = produce_all(plain, topic, [dict(value=b"after", partition=0)] * 2)
    assert after == [(None, 0, 4), (None, 0, 5)], after

    # p0: before@0, t0 t2 t4 @1-3 (open), after@4-5; p1: t1 t3 @0-1 (open).
    assert end_offsets(admin, topic, (0, 1)) == {0: (1, 6), 1: (0, 2)}
    assert read(B, topic, 0, RC) == [(0, "before")]
    assert read(B, topic, 1, RC) == []
    assert read(B, topic, 0, RU) == [(0, "before"), (1, "t0"), (2, "t2"), (3, "t4"),
                                     (4, "after"), (5, "after")]
    assert read(B, topic, 1, RU) == [(0, "t1"), (1, "t3")]
    for iso, want in ((RC, (0, 1)), (RU, (0, 6))):
        c = consumer(B, isolation_level=iso)
        try:
            assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=15, cached=False) == want
        finally:
            c.close()
    f = fetch_v4(broker, topic, 0, isolation=1)
    assert f["error_code"] == 0, f
    assert (f["high_watermark"], f["last_stable_offset"]) == (6, 1), f
    # read_committed fetches stop at the LSO.
    assert [(b["base"], b["last"]) for b in f["batches"]] == [(0, 0)], f

    # A read_committed consumer waiting at the LSO, handed the rest once the commit lands.
    waiting = consumer(B, isolation_level=RC)
    try:
        waiting.assign([TopicPartition(topic, 0, 0)])
        first = consume_n(waiting, 1, 30)
        assert [(m.offset(), m.value()) for m in first] == [(0, b"before")]
        p.commit_transaction(30)
        rest = consume_n(waiting, 5, 30)
        assert [(m.offset(), m.value().decode()) for m in rest] == [
            (1, "t0"), (2, "t2"), (3, "t4"), (4, "after"), (5, "after")]
        # The marker at 6.
        assert waiting.get_watermark_offsets(TopicPartition(topic, 0), timeout=15,
                                             cached=False) == (0, 7)
    finally:
        waiting.close()
    assert wait_settled(admin, topic, (0, 1)) == {0: (7, 7), 1: (3, 3)}
    assert read(B, topic, 1, RC) == [(0, "t1"), (1, "t3")]
    f = fetch_v4(broker, topic, 0, isolation=1)
    assert (f["last_stable_offset"], f["aborted"]) == (7, []), f


def test_librdkafka_zombie_producer_is_fenced(broker, topic):
    """init_transactions by a second producer with the same transactional.id bumps the epoch and
    aborts the first one's open transaction; the first (the zombie) then fails fatally as fenced on
    its next produce (Produce), on commit (EndTxn) and on adding a partition (AddPartitionsToTxn);
    read_committed never sees a zombie's records; the newest producer commits."""
    B = broker.bootstrap
    admin = create_topic(B, topic, partitions=2)
    tid = f"tx-{topic}"

    def fenced(call):
        with pytest.raises(KafkaException) as e:
            call(30)
        err = e.value.args[0]
        assert err.code() in FENCED and err.fatal(), err

    zombie = tx_producer(B, tid)
    zombie.begin_transaction()
    send(zombie, topic, [(0, "z0"), (0, "z1"), (1, "z2")])
    zombie.flush(30)
    second = tx_producer(B, tid)
    # The zombie's transaction is aborted: a marker after z0 z1 and one after z2.
    assert wait_settled(admin, topic, (0, 1)) == {0: (3, 3), 1: (2, 2)}
    assert read(B, topic, 0, RC) == [] and read(B, topic, 1, RC) == []
    assert read(B, topic, 0, RU) == [(0, "z0"), (1, "z1")]
    # Produce to a partition already in its transaction: the broker refuses the old epoch.
    # librdkafka raises fatal errors from flush(), and from commit_transaction() thereafter.
    zombie.produce(topic, value=b"z3", partition=0)
    fenced(zombie.flush)
    fenced(zombie.commit_transaction)

    # Fenced with a transaction holding a partition: its EndTxn is refused.
    second.begin_transaction()
    send(second, topic, [(0, "y0")])
    second.flush(30)
    third = tx_producer(B, tid)
    fenced(second.commit_transaction)

    # Fenced with a transaction begun but empty: adding its first partition is refused.
    third.begin_transaction()
    fourth = tx_producer(B, tid)
    third.produce(topic, value=b"x0", partition=1)
    fenced(third.flush)

    fourth.begin_transaction()
    send(fourth, topic, [(0, "s0"), (1, "s1")])
    fourth.commit_transaction(30)
    wait_settled(admin, topic, (0, 1))
    assert [v for _, v in read(B, topic, 0, RC)] == ["s0"]
    assert [v for _, v in read(B, topic, 1, RC)] == ["s1"]
    assert [v for _, v in read(B, topic, 0, RU)] == ["z0", "z1", "y0", "s0"]
    assert [v for _, v in read(B, topic, 1, RU)] == ["z2", "s1"]


def group_consumer(bootstrap, group, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "isolation.level": RC, "session.timeout.ms": 6000,
                  "heartbeat.interval.ms": 500})
    c.subscribe([topic])  # joined by the first polls
    return c


def test_librdkafka_consume_transform_produce(broker, topic):
    """send_offsets_to_transaction: the group's offsets are committed with the transaction
    (AddOffsetsToTxn, TxnOffsetCommit), so an aborted round leaves them at the last committed
    round's; committed() of a read_committed consumer (OffsetFetch asking for stable offsets) answers
    them right after commit_transaction/abort_transaction. After rewinding to them and redoing the
    work, read_committed sees the output exactly once."""
    B, parts = broker.bootstrap, (0, 1)
    src, dst, group = topic + "-in", topic + "-out", f"g-{topic[-10:]}"
    create_topic(B, src, partitions=2)
    admin = create_topic(B, dst, partitions=2)
    inputs = {q: [f"in-{q}-{i}" for i in range(8)] for q in parts}
    reports = produce_all(producer(B), src, [dict(value=v.encode(), partition=q)
                                             for q in parts for v in inputs[q]])
    assert all(e is None for e, _, _ in reports), reports

    c = group_consumer(B, group, src)
    p = tx_producer(B, f"tx-{topic}")
    try:
        def round_(n=None, until=None):
            """Copies the next n records (or up to offset `until` on every partition) to the same
            partition of dst in one transaction with the consumer's offsets; returns the offsets."""
            msgs, deadline = [], time.monotonic() + 30
            while time.monotonic() < deadline:
                if n is not None and len(msgs) >= n:
                    break
                if until is not None and all(any(m.partition() == q and m.offset() == until
                                                 for m in msgs) for q in parts):
                    break
                m = c.poll(0.2)
                if m is not None:
                    assert m.error() is None, m.error()
                    msgs.append(m)
            assert msgs and (n is None or len(msgs) == n), msgs
            p.begin_transaction()
            for m in msgs:
                p.produce(dst, value=m.value(), partition=m.partition())
            # Sent before the transaction ends: abort_transaction purges what is still queued, and
            # the checks below count the aborted copies in the log.
            assert p.flush(30) == 0
            offsets = {}
            for m in msgs:
                offsets[m.partition()] = max(offsets.get(m.partition(), 0), m.offset() + 1)
            p.send_offsets_to_transaction([TopicPartition(src, q, o) for q, o in offsets.items()],
                                          c.consumer_group_metadata(), 30)
            return offsets

        first = round_(n=5)
        p.commit_transaction(30)
        want = {q: first.get(q, -1001) for q in parts}  # -1001: no committed offset
        assert committed(c, src, parts) == want

        aborted = round_(n=5)
        p.abort_transaction(30)
        wait_settled(admin, dst, parts)  # the abort markers (output and offsets) are written
        assert committed(c, src, parts) == want, aborted

        # Redo the aborted work from the committed offsets.
        for q in parts:
            c.seek(TopicPartition(src, q, want[q] if want[q] >= 0 else 0))
        last = round_(until=7)
        p.commit_transaction(30)
        assert last == {0: 8, 1: 8}
        assert committed(c, src, parts) == {0: 8, 1: 8}
    finally:
        c.close()

    wait_settled(admin, dst, parts)
    for q in parts:
        assert [v for _, v in read(B, dst, q, RC)] == inputs[q], q
    # The aborted copies were written (and are hidden only by the abort).
    assert sum(len(read(B, dst, q, RU)) for q in parts) == 16 + 5


_JAVA_CLASSES = None


def java(*args):
    """Runs java/Transactions.java (compiled once per session against the Kafka client jars)."""
    global _JAVA_CLASSES
    if _JAVA_CLASSES is None:
        if not shutil.which("javac") or not list(KAFKA_LIBS.glob("kafka-clients-*.jar")):
            pytest.fail(f"javac or the Kafka client jars in {KAFKA_LIBS} missing")
        out = tempfile.mkdtemp(prefix="transactions-java-")
        r = subprocess.run(["javac", "-d", out, "-cp", f"{KAFKA_LIBS}/*",
                            str(HERE / "java" / "Transactions.java")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        _JAVA_CLASSES = out
    log4j = HERE.parent / "scripts" / "kafka" / "log4j2-tools.properties"
    r = subprocess.run(["java", "-Xmx256m", f"-Dlog4j2.configurationFile={log4j}", "-cp",
                        f"{_JAVA_CLASSES}:{KAFKA_LIBS}/*", "Transactions", *map(str, args)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    return [line.split("\t") for line in r.stdout.splitlines()]


def test_java_interleaved_transactions(broker, topic):
    """Two Java producers (different transactional ids) with transactions open at the same time on
    the same partitions, commits and aborts interleaved: read_committed Java consumers see exactly
    the committed records, in offset order; read_uncommitted ones see every record; each partition
    has one marker per transaction that touched it."""
    create_topic(broker.bootstrap, topic, partitions=2)
    lines = java("interleave", broker.bootstrap, topic, f"txa-{topic}", f"txb-{topic}")
    by = lambda kind, q: [(int(o), v) for k, p_, o, v in  # noqa: E731
                          (ln for ln in lines if ln[0] == kind) if int(p_) == q]
    ends = {int(ln[1]): (int(ln[2]), int(ln[3])) for ln in lines if ln[0] == "end"}
    # Transactions: A1 {a1 a2 a3} aborted, B1 {b1 b2} committed, A2 {a4 a5} committed, B2 {b3}
    # aborted, B3 {b4} committed. p0: 5 records, 4 markers; p1: 4 records, 4 markers.
    assert ends == {0: (9, 9), 1: (8, 8)}, lines
    for q, committed_, everything in ((0, ["b1", "a4"], ["a1", "b1", "a3", "a4", "b3"]),
                                      (1, ["b2", "a5", "b4"], ["a2", "b2", "a5", "b4"])):
        rc, ru = by("rc", q), by("ru", q)
        assert [v for _, v in rc] == committed_, lines
        assert [v for _, v in ru] == everything, lines
        assert set(rc) <= set(ru) and [o for o, _ in ru] == sorted({o for o, _ in ru}), lines
        assert ru[-1][0] < ends[q][1], lines


def test_java_consume_transform_produce(broker, topic):
    """sendOffsetsToTransaction(offsets, consumer.groupMetadata()) with the Java client: committed()
    (read_committed) answers the offsets of the last committed round, an aborted round's never;
    after rewinding, read_committed sees the output exactly once."""
    B = broker.bootstrap
    src, dst = topic + "-in", topic + "-out"
    create_topic(B, src)
    admin = create_topic(B, dst)
    inputs = [f"in-{i}" for i in range(10)]
    assert all(e is None for e, _, _ in produce_all(producer(B), src, [
        dict(value=v.encode(), partition=0) for v in inputs]))
    lines = java("ctp", B, src, dst, f"g-{topic[-10:]}", f"tx-{topic}")
    rounds = [(int(ln[1]), int(ln[2]), ln[3]) for ln in lines if ln[0] == "copied"]
    done = [int(ln[2]) for ln in lines if ln[0] == "committed"]
    # max.poll.records=4: round 1 copies 4 and commits; round 2 copies 4 and aborts; the rest
    # after rewinding to offset 4: 4 and 2, committed.
    assert [(n, how) for _, n, how in rounds] == [(4, "committed"), (4, "aborted"), (4, "committed"),
                                                  (2, "committed")], lines
    assert done == [4, 4, 8, 10], lines
    wait_settled(admin, dst, (0,))
    assert [v for _, v in read(B, dst, 0, RC)] == inputs
    assert len(read(B, dst, 0, RU)) == 10 + 4


def test_java_zombie_producer_is_fenced(broker, topic):
    """The Java client's view of fencing: after a second producer with the same transactional.id
    initializes, the first one's produce and commit fail with InvalidProducerEpochException or
    ProducerFencedException (Kafka 4.4: the former, an abortable error), and its abort with
    ProducerFencedException; its records stay invisible to read_committed."""
    B = broker.bootstrap
    admin = create_topic(B, topic)
    lines = {ln[0]: ln[1] for ln in java("fence", B, topic, f"tx-{topic}")}
    fenced = {"org.apache.kafka.common.errors.InvalidProducerEpochException",
              "org.apache.kafka.common.errors.ProducerFencedException"}
    assert set(lines) == {"send", "commit", "abort"}, lines
    assert all(v in fenced for v in lines.values()), lines
    assert "org.apache.kafka.common.errors.ProducerFencedException" in lines.values(), lines
    wait_settled(admin, topic, (0,))
    assert [v for _, v in read(B, topic, 0, RC)] == ["b"]
    assert [v for _, v in read(B, topic, 0, RU)] == ["a1", "b"]


def test_transaction_timeout_aborts(broker, topic):
    """A transaction open longer than its transaction.timeout.ms is aborted by the broker (Kafka
    checks every transaction.abort.timed.out.transaction.cleanup.interval.ms, 10 s by default): the
    LSO moves past it, read_committed sees none of its records but the non-transactional ones written
    after it; the stalled producer's commit then fails as fenced (the abort bumped its epoch)."""
    B = broker.bootstrap
    admin = create_topic(B, topic)
    plain = producer(B)
    produce_all(plain, topic, [dict(value=b"before", partition=0)])
    p = tx_producer(B, f"tx-{topic}", transaction_timeout_ms=3000)
    p.begin_transaction()
    send(p, topic, [(0, "t0"), (0, "t1"), (0, "t2")])
    p.flush(30)
    produce_all(plain, topic, [dict(value=b"after", partition=0)] * 2)
    assert end_offsets(admin, topic, (0,)) == {0: (1, 6)}  # the open transaction holds the LSO

    # The broker's abort marker at 6.
    assert wait_settled(admin, topic, (0,), timeout=30) == {0: (7, 7)}
    assert read(B, topic, 0, RC) == [(0, "before"), (4, "after"), (5, "after")]
    assert [v for _, v in read(B, topic, 0, RU)] == ["before", "t0", "t1", "t2", "after", "after"]
    with pytest.raises(KafkaException) as e:
        p.commit_transaction(15)
    err = e.value.args[0]
    assert err.code() in FENCED and err.fatal(), err
    assert read(B, topic, 0, RC) == [(0, "before"), (4, "after"), (5, "after")]


def transactions_tool(broker, *args):
    """kafka-transactions' table: (header, rows as {column: value}); its columns are tab-separated
    and padded with spaces."""
    r = kafka_tool("kafka-transactions", "--bootstrap-server", broker.bootstrap, *args)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    lines = [[cell.strip() for cell in line.rstrip("\t\n").split("\t")]
             for line in r.stdout.splitlines() if line.strip()]
    assert lines, r.stdout + r.stderr[-3000:]
    header = lines[0]
    assert all(len(row) == len(header) for row in lines[1:]), r.stdout
    return header, [dict(zip(header, row)) for row in lines[1:]]


def test_kafka_transactions_tool(broker, topic):
    """The Kafka CLI kafka-transactions against a transaction librdkafka leaves open on two partitions:
    `list` (ListTransactions) and `describe` (DescribeTransactions) show it Ongoing with its producer
    id, epoch, timeout and partitions; `describe-producers` (DescribeProducers) shows that producer on
    the partition with its last sequence and the transaction's first offset; `find-hanging`
    (DescribeProducers on every partition of the broker, checked against the coordinator) finds no
    hanging transaction, also when every open one is a candidate (--max-transaction-timeout 0).
    After the commit `list` and `describe` show CompleteCommit with no partitions, and the producer no
    longer has an open transaction."""
    B, tid = broker.bootstrap, f"tx-{topic}"
    admin = create_topic(B, topic, partitions=2)
    plain = producer(B)
    assert produce_all(plain, topic, [dict(value=b"plain", partition=1)] * 2) == [(None, 1, 0), (None, 1, 1)]
    p = tx_producer(B, tid, transaction_timeout_ms=300000)  # open for as long as the tools run
    p.begin_transaction()
    send(p, topic, [(1, "t0"), (0, "t1"), (1, "t2"), (1, "t3")])
    p.flush(30)
    assert end_offsets(admin, topic, (0, 1)) == {0: (0, 1), 1: (2, 5)}

    header, rows = transactions_tool(broker, "list")
    assert header == ["TransactionalId", "Coordinator", "ProducerId", "TransactionState"]
    mine = [r for r in rows if r["TransactionalId"] == tid]
    assert len(mine) == 1, rows
    # Both brokers' node id is 1 (scripts/kafka/start-broker.sh's node.id, StreamHouse's default).
    assert mine[0]["Coordinator"] == "1" and mine[0]["TransactionState"] == "Ongoing", mine
    pid = mine[0]["ProducerId"]
    assert int(pid) >= 0, mine

    describe_header = ["CoordinatorId", "TransactionalId", "ProducerId", "ProducerEpoch", "TransactionState",
                       "TransactionTimeoutMs", "CurrentTransactionStartTimeMs", "TransactionDurationMs",
                       "TopicPartitions"]
    header, rows = transactions_tool(broker, "describe", "--transactional-id", tid)
    assert header == describe_header and len(rows) == 1, rows
    d = rows[0]
    assert {k: d[k] for k in ("CoordinatorId", "TransactionalId", "ProducerId", "ProducerEpoch",
                              "TransactionState", "TransactionTimeoutMs")} == {
        "CoordinatorId": "1", "TransactionalId": tid, "ProducerId": pid, "ProducerEpoch": "0",
        "TransactionState": "Ongoing", "TransactionTimeoutMs": "300000"}, d
    assert int(d["CurrentTransactionStartTimeMs"]) > 0 and int(d["TransactionDurationMs"]) >= 0, d
    assert set(d["TopicPartitions"].split(",")) == {f"{topic}-0", f"{topic}-1"}, d

    producers_header = ["ProducerId", "ProducerEpoch", "LatestCoordinatorEpoch", "LastSequence",
                        "LastTimestamp", "CurrentTransactionStartOffset"]
    header, rows = transactions_tool(broker, "describe-producers", "--topic", topic, "--partition", 1)
    assert header == producers_header and len(rows) == 1, rows  # the plain producer is not idempotent
    d = rows[0]
    # Three records (sequences 0-2) from offset 2; no marker yet, so no coordinator epoch.
    assert {k: v for k, v in d.items() if k != "LastTimestamp"} == {
        "ProducerId": pid, "ProducerEpoch": "0", "LatestCoordinatorEpoch": "-1", "LastSequence": "2",
        "CurrentTransactionStartOffset": "2"}, d
    assert int(d["LastTimestamp"]) > 0, d

    hanging_header = ["Topic", "Partition", "ProducerId", "ProducerEpoch", "CoordinatorEpoch", "StartOffset",
                      "LastTimestamp", "Duration(min)"]
    for extra in ((), ("--max-transaction-timeout", 0)):
        header, rows = transactions_tool(broker, "find-hanging", "--broker-id", 1, *extra)
        assert header == hanging_header, header
        # Ongoing at the coordinator with this producer id, epoch and partition: not hanging.
        assert [r for r in rows if r["Topic"] == topic] == [], (extra, rows)

    p.commit_transaction(30)
    assert wait_settled(admin, topic, (0, 1)) == {0: (2, 2), 1: (6, 6)}
    header, rows = transactions_tool(broker, "list")
    assert [(r["Coordinator"], r["ProducerId"], r["TransactionState"]) for r in rows
            if r["TransactionalId"] == tid] == [("1", pid, "CompleteCommit")], rows
    header, rows = transactions_tool(broker, "describe", "--transactional-id", tid)
    assert header == describe_header and len(rows) == 1, rows
    d = rows[0]
    assert {k: d[k] for k in ("CoordinatorId", "TransactionalId", "ProducerId", "ProducerEpoch",
                              "TransactionState", "TransactionTimeoutMs", "TopicPartitions")} == {
        "CoordinatorId": "1", "TransactionalId": tid, "ProducerId": pid, "ProducerEpoch": "0",
        "TransactionState": "CompleteCommit", "TransactionTimeoutMs": "300000", "TopicPartitions": ""}, d
    header, rows = transactions_tool(broker, "describe-producers", "--topic", topic, "--partition", 1)
    assert header == producers_header and len(rows) == 1, rows
    assert {k: rows[0][k] for k in ("ProducerId", "ProducerEpoch", "LastSequence",
                                    "CurrentTransactionStartOffset")} == {
        "ProducerId": pid, "ProducerEpoch": "0", "LastSequence": "2", "CurrentTransactionStartOffset": "None"}, rows
