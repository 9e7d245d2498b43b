"""End to end: official OTLP exporters → real collector process → chDB → query API and CLI."""

from __future__ import annotations

import json
import math
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from opentelemetry.trace import Status, StatusCode

from processors.sampling.sampler import keep_by_trace_id
from tests.support.collector import Collector
from tests.support.kafka import kafka_queue, kafka_ssl_queue
from tests.support.otel import Sender, llm_trace

RULES = [
    {"name": "errors", "when": [{"status": "error"}], "keep": "100%"},
    {"name": "default", "keep": "10%"},
]


@pytest.fixture(scope="module", params=["memory", "kafka", "kafka-ssl"])
def collector(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One collector per queue kind: every test here runs on the in-process queue, on Kafka,
    and on Kafka over TLS (the broker's SSL listener, its certificate verified)."""
    queue: dict[str, Any] = {}
    if request.param == "kafka":
        queue = kafka_queue(request.getfixturevalue("kafka"))
    elif request.param == "kafka-ssl":
        queue = kafka_ssl_queue(*request.getfixturevalue("kafka_ssl"))
    config = {"sampling": {"decision_wait": "3s", "quiet_period": "300ms", "rules": RULES}, **queue}
    c = Collector(tmp_path_factory.mktemp(f"e2e-{request.param}"), config).start()
    yield c
    assert c.stop() == 0, c.log()


def _stored_ids(collector: Collector, error: bool) -> set[str]:
    body = collector.get("/api/traces", error=str(error).lower(), limit=1000).json()
    return {t["trace_id"] for t in body["traces"]}


def test_llm_traces_over_grpc_and_http_are_tail_sampled(collector: Collector) -> None:
    random.seed(7)
    senders = {"grpc": Sender("grpc", collector), "http": Sender("http", collector)}
    error_traces: set[str] = set()
    ok_traces: set[str] = set()
    for i in range(600):
        sender = senders["grpc" if i % 2 == 0 else "http"]
        error_in = random.choice(["llm.chat", "vector.search"]) if random.random() < 0.1 else None
        trace_id = llm_trace(sender.tracer, error_in)
        (error_traces if error_in else ok_traces).add(trace_id)
    sent = [s for sender in senders.values() for s in sender.close()]
    by_trace: dict[str, dict[str, str]] = {}
    for span in sent:
        parent = format(span.parent.span_id, "016x") if span.parent else ""
        by_trace.setdefault(format(span.context.trace_id, "032x"), {})[format(span.context.span_id, "016x")] = parent

    collector.wait_for(lambda: _stored_ids(collector, True) >= error_traces, 60, "all error traces")
    collector.wait_for(lambda: collector.metrics()["tailsift_sampler_buffered_traces"] == 0, 30, "decisions")

    # every error trace is stored whole, with the exact span ids and parent links sent
    assert _stored_ids(collector, True) == error_traces
    for trace_id in error_traces:
        body = collector.get(f"/api/traces/{trace_id}").json()
        stored = {s["span_id"]: s["parent_span_id"] for s in body["spans"]}
        assert stored == by_trace[trace_id]
        assert {s["sample_rate"] for s in body["spans"]} == {1.0}
        assert {s["sampled_by"] for s in body["spans"]} == {"errors"}

    # the others: kept at 10%, deterministically from the trace id, within binomial bounds
    kept = _stored_ids(collector, False)
    assert kept <= ok_traces
    assert kept == {t for t in ok_traces if keep_by_trace_id(bytes.fromhex(t), 0.10)}
    n = len(ok_traces)
    sd = math.sqrt(n * 0.1 * 0.9)
    assert abs(len(kept) - n * 0.1) <= 4 * sd, (len(kept), n)
    sample = collector.get(f"/api/traces/{next(iter(kept))}").json()["spans"]
    assert len(sample) == 4 and {s["sample_rate"] for s in sample} == {10.0}

    # a dropped trace: the API and the CLI say why it is not there, while the sampler remembers
    dropped = next(iter(ok_traces - kept))
    answer = collector.get(f"/api/traces/{dropped}")
    assert answer.status_code == 404 and "dropped by rule 'default' (10% kept)" in answer.json()["error"]
    cli = subprocess.run([sys.executable, "-m", "collector.cli", "trace", dropped, "--api", collector.api],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert cli.returncode == 1 and "dropped by rule 'default' (10% kept)" in cli.stderr


SECRETS = {
    "api_key": "sk-proj-Zx81mQ2vLr0aYbT7cNd4pEf6",
    "bearer": "Bearer f9a8b7c6d5e4f3a2b1c0",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTQyIn0.c2lnbmF0dXJlLXBhcnQ",
    "aws": "AKIAZ7Q2M4N6P8R0T2V4",
    "email": "jane.doe@example.org",
    "card": "4242 4242 4242 4242",
}


def test_secrets_never_come_back(collector: Collector) -> None:
    sender = Sender("http", collector, service="billing", **{"owner.email": SECRETS["email"]})

    def plant(span: Any) -> None:
        span.set_attribute("http.request.header.authorization", SECRETS["bearer"])
        span.set_attribute("llm.prompt", f"my card is {SECRETS['card']} and key {SECRETS['api_key']}")
        span.set_attribute("tags", [SECRETS["aws"], "harmless"])
        span.add_event(f"token issued {SECRETS['jwt']}", {"user": SECRETS["email"], "cloud": SECRETS["aws"]})
        span.update_name(f"charge {SECRETS['email']}")
        span.set_status(Status(StatusCode.ERROR, f"declined card {SECRETS['card']}"))

    trace_id = llm_trace(sender.tracer, extra=plant)
    sender.close()
    collector.wait_for(lambda: collector.get(f"/api/traces/{trace_id}").status_code == 200, 30, "the trace")
    body = collector.get(f"/api/traces/{trace_id}").text
    cli = subprocess.run([sys.executable, "-m", "collector.cli", "trace", trace_id, "--api", collector.api],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    listing = subprocess.run([sys.executable, "-m", "collector.cli", "traces", "--api", collector.api, "--limit", "1000"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    for text in (body, cli.stdout, listing.stdout, collector.log()):
        for kind, secret in SECRETS.items():
            assert secret not in text, f"{kind} leaked"
            # its last part alone, as a whole word ("4242" inside a timestamp is not a leak)
            assert not re.search(rf"(?<![0-9A-Za-z]){re.escape(secret.split()[-1])}(?![0-9A-Za-z])", text), \
                f"{kind} leaked"
    for marker in ("email", "card_number", "openai_api_key", "jwt", "aws_access_key", "sensitive_key"):
        assert f"[REDACTED:{marker}]" in body
    assert "[REDACTED:email]" in cli.stdout  # the span name is shown redacted in the waterfall


def test_sigterm_decides_and_stores_buffered_traces(tmp_path: Path, queue_config: dict[str, Any]) -> None:
    config = {"sampling": {"decision_wait": "5m", "quiet_period": "5m", "rules": [{"name": "all", "keep": "100%"}]},
              **queue_config}  # fmt: skip
    first = Collector(tmp_path / "a", config, data_dir=tmp_path / "data").start()
    sender = Sender("grpc", first)
    ids = {llm_trace(sender.tracer) for _ in range(25)}
    sender.close()
    first.wait_for(lambda: first.metrics()["tailsift_sampler_buffered_traces"] == 25, 30, "buffering")
    assert first.get("/api/traces").json()["traces"] == []  # nothing decided yet
    started = time.monotonic()
    assert first.stop(signal.SIGTERM) == 0, first.log()
    assert time.monotonic() - started < 10
    assert "decided 25 buffered traces" in first.log()

    second = Collector(tmp_path / "b", config, data_dir=tmp_path / "data").start()
    try:
        stored = {t["trace_id"]: t for t in second.get("/api/traces", limit=100).json()["traces"]}
        assert set(stored) == ids
        assert all(t["span_count"] == 4 for t in stored.values())
    finally:
        assert second.stop() == 0


def test_trace_api_errors(collector: Collector) -> None:
    assert collector.get("/api/traces/not-hex").status_code == 400
    assert collector.get("/api/traces/" + "0" * 32).status_code == 400
    assert collector.get("/api/traces/" + "ab" * 16).status_code == 404
    bad = collector.get("/api/traces", limit="lots")
    assert bad.status_code == 400 and "limit" in bad.json()["error"]
    assert collector.get("/api/traces", colour="red").status_code == 400
    assert json.loads(collector.get("/api/traces", service="nope").text) == {"traces": []}
