"""Transactions with franz-go (github.com/twmb/franz-go, the kgo package; go/txn/main.go), the same
against every broker. franz-go negotiates KIP-890 part 2 when the broker finalizes
transaction.version 2 (Produce v12 adding partitions implicitly, EndTxn v5 bumping the epoch), and
KIP-447 for its GroupTransactSession (TxnOffsetCommit with the member's generation, OffsetFetch
requiring stable offsets).

1. A kgo transactional producer commits, aborts and commits again over two partitions; kgo
   consumers with FetchIsolationLevel(ReadCommitted()) are handed exactly the committed records,
   ReadUncommitted() all of them, at the offsets their producer was told.
2. A kgo.GroupTransactSession ETL loop (consume the input in a group read_committed, produce the
   transformed records, commit the offsets with them, one transaction per batch) is killed with
   SIGKILL in the middle of a batch, and a second instance with the same transactional id and group
   finishes the input: the output as read_committed has every input record transformed exactly
   once, in input order per partition, and the group's committed offsets are at the input's end.

The Go program is built once per session (go build into a temporary folder). Its modules come from
the Go module proxy into $STREAMHOUSE_GO_CACHE (default ~/.cache/streamhouse-go: GOMODCACHE mod/,
GOCACHE build/), which scripts/install-deps.sh fills ahead; the kgo log (debug level) of every run is
kept in a temporary folder named in the failure message."""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from compat_util import create_topic, produce_all, producer
from test_transactions import wait_settled

HERE = Path(__file__).resolve().parent
GO_SRC = HERE / "go" / "txn"
GO_CACHE = Path(os.environ.get("STREAMHOUSE_GO_CACHE") or Path.home() / ".cache" / "streamhouse-go")
SENTINEL = "--end--"  # a plain record after everything else: readers stop at it on every partition
PARTS = (0, 1)
# kgo log lines worth quoting in a failure: warnings, errors, failed requests, Kafka error names.
NOTABLE = re.compile(r"\[(WARN|ERROR)\]|err: (?!<nil>)|\b[A-Z]{3,}(_[A-Z]+)+\b")

_BIN = None
_LOGS = None


def go_env():
    return dict(os.environ, GOMODCACHE=str(GO_CACHE / "mod"), GOCACHE=str(GO_CACHE / "build"),
                GOFLAGS="-modcacherw -buildvcs=false")


def go_binary():
    """go/txn built once per session (modules from the cache install-deps.sh filled, or downloaded
    into it now)."""
    global _BIN, _LOGS
    if _BIN is None:
        go = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK)
                                    else None)
        if not go:
            pytest.fail("go not installed (scripts/install-deps.sh)")
        out = tempfile.mkdtemp(prefix="franz-go-")
        r = subprocess.run([go, "build", "-o", f"{out}/txn", "."], cwd=GO_SRC, env=go_env(),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        _BIN, _LOGS = f"{out}/txn", Path(out)
    return _BIN


class Go:
    """One run of the Go program: stdout lines (split on spaces) collected by a thread, the kgo log
    to a file."""

    def __init__(self, name, *args):
        binary = go_binary()
        self.log_path = _LOGS / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.lines = []
        self.p = subprocess.Popen([binary, *map(str, args)], stdout=subprocess.PIPE,
                                  stderr=self.log, stdin=subprocess.DEVNULL, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n").split(" "))

    def alive(self):
        return self.p.poll() is None

    def wait(self, timeout):
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(10)
            raise AssertionError(f"still running after {timeout}s\n{self.excerpt()}")
        finally:
            self.reader.join(10)
            self.log.close()
        assert self.p.returncode == 0, self.excerpt()
        return self.lines

    def kill(self):  # SIGKILL: no LeaveGroup, the open transaction left as it is
        self.p.kill()
        self.p.wait(30)
        self.reader.join(10)
        self.log.close()

    def terminate(self):
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
        return self.wait(60)

    def excerpt(self, n=60):
        """Its stdout, and the kgo log's warnings and errors (the whole log stays in the file)."""
        if not self.log.closed:
            self.log.flush()
        log = self.log_path.read_text(errors="replace").splitlines()
        bad = [ln for ln in log if NOTABLE.search(ln)]
        return (f"{self.log_path} (exit {self.p.poll()}): stdout "
                f"{[' '.join(ln) for ln in self.lines][-20:]}\n" + "\n".join(bad[-n:]))

    def wait_for(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.lines):
                return
            if not self.alive():
                self.reader.join(10)
                if pred(self.lines):
                    return
                raise AssertionError(f"exited waiting for {what}\n{self.excerpt()}")
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.excerpt()}")


def go_run(name, *args, timeout=90):
    return Go(name, *args).wait(timeout)


def read_all(broker, topic, isolation):
    """{partition: [(offset, value)]} of every record a kgo consumer of `isolation` (rc or ru) is
    handed before the sentinel, which is produced here first (after every transaction settled)."""
    reports = produce_all(producer(broker.bootstrap), topic,
                          [dict(value=SENTINEL.encode(), partition=q) for q in PARTS])
    assert all(e is None for e, _, _ in reports), reports
    lines = go_run(f"consume-{isolation}-{topic}", "consume", broker.bootstrap, topic, isolation,
                   len(PARTS), SENTINEL)
    out = {q: [] for q in PARTS}
    for kind, q, o, v in lines:
        assert kind == "record", lines
        out[int(q)].append((int(o), v))
    return out


N = 20  # records per transaction, half to each partition


def test_franz_go_transactions_commit_and_abort(broker, topic):
    """kgo BeginTransaction / ProduceSync / EndTransaction(TryCommit | TryAbort): committed c1,
    aborted a2 (its records written before the abort), committed c3, 10 records per partition each.
    The producer is told offsets 0-9, 11-20 and 22-31 per partition (a marker after each
    transaction); read_committed is handed c1 and c3 at those offsets, read_uncommitted all three."""
    B = broker.bootstrap
    admin = create_topic(B, topic, partitions=2)
    lines = go_run(f"produce-{topic}", "produce", B, topic, f"tx-{topic}", N)
    assert [ln for ln in lines if ln[0] == "ended"] == [
        ["ended", "c1", "committed"], ["ended", "a2", "aborted"], ["ended", "c3", "committed"]], lines
    h = N // 2
    want = {name: {q: [(t * (h + 1) + k, f"{name}-{i}") for k, i in enumerate(range(q, N, 2))]
                   for q in PARTS} for t, name in enumerate(("c1", "a2", "c3"))}
    produced = [ln[2:] for ln in lines if ln[0] == "produced"]
    told = {q: sorted((int(o), v) for p, o, v in produced if int(p) == q) for q in PARTS}
    assert told == {q: want["c1"][q] + want["a2"][q] + want["c3"][q] for q in PARTS}, lines

    # Three markers per partition; nothing left open.
    assert wait_settled(admin, topic, PARTS) == {q: (3 * (h + 1),) * 2 for q in PARTS}
    assert read_all(broker, topic, "rc") == {q: want["c1"][q] + want["c3"][q] for q in PARTS}
    assert read_all(broker, topic, "ru") == {q: want["c1"][q] + want["a2"][q] + want["c3"][q]
                                             for q in PARTS}


PER_PARTITION = 150  # input records per partition
MAX_POLL = 20  # records per batch (one transaction each)
HANG_AT = 4  # the first instance's batch killed with its records written, before End


def committed_offsets(bootstrap, group, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    try:
        got = c.committed([TopicPartition(topic, q) for q in PARTS], timeout=30)
        return {tp.partition: tp.offset for tp in got}
    finally:
        c.close()


def progress(lines):
    """{partition: next offset} committed by an ETL instance so far."""
    out = {}
    for ln in lines:
        if ln[0] == "committed" and len(ln) > 3:
            for part in ln[3].split(","):
                q, o = map(int, part.split(":"))
                out[q] = max(out.get(q, 0), o)
    return out


def test_franz_go_group_transact_session_etl_killed_midway(broker, topic):
    """kgo.GroupTransactSession (group, read_committed): PollRecords, Begin, ProduceSync the
    transformed records, End(TryCommit) per batch. The first instance commits some batches, then is
    killed with SIGKILL with a batch written but not ended; the second (same transactional id, same
    group) fences it, which aborts that batch, and resumes at the group's committed offsets. The
    output read_committed is every input record transformed once, in order; read_uncommitted also
    has the killed batch's aborted copies; the group's offsets end at the input's end."""
    B = broker.bootstrap
    src, dst, group, tid = topic + "-in", topic + "-out", f"g-{topic[-10:]}", f"tx-{topic}"
    create_topic(B, src, partitions=2)
    admin = create_topic(B, dst, partitions=2)
    inputs = {q: [f"in-{q}-{i}" for i in range(PER_PARTITION)] for q in PARTS}
    reports = produce_all(producer(B, linger_ms=20), src, [
        dict(key=f"k{q}-{i}".encode(), value=v.encode(), partition=q)
        for q in PARTS for i, v in enumerate(inputs[q])])
    assert all(e is None for e, _, _ in reports), reports[:5]
    end = {q: PER_PARTITION for q in PARTS}
    args = ("etl", B, group, src, dst, tid, MAX_POLL)

    first = Go(f"etl-1-{topic}", *args, HANG_AT)
    try:
        first.wait_for(lambda ls: ["hanging"] in ls, 60, f"batch {HANG_AT} written")
    finally:
        first.kill()
    ended = [ln for ln in first.lines if ln[0] in ("committed", "aborted")]
    killed = int(next(ln for ln in first.lines if ln[0] == "produced" and ln[1] == str(HANG_AT))[2])
    at_kill = progress(first.lines)
    # The premise: killed partway, after some committed batches, with a written batch open.
    assert any(ln[0] == "committed" for ln in ended) and killed > 0, first.lines
    assert sum(at_kill.values()) < 2 * PER_PARTITION - killed, first.lines

    second = Go(f"etl-2-{topic}", *args, 0)
    try:
        second.wait_for(lambda ls: progress(ls) == end, 90,
                        f"the second instance to commit up to {end} (the first at {at_kill})")
        lines = second.terminate()
    finally:
        if second.alive():
            second.kill()
    assert lines[-1] == ["closed"], lines

    wait_settled(admin, dst, PARTS)
    assert committed_offsets(B, group, src) == end
    rc = read_all(broker, dst, "rc")
    for q in PARTS:
        got = [v for _, v in rc[q]]
        assert got == [f"etl:{v}" for v in inputs[q]], (
            q, len(got), len(set(got)), sorted(set(f"etl:{v}" for v in inputs[q]) - set(got))[:5],
            first.excerpt(), second.excerpt())
    # The killed batch's copies (and those of any batch a rebalance aborted) are in the log, hidden
    # by the abort.
    ru = read_all(broker, dst, "ru")
    hidden = sum(len(ru[q]) for q in PARTS) - 2 * PER_PARTITION
    aborted = sum(int(ln[2]) for ln in first.lines + lines if ln[0] == "aborted")
    assert hidden == killed + aborted, (hidden, killed, aborted)
