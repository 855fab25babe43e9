"""StreamHouse-only group scenarios that control the broker process or run long: committed offsets
(and their metadata) survive a restart, and a group survives a minute of churn."""
import random
import threading
import time
import uuid

from confluent_kafka import Consumer, ConsumerGroupState, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from broker_process import broker  # noqa: F401  (the fixture)


def create(bootstrap, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the future resolves
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(15)


def test_committed_offsets_and_metadata_survive_restart(broker):
    topic = "restart-offsets"
    create(broker.bootstrap, topic, 3)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(30):
        p.produce(topic, value=b"x%d" % i, partition=i % 3)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "keeper", "enable.auto.commit": False})
    wanted = [TopicPartition(topic, 0, 4, metadata="first"), TopicPartition(topic, 1, 9, metadata=""),
              TopicPartition(topic, 2, 7, metadata="{\"k\": \"ünïcode\"}")]
    c.commit(offsets=wanted, asynchronous=False)
    c.close()
    broker.stop()
    broker.start()
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "keeper", "enable.auto.commit": False})
    got = c.committed([TopicPartition(topic, p) for p in range(3)], timeout=30)
    c.close()
    assert [(g.partition, g.offset, g.metadata) for g in got] == [(w.partition, w.offset, w.metadata) for w in wanted]


def test_group_survives_a_minute_of_churn(broker):
    """10 consumers joining and leaving at random for a minute while a producer runs; afterwards the
    group is Stable, every partition is owned once, and no committed offset went backwards."""
    topic, partitions, group = "churn", 12, f"churn-{uuid.uuid4().hex[:6]}"
    create(broker.bootstrap, topic, partitions)
    stop = threading.Event()
    errors = []

    def produce():
        p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
        i = 0
        while not stop.is_set():
            p.produce(topic, value=b"c%08d" % i)
            i += 1
            p.poll(0)
            time.sleep(0.002)
        p.flush(30)

    high = {}

    def watch_commits():
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
        while not stop.is_set():
            try:
                for tp in c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10):
                    if tp.offset >= 0:
                        if tp.offset < high.get(tp.partition, -1):
                            errors.append(f"partition {tp.partition} went back from {high[tp.partition]} to {tp.offset}")
                        high[tp.partition] = max(tp.offset, high.get(tp.partition, -1))
            except Exception as e:  # a coordinator hiccup is not a regression; a backwards offset is
                errors.append(f"committed() failed: {e}")
            time.sleep(0.5)

    def new_member(i):
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "client.id": f"churn-{i}",
                      "session.timeout.ms": 6000, "heartbeat.interval.ms": 500, "auto.commit.interval.ms": 300,
                      "auto.offset.reset": "earliest"})
        c.subscribe([topic])
        return c

    threads = [threading.Thread(target=produce), threading.Thread(target=watch_commits)]
    for t in threads:
        t.start()
    rnd = random.Random(7)
    members = {}
    n = 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if members and (len(members) >= 10 or rnd.random() < 0.4):
                k = rnd.choice(list(members))
                members.pop(k).close()
            else:
                members[n] = new_member(n)
                n += 1
            end = time.monotonic() + rnd.uniform(0.5, 3)
            while time.monotonic() < end:
                for c in list(members.values()):
                    m = c.poll(0.05)
                    if m is not None and m.error() and m.error().code() != KafkaError._PARTITION_EOF:
                        errors.append(str(m.error()))
        if not members:
            members[n] = new_member(n)
        # Settle: keep polling until the group is Stable and the partitions are split among the members.
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        settle = time.monotonic() + 60
        owned = None
        while time.monotonic() < settle:
            for c in members.values():
                c.poll(0.1)
            d = admin.describe_consumer_groups([group])[group].result(10)
            owned = sorted(tp.partition for m in d.members for tp in m.assignment.topic_partitions)
            if d.state == ConsumerGroupState.STABLE and owned == list(range(partitions)) and len(d.members) == len(members):
                break
        else:
            raise AssertionError(f"group not stable with every partition owned once: {owned}")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        for c in members.values():
            c.close()
    assert not [e for e in errors if "went back" in e], errors
    assert n >= 15, "there really was churn"
    print(f"members created={n} final={len(members)} errors={errors[:5]}")
