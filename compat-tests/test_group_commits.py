"""Committed offsets and group membership under rebalances, the same against every broker (issue 16):
asynchronous commits with several in flight end at the last one (librdkafka and Java's commitAsync);
a consumer closing during a rebalance commits before it leaves, its later stale commit is refused and
the new owner's commit stands; a killed member is removed by its session timeout while a rebalance
waits for it; authorized-operations bitfields as Kafka answers them without an authorizer."""
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, TopicCollection, TopicPartition
from confluent_kafka.admin import AclOperation, AdminClient

from compat_util import REPO, create_topic, produce_all, producer, wait_until

SESSION_MS = 6000  # the broker minimum (group.min.session.timeout.ms)


def subscribed_consumer(bootstrap, group, topic, on_commit=None, **conf):
    c = {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
         "enable.auto.commit": False, "session.timeout.ms": SESSION_MS, "heartbeat.interval.ms": 500}
    c.update({k.replace("_", "."): v for k, v in conf.items()})
    if on_commit is not None:
        c["on_commit"] = on_commit
    consumer = Consumer(c)
    assigned = []
    consumer.subscribe([topic], on_assign=lambda _c, ps: assigned.extend(ps))
    deadline = time.monotonic() + 60
    while not assigned and time.monotonic() < deadline:
        consumer.poll(0.1)
    assert assigned, "no assignment within 60 s"
    return consumer


def test_librdkafka_async_commits_end_at_the_last_offset(broker, topic):
    create_topic(broker.bootstrap, topic, partitions=1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    done, errors = [], []

    def on_commit(err, parts):
        done.append(1)
        if err is not None:
            errors.append(err)

    c = subscribed_consumer(broker.bootstrap, group, topic, on_commit=on_commit)
    try:
        tp = lambda o: TopicPartition(topic, 0, o)
        n = 200
        for i in range(1, n + 1):
            c.commit(offsets=[tp(i)], asynchronous=True)  # many in flight at once
        # Right behind them on the coordinator connection: sees every one of them applied.
        at_once = c.committed([tp(-1001)], timeout=30)[0].offset
        wait_until(lambda: c.poll(0.1) is None and len(done) >= n, 60, "every commit callback")
        assert not errors, errors
        assert at_once == n, f"committed() right after the commits: {at_once}"
        assert c.committed([tp(-1001)], timeout=30)[0].offset == n
    finally:
        c.close()


JAVA_COMMIT_ASYNC = textwrap.dedent("""
    import java.time.Duration;
    import java.util.*;
    import org.apache.kafka.clients.consumer.*;
    import org.apache.kafka.common.TopicPartition;

    public class CommitAsync {
        public static void main(String[] a) {
            Properties p = new Properties();
            p.put("bootstrap.servers", a[0]);
            p.put("group.id", a[1]);
            p.put("group.protocol", a[3]);
            p.put("enable.auto.commit", "false");
            p.put("key.deserializer", "org.apache.kafka.common.serialization.ByteArrayDeserializer");
            p.put("value.deserializer", "org.apache.kafka.common.serialization.ByteArrayDeserializer");
            try (KafkaConsumer<byte[], byte[]> c = new KafkaConsumer<>(p)) {
                TopicPartition tp = new TopicPartition(a[2], 0);
                c.subscribe(List.of(a[2]));
                long deadline = System.currentTimeMillis() + 60000;
                while (c.assignment().isEmpty() && System.currentTimeMillis() < deadline) c.poll(Duration.ofMillis(100));
                int n = 100;
                int[] done = {0};
                List<String> errors = new ArrayList<>();
                for (int i = 1; i <= n; i++) {
                    c.commitAsync(Map.of(tp, new OffsetAndMetadata(i)), (o, e) -> {
                        done[0]++;
                        if (e != null) errors.add(e.toString());
                    });
                }
                OffsetAndMetadata atOnce = c.committed(Set.of(tp), Duration.ofSeconds(30)).get(tp);
                while (done[0] < n && System.currentTimeMillis() < deadline) c.poll(Duration.ofMillis(100));
                System.out.println("AT_ONCE " + (atOnce == null ? -1 : atOnce.offset()));
                System.out.println("CALLBACKS " + done[0] + " ERRORS " + errors.size() + " " + errors);
                System.out.println("COMMITTED " + c.committed(Set.of(tp), Duration.ofSeconds(30)).get(tp).offset());
            }
        }
    }
""")


def kafka_classpath():
    """The Kafka jars' classpath as scripts/kafka/kafka.sh uses it (KAFKA_LIBS, or the fetched cache)."""
    common = REPO / "scripts" / "kafka" / "common.sh"
    r = subprocess.run(["bash", "-c", f'. "{common}" && kafka_cp'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    return r.stdout.strip()


@pytest.fixture(scope="module")
def commit_async_class():
    """CommitAsync.java compiled against the Kafka 4.4 client jars (javac from the JDK)."""
    out = Path(tempfile.mkdtemp(prefix="commit-async-"))
    (out / "CommitAsync.java").write_text(JAVA_COMMIT_ASYNC)
    cp = kafka_classpath()
    r = subprocess.run(["javac", "-cp", cp, "-d", str(out), str(out / "CommitAsync.java")],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    return f"{cp}:{out}"


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_java_commit_async_ends_at_the_last_offset(broker, topic, commit_async_class, protocol):
    create_topic(broker.bootstrap, topic, partitions=1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    log4j = REPO / "scripts" / "kafka" / "log4j2-tools.properties"
    r = subprocess.run(["java", "-Xmx256M", f"-Dlog4j2.configurationFile={log4j}", "-cp", commit_async_class,
                        "CommitAsync", broker.bootstrap, group, topic, protocol],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    lines = dict(l.split(" ", 1) for l in r.stdout.splitlines() if " " in l)
    assert lines.get("CALLBACKS", "").startswith("100 ERRORS 0"), r.stdout
    if protocol == "consumer":
        # The KIP-848 consumer sends its commits at once, so committed() right behind them sees the
        # last one; the classic one sends them at its next poll (committed() can come first, on Kafka too).
        assert lines.get("AT_ONCE") == "100", r.stdout
    assert lines.get("COMMITTED") == "100", r.stdout


# ---- a minimal Kafka client, to hold a member's connection and generation exactly -----------------

def _str(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def _nstr(s):
    return struct.pack(">h", -1) if s is None else _str(s)


def _bytes(b):
    return struct.pack(">i", len(b)) + b


def _array(items):
    return struct.pack(">i", len(items)) + b"".join(items)


class Reader:
    def __init__(self, b):
        self.b, self.i = b, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.b, self.i)
        self.i += struct.calcsize(fmt)
        return v[0]

    def str(self):
        n = self.take(">h")
        if n < 0:
            return None
        s = self.b[self.i:self.i + n].decode()
        self.i += n
        return s

    def bytes(self):
        n = self.take(">i")
        b = self.b[self.i:self.i + max(n, 0)]
        self.i += max(n, 0)
        return b


class Wire:
    """One connection speaking non-flexible request versions; requests may be pipelined."""

    def __init__(self, bootstrap):
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.next_id = 1

    def frame(self, key, version, body):
        cid = self.next_id
        self.next_id += 1
        msg = struct.pack(">hhi", key, version, cid) + _str("wire-compat") + body
        return struct.pack(">i", len(msg)) + msg

    def send(self, *frames):
        self.sock.sendall(b"".join(frames))

    def recv(self):
        n = struct.unpack(">i", self._exact(4))[0]
        r = Reader(self._exact(n))
        r.take(">i")  # correlation id
        return r

    def _exact(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            assert chunk, "broker closed the connection"
            out += chunk
        return out

    def close(self):
        self.sock.close()


def subscription(topic):
    # ConsumerProtocolSubscription v0: topics, user data (null).
    return struct.pack(">h", 0) + _array([_str(topic)]) + struct.pack(">i", -1)


def join_frame(w, group, member):
    body = (_str(group) + struct.pack(">ii", SESSION_MS, 30000) + _str(member) + _nstr(None) + _str("consumer")
            + _array([_str("range") + _bytes(subscription("t"))]))
    return w.frame(11, 5, body)


def read_join(w):
    r = w.recv()
    r.take(">i")
    err, gen = r.take(">h"), r.take(">i")
    r.str()
    leader, member = r.str(), r.str()
    members = []
    for _ in range(r.take(">i")):
        members.append(r.str())
        r.str()  # group instance id
        r.bytes()  # metadata
    return err, gen, leader, member, members


def join(w, group, member=""):
    w.send(join_frame(w, group, member))
    return read_join(w)


def sync(w, group, gen, member, assignments):
    body = (_str(group) + struct.pack(">i", gen) + _str(member) + _nstr(None)
            + _array([_str(m) + _bytes(a) for m, a in assignments]))
    w.send(w.frame(14, 3, body))
    r = w.recv()
    r.take(">i")
    return r.take(">h")


def commit_frame(w, group, gen, member, topic, offset):
    body = (_str(group) + struct.pack(">i", gen) + _str(member) + _nstr(None)
            + _array([_str(topic) + _array([struct.pack(">iqi", 0, offset, -1) + _nstr("")])]))
    return w.frame(8, 7, body)


def read_commit(w):
    r = w.recv()
    r.take(">i")
    r.take(">i")  # one topic
    r.str()
    r.take(">i")  # one partition
    r.take(">i")
    return r.take(">h")


def leave_frame(w, group, member):
    return w.frame(13, 3, _str(group) + _array([_str(member) + _nstr(None)]))


def read_leave(w):
    r = w.recv()
    r.take(">i")
    top = r.take(">h")
    r.take(">i")
    r.str()
    r.str()
    return top, r.take(">h")


def fetch_committed(w, group, topic):
    w.send(w.frame(9, 5, _str(group) + _array([_str(topic) + _array([struct.pack(">i", 0)])])))
    r = w.recv()
    r.take(">i")
    r.take(">i")
    r.str()
    r.take(">i")
    r.take(">i")
    return r.take(">q")


def full_join(w, group):
    err, _, _, member, _ = join(w, group)
    assert err == 79, f"MEMBER_ID_REQUIRED expected, got {err}"
    return join(w, group, member)


def test_consumer_closing_during_a_rebalance(broker, topic):
    """a owns the partition (generation 1); b joins and the group waits for a. a closes: its last
    commit, pipelined with its LeaveGroup, arrives while it is still a member and is taken. b then
    owns the partition (generation 2) and commits; a late commit of a's generation 1 (a retry from the
    closed consumer) is refused, and b's commit stands."""
    create_topic(broker.bootstrap, topic, partitions=1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    a, b = Wire(broker.bootstrap), Wire(broker.bootstrap)
    try:
        err, gen, leader, am, _ = full_join(a, group)
        assert (err, gen, leader) == (0, 1, am)
        assert sync(a, group, 1, am, [(am, b"p0")]) == 0
        assert read_commit_now(a, group, 1, am, topic, 5) == 0
        err, _, _, bm, _ = join(b, group)
        assert err == 79
        b.send(join_frame(b, group, bm))  # b waits in JoinGroup for a to rejoin or go
        time.sleep(0.5)
        a.send(commit_frame(a, group, 1, am, topic, 8), leave_frame(a, group, am))
        assert read_commit(a) == 0, "the commit arrived before the leave"
        assert read_leave(a) == (0, 0)
        err, gen, leader, _, _ = read_join(b)
        assert (err, gen, leader) == (0, 2, bm)
        assert sync(b, group, 2, bm, [(bm, b"p0")]) == 0
        assert fetch_committed(b, group, topic) == 8, "b resumes where a stopped"
        assert read_commit_now(b, group, 2, bm, topic, 12) == 0
        stale = read_commit_now(a, group, 1, am, topic, 9)
        assert stale == 25, f"a's stale commit: UNKNOWN_MEMBER_ID expected, got {stale}"
        assert read_commit_now(a, group, 1, bm, topic, 9) == 22, "ILLEGAL_GENERATION for an old generation"
        assert fetch_committed(b, group, topic) == 12, "the new owner's commit stands"
    finally:
        a.close()
        b.close()


def read_commit_now(w, group, gen, member, topic, offset):
    w.send(commit_frame(w, group, gen, member, topic, offset))
    return read_commit(w)


KILLABLE = textwrap.dedent("""
    import sys
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2], "session.timeout.ms": %d,
                  "heartbeat.interval.ms": 500, "auto.offset.reset": "earliest", "client.id": "victim"})
    c.subscribe([sys.argv[3]], on_assign=lambda c, ps: print("ASSIGNED", len(ps), flush=True))
    while True:
        c.poll(0.2)
""" % SESSION_MS)


def test_member_killed_while_another_joins_expires_with_its_session(broker, topic):
    """The victim is killed (no LeaveGroup) and a second consumer joins at once: the rebalance waits
    for the victim only until its session times out (Kafka's heartbeat purgatory keeps running while
    a rebalance is pending), not for its 300 s rebalance timeout (max.poll.interval.ms)."""
    create_topic(broker.bootstrap, topic, partitions=4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    victim = subprocess.Popen([sys.executable, "-c", KILLABLE, broker.bootstrap, group, topic],
                              stdout=subprocess.PIPE, text=True)
    second = None
    try:
        line = victim.stdout.readline()
        assert line.split() == ["ASSIGNED", "4"], line
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed = time.monotonic()
        got = set()
        second = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "session.timeout.ms": SESSION_MS,
                           "heartbeat.interval.ms": 500, "auto.offset.reset": "earliest"})
        second.subscribe([topic], on_assign=lambda c, ps: got.update(p.partition for p in ps))
        limit = SESSION_MS / 1000 + 8
        while len(got) < 4 and time.monotonic() - killed < limit + 5:
            second.poll(0.1)
        took = time.monotonic() - killed
        assert got == {0, 1, 2, 3}, f"second has {sorted(got)} after {took:.1f}s"
        assert took <= limit, f"took {took:.1f}s, more than session timeout + a few seconds"
    finally:
        if victim.poll() is None:
            victim.kill()
        if second is not None:
            second.close()


TOPIC_OPS = {AclOperation.READ, AclOperation.WRITE, AclOperation.CREATE, AclOperation.DELETE,
             AclOperation.ALTER, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS,
             AclOperation.ALTER_CONFIGS}
CLUSTER_OPS = {AclOperation.CREATE, AclOperation.ALTER, AclOperation.DESCRIBE, AclOperation.CLUSTER_ACTION,
               AclOperation.DESCRIBE_CONFIGS, AclOperation.ALTER_CONFIGS, AclOperation.IDEMPOTENT_WRITE}
GROUP_OPS = {AclOperation.READ, AclOperation.DELETE, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS,
             AclOperation.ALTER_CONFIGS}


def test_authorized_operations_without_an_authorizer(broker, topic):
    """Metadata (topics), DescribeCluster and DescribeGroups with include_authorized_operations: every
    operation the resource type supports, as Kafka answers with no authorizer."""
    admin = create_topic(broker.bootstrap, topic, partitions=1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    c = subscribed_consumer(broker.bootstrap, group, topic)
    try:
        t = admin.describe_topics(TopicCollection([topic]), include_authorized_operations=True)[topic].result(30)
        assert set(t.authorized_operations) == TOPIC_OPS, t.authorized_operations
        cl = admin.describe_cluster(include_authorized_operations=True).result(30)
        assert set(cl.authorized_operations) == CLUSTER_OPS, cl.authorized_operations
        g = admin.describe_consumer_groups([group], include_authorized_operations=True)[group].result(30)
        assert set(g.authorized_operations) == GROUP_OPS, g.authorized_operations
        t = admin.describe_topics(TopicCollection([topic]))[topic].result(30)
        assert not t.authorized_operations, "not asked for: none"
    finally:
        c.close()
