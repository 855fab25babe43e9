#!/usr/bin/env python3
"""Turn a benchmark run (raw.csv + meta.json from benchmarks/bench.py) into report.md,
results.csv (one line per configuration, StreamHouse beside Kafka, with ratios) and
chart.png, in the same folder; also copies report.md to benchmarks/results/latest.md
(unless --no-latest). Failed or partial runs are marked, never fatal.

Usage: benchmarks/report.py RESULTS_DIR [--no-latest]
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SH, KF = "streamhouse", "kafka"


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def ratio(a, b):
    a, b = num(a), num(b)
    if a is None or b is None or b == 0:
        return None
    return a / b


def f(v, nd=0, dash="–"):
    v = num(v)
    if v is None:
        return dash
    if nd == 0:
        return f"{v:,.0f}"
    return f"{v:,.{nd}f}"


def fr(r):
    return "–" if r is None else f"{r:.2f}×"


def load(outdir: Path):
    meta = {}
    try:
        meta = json.loads((outdir / "meta.json").read_text())
    except (OSError, ValueError):
        pass
    rows = []
    try:
        with open(outdir / "raw.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        pass
    configs, by = [], {}
    for r in rows:
        key = r.get("row", "")
        if key not in by:
            by[key] = {"config": r.get("config", key), "kind": r.get("kind", ""), "row": r}
            configs.append(key)
        by[key][r.get("broker", "")] = r
    return meta, configs, by


def produced(r):
    return r is not None and num(r.get("produce_rec_s")) is not None


def mark(r, field, nd=0):
    """Cell for one broker's metric: value, or FAILED / n/a, with a '*' when the run had errors."""
    if r is None:
        return "not run"
    v = num(r.get(field))
    if v is None:
        return "**FAILED**" if r.get("status") == "FAILED" else "–"
    s = f(v, nd)
    return s + ("\\*" if r.get("status") not in ("ok", "") else "")


def consume_cell(r, field, nd=1):
    if r is None:
        return "not run"
    cs = r.get("consume_status", "")
    if cs == "ok":
        return f(r.get(field), nd)
    if cs in ("n/a", "skipped", ""):
        return "–"
    v = num(r.get(field))
    return (f(v, nd) + "\\*") if v is not None else "**FAILED**"


def write_results_csv(outdir, configs, by):
    metrics = ["produce_rec_s", "produce_mb_s", "lat_avg_ms", "lat_max_ms", "p50_ms", "p95_ms", "p99_ms",
               "p999_ms", "consume_mb_s", "consume_rec_s", "consume_fetch_mb_s", "cpu_produce_s",
               "cpu_consume_s", "cpu_total_s", "rss_end_mb", "rss_peak_mb", "txn_count", "records_per_txn"]
    head = ["config", "kind", "record_size", "acks", "partitions", "producers", "target_rate", "records", "txn_ms",
            "txn_target"]
    cols = head + [f"{b}_status" for b in (SH, KF)] + [f"{b}_consume_status" for b in (SH, KF)]
    for m in metrics:
        cols += [f"{SH}_{m}", f"{KF}_{m}", f"ratio_{m}"]
    cols += [f"{SH}_error", f"{KF}_error"]
    with open(outdir / "results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for key in configs:
            d = by[key]
            base = d["row"]
            line = [d["config"], d["kind"]] + [base.get(h, "") for h in head[2:]]
            line += [(d.get(b) or {}).get("status", "not run") for b in (SH, KF)]
            line += [(d.get(b) or {}).get("consume_status", "") for b in (SH, KF)]
            for m in metrics:
                a, k = (d.get(SH) or {}).get(m), (d.get(KF) or {}).get(m)
                r = ratio(a, k)
                line += [a or "", k or "", "" if r is None else f"{r:.3f}"]
            line += [(d.get(b) or {}).get("error", "") for b in (SH, KF)]
            w.writerow(line)


def write_markdown(outdir, meta, configs, by, chart_ok):
    L = []
    mode = meta.get("mode", "?")
    L.append(f"# StreamHouse vs Apache Kafka benchmark ({mode})\n")
    L.append(f"- **Date:** {meta.get('date', '?')}")
    L.append(f"- **Machine:** {meta.get('nproc', '?')} CPUs ({meta.get('cpu_model', '?')}), "
             f"{meta.get('memory', '?')} RAM, Linux {meta.get('kernel', '?')}, host `{meta.get('host', '?')}`")
    L.append(f"- **StreamHouse:** commit `{meta.get('streamhouse_commit', '?')}`, "
             f"`{meta.get('streamhouse_version', '?')}`, binary {meta.get('streamhouse_binary', '?')}, "
             f"RUST_LOG={meta.get('rust_log', '?')}")
    L.append(f"- **Apache Kafka:** {meta.get('kafka_version', '?')} (single KRaft node, "
             f"scripts/kafka/start-broker.sh, heap {meta.get('kafka_heap', '?')})")
    L.append(f"- **Java:** {meta.get('java_version', '?')}")
    L.append(f"- **Clients:** Kafka {meta.get('kafka_version', '?')} kafka-producer-perf-test / "
             "kafka-consumer-perf-test, on the same machine as the brokers")
    L.append(f"- **StreamHouse storage:** {meta.get('streamhouse_storage', 'local')}; consume after a restart "
             f"(reads from storage, not the write-time cache): {meta.get('cold_consume', False)}; "
             f"settings from the environment: `{meta.get('streamhouse_env', 'none')}`")
    L.append(f"- **Producer settings (both brokers):** `{meta.get('producer_props', '?')}`")
    L.append(f"- **Records:** headline row {meta.get('records_headline', '?')}, other 100 B rows "
             f"{meta.get('records_100B', '?')}, 1 KiB rows {meta.get('records_1KiB', '?')}; latency rows "
             f"{meta.get('latency_seconds', '?')} s at the fixed rate, {meta.get('latency_record_size', '?')} B "
             f"records; warm-up {meta.get('warmup_records', '?')} records per broker; consumer timeout "
             f"{meta.get('consumer_timeout_ms', '?')} ms; restart per configuration: "
             f"{meta.get('restart_each', '?')}")
    if meta.get("txn_ms"):
        L.append(f"- **Transactional rows:** {meta.get('records_txn') or 'as the other rows of the record size'} "
                 "records, one producer, one partition, acks=all, `--transactional-id <unique> "
                 "--transaction-duration-ms <ms>` ("
                 + ", ".join(f"{k}: {v} ms" for k, v in meta["txn_ms"].items())
                 + "); consumer `isolation.level=read_committed`")
    L.append("- Runs alternate StreamHouse-first / Kafka-first per configuration; each configuration uses a fresh "
             "topic on each broker. Ratio = StreamHouse / Kafka (throughput: >1 is StreamHouse faster; "
             "latency, CPU, RSS: <1 is StreamHouse better). `x4` = 4 producer processes at once, "
             "throughput summed, latency of the worst one. `\\*` = the run logged errors (see Failures).\n")
    if chart_ok:
        L.append("![throughput and latency per configuration](chart.png)\n")

    tput = [k for k in configs if by[k]["kind"] == "throughput"]
    lat = [k for k in configs if by[k]["kind"] == "latency"]
    txn = [k for k in configs if by[k]["kind"] == "transactional"]

    if tput:
        L.append("## Producer throughput (kafka-producer-perf-test, unthrottled)\n")
        L.append("| Configuration | Records | SH rec/s | Kafka rec/s | SH/Kafka | SH MB/s | Kafka MB/s | "
                 "SH p99 ms | Kafka p99 ms | p99 SH/Kafka |")
        L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for k in tput:
            d = by[k]; s, kf = d.get(SH), d.get(KF)
            L.append(f"| {d['config']} | {f(d['row'].get('records'))} | {mark(s, 'produce_rec_s')} | "
                     f"{mark(kf, 'produce_rec_s')} | {fr(ratio((s or {}).get('produce_rec_s'), (kf or {}).get('produce_rec_s')))} | "
                     f"{mark(s, 'produce_mb_s', 2)} | {mark(kf, 'produce_mb_s', 2)} | {mark(s, 'p99_ms')} | "
                     f"{mark(kf, 'p99_ms')} | {fr(ratio((s or {}).get('p99_ms'), (kf or {}).get('p99_ms')))} |")
        L.append("")
        L.append("## Consumer throughput (kafka-consumer-perf-test, same topic, right after producing)\n")
        L.append("| Configuration | SH MB/s | Kafka MB/s | SH/Kafka | SH rec/s | Kafka rec/s | SH/Kafka |")
        L.append("|---|--:|--:|--:|--:|--:|--:|")
        for k in tput:
            d = by[k]; s, kf = d.get(SH), d.get(KF)
            okr = lambda r: r is not None and r.get("consume_status") == "ok"  # noqa: E731
            rm = ratio(s.get("consume_mb_s"), kf.get("consume_mb_s")) if okr(s) and okr(kf) else None
            rn = ratio(s.get("consume_rec_s"), kf.get("consume_rec_s")) if okr(s) and okr(kf) else None
            L.append(f"| {d['config']} | {consume_cell(s, 'consume_mb_s', 2)} | {consume_cell(kf, 'consume_mb_s', 2)} | "
                     f"{fr(rm)} | {consume_cell(s, 'consume_rec_s', 0)} | {consume_cell(kf, 'consume_rec_s', 0)} | "
                     f"{fr(rn)} |")
        L.append("")

    if lat:
        L.append("## Latency at a fixed rate (kafka-producer-perf-test --throughput R)\n")
        L.append("| Configuration | SH rec/s | Kafka rec/s | SH p50/p99/p99.9 ms | Kafka p50/p99/p99.9 ms | "
                 "p99 SH/Kafka | p99.9 SH/Kafka |")
        L.append("|---|--:|--:|--:|--:|--:|--:|")
        for k in lat:
            d = by[k]; s, kf = d.get(SH), d.get(KF)

            def trip(r):
                if not produced(r):
                    return mark(r, "p50_ms")
                return f"{f(r['p50_ms'])} / {f(r['p99_ms'])} / {f(r['p999_ms'])}" + \
                    ("\\*" if r.get("status") != "ok" else "")
            L.append(f"| {d['config']} | {mark(s, 'produce_rec_s')} | {mark(kf, 'produce_rec_s')} | {trip(s)} | "
                     f"{trip(kf)} | {fr(ratio((s or {}).get('p99_ms'), (kf or {}).get('p99_ms')))} | "
                     f"{fr(ratio((s or {}).get('p999_ms'), (kf or {}).get('p999_ms')))} |")
        L.append("")

    if txn:
        L.append("## Transactional producer (kafka-producer-perf-test --transactional-id, unthrottled)\n")
        L.append("`txn100` / `txn10k`: the tool commits on time (`--transaction-duration-ms`), not per N records; "
                 "*rec/txn* is what each run did: records / transactions, the transactions counted as the end "
                 "offset minus the records (each commit marker takes an offset). CPU: broker CPU seconds while "
                 "producing.\n")
        L.append("| Configuration | Records | txn ms | SH rec/txn | Kafka rec/txn | SH rec/s | Kafka rec/s | SH/Kafka | "
                 "SH MB/s | Kafka MB/s | SH/Kafka | SH p99 ms | Kafka p99 ms | SH CPU s | Kafka CPU s | CPU SH/Kafka |")
        L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for k in txn:
            d = by[k]; s, kf = d.get(SH), d.get(KF)
            g = lambda r, m: (r or {}).get(m)  # noqa: E731
            L.append(f"| {d['config']} | {f(d['row'].get('records'))} | {f(d['row'].get('txn_ms'))} | "
                     f"{f(g(s, 'records_per_txn'))} | {f(g(kf, 'records_per_txn'))} | "
                     f"{mark(s, 'produce_rec_s')} | {mark(kf, 'produce_rec_s')} | "
                     f"{fr(ratio(g(s, 'produce_rec_s'), g(kf, 'produce_rec_s')))} | "
                     f"{mark(s, 'produce_mb_s', 2)} | {mark(kf, 'produce_mb_s', 2)} | "
                     f"{fr(ratio(g(s, 'produce_mb_s'), g(kf, 'produce_mb_s')))} | {mark(s, 'p99_ms')} | "
                     f"{mark(kf, 'p99_ms')} | {f(g(s, 'cpu_produce_s'), 2)} | {f(g(kf, 'cpu_produce_s'), 2)} | "
                     f"{fr(ratio(g(s, 'cpu_produce_s'), g(kf, 'cpu_produce_s')))} |")
        L.append("")
        L.append("## read_committed consumer (kafka-consumer-perf-test, isolation.level=read_committed, "
                 "the transactional topic right after producing)\n")
        L.append("| Configuration | SH MB/s | Kafka MB/s | SH/Kafka | SH rec/s | Kafka rec/s | SH/Kafka | "
                 "SH CPU s | Kafka CPU s | CPU SH/Kafka |")
        L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        okr = lambda r: r is not None and r.get("consume_status") == "ok"  # noqa: E731
        for k in txn:
            d = by[k]; s, kf = d.get(SH), d.get(KF)
            both = okr(s) and okr(kf)
            rm = ratio(s.get("consume_mb_s"), kf.get("consume_mb_s")) if both else None
            rn = ratio(s.get("consume_rec_s"), kf.get("consume_rec_s")) if both else None
            rc = ratio((s or {}).get("cpu_consume_s"), (kf or {}).get("cpu_consume_s"))
            L.append(f"| {d['config']} | {consume_cell(s, 'consume_mb_s', 2)} | {consume_cell(kf, 'consume_mb_s', 2)} | "
                     f"{fr(rm)} | {consume_cell(s, 'consume_rec_s', 0)} | {consume_cell(kf, 'consume_rec_s', 0)} | "
                     f"{fr(rn)} | {f((s or {}).get('cpu_consume_s'), 2)} | {f((kf or {}).get('cpu_consume_s'), 2)} | "
                     f"{fr(rc)} |")
        L.append("")

    obj = [k for k in configs if num((by[k].get(SH) or {}).get("cache_hits_consume")) is not None
           or num((by[k].get(SH) or {}).get("obj_puts_produce")) is not None]
    if obj:
        L.append("## StreamHouse storage requests (its metrics endpoint, deltas over each phase)\n")
        L.append("| Configuration | PUTs (produce) | PUTs/s | GETs (consume) | MB fetched | consumed MB | "
                 "GETs per MiB consumed | cache hit ratio |")
        L.append("|---|--:|--:|--:|--:|--:|--:|--:|")
        for k in obj:
            s = by[k].get(SH) or {}
            puts, wall = num(s.get("obj_puts_produce")), num(s.get("produce_wall_s"))
            gets, hits, miss = num(s.get("obj_gets_consume")), num(s.get("cache_hits_consume")), \
                num(s.get("cache_misses_consume"))
            consumed = None
            if num(s.get("consume_records")) is not None:
                consumed = num(s.get("consume_records")) * num(s.get("record_size")) / 1e6
            per_mib = gets / (consumed / 1.048576) if gets is not None and consumed else None
            hit = hits / (hits + miss) if hits is not None and miss is not None and hits + miss > 0 else None
            L.append(f"| {by[k]['config']} | {f(puts)} | {f(puts / wall if puts is not None and wall else None, 1)} | "
                     f"{f(gets)} | {f(s.get('obj_get_mb_consume'), 1)} | {f(consumed, 1)} | {f(per_mib, 3)} | "
                     f"{'–' if hit is None else f'{hit:.1%}'} |")
        L.append("")

    L.append("## Broker resources per run (produce + consume)\n")
    L.append("| Configuration | SH CPU s | Kafka CPU s | SH/Kafka | SH RSS end MB | Kafka RSS end MB | "
             "SH RSS peak MB | Kafka RSS peak MB | peak SH/Kafka |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for k in configs:
        d = by[k]; s, kf = d.get(SH) or {}, d.get(KF) or {}
        cell = lambda r, m, nd=1: f(r.get(m), nd) if r else "not run"  # noqa: E731
        L.append(f"| {d['config']} | {cell(s, 'cpu_total_s', 2)} | {cell(kf, 'cpu_total_s', 2)} | "
                 f"{fr(ratio(s.get('cpu_total_s'), kf.get('cpu_total_s')))} | {cell(s, 'rss_end_mb', 0)} | "
                 f"{cell(kf, 'rss_end_mb', 0)} | {cell(s, 'rss_peak_mb', 0)} | {cell(kf, 'rss_peak_mb', 0)} | "
                 f"{fr(ratio(s.get('rss_peak_mb'), kf.get('rss_peak_mb')))} |")
    L.append("")

    fails = []
    for k in configs:
        for b in (SH, KF):
            r = by[k].get(b)
            if r is None:
                continue
            if r.get("status") not in ("ok", ""):
                fails.append(f"- {b} / {by[k]['config']}: produce {r.get('status')}: `{r.get('error', '')}`")
            cs = r.get("consume_status", "")
            if cs not in ("ok", "n/a", "skipped", ""):
                fails.append(f"- {b} / {by[k]['config']}: consume `{cs}`")
    L.append("## Failures and warnings\n")
    L.extend(fails or ["None."])
    L.append("\nRaw numbers: `raw.csv` (one line per run), `results.csv` (one line per configuration, with ratios); "
             "tool and broker logs in `logs/` (on the machine that ran it; not kept in git). "
             "Columns: see benchmarks/README.md.")
    (outdir / "report.md").write_text("\n".join(L) + "\n")


def chart(outdir, configs, by) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report.py: matplotlib not installed (pip install matplotlib): no chart.png", file=sys.stderr)
        return False
    if not configs:
        return False
    tput = [k for k in configs if by[k]["kind"] in ("throughput", "transactional")]
    colors = {SH: "#1f77b4", KF: "#ff7f0e"}
    names = {SH: "StreamHouse", KF: "Apache Kafka"}
    panels = []
    if tput:
        panels.append(("Producer throughput (MB/s)", tput, "produce_mb_s", False, True))
        panels.append(("Consumer throughput (MB/s)", tput, "consume_mb_s", False, True))
    panels.append(("Producer p99 latency (ms, log scale)", configs, "p99_ms", True, False))
    height = max(4.5, 0.45 * max(len(p[1]) for p in panels) + 2.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), height), squeeze=False)
    for ax, (title, keys, metric, logscale, ratio_txt) in zip(axes[0], panels):
        ys = list(range(len(keys)))
        h = 0.38
        vals_all = []
        for j, b in enumerate((SH, KF)):
            vals = []
            for k in keys:
                r = by[k].get(b)
                v = None
                if r is not None:
                    if metric.startswith("consume") and r.get("consume_status") not in ("ok",) \
                            and num(r.get(metric)) is None:
                        v = None
                    else:
                        v = num(r.get(metric))
                vals.append(v)
            vals_all.append(vals)
            pos = [y - h / 2 + j * h for y in ys]
            ax.barh(pos, [v if v is not None else 0 for v in vals], height=h, color=colors[b], label=names[b])
        vmax = max([v for vs in vals_all for v in vs if v is not None] or [1])
        for j, b in enumerate((SH, KF)):
            for y, v in zip(ys, vals_all[j]):
                py = y - h / 2 + j * h
                if v is None:
                    ax.text(vmax * 0.01 if not logscale else 1, py, "FAILED / n/a", va="center", fontsize=7,
                            color="red")
                else:
                    ax.text(v, py, f" {v:,.0f}" if v >= 10 else f" {v:.1f}", va="center", fontsize=7)
        if ratio_txt:
            for y, k in zip(ys, keys):
                r = ratio(vals_all[0][ys.index(y)], vals_all[1][ys.index(y)])
                if r is not None:
                    ax.text(vmax * 1.32, y, f"{r:.2f}×", va="center", ha="right", fontsize=8, weight="bold")
        ax.set_yticks(ys)
        ax.set_yticklabels([by[k]["config"] for k in keys], fontsize=9)
        ax.invert_yaxis()
        ax.set_title(title + ("  [SH/Kafka at right]" if ratio_txt else ""), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        if logscale:
            ax.set_xscale("log")
            ax.set_xlim(left=0.5, right=max(vmax * 3, 10))
        else:
            ax.set_xlim(0, vmax * 1.35)
    fig.suptitle("StreamHouse vs Apache Kafka (same clients, same settings, same machine)", fontsize=12)
    hs, ls = axes[0][0].get_legend_handles_labels()
    fig.legend(hs, ls, loc="upper right", ncol=2, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(outdir / "chart.png", dpi=110)
    plt.close(fig)
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir")
    p.add_argument("--no-latest", action="store_true", help="do not copy report.md to benchmarks/results/latest.md")
    a = p.parse_args()
    outdir = Path(a.outdir)
    meta, configs, by = load(outdir)
    if not configs:
        print(f"report.py: no runs in {outdir}/raw.csv", file=sys.stderr)
    write_results_csv(outdir, configs, by)
    try:
        ok = chart(outdir, configs, by)
    except Exception as e:  # noqa: BLE001  (a chart problem must not lose the report)
        print(f"report.py: chart failed: {type(e).__name__}: {e}", file=sys.stderr)
        ok = False
    write_markdown(outdir, meta, configs, by, ok)
    if not a.no_latest:
        latest = HERE / "results" / "latest.md"
        latest.parent.mkdir(parents=True, exist_ok=True)
        text = (outdir / "report.md").read_text()
        # make the chart link work from benchmarks/results/, never through a machine path: a run
        # outside it has its chart copied beside latest.md
        try:
            rel = outdir.resolve().relative_to(latest.parent.resolve())
            text = text.replace("](chart.png)", f"]({rel}/chart.png)")
        except ValueError:
            if (outdir / "chart.png").exists():
                shutil.copyfile(outdir / "chart.png", latest.parent / "latest-chart.png")
                text = text.replace("](chart.png)", "](latest-chart.png)")
        latest.write_text(text)
    print(f"report: {outdir / 'report.md'}" + ("" if a.no_latest else f" (and {HERE / 'results' / 'latest.md'})"))
    print((outdir / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
