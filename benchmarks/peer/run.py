"""tailsift against the OTel Collector (contrib tail_sampling, v0.161.0), side by side: the same
``tailsift bench`` load, one collector after the other, and the CPU each spends per span.

    python -m benchmarks.peer.run                        # 3 pairs, 20 s each, collector pinned to CPU 0
    python -m benchmarks.peer.run --unpinned --pairs 3   # the collector may use both cores
    python -m benchmarks.peer.run --against ../base       # A/B: tailsift built from another checkout
    python -m benchmarks.peer.run --unpinned --rate 74000  # ack latency of both at a fixed rate

Each run starts a fresh collector, drives it with ``tailsift bench --endpoint`` (client-side
figures only, the same for both) and counts the collector's CPU seconds from the start of
the load until it is idle again after the load (so tailsift's decisions and inserts after
the last request, and the peer's, are included). Each run's line ends with the share of the
machine's CPU the hypervisor stole during its load: on a virtual machine it moves every
figure (one build measured 20 and 110 ms of ack p99 at 0.4% and 20% stolen). A pair in which
either run had more than ``--max-steal`` percent stolen (default 5) is left out of the medians
and run again, up to ``--retries`` extra pairs; the summary says how many were left out, and
the medians stand on fewer pairs if the host stayed noisy. The figure compared is accepted spans per
CPU-second; the ratio is tailsift's over the peer's, so above 1 means tailsift is cheaper.
With ``--rate`` both get the same fixed rate instead of all they take, and the ack latency
percentiles (client side, the same client) are printed too: the load generator's and this
machine's share of a latency figure is what the peer measures.

With ``--against TREE`` the other side is tailsift too, imported from TREE (a checkout of
another commit with its extension built: ``pip install -e`` there, or ``cargo build`` and
copy the library): the change's own share under the same load, the load generator being
this checkout's for both. Each run checks, from the process's memory map, that its
extension was loaded from the tree it names, so both sides can never be the same build.

The peer runs tailsift's default rules as tail_sampling policies (otelcol.yaml), with a nop
exporter: it stores nothing. tailsift runs its defaults: redaction, span metrics, the
write-ahead log with fdatasync, and ClickHouse (chDB) storage of the kept traces.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks.peer.build import RELEASE, build
from collector.bench.target import OwnCollector, free_port

HERE = Path(__file__).resolve().parent
DECISION_WAIT = 10.0  # both collectors' decision wait (tailsift's default; set in otelcol.yaml)


@dataclass
class Run:
    name: str
    spans_per_second: float  # acknowledged, as the client saw it (bench)
    accepted_spans: int
    cpu_seconds: float
    peak_rss_mb: float
    p50_ms: float  # ack latency, client side
    p99_ms: float
    steal_percent: float | None  # of the machine's CPU, taken by the hypervisor during the load

    @property
    def per_cpu_second(self) -> float:
        return self.accepted_spans / max(1e-9, self.cpu_seconds)


def steady(pair: tuple[Run, Run], max_steal: float) -> bool:
    """Whether neither run of a pair had more than ``max_steal`` percent of the machine's CPU
    stolen by the hypervisor (a run that could not read it counts as steady: not on Linux)."""
    return all(r.steal_percent is None or r.steal_percent <= max_steal for r in pair)


class Peer:
    """The OTel Collector process, on free loopback ports."""

    def __init__(self, workdir: Path, cpus: set[int] | None):
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        env = dict(os.environ, PEER_HTTP_PORT=str(self.http_port), PEER_GRPC_PORT=str(self.grpc_port),
                   PEER_METRICS_PORT=str(self.metrics_port), GOMAXPROCS=str(len(cpus)) if cpus else "")  # fmt: skip
        if not cpus:
            env.pop("GOMAXPROCS")
        self.log = (workdir / "otelcol.log").open("wb")
        self.proc = subprocess.Popen([str(build()), "--config", str(HERE / "otelcol.yaml")], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)  # fmt: skip
        _wait_for_port(self.http_port, self.proc)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


class Tailsift:
    """``tailsift run`` on its defaults, in a fresh data directory; from ``tree`` if given
    (else this checkout)."""

    def __init__(self, workdir: Path, cpus: set[int] | None, tree: Path | None = None):
        self.own = OwnCollector({}, workdir / "tailsift")
        self.own.cpus = cpus
        self.own.tree = tree
        self.own.start()
        assert self.own.proc is not None
        self.proc = self.own.proc
        expected = (tree or HERE.parents[1]).resolve()
        loaded = _extension_of(self.proc.pid)
        if expected not in loaded.parents:
            self.stop()
            raise RuntimeError(f"the collector loaded {loaded}, not the build in {expected}")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.own.http_port}"

    def stop(self) -> None:
        self.own.stop()


def _extension_of(pid: int) -> Path:
    """Where the running collector's compiled extension (``processors._wire``) was loaded from."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[-1]
        if "/processors/_wire." in path:
            return Path(path).resolve()
    raise RuntimeError(f"process {pid} has not loaded processors._wire")


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the collector exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def _until_idle(p: psutil.Process, at_least: float, timeout: float = 120.0) -> None:
    """Wait ``at_least`` seconds, then until the process used under 5% of a core for a second."""
    time.sleep(at_least)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = _cpu(p)
        time.sleep(1.0)
        if _cpu(p) - before < 0.05:
            return


def measure(kind: str, args: argparse.Namespace, workdir: Path) -> Run:
    cpus = {0} if args.pin else None
    workdir.mkdir(parents=True, exist_ok=True)
    collector: Peer | Tailsift = (Peer(workdir, cpus) if kind == "otelcol"
                                  else Tailsift(workdir, cpus, args.against if kind == "baseline" else None))  # fmt: skip
    try:
        proc = psutil.Process(collector.proc.pid)
        peak = [0.0]
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.2):
                peak[0] = max(peak[0], proc.memory_info().rss / 2**20)

        threading.Thread(target=watch, daemon=True).start()
        out = workdir / f"{kind}.json"
        cpu_before = _cpu(proc)
        subprocess.run([sys.executable, "-m", "collector.cli", "bench", "--endpoint", collector.endpoint,
                        "--duration", str(args.duration), "--shape", args.shape, "--json", str(out),
                        *(["--rate", str(args.rate)] if args.rate else [])],
                       check=True, stdout=subprocess.DEVNULL,
                       preexec_fn=(lambda: os.sched_setaffinity(0, {1})) if args.pin else None)  # fmt: skip
        _until_idle(proc, DECISION_WAIT + 2)
        cpu = _cpu(proc) - cpu_before
        done.set()
        report: dict[str, Any] = json.loads(out.read_text())
        return Run(kind, report["spans_per_second"], report["accepted_spans"], cpu, peak[0],
                   report["ack_latency_ms_p50"], report["ack_latency_ms_p99"], report.get("cpu_steal_percent"))  # fmt: skip
    finally:
        collector.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--shape", choices=("llm", "fanout", "deep"), default="llm")
    parser.add_argument("--unpinned", dest="pin", action="store_false", help="let the collector use every core")
    parser.add_argument("--against", type=Path, metavar="TREE",
                        help="the other side is tailsift from this checkout (its extension built), not otelcol")
    parser.add_argument("--rate", type=float, help="offer both this many spans/s (default: all they take) and "
                                                   "compare ack latency too")
    parser.add_argument("--max-steal", type=float, default=5.0, metavar="PCT",
                        help="leave out and repeat a pair in which either run had more than this share of the "
                             "machine's CPU stolen by the hypervisor (default 5; 100 keeps every pair)")
    parser.add_argument("--retries", type=int, help="extra pairs to run in place of noisy ones (default: --pairs)")
    parser.add_argument("--json", help="write every run and the medians here")
    args = parser.parse_args()
    other = "baseline" if args.against else "otelcol"
    if args.against is None:
        build()
    runs: list[tuple[Run, Run]] = []
    noisy: list[tuple[Run, Run]] = []
    budget = args.pairs + (args.pairs if args.retries is None else args.retries)
    with tempfile.TemporaryDirectory(prefix="tailsift-peer-") as tmp:
        for pair in range(budget):
            if len(runs) == args.pairs:
                break
            order = (other, "tailsift") if pair % 2 == 0 else ("tailsift", other)  # A B, B A, ...
            got = {kind: measure(kind, args, Path(tmp) / f"{pair}-{kind}") for kind in order}
            both = (got["tailsift"], got[other])
            kept = steady(both, args.max_steal)
            (runs if kept else noisy).append(both)
            for r in both:
                print(f"pair {pair + 1} {r.name:>8}: {r.spans_per_second:>9,.0f} spans/s  {r.cpu_seconds:6.1f} CPU-s  "
                      f"{r.per_cpu_second:>9,.0f} spans/CPU-s  peak RSS {r.peak_rss_mb:,.0f} MB"
                      f"  ack p50 / p99 {r.p50_ms:.1f} / {r.p99_ms:.1f} ms"
                      + (f"  steal {r.steal_percent:.1f}%" if r.steal_percent is not None else ""), flush=True)
            print(f"pair {pair + 1} ratio (tailsift / {other} spans per CPU-second): "
                  f"{got['tailsift'].per_cpu_second / got[other].per_cpu_second:.2f}"
                  + ("" if kept else f"  (left out: more than {args.max_steal:g}% stolen)"), flush=True)
    if not runs:
        sys.exit(f"every pair had more than {args.max_steal:g}% of the CPU stolen; run again later or raise --max-steal")
    ratio = statistics.median(t.per_cpu_second / o.per_cpu_second for t, o in runs)
    against = f"against {args.against}" if args.against else f"otelcol-contrib {RELEASE}"
    offered = f"{args.rate:,.0f} spans/s offered" if args.rate else "as fast as each takes"
    where = "collector pinned to CPU 0, load on CPU 1" if args.pin else "unpinned"
    left_out = f", {len(noisy)} left out for stolen CPU" if noisy else ""
    print(f"\n{args.shape}, {args.duration:.0f} s, {offered}, {where}, {against}, {len(runs)} pairs{left_out}")
    if len(runs) < args.pairs:
        print(f"  (fewer than the {args.pairs} asked for: the host stayed noisy)")
    for name, index in (("tailsift", 0), (other, 1)):
        print(f"  {name:>8}: median {statistics.median(p[index].spans_per_second for p in runs):>9,.0f} spans/s, "
              f"{statistics.median(p[index].per_cpu_second for p in runs):>9,.0f} spans per CPU-second, "
              f"ack p99 {statistics.median(p[index].p99_ms for p in runs):.1f} ms")
    print(f"  ratio tailsift / {other}, spans per CPU-second: median {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"ratio_median": ratio, "runs": [[t.__dict__, o.__dict__] for t, o in runs],
                                               "left_out": [[t.__dict__, o.__dict__] for t, o in noisy]},
                                              indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
