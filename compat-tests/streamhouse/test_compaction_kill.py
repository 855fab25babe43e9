"""StreamHouse-only: key compaction (the log cleaner) killed with SIGKILL in the middle of cleaning
loses nothing and leaves no garbage after the restart, on local disk and in S3 mode (the loopback S3
server of scripts/s3).

A compacted topic (segment.bytes=1 MiB, segment.ms=100, min.cleanable.dirty.ratio=0.01, one
partition) gets 200,000 records of ~200 bytes over 1,000 keys in four acknowledged rounds; the broker
runs its cleaner every 200 ms. After each round the broker is killed with SIGKILL while a cleaning
pass is under way (the cleaner's "offset map built" debug line is in the log and its "log cleaner
pass" line not yet: the rewrite phase), or, when no pass is seen in time, at a random moment; after
two of the restarts it is killed again during the first pass of the restarted broker, which cleans
what the killed one left. Each kill is followed by a restart on the same data dir (and S3 prefix).

Checked after every kill: the cleaner's partial output (local: segment files no metadata row
references; S3: upload intents and their objects) is gone after the restart. After the last
restart, once cleaning has settled: every key's last value is the last one acknowledged, each record
read is exactly the one acknowledged at its offset, offsets strictly increase, the high watermark is
the number of records produced, the earliest offset is 0; every segment file / object is referenced
by the metadata store (segments or retired_segments), every block's segment exists, and (S3) no
upload intent is left.

Needs STREAMHOUSE_BIN (the built `streamhouse` binary). Run by scripts/test.sh.
"""
import os
import random
import re
import sqlite3
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from broker_process import BIN, BrokerProcess, free_port
from test_s3 import list_objects, s3, s3_broker  # noqa: F401  (the loopback S3 server fixture)

TOPIC = "compaction-kill"
KEYS = 1000
ROUNDS = 4
PER_ROUND = 50_000
VALUE_BYTES = 200
SEGMENT_BYTES = 1 << 20
# Restart after these rounds' kills is killed again during the restarted broker's first pass.
DOUBLE_KILL_ROUNDS = (1, 3)
# Kills that must land inside a cleaning; rounds of EXTRA_ROUND records (at most 4) are added until so.
MIN_MID_PASS_KILLS = 3
EXTRA_ROUND = 20_000
MAP_BUILT = "offset map built"
PASS_DONE = "log cleaner pass"
SEG_NAME = re.compile(r"^(\d{20})\.seg$")


def value_of(i, key):
    head = b"v%07d|k%04d|" % (i, key)
    return head + b"x" * (VALUE_BYTES - len(head))


def index_of(value):
    return int(value[1:8])


class Broker:
    """A BrokerProcess in one of the two modes, plus what this scenario reads of it: its log (the
    part written by the current process), its /metrics and its metadata store."""

    def __init__(self, mode, tmp, s3_env, monkeypatch):
        self.mode, self.tmp = mode, Path(tmp)
        self.metrics_port = free_port()
        # The cleaner's debug lines mark a partition being cleaned (and the log's end, a kill's moment).
        monkeypatch.setenv("RUST_LOG", "info,streamhouse_storage::engine::cleaner=debug")
        extra = ["--log-cleaner-backoff-ms", "200", "--file-delete-delay-ms", "1000",
                 "--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        self.log_pos = 0
        if mode == "local":
            self.prefix = None
            self.b = BrokerProcess(self.tmp / "data", free_port(), extra)
            self.log_path = self.tmp / f"broker-{self.b.port}.log"
            self.b.start()
        else:
            self.s3 = s3_env
            self.prefix = f"cmpkill-{uuid.uuid4().hex[:8]}"
            port = free_port()
            self.log_path = self.tmp / f"broker-{port}.log"
            self.b = s3_broker(s3_env, tmp, self.prefix, extra=extra, port=port)
        self.bootstrap = self.b.bootstrap
        self.data_dir = Path(self.b.data_dir)

    def restart_after_kill9(self):
        self.b.kill9()
        kill_log = self.new_log()
        self.log_pos = self.log_path.stat().st_size
        return kill_log

    def start(self):
        self.b.start()

    def new_log(self):
        """The log written since the current process started."""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_pos)
            return f.read().decode("utf-8", "replace")

    def cleaning_now(self):
        """Whether the log's last cleaner line says a partition is being cleaned (rewrite phase)."""
        text = self.new_log()
        return text.rfind(MAP_BUILT) > text.rfind(PASS_DONE)

    def metrics(self):
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        out = {}
        for line in body.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, v = line.split()
                out[name] = float(v)
        return out

    def meta(self):
        """segments, retired_segments, upload_intents and the segment ids blocks point to, in one
        read transaction of metadata.db (read-only)."""
        db = sqlite3.connect(f"file:{self.data_dir / 'metadata.db'}?mode=ro", uri=True, timeout=30)
        try:
            db.execute("BEGIN")
            q = lambda sql: {r[0] for r in db.execute(sql)}  # noqa: E731
            m = {"segments": q("SELECT segment_id FROM segments"),
                 "retired": q("SELECT segment_id FROM retired_segments"),
                 "retired_ms": dict(db.execute("SELECT segment_id, retired_ms FROM retired_segments")),
                 "intents": q("SELECT segment_id FROM upload_intents"),
                 "block_segments": q("SELECT DISTINCT segment_id FROM blocks")}
            newest = db.execute("SELECT last_offset - base_offset + 1 FROM blocks b JOIN topics t "
                                "ON b.topic_id = t.topic_id WHERE t.name = ? ORDER BY base_offset DESC "
                                "LIMIT 1", (TOPIC,)).fetchone()
            m["newest_block_records"] = newest[0] if newest else 0
            db.execute("COMMIT")
            return m
        finally:
            db.close()

    def stored(self):
        """Segment files (local) or segment objects (S3) as {id or None for a foreign name: [names]}."""
        if self.mode == "local":
            names = [p.name for p in (self.data_dir / "segments").iterdir()]
        else:
            names = [k.rsplit("/", 1)[1] for k in list_objects(self.s3, self.prefix)]
        out = {}
        for n in names:
            m = SEG_NAME.match(n)
            out.setdefault(int(m.group(1)) if m else None, []).append(n)
        return out

    def unreferenced(self):
        """Stored segments the metadata store knows nothing of (a file store read before the metadata:
        an upload under way is then in upload_intents, a local write not yet committed is not)."""
        stored = self.stored()
        meta = self.meta()
        known = meta["segments"] | meta["retired"]
        return {k: v for k, v in stored.items() if k is None or k not in known}, meta, stored


def produce_round(bootstrap, r, n, rng, last, acked_at):
    """n records over KEYS keys, every one acknowledged; last[key] = the last value produced."""
    errors, base = [], len(acked_at)

    def cb(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acked_at[index_of(msg.value())] = msg.offset()

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                  "linger.ms": 5, "message.timeout.ms": 120000})
    for i in range(base, base + n):
        key = rng.randrange(KEYS)
        v = value_of(i, key)
        while True:
            try:
                p.produce(TOPIC, key=b"k%04d" % key, value=v, partition=0, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.05)
        last[key] = v
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(120) == 0, "round not delivered"
    assert not errors, errors[:5]


def kill_while_cleaning(br, wait_s, delay_s, rng):
    """SIGKILL delay_s after the log shows a partition being cleaned (or at a random moment if none is
    seen within wait_s); restart. Returns evidence of the moment: whether the killed broker's log ends
    inside a cleaning (its last cleaner line "offset map built"), and its partial output."""
    deadline = time.monotonic() + wait_s
    random_at = time.monotonic() + rng.uniform(0.05, wait_s)
    before = br.metrics()
    seen = False
    while time.monotonic() < deadline:
        if br.cleaning_now():
            seen = True
            time.sleep(delay_s)
            break
        time.sleep(0.003)
    else:
        while time.monotonic() < random_at:
            time.sleep(0.01)
    log = br.restart_after_kill9()
    mid_pass = log.rfind(MAP_BUILT) > log.rfind(PASS_DONE)
    leftover, meta, _ = br.unreferenced()  # the killed broker's partial output, nothing running now
    ev = {"mid_pass": mid_pass, "aimed": f"{delay_s * 1000:.0f} ms after {MAP_BUILT!r}" if seen else "random",
          "passes_done_before": before.get("streamhouse_cleaner_passes_total"),
          "partial_output": sorted(k for k in leftover if k is not None), "intents": sorted(meta["intents"])}
    br.start()
    return ev, leftover, meta["intents"]


def check_leftovers_gone(br, leftover, intents):
    """What the kill left half-written is removed by the restart (recovery runs before listening)."""
    stored = br.stored()
    for k, names in leftover.items():
        if k is not None:
            assert k not in stored, f"partial cleaner output {names} still stored after the restart"
    if intents:
        still = br.meta()["intents"] & set(intents)
        assert not still, f"upload intents {sorted(still)} from before the kill still there after the restart"
        for k in intents:
            assert k not in stored or k in br.meta()["segments"], f"uncommitted upload {k} still stored"


def read_from_start(bootstrap, timeout=60):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "compaction-kill-check",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    c.assign([TopicPartition(TOPIC, 0, 0)])
    out, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        return out
                    raise AssertionError(m.error())
                out.append((m.offset(), m.key(), m.value()))
        raise AssertionError(f"no end of partition in {timeout}s after {len(out)} records")
    finally:
        c.close()


def watermarks(bootstrap):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "compaction-kill-wm"})
    try:
        return c.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=10)
    finally:
        c.close()


@pytest.mark.parametrize("mode", ["local", "s3"])
def test_cleaner_killed_mid_pass_loses_nothing_leaves_no_garbage(mode, request, monkeypatch):
    if not os.path.exists(BIN):
        pytest.fail(f"StreamHouse binary not found at {BIN} (build with cargo build --release)")
    s3_env = request.getfixturevalue("s3") if mode == "s3" else None
    rng = random.Random(0xC1EA)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        br = Broker(mode, tmp, s3_env, monkeypatch)
        try:
            admin = AdminClient({"bootstrap.servers": br.bootstrap})
            admin.create_topics([NewTopic(TOPIC, 1, 1, config={
                "cleanup.policy": "compact", "segment.bytes": str(SEGMENT_BYTES), "segment.ms": "100",
                "min.cleanable.dirty.ratio": "0.01"})])[TOPIC].result(30)
            last, acked_at, kills = {}, {}, []
            # How long after the cleaning shows in the log each kill waits: 0 kills while it reads, the
            # others later in the rewrite (or, for a short pass, just after it).
            delays = iter([0, 0.01, 0.02, 0.005, 0.015, 0, 0.01, 0, 0.005, 0])
            r = 0
            while r < ROUNDS or (sum(e["mid_pass"] for _, e in kills) < MIN_MID_PASS_KILLS and r < ROUNDS + 4):
                produce_round(br.bootstrap, r, PER_ROUND if r < ROUNDS else EXTRA_ROUND, rng, last, acked_at)
                ev, leftover, intents = kill_while_cleaning(br, 4.0, next(delays), rng)
                kills.append((f"after round {r}", ev))
                check_leftovers_gone(br, leftover, intents)
                if r in DOUBLE_KILL_ROUNDS:  # again, in the restarted broker's first pass
                    ev, leftover, intents = kill_while_cleaning(br, 3.0, next(delays), rng)
                    kills.append((f"first pass after restart {r}", ev))
                    check_leftovers_gone(br, leftover, intents)
                r += 1
            print(f"\n[{mode}] kills:")
            for what, e in kills:
                print(f"  kill {what}: {e}")
            total = ROUNDS * PER_ROUND + (r - ROUNDS) * EXTRA_ROUND
            assert len(acked_at) == total, f"{total - len(acked_at)} records not acknowledged"

            # Cleaning settles: the count from the beginning stops dropping over a cleaner pass.
            counts, deadline = [], time.monotonic() + 45
            while True:
                passes = br.metrics()["streamhouse_cleaner_passes_total"]
                records = read_from_start(br.bootstrap)
                counts.append(len(records))
                if len(counts) >= 2 and counts[-1] == counts[-2] and counts[-1] <= KEYS + PER_ROUND:
                    break
                assert time.monotonic() < deadline, f"cleaning did not settle: counts {counts}"
                while br.metrics()["streamhouse_cleaner_passes_total"] < passes + 2:
                    assert time.monotonic() < deadline, f"the cleaner stopped making passes: counts {counts}"
                    time.sleep(0.05)
            meta = br.meta()
            assert len(records) <= KEYS + meta["newest_block_records"], (
                f"{len(records)} records after cleaning: more than one per key plus the head "
                f"({meta['newest_block_records']} in the newest block); counts {counts}")

            # Nothing acknowledged is lost; nothing is changed or invented.
            offsets = [o for o, _, _ in records]
            assert all(a < b for a, b in zip(offsets, offsets[1:])), "offsets strictly increase"
            seen = {}
            for off, key, value in records:
                i = index_of(value)
                assert acked_at.get(i) == off, f"record {value[:20]!r} at offset {off}, acknowledged at {acked_at.get(i)}"
                assert key == b"k%04d" % int(value[10:14]), f"key {key!r} with value {value[:20]!r}"
                seen[int(key[1:])] = value
            missing = [k for k in last if k not in seen]
            assert not missing, f"keys lost: {missing[:10]} ({len(missing)})"
            wrong = [(k, seen[k][:20], last[k][:20]) for k in last if seen[k] != last[k]]
            assert not wrong, f"keys whose last value is not the last produced: {wrong[:5]} ({len(wrong)})"
            low, high = watermarks(br.bootstrap)
            assert high == total, f"high watermark {high}, produced {total}"
            assert low == 0, f"earliest offset {low}"
            assert max(acked_at.values()) == total - 1

            # No garbage: every stored segment is referenced (two looks, 2 s apart, past
            # file.delete.delay.ms, so a write about to be committed is not mistaken for garbage).
            time.sleep(1.5)
            first, _, _ = br.unreferenced()
            time.sleep(2)
            second, meta, stored = br.unreferenced()
            garbage = {k: v for k, v in second.items() if k in first}
            assert not garbage, f"unreferenced segments {garbage} (metadata: {len(meta['segments'])} " \
                                f"segments, retired {sorted(meta['retired'])})"
            overdue = {k: v for k, v in meta["retired_ms"].items() if v < time.time() * 1000 - 3000}
            assert not overdue, f"retired segments not deleted 3 s after retiring (delay 1 s): {overdue}"
            lost = meta["block_segments"] - set(stored)
            assert not lost, f"blocks point at segments not stored: {sorted(lost)}"
            if mode == "s3":
                assert not meta["intents"], f"upload intents left: {sorted(meta['intents'])}"
            m = br.metrics()
            mid = sum(1 for _, e in kills if e["mid_pass"])
            partial = sum(1 for _, e in kills if e["partial_output"] or e["intents"])
            print(f"[{mode}] {len(kills)} kills, {mid} in a cleaning pass (log), {partial} leaving partial "
                  f"output; records after cleaning {len(records)} (counts {counts}); stored segments "
                  f"{len(stored)}; cleaner since last start: passes={m['streamhouse_cleaner_passes_total']:.0f} "
                  f"partitions={m['streamhouse_cleaner_partitions_cleaned_total']:.0f} "
                  f"busy_ms={m['streamhouse_cleaner_busy_milliseconds_total']:.0f}; "
                  f"{time.monotonic() - started:.1f}s")
            log = br.log_path.read_text(errors="replace")
            for bad in ("background storage pass failed", "panicked"):
                assert bad not in log, f"broker log has {bad!r}: " + next(l for l in log.splitlines() if bad in l)
            assert mid >= MIN_MID_PASS_KILLS, f"only {mid} of {len(kills)} kills landed in a cleaning pass: {kills}"
        finally:
            br.b.stop()
