"""Kafka Connect 4.4 in distributed mode, the same against every broker: one worker
(org.apache.kafka.connect.cli.ConnectDistributed) with a FileStreamSource connector (an input file
-> a data topic) and a FileStreamSink connector (the data topic -> an output file), String
converters, offsets flushed every second.

What a correct broker gives: the worker starts (it creates its config, offset and status topics with
cleanup.policy=compact and checks that policy back with DescribeConfigs before it uses them), the
output file gets the input's N lines in order; after the worker is stopped (SIGTERM: a clean stop,
both tasks commit) and M lines are appended to the input, a worker started again with the same
group and topics reads the connectors back from the config topic, the source resumes from the
position it committed to the offsets topic and the sink from its consumer group's offsets: the
output ends with exactly the N+M input lines, none twice, and the data topic holds N+M records.

Exercises on the broker: CreateTopics with a cleanup.policy=compact override (and DescribeConfigs
of it), Connect's group protocol ("connect" protocol type, the sessioned assignor) for the worker
group, the KafkaBasedLog readers of the three compacted topics (read to the end on start: the
connectors' configs, the source offsets), the source task's (non-transactional) producer, and the
sink task's consumer group with its commits."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource

from compat_util import consumer, create_topic, end_offsets

HERE = Path(__file__).resolve().parent
# Where scripts/kafka/fetch.sh puts the Kafka jars (scripts/kafka/common.sh's defaults).
KAFKA_LIBS = Path(os.environ.get("KAFKA_LIBS") or Path(
    os.environ.get("KAFKA_HOME_CACHE")
    or Path.home() / ".cache/streamhouse-kafka" / os.environ.get("KAFKA_VERSION", "4.4.0")) / "libs")

N, M = 500, 300  # input lines before and after the restart

# The worker's INFO log (configs, rebalances, task commits and errors) to its log file.
LOG4J = """status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p [%t] %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = OUT
logger.reflections.name = org.reflections
logger.reflections.level = error
"""


_SHIM_CLASSES = None


def shim_classes():
    """Compiles java/connect-file-shim/ once per session: the one 4.3 client class the connect-file
    4.3.1 connectors call that Kafka 4.4 moved (see the file; scripts/kafka/pom.xml says why
    4.3.1)."""
    global _SHIM_CLASSES
    if _SHIM_CLASSES is None:
        if not shutil.which("javac") or not list(KAFKA_LIBS.glob("kafka-clients-*.jar")):
            pytest.fail(f"javac or the Kafka client jars in {KAFKA_LIBS} missing")
        out = tempfile.mkdtemp(prefix="connect-file-shim-")
        r = subprocess.run(["javac", "-J-Xmx256m", "-d", out, "-cp", f"{KAFKA_LIBS}/*",
                            *map(str, (HERE / "java" / "connect-file-shim").rglob("*.java"))],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        _SHIM_CLASSES = out
    return _SHIM_CLASSES


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """One run of a Connect distributed worker, its log to work/connect-<n>.log."""

    def __init__(self, work, n, props):
        (work / "log4j2.properties").write_text(LOG4J)
        cfg = work / "worker.properties"
        cfg.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        self.rest = f"http://127.0.0.1:{props['rest.advertised.port']}"
        self.path = work / f"connect-{n}.log"
        self.log = open(self.path, "w")
        self.p = subprocess.Popen(
            ["java", "-Xmx512m", f"-Dlog4j2.configurationFile={work / 'log4j2.properties'}",
             "-cp", f"{shim_classes()}:{KAFKA_LIBS}/*",
             "org.apache.kafka.connect.cli.ConnectDistributed", str(cfg)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        """SIGTERM (Connect's clean shutdown: tasks stop and commit, the worker leaves its group);
        returns the exit code."""
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(30)
        self.log.close()
        return self.p.returncode

    def excerpt(self, n=40):
        """The last WARN/ERROR lines (with stack trace heads) of the worker's log."""
        self.log.flush()
        lines = self.path.read_text(errors="replace").splitlines()
        bad = [ln for ln in lines if " WARN " in ln or " ERROR " in ln or ln.startswith(
            ("org.apache", "java.", "Caused by", "\tat org.apache.kafka.connect"))]
        return f"{self.path} (exit {self.p.poll()}):\n" + "\n".join(bad[-n:])

    def request(self, method, path, body=None, timeout=30):
        """(status, decoded JSON body or text); (None, reason) when the REST server is not up."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.rest + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (urllib.error.URLError, ConnectionError, socket.timeout) as e:
            return None, str(e)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def wait(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = pred()
            if got:
                return got
            if not self.alive():
                raise AssertionError(f"the Connect worker exited waiting for {what}\n"
                                     f"{self.excerpt()}")
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.excerpt()}")

    def create_connector(self, name, config, timeout=90):
        """POST /connectors until the herder takes it (before the worker has joined its group and
        read the config topic it answers 409/500/503: "rebalance in progress" or not ready)."""
        last = []

        def post():
            status, body = self.request("POST", "/connectors", {"name": name, "config": config})
            last[:] = [status, body]
            return status == 201

        self.wait(post, timeout, f"POST /connectors {name} to be accepted (last answer: {last})")

    def wait_running(self, name, timeout=90):
        last = []

        def running():
            status, body = self.request("GET", f"/connectors/{name}/status")
            last[:] = [status, body]
            return status == 200 and body["connector"]["state"] == "RUNNING" \
                and len(body["tasks"]) == 1 and body["tasks"][0]["state"] == "RUNNING"

        self.wait(running, timeout, f"connector {name} and its task RUNNING (last status: {last})")


def lines_of(path):
    return path.read_text().splitlines() if path.exists() else []


def wait_output(worker, out, expected, timeout=90):
    """Until the output file has at least as many lines as expected, then a few flush intervals
    more (a late duplicate would show up there): returns its lines."""
    worker.wait(lambda: len(lines_of(out)) >= len(expected), timeout,
                f"{len(expected)} lines in the sink's output file (has {len(lines_of(out))})")
    time.sleep(3)
    return lines_of(out)


def check_output(got, expected):
    if got == expected:
        return
    first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b),
                 min(len(got), len(expected)))
    raise AssertionError(
        f"output has {len(got)} lines ({len(set(got))} distinct), expected {len(expected)}; first "
        f"difference at line {first}: {got[first:first + 1]} instead of "
        f"{expected[first:first + 1]}; lines delivered more than once: {len(got) - len(set(got))}; "
        f"missing: {len(set(expected) - set(got))}")


def read_all(bootstrap, topic, timeout=30):
    """Every record of every partition of topic, to its high watermark: [(partition, key, value)]."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(topic, timeout=10).topics[topic]
    ends = end_offsets(admin, topic, list(md.partitions))
    c = consumer(bootstrap)
    out = []
    try:
        want = {p: hw for p, (_, hw) in ends.items() if hw > 0}
        c.assign([TopicPartition(topic, p, 0) for p in want])
        pos = {p: 0 for p in want}
        deadline = time.monotonic() + timeout
        while any(pos[p] < want[p] for p in want) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    pos[m.partition()] = max(pos[m.partition()], want[m.partition()])
                    continue
                raise AssertionError(f"consume error on {topic}: {m.error()}")
            pos[m.partition()] = m.offset() + 1
            out.append((m.partition(), m.key(), m.value()))
        assert all(pos[p] >= want[p] for p in want), (topic, pos, want)
    finally:
        c.close()
    return out


def test_connect_distributed_file_source_and_sink_resume(broker, topic):
    if not list(KAFKA_LIBS.glob("connect-runtime-*.jar")) or not list(
            KAFKA_LIBS.glob("connect-file-*.jar")):
        pytest.fail(f"the Connect runtime or connect-file jar missing from {KAFKA_LIBS} "
                    "(scripts/kafka/fetch.sh)")
    B = broker.bootstrap
    data = topic + "-data"
    internal = {"config": topic + "-configs", "offset": topic + "-offsets",
                "status": topic + "-status"}
    admin = create_topic(B, data, partitions=1)  # one partition: the output keeps input order
    work = Path(tempfile.mkdtemp(prefix="connect-"))
    src_file, out_file = work / "input.txt", work / "output.txt"
    run = uuid.uuid4().hex[:8]
    lines = [f"line {i:05d} of run {run}" for i in range(N + M)]
    src_file.write_text("".join(ln + "\n" for ln in lines[:N]))
    port = free_port()
    props = {
        "bootstrap.servers": B,
        "group.id": f"connect-{topic}",
        "config.storage.topic": internal["config"],
        "offset.storage.topic": internal["offset"],
        "status.storage.topic": internal["status"],
        "config.storage.replication.factor": 1,
        "offset.storage.replication.factor": 1,
        "status.storage.replication.factor": 1,
        "key.converter": "org.apache.kafka.connect.storage.StringConverter",
        "value.converter": "org.apache.kafka.connect.storage.StringConverter",
        "listeners": f"http://127.0.0.1:{port}",
        "rest.advertised.host.name": "127.0.0.1",
        "rest.advertised.port": port,
        "offset.flush.interval.ms": 1000,
        "scheduled.rebalance.max.delay.ms": 0,
        # The FileStream connectors are on the worker's classpath (scripts/kafka/fetch.sh's jars)
        # with ServiceLoader manifests, like every plugin there: found at once, where the default
        # (hybrid_warn) also reflection-scans the whole classpath, ~11 s per worker start here.
        "plugin.discovery": "service_load",
        "task.shutdown.graceful.timeout.ms": 10000,
    }
    src_name, sink_name = f"file-source-{run}", f"file-sink-{run}"
    source = {"connector.class": "org.apache.kafka.connect.file.FileStreamSourceConnector",
              "tasks.max": "1", "file": str(src_file), "topic": data}
    sink = {"connector.class": "org.apache.kafka.connect.file.FileStreamSinkConnector",
            "tasks.max": "1", "file": str(out_file), "topics": data}
    workers = []
    try:
        # 1. First worker: the connectors deliver the N lines.
        t0 = time.monotonic()
        workers.append(Worker(work, 1, props))
        w = workers[-1]
        w.wait(lambda: w.request("GET", "/")[0] == 200, 90, "the worker's REST API")
        w.create_connector(src_name, source)
        w.create_connector(sink_name, sink)
        w.wait_running(src_name)
        w.wait_running(sink_name)
        check_output(wait_output(w, out_file, lines[:N]), lines[:N])

        # 2. The three internal topics are there, created by the worker with cleanup.policy=compact
        # (Connect refuses to run on its config/offset/status topics without it).
        res = {k: ConfigResource(ConfigResource.Type.TOPIC, t) for k, t in internal.items()}
        got = {}
        for k, r in res.items():
            e = admin.describe_configs([r])[r].result(30)["cleanup.policy"]
            got[k] = (e.value, ConfigSource(e.source))
        assert got == {k: ("compact", ConfigSource.DYNAMIC_TOPIC_CONFIG) for k in internal}, got
        md = admin.list_topics(timeout=10).topics
        # The config topic must have exactly one partition (Connect checks that too).
        assert len(md[internal["config"]].partitions) == 1, md[internal["config"]].partitions

        # 3. A clean stop: both tasks commit (source: its file position to the offsets topic).
        assert w.stop() in (0, 130, 143), w.excerpt()
        src_key = json.dumps([src_name, {"filename": str(src_file)}], separators=(",", ":"))
        committed = [json.loads(v) for _, k, v in read_all(B, internal["offset"])
                     if k is not None and k.decode() == src_key and v is not None]
        assert committed and committed[-1] == {"position": len(src_file.read_bytes())}, \
            (src_key, committed[-5:])

        # 4. M more lines; a new worker (same group, same topics) reads the connectors back from
        # the config topic and resumes both.
        with open(src_file, "a") as f:
            f.write("".join(ln + "\n" for ln in lines[N:]))
        workers.append(Worker(work, 2, props))
        w = workers[-1]
        w.wait(lambda: w.request("GET", "/")[0] == 200, 90, "the restarted worker's REST API")
        names = sorted([src_name, sink_name])
        w.wait(lambda: sorted(w.request("GET", "/connectors")[1] or []) == names, 90,
               "both connectors read back from the config topic")
        w.wait_running(src_name)
        w.wait_running(sink_name)
        check_output(wait_output(w, out_file, lines), lines)
        # The source re-read nothing: the data topic holds each line once.
        assert end_offsets(admin, data, [0])[0][1] == N + M, end_offsets(admin, data, [0])
        # The sink's consumer group ("connect-<connector name>") committed up to the end.
        grp = f"connect-{sink_name}"

        def sink_committed():
            f = admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(grp, [TopicPartition(data, 0)])])[grp]
            return f.result(15).topic_partitions[0].offset == N + M

        w.wait(sink_committed, 30, f"group {grp} to commit offset {N + M} on {data}")
        print(f"{broker.name}: {N} + {M} lines through source and sink across a worker restart "
              f"in {time.monotonic() - t0:.1f}s; source position committed {committed[-1]}")
        assert w.stop() in (0, 130, 143), w.excerpt()
    finally:
        for w in workers:
            w.stop()
    shutil.rmtree(work, ignore_errors=True)
