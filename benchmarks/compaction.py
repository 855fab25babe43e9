#!/usr/bin/env python3
"""Key-compaction benchmark: StreamHouse (local disk, S3) beside Apache Kafka in one run.

Parts (each broker/mode gets a fresh broker):
  1  cleaner throughput: ~--mb MB of --record-size records over --keys keys, keyed confluent_kafka
     producer (linger.ms=5, batch.size=65536) into a compact topic (segment.bytes=1048576,
     segment.ms=100, min.cleanable.dirty.ratio=0.01, 1 partition); wait until the cleaner is idle.
     StreamHouse: counters of its metrics endpoint; Kafka: the LogCleaner stats in server.log.
  2  cleaner memory: --many-keys distinct keys (16-byte key, 8-byte value) written twice into a
     topic created with cleanup.policy=delete; then RSS is read, /proc/PID/clear_refs reset (5),
     the topic altered to compact, the cleaning awaited and VmHWM read.
  3  produce p99: kafka-producer-perf-test --throughput 1000 --record-size 1024 acks=all for
     --p3-seconds to a plain topic, once idle, once right after a --p3-mb MB keyed topic (written
     with cleanup.policy=delete) is altered to compact (so the cleaner runs during the window).

Example: python3 benchmarks/compaction.py --brokers sh-local,sh-s3,kafka --out benchmarks/results/X
Needs confluent_kafka, scripts/kafka (fetched), scripts/s3 (for sh-s3) and a StreamHouse binary.
"""
import argparse, json, os, re, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KAFKA_KIT = ROOT / "scripts" / "kafka"
S3_KIT = ROOT / "scripts" / "s3"


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        with socket.socket() as s2:   # Kafka wants port+1 for its controller
            try:
                s2.bind(("127.0.0.1", p + 1))
                return p
            except OSError:
                continue


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def proc_status(pid: int) -> dict:
    out = {}
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = ln.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) * 1024
    return out


def clear_refs(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class StreamHouse:
    def __init__(self, binary, work: Path, s3_env=None, backoff_ms=15000):
        self.binary, self.work, self.s3_env, self.backoff_ms = binary, work, s3_env, backoff_ms
        self.port, self.metrics_port = free_port(), free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.name = "streamhouse-s3" if s3_env else "streamhouse-local"

    def start(self):
        shutil.rmtree(self.work, ignore_errors=True)
        (self.work / "data").mkdir(parents=True)
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        self.args = [str(self.binary), "serve", "--listen", self.bootstrap, "--data-dir", str(self.work / "data"),
                     "--group-initial-rebalance-delay-ms", "0", "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
                     "--log-cleaner-backoff-ms", str(self.backoff_ms)]
        if self.s3_env:
            env.update(self.s3_env)
            self.args += ["--storage", f"s3://{self.s3_env['S3_BUCKET']}/compaction-{int(time.time() * 1000)}"]
        self.logf = open(self.work / "broker.log", "wb")
        self.proc = subprocess.Popen(self.args, stdout=self.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.pid = self.proc.pid
        for _ in range(300):
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamhouse exited (rc {self.proc.returncode}), see {self.work}/broker.log")
            if port_open(self.port):
                return
            time.sleep(0.1)
        raise RuntimeError("streamhouse did not open its port")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill(); self.proc.wait()

    def metrics(self) -> dict:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        out = {}
        for ln in text.splitlines():
            if ln and not ln.startswith("#"):
                k, _, v = ln.rpartition(" ")
                name = k.split("{")[0]
                try:
                    out[name] = out.get(name, 0.0) + float(v)
                except ValueError:
                    pass
        return out

    # A cleaner "activity" fingerprint: changes while the cleaner works.
    def activity(self, topic):
        m = self.metrics()
        return (m.get("streamhouse_cleaner_busy_milliseconds_total", 0), m.get("streamhouse_cleaner_read_bytes_total", 0))


KSTATS = re.compile(
    r"^\[(?P<ts>[^\]]+)\] INFO [^\n]*\n\s*Log cleaner thread (?P<t>\d+) cleaned log (?P<log>\S+) \(dirty section = \[(?P<f>\d+), (?P<to>\d+)\]\)\s*\n"
    r"\s*(?P<proc_mb>[\d,.]+) MB of log processed in (?P<secs>[\d,.]+) seconds \((?P<rate>[\d,.]+) MB/sec\)\.\s*\n"
    r"\s*Indexed (?P<idx_mb>[\d,.]+) MB in (?P<idx_s>[\d,.]+) seconds.*\n"
    r"\s*Buffer utilization: (?P<buf>[\d,.]+)%\s*\n"
    r"\s*Cleaned (?P<cl_mb>[\d,.]+) MB in (?P<cl_s>[\d,.]+) seconds.*\n"
    r"\s*Start size: (?P<start_mb>[\d,.]+) MB \((?P<start_n>[\d,]+) messages\)\s*\n"
    r"\s*End size: (?P<end_mb>[\d,.]+) MB \((?P<end_n>[\d,]+) messages\)", re.M)


KBEGIN = re.compile(r"^\[(?P<ts>[^\]]+)\] INFO Cleaner \d+: Beginning cleaning of log (?P<log>\S+) ", re.M)


def kts(s):
    import datetime
    return datetime.datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def num(s):
    return float(s.replace(",", ""))


class Kafka:
    name = "kafka"

    def __init__(self, work: Path, backoff_ms=15000, extra_props=""):
        self.dir, self.port = work, free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.backoff_ms, self.extra_props = backoff_ms, extra_props

    def start(self):
        subprocess.run([str(KAFKA_KIT / "stop-broker.sh"), "--dir", str(self.dir), "--purge"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)
        props = f"log.cleaner.backoff.ms={self.backoff_ms}\n" + self.extra_props
        r = subprocess.run([str(KAFKA_KIT / "start-broker.sh"), "--port", str(self.port), "--dir", str(self.dir)],
                           capture_output=True, text=True, env=dict(os.environ, KAFKA_BROKER_PROPS=props))
        if r.returncode:
            raise RuntimeError("kafka start failed: " + r.stderr[-1500:])
        self.pid = int((self.dir / "broker.pid").read_text())

    def stop(self):
        subprocess.run([str(KAFKA_KIT / "stop-broker.sh"), "--dir", str(self.dir)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def cleaner_stats(self, topic=None):
        text = (self.dir / "logs" / "server.log").read_text(errors="replace")
        out = []
        for m in KSTATS.finditer(text):
            if topic and not m["log"].startswith(topic + "-"):
                continue
            d = {k: (num(v) if k not in ("ts", "log") else v) for k, v in m.groupdict().items()}
            # ms-precise duration: "Beginning cleaning of log X" to the stats line (the stats print 0.1 s)
            begins = [b for b in KBEGIN.finditer(text, 0, m.start()) if b["log"] == m["log"]]
            if begins:
                d["wall_s"] = (kts(m["ts"]) - kts(begins[-1]["ts"]))
            out.append(d)
        return out

    def activity(self, topic):
        st = self.cleaner_stats(topic)
        return (len(st),)


# --------------------------------------------------------------------------- clients

def admin(b):
    from confluent_kafka.admin import AdminClient
    return AdminClient({"bootstrap.servers": b.bootstrap})


def create_topic(b, name, config):
    from confluent_kafka.admin import NewTopic
    ac = admin(b)
    fs = ac.create_topics([NewTopic(name, 1, 1, config=config)], operation_timeout=30)
    for f in fs.values():
        f.result()
    time.sleep(1)


def set_config(b, topic, key, value):
    from confluent_kafka.admin import ConfigResource, ConfigEntry, AlterConfigOpType, ResourceType
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)])
    ac = admin(b)
    for f in ac.incremental_alter_configs([res]).values():
        f.result()


def produce_keyed(b, topic, n, keyf, value_fn):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 5, "batch.size": 65536, "acks": "all",
                  "queue.buffering.max.kbytes": 262144, "queue.buffering.max.messages": 1000000})
    errs = []

    def cb(err, _m):
        if err:
            errs.append(err)
    t0 = time.time()
    for i in range(n):
        while True:
            try:
                p.produce(topic, value_fn(i), keyf(i), on_delivery=cb)
                break
            except BufferError:
                p.poll(0.01)
        if i % 10000 == 0:
            p.poll(0)
    p.flush(120)
    el = time.time() - t0
    if errs:
        raise RuntimeError(f"{len(errs)} delivery errors, first: {errs[0]}")
    return el


def wait_idle(b, topic, idle_s, timeout_s, need_change=True):
    """Wait until the cleaner's activity fingerprint changed at least once and then stayed put idle_s."""
    start = time.time()
    first = last = b.activity(topic)
    last_change = time.time()
    changed = False
    while time.time() - start < timeout_s:
        time.sleep(1)
        cur = b.activity(topic)
        if cur != last:
            last, last_change, changed = cur, time.time(), True
        if (changed or not need_change) and time.time() - last_change >= idle_s:
            return True
    log(f"wait_idle: timeout after {timeout_s}s (first {first}, last {last})")
    return False


def perf_test(b, topic, secs, out_path):
    n = 1000 * secs
    cmd = [str(KAFKA_KIT / "kafka.sh"), "kafka-producer-perf-test", "--topic", topic, "--num-records", str(n),
           "--record-size", "1024", "--throughput", "1000", "--producer-props", f"bootstrap.servers={b.bootstrap}",
           "acks=all", "linger.ms=5", "batch.size=65536"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    Path(out_path).write_text(" ".join(cmd) + "\n" + r.stdout + r.stderr)
    m = re.findall(r"(\d+) records sent, ([\d.]+) records/sec .*?, ([\d.]+) ms avg latency, ([\d.]+) ms max latency, "
                   r"(\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99.9th", r.stdout)
    if not m:
        raise RuntimeError("perf-test output not parsed: " + (r.stdout + r.stderr)[-800:])
    s = m[-1]
    return {"records": int(s[0]), "rate": float(s[1]), "avg_ms": float(s[2]), "max_ms": float(s[3]),
            "p50_ms": int(s[4]), "p95_ms": int(s[5]), "p99_ms": int(s[6]), "p999_ms": int(s[7])}


COMPACT = {"cleanup.policy": "compact", "segment.bytes": "1048576", "segment.ms": "100",
           "min.cleanable.dirty.ratio": "0.01"}


def sh_cleaner(b):
    m = b.metrics()
    keys = ["streamhouse_cleaner_read_bytes_total", "streamhouse_cleaner_written_bytes_total",
            "streamhouse_cleaner_busy_milliseconds_total", "streamhouse_cleaner_reads_total",
            "streamhouse_cleaner_segments_written_total", "streamhouse_object_puts_total", "streamhouse_object_gets_total"]
    d = {k: m.get(k, 0.0) for k in keys}
    d.update({k: v for k, v in m.items() if k.startswith("streamhouse_cleaner") and k not in d})
    return d


def diff(a, b):
    return {k: b.get(k, 0) - a.get(k, 0) for k in b}


# --------------------------------------------------------------------------- parts

def part1(b, a, res):
    topic = "compact1"
    create_topic(b, topic, COMPACT)
    n = a.mb * 1_000_000 // a.record_size
    val = os.urandom(a.record_size)
    before = sh_cleaner(b) if isinstance(b, StreamHouse) else None
    log(f"{b.name} part1: producing {n} records of {a.record_size} B over {a.keys} keys")
    el = produce_keyed(b, topic, n, lambda i: b"key-%08d" % (i % a.keys), lambda i: val)
    t_prod_end = time.time()
    ok = wait_idle(b, topic, idle_s=b.backoff_ms / 1000 + 8, timeout_s=a.timeout)
    r = {"records": n, "produced_mb": n * a.record_size / 1e6, "produce_s": el, "produce_mb_s": n * a.record_size / 1e6 / el,
         "idle_reached": ok, "wait_after_produce_s": time.time() - t_prod_end}
    if isinstance(b, StreamHouse):
        d = diff(before, sh_cleaner(b))
        r["counters"] = d
        rd, busy = d["streamhouse_cleaner_read_bytes_total"], d["streamhouse_cleaner_busy_milliseconds_total"]
        r["read_mb"], r["written_mb"], r["busy_s"] = rd / 1e6, d["streamhouse_cleaner_written_bytes_total"] / 1e6, busy / 1000
        r["mb_s"] = rd / 1e6 / (busy / 1000) if busy else None
        if b.s3_env:
            gb = rd / 1e9
            r["cleaner_gets_per_gb"] = d["streamhouse_cleaner_reads_total"] / gb if gb else None
            r["cleaner_puts_per_gb"] = d["streamhouse_cleaner_segments_written_total"] / gb if gb else None
            r["object_gets"], r["object_puts"] = d["streamhouse_object_gets_total"], d["streamhouse_object_puts_total"]
    else:
        st = b.cleaner_stats(topic)
        r["cleanings"] = len(st)
        mib = 1024 * 1024 / 1e6   # Kafka prints MiB ("MB" = 2^20 bytes)
        r["read_mb"] = sum(s["proc_mb"] for s in st) * mib
        r["written_mb"] = sum(s["end_mb"] for s in st) * mib
        r["busy_s"] = sum(s.get("wall_s", s["secs"]) for s in st)
        r["busy_s_printed"] = sum(s["secs"] for s in st)
        r["index_s"] = sum(s["idx_s"] for s in st)
        r["copy_s"] = sum(s["cl_s"] for s in st)
        r["mb_s"] = r["read_mb"] / r["busy_s"] if r["busy_s"] else None
        r["max_buffer_util_pct"] = max((s["buf"] for s in st), default=None)
        r["last_end_messages"] = st[-1]["end_n"] if st else None
        r["stats"] = st
    res["part1"] = r
    log(f"{b.name} part1: {json.dumps({k: v for k, v in r.items() if k not in ('stats', 'counters')})}")


def part2(b, a, res):
    topic = "manykeys"
    cfg = dict(COMPACT, **{"cleanup.policy": "delete"})
    create_topic(b, topic, cfg)
    n = a.many_keys
    log(f"{b.name} part2: producing {n} distinct keys twice")
    el1 = produce_keyed(b, topic, n, lambda i: b"%016d" % i, lambda i: b"%08d" % 1)
    el2 = produce_keyed(b, topic, n, lambda i: b"%016d" % i, lambda i: b"%08d" % 2)
    time.sleep(2)
    st0 = proc_status(b.pid)
    before = sh_cleaner(b) if isinstance(b, StreamHouse) else None
    clear_refs(b.pid)
    st_reset = proc_status(b.pid)
    set_config(b, topic, "cleanup.policy", "compact")
    t0 = time.time()
    ok = wait_idle(b, topic, idle_s=b.backoff_ms / 1000 + 8, timeout_s=a.timeout)
    st1 = proc_status(b.pid)
    r = {"keys": n, "records": 2 * n, "produce_s": el1 + el2, "rss_before": st0["VmRSS"], "hwm_before_reset": st0["VmHWM"],
         "rss_after_reset": st_reset["VmRSS"], "hwm_during_cleaning": st1["VmHWM"], "rss_after": st1["VmRSS"],
         "peak_minus_before": st1["VmHWM"] - st0["VmRSS"], "idle_reached": ok, "wait_s": time.time() - t0}
    if isinstance(b, StreamHouse):
        d = diff(before, sh_cleaner(b))
        r["counters"] = d
        r["read_mb"] = d["streamhouse_cleaner_read_bytes_total"] / 1e6
        r["written_mb"] = d["streamhouse_cleaner_written_bytes_total"] / 1e6
        r["busy_s"] = d["streamhouse_cleaner_busy_milliseconds_total"] / 1000
    else:
        st = b.cleaner_stats(topic)
        r["cleanings"] = len(st)
        r["stats"] = st
        r["max_buffer_util_pct"] = max((s["buf"] for s in st), default=None)
        r["busy_s"] = sum(s["secs"] for s in st)
        r["last_end_messages"] = st[-1]["end_n"] if st else None
    res["part2"] = r
    log(f"{b.name} part2: {json.dumps({k: v for k, v in r.items() if k not in ('stats', 'counters')})}")


def part3(b, a, res, outdir):
    lat, big = "latency", "bigcompact"
    create_topic(b, lat, {"cleanup.policy": "delete"})
    create_topic(b, big, dict(COMPACT, **{"cleanup.policy": "delete"}))
    n = a.p3_mb * 1_000_000 // a.record_size
    val = os.urandom(a.record_size)
    log(f"{b.name} part3: preloading {n} keyed records into {big} (delete policy)")
    produce_keyed(b, big, n, lambda i: b"key-%08d" % (i % a.keys), lambda i: val)
    time.sleep(2)
    r = {}
    log(f"{b.name} part3: perf-test without compaction")
    r["idle"] = perf_test(b, lat, a.p3_seconds, outdir / f"{b.name}-perf-idle.txt")
    before = sh_cleaner(b) if isinstance(b, StreamHouse) else None
    set_config(b, big, "cleanup.policy", "compact")
    log(f"{b.name} part3: {big} altered to compact; perf-test during compaction")
    t0 = time.time()
    r["compacting"] = perf_test(b, lat, a.p3_seconds, outdir / f"{b.name}-perf-compacting.txt")
    r["window_s"] = time.time() - t0
    if isinstance(b, StreamHouse):
        d = diff(before, sh_cleaner(b))
        r["cleaner_busy_s_in_window"] = d["streamhouse_cleaner_busy_milliseconds_total"] / 1000
        r["cleaner_read_mb_in_window"] = d["streamhouse_cleaner_read_bytes_total"] / 1e6
    else:
        st = b.cleaner_stats(big)
        r["cleanings_in_window"] = len(st)
        r["cleaner_busy_s_in_window"] = sum(s["secs"] for s in st)
        r["cleaner_read_mb_in_window"] = sum(s["proc_mb"] for s in st) * 1024 * 1024 / 1e6
        r["cleaning_log_times"] = [s["ts"] for s in st]
    r["window_start"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0))
    res["part3"] = r
    log(f"{b.name} part3: {json.dumps(r)}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--brokers", default="sh-local,sh-s3,kafka", help="comma list of sh-local, sh-s3, kafka")
    p.add_argument("--parts", default="1,2,3", help="comma list of 1,2,3")
    p.add_argument("--p3-brokers", default=None, help="brokers to run part 3 on (default: all of --brokers)")
    p.add_argument("--binary", default=os.environ.get(
        "STREAMHOUSE_BIN", str(Path(__file__).resolve().parent.parent / "target/release/streamhouse")))
    p.add_argument("--mb", type=int, default=200, help="part 1: MB produced (default 200)")
    p.add_argument("--record-size", type=int, default=1024)
    p.add_argument("--keys", type=int, default=10000)
    p.add_argument("--many-keys", type=int, default=2_000_000, help="part 2: distinct keys (default 2,000,000)")
    p.add_argument("--p3-mb", type=int, default=200, help="part 3: MB in the topic compacted during the window")
    p.add_argument("--p3-seconds", type=int, default=30)
    p.add_argument("--backoff-ms", type=int, default=15000, help="log.cleaner.backoff.ms on both (default 15000)")
    p.add_argument("--s3-latency-ms", type=int, default=20, help="latency the loopback S3 server adds per request")
    p.add_argument("--timeout", type=int, default=400, help="most seconds to wait for a cleaning to finish")
    p.add_argument("--work", default=None, help="scratch folder (default $TMPDIR/sh-compaction-<pid>)")
    p.add_argument("--out", required=True, help="folder for results.json and raw outputs")
    a = p.parse_args()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work or f"{os.environ.get('TMPDIR', '/tmp')}/sh-compaction-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    parts = set(a.parts.split(","))
    p3b = set((a.p3_brokers or a.brokers).split(","))
    results = {"args": vars(a), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "loadavg_start": Path("/proc/loadavg").read_text().strip(), "brokers": {}}
    rpath = out / "results.json"
    for bn in a.brokers.split(","):
        s3_port, s3_dir = free_port(), work / "s3"
        s3_env = None
        if bn == "sh-s3":
            r = subprocess.run([str(S3_KIT / "start.sh"), "--port", str(s3_port), "--dir", str(s3_dir)],
                               capture_output=True, text=True, env=dict(os.environ, S3_LATENCY_MS=str(a.s3_latency_ms)))
            if r.returncode:
                log("s3 start failed: " + r.stderr[-800:]); continue
            s3_env = dict(re.findall(r"export (\w+)=(\S*)", r.stdout))
        if bn == "kafka":
            b = Kafka(work / "kafka", a.backoff_ms)
        else:
            b = StreamHouse(a.binary, work / bn, s3_env, a.backoff_ms)
        res = results["brokers"].setdefault(bn, {})
        try:
            b.start()
            res["loadavg_at_start"] = Path("/proc/loadavg").read_text().strip()
            if isinstance(b, StreamHouse):
                res["command"] = " ".join(b.args)
            if "1" in parts:
                part1(b, a, res)
                rpath.write_text(json.dumps(results, indent=1))
            if "2" in parts:
                part2(b, a, res)
                rpath.write_text(json.dumps(results, indent=1))
            if "3" in parts and bn in p3b:
                part3(b, a, res, out)
            res["loadavg_at_end"] = Path("/proc/loadavg").read_text().strip()
        except Exception as e:   # keep the other brokers' numbers
            log(f"{bn}: failed: {e!r}")
            res["error"] = repr(e)
        finally:
            if isinstance(b, Kafka):
                try:   # only the LogCleaner lines: the stats blocks and "Beginning cleaning"
                    text = (b.dir / "logs" / "server.log").read_text(errors="replace")
                    keep = [m.group(0) for m in KSTATS.finditer(text)] + [m.group(0) for m in KBEGIN.finditer(text)]
                    (out / "kafka-cleaner-stats.log").write_text("\n".join(keep) + "\n")
                except OSError:
                    pass
            else:
                try:
                    shutil.copy(b.work / "broker.log", out / f"{bn}-broker.log")
                except OSError:
                    pass
            b.stop()
            if s3_env:
                subprocess.run([str(S3_KIT / "stop.sh"), "--port", str(s3_port), "--dir", str(s3_dir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rpath.write_text(json.dumps(results, indent=1))
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rpath.write_text(json.dumps(results, indent=1))
    log(f"results in {rpath}")


if __name__ == "__main__":
    main()
