"""Issue 9, memory bound: hostile clients at the configured limits cannot grow the broker past a stated
bound, and a well-behaved client on its own connections keeps being served.

The hostile clients speak the wire protocol by hand (they never read a response):
- hundreds of idle connections;
- connections flooding acks=0 Produce requests of 1 MiB batches, pipelined;
- connections pipelining Fetch requests asking for 2 GiB of a topic holding ~64 MiB;
- connections announcing 100 MB frames and sending nothing more.
The broker runs with its limits set small enough to matter here (the README's memory-bound row says how
the bound follows from them). RSS is sampled from /proc while all of that runs.
"""
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka.record.default_records import DefaultRecordBatchBuilder

from broker_process import BrokerProcess, free_port

MIB = 1 << 20
# Limits given to the broker (flags), and the bound they imply (see README, "Memory bound").
CACHE = 64 * MIB
REQUESTS = 64 * MIB
RESPONSES = 64 * MIB
BOUND_MB = 700


def batch(n, size):
    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                  producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                  batch_size=n * (size + 64) + 1024)
    value = b"x" * size
    now = int(time.time() * 1000)
    for i in range(n):
        b.append(i, timestamp=now, key=None, value=value, headers=[])
    return bytes(b.build())


def s16(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def frame(api_key, version, correlation_id, body):
    head = struct.pack(">hhi", api_key, version, correlation_id) + s16("hostile")
    payload = head + body
    return struct.pack(">i", len(payload)) + payload


def produce_v7(topic, records, acks):
    # transactional_id null, acks, timeout, [topic [partition records]]
    body = struct.pack(">hhi", -1, acks, 30000)
    body += struct.pack(">i", 1) + s16(topic) + struct.pack(">i", 1)
    body += struct.pack(">ii", 0, len(records)) + records
    return body


def fetch_v4(topic, offset):
    body = struct.pack(">iiiib", -1, 500, 1, 0x7FFFFFFF, 0)
    body += struct.pack(">i", 1) + s16(topic) + struct.pack(">i", 1)
    body += struct.pack(">iqi", 0, offset, 0x7FFFFFFF)
    return body


def rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # read nothing, and buffer little
    return s


def read_response(s):
    size = struct.unpack(">i", recv_exact(s, 4))[0]
    return recv_exact(s, size)


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out


@pytest.fixture
def limited_broker(tmp_path):
    b = BrokerProcess(tmp_path / "data", free_port(), extra_args=[
        "--cache-bytes", str(CACHE),
        "--queued-max-request-bytes", str(REQUESTS),
        "--queued-max-response-bytes", str(RESPONSES),
        "--max-connections", "2000",
        "--auto-create-topics-enable", "true",
    ])
    b.start()
    yield b
    b.stop()


def create_topics(bootstrap, *names):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(n, 1, 1) for n in names]).values():
        f.result(30)


def test_hostile_clients_stay_under_the_memory_bound(limited_broker):
    port = limited_broker.port
    pid = limited_broker.proc.pid
    create_topics(limited_broker.bootstrap, "hoard", "flood", "good")
    # 64 MiB of data for the fetchers, written with acks=1 and read back answers.
    s = connect(port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    one_mib = batch(64, 16 * 1024 - 100)
    for i in range(64):
        s.sendall(frame(0, 7, i, produce_v7("hoard", one_mib, 1)))
        r = read_response(s)
        # correlation id, [topic], [partition: index, error code]
        assert struct.unpack(">h", r[4 + 4 + 2 + len("hoard") + 4 + 4:][:2])[0] == 0, r
    s.close()
    baseline = rss_mb(pid)

    stop = threading.Event()
    errors = []
    peak = [baseline]

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.1)

    def flood():
        try:
            c = connect(port)
            payload = frame(0, 7, 1, produce_v7("flood", one_mib, 0))
            while not stop.is_set():
                c.sendall(payload)
        except OSError:
            pass  # the broker may close us; flooding stops

    def fetch_and_never_read():
        try:
            c = connect(port)
            req = b"".join(frame(1, 4, i, fetch_v4("hoard", 0)) for i in range(50))
            c.sendall(req)
            while not stop.is_set():
                time.sleep(0.2)
        except OSError:
            pass

    def half_frames():
        try:
            c = connect(port)
            c.sendall(struct.pack(">i", 100 * MIB) + b"\x00\x00\x00\x07")
            while not stop.is_set():
                time.sleep(0.2)
        except OSError:
            pass

    idle = [connect(port) for _ in range(300)]
    threads = [threading.Thread(target=sample)]
    threads += [threading.Thread(target=flood) for _ in range(8)]
    threads += [threading.Thread(target=fetch_and_never_read) for _ in range(8)]
    threads += [threading.Thread(target=half_frames) for _ in range(4)]
    for t in threads:
        t.daemon = True
        t.start()
    time.sleep(3)

    # The well-behaved client, on connections of its own, keeps being served.
    bootstrap = limited_broker.bootstrap
    p = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 60000, "linger.ms": 5})
    delivered = []
    for i in range(500):
        while True:
            try:
                p.produce("good", value=f"v{i}".encode(), on_delivery=lambda e, m: delivered.append(e))
                break
            except BufferError:
                p.poll(0.1)
    deadline = time.time() + 60
    while len(delivered) < 500 and time.time() < deadline:
        p.poll(0.2)
    assert len(delivered) == 500 and all(e is None for e in delivered), \
        f"{len(delivered)} delivered, errors {[e for e in delivered if e][:3]}"
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "limits", "enable.auto.commit": False})
    c.assign([TopicPartition("good", 0, 0)])
    got = 0
    deadline = time.time() + 60
    while got < 500 and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got += 1
    c.close()
    assert got == 500, f"consumer read {got} of 500 during the attack"
    time.sleep(5)  # keep the pressure on a while longer
    stop.set()
    for t in threads:
        t.join(timeout=10)
    for sock in idle:
        sock.close()
    assert limited_broker.proc.poll() is None, "broker died"
    print(f"RSS baseline {baseline:.0f} MB, peak {peak[0]:.0f} MB under attack (bound {BOUND_MB} MB)")
    assert peak[0] < BOUND_MB, f"peak RSS {peak[0]:.0f} MB over the {BOUND_MB} MB bound"
