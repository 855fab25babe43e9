"""StreamHouse-only transaction scenarios around a kill -9 of the broker (a real Kafka cannot be killed
and restarted by this suite the same way), each on local disk and in S3 mode (the loopback S3 server
of scripts/s3), with librdkafka transactional producers and read_committed / read_uncommitted
consumers:

- killed with a transaction open: after the restart it still holds the last stable offset (LSO),
  is aborted once its transaction.timeout.ms has passed, and the transactional id commits again;
- killed right after commit_transaction returned: the commit holds, exactly once;
- killed right after abort_transaction returned: the abort holds;
- consume-transform-produce with send_offsets_to_transaction, killed after a committed round and
  in the middle of the next: redone from the committed offsets, the output is the input exactly once.

Commit and abort markers are written after EndTxn has answered, so a kill right after it may come
before them: every read_committed check first waits (bounded) until the LSO equals the high watermark.

Needs STREAMHOUSE_BIN (the built `streamhouse` binary). Run by scripts/test.sh.
"""
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, IsolationLevel, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from broker_process import BIN, BrokerProcess, free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # compat-tests/: the shared helpers
from compat_util import end_offsets, wait_settled  # noqa: E402
from test_s3 import s3, s3_broker  # noqa: F401  (the loopback S3 server fixture)

RC, RU = "read_committed", "read_uncommitted"
# A transaction past its timeout is aborted within half a second of it.
BROKER_ARGS = ["--transaction-abort-timed-out-transaction-cleanup-interval-ms", "500",
               "--group-initial-rebalance-delay-ms", "0"]
# How librdkafka reports a producer whose epoch is no longer the transactional id's.
FENCED = (KafkaError._FENCED, KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.PRODUCER_FENCED)


@pytest.fixture(params=["local", "s3"])
def broker(request):
    if not os.path.exists(BIN):
        pytest.fail(f"StreamHouse binary not found at {BIN} (build with cargo build --release)")
    with tempfile.TemporaryDirectory() as tmp:
        if request.param == "local":
            b = BrokerProcess(Path(tmp) / "data", free_port(), BROKER_ARGS)
            b.start()
        else:
            b = s3_broker(request.getfixturevalue("s3"), tmp, f"txkill-{uuid.uuid4().hex[:6]}", extra=BROKER_ARGS)
        try:
            yield b
        finally:
            b.stop()


def restart_after_kill9(b):
    b.kill9()
    b.start()


def create(bootstrap, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the future resolves
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
    return admin


def tx_producer(bootstrap, tid, **conf):
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": tid, **conf})
    p.init_transactions(60)
    return p


def send(p, topic, items):
    """items: (partition, value) pairs, produced inside p's open transaction; flushed, and every one
    acknowledged, before returning."""
    failed = []
    for part, value in items:
        p.produce(topic, value=value.encode(), partition=part,
                  on_delivery=lambda err, msg: err is not None and failed.append(err))
    assert p.flush(60) == 0
    assert not failed, failed


def read(bootstrap, topic, partition, isolation, timeout=60):
    """(offset, value) of every record a consumer of `isolation` is handed from offset 0 up to its end
    of partition (the LSO for read_committed, the high watermark otherwise)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "txkill-read", "enable.auto.commit": False,
                  "enable.partition.eof": True, "isolation.level": isolation})
    c.assign([TopicPartition(topic, partition, 0)])
    out, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    return out
                raise AssertionError(m.error())
            out.append((m.offset(), m.value().decode()))
        raise AssertionError(f"no end of partition {topic}/{partition} ({isolation}) in {timeout}s: {out}")
    finally:
        c.close()


def values(bootstrap, topic, partition, isolation):
    return [v for _, v in read(bootstrap, topic, partition, isolation)]


def committed(bootstrap, group, topic, partitions):
    """The group's committed offsets as a read_committed consumer sees them (OffsetFetch asking for
    stable offsets: a pending transactional commit is waited for)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                  "isolation.level": RC})
    try:
        return {tp.partition: tp.offset for tp in
                c.committed([TopicPartition(topic, p) for p in partitions], timeout=60)}
    finally:
        c.close()


def test_kill9_with_open_transaction_aborts_it_after_its_timeout(broker):
    """Killed while a transaction holds records on two partitions: after the restart the transaction
    is still open (the LSO stays at its first offset, read_committed sees only what was written before
    it); no earlier than its transaction.timeout.ms the broker aborts it (markers written, LSO == high
    watermark), the stalled producer is fenced, and a new producer with the same transactional.id
    initializes and commits: read_committed then sees exactly the committed records."""
    B, topic, tid, timeout_ms = broker.bootstrap, "tx-open", "txkill-open", 3000
    admin = create(B, topic, 2)
    plain = Producer({"bootstrap.servers": B, "acks": "all"})
    plain.produce(topic, value=b"before", partition=0)
    assert plain.flush(30) == 0
    p = tx_producer(B, tid, **{"transaction.timeout.ms": timeout_ms})
    p.begin_transaction()
    began = time.monotonic()  # before the first AddPartitionsToTxn: the transaction starts later
    open_items = [(i % 2, f"open-{i}") for i in range(10)]
    send(p, topic, open_items)
    assert end_offsets(admin, topic, (0, 1)) == {0: (1, 6), 1: (0, 5)}

    restart_after_kill9(broker)
    admin = AdminClient({"bootstrap.servers": B})
    assert time.monotonic() - began < timeout_ms / 1000, "restarted within the timeout (else check the premise)"
    assert end_offsets(admin, topic, (0, 1)) == {0: (1, 6), 1: (0, 5)}, "still open after the restart"
    assert read(B, topic, 0, RC) == [(0, "before")]
    assert read(B, topic, 1, RC) == []

    ends = wait_settled(admin, topic, (0, 1), timeout=30)
    took = time.monotonic() - began
    assert ends == {0: (7, 7), 1: (6, 6)}, ends  # one abort marker on each partition
    assert took >= timeout_ms / 1000, f"aborted after {took:.1f}s, before its timeout"
    assert read(B, topic, 0, RC) == [(0, "before")]
    assert read(B, topic, 1, RC) == []
    assert values(B, topic, 0, RU) == ["before"] + [v for q, v in open_items if q == 0]
    assert values(B, topic, 1, RU) == [v for q, v in open_items if q == 1]
    with pytest.raises(KafkaException) as e:  # the abort bumped the epoch
        p.commit_transaction(30)
    err = e.value.args[0]
    assert err.code() in FENCED and err.fatal(), err

    p2 = tx_producer(B, tid, **{"transaction.timeout.ms": timeout_ms})
    p2.begin_transaction()
    send(p2, topic, [(i % 2, f"new-{i}") for i in range(6)])
    p2.commit_transaction(30)
    assert wait_settled(admin, topic, (0, 1)) == {0: (11, 11), 1: (10, 10)}
    assert read(B, topic, 0, RC) == [(0, "before"), (7, "new-0"), (8, "new-2"), (9, "new-4")]
    assert read(B, topic, 1, RC) == [(6, "new-1"), (7, "new-3"), (8, "new-5")]
    print(f"aborted {took:.1f}s after begin_transaction (timeout {timeout_ms} ms)")


def test_kill9_right_after_commit_completes_it(broker):
    """Killed as soon as commit_transaction returned (its markers possibly not yet written): after the
    restart read_committed sees the transaction's records exactly once and in order behind an earlier
    committed one, the LSO equals the high watermark (one marker per transaction and partition), and
    the same producer goes on to commit another transaction."""
    B, topic, parts = broker.bootstrap, "tx-commit", (0, 1, 2)
    admin = create(B, topic, 3)
    p = tx_producer(B, "txkill-commit")
    want = {q: [] for q in parts}
    for name, n in (("first", 30), ("second", 300)):
        p.begin_transaction()
        items = [(i % 3, f"{name}-{i}") for i in range(n)]
        send(p, topic, items)
        p.commit_transaction(30)
        for q, v in items:
            want[q].append(v)
    restart_after_kill9(broker)  # right after the second commit returned

    admin = AdminClient({"bootstrap.servers": B})
    assert wait_settled(admin, topic, parts) == {q: (112, 112) for q in parts}  # 10 + 1 + 100 + 1
    for q in parts:
        got = read(B, topic, q, RC)
        assert [v for _, v in got] == want[q], q
        assert [o for o, _ in got] == list(range(10)) + list(range(11, 111)), q

    p.begin_transaction()  # the producer survives the broker's restart
    send(p, topic, [(q, f"third-{q}") for q in parts])
    p.commit_transaction(60)
    assert wait_settled(admin, topic, parts) == {q: (114, 114) for q in parts}
    for q in parts:
        assert values(B, topic, q, RC) == want[q] + [f"third-{q}"], q


def test_kill9_right_after_abort_completes_it(broker):
    """Killed as soon as abort_transaction returned: after the restart read_committed sees the committed
    transaction before it and nothing of the aborted one, read_uncommitted sees both, the LSO equals
    the high watermark, and the same producer's next transaction commits."""
    B, topic, parts = broker.bootstrap, "tx-abort", (0, 1)
    admin = create(B, topic, 2)
    p = tx_producer(B, "txkill-abort")
    p.begin_transaction()
    send(p, topic, [(i % 2, f"kept-{i}") for i in range(4)])
    p.commit_transaction(30)
    p.begin_transaction()
    send(p, topic, [(i % 2, f"dropped-{i}") for i in range(100)])
    p.abort_transaction(30)
    restart_after_kill9(broker)

    admin = AdminClient({"bootstrap.servers": B})
    assert wait_settled(admin, topic, parts) == {q: (54, 54) for q in parts}  # 2 + 1 + 50 + 1
    for q in parts:
        assert read(B, topic, q, RC) == [(0, f"kept-{q}"), (1, f"kept-{q + 2}")], q
        assert values(B, topic, q, RU) == [f"kept-{q}", f"kept-{q + 2}"] + [f"dropped-{i}" for i in range(q, 100, 2)], q

    p.begin_transaction()
    send(p, topic, [(q, f"after-{q}") for q in parts])
    p.commit_transaction(60)
    assert wait_settled(admin, topic, parts) == {q: (56, 56) for q in parts}
    for q in parts:
        assert read(B, topic, q, RC) == [(0, f"kept-{q}"), (1, f"kept-{q + 2}"), (54, f"after-{q}")], q


def group_consumer(bootstrap, group, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "isolation.level": RC, "session.timeout.ms": 6000,
                  "heartbeat.interval.ms": 500})
    c.subscribe([topic])  # joined by the first polls
    return c


def copy_round(c, p, src, dst, n=None, until=None, timeout=60):
    """In one transaction of p, copies the next n records the consumer is handed (or every record up
    to offset `until` of each input partition) to the same partition of dst and adds the consumer's
    offsets; returns ({partition: first offset copied}, {partition: offset after the last}). The
    transaction is left open."""
    msgs, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        if n is not None and len(msgs) >= n:
            break
        if until is not None and all(any(m.partition() == q and m.offset() == o for m in msgs)
                                     for q, o in until.items()):
            break
        m = c.poll(0.2)
        if m is not None:
            assert m.error() is None, m.error()
            msgs.append(m)
    assert msgs and (n is None or len(msgs) == n), [(m.partition(), m.offset()) for m in msgs]
    p.begin_transaction()
    send(p, dst, [(m.partition(), m.value().decode()) for m in msgs])
    starts, offsets = {}, {}
    for m in msgs:
        starts[m.partition()] = min(starts.get(m.partition(), m.offset()), m.offset())
        offsets[m.partition()] = max(offsets.get(m.partition(), 0), m.offset() + 1)
    p.send_offsets_to_transaction([TopicPartition(src, q, o) for q, o in offsets.items()],
                                  c.consumer_group_metadata(), 60)
    return starts, offsets


def test_kill9_during_consume_transform_produce(broker):
    """A read_committed group consumer copies an input topic to an output topic in transactions with
    send_offsets_to_transaction. Killed after a committed round: the group's committed offsets are
    that round's. The same consumer and producer do the next round (records produced and offsets
    sent, not committed) and the broker is killed again: after the restart the committed offsets are
    still the first round's. A fresh consumer in the group, starting from them, and a new producer
    with the same transactional.id (fencing the old one, aborting its transaction) redo the rest:
    read_committed sees the output equal to the input, exactly once and in order."""
    B, parts = broker.bootstrap, (0, 1)
    src, dst, group, tid = "ctp-in", "ctp-out", "ctp-group", "txkill-ctp"
    create(B, src, 2)
    admin = create(B, dst, 2)
    inputs = {q: [f"in-{q}-{i}" for i in range(20)] for q in parts}
    plain = Producer({"bootstrap.servers": B, "acks": "all"})
    for q in parts:
        for v in inputs[q]:
            plain.produce(src, value=v.encode(), partition=q)
    assert plain.flush(30) == 0

    c = group_consumer(B, group, src)
    # librdkafka (2.16) re-bootstraps when its only broker goes down, decommissioning the broker it
    # had cached as the group coordinator; send_offsets_to_transaction then never sends its
    # TxnOffsetCommit and ignores its timeout (confluentinc/librdkafka#5511, #5456) until some other
    # connection changes state. Without re-bootstrapping the producer reconnects to the same broker.
    p = tx_producer(B, tid, **{"metadata.recovery.strategy": "none"})
    starts, first = copy_round(c, p, src, dst, n=10)
    assert all(o == 0 for o in starts.values()), starts
    p.commit_transaction(60)
    restart_after_kill9(broker)
    assert committed(B, group, src, parts) == {q: first.get(q, -1001) for q in parts}  # -1001: none

    # The same consumer (it rejoins the group) and producer go on: the next round, left open.
    starts, second = copy_round(c, p, src, dst, n=10)
    assert all(o == first.get(q, 0) for q, o in starts.items()), (first, starts)
    restart_after_kill9(broker)
    c.close()  # leaves the group, commits nothing (auto commit off)

    # The new producer's init_transactions aborts the old one's open transaction (output and offsets).
    p2 = tx_producer(B, tid)
    admin = AdminClient({"bootstrap.servers": B})
    assert committed(B, group, src, parts) == {q: first.get(q, -1001) for q in parts}
    c2 = group_consumer(B, group, src)
    try:
        starts, rest = copy_round(c2, p2, src, dst, until={q: 19 for q in parts})
        # c2 began at the committed offsets (the second round's were never committed).
        assert starts == {q: first.get(q, 0) for q in parts}, (first, starts)
        p2.commit_transaction(60)
        assert rest == {0: 20, 1: 20}
        assert committed(B, group, src, parts) == {0: 20, 1: 20}
    finally:
        c2.close()

    wait_settled(admin, dst, parts)
    for q in parts:
        assert values(B, dst, q, RC) == inputs[q], q
    # The uncommitted round's copies were written (and are hidden only by the abort).
    assert sum(len(read(B, dst, q, RU)) for q in parts) == 40 + 10
