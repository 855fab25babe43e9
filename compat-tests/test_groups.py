"""Consumer-group scenarios, the same against every broker: rebalances with librdkafka consumers
(eager and cooperative-sticky), session expiry of a killed member, static membership, the Java tools
(console consumer --group, kafka-consumer-groups) and a KIP-848 Java consumer."""
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition

from compat_util import create_topic, kafka_tool, produce_all, producer, wait_until

SESSION_MS = 6000  # the broker minimum (group.min.session.timeout.ms), so expiry tests stay short


def group_consumer(bootstrap, group, **conf):
    c = {
        "bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
        "session.timeout.ms": SESSION_MS, "heartbeat.interval.ms": 500, "enable.auto.commit": True,
        "auto.commit.interval.ms": 500,
    }
    c.update({k.replace("_", "."): v for k, v in conf.items()})
    return Consumer(c)


class Member:
    """A subscribed consumer that records what it was given and what it read."""

    def __init__(self, bootstrap, group, topic, name, **conf):
        self.name, self.assigned, self.seen = name, set(), []
        self.assign_calls, self.revoked = 0, []
        self.c = group_consumer(bootstrap, group, client_id=name, **conf)
        self.c.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.incremental = conf.get("partition_assignment_strategy") == "cooperative-sticky"

    def _on_assign(self, c, parts):
        self.assign_calls += 1
        if self.incremental:
            self.assigned |= {p.partition for p in parts}
        else:
            self.assigned = {p.partition for p in parts}

    def _on_revoke(self, c, parts):
        self.revoked.append({p.partition for p in parts})
        self.assigned -= {p.partition for p in parts}

    def poll(self):
        m = self.c.poll(0.1)
        if m is not None and not m.error():
            self.seen.append((m.partition(), m.offset(), m.value()))
        elif m is not None and m.error().code() != KafkaError._PARTITION_EOF:
            raise AssertionError(f"{self.name}: {m.error()}")

    def close(self):
        self.c.close()


def poll_until(members, pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in members:
            m.poll()
        if pred():
            return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: " +
                         ", ".join(f"{m.name}={sorted(m.assigned)}" for m in members))


def covers_exactly(members, partitions):
    owned = [p for m in members for p in m.assigned]
    return sorted(owned) == list(range(partitions))


def produce_values(bootstrap, topic, values):
    reports = produce_all(producer(bootstrap, acks="all"), topic, [{"value": v, "key": v} for v in values])
    assert all(r[0] is None for r in reports), reports


def test_group_rebalances_on_join_and_leave(broker, topic):
    """Three consumers on six partitions: each partition once; one leaves: the other two cover all
    six; every record produced along the way is consumed."""
    create_topic(broker.bootstrap, topic, partitions=6)
    group = f"g-{uuid.uuid4().hex[:8]}"
    values = [b"r%05d" % i for i in range(600)]
    produce_values(broker.bootstrap, topic, values[:300])
    members = [Member(broker.bootstrap, group, topic, f"m{i}") for i in range(3)]
    try:
        poll_until(members, lambda: covers_exactly(members, 6) and all(len(m.assigned) == 2 for m in members),
                   60, "three members with two partitions each")
        members[2].close()
        rest = members[:2]
        poll_until(rest, lambda: covers_exactly(rest, 6), 60, "two members covering all six partitions")
        produce_values(broker.bootstrap, topic, values[300:])
        consumed = lambda: {v for m in members for (_, _, v) in m.seen}
        poll_until(rest, lambda: consumed() >= set(values), 60, "every record consumed")
    finally:
        for m in members[:2]:
            m.close()


KILLABLE = textwrap.dedent("""
    import sys, time
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2], "session.timeout.ms": %d,
                  "heartbeat.interval.ms": 500, "auto.offset.reset": "earliest", "client.id": "victim"})
    c.subscribe([sys.argv[3]], on_assign=lambda c, ps: print("ASSIGNED", len(ps), flush=True))
    while True:
        c.poll(0.2)
""" % SESSION_MS)


def test_killed_member_expires_and_its_partitions_move(broker, topic):
    create_topic(broker.bootstrap, topic, partitions=4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    survivor = Member(broker.bootstrap, group, topic, "survivor")
    victim = subprocess.Popen([sys.executable, "-c", KILLABLE, broker.bootstrap, group, topic],
                              stdout=subprocess.PIPE, text=True)
    try:
        poll_until([survivor], lambda: len(survivor.assigned) == 2, 60, "survivor owning half")
        victim.send_signal(signal.SIGKILL)  # no LeaveGroup: only the session timeout can tell
        victim.wait()
        killed_at = time.monotonic()
        poll_until([survivor], lambda: len(survivor.assigned) == 4, 60, "survivor owning all four")
        assert time.monotonic() - killed_at >= SESSION_MS / 1000 * 0.5, "partitions moved before the session could expire"
    finally:
        if victim.poll() is None:
            victim.kill()
        survivor.close()


def test_cooperative_sticky_rebalances_incrementally(broker, topic):
    create_topic(broker.bootstrap, topic, partitions=6)
    group = f"g-{uuid.uuid4().hex[:8]}"
    conf = {"partition_assignment_strategy": "cooperative-sticky"}
    a = Member(broker.bootstrap, group, topic, "a", **conf)
    try:
        poll_until([a], lambda: len(a.assigned) == 6, 60, "a owning all six")
        b = Member(broker.bootstrap, group, topic, "b", **conf)
        try:
            poll_until([a, b], lambda: covers_exactly([a, b], 6) and len(a.assigned) == 3 and len(b.assigned) == 3,
                       60, "three each")
            # Incremental: a gave up only what b took, never its whole assignment.
            assert all(len(r) <= 3 for r in a.revoked), a.revoked
        finally:
            b.close()
    finally:
        a.close()


def test_static_member_restart_keeps_partitions_without_rebalance(broker, topic):
    create_topic(broker.bootstrap, topic, partitions=4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    a = Member(broker.bootstrap, group, topic, "a", group_instance_id="static-a")
    b = Member(broker.bootstrap, group, topic, "b", group_instance_id="static-b")
    try:
        poll_until([a, b], lambda: covers_exactly([a, b], 4) and len(a.assigned) == 2, 60, "two each")
        before_b, a_calls = set(b.assigned), a.assign_calls
        b.close()  # a static member does not leave the group on close
        b = Member(broker.bootstrap, group, topic, "b2", group_instance_id="static-b")
        poll_until([a, b], lambda: b.assigned == before_b, 30, "b back with its partitions")
        for _ in range(20):  # a moment for any (unwanted) rebalance to show up
            a.poll()
            b.poll()
        assert a.assign_calls == a_calls, "the other member was not rebalanced"
        assert len(a.assigned) == 2
    finally:
        a.close()
        b.close()


def test_console_consumer_group_resumes_and_admin_tools(broker, topic):
    create_topic(broker.bootstrap, topic, partitions=1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    lines = [f"line-{i}" for i in range(20)]
    r = kafka_tool("kafka-console-producer", "--bootstrap-server", broker.bootstrap, "--topic", topic,
                   input="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    first = kafka_tool("kafka-console-consumer", "--bootstrap-server", broker.bootstrap, "--topic", topic,
                       "--group", group, "--from-beginning", "--max-messages", "12")
    assert first.stdout.split() == lines[:12], first.stderr
    second = kafka_tool("kafka-console-consumer", "--bootstrap-server", broker.bootstrap, "--topic", topic,
                        "--group", group, "--max-messages", "8", "--timeout-ms", "30000")
    assert second.stdout.split() == lines[12:], "resumed after the committed offset: " + second.stderr
    d = kafka_tool("kafka-consumer-groups", "--bootstrap-server", broker.bootstrap, "--describe", "--group", group)
    row = [l.split() for l in d.stdout.splitlines() if l.startswith(group)]
    assert row and row[0][1:6] == [topic, "0", "20", "20", "0"], d.stdout + d.stderr
    listed = kafka_tool("kafka-consumer-groups", "--bootstrap-server", broker.bootstrap, "--list")
    assert group in listed.stdout.split(), listed.stdout
    reset = kafka_tool("kafka-consumer-groups", "--bootstrap-server", broker.bootstrap, "--group", group,
                       "--reset-offsets", "--to-earliest", "--execute", "--topic", topic)
    assert reset.returncode == 0, reset.stderr
    d = kafka_tool("kafka-consumer-groups", "--bootstrap-server", broker.bootstrap, "--describe", "--group", group)
    row = [l.split() for l in d.stdout.splitlines() if l.startswith(group)]
    assert row and row[0][3:6] == ["0", "20", "20"], d.stdout
    again = kafka_tool("kafka-console-consumer", "--bootstrap-server", broker.bootstrap, "--topic", topic,
                       "--group", group, "--max-messages", "20", "--timeout-ms", "30000")
    assert again.stdout.split() == lines, "reset to earliest took effect"
    deleted = kafka_tool("kafka-consumer-groups", "--bootstrap-server", broker.bootstrap, "--delete", "--group", group)
    assert "successful" in deleted.stdout, deleted.stdout + deleted.stderr


def wait_for_members(broker, group, n, timeout=90):
    """Until kafka-consumer-groups describes `n` members of `group`, each with a partition assigned."""
    deadline = time.time() + timeout
    out = ""
    while time.time() < deadline:
        r = kafka_tool("kafka-consumer-groups", "--bootstrap-server", broker.bootstrap, "--describe",
                       "--members", "--group", group)
        out = r.stdout
        rows = [l.split() for l in out.splitlines() if l.startswith(group + " ")]
        # GROUP CONSUMER-ID HOST CLIENT-ID #PARTITIONS (the partition count is the fifth column)
        if len(rows) == n and all(len(c) >= 5 and c[4].isdigit() and int(c[4]) > 0 for c in rows):
            return
        time.sleep(1)
    raise AssertionError(f"{group}: not {n} members with partitions after {timeout}s: {out} {r.stderr[-300:]}")


def test_kip848_java_consumer_with_a_second_member_joining(broker, topic):
    create_topic(broker.bootstrap, topic, partitions=4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    n = 400
    values = [f"v{i}" for i in range(n)]
    produce_values(broker.bootstrap, topic, [v.encode() for v in values[: n // 2]])
    args = ["--bootstrap-server", broker.bootstrap, "--topic", topic, "--group", group, "--from-beginning",
            "--timeout-ms", "20000", "--command-property", "group.protocol=consumer"]
    env = dict(os.environ, KAFKA_HEAP_OPTS="-Xmx256M")
    kafka_sh = str(kafka_tool.__globals__["KAFKA_SH"])
    first = subprocess.Popen([kafka_sh, "kafka-console-consumer", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    wait_for_members(broker, group, 1)
    second = subprocess.Popen([kafka_sh, "kafka-console-consumer", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    # Not a fixed sleep: a JVM starting on a loaded 2-core box may take longer than any guess.
    wait_for_members(broker, group, 2)
    produce_values(broker.bootstrap, topic, [v.encode() for v in values[n // 2:]])
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    # The tool may print notices on stdout too; records are the "v<n>" lines.
    ours = lambda out: [l for l in out.split() if l.startswith("v")]
    got = ours(out1) + ours(out2)
    assert set(got) == set(values), f"missing {len(set(values) - set(got))}; stderr: {err1[-500:]} {err2[-500:]}"
    assert ours(out2), "the second member got partitions"
