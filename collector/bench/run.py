"""``tailsift bench``: drive a collector with OTLP load and report what it sustained.

With no flags: start an own collector on the embedded default, send ``llm``-shaped load at
the highest rate it accepts for ``--duration`` seconds from several sender processes, let
it decide and store everything, stop it, and check the stored data independently: every
error trace in an accepted request must be stored (the default rules keep errors 100%).
The process exits 1 if that check fails.

Printed (and written with ``--json``), over the run after a warm-up (``--warmup``, 3 s: at
first the sampler only buffers, which would flatter the rates): spans/s accepted and
carried through sampling, ack latency percentiles, time from send to queryable for a kept trace, kept fraction per rule
against the configured rates, refused requests, and the collector's CPU % and peak RSS.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import yaml

from collector.bench.load import COUNTERS, SenderResult, Target, merge, sender_process
from collector.bench.target import OwnCollector, Probes, Scraper
from collector.config import ConfigError, load_config

RECEIVED = ("tailsift_sampler_events_total", {"event": "spans_received"})
ACCEPTED = ("tailsift_receiver_spans_total", {"outcome": "accepted"})
CR = "\r" if sys.stdout.isatty() else ""
"""The progress line rewrites itself on a terminal, and is one line per second in a log."""


def _percentile(values: list[float], q: int) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _decisions(scraper: Scraper) -> dict[tuple[str, str], float]:
    return {(lab["rule"], lab["decision"]): v for n, lab, v in scraper.samples() if n == "tailsift_sampler_decisions_total"}


def _histogram_quantile(scraper: Scraper, name: str, q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (Prometheus histogram_quantile, coarse)."""
    buckets = sorted((float(lab["le"]), v) for n, lab, v in scraper.samples() if n == f"{name}_bucket")
    if not buckets or buckets[-1][1] == 0:
        return None
    want = q * buckets[-1][1]
    return next(le for le, count in buckets if count >= want)


def _configured_keep(config: dict[str, Any]) -> dict[str, float | None]:
    try:
        settings = load_config(None, config)
    except ConfigError:
        return {}
    return {r.name: r.keep for r in settings.sampling.rules}


def _cpu_stat() -> tuple[int, int] | None:
    """(stolen, total) CPU time of the whole machine, in ticks, from /proc/stat (None where
    there is none). Stolen is the time the hypervisor gave this virtual machine's CPUs to
    someone else: a collector loses it as if it were paused."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    return (ticks[7] if len(ticks) > 7 else 0), sum(ticks)


class Watcher:
    """Peak RSS and CPU % of the collector process, sampled 5 times a second; and the share
    of the machine's CPU the hypervisor stole, which on a busy host moves every figure here
    (throughput, latency, GC pauses: benchmarks/README.md, step 12)."""

    def __init__(self, pid: int | None):
        import psutil

        self.proc = psutil.Process(pid) if pid else None
        self.peak_rss_mb = 0.0
        self.steal_percent: float | None = None
        self._stat = _cpu_stat()
        self._stop = threading.Event()
        if self.proc is not None:
            self.proc.cpu_percent(None)
            threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        assert self.proc is not None
        while not self._stop.wait(0.2):
            try:
                self.peak_rss_mb = max(self.peak_rss_mb, self.proc.memory_info().rss / 2**20)
            except Exception:  # noqa: BLE001 - the process may be gone at the end
                return

    def cpu_percent(self) -> float:
        """The collector's CPU % since the previous call; :attr:`steal_percent` becomes the
        machine's CPU stolen over the same time."""
        stat = _cpu_stat()
        if stat is not None and self._stat is not None and stat[1] > self._stat[1]:
            self.steal_percent = 100.0 * (stat[0] - self._stat[0]) / (stat[1] - self._stat[1])
        self._stat = stat
        return float(self.proc.cpu_percent(None)) if self.proc is not None else 0.0

    def stop(self) -> None:
        self._stop.set()


def run(args: Any) -> int:
    config: dict[str, Any] = yaml.safe_load(Path(args.config).read_text()) or {} if args.config else {}
    if args.kafka:
        run_id = uuid.uuid4().hex[:8]
        queue = config.setdefault("queue", {})  # keep the --config file's Kafka settings
        queue["kind"] = "kafka"
        queue["kafka"] = {"partitions": 4, **queue.get("kafka", {}), "bootstrap_servers": args.kafka,
                          "topic": f"tailsift-bench-{run_id}", "group": f"tailsift-bench-{run_id}"}  # fmt: skip
    own: OwnCollector | None = None
    api: str | None
    if args.endpoint:
        host = args.endpoint.split("://")[-1].rstrip("/")
        target = Target(args.protocol, f"http://{host}/v1/traces", host)
        api = args.api  # None: any OTLP collector, measured from the client side only
    else:
        own = OwnCollector(config)
        print(f"starting a collector ({'Kafka ' + args.kafka if args.kafka else 'embedded'}) in {own.workdir}")
        own.start()
        target = Target(args.protocol, own.http_url, own.grpc_endpoint)
        api = own.api
    scraper = Scraper(api) if api else None
    watcher = Watcher(own.proc.pid if own and own.proc else None)
    try:
        report = _drive(args, target, api, scraper, watcher)
    finally:
        watcher.stop()
    report["configured_keep_by_rule"] = _configured_keep(own.config if own else config) if scraper else {}
    if own is not None:
        code = own.stop()
        report["error_traces_stored"] = _stored_error_traces(own.dsn)
        report["collector_exit_code"] = code
    else:
        report["error_traces_stored"] = None
    # At least: a request abandoned at the deadline may still have been stored.
    stored = report["error_traces_stored"]
    report["check_passed"] = stored is None or stored >= report["error_traces_sent"]
    _print(report)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    if args.plot:
        from collector.bench.plot import plot

        plot(report, args.plot)
    return 0 if report["check_passed"] else 1


def _drive(args: Any, target: Target, api: str | None, scraper: Scraper | None, watcher: Watcher) -> dict[str, Any]:
    """Send for ``--duration`` seconds, then (with a query API) wait until everything is
    decided and stored. Rates count only what was acknowledged inside the measured window
    (after the warm-up, before the deadline): past capacity the senders stop at the deadline
    and an answer that comes later is not counted as throughput."""
    rate = None if args.rate == "max" else float(args.rate)
    counters = mp.Array("q", len(COUNTERS))
    out: mp.Queue[SenderResult] = mp.Queue()

    def metric(name: tuple[str, dict[str, str]]) -> float:
        return scraper.value(name[0], **name[1]) if scraper else 0.0

    received_before = metric(RECEIVED)
    accepted_before = metric(ACCEPTED)
    decisions_before = _decisions(scraper) if scraper else {}
    probes = Probes(target.http_url, api) if api else None
    start = time.monotonic() + 1.0  # the senders build their requests first
    deadline = start + args.duration
    warmup = float(math.ceil(min(args.warmup, args.duration / 4)))  # whole seconds: the timeline's unit
    per_sender = rate / args.senders if rate else None
    procs = [mp.Process(target=sender_process, args=(target, args.shape, per_sender, args.concurrency, start,
                                                      deadline, counters, out)) for _ in range(args.senders)]  # fmt: skip
    for p in procs:
        p.start()
    time.sleep(max(0.0, start - time.monotonic()))
    if probes:
        probes.start()
    watcher.cpu_percent()
    last = (time.monotonic(), 0, received_before)
    counted: list[tuple[float, float]] = []  # (time, the collector's count of accepted spans): warm-up's end, deadline
    warm = (start, received_before)  # when the warm-up ended, and spans sampled by then
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        now, accepted, received = time.monotonic(), counters[0], metric(RECEIVED)
        dt = max(1e-6, now - last[0])
        print(f"{CR}{now - start:5.1f}s  accepted {(accepted - last[1]) / dt:>9,.0f} spans/s  "
              + (f"sampled {(received - last[2]) / dt:>9,.0f} spans/s  " if scraper else "")
              + f"refused {counters[2]:>5}  failed {counters[3]:>4}  RSS {watcher.peak_rss_mb:6.0f} MB",
              end="" if CR else "\n", flush=True)  # fmt: skip
        last = (now, accepted, received)
        if scraper and not counted and now - start >= warmup and (sample := scraper.timed(ACCEPTED[0], **ACCEPTED[1])):
            counted.append(sample)
            warm = (now, received)
    if scraper and counted and (sample := scraper.timed(ACCEPTED[0], **ACCEPTED[1])):
        counted.append(sample)
    if CR:
        print()
    if probes:
        probes.stop_sending()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    senders_done = time.monotonic() - deadline
    # The senders are done: nothing more is being accepted, so this count is final.
    accepted_by_collector = metric(ACCEPTED) - accepted_before - (probes.accepted if probes else 0) if scraper else None
    cpu = watcher.cpu_percent()
    total = merge(results)
    window = args.duration - warmup
    in_window = {s: row for s, row in total.timeline.items() if warmup <= s < args.duration}
    report: dict[str, Any] = {
        "shape": args.shape, "protocol": args.protocol, "rate": args.rate, "duration_s": args.duration,
        "warmup_s": warmup, "senders": args.senders, "concurrency": args.concurrency,
        "queue": f"kafka {args.kafka}" if args.kafka else ("memory" if not args.endpoint else "?"),
        "spans_per_second": sum(row[0] for row in in_window.values()) / window,
        "spans_per_second_counted_by_collector": (counted[1][1] - counted[0][1]) / max(1e-6, counted[1][0] - counted[0][0])
        if len(counted) == 2 else None,
        "accepted_spans_counted_by_collector": accepted_by_collector,
        "senders_stopped_after_deadline_s": senders_done,
        "accepted_spans": total.accepted_spans, "accepted_requests": total.accepted_requests,
        "refused_requests": total.refused_requests, "failed_requests": total.failed_requests,
        "unfinished_requests": total.unfinished_requests, "failures": total.failures,
        "cpu_percent": cpu, "peak_rss_mb": watcher.peak_rss_mb, "error_traces_sent": total.error_traces,
        "cpu_steal_percent": watcher.steal_percent,
        "timeline": [{"second": s, "spans_per_second": row[0], "refused": row[1],
                      "ack_latency_ms_p99": _percentile(sorted(row[2]), 99)} for s, row in total.timeline.items()],
    }  # fmt: skip
    lat = sorted(x for row in in_window.values() for x in row[2])
    for q in (50, 95, 99):
        report[f"ack_latency_ms_p{q}"] = _percentile(lat, q)
    report["ack_latency_ms_max"] = lat[-1] if lat else 0.0
    if scraper is None or probes is None:
        return report
    caught_up = time.monotonic()
    while metric(RECEIVED) - received_before < total.accepted_spans and time.monotonic() - caught_up < 300:
        time.sleep(0.1)
    sampled = metric(RECEIVED) - warm[1]
    drained = max(1e-6, time.monotonic() - warm[0])
    print("load done; waiting for every trace to be decided and stored ...")
    scraper.settle()
    probes.finish()
    decided = {k: v - decisions_before.get(k, 0.0) for k, v in _decisions(scraper).items()}
    rules = sorted({rule for rule, _ in decided})
    kept = {r: decided.get((r, "kept"), 0.0) / max(1.0, decided.get((r, "kept"), 0.0) + decided.get((r, "dropped"), 0.0))
            for r in rules}  # fmt: skip
    gc_pauses = [(float(lab["le"]), v) for n, lab, v in scraper.samples() if n == "tailsift_gc_pause_seconds_bucket"]
    report.update({
        "event_loop_lag_ms_p99": (_histogram_quantile(scraper, "tailsift_event_loop_lag_seconds", 0.99) or 0) * 1000,
        # The collector's own share of the ack latency (the rest: the wait for the loop to
        # read a request, the network, the senders): from its /metrics, bucket bounds.
        "export_ms_p99": (_histogram_quantile(scraper, "tailsift_receiver_export_seconds", 0.99) or 0) * 1000,
        "wal_sync_ms_p99": (_histogram_quantile(scraper, "tailsift_wal_sync_seconds", 0.99) or 0) * 1000,
        "gc_pauses_over_10ms": sum(v for le, v in gc_pauses if le == float("inf"))
        - sum(v for le, v in gc_pauses if le == 0.01),
        "spans_per_second_sampled": sampled / drained,
        "queryable_latency_ms_p50": _percentile(probes.latencies_ms, 50),
        "queryable_latency_ms_max": max(probes.latencies_ms, default=0.0), "probes_lost": probes.lost,
        "kept_fraction_by_rule": kept,
        "decisions_by_rule": {r: decided.get((r, "kept"), 0.0) + decided.get((r, "dropped"), 0.0) for r in rules},
    })  # fmt: skip
    return report


def _stored_error_traces(dsn: str) -> int:
    """Count stored error traces straight from ClickHouse, not through the collector."""
    import clickhouse_connect

    from collector.storage import normalize_dsn

    client = clickhouse_connect.get_client(dsn=normalize_dsn(dsn))
    try:
        return int(str(client.command("SELECT uniqExact(TraceId) FROM otel_traces "
                                  "WHERE ServiceName = 'bench-app' AND StatusCode = 'Error'")))  # fmt: skip
    finally:
        client.close()


def _print(r: dict[str, Any]) -> None:
    rows = [
        ("load", f"{r['shape']} over {r['protocol']}, rate {r['rate']}, {r['senders']} senders x {r['concurrency']} "
                 f"in flight, {r['duration_s']:.0f}s (figures after a {r['warmup_s']:.0f}s warm-up), queue {r['queue']}"),
        ("spans/s accepted", f"{r['spans_per_second']:,.0f}"
         + (f" (the collector counted {counted:,.0f})" if (counted := r["spans_per_second_counted_by_collector"]) else "")),
        ("ack latency p50 / p95 / p99", f"{r['ack_latency_ms_p50']:.1f} / {r['ack_latency_ms_p95']:.1f} / "
                                        f"{r['ack_latency_ms_p99']:.1f} ms"),
        ("refused / failed / unfinished", f"{r['refused_requests']} / {r['failed_requests']} / "
                                          f"{r['unfinished_requests']} requests"),
        ("senders stopped", f"{r['senders_stopped_after_deadline_s']:.1f} s after the deadline"),
    ]  # fmt: skip
    if "spans_per_second_sampled" in r:  # a tailsift with its query API
        rows[2:2] = [
            ("spans/s through sampling", f"{r['spans_per_second_sampled']:,.0f}"),
            ("send to queryable p50 / max", f"{r['queryable_latency_ms_p50'] / 1000:.2f} / "
                                            f"{r['queryable_latency_ms_max'] / 1000:.2f} s ({r['probes_lost']} probes lost)"),
            ("event loop lag p99 (bucket)", f"<= {r['event_loop_lag_ms_p99']:.0f} ms; "
                                            f"{r['gc_pauses_over_10ms']:.0f} GC pauses over 10 ms"),
            ("collector's own p99 (bucket)", f"export <= {r['export_ms_p99']:g} ms; the log's group commit "
                                             + (f"<= {r['wal_sync_ms_p99']:g} ms" if r["wal_sync_ms_p99"] else "(no log)")),
        ]  # fmt: skip
    if r["cpu_percent"]:
        rows.append(("collector CPU / peak RSS", f"{r['cpu_percent']:.0f}% / {r['peak_rss_mb']:.0f} MB"))
    if (stolen := r.get("cpu_steal_percent")) is not None:
        rows.append(("CPU stolen by the hypervisor", f"{stolen:.1f}% of the machine's CPU time during the load"
                     + ("   (a noisy host: compare runs with little)" if stolen >= 5 else "")))
    for rule, fraction in r.get("kept_fraction_by_rule", {}).items():
        want = r["configured_keep_by_rule"].get(rule)
        rows.append((f"kept by rule {rule!r}", f"{fraction:.2%} of {r['decisions_by_rule'][rule]:,.0f} traces"
                     + (f" (configured {want:.0%})" if want is not None else "")))
    stored = r["error_traces_stored"]
    rows.append(("error traces sent / stored", f"{r['error_traces_sent']:,} / "
                 + (f"{stored:,}" if stored is not None else "(not checked: not our collector)")
                 + ("" if r["check_passed"] else "   MISMATCH")))
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for failure in r["failures"]:
        print(f"  failed: {failure}")
