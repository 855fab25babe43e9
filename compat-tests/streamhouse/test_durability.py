"""StreamHouse-only scenarios that need to control the broker process itself (a real Kafka cannot be
killed and restarted by this suite the same way): kill -9 during an idempotent acks=all produce, restart,
and check that every acknowledged record is there exactly once with contiguous offsets.

Needs STREAMHOUSE_BIN (the built `streamhouse` binary). Run by scripts/test.sh.
"""
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from broker_process import broker  # noqa: F401  (the fixture)


def consume_all(bootstrap, topic, partitions, expected_total, timeout=60):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "durability-check", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = []
    deadline = time.time() + timeout
    idle_since = time.time()
    while time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            if len(got) >= expected_total and time.time() - idle_since > 2:
                break
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise AssertionError(m.error())
        idle_since = time.time()
        got.append((m.partition(), m.offset(), m.value()))
    c.close()
    return got


def test_kill9_during_idempotent_produce_loses_nothing_acknowledged(broker):
    topic, partitions = "durable", 2
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(15)

    acked = {}  # value -> (partition, offset)
    failed = []

    def on_delivery(err, msg):
        if err is None:
            acked[msg.value()] = (msg.partition(), msg.offset())
        else:
            failed.append((msg.value(), err))

    p = Producer({
        "bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "acks": "all",
        "linger.ms": 2, "message.timeout.ms": 60000, "retry.backoff.ms": 100,
    })
    sent = 0
    killed = restarted = False
    start = time.time()
    while time.time() - start < 8:
        for _ in range(200):
            p.produce(topic, value=b"v%07d" % sent, key=b"k%d" % (sent % 13), on_delivery=on_delivery)
            sent += 1
        p.poll(0)
        time.sleep(0.01)
        elapsed = time.time() - start
        if not killed and elapsed > 2.5 and len(acked) > 1000:
            broker.kill9()  # in the middle of a steady stream of acks=all produces
            killed, acked_at_kill = True, len(acked)
        if killed and not restarted and elapsed > 4:
            broker.start()
            restarted = True
    assert killed and restarted, "the test must really kill and restart the broker"
    remaining = p.flush(90)
    assert remaining == 0, f"{remaining} records never resolved"
    assert acked_at_kill > 0 and len(acked) > acked_at_kill, "producing resumed after the restart"

    records = consume_all(broker.bootstrap, topic, partitions, len(acked))
    by_value = {}
    for part, off, value in records:
        assert value not in by_value, f"{value!r} stored twice: {by_value[value]} and {(part, off)}"
        by_value[value] = (part, off)
    for value, where in acked.items():
        assert by_value.get(value) == where, f"acknowledged {value!r} at {where}, found {by_value.get(value)}"
    for part in range(partitions):
        offs = sorted(o for p_, o, _ in records if p_ == part)
        assert offs == list(range(len(offs))), f"partition {part} offsets are not contiguous"
    print(f"sent={sent} acked={len(acked)} failed={len(failed)} acked_before_kill={acked_at_kill} stored={len(records)}")
