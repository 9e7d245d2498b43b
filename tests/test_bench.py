"""``tailsift bench`` as a user runs it: a real command that starts its own collector,
drives it, and checks the stored data against what it sent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.collector import Collector

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
