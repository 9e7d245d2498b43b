"""What ``tailsift bench`` drives: its own collector process, or one already running.

:class:`OwnCollector` starts ``tailsift run`` on free loopback ports with a temporary
embedded database (or the given config), so ``tailsift bench`` with no flags needs nothing
else; it is stopped (SIGTERM: decide, flush) before the stored data is checked.
:class:`Scraper` reads the collector's ``/metrics``; :class:`Probes` measures how long a
kept trace takes from send to queryable.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port free right now, chosen below the kernel's ephemeral range when it can
    be: a port the kernel handed out (``bind`` to 0) can be taken again as the source port
    of any outgoing connection (a browser, a Kafka client) before the collector binds it."""
    low = _ephemeral_low()
    for _ in range(50):
        port = random.randrange(20000, low) if low > 21000 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnCollector:
    """A ``tailsift run`` subprocess on free ports, in ``workdir`` (default: a new temporary
    one); ``config`` is used as given except for the endpoints, and storage defaults to a
    chDB database under ``data_dir`` (default ``workdir/data``). The tests run collectors
    through this class too."""

    def __init__(self, config: dict[str, Any], workdir: Path | None = None, data_dir: Path | None = None,
                 role: str = "all"):  # fmt: skip
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="tailsift-bench-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.role = role
        self._given = config
        self._data_dir = data_dir
        self.config_path = self.workdir / "tailsift.yaml"
        self._choose_ports()
        self.log_path = self.workdir / "collector.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.nofile: int | None = None
        """Open-files limit (soft and hard) for the process, to test descriptor exhaustion."""
        self.args: list[str] = []
        """More ``tailsift run`` arguments (``--watch``)."""
        self.cpus: set[int] | None = None
        """CPUs the process (all its threads) may run on, for per-core benchmarks."""
        self.tree: Path | None = None
        """Run tailsift from this checkout (its extension built) instead of the installed one:
        one side of an A/B of two builds (``benchmarks.peer.run --against``)."""

    def _choose_ports(self) -> None:
        """Free ports for the three endpoints, written into the config file (again on a retry
        of :meth:`start`)."""
        self.grpc_port, self.http_port, self.api_port = free_port(), free_port(), free_port()
        config = dict(self._given)
        otlp = dict(config.get("receivers", {}).get("otlp", {}))
        otlp["grpc"] = {**(otlp.get("grpc") or {}), "endpoint": f"127.0.0.1:{self.grpc_port}"}
        otlp["http"] = {**(otlp.get("http") or {}), "endpoint": f"127.0.0.1:{self.http_port}"}
        config["receivers"] = {"otlp": otlp}
        config["query"] = {**config.get("query", {}), "endpoint": f"127.0.0.1:{self.api_port}"}
        self._schemes = {key: "https" if (otlp[key] if key != "query" else config["query"]).get("tls") else "http"
                         for key in ("http", "query")}  # fmt: skip
        storage = dict(config.get("storage", {}).get("clickhouse", {}))
        storage.setdefault("dsn", f"chdb://{self._data_dir or self.workdir / 'data'}")
        config["storage"] = {**config.get("storage", {}), "clickhouse": storage}
        self.dsn = str(storage["dsn"])
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config))

    @property
    def http_url(self) -> str:
        return f"{self._schemes['http']}://127.0.0.1:{self.http_port}/v1/traces"

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def api(self) -> str:
        return f"{self._schemes['query']}://127.0.0.1:{self.api_port}"

    def start(self, timeout: float = 60.0, attempts: int = 3) -> OwnCollector:
        """Start the process and wait until it runs. A port taken between :func:`free_port`
        and the collector's bind (by any other process) is not the collector's fault: up to
        ``attempts`` times, new ports are chosen and it starts again."""
        for _ in range(attempts - 1):
            try:
                return self._start_once(timeout)
            except RuntimeError as exc:
                if "cannot listen" not in str(exc):
                    raise
            self._choose_ports()
        return self._start_once(timeout)

    def _start_once(self, timeout: float) -> OwnCollector:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.tree is not None:
            env["PYTHONPATH"] = str(self.tree)  # before the editable install on sys.path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "run", "--config", str(self.config_path), "--role", self.role,
             *self.args],
            stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT, cwd=self.workdir, env=env,
            preexec_fn=self._limits if self.nofile or self.cpus else None,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the collector exited with {self.proc.returncode}:\n{self.log()}")
            if "tailsift running" in self.log():
                return self
            time.sleep(0.1)
        raise TimeoutError(f"the collector did not start:\n{self.log()}")

    def _limits(self) -> None:
        import resource

        if self.nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the collector and wait; killed (and the wait's error raised) past ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


class Scraper:
    """Sums of ``/metrics`` samples by name and labels."""

    def __init__(self, api: str):
        self.url = api.rstrip("/") + "/metrics"

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        try:
            with urllib.request.urlopen(self.url, timeout=10) as resp:
                text = resp.read().decode()
        except (urllib.error.URLError, OSError):
            return []
        return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        return self.values(self.samples(), name, **labels)

    @staticmethod
    def values(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
        return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))

    def timed(self, name: str, **labels: str) -> tuple[float, float] | None:
        """(collector's clock, value) from one scrape: exact rates even when the answer is slow."""
        samples = self.samples()
        at = self.values(samples, "tailsift_scrape_unixtime_seconds")
        return (at, self.values(samples, name, **labels)) if at else None

    def settle(self, timeout: float = 180.0) -> bool:
        """Wait until nothing waits for a decision or an insert (the decision wait bounds
        this); False if that did not happen within ``timeout``."""
        deadline = time.monotonic() + timeout
        gauges = ("tailsift_sampler_buffered_traces", "tailsift_storage_pending_rows", "tailsift_queue_bytes")
        while time.monotonic() < deadline:
            if not any(self.value(g) for g in gauges):
                time.sleep(1.5)  # one more flush interval: the last insert may be in flight
                if not any(self.value(g) for g in gauges):
                    return True
            time.sleep(0.25)
        return False


class Probes:
    """Every ``every`` seconds, send one small error trace (kept by any sane rule set) and
    poll the query API until it is served: the time from send to queryable."""

    def __init__(self, http_url: str, api: str, every: float = 1.0, timeout: float = 90.0):
        self.http_url, self.api, self.every, self.timeout = http_url, api.rstrip("/"), every, timeout
        self.latencies_ms: list[float] = []
        self.lost = 0  # probes given up (written by the probe thread until finish() joins it)
        self.accepted = 0  # probe spans the collector accepted (each probe is one span)
        self._pending: dict[str, float] = {}
        self._stop = threading.Event()
        self._sending = True
        self._thread = threading.Thread(target=self._run, name="bench-probes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop_sending(self) -> None:
        self._sending = False

    def finish(self) -> None:
        """Wait for the probes in flight (up to ``timeout``), then stop."""
        self._sending = False
        deadline = time.monotonic() + self.timeout
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.1)
        self._stop.set()
        self._thread.join()
        self.lost += len(self._pending)

    def _send(self) -> None:
        trace_id = os.urandom(16)
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        rs.resource.attributes.add(key="service.name").value.string_value = "tailsift-bench-probe"
        now = time.time_ns()
        span = rs.scope_spans.add().spans.add(trace_id=trace_id, span_id=os.urandom(8), name="probe",
                                              start_time_unix_nano=now, end_time_unix_nano=now + 1000)  # fmt: skip
        span.status.code = 2  # type: ignore[assignment]  # error: the errors rule keeps it
        post = urllib.request.Request(self.http_url, data=req.SerializeToString(), method="POST",
                                      headers={"Content-Type": "application/x-protobuf"})  # fmt: skip
        sent = time.monotonic()
        try:
            with urllib.request.urlopen(post, timeout=10) as resp:
                if resp.status == 200:
                    self._pending[trace_id.hex()] = sent
                    self.accepted += 1
        except (urllib.error.URLError, OSError):
            pass  # refused under load: no probe this time

    def _run(self) -> None:
        next_probe = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if self._sending and now >= next_probe:
                next_probe = now + self.every
                self._send()
            # Oldest first, and only until one is not served yet: probes are decided in the
            # order they were sent, so the younger ones wait for it. (Polling every pending
            # probe made ~15 trace lookups a second, each 10-30 ms of the engine on both
            # cores: load the bench added to what it measured, in ack latency most of all.)
            for trace_id, sent in list(self._pending.items()):
                if not self._served(trace_id, sent) and trace_id in self._pending:
                    break
            self._stop.wait(0.2)

    def _served(self, trace_id: str, sent: float) -> bool:
        """True (and the latency noted) if the query API serves the probe's trace; a probe
        unserved after ``timeout`` is given up and counted in ``lost``."""
        try:
            with urllib.request.urlopen(f"{self.api}/api/traces/{trace_id}", timeout=10) as resp:
                if resp.status == 200:
                    self.latencies_ms.append((time.monotonic() - sent) * 1000)
                    del self._pending[trace_id]
                    return True
        except (urllib.error.URLError, OSError):
            if time.monotonic() - sent > self.timeout:
                del self._pending[trace_id]
                self.lost += 1
        return False
