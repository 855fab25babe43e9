#!/usr/bin/env python3
"""StreamHouse vs Apache Kafka benchmark driver (run it through scripts/bench-server.sh).

For every configuration of the matrix it creates a fresh topic on each broker, runs
kafka-producer-perf-test (N concurrent processes for N producers), then
kafka-consumer-perf-test on the same topic, and samples the broker process's CPU
seconds (/proc/PID/stat utime+stime, delta over the run) and memory (/proc/PID/status
VmRSS at the end of the run, VmHWM for the peak; the peak is reset through
/proc/PID/clear_refs before each run). Both brokers get exactly the same client
commands; the order alternates per configuration so neither always runs second.

Writes <out>/raw.csv (one line per broker per configuration), <out>/meta.json
(machine, versions, settings) and <out>/logs/, then calls benchmarks/report.py.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def repo_relative(path):
    """`path` relative to the repository root if it lies inside it, else its file name."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return p.name
KAFKA_KIT = ROOT / "scripts" / "kafka"
KAFKA_SH = KAFKA_KIT / "kafka.sh"

RAW_FIELDS = [
    "row", "config", "kind", "broker", "order", "record_size", "acks", "partitions", "producers",
    "target_rate", "records", "status", "error",
    "produce_rec_s", "produce_mb_s", "lat_avg_ms", "lat_max_ms", "p50_ms", "p95_ms", "p99_ms",
    "p999_ms", "produce_wall_s", "produce_errors",
    "consume_status", "consume_mb_s", "consume_rec_s", "consume_records", "consume_fetch_mb_s",
    "consume_fetch_rec_s", "consume_rebalance_ms", "consume_wall_s",
    "cpu_produce_s", "cpu_consume_s", "cpu_total_s", "rss_end_mb", "rss_peak_mb",
    # StreamHouse only (its --metrics-listen endpoint): object-store requests and block-cache lookups.
    "obj_puts_produce", "obj_gets_consume", "obj_get_mb_consume", "cache_hits_consume", "cache_misses_consume",
    # Transactional rows: --transaction-duration-ms, the row's target records per transaction, and what the
    # run did: transactions committed (end offset minus records: each commit marker takes one offset) and
    # records per transaction.
    "txn_ms", "txn_target", "txn_count", "records_per_txn",
]

SUMMARY_RE = re.compile(
    r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, "
    r"([\d.]+) ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99\.9th")
ERROR_RE = re.compile(r"(Exception|ERROR|Error:|error:|WARNING: Exiting)")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- matrix

@dataclass
class Config:
    id: str
    kind: str            # "throughput" or "latency"
    size: int
    acks: str
    partitions: int
    producers: int
    rate: int            # records/s over all producers, -1 = unthrottled
    records: int         # over all producers
    consume: bool
    txn: int = 0         # transactional rows: target records per transaction (0: not transactional)
    txn_ms: int = 0      # transactional rows: kafka-producer-perf-test --transaction-duration-ms

    @property
    def label(self) -> str:
        size = "1KiB" if self.size == 1024 else f"{self.size}B"
        if self.txn:
            return f"{txn_name(self.txn)} {size}"
        s = f"{size} acks={self.acks} p={self.partitions} x{self.producers}"
        if self.rate > 0:
            s = f"@{self.rate // 1000}k/s " + s
        return s


def txn_name(n: int) -> str:
    return f"txn{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"txn{n}"


# kafka-producer-perf-test commits on time, not per N records: it commits after the first send()
# at least --transaction-duration-ms after beginTransaction (and once at the end). With these durations
# the two brokers' records per transaction (records_per_txn in raw.csv, measured every run) lay around
# the target on the 2-core reference machine (the same duration holds more records against the broker
# that acknowledges faster); --txn-ms overrides them. At 100 B, 1 ms (the tool's minimum) already holds
# about 250-300 records: txn100 100B is the smallest transaction the tool makes there.
TXN_MS = {"txn100-100": 1, "txn100-1024": 1, "txn10k-100": 60, "txn10k-1024": 200}


def txn_config(a, target: int, size: int, n: int) -> Config:
    cid = f"{txn_name(target)}-{size}"
    # acks=all (a transactional producer is idempotent), one partition (the transaction count is then
    # the end offset minus the records), one producer process.
    return Config(cid, "transactional", size, "all", 1, 1, -1, n, True, txn=target,
                  txn_ms=a.txn_ms.get(cid, TXN_MS[cid]))


def parse_txn_ms(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, (x.strip() for x in text.split(","))):
        k, _, v = part.partition("=")
        if k not in TXN_MS or not v.isdigit() or int(v) < 1:
            raise argparse.ArgumentTypeError(f"--txn-ms: {part!r} is not <row>=<ms >= 1>, rows: {', '.join(TXN_MS)}")
        out[k] = int(v)
    return out


def build_matrix(a: argparse.Namespace) -> list[Config]:
    rows: list[Config] = []
    if a.smoke:
        n100, n1k = a.records_100 or 20_000, a.records_1k or 5_000
        spec = [(100, "1", 1, 1, n100), (100, "all", 12, 1, n100), (1024, "all", 12, 4, n1k)]
        for size, acks, parts, prods, n in spec:
            rows.append(Config(f"tput-{size}-a{acks}-p{parts}-x{prods}", "throughput", size, acks,
                               parts, prods, -1, n, True))
        lat = [(1000, "all")]
        txn = [(100, 100, a.records_txn or 2_000)]
    else:
        for size in (100, 1024):
            for acks in ("1", "all"):
                for parts in (1, 12):
                    for prods in (1, 4):
                        if size == 100 and acks == "1" and parts == 1 and prods == 1:
                            n = a.records                      # headline row
                        else:
                            n = a.records_100 if size == 100 else a.records_1k
                        rows.append(Config(f"tput-{size}-a{acks}-p{parts}-x{prods}", "throughput",
                                           size, acks, parts, prods, -1, n, True))
        lat = [(r, acks) for r in (1000, 10_000) for acks in ("1", "all")]
        txn = [(target, size, a.records_txn or (a.records_100 if size == 100 else a.records_1k))
               for target in (100, 10_000) for size in (100, 1024)]
    for rate, acks in lat:
        rows.append(Config(f"lat-{rate}-{a.latency_size}-a{acks}", "latency", a.latency_size, acks, 1, 1,
                           rate, rate * a.latency_seconds, False))
    for target, size, n in txn:
        rows.append(txn_config(a, target, size, n))
    if a.only:
        pat = re.compile(a.only)
        rows = [r for r in rows if pat.search(r.id) or pat.search(r.label)]
    return rows


# --------------------------------------------------------------------------- /proc sampling

def cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()   # fields after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def mem_mb(pid: int) -> tuple[float | None, float | None]:
    rss = hwm = None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, hwm


def reset_peak(pid: int) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")   # 5 = reset VmHWM to the current RSS
    except OSError:
        pass


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        with socket.socket() as s2:            # Kafka also wants port+1 for its controller
            try:
                s2.bind(("127.0.0.1", p + 1))
                return p
            except OSError:
                continue


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------- brokers

class Broker:
    name = ""
    pid: int | None = None
    bootstrap = ""

    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        try:   # a zombie child is not alive
            return Path(f"/proc/{self.pid}/stat").read_text().split(") ")[1][0] != "Z"
        except OSError:
            return False


class StreamHouse(Broker):
    name = "streamhouse"

    def __init__(self, binary: Path, work: Path, port: int, s3_env: dict | None = None):
        self.binary, self.work, self.port = binary, work / "streamhouse", port
        self.bootstrap = f"127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.s3_env = s3_env              # S3 mode: the AWS_* exports of the S3 server and S3_BUCKET
        self.metrics_port = free_port()
        self.prefix = ""

    def start(self, fresh: bool = True) -> None:
        if fresh:
            shutil.rmtree(self.work, ignore_errors=True)   # fresh data dir (and bucket prefix) every start
            (self.work / "data").mkdir(parents=True)
            self.prefix = f"bench-{int(time.time() * 1000)}"
        self.starts += 1
        logf = open(self.work / f"broker-{self.starts}.log", "wb")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        # The reference Kafka runs with group.initial.rebalance.delay.ms=0 (scripts/kafka/start-broker.sh);
        # give StreamHouse the same setting so consumer runs do not include a 3 s join delay on one side only.
        args = [str(self.binary), "serve", "--listen", self.bootstrap, "--data-dir", str(self.work / "data"),
                "--group-initial-rebalance-delay-ms", "0", "--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        if self.s3_env:
            env.update(self.s3_env)
            args += ["--storage", f"s3://{self.s3_env['S3_BUCKET']}/{self.prefix}"]
        self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.pid = self.proc.pid
        for _ in range(300):
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamhouse exited at startup (rc {self.proc.returncode}); "
                                   f"see {self.work}/broker-{self.starts}.log")
            if port_open(self.port):
                return
            time.sleep(0.1)
        raise RuntimeError("streamhouse did not open its port within 30 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.pid = None

    def log_tail(self) -> str:
        try:
            return (self.work / f"broker-{self.starts}.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""


class Kafka(Broker):
    name = "kafka"

    def __init__(self, work: Path, port: int):
        self.dir, self.port = work / "kafka", port
        self.bootstrap = f"127.0.0.1:{port}"

    def start(self) -> None:
        subprocess.run([str(KAFKA_KIT / "stop-broker.sh"), "--dir", str(self.dir)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)    # fresh data dir every start
        r = subprocess.run([str(KAFKA_KIT / "start-broker.sh"), "--port", str(self.port), "--dir", str(self.dir)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"start-broker.sh failed (rc {r.returncode}): {r.stderr.strip()[-1500:]}")
        m = re.search(r"^PID=(\d+)", r.stdout, re.M)
        if not m:
            raise RuntimeError(f"start-broker.sh printed no PID=: {r.stdout!r}")
        self.pid = int(m.group(1))

    def stop(self) -> None:
        subprocess.run([str(KAFKA_KIT / "stop-broker.sh"), "--dir", str(self.dir)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = None

    def log_tail(self) -> str:
        try:
            return (self.dir / "logs" / "server.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""


# --------------------------------------------------------------------------- tools

def tool(name: str, *args: str) -> list[str]:
    return [str(KAFKA_SH), name, *args]


def run_group(cmds: list[list[str]], logs: list[Path], timeout: float) -> tuple[list[int], float]:
    """Run commands concurrently (own process groups); kill those still running at timeout."""
    t0 = time.monotonic()
    procs = []
    for cmd, lp in zip(cmds, logs):
        lp.parent.mkdir(parents=True, exist_ok=True)
        f = open(lp, "wb")
        f.write(("$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        procs.append((subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True), f))
    rcs = []
    for p, f in procs:
        left = max(1.0, timeout - (time.monotonic() - t0))
        try:
            rcs.append(p.wait(left))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)   # our own child's process group only
            except OSError:
                pass
            p.wait()
            rcs.append(-999)
        f.close()
    return rcs, time.monotonic() - t0


def first_error(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("$ "):
            continue
        if ERROR_RE.search(line):
            return line.strip()[:300]
    return ""


def create_topic(b: Broker, topic: str, partitions: int, logp: Path) -> str:
    rcs, _ = run_group([tool("kafka-topics", "--bootstrap-server", b.bootstrap, "--create", "--topic", topic,
                             "--partitions", str(partitions), "--replication-factor", "1")], [logp], 120)
    if rcs[0] != 0:
        txt = logp.read_text(errors="replace")
        return f"kafka-topics --create failed (rc {rcs[0]}): {first_error(txt) or txt.strip()[-300:]}"
    return ""


def producer_cmd(a, b: Broker, topic: str, cfg: Config, n: int, rate: int, i: int) -> list[str]:
    props = [f"acks={cfg.acks}", f"enable.idempotence={'true' if cfg.acks == 'all' else 'false'}",
             f"client.id=bench-{cfg.id}-{i}"] + a.producer_props.split()
    txn = ["--transactional-id", f"{topic}-{i}", "--transaction-duration-ms", str(cfg.txn_ms)] if cfg.txn else []
    return tool("kafka-producer-perf-test", "--bootstrap-server", b.bootstrap, "--topic", topic,
                "--num-records", str(n), "--record-size", str(cfg.size), "--throughput", str(rate), *txn,
                "--command-property", *props)


def end_offsets(b: Broker, topic: str, logp: Path) -> int | None:
    """Sum of the topic's end offsets (kafka-get-offsets --time latest: the high watermark, which counts
    transaction markers), or None."""
    rcs, _ = run_group([tool("kafka-get-offsets", "--bootstrap-server", b.bootstrap, "--topic", topic,
                             "--time", "-1")], [logp], 120)
    total, seen = 0, False
    for ln in logp.read_text(errors="replace").splitlines():
        m = re.fullmatch(rf"{re.escape(topic)}:\d+:(\d+)", ln.strip())
        if m:
            total, seen = total + int(m.group(1)), True
    return total if rcs[0] == 0 and seen else None


def fmt(v, nd=1) -> str:
    return "" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def scrape(b: Broker) -> dict[str, float]:
    """StreamHouse's counters from its metrics endpoint ({} for Kafka or when unreachable)."""
    if not isinstance(b, StreamHouse):
        return {}
    import urllib.request
    text = None
    for _ in range(6):   # a broker just restarted answers once its storage is open
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{b.metrics_port}/metrics", timeout=5).read().decode()
            break
        except OSError:
            time.sleep(1)
    if text is None:
        return {}
    out = {}
    for ln in text.splitlines():
        if ln and not ln.startswith("#"):
            k, _, v = ln.partition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def delta(before: dict, after: dict, key: str):
    if key in before and key in after:
        return int(after[key] - before[key])
    return ""


def run_one(a, b: Broker, cfg: Config, order: int, logdir: Path) -> dict:
    row = {k: "" for k in RAW_FIELDS}
    row.update(row=cfg.id, config=cfg.label, kind=cfg.kind, broker=b.name, order=order, record_size=cfg.size,
               acks=cfg.acks, partitions=cfg.partitions, producers=cfg.producers,
               target_rate=cfg.rate, records=cfg.records, status="ok")
    tag = f"{cfg.id}-{b.name}"
    if not b.alive():
        try:
            log(f"    ({b.name} is not running: restarting it)")
            b.stop()
            b.start()
        except Exception as e:  # noqa: BLE001
            row.update(status="FAILED", error=f"broker not running and restart failed: {e}")
            return row
    topic = f"bench-{cfg.id}-{int(time.time() * 1000) % 10**9}"
    err = create_topic(b, topic, cfg.partitions, logdir / f"{tag}-topic.log")
    if err:
        row.update(status="FAILED", error=err)
        return row

    # ---- produce
    n_each = [cfg.records // cfg.producers + (1 if i < cfg.records % cfg.producers else 0)
              for i in range(cfg.producers)]
    rate_each = -1 if cfg.rate < 0 else max(1, cfg.rate // cfg.producers)
    cmds = [producer_cmd(a, b, topic, cfg, n, rate_each, i) for i, n in enumerate(n_each)]
    plogs = [logdir / f"{tag}-producer-{i}.log" for i in range(cfg.producers)]
    est = cfg.records / cfg.rate if cfg.rate > 0 else cfg.records * max(cfg.size, 200) / 2e6
    if cfg.txn:   # each commit is a round trip or more (flush, EndTxn, markers): allow 50 ms per transaction
        est = max(est, cfg.records / cfg.txn * 0.05)
        row.update(txn_ms=cfg.txn_ms, txn_target=cfg.txn)
    timeout = a.run_timeout or (90 + 3 * est)
    cpu0 = cpu_seconds(b.pid)
    reset_peak(b.pid)
    m0 = scrape(b)
    rcs, wall = run_group(cmds, plogs, timeout)
    cpu1 = cpu_seconds(b.pid)
    m1 = scrape(b)
    row["obj_puts_produce"] = delta(m0, m1, "streamhouse_object_puts_total")
    row["produce_wall_s"] = round(wall, 2)
    sums = []
    errors, msgs = 0, []
    for rc, lp in zip(rcs, plogs):
        txt = lp.read_text(errors="replace")
        m = SUMMARY_RE.findall(txt)
        errs = [ln for ln in txt.splitlines() if ERROR_RE.search(ln) and not ln.startswith("$ ")]
        errors += len(errs)
        if rc != 0 or not m:
            msgs.append(f"producer {lp.name}: rc {'timeout' if rc == -999 else rc}"
                        + (f": {first_error(txt)}" if first_error(txt) else ", no summary line"))
        if m:
            sums.append([float(x) for x in m[-1]])
        elif errs and not msgs:
            msgs.append(errs[0][:300])
    row["produce_errors"] = errors
    if len(sums) == cfg.producers:
        row["produce_rec_s"] = round(sum(s[1] for s in sums), 1)
        row["produce_mb_s"] = round(sum(s[2] for s in sums), 2)
        row["lat_avg_ms"] = round(sum(s[3] for s in sums) / len(sums), 2)   # mean over producers
        row["lat_max_ms"] = max(s[4] for s in sums)                          # worst producer
        for k, j in (("p50_ms", 5), ("p95_ms", 6), ("p99_ms", 7), ("p999_ms", 8)):
            row[k] = max(s[j] for s in sums)
        sent = sum(int(s[0]) for s in sums)
        if sent < cfg.records:
            msgs.append(f"only {sent} of {cfg.records} records acknowledged")
    if msgs or errors:
        row["status"] = "FAILED" if len(sums) < cfg.producers else "ERRORS"
        if not msgs:
            for lp in plogs:
                e = first_error(lp.read_text(errors="replace"))
                if e:
                    msgs.append(e)
                    break
        row["error"] = " | ".join(msgs)[:600]

    # ---- consume
    cpu2 = cpu1
    cpu_produce = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    if cfg.consume and a.consume and a.cold_consume and isinstance(b, StreamHouse):
        # Consume from the store, not from the blocks cached at write time: restart on the same data
        # (after --cold-consume-delay-s, e.g. to let compaction finish first).
        time.sleep(a.cold_consume_delay_s)
        b.stop()
        b.start(fresh=False)
        cpu1 = cpu2 = cpu_seconds(b.pid)
    if cfg.consume and a.consume:
        m1 = scrape(b)
        clog = logdir / f"{tag}-consumer.log"
        cmd = tool("kafka-consumer-perf-test", "--bootstrap-server", b.bootstrap, "--topic", topic,
                   "--num-records", str(cfg.records), "--timeout", str(a.consumer_timeout_ms),
                   "--group", f"bench-{cfg.id}-{b.name}", "--command-property", "auto.offset.reset=earliest")
        if cfg.txn:   # transactional rows read committed records only (up to the last stable offset)
            conf = logdir / "consumer-read-committed.properties"
            conf.write_text("isolation.level=read_committed\n")
            cmd += ["--command-config", str(conf)]
        rcs, cwall = run_group([cmd], [clog], (a.run_timeout or (90 + 3 * est)) + a.consumer_timeout_ms / 1000)
        cpu2 = cpu_seconds(b.pid)
        m2 = scrape(b)
        row["obj_gets_consume"] = delta(m1, m2, "streamhouse_object_gets_total")
        gb = delta(m1, m2, "streamhouse_object_get_bytes_total")
        row["obj_get_mb_consume"] = "" if gb == "" else round(gb / 1e6, 2)
        row["cache_hits_consume"] = delta(m1, m2, "streamhouse_cache_hits_total")
        row["cache_misses_consume"] = delta(m1, m2, "streamhouse_cache_misses_total")
        row["consume_wall_s"] = round(cwall, 2)
        txt = clog.read_text(errors="replace")
        lines = txt.splitlines()
        vals = None
        for i, ln in enumerate(lines):
            if ln.startswith("start.time") and i + 1 < len(lines):
                parts = [p.strip() for p in lines[i + 1].split(",")]
                if len(parts) >= 10:
                    try:
                        vals = [float(p) for p in parts[2:10]]
                    except ValueError:
                        vals = None
        if vals:
            _, mbs, nmsg, nmsgs, reb, _, fmbs, fnmsgs = vals
            row.update(consume_mb_s=round(mbs, 2), consume_rec_s=round(nmsgs, 1), consume_records=int(nmsg),
                       consume_fetch_mb_s=round(fmbs, 2), consume_fetch_rec_s=round(fnmsgs, 1),
                       consume_rebalance_ms=int(reb))
            row["consume_status"] = "ok" if int(nmsg) >= cfg.records else f"SHORT: {int(nmsg)} of {cfg.records}"
        else:
            row["consume_status"] = "FAILED"
        if row["consume_status"] != "ok":
            e = first_error(txt) or f"rc {rcs[0]}, no result line"
            row["consume_status"] += f": {e}"[:400]
    elif not cfg.consume:
        row["consume_status"] = "n/a"
    else:
        row["consume_status"] = "skipped"

    # With --cold-consume the consume phase runs in a new process: the phases are measured apart.
    cpu_consume = None
    if cpu1 is not None and cpu2 is not None and cfg.consume and a.consume:
        cpu_consume = cpu2 - cpu1
        row["cpu_consume_s"] = round(cpu_consume, 2)
    if cpu_produce is not None:
        row["cpu_produce_s"] = round(cpu_produce, 2)
        row["cpu_total_s"] = round(cpu_produce + (cpu_consume or 0.0), 2)
    rss, hwm = mem_mb(b.pid)
    row["rss_end_mb"] = fmt(rss)
    row["rss_peak_mb"] = fmt(hwm)
    if cfg.txn and b.alive():   # after the CPU and memory samples: not part of the measured phases
        end = end_offsets(b, topic, logdir / f"{tag}-offsets.log")
        sent = sum(int(s[0]) for s in sums) if len(sums) == cfg.producers else None
        if end is not None and sent is not None and end > sent:
            row["txn_count"] = end - sent
            row["records_per_txn"] = round(sent / (end - sent), 1)
    if not b.alive():
        row["status"] = "FAILED"
        row["error"] = (row["error"] + " | " if row["error"] else "") + \
            f"broker died during the run; log tail: {b.log_tail()[-400:]!r}"
    return row


def progress(i: int, n: int, cfg: Config, row: dict, t: float) -> None:
    if row["status"] == "FAILED" and not row["produce_rec_s"]:
        detail = f"FAILED: {row['error'][:160]}"
    else:
        detail = (f"{float(row['produce_rec_s']):>10,.0f} rec/s {float(row['produce_mb_s']):7.2f} MB/s  "
                  f"p50/p99/p99.9 {row['p50_ms']:.0f}/{row['p99_ms']:.0f}/{row['p999_ms']:.0f} ms")
        if row["status"] != "ok":
            detail += f"  [{row['status']}: {row['error'][:120]}]"
        if row.get("records_per_txn"):
            detail += f"  {float(row['records_per_txn']):,.0f} rec/txn"
        cs = row["consume_status"]
        if cs == "ok":
            detail += f" | consume {float(row['consume_mb_s']):.1f} MB/s"
        elif cs not in ("n/a", "skipped"):
            detail += f" | consume {cs[:100]}"
    log(f"[{i:>2}/{n}] {row['broker']:<11} {cfg.label:<30} {detail} | cpu {row['cpu_total_s']} s, "
        f"rss {row['rss_end_mb']} MB (peak {row['rss_peak_mb']}) [{t:.0f}s]")


# --------------------------------------------------------------------------- metadata

def sh(cmd: list[str] | str, **kw) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, shell=isinstance(cmd, str), **kw)
        return (r.stdout + r.stderr).strip()
    except Exception as e:  # noqa: BLE001
        return f"? ({e})"


def metadata(a, binary: Path, matrix: list[Config]) -> dict:
    cpu = "?"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    libs = sh(["bash", "-c", f". {KAFKA_KIT}/common.sh; echo $KAFKA_LIBS"])
    kver = os.environ.get("KAFKA_VERSION", "")
    jars = sorted(Path(libs).glob("kafka-clients-*.jar")) if Path(libs).is_dir() else []
    if jars:
        kver = jars[-1].name[len("kafka-clients-"):-len(".jar")]
    commit = sh(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"])
    dirty = sh(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    try:
        bin_mtime = dt.datetime.fromtimestamp(binary.stat().st_mtime, dt.timezone.utc).isoformat(timespec="seconds")
    except OSError:
        bin_mtime = "?"
    java = sh(["bash", "-c", f". {KAFKA_KIT}/common.sh; \"$(java_bin)\" -version"]).splitlines()
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "kernel": platform.release(),
        "nproc": os.cpu_count(),
        "memory": mem,
        "cpu_model": cpu,
        "kafka_version": kver or "?",
        "kafka_heap": os.environ.get("KAFKA_HEAP_OPTS", "-Xmx1G -Xms1G (broker), -Xmx512M (tools)"),
        "java_version": java[0] if java else "?",
        "streamhouse_commit": commit + (" (+ uncommitted changes)" if dirty else ""),
        # Relative to the repository when it is inside it: a report must not name this machine's paths.
        "streamhouse_binary": f"{repo_relative(binary)} (built {bin_mtime})",
        "streamhouse_version": sh([str(binary), "--version"]),
        "rust_log": os.environ.get("RUST_LOG", "info"),
        "mode": "smoke" if a.smoke else "full",
        "producer_props": a.producer_props + " (+ acks=<row> enable.idempotence=<true for acks=all, "
                                             "false for acks=1>)",
        "records_headline": a.records,
        "records_100B": a.records_100,
        "records_1KiB": a.records_1k,
        "records_txn": a.records_txn,
        "txn_ms": {c.id: c.txn_ms for c in matrix if c.txn},
        "latency_seconds": a.latency_seconds,
        "latency_record_size": a.latency_size,
        "warmup_records": a.warmup_records,
        "consumer_timeout_ms": a.consumer_timeout_ms,
        "restart_each": a.restart_each,
        "brokers": a.brokers,
        "streamhouse_storage": a.storage + (f" (loopback S3 server, S3_LATENCY_MS={a.s3_latency_ms} per request)"
                                            if a.storage == "s3" else " (local disk, fsync per flush)"),
        "cold_consume": a.cold_consume and f"yes, restart {a.cold_consume_delay_s:g} s after producing",
        "streamhouse_env": " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                                    if k.startswith("STREAMHOUSE_") and k != "STREAMHOUSE_BIN") or "none",
        "configurations": len(matrix),
    }


# --------------------------------------------------------------------------- main

def main() -> int:
    p = argparse.ArgumentParser(prog="bench-server.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny counts and a reduced matrix (a few seconds per run)")
    p.add_argument("--records", type=int, default=None, help="records in the headline row (100 B, acks=1, p=1, x1); "
                   "default 1,000,000 (smoke: unused)")
    p.add_argument("--records-100", type=int, default=None, help="records in the other 100 B rows (default 500,000; smoke 20,000)")
    p.add_argument("--records-1k", type=int, default=None, help="records in the 1 KiB rows (default 200,000; smoke 5,000)")
    p.add_argument("--records-txn", type=int, default=None,
                   help="records in each transactional row (default: as the other rows of its record size; smoke 2,000)")
    p.add_argument("--txn-ms", type=parse_txn_ms, default={},
                   help="--transaction-duration-ms per transactional row, e.g. 'txn100-100=1,txn10k-1024=250' "
                        f"(defaults: {', '.join(f'{k}={v}' for k, v in TXN_MS.items())})")
    p.add_argument("--latency-seconds", type=int, default=None, help="length of each fixed-rate latency run (default 30; smoke 3)")
    p.add_argument("--latency-size", type=int, default=1024, help="record size of the latency rows (default 1024)")
    p.add_argument("--warmup-records", type=int, default=None,
                   help="records produced to a throw-away topic on each broker before the matrix (default 200,000; smoke 10,000)")
    p.add_argument("--producer-props", default="linger.ms=5 batch.size=65536",
                   help="producer properties for every run, both brokers (default: %(default)s)")
    p.add_argument("--consumer-timeout-ms", type=int, default=10_000, help="kafka-consumer-perf-test --timeout")
    p.add_argument("--no-consume", dest="consume", action="store_false", help="skip kafka-consumer-perf-test")
    p.add_argument("--brokers", default="streamhouse,kafka", help="comma list of streamhouse,kafka (default both)")
    p.add_argument("--only", default="", help="regex: run only the configurations whose id or label matches")
    p.add_argument("--restart-each", action="store_true",
                   help="start each broker fresh (new data dir) for every configuration and stop it after; "
                        "default: one broker process (fresh data dir) per broker for the whole matrix")
    p.add_argument("--run-timeout", type=float, default=None, help="seconds before a perf-test process is killed")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/<UTC timestamp>; "
                   "smoke: benchmarks/work/smoke-<timestamp>)")
    p.add_argument("--work", default=None, help="broker data and logs (default benchmarks/work/run-<timestamp>)")
    p.add_argument("--keep-work", action="store_true", help="keep the broker data dirs after the run")
    p.add_argument("--storage", choices=("local", "s3"), default="local",
                   help="StreamHouse's segments on local disk (default) or in S3: a loopback S3 server "
                        "(scripts/s3) is started for the run")
    p.add_argument("--s3-latency-ms", type=int, default=20,
                   help="with --storage s3: latency added to every S3 request, to mimic S3 (default 20)")
    p.add_argument("--cold-consume", action="store_true",
                   help="restart StreamHouse (same data) before each consume, so reads come from storage")
    p.add_argument("--cold-consume-delay-s", type=float, default=0.0,
                   help="with --cold-consume: seconds to wait before the restart (default 0)")
    a = p.parse_args()

    if a.smoke:
        a.records = a.records or 0
        a.latency_seconds = a.latency_seconds or 3
        a.warmup_records = 10_000 if a.warmup_records is None else a.warmup_records
    else:
        a.records = a.records or 1_000_000
        a.records_100 = a.records_100 or 500_000
        a.records_1k = a.records_1k or 200_000
        a.latency_seconds = a.latency_seconds or 30
        a.warmup_records = 200_000 if a.warmup_records is None else a.warmup_records
    matrix = build_matrix(a)
    if a.smoke:
        a.records_100 = a.records_100 or 20_000
        a.records_1k = a.records_1k or 5_000
        a.records_txn = a.records_txn or 2_000
    if not matrix:
        log("bench: no configuration matches --only")
        return 2

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(a.out) if a.out else (ROOT / "benchmarks" / ("work" if a.smoke else "results")
                                     / (f"smoke-{stamp}" if a.smoke else stamp))
    work = Path(a.work) if a.work else ROOT / "benchmarks" / "work" / f"run-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    logdir = out / "logs"
    logdir.mkdir(exist_ok=True)

    binary = Path(os.environ.get("STREAMHOUSE_BIN", ROOT / "target" / "release" / "streamhouse"))
    s3_env, s3_port, s3_dir = None, free_port(), work / "s3"
    if a.storage == "s3":
        r = subprocess.run([str(ROOT / "scripts" / "s3" / "start.sh"), "--port", str(s3_port), "--dir", str(s3_dir)],
                           capture_output=True, text=True, env=dict(os.environ, S3_LATENCY_MS=str(a.s3_latency_ms)))
        if r.returncode != 0:
            log(f"bench: scripts/s3/start.sh failed: {r.stderr.strip()[-800:]}")
            return 2
        s3_env = dict(re.findall(r"export (\w+)=(\S*)", r.stdout))
    names = [x.strip() for x in a.brokers.split(",") if x.strip()]
    brokers: list[Broker] = []
    for nme in names:
        if nme == "streamhouse":
            if not os.access(binary, os.X_OK):
                log(f"bench: no StreamHouse binary at {binary} (cargo build --release, or set STREAMHOUSE_BIN)")
                return 2
            brokers.append(StreamHouse(binary, work, free_port(), s3_env))
        elif nme == "kafka":
            brokers.append(Kafka(work, free_port()))
        else:
            log(f"bench: unknown broker {nme!r}")
            return 2
    if True:   # the perf tools need the Kafka jars whichever brokers run
        r = subprocess.run([str(KAFKA_KIT / "fetch.sh")], capture_output=True, text=True)
        if r.returncode != 0:
            log(f"bench: scripts/kafka/fetch.sh failed: {r.stderr.strip()[-800:]}")
            return 2

    meta = metadata(a, binary, matrix)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    total = len(matrix) * len(brokers)
    log(f"bench: {meta['mode']} matrix, {len(matrix)} configurations x {len(brokers)} brokers = {total} runs; "
        f"results in {out}")
    log(f"bench: StreamHouse {meta['streamhouse_commit']}, Kafka {meta['kafka_version']}, {meta['java_version']}, "
        f"{meta['nproc']} CPUs ({meta['cpu_model']}), {meta['memory']}")

    rawp = out / "raw.csv"
    t_start = time.monotonic()
    try:
        if not a.restart_each:
            for b in brokers:
                t0 = time.monotonic()
                b.start()
                log(f"bench: started {b.name} on {b.bootstrap} (pid {b.pid}) in {time.monotonic() - t0:.1f}s")
                if a.warmup_records:
                    wt = f"bench-warmup-{stamp}"
                    err = create_topic(b, wt, 1, logdir / f"warmup-{b.name}-topic.log")
                    if not err:
                        run_group([tool("kafka-producer-perf-test", "--bootstrap-server", b.bootstrap, "--topic", wt,
                                        "--num-records", str(a.warmup_records), "--record-size", "100",
                                        "--throughput", "-1", "--command-property", "acks=1",
                                        *a.producer_props.split())],
                                  [logdir / f"warmup-{b.name}.log"], 300)
                        if any(c.txn for c in matrix) and not a.smoke:
                            # the transaction coordinator's first use (Kafka creates __transaction_state) and
                            # its code paths, outside the measured rows
                            run_group([tool("kafka-producer-perf-test", "--bootstrap-server", b.bootstrap,
                                            "--topic", wt, "--num-records", str(max(1000, a.warmup_records // 4)),
                                            "--record-size", "100", "--throughput", "-1",
                                            "--transactional-id", f"{wt}-{b.name}", "--transaction-duration-ms",
                                            "10", "--command-property", "acks=all", "enable.idempotence=true",
                                            *a.producer_props.split())],
                                      [logdir / f"warmup-{b.name}-txn.log"], 300)
                    log(f"bench: warmed up {b.name} ({a.warmup_records} records"
                        f"{', and transactional' if any(c.txn for c in matrix) and not a.smoke else ''})"
                        f"{' FAILED: ' + err if err else ''}")
        with open(rawp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=RAW_FIELDS)
            w.writeheader()
            k = 0
            for ci, cfg in enumerate(matrix):
                order = brokers if ci % 2 == 0 else list(reversed(brokers))
                for oi, b in enumerate(order, 1):
                    k += 1
                    t0 = time.monotonic()
                    if a.restart_each:
                        try:
                            b.start()
                        except Exception as e:  # noqa: BLE001
                            row = {x: "" for x in RAW_FIELDS}
                            row.update(row=cfg.id, config=cfg.label, kind=cfg.kind, broker=b.name, order=oi,
                                       record_size=cfg.size, acks=cfg.acks, partitions=cfg.partitions,
                                       producers=cfg.producers, target_rate=cfg.rate, records=cfg.records,
                                       status="FAILED", error=f"broker start failed: {e}"[:600])
                            w.writerow(row)
                            f.flush()
                            progress(k, total, cfg, row, time.monotonic() - t0)
                            continue
                    try:
                        row = run_one(a, b, cfg, oi, logdir)
                    except Exception as e:  # noqa: BLE001  (one bad run must not lose the others)
                        row = {x: "" for x in RAW_FIELDS}
                        row.update(row=cfg.id, config=cfg.label, kind=cfg.kind, broker=b.name, order=oi,
                                   record_size=cfg.size, acks=cfg.acks, partitions=cfg.partitions,
                                   producers=cfg.producers, target_rate=cfg.rate, records=cfg.records,
                                   status="FAILED", error=f"harness error: {type(e).__name__}: {e}"[:600])
                    if a.restart_each:
                        b.stop()
                    w.writerow(row)
                    f.flush()
                    progress(k, total, cfg, row, time.monotonic() - t0)
    except KeyboardInterrupt:
        log("bench: interrupted; writing the report for the runs so far")
    finally:
        for b in brokers:
            try:
                b.stop()
            except Exception:  # noqa: BLE001
                pass
        for b in brokers:   # keep the broker logs (tails) with the results
            src = [Path(getattr(b, "dir", work)) / "logs" / "server.log"] if b.name == "kafka" else \
                sorted(Path(getattr(b, "work", work)).glob("broker-*.log"))
            for sp in src:
                try:
                    data = sp.read_bytes()[-512 * 1024:]
                    (logdir / f"broker-{b.name}-{sp.name}").write_bytes(data)
                except OSError:
                    pass
        if s3_env:
            subprocess.run([str(ROOT / "scripts" / "s3" / "stop.sh"), "--port", str(s3_port), "--dir", str(s3_dir),
                            "--purge"], capture_output=True)
        if not a.keep_work:
            for b in brokers:
                shutil.rmtree(getattr(b, "work", None) or getattr(b, "dir"), ignore_errors=True)
            try:
                work.rmdir()
            except OSError:
                pass
    log(f"bench: {total} runs in {time.monotonic() - t_start:.0f}s")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "report.py"), str(out)]
    if a.smoke or a.storage != "local" or a.only:
        cmd.append("--no-latest")   # latest.md is the full local-disk matrix
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
