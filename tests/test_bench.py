"""``tailsift bench`` as a user runs it: a real command that starts its own collector,
drives it, and checks the stored data against what it sent."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.collector import Collector, free_port

KEYS = {"spans_per_second", "ack_latency_ms_p50", "ack_latency_ms_p95", "ack_latency_ms_p99", "peak_rss_mb",
        "refused_requests", "kept_fraction_by_rule"}  # fmt: skip


@pytest.mark.parametrize("flags", [[], ["--protocol", "grpc", "--shape", "fanout", "--rate", "20000"], ["--kafka"]],
                         ids=["defaults", "grpc-fanout-rate", "kafka"])  # fmt: skip
def test_bench_reports_figures_that_match_storage(tmp_path: Path, flags: list[str], request: pytest.FixtureRequest) -> None:
    if flags == ["--kafka"]:
        flags = ["--kafka", request.getfixturevalue("kafka"), "--shape", "deep"]
    out = tmp_path / "out.json"
    run = subprocess.run([sys.executable, "-m", "collector.cli", "bench", "--duration", "4", "--json", str(out), *flags],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert KEYS <= set(report)
    assert report["check_passed"] and report["error_traces_sent"] > 0
    assert report["error_traces_stored"] == report["error_traces_sent"]  # counted in ClickHouse, not via the API
    assert report["spans_per_second"] > 0 and report["accepted_spans"] > 0 and report["failed_requests"] == 0
    assert 0 < report["ack_latency_ms_p50"] <= report["ack_latency_ms_p95"] <= report["ack_latency_ms_p99"]
    assert report["kept_fraction_by_rule"]["errors"] == 1.0
    assert abs(report["kept_fraction_by_rule"]["default"] - 0.05) < 0.02  # a hash of fresh random ids
    assert report["queryable_latency_ms_p50"] > 0 and report["peak_rss_mb"] > 0
    assert "spans/s accepted" in run.stdout and "error traces sent / stored" in run.stdout
    if "--rate" in flags:  # offered 20k spans/s for 4 s: accepted about that, not more
        assert report["accepted_spans"] <= 20_000 * 4 + 2 * 525


def test_bench_drives_a_running_collector(tmp_path: Path) -> None:
    target = Collector(tmp_path / "target").start()
    try:
        out = tmp_path / "out.json"
        run = subprocess.run([sys.executable, "-m", "collector.cli", "bench", "--duration", "3", "--json", str(out),
                              "--endpoint", f"127.0.0.1:{target.http_port}", "--api", target.api],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        report = json.loads(out.read_text())
        assert report["accepted_spans"] > 0 and report["error_traces_stored"] is None  # not ours to stop and count
        assert report["kept_fraction_by_rule"]["errors"] == 1.0 and report["peak_rss_mb"] == 0
        received = target.metrics()['tailsift_receiver_spans_total{outcome="accepted"}']
        assert received >= report["accepted_spans"]  # the collector saw what the bench says it sent (+ probes)
    finally:
        assert target.stop() == 0, target.log()


def _bench(tmp_path: Path, *flags: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / "out.json"
    run = subprocess.run([sys.executable, "-m", "collector.cli", "bench", "--json", str(out), *flags],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(out.read_text()), run.stdout


@pytest.mark.e2e
def test_bench_above_capacity_stops_at_the_deadline_and_counts_what_the_collector_counted(tmp_path: Path) -> None:
    """Offered far more than the collector takes, the senders stop at ``--duration`` (requests
    still unanswered 1.5 s after it are abandoned) and the rate is what was acknowledged in
    the window: the collector's own /metrics count of accepted spans agrees within 5% (the
    edges of the window differ by the requests in flight there, about 3% over 27 s), and
    over the whole run the two counts agree to the span, but for abandoned requests."""
    report, stdout = _bench(tmp_path, "--rate", "1000000", "--senders", "3", "--concurrency", "16", "--duration", "30")
    assert report["senders_stopped_after_deadline_s"] <= 2.0, report["senders_stopped_after_deadline_s"]
    unanswered = report["accepted_spans_counted_by_collector"] - report["accepted_spans"]
    assert 0 <= unanswered <= report["unfinished_requests"] * 600, (unanswered, report["unfinished_requests"])
    counted = report["spans_per_second_counted_by_collector"]
    assert counted and abs(report["spans_per_second"] / counted - 1) <= 0.05, (report["spans_per_second"], counted)
    assert report["spans_per_second"] < 500_000  # what it took, not what was offered
    assert report["check_passed"], stdout


def test_bench_measures_any_otlp_collector_from_the_client_side(tmp_path: Path) -> None:
    """``--endpoint`` without ``--api``: nothing tailsift-only is asked of the target (its
    /metrics, its query API); the report has the client's figures and says the storage
    check was skipped."""
    target = Collector(tmp_path / "target").start()
    try:
        report, stdout = _bench(tmp_path, "--duration", "3", "--endpoint", f"127.0.0.1:{target.http_port}")
    finally:
        assert target.stop() == 0, target.log()
    assert report["accepted_spans"] > 0 and report["spans_per_second"] > 0 and report["ack_latency_ms_p99"] > 0
    assert report["error_traces_stored"] is None and "kept_fraction_by_rule" not in report
    assert report["spans_per_second_counted_by_collector"] is None
    assert "not checked: not our collector" in stdout and "through sampling" not in stdout


def test_the_bench_reads_the_cpu_the_hypervisor_stole() -> None:
    """On a virtual machine the hypervisor may give its CPUs to someone else; that time is a
    pause of the collector, so the bench reports it beside every figure (Linux: /proc/stat)."""
    from collector.bench.run import Watcher, _cpu_stat

    got = _cpu_stat()
    assert got is not None
    stolen, total = got
    assert total > 0 and 0 <= stolen <= total
    watcher = Watcher(None)
    watcher.cpu_percent()
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # let the machine's tick counters move
        pass
    watcher.cpu_percent()
    assert watcher.steal_percent is not None and 0.0 <= watcher.steal_percent <= 100.0


def test_a_port_taken_before_the_collector_binds_it_gets_new_ports(tmp_path: Path) -> None:
    """CI once lost a test to this: a free port was taken (by another process's outgoing
    connection) between choosing it and the collector's bind. The runner chooses again."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(free_port() < low for _ in range(20))  # never a port an outgoing connection can get
    c = Collector(tmp_path)
    taken = c.http_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        with c.start():
            assert c.http_port != taken
            assert f"127.0.0.1:{c.http_port}" in c.config_path.read_text()
            assert c.get("/metrics").status_code == 200
            assert "tailsift running" in c.log()
