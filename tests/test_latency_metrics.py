"""The collector's own share of the ack latency, on /metrics: every trace export request
(gRPC or HTTP, taken or refused) is timed in ``tailsift_receiver_export_seconds``, and every
group commit of the write-ahead log (what an acknowledgement waits for) in
``tailsift_wal_sync_seconds``. With them an operator can tell a slow collector from a slow
network or client."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from collector.bench.target import Scraper
from tests.support.collector import Collector
from tests.support.otel import Sender, llm_trace


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Any:
    c = Collector(tmp_path_factory.mktemp("latency")).start()
    yield c
    assert c.stop() == 0, c.log()


def histogram(collector: Collector, name: str) -> tuple[list[tuple[float, float]], float, float]:
    """(cumulative buckets, count, sum) of an unlabelled histogram."""
    got = Scraper(collector.api).samples()
    buckets = sorted((float(labels["le"]), v) for n, labels, v in got if n == f"{name}_bucket")
    count = next(v for n, _, v in got if n == f"{name}_count")
    total = next(v for n, _, v in got if n == f"{name}_sum")
    return buckets, count, total


def requests_by_outcome(collector: Collector) -> dict[str, float]:
    return {labels["outcome"]: v for n, labels, v in Scraper(collector.api).samples()
            if n == "tailsift_receiver_requests_total"}  # fmt: skip


def test_every_export_is_timed_and_every_acknowledgement_waited_for_the_log(collector: Collector) -> None:
    for kind in ("grpc", "http"):
        sender = Sender(kind, collector, delay_ms=50)
        for _ in range(40):
            llm_trace(sender.tracer)
        sender.close()
    refused = requests.post(collector.http_url, data=b"\xff\xff\xff not protobuf", timeout=30,
                            headers={"Content-Type": "application/x-protobuf"})  # fmt: skip
    assert refused.status_code == 400

    outcomes = requests_by_outcome(collector)
    assert outcomes["accepted"] >= 2  # at least one export per protocol
    buckets, count, total = histogram(collector, "tailsift_receiver_export_seconds")
    # The malformed body never reaches the accepted/refused counters (it is a 400 before
    # them), but it was an export the collector answered: counted here too.
    assert count == outcomes["accepted"] + outcomes["refused"] + 1
    assert buckets[-1] == (float("inf"), count) and 0 < total < count * 10
    assert [le for le, _ in buckets][:5] == [0.001, 0.0025, 0.005, 0.01, 0.02]  # 20 ms is a bound

    # Every group commit is timed (fsync: always, the default); one answers every request
    # that came while the one before it ran, so there are no more of them than requests.
    _, commits, _ = histogram(collector, "tailsift_wal_sync_seconds")
    syncs = next(v for n, _, v in Scraper(collector.api).samples() if n == "tailsift_wal_syncs_total")
    assert commits == syncs  # none failed
    assert 1 <= commits <= outcomes["accepted"]
